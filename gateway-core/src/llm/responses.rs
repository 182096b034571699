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

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::inbound::{Completion, chat_request, invalid, model, object, token_limit};
use super::mock::{next_id, now};
use super::sse::{ChunkSink, Translate, named_event};
use super::types::{ChatRequest, Content, FunctionDef, Message, RequestError, Role, Tool, ToolCall, Usage};

/// What a Response repeats of its request: the tenant model, and the fields
/// as sent or their defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Echo {
    /// The tenant model.
    pub model: String,
    instructions: Value,
    max_output_tokens: Value,
    metadata: Value,
    parallel_tool_calls: Value,
    temperature: Value,
    tool_choice: Value,
    tools: Value,
    top_p: Value,
    user: Value,
}

impl Echo {
    /// The echo of the request `obj` (taken apart: it is read already).
    fn new(model: String, mut obj: Map<String, Value>) -> Self {
        let mut field =
            |key: &str, default: fn() -> Value| obj.remove(key).filter(|v| !v.is_null()).unwrap_or_else(default);
        Self {
            model,
            instructions: field("instructions", || Value::Null),
            max_output_tokens: field("max_output_tokens", || Value::Null),
            metadata: field("metadata", || json!({})),
            parallel_tool_calls: field("parallel_tool_calls", || json!(true)),
            temperature: field("temperature", || json!(1.0)),
            tool_choice: field("tool_choice", || json!("auto")),
            tools: field("tools", || json!([])),
            top_p: field("top_p", || json!(1.0)),
            user: field("user", || Value::Null),
        }
    }
}

/// Parses a `/v1/responses` body into the chat request and what the answer echoes.
pub fn parse(body: &[u8]) -> Result<(ChatRequest, Echo), RequestError> {
    let obj = object(body)?;
    for (key, value) in &obj {
        check_field(key, value)?;
    }
    let model = model(&obj, "missing required field")?;
    let mut request = chat_request(model.clone(), &obj)?;
    let messages = &mut request.messages;
    match obj.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(Message::new(Role::System, Some(Content::Text(s.clone())))),
        Some(_) => return Err(invalid("instructions", "expected a string")),
    }
    match obj.get("input") {
        Some(Value::String(s)) => messages.push(Message::new(Role::User, Some(Content::Text(s.clone())))),
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                translate_item(item, &format!("input[{i}]"), messages)?;
            }
        }
        Some(Value::Array(_)) => return Err(invalid("input", "must not be empty")),
        Some(_) => return Err(invalid("input", "expected a string or an array of input items")),
        None => return Err(invalid("input", "missing required field")),
    }
    if let Some(max) = obj.get("max_output_tokens").filter(|v| !v.is_null()) {
        request.max_completion_tokens = Some(token_limit(max, "max_output_tokens")?);
    }
    if let Some(tools) = obj.get("tools").filter(|t| !t.is_null()) {
        request.tools = Some(translate_tools(tools)?).filter(|t| !t.is_empty());
    }
    if let Some(choice) = obj.get("tool_choice").filter(|t| !t.is_null()) {
        request.tool_choice = Some(translate_tool_choice(choice)?);
    }
    if let Some(parallel) = obj.get("parallel_tool_calls").filter(|t| !t.is_null()) {
        if !parallel.is_boolean() {
            return Err(invalid("parallel_tool_calls", "expected a boolean"));
        }
        request.rest.insert("parallel_tool_calls".into(), parallel.clone());
    }
    if request.tools.is_none() {
        // Only hosted tools, or none: chat providers refuse these without tools.
        request.tool_choice = None;
        request.rest.remove("parallel_tool_calls");
    }
    let echo = Echo::new(model, obj);
    Ok((request, echo))
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
fn translate_item(item: &Value, at: &str, out: &mut Vec<Message>) -> Result<(), RequestError> {
    let string = |name: &str| {
        item.get(name).and_then(Value::as_str).ok_or_else(|| invalid(format!("{at}.{name}"), "expected a string"))
    };
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("system") => Role::System,
                Some("developer") => Role::Developer,
                _ => return Err(invalid(format!("{at}.role"), "expected user, assistant, system or developer")),
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => Content::Text(s.clone()),
                Some(Value::Array(parts)) => translate_parts(parts, &format!("{at}.content"))?,
                _ => return Err(invalid(format!("{at}.content"), "expected a string or an array of content parts")),
            };
            // Consecutive assistant output (text, then calls) is one chat message.
            if role == Role::Assistant
                && let Some(last) = out.last_mut()
                && last.role == Role::Assistant
                && last.content.is_none()
            {
                last.content = Some(content);
                return Ok(());
            }
            out.push(Message::new(role, Some(content)));
        }
        "function_call" => {
            let call = ToolCall::function(string("call_id")?, string("name")?, string("arguments")?);
            match out.last_mut() {
                Some(last) if last.role == Role::Assistant => last.tool_calls.get_or_insert_default().push(call),
                _ => out.push(Message { tool_calls: Some(vec![call]), ..Message::new(Role::Assistant, None) }),
            }
        }
        "function_call_output" => {
            let id = string("call_id")?;
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
                }
                _ => return Err(invalid(format!("{at}.output"), "expected a string")),
            };
            out.push(Message::tool_result(id, output));
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

