//! Anthropic's Messages API in front of the gateway (`POST /v1/messages`):
//! a Messages request becomes the gateway's chat request, so it is policed,
//! limited, routed to any provider, metered and audited as chat is; the
//! answer, whole or streamed, becomes a Messages answer again.
//!
//! Translated: `system` (a string or text blocks), user, assistant and
//! (mid-conversation) system turns
//! with text, image (base64 or URL), `tool_use` and `tool_result` blocks,
//! `tools`, `tool_choice`, `max_tokens`, `stop_sequences`, `temperature`,
//! `top_p`. Passed to Anthropic providers only (OpenAI-compatible ones
//! refuse unknown fields): `top_k`, `service_tier`, `metadata`. Dropped:
//! `thinking` (the answer comes without extended thinking: chat has no
//! place for thinking blocks, and Anthropic refuses a tool-use turn whose
//! thinking blocks are not replayed), `cache_control` marks (a caching
//! hint), `context_management`, `output_config`, and `thinking` / `redacted_thinking` blocks
//! of earlier assistant turns. Refused with the field named: document and
//! other block types, server tools.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::inbound::{chat_request, common, invalid, model, object};
use super::mock::next_id;
use super::sse::{ChunkSink, Translate};
use super::types::{ChatRequest, RequestError, Usage};

/// Fields that go to Anthropic providers as they are, to no other.
const ANTHROPIC_ONLY: &[&str] = &["top_k", "service_tier", "metadata"];
/// Fields that are read and dropped.
const DROPPED: &[&str] = &["thinking", "context_management", "output_config"];
/// Fields translated into the chat request.
const TRANSLATED: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "stream",
    "tools",
    "tool_choice",
    "stop_sequences",
    "temperature",
    "top_p",
];

/// Parses a `/v1/messages` body (`count_tokens`: the body of
/// `/v1/messages/count_tokens`, where `max_tokens` is not required) into the
/// gateway's chat request (whose stream asks for a usage chunk).
pub fn parse(body: &[u8], count_tokens: bool) -> Result<ChatRequest, RequestError> {
    let obj = object(body)?;
    let model = model(&obj, "Field required")?;
    let max_tokens = match obj.get("max_tokens") {
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n >= 1 && *n <= u64::from(u32::MAX))
                .ok_or_else(|| invalid("max_tokens", "expected an integer of at least 1"))?,
        ),
        None if count_tokens => None,
        None => return Err(invalid("max_tokens", "Field required")),
    };
    let mut messages = Vec::new();
    if let Some(system) = obj.get("system") {
        let text = match system {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => {
                let mut texts = Vec::with_capacity(blocks.len());
                for (i, b) in blocks.iter().enumerate() {
                    match (b.get("type").and_then(Value::as_str), b.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => texts.push(t),
                        _ => return Err(invalid(format!("system[{i}]"), "expected a text block")),
                    }
                }
                texts.join("\n")
            }
            _ => return Err(invalid("system", "expected a string or an array of text blocks")),
        };
        messages.push(json!({"role": "system", "content": text}));
    }
    let turns = match obj.get("messages") {
        Some(Value::Array(turns)) if !turns.is_empty() => turns,
        Some(Value::Array(_)) => return Err(invalid("messages", "must contain at least one message")),
        Some(_) => return Err(invalid("messages", "expected an array")),
        None => return Err(invalid("messages", "Field required")),
    };
    for (i, turn) in turns.iter().enumerate() {
        translate_turn(turn, &format!("messages[{i}]"), &mut messages)?;
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(max) = max_tokens {
        out.insert("max_tokens".into(), json!(max));
    }
    common(&obj, &mut out)?;
    if let Some(tools) = obj.get("tools") {
        out.insert("tools".into(), translate_tools(tools)?);
    }
    if let Some(choice) = obj.get("tool_choice") {
        out.insert("tool_choice".into(), translate_tool_choice(choice)?);
    }
    if let Some(stop) = obj.get("stop_sequences") {
        if !stop.as_array().is_some_and(|s| s.iter().all(Value::is_string)) {
            return Err(invalid("stop_sequences", "expected an array of strings"));
        }
        out.insert("stop".into(), stop.clone());
    }
    let mut anthropic = Map::new();
    for (key, value) in &obj {
        if ANTHROPIC_ONLY.contains(&key.as_str()) {
            anthropic.insert(key.clone(), value.clone());
        } else if !TRANSLATED.contains(&key.as_str()) && !DROPPED.contains(&key.as_str()) {
            return Err(invalid(key.clone(), "Extra inputs are not permitted"));
        }
    }
    let mut request = chat_request(out)?;
    request.anthropic = anthropic;
    Ok(request)
}

