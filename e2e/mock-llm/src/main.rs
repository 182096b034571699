//! `mock-llm`: a small, fast server speaking OpenAI Chat Completions and
//! Embeddings and Anthropic Messages with scripted misbehaviour, for gateway
//! tests and benchmarks. Answers come from the gateway's deterministic mock
//! model. `/v1/embeddings` checks what OpenAI checks: a bearer API key, the
//! request's shape, the model's `dimensions`, 8,192 tokens per input. Azure
//! OpenAI's URLs answer too (`/openai/deployments/{deployment}/...` with
//! `api-version`, and `/openai/v1/...`), with Azure's `api-key` header
//! required and the deployment as the model (or a bearer token of the Entra ID
//! double: see `identity.rs`, which also plays Google's STS and IAM
//! Credentials API for workload identity federation). So does the Gemini API
//! (`/v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`,
//! whose events end in CRLF as Google's do), with its key required. Amazon
//! Bedrock's Converse API and STS answer as `bedrock.rs` says.
//!
//! Control API (per upstream model name):
//! - `POST /_control/script` `{"model": "m", "steps": [Step, ..], "default": Step?}`:
//!   steps are used in order by the next requests for `m`; `default` applies
//!   when none is left (omit it to answer normally).
//! - `POST /_control/reset`, `GET /_control/stats` (requests per model),
//!   `GET /_control/last?model=m` (the last request's body, credentials header and W3C `traceparent`),
//!   `GET /_control/requests?model=m` (the bodies of the last 64 requests, oldest first).
//!
//! A Step: `{"status": 503, "retry_after": 1, "hang": true, "latency_ms": 50,
//! "chunk_interval_ms": 5, "fail_after_chunks": 3, "times": 2, "reply": "text",
//! "reset": true, "garbage": true, "tool_call": "name", "tool_arguments": {..}}`
//! (all optional; `reply` replaces the answer's text, streamed one word per chunk;
//! `cached_tokens` reports that many prompt tokens as read from the prompt cache, in each
//! API's fields;
//! `tool_call` answers a chat completion, whole or streamed, with a call of that
//! tool with `tool_arguments` (default `{}`), offered or not (a model that calls a tool it was not given);
//! `reset` aborts the TCP connection with a reset (RST, `SO_LINGER` 0) instead of
//! answering; `garbage` answers 200 with a body that is not the protocol: bytes
//! that are not JSON, or for a stream, `data:` events that are not JSON).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tenantgate_gateway::llm::embeddings::{EmbeddingsRequest, Input, Shape, mock_answer};
use tenantgate_gateway::llm::mock::{OfferedTool, Plan, ToolMode, count_tokens, next_id};
use tenantgate_gateway::llm::types::ChatRequest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

mod bedrock;
mod identity;

/// Scripted OpenAI/Anthropic mock.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, env = "MOCK_LLM_LISTEN", default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Words in each answer.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Default delay before the answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Default delay between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_interval_ms: u64,
    /// A JWKS file of the Google service account keys whose signed assertions
    /// `/token` exchanges for access tokens (Vertex AI); without it `/token` refuses all.
    #[arg(long)]
    google_jwks: Option<std::path::PathBuf>,
    /// The JWKS of the Kubernetes service account issuer: the projected tokens that
    /// Entra ID (client assertions) and Google's STS (subject tokens) accept must be
    /// signed by one of its keys. Without it their signatures are not checked.
    #[arg(long)]
    identity_jwks: Option<std::path::PathBuf>,
    /// The Entra ID application (client) ID the Entra token endpoint knows.
    #[arg(long)]
    azure_client_id: Option<String>,
    /// That application's client secret; without it no client secret is accepted.
    #[arg(long)]
    azure_client_secret: Option<String>,
    /// The workload identity pool provider STS exchanges tokens for
    /// (`//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X`);
    /// without it STS refuses all.
    #[arg(long)]
    google_workload_pool: Option<String>,
    /// The region Bedrock requests must be signed for.
    #[arg(long, default_value = "us-east-1")]
    bedrock_region: String,
    /// An access key ID Bedrock accepts signatures of (with `--aws-secret-access-key`).
    #[arg(long)]
    aws_access_key_id: Option<String>,
    /// The secret access key of `--aws-access-key-id`.
    #[arg(long)]
    aws_secret_access_key: Option<String>,
    /// A Bedrock API key, accepted as a bearer token.
    #[arg(long)]
    bedrock_api_key: Option<String>,
    /// A JWKS file of the keys that sign the web identity tokens STS accepts.
    #[arg(long)]
    aws_oidc_jwks: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    status: Option<u16>,
    retry_after: Option<u64>,
    #[serde(default)]
    hang: bool,
    latency_ms: Option<u64>,
    chunk_interval_ms: Option<u64>,
    fail_after_chunks: Option<usize>,
    #[serde(default = "one")]
    times: u32,
    reply: Option<String>,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    garbage: bool,
    tool_call: Option<String>,
    tool_arguments: Option<Value>,
    /// Of the prompt tokens, this many are reported as read from the prompt cache.
    cached_tokens: Option<u64>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    model: String,
    #[serde(default)]
    steps: Vec<Step>,
    default: Option<Step>,
}

