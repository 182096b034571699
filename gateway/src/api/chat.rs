//! `POST /v1/chat/completions`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

use super::ModelLabel;
use super::body::read_body;
use crate::auth::Caller;
use crate::error::{AppError, ErrorReason};
use crate::limits::Admission;
use crate::llm::inbound::Completion;
use crate::llm::types::{ChatRequest, Usage};
use crate::llm::{EventStream, Reply, sse};
use crate::mcp::chat::ChatTools;
use crate::policy::{PolicyDecision, audit};
use crate::routing::ModelType;
use crate::routing::{self, Breaker, ModelRoute};
use crate::state::AppState;
use crate::storage::{Api, ChatRecord};

/// Authenticates, parses, routes and answers one chat request, and records
/// its usage row and audit event (whatever the outcome).
pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    request_id: Option<axum::Extension<tower_http::request_id::RequestId>>,
    body: Body,
) -> Result<Response, AppError> {
    recorded(&state, &caller, request_id, Api::ChatCompletions, async |record, id| {
        complete(&state, &caller, body, record, id).await
    })
    .await
}

/// Runs `serve` for a model request on `api` with its record (its usage row
/// and audit event, written when the record drops) and the request id, and
/// puts the outcome on the record.
pub(super) async fn recorded(
    state: &AppState,
    caller: &Caller,
    request_id: Option<axum::Extension<tower_http::request_id::RequestId>>,
    api: Api,
    serve: impl AsyncFnOnce(&mut ChatRecord, Option<&str>) -> Result<Response, AppError>,
) -> Result<Response, AppError> {
    let request_id = request_id.and_then(|id| id.0.header_value().to_str().ok().map(str::to_owned));
    let mut record = start_record(state, caller, request_id.clone(), api);
    let result = serve(&mut record, request_id.as_deref()).await;
    settle_record(&mut record, &result);
    result
}

/// The largest whole answer a translation reads back.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// A chat answer in another client API: a whole `chat.completion` through
/// `whole` (to the other API's JSON), a stream's SSE bytes through the
/// translator `stream` makes (only for a streamed answer); errors pass as they are.
pub(super) async fn translated<S: FnMut(&[u8]) -> Bytes + Send + 'static>(
    response: Response,
    whole: impl FnOnce(&Completion<'_>) -> Vec<u8>,
    stream: impl FnOnce() -> S,
) -> Result<Response, AppError> {
    if response.status() != axum::http::StatusCode::OK {
        return Ok(response);
    }
    let streamed = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"text/event-stream");
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if streamed {
        let mut stream = stream();
        let events = body.into_data_stream().map(move |chunk| chunk.map(|bytes| stream(&bytes)));
        return Ok(Response::from_parts(parts, Body::from_stream(events)));
    }
    let bytes = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| AppError::Internal(format!("reading the answer failed: {e}")))?;
    let completion = Completion::parse(&bytes)
        .map_err(|e| AppError::Internal(format!("the answer is not a chat completion: {e}")))?;
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(Response::from_parts(parts, Body::from(whole(&completion))))
}

/// The record of a model request on `api` (recorded when dropped).
fn start_record(state: &AppState, caller: &Caller, request_id: Option<String>, api: Api) -> ChatRecord {
    let runtime = state.runtime();
    let mut record = ChatRecord::start(
        &state.storage().recorder,
        &runtime.config.tenant.name,
        &caller.0,
        request_id,
        runtime.config.audit.record_prompts,
    );
    record.api(api);
    if let Some(pricing) = &runtime.config.pricing {
        crate::traces::set_on_request(|| {
            vec![crate::traces::KeyValue::new("tenantgate.currency", pricing.currency.clone())]
        });
    }
    record
}

/// Puts the outcome of a model request (its status and error reason) on its record.
fn settle_record(record: &mut ChatRecord, result: &Result<Response, AppError>) {
    match result {
        Ok(r) => record.status(r.status().as_u16(), r.extensions().get::<ErrorReason>().map(|r| r.0)),
        Err(e) => record.status(e.status().as_u16(), Some(e.as_reason())),
    }
}

async fn complete(
    state: &AppState,
    caller: &Caller,
    body: Body,
    record: &mut ChatRecord,
    request_id: Option<&str>,
) -> Result<Response, AppError> {
    let started = Instant::now();
    let body = read_body(body, state.max_body_bytes()).await?;
    let request = ChatRequest::parse(&body)?;
    serve(state, caller, request, body.len(), record, request_id, started).await
}

