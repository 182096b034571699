//! Server-sent events: cutting upstream byte streams at event boundaries
//! without copying, and the gateway's one SSE decoder (provider streams that
//! need translation, the legacy MCP SSE transport). It follows the WHATWG
//! rules: unknown fields and lines without a colon are ignored, not errors
//! (sse-stream 0.2 refuses them and drops the rest of the chunk).

use bytes::{Bytes, BytesMut};

use super::types::Usage;
use futures_util::{Stream, StreamExt};

/// Cuts a byte stream into runs of whole events. Complete events are handed
/// on as slices of the upstream buffers; only a trailing partial event is kept.
#[derive(Debug, Default)]
pub struct EventBoundary {
    pending: BytesMut,
}

impl EventBoundary {
    /// Whole events from `chunk` (and what was pending), if any.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.pending.is_empty() {
            let end = last_event_end(&chunk);
            let mut chunk = chunk;
            let whole = chunk.split_to(end);
            if !chunk.is_empty() {
                self.pending.extend_from_slice(&chunk);
            }
            return (!whole.is_empty()).then_some(whole);
        }
        self.pending.extend_from_slice(&chunk);
        let end = last_event_end(&self.pending);
        (end > 0).then(|| self.pending.split_to(end).freeze())
    }

    /// Whether a partial event is pending.
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Index just past the last blank line (`\n\n` or `\r\n\r\n`) in `buf`, or 0.
fn last_event_end(buf: &[u8]) -> usize {
    memchr::memmem::rfind(buf, b"\n\n")
        .map(|i| i + 2)
        .max(memchr::memmem::rfind(buf, b"\n\r\n").map(|i| i + 3))
        .unwrap_or(0)
}

/// What a client API makes of the gateway's `chat.completion.chunk` events
/// (see [`Translate`], which keeps what every API needs: whether the stream
/// started and ended, and the usage of the final chunk).
pub trait ChunkSink {
    /// The opening events, once, before anything else.
    fn start(&mut self, out: &mut Vec<u8>);
    /// The events for the first choice of one chunk (its delta and finish reason).
    fn choice(&mut self, choice: &serde_json::Value, out: &mut Vec<u8>);
    /// The events for an error chunk; nothing follows them.
    fn error(&mut self, error: &serde_json::Value, out: &mut Vec<u8>);
    /// The closing events, once, with the stream's usage.
    fn finish(&mut self, usage: Usage, out: &mut Vec<u8>);
}

/// Translates a chat SSE stream, cut anywhere, into another client API's
/// events through its [`ChunkSink`].
#[derive(Debug)]
pub struct Translate<S> {
    decoder: Decoder,
    sink: S,
    started: bool,
    finished: bool,
    usage: Usage,
}

impl<S: ChunkSink> Translate<S> {
    /// A translation through `sink`.
    pub fn new(sink: S) -> Self {
        Self { decoder: Decoder::default(), sink, started: false, finished: false, usage: Usage::default() }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.sink.start(out);
        }
    }

    /// The client's events for some chat SSE bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Bytes {
        self.decoder.push(bytes);
        let mut out = Vec::new();
        while let Some(event) = self.decoder.next_event() {
            if self.finished {
                break;
            }
            if event.data == "[DONE]" {
                self.finish(&mut out);
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<serde_json::Value>(&event.data) else { continue };
            self.start(&mut out);
            if let Some(error) = chunk.get("error") {
                self.sink.error(error, &mut out);
                self.finished = true;
                continue;
            }
            if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
                self.usage = serde_json::from_value(usage.clone()).unwrap_or_default();
            }
            if let Some(choice) = chunk["choices"].get(0) {
                self.sink.choice(choice, &mut out);
            }
        }
        Bytes::from(out)
    }

    /// The closing events (at `[DONE]`, or when the stream ended without it; none after an error).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.finished {
            self.start(out);
            self.finished = true;
            self.sink.finish(self.usage, out);
        }
    }
}

/// A chat stream and a way to push it through a [`Translate`], for the client APIs' tests.
#[cfg(test)]
pub(crate) mod test_stream {
    use serde_json::{Value, json};

    use super::{ChunkSink, Translate};

