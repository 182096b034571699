//! The deterministic mock model: the in-process `mock` provider, and the
//! answers `e2e/mock-llm` gives over HTTP.
//!
//! Rules (system and developer messages after the last turn, such as an
//! agent's reminders, do not count as turns): with tools offered (and
//! `tool_choice` not `none`), a conversation whose last turn is the user's
//! gets a call of the named or first tool,
//! with arguments made from its JSON schema; a conversation that ends with
//! tool results is answered with those results (`Tool results: ...`), as a
//! model would use them; otherwise the answer is `completion_tokens` words,
//! one per streamed chunk.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};
use tenantgate_crds::v1alpha1::MockProvider;

use super::embeddings::{EmbeddingsReply, EmbeddingsRequest, mock_answer};
use super::sse::{DONE, data_event};
use super::types::{ChatRequest, Role, Usage};
use super::{Call, Reply, UpstreamError};

const WORDS: &[&str] =
    &[" Hello", " from", " the", " Tenantgate", " mock", " model", ",", " a", " deterministic", " reply", "."];

/// What the mock answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Text answer, when not calling a tool, one piece per streamed chunk.
    pub content: Option<Vec<Cow<'static, str>>>,
    /// `(id, name, arguments JSON)` of a tool call.
    pub tool_call: Option<(String, String, String)>,
    /// Token counts.
    pub usage: Usage,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
}

/// A tool offered to the mock, in any API's shape.
#[derive(Debug, Clone, Copy)]
pub struct OfferedTool<'a> {
    /// Name.
    pub name: &'a str,
    /// JSON schema of the arguments.
    pub schema: Option<&'a Value>,
}