/// One Messages turn -> chat messages: a user turn's `tool_result` blocks
/// become `tool` messages (first, as the calls they answer came before),
/// the rest one user message; an assistant turn's `tool_use` blocks become
/// its tool calls.
fn translate_turn(turn: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), RequestError> {
    let role = match turn.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant" | "system")) => r,
        _ => return Err(invalid(format!("{at}.role"), "expected \"user\", \"assistant\" or \"system\"")),
    };
    let blocks = match turn.get("content") {
        Some(Value::String(text)) => {
            out.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(invalid(format!("{at}.content"), "expected a string or an array of content blocks")),
    };
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content[{j}]");
        let kind = block.get("type").and_then(Value::as_str).unwrap_or_default();
        match (role, kind) {
            (_, "text") => {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{at}.text"), "expected a string"))?;
                parts.push(json!({"type": "text", "text": text}));
            }
            ("user", "image") => parts.push(image_part(block, &at)?),
            ("user", "tool_result") => out.push(tool_result(block, &at)?),
            ("assistant", "tool_use") => {
                let id = block
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{at}.id"), "expected a string"))?;
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{at}.name"), "expected a string"))?;
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(
                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}}),
                );
            }
            ("assistant", "thinking" | "redacted_thinking") => {}
            _ => return Err(invalid(at, format!("a {role} turn cannot carry a {kind:?} block through this gateway"))),
        }
    }
    let only_text = parts.iter().all(|p| p["type"] == "text");
    let content = if parts.is_empty() {
        Value::Null
    } else if only_text {
        json!(parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"))
    } else {
        Value::Array(parts)
    };
    if role == "assistant" {
        let mut message = json!({"role": "assistant", "content": content});
        if !tool_calls.is_empty() {
            message["tool_calls"] = Value::Array(tool_calls);
        }
        out.push(message);
    } else if !content.is_null() {
        out.push(json!({"role": role, "content": content}));
    }
    Ok(())
}

fn image_part(block: &Value, at: &str) -> Result<Value, RequestError> {
    let source = &block["source"];
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            match (media, data) {
                (Some(m), Some(d)) => format!("data:{m};base64,{d}"),
                _ => return Err(invalid(format!("{at}.source"), "a base64 image needs media_type and data")),
            }
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{at}.source.url"), "expected a string"))?
            .to_owned(),
        _ => return Err(invalid(format!("{at}.source.type"), "expected \"base64\" or \"url\"")),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tool_result(block: &Value, at: &str) -> Result<Value, RequestError> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{at}.tool_use_id"), "expected a string"))?;
    let text = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (k, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => texts.push(t),
                    _ => {
                        return Err(invalid(
                            format!("{at}.content[{k}]"),
                            "tool results can carry text blocks only through this gateway",
                        ));
                    }
                }
            }
            texts.join("\n")
        }
        Some(_) => return Err(invalid(format!("{at}.content"), "expected a string or an array of text blocks")),
    };
    let text =
        if block.get("is_error").and_then(Value::as_bool) == Some(true) { format!("Error: {text}") } else { text };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": text}))
}

/// Client tools -> functions. A tool with `defer_loading` is left out: the
/// model may only load it through Anthropic's tool search, which no other
/// provider has, so it is not callable at first.
fn translate_tools(tools: &Value) -> Result<Value, RequestError> {
    let Value::Array(tools) = tools else { return Err(invalid("tools", "expected an array")) };
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.get("defer_loading").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("tools[{i}].name"), "Field required"))?;
        if t.get("type").and_then(Value::as_str).is_some_and(|kind| kind != "custom") {
            return Err(invalid(
                format!("tools[{i}].type"),
                "server tools are not supported through this gateway; declare a client tool with input_schema",
            ));
        }
        let schema = t
            .get("input_schema")
            .filter(|s| s.is_object())
            .ok_or_else(|| invalid(format!("tools[{i}].input_schema"), "Field required"))?;
        let mut function = json!({"name": name, "parameters": schema});
        if let Some(description) = t.get("description").and_then(Value::as_str) {
            function["description"] = json!(description);
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

fn translate_tool_choice(choice: &Value) -> Result<Value, RequestError> {
    match choice.get("type").and_then(Value::as_str) {
        Some("auto") => Ok(json!("auto")),
        Some("any") => Ok(json!("required")),
        Some("none") => Ok(json!("none")),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.name", "Field required"))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(invalid("tool_choice.type", "expected \"auto\", \"any\", \"tool\" or \"none\"")),
    }
}

/// A chat finish reason as a Messages stop reason.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        _ => "end_turn",
    }
}

/// A `msg_` id for the answer.
fn message_id() -> String {
    next_id("msg_")
}

