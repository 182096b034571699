//! OpenAI's Responses API in front of the gateway (`POST /v1/responses`): a
//! Responses request becomes the gateway's chat request, so it is policed,
//! limited, routed to any provider, metered and audited as chat is; the
//! answer, whole or streamed (the typed `response.*` events), becomes a
//! Response again.
//!
//! Translated: `instructions`, `input` as a string or items (messages with
//! `input_text` / `output_text` / `input_image` parts, `function_call` and
//! `function_call_output` items), function `tools`, `tool_choice`,
//! `max_output_tokens`, `temperature`, `top_p`, `parallel_tool_calls`.
//! Accepted and not acted on: `store` (the gateway keeps no responses: the
//! answer says `store: false`), `metadata`, `user`, `reasoning`, `include`,
//! `truncation` set to `disabled`, `text` with the plain text format,
//! `client_metadata`, and `reasoning` items of earlier turns. Left out:
//! hosted tools (web search, file search, ...) and tool namespaces. Refused
//! with the field named: `previous_response_id` and `conversation` (the
//! gateway keeps no conversation state: send the whole conversation in
//! `input`), structured `text.format`, `background`, and other item types.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::inbound::{chat_request, common, invalid, model, object};
use super::mock::{next_id, now};
use super::sse::{ChunkSink, Translate};
use super::types::{ChatRequest, RequestError, Usage};

/// What the answer echoes of the request.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    /// The tenant model.
    pub model: String,
    /// The request's fields a Response repeats (instructions, tools, tool_choice, ...).
    pub fields: Map<String, Value>,
}

/// The default of a field a Response echoes.
type Default = fn() -> Value;

/// Fields a Response object repeats from its request, and their defaults.
const ECHOED: &[(&str, Default)] = &[
    ("instructions", || Value::Null),
    ("max_output_tokens", || Value::Null),
    ("metadata", || json!({})),
    ("parallel_tool_calls", || json!(true)),
    ("temperature", || json!(1.0)),
    ("tool_choice", || json!("auto")),
    ("tools", || json!([])),
    ("top_p", || json!(1.0)),
    ("user", || Value::Null),
];

/// Parses a `/v1/responses` body into the chat request and what the answer echoes.
pub fn parse(body: &[u8]) -> Result<(ChatRequest, Echo), RequestError> {
    let obj = object(body)?;
    for (key, value) in &obj {
        check_field(key, value)?;
    }
    let model = model(&obj, "missing required field")?;
    let mut messages = Vec::new();
    match obj.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(invalid("instructions", "expected a string")),
    }
    match obj.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                translate_item(item, &format!("input[{i}]"), &mut messages)?;
            }
        }
        Some(Value::Array(_)) => return Err(invalid("input", "must not be empty")),
        Some(_) => return Err(invalid("input", "expected a string or an array of input items")),
        None => return Err(invalid("input", "missing required field")),
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    common(&obj, &mut out)?;
    if let Some(max) = obj.get("max_output_tokens").filter(|v| !v.is_null()) {
        let max = max
            .as_u64()
            .filter(|m| *m >= 1)
            .ok_or_else(|| invalid("max_output_tokens", "expected a positive integer"))?;
        out.insert("max_completion_tokens".into(), json!(max));
    }
    if let Some(tools) = obj.get("tools").filter(|t| !t.is_null()) {
        out.insert("tools".into(), translate_tools(tools)?);
    }
    if let Some(choice) = obj.get("tool_choice").filter(|t| !t.is_null()) {
        out.insert("tool_choice".into(), translate_tool_choice(choice)?);
    }
    if let Some(parallel) = obj.get("parallel_tool_calls").filter(|t| !t.is_null()) {
        out.insert("parallel_tool_calls".into(), parallel.clone());
    }
    let request = chat_request(out)?;
    let fields = ECHOED
        .iter()
        .map(|(k, default)| (k.to_string(), obj.get(*k).filter(|v| !v.is_null()).cloned().unwrap_or_else(default)))
        .collect();
    Ok((request, Echo { model, fields }))
}