#[derive(Debug, Default)]
struct Scripts {
    steps: HashMap<String, VecDeque<Step>>,
    defaults: HashMap<String, Step>,
    counts: HashMap<String, u64>,
    /// Access tokens `/token`, STS and `generateAccessToken` issued (Vertex AI accepts only these).
    issued: std::collections::HashSet<String>,
    /// Federated tokens STS issued (`generateAccessToken` accepts only these).
    federated: std::collections::HashSet<String>,
    /// Access tokens the Entra ID double issued (Azure OpenAI accepts these as a bearer).
    issued_azure: std::collections::HashSet<String>,
    last: HashMap<String, Value>,
    history: HashMap<String, VecDeque<Value>>,
}

/// Request bodies kept per model for `/_control/requests`.
const HISTORY: usize = 64;

#[derive(Clone, Debug)]
struct Mock {
    args: Arc<Args>,
    /// This server's own `/token` URL: the audience assertions must name.
    token_uri: Arc<str>,
    /// Held only to pick a step, never across an await.
    scripts: Arc<Mutex<Scripts>>,
    /// Temporary AWS credentials STS issued.
    aws: Arc<Mutex<bedrock::Issued>>,
}

impl Mock {
    fn next_step(&self, model: &str, headers: &HeaderMap, body: Option<Value>) -> Step {
        let Ok(mut s) = self.scripts.lock() else { return Step::default() };
        *s.counts.entry(model.to_string()).or_default() += 1;
        if let Some(body) = body {
            let credential = headers
                .get(header::AUTHORIZATION)
                .or_else(|| headers.get("x-api-key"))
                .or_else(|| headers.get("api-key"))
                .or_else(|| headers.get("x-goog-api-key"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let history = s.history.entry(model.to_string()).or_default();
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(body.clone());
            let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
            s.last
                .insert(model.to_string(), json!({"body": body, "credential": credential, "traceparent": traceparent}));
        }
        if let Some(queue) = s.steps.get_mut(model)
            && let Some(front) = queue.front_mut()
        {
            let step = front.clone();
            front.times = front.times.saturating_sub(1);
            if front.times == 0 {
                queue.pop_front();
            }
            return step;
        }
        s.defaults.get(model).cloned().unwrap_or_default()
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = ResettableListener(TcpListener::bind(args.listen).await?);
    let token_uri = format!("http://{}/token", listener.0.local_addr()?).into();
    let mock = Mock { args: Arc::new(args), token_uri, scripts: Arc::default(), aws: Arc::default() };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(messages))
        .route("/v1/embeddings", post(embeddings))
        .route("/openai/deployments/{deployment}/{*operation}", post(azure_deployment))
        .route("/openai/v1/{*operation}", post(azure_v1))
        .route("/v1beta/models/{*model_method}", post(gemini))
        .route("/token", post(google_token))
        .route("/{tenant}/oauth2/v2.0/token", post(identity::entra_token))
        .route("/v1/token", post(identity::google_sts))
        .route("/v1/projects/{project}/serviceAccounts/{name}", post(identity::generate_access_token))
        .route("/v1/projects/{project}/locations/{location}/publishers/google/models/{*model_method}", post(vertex))
        .route("/model/{model}/{operation}", post(bedrock::converse))
        .route("/", post(bedrock::sts))
        .route(
            "/v1/models",
            get(|| async { Json(json!({"object": "list", "data": [{"id": "mock-1", "object": "model"}]})) }),
        )
        .route("/_control/script", post(script))
        .route("/_control/reset", post(reset))
        .route("/_control/stats", get(stats))
        .route("/_control/last", get(last))
        .route("/_control/requests", get(requests))
        .with_state(mock);
    println!("listening on {}", listener.0.local_addr()?);
    axum::serve(listener, app.into_make_service_with_connect_info::<ResetHandle>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

async fn script(State(mock): State<Mock>, Json(script): Json<Script>) -> StatusCode {
    if let Ok(mut s) = mock.scripts.lock() {
        s.steps.insert(script.model.clone(), script.steps.into());
        match script.default {
            Some(d) => s.defaults.insert(script.model, d),
            None => s.defaults.remove(&script.model),
        };
    }
    StatusCode::NO_CONTENT
}

async fn reset(State(mock): State<Mock>) -> StatusCode {
    if let Ok(mut s) = mock.scripts.lock() {
        *s = Scripts::default();
    }
    StatusCode::NO_CONTENT
}

async fn stats(State(mock): State<Mock>) -> Json<Value> {
    let counts = mock.scripts.lock().map(|s| json!(s.counts)).unwrap_or_default();
    Json(json!({"requests": counts}))
}

#[derive(Deserialize)]
struct LastQuery {
    model: String,
}

async fn last(State(mock): State<Mock>, Query(q): Query<LastQuery>) -> Json<Value> {
    Json(mock.scripts.lock().ok().and_then(|s| s.last.get(&q.model).cloned()).unwrap_or(Value::Null))
}

async fn requests(State(mock): State<Mock>, Query(q): Query<LastQuery>) -> Json<Value> {
    Json(mock.scripts.lock().ok().and_then(|s| s.history.get(&q.model).map(|h| json!(h))).unwrap_or(json!([])))
}

/// Accepts TCP connections (with `TCP_NODELAY`, like production servers) that
/// a handler can abort with a reset through their [`ResetHandle`].
struct ResettableListener(TcpListener);

impl axum::serve::Listener for ResettableListener {
    type Io = ResettableConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    return (ResettableConn { tcp, reset: ResetHandle::default() }, addr);
                }
                // Out of file descriptors and the like: wait a little, as axum's own listener does.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Set by a handler to have its connection reset instead of answered.
#[derive(Clone, Debug, Default)]
struct ResetHandle(Arc<AtomicBool>);

impl Connected<IncomingStream<'_, ResettableListener>> for ResetHandle {
    fn connect_info(stream: IncomingStream<'_, ResettableListener>) -> Self {
        stream.io().reset.clone()
    }
}

/// A TCP connection that, once its [`ResetHandle`] is set, fails its next
/// write after turning on `SO_LINGER` 0: the server then drops it, and the
/// kernel sends the peer a RST rather than a FIN.
struct ResettableConn {
    tcp: TcpStream,
    reset: ResetHandle,
}

impl ResettableConn {
    fn abort_if_reset(&self) -> Option<std::io::Error> {
        if !self.reset.0.load(Ordering::Relaxed) {
            return None;
        }
        let _ = self.tcp.set_zero_linger();
        Some(std::io::ErrorKind::ConnectionReset.into())
    }
}

impl AsyncRead for ResettableConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if let Some(e) = self.abort_if_reset() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.abort_if_reset() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Applies the failing parts of a step: hang, latency, reset, garbage, error status.
async fn misbehave(step: &Step, default_latency: u64, conn: &ResetHandle, stream: bool) -> Option<Response> {
    if step.hang {
        // Never answer; the client gives up.
        std::future::pending::<()>().await;
    }
    let latency = step.latency_ms.unwrap_or(default_latency);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if step.reset {
        conn.0.store(true, Ordering::Relaxed);
        // Never written: the first write of this response resets the connection.
        return Some(StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if step.garbage {
        return Some(garbage(stream));
    }
    let status = StatusCode::from_u16(step.status?).ok()?;
    let mut response = (
        status,
        Json(json!({"error": {"message": format!("mock-llm scripted {status}"), "type": "mock_error", "param": null, "code": null}})),
    )
        .into_response();
    if let Some(after) = step.retry_after
        && let Ok(v) = HeaderValue::from_str(&after.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Some(response)
}

/// A 200 whose body is not what the protocol promises.
fn garbage(stream: bool) -> Response {
    if stream {
        let events = [
            "data: {\"choices\": [{\"delta\": \n\n",
            "data: \u{1}\u{2}<html>502 Bad Gateway</html>\n\n",
            "event: ???\ndata: %%%%\n\n",
        ]
        .map(|s: &'static str| Bytes::from_static(s.as_bytes()))
        .to_vec();
        return event_stream(events, Duration::ZERO, None);
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from_static(b"\x00\x01<html><body>502 Bad Gateway</body></html>{\"choices\":"),
    )
        .into_response()
}

fn event_stream(events: Vec<Bytes>, interval: Duration, fail_after: Option<usize>) -> Response {
    byte_stream(events, interval, fail_after, "text/event-stream")
}

/// A streamed body of `content_type`, `events` one write each; `fail_after` breaks it mid-stream.
fn byte_stream(
    events: Vec<Bytes>,
    interval: Duration,
    fail_after: Option<usize>,
    content_type: &'static str,
) -> Response {
    let stream = futures_util::stream::iter(events.into_iter().enumerate()).then(move |(i, event)| async move {
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        if fail_after.is_some_and(|n| i >= n) {
            // Let the events before reach the client first, so the failure is mid-stream.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Err(std::io::Error::other("scripted stream failure"));
        }
        Ok(event)
    });
    // An error aborts the body mid-stream: the client sees a broken connection.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(stream))
        .into_response()
}

async fn chat(
    State(mock): State<Mock>,
    ConnectInfo(conn): ConnectInfo<ResetHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    chat_as(mock, conn, headers, body, None).await
}

/// A chat completion; `deployment` (Azure) names the model instead of the body.
async fn chat_as(
    mock: Mock,
    conn: ResetHandle,
    headers: HeaderMap,
    body: Bytes,
    deployment: Option<String>,
) -> Response {
    let mut request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": e.to_string(), "type": "invalid_request_error"}})),
            )
                .into_response();
        }
    };
    if let Some(deployment) = deployment {
        request.model = deployment;
    }
    let record = serde_json::from_slice(&body).ok();
    let step = mock.next_step(&request.model, &headers, record);
    if let Some(response) = misbehave(&step, mock.args.latency_ms, &conn, request.stream).await {
        return response;
    }
    let mut plan = Plan::for_chat(&request, mock.args.tokens);
    plan.usage = plan.usage.with_cached(step.cached_tokens.unwrap_or(0));
    let id = next_id("chatcmpl-");
    let interval = Duration::from_millis(step.chunk_interval_ms.unwrap_or(mock.args.chunk_interval_ms));
    if let Some(reply) = &step.reply {
        return scripted_reply(&id, &request, reply, interval);
    }
    if let Some(name) = &step.tool_call {
        let arguments = step.tool_arguments.as_ref().map_or_else(|| "{}".to_owned(), Value::to_string);
        let plan = Plan {
            content: None,
            tool_call: Some(("call_scripted".to_owned(), name.clone(), arguments)),
            usage: tenantgate_gateway::llm::types::Usage::new(1, 1),
            finish_reason: "tool_calls",
        };
        if request.stream {
            return event_stream(plan.chunks(&id, &request.model, request.include_usage()), interval, None);
        }
        return Json(plan.completion(&id, &request.model)).into_response();
    }
    if !request.stream {
        return Json(plan.completion(&id, &request.model)).into_response();
    }
    event_stream(plan.chunks(&id, &request.model, request.include_usage()), interval, step.fail_after_chunks)
}

/// OpenAI's error body with `status`.
fn openai_error(status: StatusCode, message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}});
    (status, Json(body)).into_response()
}

/// Tokens one embeddings input may have.
const MAX_INPUT_TOKENS: u64 = 8192;

async fn embeddings(
    State(mock): State<Mock>,
    ConnectInfo(conn): ConnectInfo<ResetHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_none_or(str::is_empty) {
        let message = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).";
        return openai_error(StatusCode::UNAUTHORIZED, message, None, None);
    }
    embeddings_as(mock, conn, headers, body, None).await
}

