//! Anthropic's Messages API behind the OpenAI interface: requests are
//! translated to Messages (system prompt, tools, tool calls and results),
//! answers and streaming events back to Chat Completions.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Map, Value, json};

use super::endpoint::{Wire, read_all};
use super::mock::now;
use super::outbound::{self, ChunkWriter, StreamEvents, declaration, image, push_turn, sampling, user_parts};
use super::types::{ChatRequest, Content, Role, Usage};
use super::{Call, Endpoint, Reply, UpstreamError, status_error};

/// `anthropic-version` sent with every request.
pub const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; used when the client sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// Request fields Anthropic understands that pass through unchanged.
const PASSTHROUGH: &[&str] = &["top_k", "metadata", "thinking", "service_tier"];

/// An Anthropic provider.
#[derive(Debug)]
pub struct Anthropic {
    endpoint: Endpoint,
}

impl Anthropic {
    /// The Messages API.
    pub const WIRE: Wire = Wire {
        path: "/messages",
        key_header: "x-api-key",
        key_prefix: "",
        fixed: &[("anthropic-version", API_VERSION)],
    };

    /// A provider at `endpoint` (e.g. `https://api.anthropic.com/v1` with [`Self::WIRE`]).
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// Sends one request.
    pub async fn call(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        let body = serde_json::to_vec(&to_messages(call.request, call.model))
            .map_err(|e| UpstreamError::Protocol(format!("cannot encode the request: {e}")))?;
        let response = self.endpoint.post(body, call).await?;
        if call.request.stream {
            return Ok(Reply::Stream(translate_stream(response, call.deadline, call.request.include_usage())));
        }
        let body = read_all(response, call.deadline).await?;
        let message: Value = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Protocol(format!("the body is not a message: {e}")))?;
        if message.get("type").and_then(Value::as_str) == Some("error") {
            return Err(status_error(http::StatusCode::BAD_GATEWAY, &HeaderMap::new(), &body));
        }
        let (completion, usage) = from_message(&message);
        Ok(Reply::Complete { body: Bytes::from(completion.to_string()), usage: Some(usage) })
    }
}

/// OpenAI request -> Messages API request.
pub fn to_messages(request: &ChatRequest, model: &str) -> Value {
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in &request.messages {
        match m.role {
            Role::System | Role::Developer => {
                if let Some(c) = &m.content {
                    system.push(c.text());
                }
            }
            Role::User => push_blocks(&mut messages, "user", user_blocks(m.content.as_ref())),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if let Some(text) = m.content.as_ref().map(Content::text).filter(|t| !t.is_empty()) {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m.tool_calls.iter().flatten() {
                    let input: Value = serde_json::from_str(&call.function.arguments).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.function.name, "input": input}));
                }
                push_blocks(&mut messages, "assistant", blocks);
            }
            Role::Tool | Role::Function => {
                let id = m.tool_call_id.clone().unwrap_or_default();
                let content = m.content.as_ref().map(Content::text).unwrap_or_default();
                push_blocks(
                    &mut messages,
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": content})],
                );
            }
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("max_tokens".into(), json!(request.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS)));
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    sampling(request, &mut out, ["temperature", "top_p", "stop_sequences"]);
    if let Some(tools) = &request.tools {
        let tools: Vec<Value> = tools.iter().map(|t| declaration(t, "input_schema", |schema| schema)).collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    let parallel = request.rest.get("parallel_tool_calls").and_then(Value::as_bool);
    let choice = match &request.tool_choice {
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| json!({"type": "tool", "name": name})),
        Some(_) => Some(json!({"type": "auto"})),
        None => (parallel == Some(false) && request.tools.is_some()).then(|| json!({"type": "auto"})),
    };
    if let Some(mut choice) = choice {
        if parallel == Some(false) && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        out.insert("tool_choice".into(), choice);
    }
    if let Some(user) = request.rest.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    for key in PASSTHROUGH {
        if let Some(v) = request.rest.get(*key) {
            out.insert((*key).into(), v.clone());
        }
    }
    for (key, value) in &request.anthropic {
        out.insert(key.clone(), value.clone());
    }
    if request.stream {
        out.insert("stream".into(), json!(true));
    }
    Value::Object(out)
}

