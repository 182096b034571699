//! Amazon Bedrock's Converse API (`/model/{model}/converse` and
//! `/converse-stream`) behind the OpenAI interface: requests are translated to
//! Converse's `messages` (text, images, `toolUse` and `toolResult` blocks),
//! `system`, `inferenceConfig` and `toolConfig`; answers back to Chat
//! Completions, and ConverseStream's binary event-stream frames
//! (`application/vnd.amazon.eventstream`, decoded by AWS's own
//! `aws-smithy-eventstream`) to chunks. Usage counts cache reads and writes
//! as prompt tokens, as OpenAI does. Requests are signed with SigV4
//! ([`super::aws_auth`]) or carry a Bedrock API key as a bearer token.

use std::collections::HashMap;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::endpoint::{Wire, read_all};
use super::mock::{next_id, now};
use super::outbound::{self, ChunkWriter, Framing, StreamEvents, declaration, generation_config, image, push_turn};
use super::types::{ChatRequest, Content, Role, Usage};
use super::{Call, Endpoint, Reply, UpstreamError};

/// A Bedrock runtime.
#[derive(Debug)]
pub struct Bedrock {
    endpoint: Endpoint,
}

impl Bedrock {
    /// The Converse API; a Bedrock API key goes as a bearer token (SigV4 replaces it otherwise).
    pub const WIRE: Wire = Wire { path: "", key_header: "authorization", key_prefix: "Bearer ", fixed: &[] };

    /// A provider at `endpoint` (e.g. `https://bedrock-runtime.us-east-1.amazonaws.com` with [`Self::WIRE`]).
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// `{base}/model/{model}/{operation}`, the model one segment with `:` escaped as AWS's SDKs do.
    fn url(&self, model: &str, operation: &str) -> reqwest::Url {
        let mut url = self.endpoint.url().clone();
        let escaped = url::form_urlencoded::byte_serialize(model.as_bytes()).collect::<String>();
        let path = format!("{}/model/{escaped}/{operation}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }

    /// Sends one request.
    pub async fn call(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        let stream = call.request.stream;
        let body = serde_json::to_vec(&to_converse(call.request)?)
            .map_err(|e| UpstreamError::Protocol(format!("cannot encode the request: {e}")))?;
        let operation = if stream { "converse-stream" } else { "converse" };
        let response = self.endpoint.post_to(self.url(call.model, operation), body, call).await?;
        if stream {
            let events = StreamTranslator::new(call.model, call.request.include_usage());
            return Ok(Reply::Stream(outbound::translate_stream(response, call.deadline, events)));
        }
        let body = read_all(response, call.deadline).await?;
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Protocol(format!("the body is not a Converse answer: {e}")))?;
        let (completion, usage) = from_converse(&answer, call.model);
        Ok(Reply::Complete { body: Bytes::from(completion.to_string()), usage: Some(usage) })
    }
}

/// A request Bedrock cannot take as sent: the client's to fix.
fn refused(message: String) -> UpstreamError {
    UpstreamError::Status {
        status: StatusCode::BAD_REQUEST,
        retry_after: None,
        message,
        kind: Some("invalid_request_error".into()),
        param: Some("messages".into()),
        code: None,
    }
}

/// A user message's content as Converse blocks. Bedrock takes an image as
/// the bytes (base64 in JSON) of a png, jpeg, gif or webp, never a link: any
/// other image refuses the request.
fn user_blocks(content: Option<&Content>) -> Result<Vec<Value>, UpstreamError> {
    let image_block = |url: &str| {
        image(
            url,
            |mime, data| {
                let format = mime.strip_prefix("image/").filter(|f| ["png", "jpeg", "gif", "webp"].contains(f));
                format.map_or(Value::Null, |f| json!({"image": {"format": f, "source": {"bytes": data}}}))
            },
            |_| Value::Null,
        )
    };
    let blocks = outbound::user_parts(content, |text| json!({"text": text}), image_block);
    if blocks.iter().any(Value::is_null) {
        return Err(refused(
            "a bedrock model takes images as base64 data URLs of png, jpeg, gif or webp, not links".into(),
        ));
    }
    Ok(blocks)
}

/// OpenAI request -> Converse request.
pub fn to_converse(request: &ChatRequest) -> Result<Value, UpstreamError> {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let mut tool_blocks = false;
    for m in &request.messages {
        match m.role {
            Role::System | Role::Developer => {
                if let Some(text) = m.content.as_ref().map(Content::text).filter(|t| !t.is_empty()) {
                    system.push(json!({"text": text}));
                }
            }
            Role::User => push_turn(&mut messages, "user", "content", user_blocks(m.content.as_ref())?),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if let Some(text) = m.content.as_ref().map(Content::text).filter(|t| !t.is_empty()) {
                    blocks.push(json!({"text": text}));
                }
                for call in m.tool_calls.iter().flatten() {
                    tool_blocks = true;
                    let input: Value = serde_json::from_str(&call.function.arguments).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({"toolUse": {"toolUseId": call.id, "name": call.function.name, "input": input}}));
                }
                push_turn(&mut messages, "assistant", "content", blocks);
            }
            Role::Tool | Role::Function => {
                tool_blocks = true;
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let text = m.content.as_ref().map(Content::text).unwrap_or_default();
                let block = json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}});
                push_turn(&mut messages, "user", "content", vec![block]);
            }
        }
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    generation_config(request, &mut out, "inferenceConfig", "maxTokens", ["temperature", "topP", "stopSequences"]);
    // Converse has no "none": the tools are left out, unless the conversation
    // already holds tool blocks, which Bedrock accepts only with a toolConfig.
    let none = matches!(&request.tool_choice, Some(Value::String(s)) if s == "none");
    if let Some(tools) = request.tools.as_ref().filter(|_| !none || tool_blocks) {
        let specs: Vec<Value> = tools
            .iter()
            .map(|t| json!({"toolSpec": declaration(t, "inputSchema", |schema| json!({"json": schema}))}))
            .collect();
        let mut tool_config = json!({"tools": specs});
        let choice = match &request.tool_choice {
            Some(Value::String(s)) if s == "required" => Some(json!({"any": {}})),
            Some(Value::String(s)) if s == "auto" => Some(json!({"auto": {}})),
            Some(Value::Object(o)) => {
                o.get("function").and_then(|f| f.get("name")).map(|name| json!({"tool": {"name": name}}))
            }
            _ => None,
        };
        if let Some(choice) = choice {
            tool_config["toolChoice"] = choice;
        }
        out.insert("toolConfig".into(), tool_config);
    }
    Ok(Value::Object(out))
}

