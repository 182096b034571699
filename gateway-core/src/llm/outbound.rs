//! What the translations of the chat request into other providers' APIs
//! (Anthropic Messages, Gemini) share: turns merged by role, the user's
//! content parts, and the loop that turns a provider's SSE answer into chat
//! chunks.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::UpstreamError;
use super::mock::{next_id, now};
use super::sse::{DONE, Decoder, Event, data_event};
use super::types::{ChatRequest, Content, Tool, Usage};

/// Appends `items` as a turn of `role` (`{"role": role, key: items}`),
/// merging into the previous turn of the same role: both APIs want turns
/// that alternate.
pub(super) fn push_turn(turns: &mut Vec<Value>, role: &str, key: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut()
        && last["role"] == role
        && let Some(existing) = last[key].as_array_mut()
    {
        existing.extend(items);
        return;
    }
    let mut turn = json!({"role": role});
    turn[key] = Value::Array(items);
    turns.push(turn);
}

/// Copies the sampling settings into `out` under the provider's names for
/// temperature, top-p and stop sequences (a string stop becomes a list).
pub(super) fn sampling(request: &ChatRequest, out: &mut Map<String, Value>, names: [&str; 3]) {
    let [temperature, top_p, stop] = names;
    if let Some(t) = request.temperature {
        out.insert(temperature.into(), json!(t));
    }
    if let Some(p) = request.top_p {
        out.insert(top_p.into(), json!(p));
    }
    match &request.stop {
        Some(Value::String(s)) => {
            out.insert(stop.into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert(stop.into(), Value::Array(a.clone()));
        }
        _ => {}
    }
}

/// The request's output limit and sampling settings as the provider's
/// generation config, under `key` when there is any: `max` names the output
/// limit, `names` temperature, top-p and stop sequences (see [`sampling`]).
pub(super) fn generation_config(
    request: &ChatRequest,
    out: &mut Map<String, Value>,
    key: &str,
    max: &str,
    names: [&str; 3],
) {
    let mut config = Map::new();
    if let Some(limit) = request.max_output_tokens() {
        config.insert(max.into(), json!(limit));
    }
    sampling(request, &mut config, names);
    if !config.is_empty() {
        out.insert(key.into(), Value::Object(config));
    }
}

/// A function tool as the provider declares it: `{"name", schema_key: wrap(schema), "description"}`
/// (a tool without parameters takes an empty object).
pub(super) fn declaration(tool: &Tool, schema_key: &str, wrap: impl FnOnce(Value) -> Value) -> Value {
    let schema = tool.function.parameters.clone().unwrap_or_else(|| json!({"type": "object"}));
    let mut d = json!({"name": tool.function.name});
    d[schema_key] = wrap(schema);
    if let Some(description) = &tool.function.description {
        d["description"] = json!(description);
    }
    d
}

/// An image URL as the provider's part: `inline(mime type, base64 data)` for a
/// data URL, `linked(url)` for any other.
pub(super) fn image(url: &str, inline: impl Fn(&str, &str) -> Value, linked: impl Fn(&str) -> Value) -> Value {
    match url.strip_prefix("data:").and_then(|r| r.split_once(";base64,")) {
        Some((mime, data)) => inline(mime, data),
        None => linked(url),
    }
}

/// A user message's content as the provider's parts: `text(t)` per text,
/// `image(url)` per image; other parts are left out.
pub(super) fn user_parts(
    content: Option<&Content>,
    text: impl Fn(&Value) -> Value,
    image: impl Fn(&str) -> Value,
) -> Vec<Value> {
    match content {
        None => Vec::new(),
        Some(Content::Text(t)) => vec![text(&json!(t))],
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Some(text(p.get("text").unwrap_or(&Value::Null))),
                Some("image_url") => p.get("image_url").and_then(|i| i.get("url")).and_then(Value::as_str).map(&image),
                _ => None,
            })
            .collect(),
    }
}

/// The chat chunks of one translated stream, under one id, model and creation time.
#[derive(Debug, Default)]
pub(super) struct ChunkWriter {
    pub(super) id: String,
    pub(super) model: String,
    created: u64,
    include_usage: bool,
}

