//! The pass-through of `tools/call` on `/mcp`: a request is read only as far
//! as forwarding needs (its id kept raw, the method, the tool name; the
//! arguments and `_meta` stay raw text), the same per-call policy as
//! [`super::call::call_tool`] applies ([`super::call::admit`]), the tool name
//! and the id are rewritten, and the raw params go upstream on the session
//! rmcp's client opened (see [`super::transport::RawSender`]). The upstream's
//! answer comes back with the client's id restored: its result is copied as it
//! is, unless a prompt policy applies to the caller, when it is decoded for
//! the guards and encoded again. An event stream is relayed as it comes:
//! progress notifications go to the client, log messages and list changes to
//! the hub as rmcp's client would take them, and a request of the upstream
//! (sampling, elicitation, roots) is refused, since only clients that declared
//! none of those are served here.
//!
//! Whatever this does not handle exactly as the full path would is left to it
//! ([`Passthrough::Fallback`]): the caller decides which sessions qualify.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use rmcp::model::{CallToolResponse, CallToolResult, ErrorData, ServerResult};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::McpHub;
use super::call::{Admitted, Mode, Via, admit, record_forward, respond};
use super::transport::RawSender;
use super::upstream::{ForwardError, Upstream};
use crate::auth::Identity;
use crate::llm::sse::{data_event, events};
use crate::policy::Finding;
use crate::routing::breaker::Permit;
use crate::traces::{self, FutureExt as _};

/// The `_meta` key under which the full path tells the upstream what the
/// client declared of sampling, elicitation and roots (here: none of them).
const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// Ids of the requests sent raw: strings, so they never meet the numbers
/// rmcp's client uses on the same session.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A `tools/call` request, read as little as forwarding it needs.
#[derive(Debug)]
pub struct ToolCall<'a> {
    id: &'a RawValue,
    name: Cow<'a, str>,
    /// The other params (`arguments`, `_meta`, `task`), raw.
    params: Vec<(&'a str, &'a RawValue)>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: &'a str,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: &'a str,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

/// The fields of a JSON object, their values raw, in order.
struct Fields<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<&'de str, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// A JSON string's value, borrowed when it has no escapes.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(raw.get()).ok().map(Cow::Owned),
    }
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