/// Converse's `usage`: cache reads and writes are prompt tokens.
fn usage_of(usage: Option<&Value>) -> Usage {
    let get = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    let prompt =
        get("inputTokens").saturating_add(get("cacheReadInputTokens")).saturating_add(get("cacheWriteInputTokens"));
    Usage::new(prompt, get("outputTokens")).with_cached(get("cacheReadInputTokens"))
}

fn finish_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("tool_use") => "tool_calls",
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        _ => "stop",
    }
}

/// Converse answer -> `chat.completion`.
pub fn from_converse(answer: &Value, model: &str) -> (Value, Usage) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in answer["output"]["message"]["content"].as_array().into_iter().flatten() {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(call) = block.get("toolUse") {
            calls.push(json!({"id": call["toolUseId"], "type": "function",
                "function": {"name": call["name"], "arguments": call.get("input").map_or_else(|| "{}".to_owned(), Value::to_string)}}));
        }
    }
    let usage = usage_of(answer.get("usage"));
    let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let reason = finish_reason(answer.get("stopReason").and_then(Value::as_str));
    let completion = json!({
        "id": next_id("chatcmpl-"), "object": "chat.completion", "created": now(), "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": reason}],
        "usage": usage,
    });
    (completion, usage)
}

/// ConverseStream's frames, cut from the body as it arrives.
#[derive(Debug, Default)]
pub struct EventFrames {
    buf: BytesMut,
    decoder: MessageFrameDecoder,
}

impl Framing for EventFrames {
    type Event = Message;

    fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    fn next_event(&mut self) -> Result<Option<Message>, UpstreamError> {
        match self.decoder.decode_frame(&mut self.buf) {
            Ok(DecodedFrame::Complete(message)) => Ok(Some(message)),
            Ok(DecodedFrame::Incomplete) => Ok(None),
            Err(e) => Err(UpstreamError::Protocol(format!("invalid event-stream frame: {e}"))),
        }
    }
}

/// A frame's string header, e.g. `:event-type`.
fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

/// Translates ConverseStream's events into `chat.completion.chunk` events.
#[derive(Debug)]
pub struct StreamTranslator {
    chunks: ChunkWriter,
    /// Tool call index of each `toolUse` content block.
    calls: HashMap<u64, usize>,
    finish: Option<&'static str>,
    done: bool,
}