fn translate_parts(parts: &[Value], at: &str) -> Result<Content, RequestError> {
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
        return Ok(Content::Text(out.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n")));
    }
    Ok(Content::Parts(out))
}

/// Function tools -> chat functions. Hosted tools (`web_search`,
/// `file_search`, ...) and tool namespaces are left out: no provider behind
/// the gateway runs them, so the model answers without them.
fn translate_tools(tools: &Value) -> Result<Vec<Tool>, RequestError> {
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
        let description = match t.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => return Err(invalid(format!("tools[{i}].description"), "expected a string")),
        };
        let mut rest = Map::new();
        if let Some(strict) = t.get("strict").filter(|v| !v.is_null()) {
            rest.insert("strict".into(), strict.clone());
        }
        let parameters = t.get("parameters").filter(|v| !v.is_null()).cloned();
        out.push(Tool::function(FunctionDef { name: name.to_owned(), description, parameters, rest }));
    }
    Ok(out)
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

/// A Response object. `previous_response_id` is always null and `store`
/// false: the gateway keeps no responses.
#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'a str,
    output: &'a [Item<'a>],
    error: Option<Value>,
    incomplete_details: Option<Incomplete>,
    previous_response_id: Option<()>,
    reasoning: Reasoning,
    store: bool,
    text: TextConfig,
    truncation: &'static str,
    usage: Option<ResponseUsage>,
    #[serde(flatten)]
    echo: &'a Echo,
}

impl<'a> ResponseObject<'a> {
    fn new(id: &'a str, created_at: u64, echo: &'a Echo, status: &'a str, output: &'a [Item<'a>]) -> Self {
        Self {
            id,
            object: "response",
            created_at,
            status,
            output,
            error: None,
            incomplete_details: (status == "incomplete").then_some(Incomplete { reason: "max_output_tokens" }),
            previous_response_id: None,
            reasoning: Reasoning { effort: None, summary: None },
            store: false,
            text: TextConfig { format: TextFormat { kind: "text" } },
            truncation: "disabled",
            usage: None,
            echo,
        }
    }
}

#[derive(Serialize)]
struct Incomplete {
    reason: &'static str,
}

#[derive(Serialize)]
struct Reasoning {
    effort: Option<()>,
    summary: Option<()>,
}

#[derive(Serialize)]
struct TextConfig {
    format: TextFormat,
}

#[derive(Serialize)]
struct TextFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The usage of a Response.
#[derive(Serialize)]
struct ResponseUsage {
    input_tokens: u64,
    input_tokens_details: InputDetails,
    output_tokens: u64,
    output_tokens_details: OutputDetails,
    total_tokens: u64,
}

#[derive(Serialize)]
struct InputDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct OutputDetails {
    reasoning_tokens: u64,
}

impl From<Usage> for ResponseUsage {
    fn from(usage: Usage) -> Self {
        Self {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: InputDetails { cached_tokens: usage.cached_tokens() },
            output_tokens: usage.completion_tokens,
            output_tokens_details: OutputDetails { reasoning_tokens: 0 },
            total_tokens: usage.total_tokens,
        }
    }
}

/// An output item.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Item<'a> {
    /// The assistant's text.
    Message { id: Cow<'a, str>, status: &'static str, role: &'static str, content: Vec<OutputText<'a>> },
    /// A function call.
    FunctionCall {
        id: Cow<'a, str>,
        call_id: Cow<'a, str>,
        name: Cow<'a, str>,
        arguments: Cow<'a, str>,
        status: &'static str,
    },
}

