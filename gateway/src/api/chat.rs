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
use crate::error::AppError;
use crate::llm::types::{ChatRequest, Usage};
use crate::llm::{EventStream, Reply, sse};
use crate::routing::{self, Breaker};
use crate::state::AppState;

/// Authenticates, parses, routes and answers one chat request.
pub async fn chat_completions(State(state): State<AppState>, caller: Caller, body: Body) -> Result<Response, AppError> {
    let started = Instant::now();
    let body = read_body(body, state.max_body_bytes()).await?;
    let mut request = ChatRequest::parse(&body)?;
    let runtime = state.runtime();
    let route = runtime.models.get(&request.model).ok_or_else(|| AppError::ModelNotFound(request.model.clone()))?;
    let target_model = route.targets.first().map(|t| &*t.model);
    let decision = Arc::new(runtime.policies.apply(&caller.0, target_model, &mut request)?);
    let model: Arc<str> = route.name.clone();
    let routed = match routing::route(route, &runtime.retry, &request).await {
        Ok(r) => r,
        Err(e) => {
            let mut response = e.into_response();
            response.extensions_mut().insert(ModelLabel(model));
            return Ok(response);
        }
    };
    let added = started.elapsed().saturating_sub(routed.upstream_time);
    metrics::histogram!("tenantgate_added_latency_seconds").record(added.as_secs_f64());
    let mut response = match routed.reply {
        Reply::Complete { body, usage } => {
            if let Some(usage) = usage {
                count_tokens(&model, usage);
            }
            match decision.scan_body(body) {
                Ok(body) => {
                    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
                }
                Err(blocked) => AppError::from(blocked).into_response(),
            }
        }
        Reply::Stream(events) => {
            let events = decision.guard_stream(events);
            let guarded = guard_stream(events, &state, model.clone(), routed.target.breaker.clone());
            (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    (header::HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
                ],
                Body::from_stream(guarded),
            )
                .into_response()
        }
    };
    response.extensions_mut().insert(ModelLabel(model));
    response.extensions_mut().insert(decision);
    Ok(response)
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

/// Counts the stream as open, records usage from the final chunk, and turns
/// an upstream failure after the first byte into one clean SSE error event
/// (the stream has started, so there is no retry).
fn guard_stream(
    events: EventStream,
    state: &AppState,
    model: Arc<str>,
    breaker: Arc<Breaker>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    let open = state.open_stream();
    let usage_finder = memchr::memmem::Finder::new(b"\"usage\":{").into_owned();
    futures_util::stream::unfold(Some((events, open)), move |s| {
        let model = model.clone();
        let breaker = breaker.clone();
        let usage_finder = usage_finder.clone();
        async move {
            let (mut events, open) = s?;
            match events.next().await {
                None => None,
                Some(Ok(bytes)) => {
                    if let Some(at) = usage_finder.find(&bytes) {
                        record_stream_usage(&model, &bytes, at);
                    }
                    Some((Ok(bytes), Some((events, open))))
                }
                Some(Err(e)) => {
                    breaker.record_failure();
                    tracing::warn!(model = %model, error = %e, "upstream failed after the stream started");
                    let error = AppError::BadGateway(format!("the upstream stream failed: {e}"));
                    Some((Ok(sse::data_event(&error.to_json())), None))
                }
            }
        }
    })
}

/// Finds the `data:` line holding `"usage":{` at `at` and counts its tokens.
fn record_stream_usage(model: &Arc<str>, bytes: &[u8], at: usize) {
    let start = memchr::memmem::rfind(&bytes[..at], b"data:").map_or(0, |i| i + 5);
    let end = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |i| at + i);
    if let Ok(UsageChunk { usage: Some(usage) }) = serde_json::from_slice::<UsageChunk>(&bytes[start..end]) {
        count_tokens(model, usage);
    }
}