/// Refuses what the gateway cannot honour, naming the field.
fn check_field(key: &str, value: &Value) -> Result<(), RequestError> {
    match key {
        "model"
        | "input"
        | "instructions"
        | "stream"
        | "max_output_tokens"
        | "temperature"
        | "top_p"
        | "tools"
        | "tool_choice"
        | "parallel_tool_calls"
        | "metadata"
        | "user"
        | "reasoning"
        | "include"
        | "store"
        | "service_tier"
        | "stream_options"
        | "prompt_cache_key"
        | "safety_identifier"
        | "client_metadata" => Ok(()),
        "previous_response_id" | "conversation" if !value.is_null() => {
            Err(invalid(key, "this gateway keeps no responses or conversations: send the whole conversation in input"))
        }
        "previous_response_id" | "conversation" => Ok(()),
        "background" if value.as_bool() == Some(true) => {
            Err(invalid(key, "background responses are not supported through this gateway"))
        }
        "background" => Ok(()),
        "truncation" if value.as_str().is_some_and(|t| t != "disabled") => {
            Err(invalid(key, "only \"disabled\" is supported through this gateway"))
        }
        "truncation" => Ok(()),
        "text" => match value.pointer("/format/type").and_then(Value::as_str) {
            None | Some("text") => Ok(()),
            Some(other) => {
                Err(invalid("text.format", format!("{other:?} output is not supported through this gateway yet")))
            }
        },
        other => Err(invalid(other, "unknown parameter")),
    }
}

/// One input item -> chat messages.
fn translate_item(item: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), RequestError> {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some(r @ ("user" | "assistant" | "system" | "developer")) => r,
                _ => return Err(invalid(format!("{at}.role"), "expected user, assistant, system or developer")),
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => json!(s),
                Some(Value::Array(parts)) => translate_parts(parts, &format!("{at}.content"))?,
                _ => return Err(invalid(format!("{at}.content"), "expected a string or an array of content parts")),
            };
            // Consecutive assistant output (text, then calls) is one chat message.
            if role == "assistant"
                && let Some(last) = out.last_mut()
                && last["role"] == "assistant"
                && last["content"].is_null()
            {
                last["content"] = content;
                return Ok(());
            }
            out.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let field = |name: &str| {
                item.get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{at}.{name}"), "expected a string"))
            };
            let call = json!({"id": field("call_id")?, "type": "function",
                "function": {"name": field("name")?, "arguments": field("arguments")?}});
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    if let Some(calls) = last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        calls.push(call);
                    } else {
                        last["tool_calls"] = json!([call]);
                    }
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let id = item
                .get("call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("{at}.call_id"), "expected a string"))?;
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
                }
                _ => return Err(invalid(format!("{at}.output"), "expected a string")),
            };
            out.push(json!({"role": "tool", "tool_call_id": id, "content": output}));
        }
        "reasoning" => {}
        other => {
            return Err(invalid(
                format!("{at}.type"),
                format!("{other:?} items are not supported through this gateway"),
            ));
        }
    }
    Ok(())
}

fn translate_parts(parts: &[Value], at: &str) -> Result<Value, RequestError> {
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => {
                let text = part
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{at}.text"), "expected a string"))?;
                out.push(json!({"type": "text", "text": text}));
            }
            Some("input_image") => {
                let url = part
                    .get("image_url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{at}.image_url"), "expected a URL (file ids are not supported)"))?;
                let mut image = json!({"url": url});
                if let Some(detail) = part.get("detail") {
                    image["detail"] = detail.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            Some("refusal") => {}
            other => return Err(invalid(at, format!("{other:?} content is not supported through this gateway"))),
        }
    }
    if out.iter().all(|p| p["type"] == "text") {
        return Ok(json!(out.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n")));
    }
    Ok(Value::Array(out))
}

/// Function tools -> chat functions. Hosted tools (`web_search`,
/// `file_search`, ...) and tool namespaces are left out: no provider behind
/// the gateway runs them, so the model answers without them.
fn translate_tools(tools: &Value) -> Result<Value, RequestError> {
    let Value::Array(tools) = tools else { return Err(invalid("tools", "expected an array")) };
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            continue;
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("tools[{i}].name"), "missing required field"))?;
        let mut function = json!({"name": name});
        for key in ["description", "parameters", "strict"] {
            if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                function[key] = v.clone();
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

fn translate_tool_choice(choice: &Value) -> Result<Value, RequestError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.name", "missing required field"))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(invalid("tool_choice", "expected \"auto\", \"none\", \"required\" or a function")),
    }
}

/// The usage of a Response.
fn usage_json(usage: &Usage) -> Value {
    json!({"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens()},
        "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens})
}

/// A Response object with `output`, `status` and `usage`.
fn response_object(
    id: &str,
    created: u64,
    echo: &Echo,
    status: &str,
    output: Vec<Value>,
    usage: Option<&Usage>,
    incomplete: bool,
) -> Value {
    let mut r = json!({
        "id": id, "object": "response", "created_at": created, "status": status, "model": echo.model,
        "output": output, "error": null,
        "incomplete_details": if incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "previous_response_id": null, "reasoning": {"effort": null, "summary": null}, "store": false,
        "text": {"format": {"type": "text"}}, "truncation": "disabled",
        "usage": usage.map_or(Value::Null, usage_json),
    });
    for (k, v) in &echo.fields {
        r[k] = v.clone();
    }
    r
}

/// A message output item holding `text`.
fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

/// A function call output item.
fn call_item(id: &str, call_id: &Value, name: &Value, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": status})
}

/// A whole `chat.completion` -> a Response.
pub fn to_response(completion: &Value, echo: &Echo) -> Value {
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let mut output = Vec::new();
    if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        output.push(message_item(&next_id("msg_"), text, "completed"));
    }
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        output.push(call_item(&next_id("fc_"), &call["id"], &call["function"]["name"], arguments, "completed"));
    }
    let usage = Usage::deserialize(&completion["usage"]).unwrap_or_default();
    let incomplete = choice.get("finish_reason").and_then(Value::as_str) == Some("length");
    let status = if incomplete { "incomplete" } else { "completed" };
    response_object(&next_id("resp_"), now(), echo, status, output, Some(&usage), incomplete)
}