impl<'a> ToolCall<'a> {
    /// Reads `body`: only one JSON-RPC 2.0 request with method `tools/call`,
    /// a number or string id, and params with a string `name`, an object
    /// `arguments` and `_meta` if any, and nothing else but `task`. A `_meta`
    /// that names a per-request protocol version or client capabilities (the
    /// full path reads them) is left to the full path, as is anything else.
    pub fn parse(body: &'a [u8]) -> Option<Self> {
        let envelope: Envelope<'a> = serde_json::from_slice(body).ok()?;
        let id = envelope.id?;
        let valid_id = id.get().starts_with(|c: char| c == '"' || c == '-' || c.is_ascii_digit());
        if envelope.jsonrpc != "2.0" || envelope.method != "tools/call" || !valid_id {
            return None;
        }
        let Fields(fields) = serde_json::from_str(envelope.params?.get()).ok()?;
        let mut name = None;
        let mut params = Vec::with_capacity(fields.len());
        for (i, (key, value)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(k, _)| k == key) {
                return None;
            }
            match *key {
                "name" => name = Some(string(value)?),
                "arguments" | "_meta" if !is_object(value) => return None,
                "_meta" if value.get().contains("io.modelcontextprotocol/") => return None,
                "arguments" | "_meta" | "task" => params.push((*key, *value)),
                _ => return None,
            }
        }
        Some(Self { id, name: name?, params })
    }

    /// The exposed tool name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client's id, raw.
    pub fn id(&self) -> &RawValue {
        self.id
    }

    fn param(&self, key: &str) -> Option<&RawValue> {
        self.params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The arguments as the client sent them, for the audit event.
    fn arguments_text(&self) -> Option<String> {
        self.param("arguments").map(|a| a.get().to_owned())
    }

    /// The request for the upstream: its tool name `name`, the id `id`, the
    /// other params as they came, and in `_meta` the client capabilities the
    /// full path declares for such a client (none).
    fn upstream_body(&self, name: &str, id: &str) -> Vec<u8> {
        let raw_len: usize = self.params.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum();
        let mut out = Vec::with_capacity(raw_len + name.len() + 160);
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        push_json_string(&mut out, id);
        out.extend_from_slice(br#","method":"tools/call","params":{"name":"#);
        push_json_string(&mut out, name);
        let declared = format!(r#""{CLIENT_CAPABILITIES}":{{}}"#);
        let mut meta = false;
        for (key, value) in &self.params {
            out.push(b',');
            push_json_string(&mut out, key);
            out.push(b':');
            if *key == "_meta" {
                meta = true;
                let inner = value.get()[1..].trim_start();
                out.push(b'{');
                out.extend_from_slice(declared.as_bytes());
                if !inner.starts_with('}') {
                    out.push(b',');
                }
                out.extend_from_slice(inner.as_bytes());
            } else {
                out.extend_from_slice(value.get().as_bytes());
            }
        }
        if !meta {
            out.extend_from_slice(br#","_meta":{"#);
            out.extend_from_slice(declared.as_bytes());
            out.push(b'}');
        }
        out.extend_from_slice(b"}}");
        out
    }
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// What the pass-through made of a request.
pub enum Passthrough {
    /// Not for the pass-through: the full path serves it (nothing was done).
    Fallback,
    /// One JSON-RPC message for the client (`application/json`).
    Json(Vec<u8>),
    /// An event stream for the client: relayed notifications, then the response.
    Sse(BoxStream<'static, Bytes>),
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fallback => "Passthrough::Fallback",
            Self::Json(_) => "Passthrough::Json",
            Self::Sse(_) => "Passthrough::Sse",
        })
    }
}

/// One JSON-RPC response for the client: its id, then `result` or `error` raw.
fn message(id: &RawValue, key: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + id.get().len() + 40);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(br#",""#);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(br#"":"#);
    out.extend_from_slice(value.as_bytes());
    out.push(b'}');
    out
}

fn error_message(id: &RawValue, error: &ErrorData) -> Vec<u8> {
    message(id, "error", &serde_json::to_string(error).unwrap_or_default())
}

/// The client's message for what [`respond`] made of an outcome, as rmcp's
/// server sends it to a client of a revision before 2026-07-28.
fn response_message(id: &RawValue, response: Result<CallToolResponse, ErrorData>) -> Vec<u8> {
    let mut result = match response {
        Ok(CallToolResponse::Complete(r)) => ServerResult::CallToolResult(r),
        Ok(CallToolResponse::InputRequired(r)) => ServerResult::InputRequiredResult(r),
        Ok(CallToolResponse::Task(r)) => ServerResult::CreateTaskResult(r),
        Ok(_) => return error_message(id, &ErrorData::internal_error("unexpected tools/call result", None)),
        Err(e) => return error_message(id, &e),
    };
    result.strip_result_type_for_legacy_peer();
    message(id, "result", &serde_json::to_string(&result).unwrap_or_default())
}

/// Runs one `tools/call` through the pass-through for `caller`, whose session
/// the caller judged fit for it (a revision before 2026-07-28, none of
/// sampling, elicitation and roots declared). [`Passthrough::Fallback`] when
/// the tool's upstream has no raw sender (stdio, HTTP+SSE, per-user OAuth,
/// not connected): nothing has been done then.
/// `session` is the client's session, where `calls` registers the call so
/// that the client's `notifications/cancelled` for it reaches the upstream.
pub async fn call_tool(
    hub: &McpHub,
    mode: &Mode,
    caller: &Identity,
    call: &ToolCall<'_>,
    calls: &Arc<InFlight>,
    session: &str,
) -> Passthrough {
    let catalog = hub.catalog();
    let sender = match catalog.tool(call.name()) {
        Some(route) => match route.upstream.raw_sender() {
            Some(sender) => Some(sender),
            None => return Passthrough::Fallback,
        },
        // Unknown: `admit` refuses it as the full path does.
        None => None,
    };
    drop(catalog);
    let admitted = match admit(hub, mode, Some(caller), call.name(), || call.arguments_text(), Via::Passthrough).await {
        Ok(admitted) => admitted,
        Err(e) => return Passthrough::Json(error_message(call.id(), &e)),
    };
    let Some(sender) = sender else { return Passthrough::Fallback };
    let upstream_id = format!("tenantgate-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let body = call.upstream_body(&admitted.route.name, &upstream_id);
    let upstream = admitted.route.upstream.clone();
    let started = Instant::now();
    let span = traces::Attempt::start_mcp("tools/call", call.name(), admitted.connection());
    let posting = upstream.post_raw(&sender, body);
    let posted = match &span {
        Some(span) => posting.with_context(span.context()).await,
        None => posting.await,
    };
    if let Some(span) = span {
        match &posted {
            Ok(_) => span.answered(),
            Err(e) => span.failed(None, e.as_reason(), e.to_string()),
        }
    }
    let (response, permit, deadline) = match posted {
        Ok(posted) => posted,
        Err(e) => {
            let outcome = e.as_reason();
            record_forward(admitted.connection().to_string(), outcome, started);
            let connection = admitted.finish(outcome, &[], started);
            return Passthrough::Json(response_message(call.id(), respond(&connection, Err(e))));
        }
    };
    let (registered, cancel) = calls.register(session, call.id());
    let mut exchange = Exchange {
        _registered: registered,
        cancel: Some(cancel),
        client_id: call.id().to_owned(),
        upstream_id: upstream_id.into(),
        upstream,
        sender,
        admitted: Some(admitted),
        permit: Some(permit),
        started,
    };
    let sse = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !sse {
        let text = match wait(&mut exchange.cancel, deadline, response.bytes()).await {
            Wait::Done(Ok(text)) => text,
            Wait::Done(Err(e)) => return Passthrough::Json(exchange.fail(exchange.transport(e.to_string()))),
            Wait::TimedOut => return Passthrough::Json(exchange.fail(exchange.timeout())),
            Wait::Cancelled => return Passthrough::Json(exchange.cancelled()),
        };
        return Passthrough::Json(match Reply::parse(&text) {
            Some(reply) if reply.is_response() => exchange.finish(reply),
            _ => exchange.fail(exchange.transport("the upstream's answer is not a JSON-RPC response".into())),
        });
    }
    let events = events(response.bytes_stream()).boxed();
    let stream = futures_util::stream::unfold(Some((exchange, events)), move |state| async move {
        let (mut exchange, mut events) = state?;
        loop {
            let event = match wait(&mut exchange.cancel, deadline, events.next()).await {
                Wait::Done(Some(Ok(event))) => event,
                Wait::Done(Some(Err(e))) => {
                    return Some((data_event(&exchange.fail(exchange.transport(e.to_string()))), None));
                }
                Wait::Done(None) => {
                    let e = exchange.transport("the upstream's event stream ended without a response".into());
                    return Some((data_event(&exchange.fail(e)), None));
                }
                Wait::TimedOut => return Some((data_event(&exchange.fail(exchange.timeout())), None)),
                Wait::Cancelled => return Some((data_event(&exchange.cancelled()), None)),
            };
            let data = event.data;
            if data.trim().is_empty() {
                continue;
            }
            let Some(reply) = Reply::parse(data.as_bytes()) else { continue };
            match (&reply.method, reply.id) {
                (Some(_), Some(asked)) => exchange.refuse(asked),
                (Some(method), None) if method == "notifications/progress" => {
                    return Some((data_event(data.as_bytes()), Some((exchange, events))));
                }
                (Some(method), None) => exchange.upstream.on_raw_notification(method, reply.params),
                (None, Some(id)) if string(id).as_deref() == Some(&*exchange.upstream_id) => {
                    let answer = data_event(&exchange.finish(reply));
                    // Read to its end, the upstream's connection goes back to the pool.
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout_at(deadline, events.for_each(|_| async {})).await;
                    });
                    return Some((answer, None));
                }
                _ => {}
            }
        }
    });
    Passthrough::Sse(stream.boxed())
}

/// What waiting for the upstream came to.
enum Wait<T> {
    Done(T),
    TimedOut,
    /// The client cancelled the call.
    Cancelled,
}

/// Waits for `work` until `deadline`, unless the client cancels first.
async fn wait<T>(
    cancel: &mut Option<oneshot::Receiver<()>>,
    deadline: tokio::time::Instant,
    work: impl Future<Output = T>,
) -> Wait<T> {
    let cancelled = async {
        if let Some(rx) = cancel
            && rx.await.is_ok()
        {
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        biased;
        () = cancelled => Wait::Cancelled,
        done = tokio::time::timeout_at(deadline, work) => done.map_or(Wait::TimedOut, Wait::Done),
    }
}

/// The pass-through's calls in flight, by client session and the client's
/// request id: a client's `notifications/cancelled` for one cancels it.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<CallKey, oneshot::Sender<()>>>);

/// A client session's id and a request id of its client, raw.
type CallKey = (Box<str>, Box<str>);

/// A call's entry in [`InFlight`], removed when the call ends.
struct Registered {
    calls: Arc<InFlight>,
    key: CallKey,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.calls.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.key);
    }
}

