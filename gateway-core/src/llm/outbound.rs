//! What the translations of the chat request into other providers' APIs
//! (Anthropic Messages, Gemini) share: turns merged by role, the user's
//! content parts, and the loop that turns a provider's SSE answer into chat
//! chunks.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::UpstreamError;
use super::sse::Decoder;
use super::types::{ChatRequest, Content};

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

/// A provider's stream events, translated into chat chunks.
pub(super) trait StreamEvents: Send + 'static {
    /// The chat chunks for one event's `data`.
    fn translate(&mut self, data: &str, out: &mut Vec<Bytes>) -> Result<(), UpstreamError>;
    /// Whether the answer is complete: nothing more is read.
    fn complete(&self) -> bool;
    /// The chunks when the upstream stream ends before [`Self::complete`], or why that is an error.
    fn end(&mut self, out: &mut Vec<Bytes>) -> Result<(), UpstreamError>;
}

/// A provider's SSE answer as chat chunks, through `events`, before the deadline.
pub(super) fn translate_stream(
    response: reqwest::Response,
    deadline: tokio::time::Instant,
    events: impl StreamEvents,
) -> super::EventStream {
    struct State<E> {
        upstream: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
        decoder: Decoder,
        events: E,
        done: bool,
    }
    let state = State { upstream: response.bytes_stream().boxed(), decoder: Decoder::default(), events, done: false };
    let stream = futures_util::stream::unfold(state, move |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let mut out = Vec::new();
            while let Some(event) = s.decoder.next_event() {
                if let Err(e) = s.events.translate(&event.data, &mut out) {
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
                    return Some((Err(UpstreamError::Connect(format!("the stream broke: {}", super::short(&e)))), s));
                }
                Ok(Some(Ok(chunk))) => s.decoder.push(&chunk),
            }
        }
    });
    Box::pin(stream)
}
