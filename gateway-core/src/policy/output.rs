//! Output guards: deny patterns and redaction on the model's answer.
//!
//! A whole answer is scanned once. A streamed answer goes through a
//! [`StreamScanner`] that keeps, per choice, the text not yet released: the
//! last [`HOLD`] bytes, extended back to the start of a token-like run (a key,
//! an address, a card number with its separators), so a secret split over
//! several SSE chunks is still whole when it is redacted. Deny patterns are
//! matched on the held text together with the last [`CONTEXT`] bytes already
//! released, so a match across a chunk boundary is caught too. A blocked
//! stream ends with one SSE error event, written by the HTTP layer from the
//! [`PolicyError`] (OpenAI's error JSON), and no `[DONE]`.
//! Tool-call arguments are not scanned.
//!
//! Nothing here runs when no applied policy scans output.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::Value;
use tenantgate_crds::v1alpha1::GuardAction;

use super::decision::{Finding, Guard, PolicyDecision, Stage};
use super::error::PolicyError;
use super::guards::{KINDS, redact_guard};
use super::redact::{self, Kinds};
use crate::llm::{EventStream, sse};

/// Bytes of the newest text always held back.
pub const HOLD: usize = 32;
/// Bytes of released text kept as context for deny patterns.
pub const CONTEXT: usize = 256;
/// Longest token-like run held back whole; longer runs are released in parts.
const MAX_RUN: usize = 4096;

/// The SSE event that ends a blocked stream, written by the HTTP layer.
pub type ErrorEvent = fn(&PolicyError) -> Bytes;

/// A stream the output guards stopped.
#[derive(Debug)]
pub struct Blocked {
    /// What was released before the block, to send before the error event.
    pub released: Bytes,
    /// Why the stream was stopped.
    pub error: PolicyError,
}

/// The output guards of one request's stack.
#[derive(Debug)]
pub struct OutputGuard {
    deny: Vec<(Arc<str>, Arc<regex::RegexSet>)>,
    kinds: Kinds,
    owners: [Option<Arc<str>>; 3],
    /// What fired on this request's answer (the guard is per request); never locked across an await.
    findings: std::sync::Mutex<Vec<Finding>>,
}

impl OutputGuard {
    pub(super) fn new(
        deny: Vec<(Arc<str>, Arc<regex::RegexSet>)>,
        kinds: Kinds,
        owners: [Option<Arc<str>>; 3],
    ) -> Self {
        Self { deny, kinds, owners, findings: std::sync::Mutex::new(Vec::new()) }
    }

    fn record(&self, finding: Finding) {
        finding.log();
        let mut findings = self.findings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !findings.contains(&finding) {
            findings.push(finding);
        }
    }

    fn check_deny(&self, text: &str) -> Result<(), PolicyError> {
        for (policy, set) in &self.deny {
            if set.is_match(text) {
                self.record(Finding {
                    policy: policy.clone(),
                    guard: Guard::DenyPatterns,
                    action: GuardAction::Block,
                    stage: Stage::Output,
                });
                return Err(PolicyError::OutputBlocked { policy: policy.clone(), guard: Guard::DenyPatterns });
            }
        }
        Ok(())
    }

    fn redact<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        let (out, found) = redact::redact(text, self.kinds);
        for (i, kind) in KINDS.into_iter().enumerate().filter(|(_, k)| found.contains(*k)) {
            if let Some(policy) = &self.owners[i] {
                self.record(Finding {
                    policy: policy.clone(),
                    guard: redact_guard(kind),
                    action: GuardAction::Redact,
                    stage: Stage::Output,
                });
            }
        }
        out
    }

    /// Scans a whole `chat.completion` body: refuses it on a deny pattern,
    /// redacts message contents. Returns the body unchanged when nothing fired.
    pub fn scan_body(&self, body: Bytes) -> Result<Bytes, PolicyError> {
        let Ok(mut value) = serde_json::from_slice::<Value>(&body) else { return Ok(body) };
        let mut changed = false;
        for choice in value.get_mut("choices").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(Value::String(content)) = choice.get_mut("message").and_then(|m| m.get_mut("content")) {
                self.check_deny(content)?;
                if let std::borrow::Cow::Owned(r) = self.redact(content) {
                    *content = r;
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(body);
        }
        Ok(serde_json::to_vec(&value).map(Bytes::from).unwrap_or(body))
    }
}