impl InFlight {
    fn register(self: &Arc<Self>, session: &str, id: &RawValue) -> (Registered, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let key: CallKey = (session.into(), id.get().into());
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key.clone(), tx);
        (Registered { calls: self.clone(), key }, rx)
    }

    /// Handles `body` when it is a `notifications/cancelled` of a call in
    /// flight here for `session`: cancels the call; whether it was one.
    pub fn cancel(&self, session: &str, body: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(borrow, rename = "requestId")]
            request_id: &'a RawValue,
        }
        let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(body) else { return false };
        if envelope.jsonrpc != "2.0" || envelope.method != "notifications/cancelled" || envelope.id.is_some() {
            return false;
        }
        let Some(params) = envelope.params.and_then(|p| serde_json::from_str::<Params<'_>>(p.get()).ok()) else {
            return false;
        };
        let key: CallKey = (session.into(), params.request_id.get().into());
        let found = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
        found.is_some_and(|tx| tx.send(()).is_ok())
    }
}

/// A JSON-RPC message from the upstream, read as little as relaying it needs.
#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

impl<'a> Reply<'a> {
    fn parse(text: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(text).ok()
    }

    fn is_response(&self) -> bool {
        self.method.is_none() && (self.result.is_some() || self.error.is_some())
    }
}