/// Serves a parsed chat request (from `/v1/chat/completions`, or translated
/// from another client API) whose body was `body_len` bytes, received at `started`.
pub(super) async fn serve(
    state: &AppState,
    caller: &Caller,
    mut request: ChatRequest,
    body_len: usize,
    record: &mut ChatRecord,
    request_id: Option<&str>,
    started: Instant,
) -> Result<Response, AppError> {
    record.model(&request.model);
    let runtime = state.runtime();
    let mcp = ChatTools::take(&mut request, state.carried().mcp(), &runtime.config.mcp, &caller.0)?;
    let route = super::model_route(&runtime, &caller.0, &request.model, ModelType::Chat)?;
    let target_model = route.targets.first().map(|t| &*t.model);
    let decision = match runtime.policies.apply(&caller.0, target_model, &mut request) {
        Ok(decision) => Arc::new(decision),
        Err(refused) => {
            record.policy(audit::refusal(&refused));
            return Err(refused.into());
        }
    };
    record.policy(audit::decision(&decision, runtime.config.audit.record_prompts.then_some(&request.messages)));
    let turn = Turn { state, caller, route, decision, model: route.name.clone(), body_len, request_id };
    if let Some(tools) = mcp {
        return super::chat_tools::run(&turn, tools, request, record, started).await;
    }
    let dispatched = match turn.dispatch(&request, record, started).await? {
        Ok(d) => d,
        Err(response) => return Ok(response),
    };
    Ok(turn.respond(dispatched, record, request.stream, request.include_usage()))
}

/// What every model turn of one chat request shares.
pub(super) struct Turn<'a> {
    pub(super) state: &'a AppState,
    pub(super) caller: &'a Caller,
    pub(super) route: &'a ModelRoute,
    pub(super) decision: Arc<PolicyDecision>,
    pub(super) model: Arc<str>,
    pub(super) body_len: usize,
    pub(super) request_id: Option<&'a str>,
}

/// A routed reply and what answering with it settles.
pub(super) struct Dispatched {
    pub(super) reply: Reply,
    pub(super) admission: Admission,
    pub(super) breaker: Arc<Breaker>,
}

impl Turn<'_> {
    /// Admits one model turn under the limits and routes it to the model's
    /// targets; the gateway's added latency is counted from `since`.
    /// `Ok(Err(response))`: no target answered (the error response, labelled).
    pub(super) async fn dispatch(
        &self,
        request: &ChatRequest,
        record: &mut ChatRecord,
        since: Instant,
    ) -> Result<Result<Dispatched, Response>, AppError> {
        let runtime = self.state.runtime();
        let worst = self.route.worst.as_ref();
        let mut admission = runtime.limiter.admit(&*self.caller.0, request, self.body_len, worst).await?;
        let routed = match routing::route(self.route, &runtime.retry, request).await {
            Ok(r) => r,
            Err(e) => {
                admission.record_failure();
                let mut response = AppError::from(e).into_response();
                response.extensions_mut().insert(ModelLabel(self.model.clone()));
                return Ok(Err(response));
            }
        };
        record.target(&routed.target.label, routed.target.price.as_ref());
        admission.answered_at(routed.target.price.as_ref().map(|p| &p.rates));
        let added = since.elapsed().saturating_sub(routed.upstream_time);
        metrics::histogram!("tenantgate_added_latency_seconds").record(added.as_secs_f64());
        Ok(Ok(Dispatched { reply: routed.reply, admission, breaker: routed.target.breaker.clone() }))
    }

    /// Counts a whole reply's tokens against the record, the limits and the metrics.
    pub(super) fn count(&self, usage: Option<Usage>, record: &mut ChatRecord, admission: &mut Admission) {
        if let Some(usage) = usage {
            record.tokens(&usage);
            admission.record_usage(&usage);
            count_tokens(&self.model, usage);
        }
    }

    /// Answers the client with a reply, through the output guards. A whole
    /// reply for a client that asked for a stream (the tool loop's final
    /// answer) is sent as SSE events.
    pub(super) fn respond(
        &self,
        dispatched: Dispatched,
        record: &mut ChatRecord,
        stream: bool,
        include_usage: bool,
    ) -> Response {
        let Dispatched { reply, mut admission, breaker } = dispatched;
        let decision = &self.decision;
        let mut response = match reply {
            Reply::Complete { body, usage } => {
                self.count(usage, record, &mut admission);
                let scanned = decision.scan_body(body);
                record.findings(audit::findings(&decision.output_findings()));
                match scanned {
                    Ok(body) if stream => {
                        let events = super::chat_tools::completion_events(&body, include_usage);
                        let mut response = (sse_headers(), Body::from(events)).into_response();
                        admission.apply_headers(response.headers_mut());
                        response
                    }
                    Ok(body) => {
                        let mut response =
                            ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
                                .into_response();
                        admission.apply_headers(response.headers_mut());
                        response
                    }
                    Err(blocked) => AppError::from(blocked).into_response(),
                }
            }
            Reply::Stream(events) => {
                record.stream_started();
                admission.record_stream_start();
                let mut headers = axum::http::HeaderMap::new();
                admission.apply_headers(&mut headers);
                let events = decision.guard_stream(events, crate::error::policy_error_event);
                let books = StreamBooks { record: record.take(), admission, decision: decision.clone() };
                let guarded = guard_stream(events, self.state, self.model.clone(), breaker, books);
                (headers, sse_headers(), Body::from_stream(guarded)).into_response()
            }
        };
        response.extensions_mut().insert(ModelLabel(self.model.clone()));
        response.extensions_mut().insert(decision.clone());
        response
    }
}