impl StreamTranslator {
    /// A translator for `model`; `include_usage` adds the final usage chunk.
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self { chunks: ChunkWriter::new(model, include_usage), calls: HashMap::new(), finish: None, done: false }
    }

    /// The OpenAI events for one frame.
    pub fn translate(&mut self, message: &Message, out: &mut Vec<Bytes>) -> Result<(), UpstreamError> {
        let payload: Value = serde_json::from_slice(message.payload())
            .map_err(|e| UpstreamError::Protocol(format!("invalid stream event: {e}")))?;
        match header(message, ":message-type") {
            Some("event") => {}
            Some("exception") => {
                let kind = header(message, ":exception-type").unwrap_or("exception");
                let text = payload.get("message").and_then(Value::as_str).unwrap_or_default();
                return Err(UpstreamError::Protocol(format!("the provider reported {kind}: {text}")));
            }
            other => {
                let code = header(message, ":error-code").or(other).unwrap_or("unknown");
                return Err(UpstreamError::Protocol(format!("the provider reported an error: {code}")));
            }
        }
        let index = payload.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
        match header(message, ":event-type") {
            Some("messageStart") => out.push(self.chunks.chunk(json!({"role": "assistant", "content": ""}), None)),
            Some("contentBlockStart") => {
                if let Some(tool) = payload["start"].get("toolUse") {
                    let n = self.calls.len();
                    self.calls.insert(index, n);
                    out.push(self.chunks.chunk(
                        json!({"tool_calls": [{"index": n, "id": tool["toolUseId"], "type": "function",
                            "function": {"name": tool["name"], "arguments": ""}}]}),
                        None,
                    ));
                }
            }
            Some("contentBlockDelta") => {
                let delta = &payload["delta"];
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    out.push(self.chunks.chunk(json!({"content": text}), None));
                } else if let Some(input) = delta["toolUse"].get("input").and_then(Value::as_str) {
                    let n = self.calls.get(&index).copied().ok_or_else(|| {
                        UpstreamError::Protocol(format!("tool input for content block {index}, which is no toolUse"))
                    })?;
                    out.push(
                        self.chunks
                            .chunk(json!({"tool_calls": [{"index": n, "function": {"arguments": input}}]}), None),
                    );
                }
            }
            Some("messageStop") => {
                self.finish = Some(finish_reason(payload.get("stopReason").and_then(Value::as_str)));
            }
            Some("metadata") => {
                let reason = self
                    .finish
                    .ok_or_else(|| UpstreamError::Protocol("the stream's metadata came before messageStop".into()))?;
                out.push(self.chunks.chunk(json!({}), Some(reason)));
                self.chunks.done(usage_of(payload.get("usage")), out);
                self.done = true;
            }
            // contentBlockStop, and reasoning deltas (thoughts are not the answer).
            _ => {}
        }
        Ok(())
    }
}

impl StreamEvents for StreamTranslator {
    type Framing = EventFrames;

    fn translate(&mut self, event: Message, out: &mut Vec<Bytes>) -> Result<(), UpstreamError> {
        StreamTranslator::translate(self, &event, out)
    }

    fn complete(&self) -> bool {
        self.done
    }

    fn end(&mut self, _out: &mut Vec<Bytes>) -> Result<(), UpstreamError> {
        Err(UpstreamError::Protocol("the stream ended before its metadata event (the usage)".into()))
    }
}

#[cfg(test)]
mod tests {
    use aws_smithy_types::event_stream::{Header, HeaderValue};

    use super::*;

    fn frame(event: &str, payload: Value) -> Message {
        Message::new(Bytes::from(payload.to_string()))
            .add_header(Header::new(":event-type", HeaderValue::String(event.to_owned().into())))
            .add_header(Header::new(":content-type", HeaderValue::String("application/json".into())))
            .add_header(Header::new(":message-type", HeaderValue::String("event".into())))
    }