/// A whole `chat.completion` -> a Messages answer for the tenant `model`.
pub fn to_message(completion: &Value, model: &str) -> Value {
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
        content.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
    }
    let usage = Usage::deserialize(&completion["usage"]).unwrap_or_default();
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": usage_json(&usage),
    })
}

/// Usage in Anthropic's fields: `input_tokens` leaves out the tokens read from a cache.
fn usage_json(usage: &Usage) -> Value {
    json!({"input_tokens": usage.prompt_tokens - usage.cached_tokens(), "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens()})
}

/// An error in Anthropic's shape from the gateway's (OpenAI-shaped) error
/// body and its status: `{"type": "error", "error": {"type", "message"}}`.
pub fn to_error(status: u16, openai_body: &[u8]) -> Bytes {
    let message = serde_json::from_slice::<Value>(openai_body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "error".to_owned());
    Bytes::from(json!({"type": "error", "error": {"type": error_type(status), "message": message}}).to_string())
}

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Turns the gateway's `chat.completion.chunk` events into Messages
/// stream events: `message_start`, per content block `content_block_start`,
/// `content_block_delta` (text or tool input JSON) and `content_block_stop`,
/// then `message_delta` (stop reason and usage) and `message_stop`. An error
/// event becomes an `error` event.
#[derive(Debug)]
pub struct MessageEvents {
    model: String,
    /// The open block: its index, and for a tool call its chat index.
    open: Option<(usize, Option<u64>)>,
    next_index: usize,
    /// Chat tool-call index -> block index.
    tools: HashMap<u64, usize>,
    stop: Option<&'static str>,
}

/// The translation of a streamed answer of the tenant `model`.
pub fn stream(model: &str) -> Translate<MessageEvents> {
    Translate::new(MessageEvents::new(model))
}

impl MessageEvents {
    fn new(model: &str) -> Self {
        Self { model: model.to_owned(), open: None, next_index: 0, tools: HashMap::new(), stop: None }
    }

    fn event(out: &mut Vec<u8>, name: &str, data: &Value) {
        out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            Self::event(out, "content_block_stop", &json!({"type": "content_block_stop", "index": index}));
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, tool: Option<u64>, block: Value) -> usize {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, tool));
        Self::event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }
}