impl PolicyDecision {
    /// The output guards that fired on the answer so far (each once); for a
    /// stream, complete once the stream has ended.
    pub fn output_findings(&self) -> Vec<Finding> {
        self.output
            .as_ref()
            .map_or_else(Vec::new, |g| g.findings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    /// Applies the output guards to a whole answer (unchanged without them).
    pub fn scan_body(&self, body: Bytes) -> Result<Bytes, PolicyError> {
        match &self.output {
            Some(guard) => guard.scan_body(body),
            None => Ok(body),
        }
    }

    /// Wraps a streamed answer in the output guards (returned as is without
    /// them); a blocked stream ends with `error_event` of the refusal.
    pub fn guard_stream(&self, events: EventStream, error_event: ErrorEvent) -> EventStream {
        match &self.output {
            Some(guard) => StreamScanner::new(guard.clone()).wrap(events, error_event),
            None => events,
        }
    }
}

#[derive(Debug, Default)]
struct ChoiceState {
    index: u64,
    /// Text received but not released yet.
    held: String,
    /// The end of what was released, for deny patterns across boundaries.
    tail: String,
}

/// Stateful scanner of one streamed answer.
#[derive(Debug)]
pub struct StreamScanner {
    guard: Arc<OutputGuard>,
    choices: Vec<ChoiceState>,
    /// The last chunk seen, as the frame of a flush before `[DONE]`.
    frame: Option<Value>,
}

impl StreamScanner {
    /// A scanner for one stream.
    pub fn new(guard: Arc<OutputGuard>) -> Self {
        Self { guard, choices: Vec::new(), frame: None }
    }

    /// The stream with the guards applied; a blocked stream ends with
    /// `error_event` of the refusal.
    pub fn wrap(self, events: EventStream, error_event: ErrorEvent) -> EventStream {
        let stream = futures_util::stream::unfold(Some((events, self)), move |state| async move {
            let (mut events, mut scanner) = state?;
            match events.next().await {
                None => {
                    // Upstream ended without [DONE]: release what is held.
                    let rest = scanner.flush();
                    (!rest.is_empty()).then(|| (Ok(rest), None))
                }
                Some(Err(e)) => Some((Err(e), None)),
                Some(Ok(bytes)) => match scanner.push(&bytes) {
                    Ok(out) => Some((Ok(out), Some((events, scanner)))),
                    Err(Blocked { released, error }) => {
                        let mut out = BytesMut::from(released);
                        out.extend_from_slice(&error_event(&error));
                        Some((Ok(out.freeze()), None))
                    }
                },
            }
        });
        Box::pin(stream)
    }

    /// Processes whole events; `Err` holds what was released before the
    /// block and why the stream must end.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Bytes, Blocked> {
        let mut out = BytesMut::with_capacity(bytes.len() + 16);
        for event in split_events(bytes) {
            match self.event(event, &mut out) {
                Ok(()) => {}
                Err(error) => return Err(Blocked { released: out.freeze(), error }),
            }
        }
        Ok(out.freeze())
    }

    fn event(&mut self, event: &[u8], out: &mut BytesMut) -> Result<(), PolicyError> {
        let Some(data) = data_of(event) else {
            out.extend_from_slice(event);
            return Ok(());
        };
        if data.trim_ascii() == b"[DONE]" {
            out.extend_from_slice(&self.flush());
            out.extend_from_slice(event);
            return Ok(());
        }
        let Ok(mut chunk) = serde_json::from_slice::<Value>(data) else {
            out.extend_from_slice(event);
            return Ok(());
        };
        let mut changed = false;
        for choice in chunk.get_mut("choices").and_then(Value::as_array_mut).into_iter().flatten() {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            let delta = choice.get_mut("delta").and_then(Value::as_object_mut);
            let Some(delta) = delta else { continue };
            let text = match delta.get("content") {
                Some(Value::String(s)) => Some(s.as_str()),
                _ => None,
            };
            if text.is_none() && !finished {
                continue;
            }
            let released = self.release(index, text.unwrap_or(""), finished)?;
            if text.is_some() || !released.is_empty() {
                delta.insert("content".into(), Value::String(released));
                changed = true;
            }
        }
        if chunk.get("choices").is_some() {
            self.frame = Some(chunk.clone());
        }
        if changed {
            let json = serde_json::to_vec(&chunk).unwrap_or_default();
            out.extend_from_slice(&sse::data_event(&json));
        } else {
            out.extend_from_slice(event);
        }
        Ok(())
    }

    /// Adds `text` to choice `index` and returns what can be released now.
    fn release(&mut self, index: u64, text: &str, finished: bool) -> Result<String, PolicyError> {
        let guard = self.guard.clone();
        let state = match self.choices.iter().position(|c| c.index == index) {
            Some(i) => &mut self.choices[i],
            None => {
                self.choices.push(ChoiceState { index, ..ChoiceState::default() });
                let last = self.choices.len() - 1;
                &mut self.choices[last]
            }
        };
        state.held.push_str(text);
        if !guard.deny.is_empty() {
            let mut window = String::with_capacity(state.tail.len() + state.held.len());
            window.push_str(&state.tail);
            window.push_str(&state.held);
            guard.check_deny(&window)?;
        }
        // Only whole runs are released and redacted: a key cut by the chunk
        // boundary must not be redacted as a shorter key and then leak its rest.
        let cut = if finished { state.held.len() } else { release_point(&state.held) };
        let rest = state.held.split_off(cut);
        let raw = std::mem::replace(&mut state.held, rest);
        state.tail.push_str(&raw);
        let released = match guard.redact(&raw) {
            std::borrow::Cow::Owned(r) => r,
            std::borrow::Cow::Borrowed(_) => raw,
        };
        if state.tail.len() > CONTEXT {
            let from = state.tail.ceil_char_boundary(state.tail.len() - CONTEXT);
            state.tail.drain(..from);
        }
        Ok(released)
    }

    /// Releases everything held, as one chunk event per choice.
    fn flush(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        let indexes: Vec<u64> = self.choices.iter().filter(|c| !c.held.is_empty()).map(|c| c.index).collect();
        for index in indexes {
            let Ok(text) = self.release(index, "", true) else { continue };
            let mut frame =
                self.frame.clone().unwrap_or_else(|| serde_json::json!({"object": "chat.completion.chunk"}));
            frame["choices"] = serde_json::json!([{"index": index, "delta": {"content": text}, "finish_reason": null}]);
            if let Some(obj) = frame.as_object_mut() {
                obj.remove("usage");
            }
            out.extend_from_slice(&sse::data_event(&serde_json::to_vec(&frame).unwrap_or_default()));
        }
        out.freeze()
    }
}

/// Where the held text may be cut: before the last [`HOLD`] bytes, moved back
/// to the start of the token-like run it falls in (non-whitespace, digit
/// groups joined by single spaces or dashes, `key: value` and `Bearer token`).
fn release_point(held: &str) -> usize {
    if held.len() <= HOLD {
        return 0;
    }
    let b = held.as_bytes();
    let mut p = held.floor_char_boundary(held.len() - HOLD);
    let limit = p.saturating_sub(MAX_RUN);
    let mut extra_words = 2;
    loop {
        while p > limit && !b[p - 1].is_ascii_whitespace() {
            p -= 1;
        }
        if p <= limit || p < 2 {
            break;
        }
        let sep = b[p - 1];
        let digits_joined =
            (sep == b' ' || sep == b'-') && b[p - 2].is_ascii_digit() && b.get(p).is_some_and(u8::is_ascii_digit);
        // A value after `key:`/`key=` or `Bearer`: keep the key with it.
        let before_word = &held[..p - 1].trim_end();
        let keyed = extra_words > 0
            && (before_word.ends_with(':')
                || before_word.ends_with('=')
                || before_word.to_ascii_lowercase().ends_with("bearer"));
        if digits_joined {
            p -= 1;
        } else if keyed {
            extra_words -= 1;
            p = before_word.len();
        } else {
            break;
        }
    }
    held.floor_char_boundary(p.max(limit))
}

/// The events of a run of whole events, separators included.
fn split_events(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memmem::find(rest, b"\n\n").map(|i| i + 2).unwrap_or(rest.len());
        let (event, tail) = rest.split_at(end);
        rest = tail;
        Some(event)
    })
}