/// An embeddings answer; `deployment` (Azure) names the model instead of the body.
async fn embeddings_as(
    mock: Mock,
    conn: ResetHandle,
    headers: HeaderMap,
    body: Bytes,
    deployment: Option<String>,
) -> Response {
    let mut request = match EmbeddingsRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return openai_error(StatusCode::BAD_REQUEST, &e.message, e.param.as_deref(), None),
    };
    if let Some(deployment) = deployment {
        request.model = deployment;
    }
    let shape = Shape::of(&request.model);
    if let Some(d) = request.dimensions {
        if !shape.shortens {
            let message = "This model does not support specifying dimensions.";
            return openai_error(StatusCode::BAD_REQUEST, message, Some("dimensions"), None);
        }
        if d > shape.dimensions {
            let message = format!("dimensions: at most {} for model {}, got {d}", shape.dimensions, request.model);
            return openai_error(StatusCode::BAD_REQUEST, &message, Some("dimensions"), None);
        }
    }
    let longest = match &request.input {
        Input::Text(t) => count_tokens(t),
        Input::Texts(t) => t.iter().map(|t| count_tokens(t)).max().unwrap_or(0),
        Input::Tokens(ids) => ids.len() as u64,
        Input::TokenArrays(arrays) => arrays.iter().map(|a| a.len() as u64).max().unwrap_or(0),
    };
    if longest > MAX_INPUT_TOKENS {
        let message = format!(
            "This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you requested {longest} tokens in your input. Please reduce your input."
        );
        return openai_error(StatusCode::BAD_REQUEST, &message, Some("input"), None);
    }
    let step = mock.next_step(&request.model, &headers, serde_json::from_slice(&body).ok());
    if let Some(response) = misbehave(&step, mock.args.latency_ms, &conn, false).await {
        return response;
    }
    Json(mock_answer(&request, &request.model, count_tokens).0).into_response()
}