impl ChunkSink for MessageEvents {
    fn start(&mut self, out: &mut Vec<u8>) {
        let message = json!({"id": message_id(), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}});
        Self::event(out, "message_start", &json!({"type": "message_start", "message": message}));
    }

    fn error(&mut self, error: &Value, out: &mut Vec<u8>) {
        self.close_block(out);
        let kind = match error.get("type").and_then(Value::as_str) {
            Some("invalid_request_error") => "invalid_request_error",
            _ => "api_error",
        };
        let message = error.get("message").cloned().unwrap_or_else(|| json!("error"));
        Self::event(out, "error", &json!({"type": "error", "error": {"type": kind, "message": message}}));
    }

    fn choice(&mut self, choice: &Value, out: &mut Vec<u8>) {
        let delta = &choice["delta"];
        if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some((index, None)) => index,
                _ => self.open_block(out, None, json!({"type": "text", "text": ""})),
            };
            Self::event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": text}}),
            );
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let n = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let index = match self.tools.get(&n) {
                Some(index) if self.open == Some((*index, Some(n))) => *index,
                // A later delta of a call whose block was closed: Messages blocks do not interleave.
                Some(_) => continue,
                None => {
                    let block =
                        json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}});
                    let index = self.open_block(out, Some(n), block);
                    self.tools.insert(n, index);
                    index
                }
            };
            if let Some(args) = call["function"].get("arguments").and_then(Value::as_str).filter(|a| !a.is_empty()) {
                Self::event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = Some(stop_reason(Some(finish)));
        }
    }

    fn finish(&mut self, usage: Usage, out: &mut Vec<u8>) {
        self.close_block(out);
        Self::event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": usage_json(&usage)}),
        );
        Self::event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::types::{Content, Role};

    fn parse_ok(v: Value) -> ChatRequest {
        parse(v.to_string().as_bytes(), false).expect("parses")
    }

    fn parse_err(v: Value) -> RequestError {
        parse(v.to_string().as_bytes(), false).expect_err("refused")
    }

    #[test]
    fn a_conversation_with_tools_becomes_a_chat_request() {
        let r = parse_ok(json!({
            "model": "m", "max_tokens": 100, "stream": true, "temperature": 0.5, "top_k": 5,
            "metadata": {"user_id": "u"},
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "search_later", "input_schema": {"type": "object"}, "defer_loading": true},
                {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "stop_sequences": ["END"],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "...", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "And tomorrow?"}]},
                {"role": "system", "content": [{"type": "text", "text": "A reminder."}]},
            ],
        }));
        assert_eq!(r.model, "m");
        assert_eq!(r.max_tokens, Some(100));
        assert!(r.stream && r.include_usage(), "a stream asks for the usage chunk: the books need it");
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool, Role::User, Role::System]);
        assert_eq!(r.messages[0].content.as_ref().map(Content::text).as_deref(), Some("Be brief."));
        let call = &r.messages[2].tool_calls.as_ref().expect("tool calls")[0];
        assert_eq!((call.id.as_str(), call.function.arguments.as_str()), ("toolu_1", r#"{"city":"Paris"}"#));
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        let tools: Vec<&str> = r.tools.iter().flatten().map(|t| t.function.name.as_str()).collect();
        assert_eq!(tools, ["get_weather"], "a deferred tool is not callable at first");
        assert_eq!(r.tool_choice, Some(json!({"type": "function", "function": {"name": "get_weather"}})));
        assert_eq!(r.stop, Some(json!(["END"])));
        assert_eq!(r.anthropic.get("top_k"), Some(&json!(5)), "for Anthropic providers");
        assert_eq!(r.anthropic.get("metadata"), Some(&json!({"user_id": "u"})));
        assert!(r.rest.is_empty(), "nothing Anthropic's goes to other providers");
        let to_openai = serde_json::to_value(&r).expect("serialize");
        assert!(to_openai.get("top_k").is_none() && to_openai.get("metadata").is_none());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let base = || json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        let mut no_max = base();
        no_max.as_object_mut().expect("object").remove("max_tokens");
        for (body, param) in [
            (no_max.clone(), "max_tokens"),
            (with("messages", json!([])), "messages"),
            (with("messages", json!([{"role": "tool", "content": "x"}])), "messages[0].role"),
            (
                with("messages", json!([{"role": "user", "content": [{"type": "document", "source": {}}]}])),
                "messages[0].content[0]",
            ),
            (with("tools", json!([{"name": "t"}])), "tools[0].input_schema"),
            (with("tool_choice", json!({"type": "sometimes"})), "tool_choice.type"),
            (with("frobnicate", json!(1)), "frobnicate"),
        ] {
            let e = parse_err(body.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
            assert!(e.message.starts_with(param), "{e}");
        }
        assert!(parse(no_max.to_string().as_bytes(), true).is_ok(), "count_tokens needs no max_tokens");
    }

    #[test]
    fn a_completion_becomes_a_message() {
        let completion = json!({"choices": [{"message": {"role": "assistant", "content": "Sure.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}});
        let m = to_message(&completion, "claude-tenant");
        assert_eq!(m["model"], "claude-tenant");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(
            m["content"],
            json!([{"type": "text", "text": "Sure."}, {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}])
        );
        assert_eq!(m["usage"], json!({"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 0}));
    }

    fn events(bytes: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(bytes)
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect()
    }

    #[test]
    fn chunks_become_message_events_with_the_final_usage() {
        let mut t = stream("m");
        let all = crate::llm::sse::test_stream::translate(&mut t, &crate::llm::sse::test_stream::text_then_call());
        let types: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(all[5]["content_block"], json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {}}));
        assert_eq!(all[6]["delta"], json!({"type": "input_json_delta", "partial_json": "{\"a\":"}));
        assert_eq!(all[9]["delta"]["stop_reason"], "tool_use");
        assert_eq!(all[9]["usage"], json!({"input_tokens": 5, "output_tokens": 4, "cache_read_input_tokens": 0}));
        assert!(t.push(b"data: [DONE]\n\n").is_empty(), "nothing after the end");
    }

    #[test]
    fn an_error_event_ends_the_stream_as_an_anthropic_error() {
        let mut t = stream("m");
        let out = t.push(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"error\":{\"message\":\"the upstream stream failed\",\"type\":\"api_error\"}}\n\n");
        let all = events(&out);
        assert_eq!(all.last().map(|e| e["error"]["message"].clone()), Some(json!("the upstream stream failed")));
        assert_eq!(all.last().map(|e| e["type"].clone()), Some(json!("error")));
        let mut tail = Vec::new();
        t.finish(&mut tail);
        assert!(tail.is_empty(), "no message_stop after an error");
    }

    #[test]
    fn errors_take_anthropics_shape() {
        let body = to_error(404, br#"{"error":{"message":"model x not found","type":"invalid_request_error"}}"#);
        assert_eq!(
            serde_json::from_slice::<Value>(&body).expect("json"),
            json!({"type": "error", "error": {"type": "not_found_error", "message": "model x not found"}})
        );
        assert_eq!(error_type(429), "rate_limit_error");
    }
}