/// One forwarded call between sending it and answering the client. Dropped
/// before it is answered (the client went away), it is a cancelled call.
struct Exchange {
    _registered: Registered,
    /// Resolves when the client cancels the call.
    cancel: Option<oneshot::Receiver<()>>,
    client_id: Box<RawValue>,
    upstream_id: Box<str>,
    upstream: Arc<Upstream>,
    sender: RawSender,
    admitted: Option<Admitted>,
    permit: Option<Permit>,
    started: Instant,
}

impl Exchange {
    fn transport(&self, why: String) -> ForwardError {
        ForwardError::Transport(self.upstream.name().to_string(), why)
    }

    fn timeout(&self) -> ForwardError {
        ForwardError::Timeout(self.upstream.name().to_string(), self.upstream.config().timeout_seconds.max(1).into())
    }

    /// Settles the breaker, counts, audits; the connection's name.
    fn settle(&mut self, outcome: Result<(), &ForwardError>, findings: &[Finding]) -> String {
        if let Some(permit) = self.permit.take() {
            self.upstream.settle_raw(permit, outcome);
        }
        let label = outcome.err().map_or("ok", ForwardError::as_reason);
        let Some(admitted) = self.admitted.take() else { return String::new() };
        record_forward(admitted.connection().to_string(), label, self.started);
        admitted.finish(label, findings, self.started)
    }