impl ChunkWriter {
    /// Chunks of `model`; `include_usage` adds the final usage chunk.
    pub(super) fn new(model: &str, include_usage: bool) -> Self {
        Self { id: next_id("chatcmpl-"), model: model.to_owned(), created: now(), include_usage }
    }

    /// One `chat.completion.chunk` event.
    pub(super) fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        data_event(v.to_string().as_bytes())
    }

    /// The usage chunk (when the client asked for it) and `[DONE]`.
    pub(super) fn done(&self, usage: Usage, out: &mut Vec<Bytes>) {
        if self.include_usage {
            let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": usage});
            out.push(data_event(v.to_string().as_bytes()));
        }
        out.push(Bytes::from_static(DONE));
    }
}

/// How a provider cuts its streamed answer into events: SSE, or AWS's event-stream frames.
pub(super) trait Framing: Default + Send + 'static {
    /// One event.
    type Event;
    /// Adds bytes as they arrive.
    fn push(&mut self, chunk: &[u8]);
    /// The next complete event, if any.
    fn next_event(&mut self) -> Result<Option<Self::Event>, UpstreamError>;
}

impl Framing for Decoder {
    type Event = Event;

    fn push(&mut self, chunk: &[u8]) {
        Decoder::push(self, chunk);
    }

    fn next_event(&mut self) -> Result<Option<Event>, UpstreamError> {
        Ok(Decoder::next_event(self))
    }
}

/// A provider's stream events, translated into chat chunks.
pub(super) trait StreamEvents: Send + 'static {
    /// How the events are framed.
    type Framing: Framing;
    /// The chat chunks for one event.
    fn translate(
        &mut self,
        event: <Self::Framing as Framing>::Event,
        out: &mut Vec<Bytes>,
    ) -> Result<(), UpstreamError>;
    /// Whether the answer is complete: nothing more is read.
    fn complete(&self) -> bool;
    /// The chunks when the upstream stream ends before [`Self::complete`], or why that is an error.
    fn end(&mut self, out: &mut Vec<Bytes>) -> Result<(), UpstreamError>;
}

/// A provider's streamed answer as chat chunks, through `events`, before the deadline.
pub(super) fn translate_stream<E: StreamEvents>(
    response: crate::egress::Response,
    deadline: tokio::time::Instant,
    events: E,
) -> super::EventStream {
    struct State<E: StreamEvents> {
        upstream: futures_util::stream::BoxStream<'static, Result<Bytes, hyper::Error>>,
        decoder: E::Framing,
        events: E,
        done: bool,
    }
    let state = State {
        upstream: http_body_util::BodyDataStream::new(response.into_body()).boxed(),
        decoder: E::Framing::default(),
        events,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, move |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let mut out = Vec::new();
            loop {
                let translated = match s.decoder.next_event() {
                    Ok(None) => break,
                    Ok(Some(event)) => s.events.translate(event, &mut out),
                    Err(e) => Err(e),
                };
                if let Err(e) = translated {
                    s.done = true;
                    return Some((Err(e), s));
                }
            }
            if !out.is_empty() {
                let bytes = if out.len() == 1 { out.pop().unwrap_or_default() } else { Bytes::from(out.concat()) };
                return Some((Ok(bytes), s));
            }
            if s.events.complete() {
                return None;
            }
            match tokio::time::timeout_at(deadline, s.upstream.next()).await {
                Err(_) => {
                    s.done = true;
                    return Some((Err(UpstreamError::Timeout("total")), s));
                }
                Ok(None) => {
                    s.done = true;
                    let mut out = Vec::new();
                    return Some((s.events.end(&mut out).map(|()| Bytes::from(out.concat())), s));
                }
                Ok(Some(Err(e))) => {
                    s.done = true;
                    return Some((Err(UpstreamError::Connect(format!("the stream broke: {e}"))), s));
                }
                Ok(Some(Ok(chunk))) => s.decoder.push(&chunk),
            }
        }
    });
    Box::pin(stream)
}