/// Azure OpenAI's error body (`{"error": {"code", "message"}}`) with `status`.
fn azure_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"code": status.as_u16().to_string(), "message": message}}))).into_response()
}

/// What Azure checks before it looks at a request: the `api-key` header (or
/// an Entra ID bearer token the Entra double issued), and on the deployment
/// URLs the `api-version` query parameter.
fn azure_checks(mock: &Mock, headers: &HeaderMap, query: Option<&str>, deployment_api: bool) -> Option<Response> {
    match identity::azure_bearer_issued(mock, headers) {
        Some(true) => {}
        Some(false) => {
            let message = "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired.";
            return Some(azure_error(StatusCode::UNAUTHORIZED, message));
        }
        None if headers.get("api-key").and_then(|v| v.to_str().ok()).is_none_or(str::is_empty) => {
            let message = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.";
            return Some(azure_error(StatusCode::UNAUTHORIZED, message));
        }
        None => {}
    }
    let versioned = query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("api-version=") && kv.len() > 12));
    if deployment_api && !versioned {
        return Some(azure_error(StatusCode::NOT_FOUND, "Resource not found"));
    }
    None
}

/// Azure OpenAI's deployment API: `/openai/deployments/{deployment}/{chat/completions|embeddings}?api-version=`.
async fn azure_deployment(
    State(mock): State<Mock>,
    ConnectInfo(conn): ConnectInfo<ResetHandle>,
    Path((deployment, operation)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = azure_checks(&mock, &headers, uri.query(), true) {
        return refused;
    }
    match operation.as_str() {
        "chat/completions" => chat_as(mock, conn, headers, body, Some(deployment)).await,
        "embeddings" => embeddings_as(mock, conn, headers, body, Some(deployment)).await,
        _ => azure_error(StatusCode::NOT_FOUND, "Resource not found"),
    }
}

/// Azure OpenAI's v1 API: `/openai/v1/{chat/completions|embeddings}`, the deployment in `model`.
async fn azure_v1(
    State(mock): State<Mock>,
    ConnectInfo(conn): ConnectInfo<ResetHandle>,
    Path(operation): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = azure_checks(&mock, &headers, None, false) {
        return refused;
    }
    match operation.as_str() {
        "chat/completions" => chat_as(mock, conn, headers, body, None).await,
        "embeddings" => embeddings_as(mock, conn, headers, body, None).await,
        _ => azure_error(StatusCode::NOT_FOUND, "Resource not found"),
    }
}

/// Google's error body (`{"error": {"code", "message", "status"}}`).
fn google_error(status: StatusCode, message: &str, reason: &str) -> Response {
    (status, Json(json!({"error": {"code": status.as_u16(), "message": message, "status": reason}}))).into_response()
}

/// The Gemini API: `/v1beta/models/{model}:generateContent` and
/// `:streamGenerateContent?alt=sse`, with the key in `x-goog-api-key` (or `?key=`).
async fn gemini(
    State(mock): State<Mock>,
    ConnectInfo(conn): ConnectInfo<ResetHandle>,
    Path(model_method): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or_default();
    let keyed = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()).is_some_and(|k| !k.is_empty())
        || query.split('&').any(|kv| kv.starts_with("key=") && kv.len() > 4);
    if !keyed {
        let message = "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.";
        return google_error(StatusCode::FORBIDDEN, message, "PERMISSION_DENIED");
    }
    generate_content(mock, conn, &model_method, query, headers, body).await
}