    /// Text `Hello` in two deltas, a call of `f` with `{"a":1}` in two argument
    /// deltas, finish `tool_calls`, the usage chunk (5 + 4 tokens), `[DONE]`.
    pub fn text_then_call() -> String {
        let chunk = |delta: Value, finish: Value| {
            format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
        };
        let call = json!({"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}});
        [
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Hel"}), Value::Null),
            chunk(json!({"content": "lo"}), Value::Null),
            chunk(json!({"tool_calls": [call]}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), Value::Null),
            chunk(json!({}), json!("tool_calls")),
            format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}})
            ),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat()
    }

    /// Pushes `input` through `t` in 7-byte pieces (cut inside events too) and
    /// returns the JSON of each `data:` line that came out.
    pub fn translate<S: ChunkSink>(t: &mut Translate<S>, input: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for piece in input.as_bytes().chunks(7) {
            out.extend_from_slice(&t.push(piece));
        }
        String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect()
    }
}

/// One decoded event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    /// `event:` field.
    pub event: Option<String>,
    /// `data:` lines joined by `\n`.
    pub data: String,
}

/// Incremental SSE decoder.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// Adds bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let (end, sep) = find_blank_line(&self.buf)?;
            let raw = self.buf.split_to(end + sep);
            let text = String::from_utf8_lossy(&raw[..end]);
            let mut event = Event::default();
            let mut has_data = false;
            for line in text.lines() {
                if let Some(v) = field(line, "data") {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(v);
                    has_data = true;
                } else if let Some(v) = field(line, "event") {
                    event.event = Some(v.to_string());
                }
            }
            if has_data || event.event.is_some() {
                return Some(event);
            }
        }
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| (i, 2));
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The events of a byte stream, decoded as the bytes arrive; an error of the
/// byte stream is passed on (the caller decides whether to go on).
pub fn events<S, E>(bytes: S) -> impl Stream<Item = Result<Event, E>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: Send,
{
    futures_util::stream::unfold((bytes, Decoder::default()), |(mut bytes, mut decoder)| async move {
        loop {
            if let Some(event) = decoder.next_event() {
                return Some((Ok(event), (bytes, decoder)));
            }
            match bytes.next().await {
                None => return None,
                Some(Err(e)) => return Some((Err(e), (bytes, decoder))),
                Some(Ok(chunk)) => decoder.push(&chunk),
            }
        }
    })
}

/// `data: <json>\n\n`.
pub fn data_event(json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// `event: <name>\ndata: <data as JSON>\n\n`, appended to `out`.
pub(crate) fn named_event(out: &mut Vec<u8>, name: &str, data: &impl serde::Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing to a Vec fails only for a map whose keys are not strings, which no event has.
    if let Err(e) = serde_json::to_writer(&mut *out, data) {
        tracing::error!(event = name, error = %e, "an event did not serialize");
    }
    out.extend_from_slice(b"\n\n");
}

/// The end of an OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_passes_whole_events_and_keeps_partials() {
        let mut b = EventBoundary::default();
        assert_eq!(
            b.push(Bytes::from_static(b"data: 1\n\ndata: 2\n\nda")).as_deref(),
            Some(&b"data: 1\n\ndata: 2\n\n"[..])
        );
        assert!(b.has_partial());
        assert_eq!(b.push(Bytes::from_static(b"ta: 3\n")), None);
        assert_eq!(b.push(Bytes::from_static(b"\n")).as_deref(), Some(&b"data: 3\n\n"[..]));
        assert!(!b.has_partial());
    }

    #[test]
    fn decoder_reads_events_across_chunks() {
        let mut d = Decoder::default();
        d.push(b"event: message_start\ndata: {\"a\"");
        assert_eq!(d.next_event(), None);
        d.push(b":1}\n\n: comment\n\nevent: ping\r\ndata: {}\r\n\r\n");
        assert_eq!(d.next_event(), Some(Event { event: Some("message_start".into()), data: "{\"a\":1}".into() }));
        assert_eq!(d.next_event(), Some(Event { event: Some("ping".into()), data: "{}".into() }));
        assert_eq!(d.next_event(), None);
    }
}