/// The output item being streamed.
#[derive(Debug)]
enum Open {
    Text { id: String, index: usize, text: String },
    Call { id: String, index: usize, chat_index: u64, call_id: Value, name: Value, arguments: String },
}

/// Turns the gateway's `chat.completion.chunk` events into the
/// Responses API's typed events: `response.created`, `response.in_progress`,
/// per output item `response.output_item.added`, for text
/// `response.content_part.added`, `response.output_text.delta` /
/// `.done` and `response.content_part.done`, for a function call
/// `response.function_call_arguments.delta` / `.done`, then
/// `response.output_item.done`, and last `response.completed` (or
/// `response.incomplete`) with the usage. An error event becomes `error`
/// then `response.failed`.
#[derive(Debug)]
pub struct ResponseEvents {
    echo: Echo,
    id: String,
    created: u64,
    sequence: u64,
    open: Option<Open>,
    output: Vec<Value>,
    incomplete: bool,
}

/// The translation of a streamed answer to a request that echoes `echo`.
pub fn stream(echo: Echo) -> Translate<ResponseEvents> {
    Translate::new(ResponseEvents::new(echo))
}

impl ResponseEvents {
    fn new(echo: Echo) -> Self {
        Self {
            echo,
            id: next_id("resp_"),
            created: now(),
            sequence: 0,
            open: None,
            output: Vec::new(),
            incomplete: false,
        }
    }

    fn event(&mut self, out: &mut Vec<u8>, name: &str, mut data: Value) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
    }

    fn snapshot(&self, status: &str, usage: Option<&Usage>) -> Value {
        response_object(&self.id, self.created, &self.echo, status, self.output.clone(), usage, self.incomplete)
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        match self.open.take() {
            None => {}
            Some(Open::Text { id, index, text }) => {
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                self.event(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
                );
                self.event(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                );
                let item = message_item(&id, &text, "completed");
                self.event(out, "response.output_item.done", json!({"output_index": index, "item": item}));
                self.output.push(item);
            }
            Some(Open::Call { id, index, call_id, name, arguments, .. }) => {
                self.event(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "arguments": arguments}),
                );
                let item = call_item(&id, &call_id, &name, &arguments, "completed");
                self.event(out, "response.output_item.done", json!({"output_index": index, "item": item}));
                self.output.push(item);
            }
        }
    }

    fn text(&mut self, out: &mut Vec<u8>, delta: &str) {
        if !matches!(self.open, Some(Open::Text { .. })) {
            self.close(out);
            let (id, index) = (next_id("msg_"), self.output.len());
            let item =
                json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
            self.event(out, "response.output_item.added", json!({"output_index": index, "item": item}));
            let part = json!({"type": "output_text", "text": "", "annotations": []});
            self.event(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            );
            self.open = Some(Open::Text { id, index, text: String::new() });
        }
        if let Some(Open::Text { id, index, text }) = &mut self.open {
            text.push_str(delta);
            let data = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta});
            self.event(out, "response.output_text.delta", data);
        }
    }

    fn call(&mut self, out: &mut Vec<u8>, call: &Value) {
        let n = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let same = matches!(&self.open, Some(Open::Call { chat_index, .. }) if *chat_index == n);
        if !same {
            if call.get("id").is_none_or(Value::is_null) {
                // A later delta of a call already closed: items do not interleave.
                return;
            }
            self.close(out);
            let (id, index) = (next_id("fc_"), self.output.len());
            let (call_id, name) = (call["id"].clone(), call["function"]["name"].clone());
            let item = call_item(&id, &call_id, &name, "", "in_progress");
            self.event(out, "response.output_item.added", json!({"output_index": index, "item": item}));
            self.open = Some(Open::Call { id, index, chat_index: n, call_id, name, arguments: String::new() });
        }
        let delta = call["function"].get("arguments").and_then(Value::as_str).unwrap_or_default();
        if !delta.is_empty()
            && let Some(Open::Call { id, index, arguments, .. }) = &mut self.open
        {
            arguments.push_str(delta);
            let data = json!({"item_id": id, "output_index": index, "delta": delta});
            self.event(out, "response.function_call_arguments.delta", data);
        }
    }
}