/// Appends blocks as a turn of `role`, merged with a previous one of the same
/// role (Anthropic wants user and assistant turns to alternate).
fn push_blocks(messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    push_turn(messages, role, "content", blocks);
}

fn user_blocks(content: Option<&Content>) -> Vec<Value> {
    user_parts(
        content,
        |text| json!({"type": "text", "text": text}),
        |url| {
            image(
                url,
                |media, data| json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}),
                |url| json!({"type": "image", "source": {"type": "url", "url": url}}),
            )
        },
    )
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

fn usage_of(u: Option<&Value>) -> Usage {
    let get = |k: &str| u.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    // Upstream numbers: saturate rather than overflow.
    let prompt = get("input_tokens")
        .saturating_add(get("cache_read_input_tokens"))
        .saturating_add(get("cache_creation_input_tokens"));
    Usage::new(prompt, get("output_tokens")).with_cached(get("cache_read_input_tokens"))
}

/// Messages API answer -> `chat.completion`.
pub fn from_message(message: &Value) -> (Value, Usage) {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message.get("content").and_then(Value::as_array).into_iter().flatten() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => tool_calls.push(json!({
                "id": block.get("id").cloned().unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or_default(),
                    "arguments": block.get("input").map_or_else(|| "{}".to_string(), Value::to_string),
                },
            })),
            _ => {}
        }
    }
    let usage = usage_of(message.get("usage"));
    let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }});
    if !tool_calls.is_empty() {
        msg["tool_calls"] = Value::Array(tool_calls);
    }
    let completion = json!({
        "id": message.get("id").cloned().unwrap_or_default(),
        "object": "chat.completion",
        "created": now(),
        "model": message.get("model").cloned().unwrap_or_default(),
        "choices": [{"index": 0, "message": msg, "logprobs": null,
            "finish_reason": finish_reason(message.get("stop_reason").and_then(Value::as_str))}],
        "usage": usage,
    });
    (completion, usage)
}

/// Translates Messages API stream events into `chat.completion.chunk` events.
#[derive(Debug, Default)]
pub struct StreamTranslator {
    chunks: ChunkWriter,
    usage: Usage,
    /// Content block index -> tool call index.
    tool_blocks: Vec<(u64, usize)>,
    finished: bool,
}

impl StreamTranslator {
    /// A translator; `include_usage` adds the final usage chunk.
    pub fn new(include_usage: bool) -> Self {
        Self { chunks: ChunkWriter::new("", include_usage), ..Default::default() }
    }

    /// The OpenAI events for one Anthropic event (`data` is its JSON).
    pub fn translate(&mut self, data: &str, out: &mut Vec<Bytes>) -> Result<(), UpstreamError> {
        // Nothing goes out after `[DONE]`, even when more events came in the same chunk.
        if self.finished {
            return Ok(());
        }
        let event: Value =
            serde_json::from_str(data).map_err(|e| UpstreamError::Protocol(format!("invalid stream event: {e}")))?;
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let m = &event["message"];
                self.chunks.id = m.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                self.chunks.model = m.get("model").and_then(Value::as_str).unwrap_or_default().to_string();
                self.usage = usage_of(m.get("usage"));
                out.push(self.chunks.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            Some("content_block_start") => {
                let block = &event["content_block"];
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let tool_index = self.tool_blocks.len();
                    self.tool_blocks.push((index, tool_index));
                    out.push(self.chunks.chunk(
                        json!({"tool_calls": [{"index": tool_index, "id": block["id"], "type": "function",
                            "function": {"name": block["name"], "arguments": ""}}]}),
                        None,
                    ));
                }
            }
            Some("content_block_delta") => {
                let delta = &event["delta"];
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => out.push(self.chunks.chunk(json!({"content": delta["text"]}), None)),
                    Some("input_json_delta") => {
                        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let tool_index = self.tool_blocks.iter().find(|(b, _)| *b == index).map_or(0, |(_, t)| *t);
                        out.push(self.chunks.chunk(
                            json!({"tool_calls": [{"index": tool_index, "function": {"arguments": delta["partial_json"]}}]}),
                            None,
                        ));
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                let output = event.get("usage").and_then(|u| u.get("output_tokens")).and_then(Value::as_u64);
                if let Some(output) = output {
                    self.usage = Usage::new(self.usage.prompt_tokens, output).with_cached(self.usage.cached_tokens());
                }
                let reason = finish_reason(event["delta"].get("stop_reason").and_then(Value::as_str));
                out.push(self.chunks.chunk(json!({}), Some(reason)));
            }
            Some("message_stop") => {
                self.chunks.done(self.usage, out);
                self.finished = true;
            }
            Some("error") => {
                let message = event["error"].get("message").and_then(Value::as_str).unwrap_or("stream error");
                return Err(UpstreamError::Protocol(format!("the provider reported: {message}")));
            }
            _ => {}
        }
        Ok(())
    }
}