/// Vertex AI's publisher models: the Gemini API's methods, with an access
/// token that `/token` issued.
async fn vertex(
    State(mock): State<Mock>,
    ConnectInfo(conn): ConnectInfo<ResetHandle>,
    Path((_project, _location, model_method)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let issued = mock.scripts.lock().is_ok_and(|s| bearer.is_some_and(|b| s.issued.contains(b)));
    if !issued {
        let message = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";
        return google_error(StatusCode::UNAUTHORIZED, message, "UNAUTHENTICATED");
    }
    generate_content(mock, conn, &model_method, uri.query().unwrap_or_default(), headers, body).await
}

/// The key of the JWKS file at `jwks` (read at each call, so a test can rewrite
/// it) whose `kid` is the token's: the key that must have signed it.
fn signing_key(jwks: Option<&std::path::Path>, token: &str) -> Option<jsonwebtoken::DecodingKey> {
    let keys: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&std::fs::read(jwks?).ok()?).ok()?;
    let kid = jsonwebtoken::decode_header(token).ok()?.kid;
    jsonwebtoken::DecodingKey::from_jwk(keys.keys.iter().find(|j| j.common.key_id == kid)?).ok()
}

/// What a service account's assertion claims.
#[derive(Debug, Deserialize)]
struct Assertion {
    iss: String,
    sub: String,
    scope: String,
}