fn sse_headers() -> [(header::HeaderName, HeaderValue); 3] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
    ]
}

fn count_tokens(model: &Arc<str>, usage: Usage) {
    metrics::counter!("tenantgate_tokens_total", "model" => model.to_string(), "kind" => "prompt")
        .increment(usage.prompt_tokens);
    metrics::counter!("tenantgate_tokens_total", "model" => model.to_string(), "kind" => "completion")
        .increment(usage.completion_tokens);
}

#[derive(Deserialize)]
struct UsageChunk {
    usage: Option<Usage>,
}

/// What a stream settles when it ends or the client drops it: its usage row
/// and audit event (with what the output guards found), and its rate-limit
/// admission (tokens and stream slot).
struct StreamBooks {
    record: ChatRecord,
    admission: Admission,
    decision: Arc<PolicyDecision>,
}

impl StreamBooks {
    fn finished(&mut self, reason: Option<&str>) {
        if self.decision.scans_output() {
            self.record.findings(audit::findings(&self.decision.output_findings()));
        }
        self.record.stream_finished(reason);
    }
}

/// Counts the stream as open, records usage from the final chunk, and turns
/// an upstream failure after the first byte into one clean SSE error event
/// (the stream has started, so there is no retry). The books go with the
/// stream: dropping it (the end, or the client going away) settles them.
fn guard_stream(
    events: EventStream,
    state: &AppState,
    model: Arc<str>,
    breaker: Arc<Breaker>,
    books: StreamBooks,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    let open = state.open_stream();
    let usage_finder = memchr::memmem::Finder::new(b"\"usage\":{").into_owned();
    futures_util::stream::unfold(Some((events, open, books)), move |s| {
        let model = model.clone();
        let breaker = breaker.clone();
        let usage_finder = usage_finder.clone();
        async move {
            let (mut events, open, mut books) = s?;
            match events.next().await {
                None => {
                    books.finished(None);
                    None
                }
                Some(Ok(bytes)) => {
                    books.admission.record_events(memchr::memmem::find_iter(&bytes, b"data:").count() as u64);
                    if let Some(at) = usage_finder.find(&bytes)
                        && let Some(usage) = stream_usage(&model, &bytes, at)
                    {
                        books.record.tokens(&usage);
                        books.admission.record_usage(&usage);
                    }
                    Some((Ok(bytes), Some((events, open, books))))
                }
                Some(Err(e)) => {
                    breaker.record_failure();
                    tracing::warn!(model = %model, error = %e, "upstream failed after the stream started");
                    let error = AppError::BadGateway(format!("the upstream stream failed: {e}"));
                    books.finished(Some(error.as_reason()));
                    Some((Ok(sse::data_event(&error.to_json())), None))
                }
            }
        }
    })
}

/// Finds the `data:` line holding `"usage":{` at `at`, counts its tokens and returns them.
fn stream_usage(model: &Arc<str>, bytes: &[u8], at: usize) -> Option<Usage> {
    let start = memchr::memmem::rfind(&bytes[..at], b"data:").map_or(0, |i| i + 5);
    let end = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |i| at + i);
    let UsageChunk { usage } = serde_json::from_slice::<UsageChunk>(&bytes[start..end]).ok()?;
    let usage = usage?;
    count_tokens(model, usage);
    Some(usage)
}