/// How the mock may use tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolMode<'a> {
    /// Never.
    None,
    /// When the user spoke last.
    Auto,
    /// Always.
    Required,
    /// Always this one.
    Named(&'a str),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh id with `prefix`.
pub fn next_id(prefix: &str) -> String {
    format!("{prefix}{:016x}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Rough token count of a text: words plus punctuation runs, at least one.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count().max(1) as u64
}

impl Plan {
    /// Plans the answer; `tool_results` is the text of the tool results the
    /// conversation ends with, if it does.
    pub fn new(
        tools: &[OfferedTool<'_>],
        mode: ToolMode<'_>,
        user_spoke_last: bool,
        tool_results: Option<&str>,
        prompt_tokens: u64,
        max_tokens: Option<u32>,
        tokens: u32,
    ) -> Self {
        let chosen = match mode {
            ToolMode::None => None,
            ToolMode::Auto if !user_spoke_last => None,
            ToolMode::Auto | ToolMode::Required => tools.first(),
            ToolMode::Named(name) => tools.iter().find(|t| t.name == name),
        };
        if let Some(tool) = chosen {
            let arguments = arguments_for(tool.schema).to_string();
            let completion = count_tokens(&arguments) + 4;
            return Self {
                content: None,
                tool_call: Some((next_id("call_"), tool.name.to_string(), arguments)),
                usage: Usage::new(prompt_tokens, completion),
                finish_reason: "tool_calls",
            };
        }
        if let Some(results) = tool_results {
            let words: Vec<Cow<'static, str>> = std::iter::once(Cow::Borrowed("Tool results:"))
                .chain(results.split_whitespace().map(|w| Cow::Owned(format!(" {w}"))))
                .collect();
            let completion = words.len() as u64;
            return Self {
                content: Some(words),
                tool_call: None,
                usage: Usage::new(prompt_tokens, completion),
                finish_reason: "stop",
            };
        }
        let limit = max_tokens.map_or(tokens, |m| m.min(tokens));
        let words: Vec<Cow<'static, str>> =
            (0..limit as usize).map(|i| Cow::Borrowed(if i == 0 { "Hello" } else { WORDS[i % WORDS.len()] })).collect();
        Self {
            content: Some(words),
            tool_call: None,
            usage: Usage::new(prompt_tokens, u64::from(limit)),
            finish_reason: if limit < tokens { "length" } else { "stop" },
        }
    }

    /// Plans the answer to an OpenAI request.
    pub fn for_chat(request: &ChatRequest, tokens: u32) -> Self {
        let tools: Vec<OfferedTool<'_>> = request
            .tools
            .iter()
            .flatten()
            .map(|t| OfferedTool { name: &t.function.name, schema: t.function.parameters.as_ref() })
            .collect();
        let mode = match &request.tool_choice {
            Some(Value::String(s)) if s == "none" => ToolMode::None,
            Some(Value::String(s)) if s == "required" => ToolMode::Required,
            Some(Value::Object(o)) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .map_or(ToolMode::Auto, ToolMode::Named),
            _ => ToolMode::Auto,
        };
        let end = request.messages.iter().rposition(|m| !matches!(m.role, Role::System | Role::Developer));
        let turns = &request.messages[..end.map_or(0, |i| i + 1)];
        let user_spoke_last = turns.last().is_some_and(|m| m.role == Role::User);
        let results: Vec<String> = turns
            .iter()
            .rev()
            .take_while(|m| m.role == Role::Tool)
            .map(|m| m.content.as_ref().map(|c| c.text()).unwrap_or_default())
            .collect();
        let results = (!results.is_empty()).then(|| results.into_iter().rev().collect::<Vec<_>>().join("\n"));
        let prompt: u64 =
            request.messages.iter().map(|m| 4 + m.content.as_ref().map_or(0, |c| count_tokens(&c.text()))).sum();
        Self::new(&tools, mode, user_spoke_last, results.as_deref(), prompt, request.max_output_tokens(), tokens)
    }

    /// The text of the answer.
    pub fn text(&self) -> Option<String> {
        self.content.as_ref().map(|w| w.concat())
    }

    /// A whole `chat.completion`.
    pub fn completion(&self, id: &str, model: &str) -> Value {
        let mut message = json!({"role": "assistant", "content": self.text()});
        if let Some((call_id, name, arguments)) = &self.tool_call {
            message["tool_calls"] =
                json!([{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]);
        }
        json!({
            "id": id,
            "object": "chat.completion",
            "created": now(),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        })
    }

    /// The `chat.completion.chunk` events of a streamed answer, `[DONE]` included.
    pub fn chunks(&self, id: &str, model: &str, include_usage: bool) -> Vec<Bytes> {
        let created = now();
        let chunk = |delta: Value, finish: Option<&str>| {
            let v = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            });
            data_event(v.to_string().as_bytes())
        };
        let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        for word in self.content.iter().flatten() {
            out.push(chunk(json!({"content": word}), None));
        }
        if let Some((call_id, name, arguments)) = &self.tool_call {
            out.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            ));
            out.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}), None));
        }
        out.push(chunk(json!({}), Some(self.finish_reason)));
        if include_usage {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": self.usage});
            out.push(data_event(v.to_string().as_bytes()));
        }
        out.push(Bytes::from_static(DONE));
        out
    }
}

/// Example arguments for a JSON schema: every property with a value of its type.
pub fn arguments_for(schema: Option<&Value>) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(props) = schema.and_then(|s| s.get("properties")).and_then(Value::as_object) {
        for (name, prop) in props {
            let value = match prop.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
                Some(first) => first.clone(),
                None => match prop.get("type").and_then(Value::as_str) {
                    Some("integer") | Some("number") => json!(1),
                    Some("boolean") => json!(true),
                    Some("array") => json!([]),
                    Some("object") => json!({}),
                    _ => json!("mock"),
                },
            };
            out.insert(name.clone(), value);
        }
    }
    Value::Object(out)
}

/// The in-process mock provider.
#[derive(Debug, Clone)]
pub struct Mock {
    latency: Duration,
    tokens: u32,
    chunk_interval: Duration,
}