    #[test]
    fn request_translation_moves_system_tools_results_and_images() {
        let r: ChatRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 100, "stop": "END", "temperature": 0.2,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": [{"type": "text", "text": "and tomorrow?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": {"type": "object"}}}]
        }))
        .expect("request");
        let c = to_converse(&r).expect("translated");
        assert_eq!(c["system"], json!([{"text": "Be brief."}]));
        assert_eq!(c["inferenceConfig"], json!({"maxTokens": 100, "temperature": 0.2, "stopSequences": ["END"]}));
        assert_eq!(
            c["toolConfig"],
            json!({"tools": [{"toolSpec": {"name": "get_weather", "description": "weather", "inputSchema": {"json": {"type": "object"}}}}],
                "toolChoice": {"tool": {"name": "get_weather"}}})
        );
        let messages = c["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 3, "the tool result and the next question are one user turn: {messages:?}");
        assert_eq!(
            messages[1]["content"][0],
            json!({"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}})
        );
        assert_eq!(
            messages[2]["content"][0],
            json!({"toolResult": {"toolUseId": "call_1", "content": [{"text": "sunny"}]}})
        );
        assert_eq!(messages[2]["content"][2], json!({"image": {"format": "png", "source": {"bytes": "AAAA"}}}));
    }

    #[test]
    fn links_to_images_and_tool_choice_none_are_handled_honestly() {
        let linked: ChatRequest =
            serde_json::from_value(json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}))
            .expect("request");
        let e = to_converse(&linked).expect_err("a link cannot be sent");
        assert!(e.is_client_error() && e.to_string().contains("base64 data URLs"), "{e}");
        let none: ChatRequest = serde_json::from_value(json!({"model": "m", "tool_choice": "none",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}]}))
        .expect("request");
        assert!(to_converse(&none).expect("translated").get("toolConfig").is_none(), "no tools, no call");
    }

    #[test]
    fn an_answer_becomes_a_completion_with_cache_tokens_as_prompt() {
        let (c, usage) = from_converse(
            &json!({"output": {"message": {"role": "assistant", "content": [
                {"text": "Checking."}, {"toolUse": {"toolUseId": "tooluse_1", "name": "f", "input": {"a": 1}}}]}},
                "stopReason": "tool_use",
                "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 22, "cacheReadInputTokens": 4, "cacheWriteInputTokens": 3},
                "metrics": {"latencyMs": 100}}),
            "m",
        );
        assert_eq!(usage, Usage::new(17, 5).with_cached(4));
        assert_eq!(
            c["usage"]["prompt_tokens_details"],
            json!({"cached_tokens": 4}),
            "the cache reads, in OpenAI's field"
        );
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["choices"][0]["message"]["content"], "Checking.");
        assert_eq!(c["choices"][0]["message"]["tool_calls"][0]["id"], "tooluse_1");
        assert_eq!(c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
    }

    #[test]
    fn frames_cut_anywhere_decode_and_translate_to_chunks() {
        let frames = [
            frame("messageStart", json!({"role": "assistant", "p": "abc"})),
            frame("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}})),
            frame("contentBlockStop", json!({"contentBlockIndex": 0})),
            frame(
                "contentBlockStart",
                json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}}),
            ),
            frame("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}})),
            frame("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}})),
            frame("messageStop", json!({"stopReason": "tool_use"})),
            frame(
                "metadata",
                json!({"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}, "metrics": {"latencyMs": 1}}),
            ),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            aws_smithy_eventstream::frame::write_message_to(f, &mut wire).expect("frame");
        }
        let mut framing = EventFrames::default();
        let mut t = StreamTranslator::new("m", true);
        let mut out = Vec::new();
        // Seven bytes at a time: frames split across reads.
        for piece in wire.chunks(7) {
            framing.push(piece);
            while let Some(message) = framing.next_event().expect("frame") {
                t.translate(&message, &mut out).expect("translated");
            }
        }
        assert!(t.complete());
        let text = String::from_utf8(out.concat()).expect("utf8");
        assert!(text.contains("\"content\":\"Hi\"") && text.contains("\"id\":\"t1\""), "{text}");
        assert!(
            text.contains("{\"arguments\":\"{\\\"a\\\":\"}") && text.contains("\"finish_reason\":\"tool_calls\""),
            "{text}"
        );
        assert!(
            text.contains("\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":3")
                && text.ends_with("data: [DONE]\n\n"),
            "{text}"
        );
        let mut cut = StreamTranslator::new("m", false);
        assert!(cut.end(&mut Vec::new()).is_err(), "a stream cut before its metadata is an error");
    }

    #[test]
    fn an_exception_frame_is_an_error() {
        let throttled = Message::new(Bytes::from_static(br#"{"message":"Too many requests"}"#))
            .add_header(Header::new(":message-type", HeaderValue::String("exception".into())))
            .add_header(Header::new(":exception-type", HeaderValue::String("throttlingException".into())));
        let e = StreamTranslator::new("m", false).translate(&throttled, &mut Vec::new()).expect_err("an error");
        assert!(e.to_string().contains("throttlingException: Too many requests"), "{e}");
    }
}