/// Google's OAuth token endpoint for service accounts (the RFC 7523
/// jwt-bearer grant): the assertion must be signed (RS256) by a key of
/// `--google-jwks`, name this endpoint as its audience, be unexpired, and ask
/// for the cloud-platform scope. Issues an access token Vertex AI accepts.
async fn google_token(State(mock): State<Mock>, axum::Form(form): axum::Form<HashMap<String, String>>) -> Response {
    let oauth_error = |error: &str, description: &str| {
        (StatusCode::BAD_REQUEST, Json(json!({"error": error, "error_description": description}))).into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return oauth_error("unsupported_grant_type", "Invalid grant_type.");
    }
    let Some(assertion) = form.get("assertion") else { return oauth_error("invalid_request", "Missing assertion.") };
    let Some(key) = signing_key(mock.args.google_jwks.as_deref(), assertion) else {
        return oauth_error("invalid_grant", "Invalid JWT Signature.");
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[&*mock.token_uri]);
    let claims = match jsonwebtoken::decode::<Assertion>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return oauth_error("invalid_grant", &format!("Invalid JWT: {e}")),
    };
    if claims.iss != claims.sub
        || !claims.scope.split(' ').any(|s| s == "https://www.googleapis.com/auth/cloud-platform")
    {
        return oauth_error("invalid_scope", "The assertion must ask for the cloud-platform scope as its own subject.");
    }
    let token = next_id("ya29.mock-");
    let Ok(mut s) = mock.scripts.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    *s.counts.entry("google-oauth".into()).or_default() += 1;
    s.issued.insert(token.clone());
    Json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})).into_response()
}

