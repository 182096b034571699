//! Google's Gemini API (`generateContent`, `streamGenerateContent?alt=sse`)
//! behind the OpenAI interface, for the `gemini` provider (the Gemini API
//! with an API key in `x-goog-api-key`) and the `vertex` provider (Vertex
//! AI's publisher models, with a service account's access tokens): requests are translated to
//! `contents` (system instruction, text and image parts, function calls and
//! responses), `tools` (function declarations with their JSON schema as
//! `parametersJsonSchema`), `toolConfig` and `generationConfig`; answers and
//! streamed chunks back to Chat Completions, with the usage of
//! `usageMetadata` (thinking tokens count as output, as Google bills them).

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::endpoint::{Wire, read_all};
use super::mock::{next_id, now};
use super::outbound::{self, ChunkWriter, StreamEvents, declaration, generation_config, image, push_turn};
use super::types::{ChatRequest, Content, Role, Usage};
use super::{Call, Endpoint, Reply, UpstreamError};

/// A Gemini API provider.
#[derive(Debug)]
pub struct Gemini {
    endpoint: Endpoint,
}

impl Gemini {
    /// The Gemini API: the key in `x-goog-api-key`; the path is made per call.
    pub const WIRE: Wire = Wire { path: "", key_header: "x-goog-api-key", key_prefix: "", fixed: &[] };
    /// Vertex AI: a bearer access token (see [`super::google_auth`]).
    pub const VERTEX_WIRE: Wire = Wire { path: "", key_header: "authorization", key_prefix: "Bearer ", fixed: &[] };

    /// A provider at `endpoint` (e.g. `https://generativelanguage.googleapis.com/v1beta` with [`Self::WIRE`]).
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// `{base}/models/{model}:{method}`, the model one escaped path segment.
    fn url(&self, model: &str, method: &str, stream: bool) -> Result<reqwest::Url, UpstreamError> {
        let mut url = self.endpoint.url().clone();
        url.path_segments_mut()
            .map_err(|()| UpstreamError::Protocol("the Gemini base URL cannot take a path".into()))?
            .pop_if_empty()
            .extend(["models", &format!("{model}:{method}")]);
        if stream {
            url.query_pairs_mut().append_pair("alt", "sse");
        }
        Ok(url)
    }

    /// Sends one request.
    pub async fn call(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        let stream = call.request.stream;
        let method = if stream { "streamGenerateContent" } else { "generateContent" };
        let body = serde_json::to_vec(&to_gemini(call.request))
            .map_err(|e| UpstreamError::Protocol(format!("cannot encode the request: {e}")))?;
        let response = self.endpoint.post_to(self.url(call.model, method, stream)?, body, call).await?;
        if stream {
            return Ok(Reply::Stream(translate_stream(
                response,
                call.deadline,
                call.model,
                call.request.include_usage(),
            )));
        }
        let body = read_all(response, call.deadline).await?;
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Protocol(format!("the body is not a generateContent answer: {e}")))?;
        let (completion, usage) = from_gemini(&answer, call.model);
        Ok(Reply::Complete { body: Bytes::from(completion.to_string()), usage: Some(usage) })
    }
}

/// OpenAI request -> `generateContent` request.
pub fn to_gemini(request: &ChatRequest) -> Value {
    let mut system: Vec<String> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // A tool result names its function in Gemini: find it by the call's id.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for m in &request.messages {
        match m.role {
            Role::System | Role::Developer => system.extend(m.content.as_ref().map(Content::text)),
            Role::User => push_turn(&mut contents, "user", "parts", user_parts(m.content.as_ref())),
            Role::Assistant => {
                let mut parts = Vec::new();
                if let Some(text) = m.content.as_ref().map(Content::text).filter(|t| !t.is_empty()) {
                    parts.push(json!({"text": text}));
                }
                for call in m.tool_calls.iter().flatten() {
                    call_names.insert(&call.id, &call.function.name);
                    let args: Value = serde_json::from_str(&call.function.arguments).unwrap_or_else(|_| json!({}));
                    parts.push(json!({"functionCall": {"id": call.id, "name": call.function.name, "args": args}}));
                }
                push_turn(&mut contents, "model", "parts", parts);
            }
            Role::Tool | Role::Function => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let name = call_names.get(id).copied().unwrap_or(id);
                let content = m.content.as_ref().map(Content::text).unwrap_or_default();
                let part = json!({"functionResponse": {"id": id, "name": name, "response": {"content": content}}});
                push_turn(&mut contents, "user", "parts", vec![part]);
            }
        }
    }
    let mut out = Map::new();
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": [{"text": system.join("\n\n")}]}));
    }
    out.insert("contents".into(), Value::Array(contents));
    let names = ["temperature", "topP", "stopSequences"];
    generation_config(request, &mut out, "generationConfig", "maxOutputTokens", names);
    if let Some(tools) = &request.tools {
        let declarations: Vec<Value> =
            tools.iter().map(|t| declaration(t, "parametersJsonSchema", |schema| schema)).collect();
        out.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    let mode = match &request.tool_choice {
        Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|name| json!({"mode": "ANY", "allowedFunctionNames": [name]})),
        _ => None,
    };
    if let Some(mode) = mode {
        out.insert("toolConfig".into(), json!({"functionCallingConfig": mode}));
    }
    Value::Object(out)
}