impl ChunkSink for ResponseEvents {
    fn start(&mut self, out: &mut Vec<u8>) {
        let response = self.snapshot("in_progress", None);
        self.event(out, "response.created", json!({"response": response}));
        let response = self.snapshot("in_progress", None);
        self.event(out, "response.in_progress", json!({"response": response}));
    }

    fn error(&mut self, error: &Value, out: &mut Vec<u8>) {
        let message = error.get("message").cloned().unwrap_or_else(|| json!("error"));
        let code = error.get("code").cloned().unwrap_or(Value::Null);
        self.event(
            out,
            "error",
            json!({"code": code, "message": message, "param": error.get("param").cloned().unwrap_or(Value::Null)}),
        );
        let mut response = self.snapshot("failed", None);
        response["error"] =
            json!({"code": if code.is_null() { json!("server_error") } else { code }, "message": message});
        self.event(out, "response.failed", json!({"response": response}));
    }

    fn choice(&mut self, choice: &Value, out: &mut Vec<u8>) {
        if let Some(text) = choice["delta"].get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            self.text(out, text);
        }
        for call in choice["delta"].get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            self.call(out, call);
        }
        if choice.get("finish_reason").and_then(Value::as_str) == Some("length") {
            self.incomplete = true;
        }
    }

    fn finish(&mut self, usage: Usage, out: &mut Vec<u8>) {
        self.close(out);
        let (name, status) =
            if self.incomplete { ("response.incomplete", "incomplete") } else { ("response.completed", "completed") };
        let response = self.snapshot(status, Some(&usage));
        self.event(out, name, json!({"response": response}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::types::Role;

    fn parse_ok(v: Value) -> (ChatRequest, Echo) {
        parse(v.to_string().as_bytes()).expect("parses")
    }

    #[test]
    fn instructions_items_and_tools_become_a_chat_request() {
        let (r, echo) = parse_ok(json!({
            "model": "m", "instructions": "Be brief.", "max_output_tokens": 50, "stream": true, "store": true,
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ],
        }));
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool], "text and call: one assistant turn");
        assert_eq!(r.messages[2].tool_calls.as_ref().map(Vec::len), Some(1));
        assert_eq!(r.max_completion_tokens, Some(50));
        assert!(r.stream && r.include_usage());
        assert_eq!(r.tool_choice, Some(json!({"type": "function", "function": {"name": "get_weather"}})));
        assert_eq!(echo.fields["instructions"], "Be brief.");
        assert_eq!(echo.fields["temperature"], 1.0, "defaults are echoed");
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_naming_the_field() {
        for (body, param) in [
            (json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}), "previous_response_id"),
            (json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema"}}}), "text.format"),
            (json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}), "input[0].type"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": "hi", "frobnicate": 1}), "frobnicate"),
        ] {
            let e = parse(body.to_string().as_bytes()).expect_err("refused");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
        }
    }

    #[test]
    fn hosted_tools_and_namespaces_are_left_out() {
        let (r, _) = parse_ok(json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"},
            {"type": "namespace", "name": "agents", "tools": []}, {"type": "function", "name": "f"}]}));
        let names: Vec<&str> = r.tools.iter().flatten().map(|t| t.function.name.as_str()).collect();
        assert_eq!(names, ["f"]);
    }

    #[test]
    fn a_completion_becomes_a_response() {
        let completion = json!({"choices": [{"message": {"role": "assistant", "content": "Sure.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}});
        let (_, echo) = parse_ok(json!({"model": "tenant-model", "input": "hi"}));
        let r = to_response(&completion, &echo);
        assert_eq!(
            (r["object"].as_str(), r["status"].as_str(), r["model"].as_str()),
            (Some("response"), Some("completed"), Some("tenant-model"))
        );
        assert_eq!(r["output"][0]["content"][0]["text"], "Sure.");
        assert_eq!(r["output"][1]["call_id"], "call_1");
        assert_eq!(r["usage"]["total_tokens"], 10);
        assert_eq!(r["store"], false);
    }

    #[test]
    fn chunks_become_typed_events() {
        let (_, echo) = parse_ok(json!({"model": "m", "input": "hi"}));
        let mut t = stream(echo);
        let events = crate::llm::sse::test_stream::translate(&mut t, &crate::llm::sse::test_stream::text_then_call());
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let sequence: Vec<u64> = events.iter().filter_map(|e| e["sequence_number"].as_u64()).collect();
        assert_eq!(sequence, (0..15).collect::<Vec<_>>());
        let done = &events[14]["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["usage"]["input_tokens"], 5);
        assert_eq!(events[9]["output_index"], 1);
    }
}