#[derive(Debug, Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: Cow<'a, str>,
    annotations: [(); 0],
}

impl<'a> OutputText<'a> {
    fn new(text: impl Into<Cow<'a, str>>) -> Self {
        Self { kind: "output_text", text: text.into(), annotations: [] }
    }
}

impl<'a> Item<'a> {
    /// A message output item holding `text` (none: not yet).
    fn message(id: impl Into<Cow<'a, str>>, text: Option<Cow<'a, str>>, status: &'static str) -> Self {
        let content = text.map(OutputText::new).into_iter().collect();
        Item::Message { id: id.into(), status, role: "assistant", content }
    }

    fn call(
        id: impl Into<Cow<'a, str>>,
        call_id: impl Into<Cow<'a, str>>,
        name: impl Into<Cow<'a, str>>,
        arguments: impl Into<Cow<'a, str>>,
        status: &'static str,
    ) -> Self {
        Item::FunctionCall {
            id: id.into(),
            call_id: call_id.into(),
            name: name.into(),
            arguments: arguments.into(),
            status,
        }
    }
}

/// A whole `chat.completion` -> a Response's JSON.
pub fn to_response(completion: &Completion<'_>, echo: &Echo) -> Vec<u8> {
    let mut output = Vec::with_capacity(1 + completion.tool_calls().len());
    if let Some(text) = completion.text() {
        output.push(Item::message(next_id("msg_"), Some(text.into()), "completed"));
    }
    for call in completion.tool_calls() {
        output.push(Item::call(next_id("fc_"), &*call.id, call.name(), call.arguments(), "completed"));
    }
    let status = if completion.finish_reason() == Some("length") { "incomplete" } else { "completed" };
    let id = next_id("resp_");
    let response = ResponseObject {
        usage: Some(completion.usage.into()),
        ..ResponseObject::new(&id, now(), echo, status, &output)
    };
    serde_json::to_vec(&response).unwrap_or_default()
}

/// The output item being streamed.
#[derive(Debug)]
enum Open {
    Text { id: String, index: usize, text: String },
    Call { id: String, index: usize, chat_index: u64, call_id: String, name: String, arguments: String },
}

/// One event: its type and sequence number, then its fields.
#[derive(Serialize)]
struct Event<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    data: T,
}

/// `response.created`, `.in_progress`, `.completed`, `.incomplete`, `.failed`.
#[derive(Serialize)]
struct Snapshot<'a> {
    response: ResponseObject<'a>,
}

/// `response.output_item.added` / `.done`.
#[derive(Serialize)]
struct ItemEvent<'a> {
    output_index: usize,
    item: &'a Item<'a>,
}

/// The events of one item's content: `.delta` (with `delta`), `.done`
/// (with `text`, `arguments` or `part`), `content_part.added`.
#[derive(Serialize)]
struct ContentEvent<'a, T> {
    item_id: &'a str,
    output_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<usize>,
    #[serde(flatten)]
    data: T,
}

#[derive(Serialize)]
struct Delta<'a> {
    delta: &'a str,
}

#[derive(Serialize)]
struct TextDone<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct ArgumentsDone<'a> {
    arguments: &'a str,
}