fn user_parts(content: Option<&Content>) -> Vec<Value> {
    outbound::user_parts(
        content,
        |text| json!({"text": text}),
        |url| {
            image(
                url,
                |mime, data| json!({"inlineData": {"mimeType": mime, "data": data}}),
                |url| json!({"fileData": {"fileUri": url}}),
            )
        },
    )
}

/// `usageMetadata` as usage: thinking tokens are output tokens; the prompt count includes cached content.
fn usage_of(meta: Option<&Value>) -> Usage {
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_u64).unwrap_or(0);
    Usage::new(get("promptTokenCount"), get("candidatesTokenCount").saturating_add(get("thoughtsTokenCount")))
        .with_cached(get("cachedContentTokenCount"))
}

fn finish_reason(reason: Option<&str>, called: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII") => "content_filter",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// The text and function calls of a candidate's parts (thought parts are left out).
fn parts_of(candidate: &Value) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in candidate["content"]["parts"].as_array().into_iter().flatten() {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(call) = part.get("functionCall") {
            let id = call.get("id").and_then(Value::as_str).map_or_else(|| next_id("call_"), str::to_owned);
            let arguments = call.get("args").map_or_else(|| "{}".to_owned(), Value::to_string);
            calls.push(
                json!({"id": id, "type": "function", "function": {"name": call["name"], "arguments": arguments}}),
            );
        }
    }
    (text, calls)
}

/// `generateContent` answer -> `chat.completion`.
pub fn from_gemini(answer: &Value, model: &str) -> (Value, Usage) {
    let candidate = &answer["candidates"][0];
    let (text, calls) = parts_of(candidate);
    let usage = usage_of(answer.get("usageMetadata"));
    let mut message = json!({"role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    let reason = finish_reason(candidate.get("finishReason").and_then(Value::as_str), !calls.is_empty());
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let completion = json!({
        "id": answer.get("responseId").and_then(Value::as_str).map_or_else(|| next_id("chatcmpl-"), str::to_owned),
        "object": "chat.completion", "created": now(), "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": reason}],
        "usage": usage,
    });
    (completion, usage)
}

/// Translates streamed `generateContent` answers into `chat.completion.chunk` events.
#[derive(Debug)]
pub struct StreamTranslator {
    chunks: ChunkWriter,
    usage: Usage,
    started: bool,
    calls: usize,
    finish: Option<&'static str>,
}

impl StreamTranslator {
    /// A translator for `model`; `include_usage` adds the final usage chunk.
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            chunks: ChunkWriter::new(model, include_usage),
            usage: Usage::default(),
            started: false,
            calls: 0,
            finish: None,
        }
    }

    /// The OpenAI events for one streamed answer (`data` is its JSON).
    pub fn translate(&mut self, data: &str, out: &mut Vec<Bytes>) -> Result<(), UpstreamError> {
        let answer: Value =
            serde_json::from_str(data).map_err(|e| UpstreamError::Protocol(format!("invalid stream event: {e}")))?;
        if let Some(error) = answer.get("error") {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("stream error");
            return Err(UpstreamError::Protocol(format!("the provider reported: {message}")));
        }
        if !self.started {
            self.started = true;
            out.push(self.chunks.chunk(json!({"role": "assistant", "content": ""}), None));
        }
        if let Some(meta) = answer.get("usageMetadata") {
            self.usage = usage_of(Some(meta));
        }
        let candidate = &answer["candidates"][0];
        let (text, calls) = parts_of(candidate);
        if !text.is_empty() {
            out.push(self.chunks.chunk(json!({"content": text}), None));
        }
        for call in calls {
            let index = self.calls;
            self.calls += 1;
            out.push(self.chunks.chunk(
                json!({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}}]}),
                None,
            ));
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            self.finish = Some(finish_reason(Some(reason), self.calls > 0));
        }
        Ok(())
    }

    /// The closing chunks once the upstream stream ended (Gemini sends no end marker).
    pub fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<(), UpstreamError> {
        let reason =
            self.finish.ok_or_else(|| UpstreamError::Protocol("the stream ended without a finishReason".into()))?;
        out.push(self.chunks.chunk(json!({}), Some(reason)));
        self.chunks.done(self.usage, out);
        Ok(())
    }
}