    /// The client's message for a failed exchange, as the full path answers it.
    fn fail(&mut self, error: ForwardError) -> Vec<u8> {
        let connection = self.settle(Err(&error), &[]);
        response_message(&self.client_id, respond(&connection, Err(error)))
    }

    /// The client's message for the upstream's response: its error as it
    /// is; its result as it is unless a guard must read it or it carries a
    /// `resultType`, which a client of this revision is not sent.
    fn finish(&mut self, reply: Reply<'_>) -> Vec<u8> {
        if let Some(error) = reply.error.filter(|_| reply.result.is_none()) {
            let data: ErrorData = match serde_json::from_str(error.get()) {
                Ok(data) => data,
                Err(e) => return self.fail(self.transport(format!("an invalid JSON-RPC error: {e}"))),
            };
            self.settle(Err(&ForwardError::Upstream(data)), &[]);
            return message(&self.client_id, "error", error.get());
        }
        let Some(result) = reply.result else {
            return self.fail(self.transport("a JSON-RPC response without a result".into()));
        };
        let guards = self.admitted.as_ref().is_some_and(Admitted::guards_results);
        if !guards && !result.get().contains("\"resultType\"") {
            self.settle(Ok(()), &[]);
            return message(&self.client_id, "result", result.get());
        }
        // Decoded as the full path decodes it (rmcp's client, then its server).
        let decoded: ServerResult = match serde_json::from_str(result.get()) {
            Ok(decoded) => decoded,
            Err(e) => return self.fail(self.transport(format!("an invalid tools/call result: {e}"))),
        };
        let decoded = match decoded {
            ServerResult::CallToolResult(r) => CallToolResponse::Complete(r),
            ServerResult::CreateTaskResult(r) => CallToolResponse::Task(r),
            ServerResult::InputRequiredResult(_) => {
                let name = self.upstream.name().to_string();
                let e = ForwardError::Upstream(ErrorData::internal_error(
                    format!(
                        "MCP connection {name} answered a 2025-11-25 request with input_required, which only 2026-07-28 clients take"
                    ),
                    None,
                ));
                return self.fail(e);
            }
            _ => return self.fail(self.transport("another result type than tools/call's".into())),
        };
        let mut findings = Vec::new();
        let guarded = match decoded {
            CallToolResponse::Complete(r) => CallToolResponse::Complete(self.guard(r, &mut findings)),
            other => other,
        };
        self.settle(Ok(()), &findings);
        response_message(&self.client_id, Ok(guarded))
    }

    fn guard(&self, result: CallToolResult, findings: &mut Vec<Finding>) -> CallToolResult {
        match &self.admitted {
            Some(admitted) => admitted.guard(result, findings),
            None => result,
        }
    }