/// The data of a single-`data:`-line event.
fn data_of(event: &[u8]) -> Option<&[u8]> {
    let line = event.strip_prefix(b"data:")?;
    let line = line.strip_prefix(b" ").unwrap_or(line);
    let end = memchr::memchr(b'\n', line).unwrap_or(line.len());
    let line = &line[..end];
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(deny: &[&str], kinds: Kinds) -> Arc<OutputGuard> {
        let deny = if deny.is_empty() {
            Vec::new()
        } else {
            vec![(Arc::from("ns/deny"), Arc::new(regex::RegexSet::new(deny).expect("patterns")))]
        };
        let owner = Some(Arc::from("ns/redact"));
        Arc::new(OutputGuard::new(deny, kinds, [owner.clone(), owner.clone(), owner]))
    }

    fn chunk(text: &str) -> Vec<u8> {
        sse::data_event(
            serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
            .to_string()
            .as_bytes(),
        )
        .to_vec()
    }

    fn finish() -> Vec<u8> {
        sse::data_event(
            serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            .to_string()
            .as_bytes(),
        )
        .to_vec()
    }

    /// The text a client reassembles from the content deltas.
    fn text_of(out: &[u8]) -> String {
        split_events(out)
            .filter_map(data_of)
            .filter_map(|d| serde_json::from_slice::<Value>(d).ok())
            .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn a_card_number_split_over_chunks_is_redacted() {
        let mut s = StreamScanner::new(guard(&[], Kinds::ALL));
        let mut out = Vec::new();
        for piece in
            ["Your card is 4111 11", "11 1111 1111, and your key is sk-proj-abcdef", "ghijklmnopqrstuvwxyz12 ok."]
        {
            out.extend_from_slice(&s.push(&chunk(piece)).expect("not blocked"));
        }
        out.extend_from_slice(&s.push(&finish()).expect("not blocked"));
        out.extend_from_slice(&s.push(sse::DONE).expect("not blocked"));
        let text = text_of(&out);
        assert_eq!(text, "Your card is [REDACTED:creditCard], and your key is [REDACTED:apiKey] ok.");
        assert!(out.ends_with(sse::DONE));
        let findings = s.guard.findings.lock().expect("lock").clone();
        let guards: Vec<Guard> = findings.iter().map(|f| f.guard).collect();
        assert_eq!(guards, [Guard::RedactCreditCard, Guard::RedactApiKey]);
        assert!(findings.iter().all(|f| f.stage == Stage::Output && &*f.policy == "ns/redact"));
    }

    #[test]
    fn every_split_point_of_a_secret_is_caught() {
        let full = "Contact me at jane.doe@example.org or use token ghp_abcdefghijklmnopqrstuvwxyz0123456789 now";
        for cut in 1..full.len() {
            let mut s = StreamScanner::new(guard(&[], Kinds::ALL));
            let mut out = Vec::new();
            out.extend_from_slice(&s.push(&chunk(&full[..cut])).expect("ok"));
            out.extend_from_slice(&s.push(&chunk(&full[cut..])).expect("ok"));
            out.extend_from_slice(&s.push(sse::DONE).expect("ok"));
            let text = text_of(&out);
            assert_eq!(text, "Contact me at [REDACTED:email] or use token [REDACTED:apiKey] now", "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn a_deny_pattern_across_chunks_ends_the_stream_with_an_error_event() {
        // The event's JSON is the HTTP layer's: `error::policy_error_event`, tested there.
        let mut s = StreamScanner::new(guard(&["(?i)project\\s+nightingale"], Kinds::NONE));
        let first = s.push(&chunk("The code name is Project ")).expect("not yet");
        assert!(!String::from_utf8_lossy(&first).contains("error"));
        let blocked = s.push(&chunk("Nightingale, launching soon")).expect_err("blocked");
        assert!(!String::from_utf8_lossy(&blocked.released).to_lowercase().contains("nightingale"));
        assert!(matches!(blocked.error, PolicyError::OutputBlocked { guard: Guard::DenyPatterns, .. }));
        let message = blocked.error.to_string();
        assert!(message.contains("ns/deny"), "{message}");
        assert!(!message.to_lowercase().contains("nightingale"), "never the pattern: {message}");
        let wrapped =
            wrapped(&["(?i)project\\s+nightingale"], &["The code name is Project ", "Nightingale, launching soon"])
                .await;
        assert!(wrapped.ends_with(b"event: blocked\n\n"), "{}", String::from_utf8_lossy(&wrapped));
    }

    /// What a client reads of `pieces` streamed through a scanner whose
    /// error event is `event: blocked`.
    async fn wrapped(deny: &[&str], pieces: &[&str]) -> Vec<u8> {
        let events: Vec<Result<Bytes, crate::llm::UpstreamError>> =
            pieces.iter().map(|p| Ok(Bytes::from(chunk(p)))).collect();
        let stream = StreamScanner::new(guard(deny, Kinds::NONE))
            .wrap(Box::pin(futures_util::stream::iter(events)), |_| Bytes::from_static(b"event: blocked\n\n"));
        stream.map(|r| r.expect("no upstream error").to_vec()).concat().await
    }

    #[test]
    fn whole_bodies_are_redacted_or_refused() {
        let g = guard(&["forbidden"], Kinds::ALL);
        let body = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "mail a@b.example"}}]});
        let out = g.scan_body(Bytes::from(body.to_string())).expect("ok");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["choices"][0]["message"]["content"], "mail [REDACTED:email]");
        let body = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "a forbidden word"}}]});
        assert!(matches!(g.scan_body(Bytes::from(body.to_string())), Err(PolicyError::OutputBlocked { .. })));
        let guards: Vec<Guard> = g.findings.lock().expect("lock").iter().map(|f| f.guard).collect();
        assert_eq!(guards, [Guard::RedactEmail, Guard::DenyPatterns]);
        let clean = Bytes::from_static(br#"{"choices":[{"index":0,"message":{"content":"fine"}}]}"#);
        assert_eq!(g.scan_body(clean.clone()).expect("ok"), clean);
    }

    #[test]
    fn release_points_keep_runs_whole() {
        assert_eq!(release_point("short"), 0);
        let text = format!("{}4111 1111 1111", "word ".repeat(10));
        let p = release_point(&text);
        assert!(p <= text.find("4111").expect("card") && text[..p].ends_with(' '), "{:?}", &text[p..]);
        let text = format!("{}api_key: abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH", "word ".repeat(10));
        let p = release_point(&text);
        assert!(text[p..].starts_with("api_key:"), "{:?}", &text[p..]);
        let text = format!("{}Bearer abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH", "word ".repeat(10));
        let p = release_point(&text);
        assert!(text[p..].starts_with("Bearer"), "{:?}", &text[p..]);
    }
}
