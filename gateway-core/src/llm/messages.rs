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
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::inbound::{Completion, chat_request, invalid, model, object, token_limit};
use super::mock::next_id;
use super::sse::{ChunkSink, Translate, named_event};
use super::types::{ChatRequest, Content, FunctionDef, Message, RequestError, Role, Tool, ToolCall, Usage};

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
        Some(v) => Some(token_limit(v, "max_tokens")?),
        None if count_tokens => None,
        None => return Err(invalid("max_tokens", "Field required")),
    };
    let mut request = chat_request(model, &obj)?;
    request.max_tokens = max_tokens;
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
        request.messages.push(Message::new(Role::System, Some(Content::Text(text))));
    }
    let turns = match obj.get("messages") {
        Some(Value::Array(turns)) if !turns.is_empty() => turns,
        Some(Value::Array(_)) => return Err(invalid("messages", "must contain at least one message")),
        Some(_) => return Err(invalid("messages", "expected an array")),
        None => return Err(invalid("messages", "Field required")),
    };
    for (i, turn) in turns.iter().enumerate() {
        translate_turn(turn, &format!("messages[{i}]"), &mut request.messages)?;
    }
    if let Some(tools) = obj.get("tools") {
        request.tools = Some(translate_tools(tools)?);
    }
    if let Some(choice) = obj.get("tool_choice") {
        request.tool_choice = Some(translate_tool_choice(choice)?);
    }
    if let Some(stop) = obj.get("stop_sequences") {
        if !stop.as_array().is_some_and(|s| s.iter().all(Value::is_string)) {
            return Err(invalid("stop_sequences", "expected an array of strings"));
        }
        request.stop = Some(stop.clone());
    }
    for (key, value) in &obj {
        if ANTHROPIC_ONLY.contains(&key.as_str()) {
            request.anthropic.insert(key.clone(), value.clone());
        } else if !TRANSLATED.contains(&key.as_str()) && !DROPPED.contains(&key.as_str()) {
            return Err(invalid(key.clone(), "Extra inputs are not permitted"));
        }
    }
    Ok(request)
}