    /// The client cancelled the call: the upstream is told, as the full path
    /// tells it; the client's message for the call (which it will ignore).
    fn cancelled(&mut self) -> Vec<u8> {
        let reason = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {
            "requestId": &*self.upstream_id, "reason": "cancelled by the client"}});
        self.post_upstream(reason.to_string().into_bytes());
        self.fail(ForwardError::Cancelled)
    }

    /// Posts a message of the gateway's on the call's upstream session, in the background.
    fn post_upstream(&self, body: Vec<u8>) {
        let sender = self.sender.clone();
        tokio::spawn(async move {
            if let Err(e) = sender.post(body).await {
                tracing::debug!(error = %e, "a message to the upstream failed");
            }
        });
    }

    /// Refuses a request the upstream made on the call's stream: the client
    /// declared none of sampling, elicitation and roots.
    fn refuse(&self, asked: &RawValue) {
        let error = ErrorData::invalid_request(
            "the client declared none of sampling, elicitation and roots: the gateway has no client to ask",
            None,
        );
        self.post_upstream(error_message(asked, &error));
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.admitted.is_some() {
            self.settle(Err(&ForwardError::Cancelled), &[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientRequest};

    fn parse(body: &str) -> Option<ToolCall<'_>> {
        ToolCall::parse(body.as_bytes())
    }

    #[test]
    fn reads_only_single_tools_call_requests() {
        let call = parse(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo_echo","arguments":{"text":"hi"}}}"#,
        )
        .expect("a tools/call");
        assert_eq!((call.name(), call.id().get()), ("echo_echo", "7"));
        let call = parse(r#"{"jsonrpc":"2.0","id":"a-1","method":"tools/call","params":{"name":"echo\u005fecho"}}"#)
            .expect("a string id, an escaped name");
        assert_eq!((call.name(), call.id().get()), ("echo_echo", r#""a-1""#));
        for odd in [
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}]"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":1}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","name":"y"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","other":1}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            r#"not json"#,
        ] {
            assert!(parse(odd).is_none(), "{odd}");
        }
    }

    /// What the full path sends upstream for `params` (rmcp's model, with the
    /// client capabilities it declares for a client that declared none).
    fn full_path_params(params: serde_json::Value) -> serde_json::Value {
        let mut params: CallToolRequestParams = serde_json::from_value(params).expect("params");
        params.name = "echo".into();
        let mut meta = params.meta.take().unwrap_or_default();
        meta.set_client_capabilities(ClientCapabilities::default());
        params.meta = Some(meta);
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        serde_json::to_value(&request).expect("serialize")["params"].clone()
    }

    #[test]
    fn the_upstream_gets_the_params_the_full_path_sends() {
        for params in [
            serde_json::json!({"name": "echo_echo", "arguments": {"text": "hi", "n": [1, 2.5e3]}}),
            serde_json::json!({"name": "echo_echo"}),
            serde_json::json!({"name": "echo_echo", "arguments": {}, "_meta": {"progressToken": "p1"}}),
            serde_json::json!({"name": "echo_echo", "_meta": {}}),
        ] {
            let body =
                serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}).to_string();
            let call = ToolCall::parse(body.as_bytes()).expect("parsed");
            let sent: serde_json::Value =
                serde_json::from_slice(&call.upstream_body("echo", "tenantgate-9")).expect("valid JSON");
            assert_eq!(sent["id"], "tenantgate-9");
            assert_eq!(sent["method"], "tools/call");
            assert_eq!(sent["params"], full_path_params(params), "{sent}");
        }
    }

    #[test]
    fn answers_carry_the_clients_id_and_the_upstreams_result_as_it_is() {
        let id = RawValue::from_string(r#""req-1""#.into()).expect("raw");
        let out = message(&id, "result", r#"{"content":[{"type":"text","text":"hi"}], "isError":false}"#);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"jsonrpc":"2.0","id":"req-1","result":{"content":[{"type":"text","text":"hi"}], "isError":false}}"#
        );
        let failed = response_message(
            &id,
            Ok(CallToolResponse::Complete(CallToolResult::error(vec![rmcp::model::ContentBlock::text("down")]))),
        );
        let failed: serde_json::Value = serde_json::from_slice(&failed).expect("JSON");
        assert_eq!(failed["result"]["isError"], true, "{failed}");
        assert!(failed["result"].get("resultType").is_none(), "{failed}");
    }
}