impl Mock {
    /// A mock with the tenant's settings.
    pub fn new(settings: Option<&MockProvider>) -> Self {
        let s =
            settings.cloned().unwrap_or(MockProvider { latency_ms: 0, completion_tokens: 16, chunk_interval_ms: 0 });
        Self {
            latency: Duration::from_millis(u64::from(s.latency_ms)),
            tokens: s.completion_tokens,
            chunk_interval: Duration::from_millis(u64::from(s.chunk_interval_ms)),
        }
    }

    /// Waits the configured latency, within the call's deadline.
    async fn delay(&self, deadline: tokio::time::Instant) -> Result<(), UpstreamError> {
        if !self.latency.is_zero() {
            tokio::time::timeout_at(deadline, tokio::time::sleep(self.latency))
                .await
                .map_err(|_| UpstreamError::Timeout("total"))?;
        }
        Ok(())
    }

    /// Answers one embeddings request (see [`mock_answer`]).
    pub async fn embed(&self, call: Call<'_, EmbeddingsRequest>) -> Result<EmbeddingsReply, UpstreamError> {
        self.delay(call.deadline).await?;
        let (body, usage) = mock_answer(call.request, call.model, count_tokens);
        Ok(EmbeddingsReply { body: Bytes::from(body.to_string()), usage: Some(usage) })
    }

    /// Answers one request.
    pub async fn call(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        self.delay(call.deadline).await?;
        let plan = Plan::for_chat(call.request, self.tokens);
        let id = next_id("chatcmpl-mock");
        if !call.request.stream {
            let body = Bytes::from(plan.completion(&id, call.model).to_string());
            return Ok(Reply::Complete { body, usage: Some(plan.usage) });
        }
        let events = plan.chunks(&id, call.model, call.request.include_usage());
        let interval = self.chunk_interval;
        let stream = futures_util::stream::iter(events.into_iter().enumerate()).then(move |(i, event)| async move {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            Ok(event)
        });
        Ok(Reply::Stream(Box::pin(stream)))
    }
}

use futures_util::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).expect("request")
    }

    #[test]
    fn answers_with_words_or_a_tool_call() {
        let r = request(json!({"model": "m", "messages": [{"role": "user", "content": "hi there"}]}));
        let plan = Plan::for_chat(&r, 4);
        assert_eq!(plan.text().as_deref(), Some("Hello from the Tenantgate"));
        assert_eq!(plan.usage, Usage::new(6, 4));
        let r = request(json!({"model": "m", "messages": [{"role": "user", "content": "weather?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]}));
        let plan = Plan::for_chat(&r, 4);
        let (_, name, args) = plan.tool_call.clone().expect("tool call");
        assert_eq!((name.as_str(), args.as_str()), ("get_weather", r#"{"city":"mock","days":1}"#));
        assert_eq!(plan.finish_reason, "tool_calls");
    }

    #[test]
    fn tool_results_last_are_answered_with_and_required_calls_again() {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny in Paris"}],
            "tools": [{"type": "function", "function": {"name": "get_weather"}}]});
        let plan = Plan::for_chat(&request(body.clone()), 4);
        assert_eq!(plan.text().as_deref(), Some("Tool results: sunny in Paris"));
        assert_eq!(plan.finish_reason, "stop");
        body["tool_choice"] = json!("required");
        assert!(Plan::for_chat(&request(body.clone()), 4).tool_call.is_some());
        body["tool_choice"] = json!("none");
        assert_eq!(Plan::for_chat(&request(body), 4).text().as_deref(), Some("Tool results: sunny in Paris"));
    }

    #[test]
    fn max_tokens_truncates_with_length() {
        let r = request(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}));
        let plan = Plan::for_chat(&r, 16);
        assert_eq!(plan.finish_reason, "length");
        assert_eq!(plan.usage.completion_tokens, 2);
    }

    #[test]
    fn stream_ends_with_usage_and_done() {
        let r = request(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        let chunks = Plan::for_chat(&r, 3).chunks("id", "m", true);
        assert_eq!(chunks.len(), 1 + 3 + 1 + 1 + 1);
        assert!(std::str::from_utf8(&chunks[5]).expect("utf8").contains("\"usage\""));
        assert_eq!(&chunks[6][..], DONE);
    }
}