impl StreamEvents for StreamTranslator {
    type Framing = super::sse::Decoder;

    fn translate(&mut self, event: super::sse::Event, out: &mut Vec<Bytes>) -> Result<(), UpstreamError> {
        StreamTranslator::translate(self, &event.data, out)
    }

    fn complete(&self) -> bool {
        false
    }

    fn end(&mut self, out: &mut Vec<Bytes>) -> Result<(), UpstreamError> {
        self.finish(out)
    }
}

fn translate_stream(
    response: crate::egress::Response,
    deadline: tokio::time::Instant,
    model: &str,
    include_usage: bool,
) -> super::EventStream {
    outbound::translate_stream(response, deadline, StreamTranslator::new(model, include_usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_translation_moves_system_tools_and_function_responses() {
        let r: ChatRequest = serde_json::from_value(json!({
            "model": "g", "max_tokens": 100, "stop": "END", "temperature": 0.2, "tool_choice": "required",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": [{"type": "text", "text": "and tomorrow?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": {"type": "object", "additionalProperties": false}}}]
        }))
        .expect("request");
        let g = to_gemini(&r);
        assert_eq!(g["systemInstruction"], json!({"parts": [{"text": "Be brief."}]}));
        assert_eq!(
            g["generationConfig"],
            json!({"maxOutputTokens": 100, "temperature": 0.2, "stopSequences": ["END"]})
        );
        assert_eq!(g["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY"}}));
        let declaration = &g["tools"][0]["functionDeclarations"][0];
        assert_eq!(
            declaration["parametersJsonSchema"],
            json!({"type": "object", "additionalProperties": false}),
            "the schema as is"
        );
        let contents = g["contents"].as_array().expect("contents");
        assert_eq!(contents.len(), 3, "{contents:?}");
        assert_eq!(
            contents[1]["parts"][0]["functionCall"],
            json!({"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}})
        );
        assert_eq!(contents[2]["parts"][0]["functionResponse"]["name"], "get_weather", "named by the call it answers");
        assert_eq!(contents[2]["parts"][2], json!({"inlineData": {"mimeType": "image/png", "data": "AAAA"}}));
    }

    #[test]
    fn an_answer_becomes_a_completion_with_thinking_counted_as_output() {
        let (c, usage) = from_gemini(
            &json!({
                "candidates": [{"content": {"role": "model", "parts": [
                    {"text": "let me think", "thought": true},
                    {"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7, "totalTokenCount": 22}
            }),
            "gemini-model",
        );
        assert_eq!(usage, Usage::new(10, 12));
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["choices"][0]["message"]["content"], Value::Null, "thoughts are not the answer");
        assert_eq!(c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
    }

    #[test]
    fn a_stream_ends_with_finish_usage_and_done_and_needs_its_finish_reason() {
        let mut t = StreamTranslator::new("g", true);
        let mut out = Vec::new();
        t.translate(r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]}}],"usageMetadata":{"promptTokenCount":3}}"#, &mut out).expect("chunk");
        t.translate(r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"lo"}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}"#, &mut out).expect("chunk");
        t.finish(&mut out).expect("finished");
        let text = String::from_utf8(out.concat()).expect("utf8");
        assert!(text.contains("\"content\":\"Hel\"") && text.contains("\"finish_reason\":\"length\""), "{text}");
        assert!(
            text.contains("\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":3")
                && text.ends_with("data: [DONE]\n\n"),
            "{text}"
        );
        let mut cut = StreamTranslator::new("g", false);
        assert!(cut.finish(&mut Vec::new()).is_err(), "a stream cut before its finishReason is an error");
    }
}