/// `{model}:generateContent` or `{model}:streamGenerateContent?alt=sse`, once the caller is authenticated.
async fn generate_content(
    mock: Mock,
    conn: ResetHandle,
    model_method: &str,
    query: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (model, stream) = match model_method.rsplit_once(':') {
        Some((m, "generateContent")) => (m.to_owned(), false),
        Some((m, "streamGenerateContent")) if query.split('&').any(|kv| kv == "alt=sse") => (m.to_owned(), true),
        _ => return google_error(StatusCode::NOT_FOUND, "Requested entity was not found.", "NOT_FOUND"),
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid JSON payload received. {e}"),
                "INVALID_ARGUMENT",
            );
        }
    };
    let contents = request["contents"].as_array().cloned().unwrap_or_default();
    if contents.is_empty() {
        return google_error(
            StatusCode::BAD_REQUEST,
            "* GenerateContentRequest.contents: contents is not specified",
            "INVALID_ARGUMENT",
        );
    }
    if let Some(i) = contents.iter().position(|c| !matches!(c["role"].as_str(), Some("user" | "model"))) {
        let message = format!("Please use a valid role: user, model. (contents[{i}])");
        return google_error(StatusCode::BAD_REQUEST, &message, "INVALID_ARGUMENT");
    }
    let step = mock.next_step(&model, &headers, Some(request.clone()));
    if let Some(response) = misbehave(&step, mock.args.latency_ms, &conn, stream).await {
        return response;
    }
    let tools: Vec<OfferedTool<'_>> = request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["functionDeclarations"].as_array().into_iter().flatten())
        .filter_map(|d| Some(OfferedTool { name: d["name"].as_str()?, schema: d.get("parametersJsonSchema") }))
        .collect();
    let config = &request["toolConfig"]["functionCallingConfig"];
    let mode = match config["mode"].as_str() {
        Some("NONE") => ToolMode::None,
        Some("ANY") => config["allowedFunctionNames"][0].as_str().map_or(ToolMode::Required, ToolMode::Named),
        _ => ToolMode::Auto,
    };
    let last = contents.last().cloned().unwrap_or_default();
    let results: Vec<String> = last["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["functionResponse"]["response"]["content"].as_str().map(str::to_owned))
        .collect();
    let user_spoke_last = last["role"] == "user" && results.is_empty();
    let results = (!results.is_empty()).then(|| results.join("\n"));
    let prompt: u64 = contents
        .iter()
        .map(|c| {
            4 + c["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p["text"].as_str().map_or(0, count_tokens))
                .sum::<u64>()
        })
        .sum();
    let max_tokens = request["generationConfig"]["maxOutputTokens"].as_u64().map(|m| m as u32);
    let mut plan = Plan::new(&tools, mode, user_spoke_last, results.as_deref(), prompt, max_tokens, mock.args.tokens);
    plan.usage = plan.usage.with_cached(step.cached_tokens.unwrap_or(0));
    let reason = if plan.finish_reason == "length" { "MAX_TOKENS" } else { "STOP" };
    let usage = json!({"promptTokenCount": plan.usage.prompt_tokens, "candidatesTokenCount": plan.usage.completion_tokens,
        "cachedContentTokenCount": plan.usage.cached_tokens(),
        "totalTokenCount": plan.usage.total_tokens});
    let answer = |parts: Vec<Value>, finish: Option<&str>| {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(finish) = finish {
            candidate["finishReason"] = json!(finish);
        }
        json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": next_id("gem-")})
    };
    let call_part = plan.tool_call.as_ref().map(|(_, name, arguments)| {
        json!({"functionCall": {"name": name, "args": serde_json::from_str::<Value>(arguments).unwrap_or_default()}})
    });
    if !stream {
        let mut parts: Vec<Value> = plan.text().map(|t| json!({"text": t})).into_iter().collect();
        parts.extend(call_part);
        return Json(answer(parts, Some(reason))).into_response();
    }
    let mut events: Vec<Bytes> = plan
        .content
        .iter()
        .flatten()
        .map(|w| Bytes::from(format!("data: {}\r\n\r\n", answer(vec![json!({"text": w})], None))))
        .collect();
    events.push(Bytes::from(format!("data: {}\r\n\r\n", answer(call_part.into_iter().collect(), Some(reason)))));
    let interval = Duration::from_millis(step.chunk_interval_ms.unwrap_or(mock.args.chunk_interval_ms));
    event_stream(events, interval, step.fail_after_chunks)
}

/// A scripted answer text: whole, or one word (with its leading space) per chunk.
fn scripted_reply(id: &str, request: &ChatRequest, reply: &str, interval: Duration) -> Response {
    let model = &request.model;
    if !request.stream {
        return Json(json!({"id": id, "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    for (i, word) in reply.split(' ').enumerate() {
        let piece = if i == 0 { word.to_string() } else { format!(" {word}") };
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    event_stream(events, interval, None)
}

async fn messages(
    State(mock): State<Mock>,
    ConnectInfo(conn): ConnectInfo<ResetHandle>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    let model = request.get("model").and_then(Value::as_str).unwrap_or_default().to_string();
    let step = mock.next_step(&model, &headers, Some(request.clone()));
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    if let Some(response) = misbehave(&step, mock.args.latency_ms, &conn, stream).await {
        return response;
    }
    let tools: Vec<OfferedTool<'_>> = request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| Some(OfferedTool { name: t.get("name")?.as_str()?, schema: t.get("input_schema") }))
        .collect();
    let choice = &request["tool_choice"];
    let mode = match choice.get("type").and_then(Value::as_str) {
        Some("none") => ToolMode::None,
        Some("any") => ToolMode::Required,
        Some("tool") => choice.get("name").and_then(Value::as_str).map_or(ToolMode::Auto, ToolMode::Named),
        _ => ToolMode::Auto,
    };
    let messages = request.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    let user_spoke_last = messages.last().is_some_and(|m| {
        m["role"] == "user" && !m["content"].as_array().is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
    });
    // Tool results the conversation ends with: `tool_result` blocks of the last user message.
    let tool_results: Vec<String> = messages
        .last()
        .filter(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_array())
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| match &b["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
            _ => String::new(),
        })
        .collect();
    let tool_results = (!tool_results.is_empty()).then(|| tool_results.join("\n"));
    let prompt: u64 = messages.iter().map(|m| 4 + count_tokens(&m["content"].to_string())).sum();
    let max_tokens = request.get("max_tokens").and_then(Value::as_u64).map(|m| m as u32);
    let mut plan =
        Plan::new(&tools, mode, user_spoke_last, tool_results.as_deref(), prompt, max_tokens, mock.args.tokens);
    plan.usage = plan.usage.with_cached(step.cached_tokens.unwrap_or(0));
    // Anthropic's input_tokens leave out the cache reads.
    let (input, cached) = (plan.usage.prompt_tokens - plan.usage.cached_tokens(), plan.usage.cached_tokens());
    let id = next_id("msg_");
    let stop_reason = match plan.finish_reason {
        "tool_calls" => "tool_use",
        "length" => "max_tokens",
        _ => "end_turn",
    };
    let mut content = Vec::new();
    if let Some(text) = plan.text() {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some((call_id, name, arguments)) = &plan.tool_call {
        let input: Value = serde_json::from_str(arguments).unwrap_or_default();
        content
            .push(json!({"type": "tool_use", "id": call_id.replace("call_", "toolu_"), "name": name, "input": input}));
    }
    let usage = json!({"input_tokens": input, "output_tokens": plan.usage.completion_tokens,
        "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0});
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return Json(json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": null, "usage": usage}))
        .into_response();
    }
    let ev = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut events = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "usage": {"input_tokens": input, "output_tokens": 1,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}}}),
    )];
    let mut index = 0;
    if let Some(words) = &plan.content {
        events.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        ));
        for w in words {
            events.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": w}}),
            ));
        }
        events.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": index})));
        index += 1;
    }
    if let Some((call_id, name, arguments)) = &plan.tool_call {
        events.push(ev("content_block_start", json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": call_id.replace("call_", "toolu_"), "name": name, "input": {}}})));
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": arguments}})));
        events.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": index})));
    }
    events.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": plan.usage.completion_tokens}}),
    ));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    let interval = Duration::from_millis(step.chunk_interval_ms.unwrap_or(mock.args.chunk_interval_ms));
    event_stream(events, interval, step.fail_after_chunks)
}
