//! The HTTP surface: OpenAI-compatible API, probes, metrics, and the layers
//! around them (request ids, access log, timeout, error shape).

mod admin;
mod body;
pub(crate) mod caller;
mod chat;
mod chat_tools;
mod embeddings;
mod messages;
mod models;
pub mod ops;
mod responses;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::auth::SubjectSlot;
use crate::error::{AppError, ErrorReason};
use crate::routing::ModelType;
use crate::state::AppState;

/// The tenant model a response was for, as a metric label.
#[derive(Clone, Debug)]
pub struct ModelLabel(pub Arc<str>);

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application.
pub fn router(state: AppState, request_timeout: Duration, with_ops: bool) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{model}", get(models::get))
        .merge(admin::router())
        .merge(crate::mcp::authorize::router())
        .merge(crate::mcp::resource::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), admit))
        .route_layer(middleware::from_fn(track));
    // Anthropic's Messages API: the same layers, and errors in Anthropic's shape.
    let anthropic = Router::new()
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route_layer(middleware::from_fn_with_state(state.clone(), admit))
        .route_layer(middleware::from_fn(track))
        .layer(middleware::from_fn(messages::anthropic_errors));
    let app = Router::new()
        .merge(api)
        .merge(anthropic)
        .merge(crate::mcp::router(&state).route_layer(middleware::from_fn_with_state(state.clone(), admit)));
    let app = app.layer(middleware::from_fn_with_state(state.clone(), traced));
    let app = if with_ops { app.merge(ops_routes()) } else { app };
    app.fallback(not_found)
        .layer(middleware::map_response(error_shape))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
                .layer(middleware::from_fn(access_log))
                .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
                .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, request_timeout)),
        )
        .with_state(state)
}

/// The probes and metrics: `/livez`, `/readyz`, `/metrics`.
fn ops_routes() -> Router<AppState> {
    Router::new()
        .route("/livez", get(ops::livez))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
}

/// The probes and metrics alone, for a listener of their own (`--ops-listen`): a port that
/// no Ingress routes, which the NetworkPolicy opens only to the kubelet and scrapers. It
/// serves while the server starts (see [`ops::Ops`]).
pub fn ops_router(ops: ops::Ops) -> Router {
    Router::new()
        .route("/livez", get(ops::livez))
        .route("/readyz", get(ops::ops_readyz))
        .route("/metrics", get(ops::ops_metrics))
        .fallback(not_found)
        .layer(middleware::map_response(error_shape))
        .with_state(ops)
}

/// The route of tenant model `name` for `caller`, which must be of `type_`: a
/// model of the other type names the API that serves it, and an API key that
/// names its models may use only those.
pub(crate) fn model_route<'r>(
    runtime: &'r crate::config::Runtime,
    caller: &crate::auth::Identity,
    name: &str,
    type_: ModelType,
) -> Result<&'r crate::routing::ModelRoute, AppError> {
    let route = runtime.models.get(name).ok_or_else(|| AppError::ModelNotFound(name.to_owned()))?;
    if !caller.may_use_model(name) {
        return Err(AppError::ModelNotAllowed(name.to_owned()));
    }
    if route.type_ == type_ {
        return Ok(route);
    }
    let serves = match route.type_ {
        ModelType::Chat => "/v1/chat/completions",
        ModelType::Embedding => "/v1/embeddings",
    };
    Err(AppError::bad_request(
        "model".to_string(),
        format!("model {name} is a {} model: call {serves}", route.type_.as_str()),
    ))
}

/// Logs one access line per request: its id, method, path, the subject it
/// authenticated as, status, latency to response headers and the error
/// reason. With `RUST_LOG=debug` the request also gets a span, so every line
/// logged while serving it carries the request id; at `info` the span is not
/// made (on the chat path it cost about 16 us of CPU and 20 us of latency).
async fn access_log(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let subject = SubjectSlot::default();
    request.extensions_mut().insert(subject.clone());
    let id = request.headers().get(X_REQUEST_ID).cloned();
    let id = id.as_ref().and_then(|id| id.to_str().ok()).unwrap_or("");
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let span = tracing::debug_span!("request", request_id = id, method = %method, path = uri.path());
    let response = next.run(request).instrument(span).await;
    let reason = response.extensions().get::<ErrorReason>().map(|r| r.0);
    tracing::info!(
        request_id = id,
        method = %method,
        path = uri.path(),
        subject = subject.subject(),
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        reason,
        "request"
    );
    response
}

/// Serves an API request in its trace when the tenant exports traces: a
/// SERVER span continuing the client's W3C `traceparent`, which the domain
/// code below finds in the request's Context (routing makes a span per
/// upstream attempt, the provider and MCP clients send its `traceparent`). It
/// ends with the response, or once a model request's record is written (a
/// stream outlives this). Untraced, one config look-up.
async fn traced(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use crate::traces::{FutureExt as _, KeyValue};
    let Some(traces) = state.runtime().traces.clone() else { return next.run(request).await };
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let mut attributes =
        vec![KeyValue::new("http.request.method", method.clone()), KeyValue::new("url.path", path.clone())];
    if let Some(id) = request.headers().get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        attributes.push(KeyValue::new("tenantgate.request_id", id.to_owned()));
    }
    let cx = traces.start_request(format!("{method} {path}"), request.headers(), attributes);
    let response = next.run(request).with_context(cx.clone()).await;
    crate::traces::responded(&cx, response.status().as_u16());
    response
}

/// Sheds API requests beyond the in-flight limit or the body memory budget
/// with a 503 instead of queueing them: under overload, latency and memory
/// stay bounded (see [`crate::admission`]).
async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.admission().admit(request) {
        Ok((request, _ticket)) => next.run(request).await,
        Err((shed, body)) => {
            // Read (and drop) what the client is still sending, so that it reads the 503
            // instead of a connection reset.
            body::drain(body).await;
            AppError::Overloaded(shed).into_response()
        }
    }
}

/// Counts API requests by model and status, and times them to headers.
async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let model = response.extensions().get::<ModelLabel>().map_or_else(|| "".to_string(), |m| m.0.to_string());
    let status = response.status();
    metrics::histogram!("tenantgate_request_duration_seconds", "model" => model.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("tenantgate_requests_total", "model" => model, "status" => status_label(status)).increment(1);
    response
}

fn status_label(status: StatusCode) -> &'static str {
    // Static strings: no allocation per request for the common statuses.
    match status.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

async fn not_found(request: Request) -> AppError {
    AppError::RouteNotFound { method: request.method().to_string(), path: request.uri().path().to_string() }
}

/// Gives error responses made outside handlers (405, timeouts) OpenAI's error shape.
async fn error_shape(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this URL".to_string(),
        StatusCode::GATEWAY_TIMEOUT => "the request took too long".to_string(),
        other => other.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut shaped = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"error": {"message": message, "type": if status.is_server_error() { "api_error" } else { "invalid_request_error" }, "param": null, "code": null}}).to_string(),
    )
        .into_response();
    for (name, value) in response.headers() {
        shaped.headers_mut().entry(name).or_insert_with(|| value.clone());
    }
    shaped
}