/// One Messages turn -> chat messages: a user turn's `tool_result` blocks
/// become `tool` messages (first, as the calls they answer came before),
/// the rest one user message; an assistant turn's `tool_use` blocks become
/// its tool calls.
fn translate_turn(turn: &Value, at: &str, out: &mut Vec<Message>) -> Result<(), RequestError> {
    let name = turn.get("role").and_then(Value::as_str).unwrap_or_default();
    let role = match name {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "system" => Role::System,
        _ => return Err(invalid(format!("{at}.role"), "expected \"user\", \"assistant\" or \"system\"")),
    };
    let blocks = match turn.get("content") {
        Some(Value::String(text)) => {
            out.push(Message::new(role, Some(Content::Text(text.clone()))));
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
        let string = |name: &str| {
            block.get(name).and_then(Value::as_str).ok_or_else(|| invalid(format!("{at}.{name}"), "expected a string"))
        };
        match (role, kind) {
            (_, "text") => parts.push(json!({"type": "text", "text": string("text")?})),
            (Role::User, "image") => parts.push(image_part(block, &at)?),
            (Role::User, "tool_result") => out.push(tool_result(block, &at)?),
            (Role::Assistant, "tool_use") => {
                let input = block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string);
                tool_calls.push(ToolCall::function(string("id")?, string("name")?, input));
            }
            (Role::Assistant, "thinking" | "redacted_thinking") => {}
            _ => return Err(invalid(at, format!("a {name} turn cannot carry a {kind:?} block through this gateway"))),
        }
    }
    let content = if parts.is_empty() {
        None
    } else if parts.iter().all(|p| p["type"] == "text") {
        Some(Content::Text(parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n")))
    } else {
        Some(Content::Parts(parts))
    };
    if role == Role::Assistant {
        let tool_calls = Some(tool_calls).filter(|calls| !calls.is_empty());
        out.push(Message { tool_calls, ..Message::new(role, content) });
    } else if content.is_some() {
        out.push(Message::new(role, content));
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

fn tool_result(block: &Value, at: &str) -> Result<Message, RequestError> {
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
    Ok(Message::tool_result(id, text))
}

/// Client tools -> functions. A tool with `defer_loading` is left out: the
/// model may only load it through Anthropic's tool search, which no other
/// provider has, so it is not callable at first.
fn translate_tools(tools: &Value) -> Result<Vec<Tool>, RequestError> {
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
        out.push(Tool::function(FunctionDef {
            name: name.to_owned(),
            description: t.get("description").and_then(Value::as_str).map(str::to_owned),
            parameters: Some(schema.clone()),
            rest: Map::new(),
        }));
    }
    Ok(out)
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

/// A Messages answer (whole, or empty in `message_start`).
#[derive(Serialize)]
struct MessageObject<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: MessagesUsage,
}

impl<'a> MessageObject<'a> {
    fn new(model: &'a str, content: Vec<Block<'a>>, stop_reason: Option<&'static str>, usage: MessagesUsage) -> Self {
        Self {
            id: message_id(),
            kind: "message",
            role: "assistant",
            model,
            content,
            stop_reason,
            stop_sequence: None,
            usage,
        }
    }
}

/// A content block.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text { text: &'a str },
    ToolUse { id: &'a str, name: &'a str, input: Value },
}

/// Usage in Anthropic's fields: `input_tokens` leaves out the tokens read from a cache.
#[derive(Serialize)]
struct MessagesUsage {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_read_input_tokens: Option<u64>,
}

impl From<Usage> for MessagesUsage {
    fn from(usage: Usage) -> Self {
        Self {
            input_tokens: usage.prompt_tokens - usage.cached_tokens(),
            output_tokens: usage.completion_tokens,
            cache_read_input_tokens: Some(usage.cached_tokens()),
        }
    }
}

/// A whole `chat.completion` -> a Messages answer's JSON for the tenant `model`.
pub fn to_message(completion: &Completion<'_>, model: &str) -> Vec<u8> {
    let mut content = Vec::with_capacity(1 + completion.tool_calls().len());
    if let Some(text) = completion.text() {
        content.push(Block::Text { text });
    }
    for call in completion.tool_calls() {
        let input = serde_json::from_str(call.arguments()).unwrap_or_else(|_| json!({}));
        content.push(Block::ToolUse { id: &call.id, name: call.name(), input });
    }
    let stop = stop_reason(completion.finish_reason());
    serde_json::to_vec(&MessageObject::new(model, content, Some(stop), completion.usage.into())).unwrap_or_default()
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
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The stream events, each with its `type`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent<'a> {
    MessageStart { message: MessageObject<'a> },
    ContentBlockStart { index: usize, content_block: Block<'a> },
    ContentBlockDelta { index: usize, delta: BlockDelta<'a> },
    ContentBlockStop { index: usize },
    MessageDelta { delta: StopDelta, usage: MessagesUsage },
    MessageStop,
    Error { error: StreamError<'a> },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct StreamError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a Value,
}

impl StreamEvent<'_> {
    fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Error { .. } => "error",
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        named_event(out, self.name(), self);
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

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            StreamEvent::ContentBlockStop { index }.write(out);
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, tool: Option<u64>, content_block: Block<'_>) -> usize {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, tool));
        StreamEvent::ContentBlockStart { index, content_block }.write(out);
        index
    }
}

impl ChunkSink for MessageEvents {
    fn start(&mut self, out: &mut Vec<u8>) {
        let usage = MessagesUsage { input_tokens: 0, output_tokens: 0, cache_read_input_tokens: None };
        StreamEvent::MessageStart { message: MessageObject::new(&self.model, Vec::new(), None, usage) }.write(out);
    }

    fn error(&mut self, error: &Value, out: &mut Vec<u8>) {
        self.close_block(out);
        let kind = match error.get("type").and_then(Value::as_str) {
            Some("invalid_request_error") => "invalid_request_error",
            _ => "api_error",
        };
        let fallback = json!("error");
        let message = error.get("message").unwrap_or(&fallback);
        StreamEvent::Error { error: StreamError { kind, message } }.write(out);
    }

    fn choice(&mut self, choice: &Value, out: &mut Vec<u8>) {
        let delta = &choice["delta"];
        if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some((index, None)) => index,
                _ => self.open_block(out, None, Block::Text { text: "" }),
            };
            StreamEvent::ContentBlockDelta { index, delta: BlockDelta::TextDelta { text } }.write(out);
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let n = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let index = match self.tools.get(&n) {
                Some(index) if self.open == Some((*index, Some(n))) => *index,
                // A later delta of a call whose block was closed: Messages blocks do not interleave.
                Some(_) => continue,
                None => {
                    let id = call["id"].as_str().unwrap_or_default();
                    let name = call["function"]["name"].as_str().unwrap_or_default();
                    let index = self.open_block(out, Some(n), Block::ToolUse { id, name, input: json!({}) });
                    self.tools.insert(n, index);
                    index
                }
            };
            if let Some(args) = call["function"].get("arguments").and_then(Value::as_str).filter(|a| !a.is_empty()) {
                let delta = BlockDelta::InputJsonDelta { partial_json: args };
                StreamEvent::ContentBlockDelta { index, delta }.write(out);
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = Some(stop_reason(Some(finish)));
        }
    }

    fn finish(&mut self, usage: Usage, out: &mut Vec<u8>) {
        self.close_block(out);
        let delta = StopDelta { stop_reason: self.stop.unwrap_or("end_turn"), stop_sequence: None };
        StreamEvent::MessageDelta { delta, usage: usage.into() }.write(out);
        StreamEvent::MessageStop.write(out);
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
        let bytes = completion.to_string();
        let m: Value =
            serde_json::from_slice(&to_message(&Completion::parse(bytes.as_bytes()).expect("read"), "claude-tenant"))
                .expect("a message is JSON");
        assert!(m["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "{m}");
        assert_eq!(
            (&m["type"], &m["role"], &m["stop_sequence"]),
            (&json!("message"), &json!("assistant"), &Value::Null)
        );
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
        let mut start = all[0]["message"].clone();
        assert!(start["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "{start}");
        start["id"] = Value::Null;
        assert_eq!(
            start,
            json!({"id": null, "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}})
        );
        assert_eq!(
            all[1],
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(all[2]["delta"]["type"], "text_delta");
        assert_eq!(all[4], json!({"type": "content_block_stop", "index": 0}));
        assert_eq!(all[10], json!({"type": "message_stop"}));
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