#[derive(Serialize)]
struct Part<'a> {
    part: OutputText<'a>,
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
    output: Vec<Item<'static>>,
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

    fn event(&mut self, out: &mut Vec<u8>, name: &str, data: impl Serialize) {
        let sequence_number = self.next_sequence();
        named_event(out, name, &Event { kind: name, sequence_number, data });
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence - 1
    }

    fn content<T: Serialize>(&mut self, out: &mut Vec<u8>, name: &str, at: (&str, usize), text: bool, data: T) {
        let (item_id, output_index) = at;
        self.event(out, name, ContentEvent { item_id, output_index, content_index: text.then_some(0), data });
    }

    /// The Response as it stands, as the event `name`.
    fn snapshot(&mut self, out: &mut Vec<u8>, name: &str, status: &str, usage: Option<Usage>, error: Option<Value>) {
        let sequence_number = self.next_sequence();
        let response = ResponseObject {
            usage: usage.map(ResponseUsage::from),
            error,
            ..ResponseObject::new(&self.id, self.created, &self.echo, status, &self.output)
        };
        named_event(out, name, &Event { kind: name, sequence_number, data: Snapshot { response } });
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let item = match self.open.take() {
            None => return,
            Some(Open::Text { id, index, text }) => {
                self.content(out, "response.output_text.done", (&id, index), true, TextDone { text: &text });
                let part = Part { part: OutputText::new(&*text) };
                self.content(out, "response.content_part.done", (&id, index), true, part);
                (index, Item::message(id, Some(text.into()), "completed"))
            }
            Some(Open::Call { id, index, call_id, name, arguments, .. }) => {
                let done = ArgumentsDone { arguments: &arguments };
                self.content(out, "response.function_call_arguments.done", (&id, index), false, done);
                (index, Item::call(id, call_id, name, arguments, "completed"))
            }
        };
        let (output_index, item) = item;
        self.event(out, "response.output_item.done", ItemEvent { output_index, item: &item });
        self.output.push(item);
    }

    fn text(&mut self, out: &mut Vec<u8>, delta: &str) {
        if !matches!(self.open, Some(Open::Text { .. })) {
            self.close(out);
            let (id, index) = (next_id("msg_"), self.output.len());
            let item = Item::message(&*id, None, "in_progress");
            self.event(out, "response.output_item.added", ItemEvent { output_index: index, item: &item });
            self.content(out, "response.content_part.added", (&id, index), true, Part { part: OutputText::new("") });
            self.open = Some(Open::Text { id, index, text: String::new() });
        }
        let Some(Open::Text { id, index, mut text }) = self.open.take() else { return };
        text.push_str(delta);
        self.content(out, "response.output_text.delta", (&id, index), true, Delta { delta });
        self.open = Some(Open::Text { id, index, text });
    }

    fn call(&mut self, out: &mut Vec<u8>, call: &Value) {
        let n = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let same = matches!(&self.open, Some(Open::Call { chat_index, .. }) if *chat_index == n);
        if !same {
            let Some(call_id) = call.get("id").and_then(Value::as_str) else {
                // A later delta of a call already closed: items do not interleave.
                return;
            };
            self.close(out);
            let (id, index) = (next_id("fc_"), self.output.len());
            let name = call["function"]["name"].as_str().unwrap_or_default();
            let item = Item::call(&*id, call_id, name, "", "in_progress");
            self.event(out, "response.output_item.added", ItemEvent { output_index: index, item: &item });
            let (call_id, name) = (call_id.to_owned(), name.to_owned());
            self.open = Some(Open::Call { id, index, chat_index: n, call_id, name, arguments: String::new() });
        }
        let delta = call["function"].get("arguments").and_then(Value::as_str).unwrap_or_default();
        if delta.is_empty() {
            return;
        }
        let Some(Open::Call { id, index, chat_index, call_id, name, mut arguments }) = self.open.take() else { return };
        arguments.push_str(delta);
        self.content(out, "response.function_call_arguments.delta", (&id, index), false, Delta { delta });
        self.open = Some(Open::Call { id, index, chat_index, call_id, name, arguments });
    }
}

impl ChunkSink for ResponseEvents {
    fn start(&mut self, out: &mut Vec<u8>) {
        self.snapshot(out, "response.created", "in_progress", None, None);
        self.snapshot(out, "response.in_progress", "in_progress", None, None);
    }