impl StreamEvents for StreamTranslator {
    type Framing = super::sse::Decoder;

    fn translate(&mut self, event: super::sse::Event, out: &mut Vec<Bytes>) -> Result<(), UpstreamError> {
        StreamTranslator::translate(self, &event.data, out)
    }

    fn complete(&self) -> bool {
        self.finished
    }

    fn end(&mut self, _out: &mut Vec<Bytes>) -> Result<(), UpstreamError> {
        Err(UpstreamError::Protocol("the stream ended before message_stop".into()))
    }
}

fn translate_stream(
    response: crate::egress::Response,
    deadline: tokio::time::Instant,
    include_usage: bool,
) -> super::EventStream {
    outbound::translate_stream(response, deadline, StreamTranslator::new(include_usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_translation_moves_system_tools_and_tool_results() {
        let r: ChatRequest = serde_json::from_value(json!({
            "model": "claude", "max_tokens": 100, "stop": "END", "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": [{"type": "text", "text": "and tomorrow?"}]}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required"
        }))
        .expect("request");
        let m = to_messages(&r, "claude-3-5-haiku");
        assert_eq!(m["system"], "Be brief.");
        assert_eq!(m["model"], "claude-3-5-haiku");
        assert_eq!(m["max_tokens"], 100);
        assert_eq!(m["stop_sequences"], json!(["END"]));
        assert_eq!(m["tool_choice"], json!({"type": "any", "disable_parallel_tool_use": true}));
        assert_eq!(m["tools"][0]["input_schema"], json!({"type": "object"}));
        let msgs = m["messages"].as_array().expect("messages");
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(
            msgs[1]["content"][0],
            json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}})
        );
        // The tool result and the next user text merge into one user turn.
        assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
        assert_eq!(msgs[2]["content"][1]["text"], "and tomorrow?");
    }

    #[test]
    fn response_translation_maps_tool_use_and_usage() {
        let (c, usage) = from_message(&json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5}
        }));
        assert_eq!(usage, Usage::new(10, 5));
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
    }

    /// Found by `fuzz/` (anthropic_translation): events after `message_stop`
    /// in the same upstream chunk were translated and sent after `[DONE]`.
    #[test]
    fn nothing_follows_done() {
        let mut t = StreamTranslator::new(false);
        let mut out = Vec::new();
        t.translate(r#"{"type":"message_stop"}"#, &mut out).expect("stop");
        assert_eq!(out.len(), 1);
        for late in [
            r#"{"type":"message_start","message":{"id":"m","model":"c"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"late"}}"#,
            r#"{"type":"message_stop"}"#,
        ] {
            t.translate(late, &mut out).expect("ignored");
        }
        assert_eq!(out, vec![Bytes::from_static(crate::llm::sse::DONE)]);
        let (_, usage) = from_message(&json!({"usage": {"input_tokens": u64::MAX, "cache_read_input_tokens": 5}}));
        assert_eq!(usage.prompt_tokens, u64::MAX);
    }

    #[test]
    fn stream_translation() {
        let mut t = StreamTranslator::new(true);
        let mut out = Vec::new();
        for e in [
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 7, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ] {
            t.translate(&e.to_string(), &mut out).expect("translates");
        }
        let text: Vec<String> = out.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        assert_eq!(text.len(), 7, "{text:?}");
        assert!(text[1].contains(r#""content":"Hi""#));
        assert!(text[2].contains(r#""id":"toolu_1""#) && text[2].contains(r#""index":0"#));
        assert!(text[3].contains(r#""arguments":"{\"a\":""#));
        assert!(text[4].contains(r#""finish_reason":"tool_calls""#));
        assert!(text[5].contains(r#""prompt_tokens":7"#) && text[5].contains(r#""completion_tokens":9"#));
        assert_eq!(text[6], "data: [DONE]\n\n");
    }
}