    fn error(&mut self, error: &Value, out: &mut Vec<u8>) {
        let message = error.get("message").cloned().unwrap_or_else(|| json!("error"));
        let code = error.get("code").cloned().unwrap_or(Value::Null);
        let param = error.get("param").cloned().unwrap_or(Value::Null);
        self.event(out, "error", json!({"code": code, "message": message, "param": param}));
        let code = if code.is_null() { json!("server_error") } else { code };
        self.snapshot(out, "response.failed", "failed", None, Some(json!({"code": code, "message": message})));
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
        self.snapshot(out, name, status, Some(usage), None);
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
        assert_eq!(echo.instructions, "Be brief.");
        assert_eq!(echo.temperature, 1.0, "defaults are echoed");
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
        let (r, _) = parse_ok(json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}],
            "tool_choice": "auto", "parallel_tool_calls": false}));
        assert!(
            r.tools.is_none() && r.tool_choice.is_none() && r.rest.is_empty(),
            "no function tool: chat providers refuse tool_choice and parallel_tool_calls without tools"
        );
    }

    #[test]
    fn a_completion_becomes_a_response() {
        let completion = json!({"choices": [{"message": {"role": "assistant", "content": "Sure.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}});
        let (_, echo) = parse_ok(json!({"model": "tenant-model", "input": "hi", "max_output_tokens": 50}));
        let bytes = completion.to_string();
        let mut r: Value =
            serde_json::from_slice(&to_response(&Completion::parse(bytes.as_bytes()).expect("read"), &echo))
                .expect("a Response is JSON");
        assert!(r["id"].as_str().is_some_and(|id| id.starts_with("resp_")) && r["created_at"].is_u64(), "{r}");
        assert!(r["output"][0]["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "{r}");
        assert!(r["output"][1]["id"].as_str().is_some_and(|id| id.starts_with("fc_")), "{r}");
        for at in ["/id", "/created_at", "/output/0/id", "/output/1/id"] {
            *r.pointer_mut(at).expect("present") = Value::Null;
        }
        assert_eq!(
            r,
            json!({"id": null, "object": "response", "created_at": null, "status": "completed", "model": "tenant-model",
                "output": [
                    {"type": "message", "id": null, "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Sure.", "annotations": []}]},
                    {"type": "function_call", "id": null, "call_id": "call_1", "name": "f", "arguments": "{}",
                        "status": "completed"}],
                "error": null, "incomplete_details": null, "previous_response_id": null,
                "reasoning": {"effort": null, "summary": null}, "store": false, "text": {"format": {"type": "text"}},
                "truncation": "disabled",
                "usage": {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
                    "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 10},
                "instructions": null, "max_output_tokens": 50, "metadata": {}, "parallel_tool_calls": true,
                "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0, "user": null})
        );
        let cut = json!({"choices": [{"message": {"content": "So"}, "finish_reason": "length"}]}).to_string();
        let r: Value = serde_json::from_slice(&to_response(&Completion::parse(cut.as_bytes()).expect("read"), &echo))
            .expect("json");
        assert_eq!(
            (&r["status"], &r["incomplete_details"]),
            (&json!("incomplete"), &json!({"reason": "max_output_tokens"}))
        );
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
        let (text_id, call_id) = (events[2]["item"]["id"].clone(), events[9]["item"]["id"].clone());
        let status = |e: &Value| e["item"]["status"].clone();
        assert_eq!((status(&events[2]), &events[2]["item"]["content"]), (json!("in_progress"), &json!([])));
        assert_eq!((status(&events[8]), status(&events[13])), (json!("completed"), json!("completed")));
        assert_eq!(
            events[4],
            json!({"type": "response.output_text.delta", "sequence_number": 4, "item_id": text_id, "output_index": 0,
                "content_index": 0, "delta": events[4]["delta"]})
        );
        assert_eq!(
            events[7]["part"],
            json!({"type": "output_text", "text": "Hello", "annotations": []}),
            "{}",
            events[7]
        );
        assert_eq!(
            events[10],
            json!({"type": "response.function_call_arguments.delta", "sequence_number": 10, "item_id": call_id,
                "output_index": 1, "delta": "{\"a\":"}),
            "argument deltas have no content_index"
        );
        assert_eq!(
            (&events[9]["item"]["call_id"], &events[9]["item"]["name"], &events[12]["arguments"]),
            (&json!("call_1"), &json!("f"), &json!("{\"a\":1}"))
        );
    }

    #[test]
    fn an_error_event_fails_the_response() {
        let (_, echo) = parse_ok(json!({"model": "m", "input": "hi"}));
        let mut t = stream(echo);
        let events = crate::llm::sse::test_stream::translate(
            &mut t,
            "data: {\"error\":{\"message\":\"the upstream stream failed\",\"type\":\"api_error\"}}\n\n",
        );
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect();
        assert_eq!(types, ["response.created", "response.in_progress", "error", "response.failed"]);
        assert_eq!(events[2]["message"], "the upstream stream failed");
        assert_eq!(
            events[3]["response"]["error"],
            json!({"code": "server_error", "message": "the upstream stream failed"})
        );
        assert_eq!(events[3]["response"]["status"], "failed");
    }
}
