//! `/mcp` over HTTP: rmcp's streamable HTTP tower service behind the checks
//! the MCP security requirements ask for, in this order: `Origin` (403 when
//! present and not the gateway's own or an allowed one), the caller's token on
//! every request (401, with a challenge that names the Protected Resource
//! Metadata, see [`super::resource`]; a JWT must name the tenant's MCP
//! resource in its `aud` when it has one), the session id bound to the caller's subject (404
//! otherwise, as for an expired session), and the message size limit (413,
//! enforced by rmcp while it reads the body).
//!
//! A `tools/call` of a session that qualifies (see [`super::fast_path`]) is
//! served by the pass-through (`passthrough` of the core's `mcp`) after the
//! same checks, without rmcp's decoding; everything else goes to rmcp.
//!
//! When the tenant has Redis, sessions are shared by its replicas (see
//! [`super::session_store`]): a session id unknown here but live in Redis for
//! this subject is restored by rmcp, which replays the client's `initialize`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::fast_path::{self, FastSessions};
use super::passthrough::{self, ToolCall};
use super::server::AggregateServer;
use super::session_store::SharedSessions;
use super::sessions::{SessionBindings, SessionCheck};
use crate::auth::Audience;
use crate::error::AppError;
use crate::state::AppState;

const SESSION_HEADER: &str = "mcp-session-id";

/// The MCP endpoint: rmcp's service, its sessions and their owners.
#[derive(Clone)]
struct Endpoint {
    service: StreamableHttpService<AggregateServer, LocalSessionManager>,
    sessions: Arc<LocalSessionManager>,
    bindings: Arc<SessionBindings>,
    /// Sessions shared with the other replicas (when the tenant has Redis).
    shared: Option<Arc<SharedSessions>>,
    allowed_origins: Arc<[String]>,
    /// Sessions the `tools/call` pass-through may serve.
    fast: Arc<FastSessions>,
    /// Its calls in flight (their clients may cancel them).
    calls: Arc<passthrough::InFlight>,
    max_message_bytes: usize,
}

impl Endpoint {
    /// Whether `subject` may use session `id`. With shared sessions Redis is
    /// the authority (a session deleted or expired on any replica is gone
    /// here too); when Redis does not answer, this replica's own bindings decide.
    async fn check(&self, id: &str, subject: &str) -> SessionCheck {
        let Some(shared) = &self.shared else { return self.bindings.check(id, subject) };
        match shared.subject(id).await {
            Ok(Some(owner)) if owner == subject => match self.bindings.check(id, subject) {
                SessionCheck::Expired => SessionCheck::Expired,
                _ => SessionCheck::Valid,
            },
            Ok(Some(_)) => SessionCheck::Unknown,
            Ok(None) => {
                self.bindings.remove(id);
                // Deleted or expired elsewhere: close this replica's copy too.
                let _ = self.sessions.close_session(&id.into()).await;
                SessionCheck::Unknown
            }
            Err(e) => {
                tracing::warn!(error = %e, "shared MCP sessions unavailable; checking this replica's own");
                self.bindings.check(id, subject)
            }
        }
    }
}

impl Endpoint {
    /// The `tools/call` pass-through in front of rmcp (see [`super::fast_path`]):
    /// `Err` with the answer when it served the request (or a cancellation of
    /// one of its calls); otherwise the body for rmcp, and whether it is an
    /// `initialize` that qualifies its session.
    async fn pass_through(
        &self,
        state: &AppState,
        caller: &crate::auth::Caller,
        session: Option<&str>,
        parts: &axum::http::request::Parts,
        body: axum::body::Body,
    ) -> Result<(axum::body::Body, bool), Response> {
        if parts.method != Method::POST || !fast_path::headers_fit(&parts.headers) {
            return Ok((body, false));
        }
        let read = |body| async move {
            match fast_path::read_body(body, self.max_message_bytes).await {
                Ok(bytes) => Ok(bytes),
                Err(too_large) => Err(json_rpc_error(too_large, true).await),
            }
        };
        let Some(id) = session else {
            let bytes = read(body).await?;
            let qualifies = fast_path::qualifies(&bytes);
            return Ok((bytes.into(), qualifies));
        };
        if !self.fast.knows(id) {
            return Ok((body, false));
        }
        let bytes = read(body).await?;
        if self.fast.fits(id)
            && let Some(call) = ToolCall::parse(&bytes)
            && self.sessions.has_session(&id.into()).await.unwrap_or(false)
        {
            let mode = super::call::Mode::Tenant(state.tenant().clone());
            let answer = passthrough::call_tool(state.carried().mcp(), &mode, &caller.0, &call, &self.calls, id).await;
            if let Some(response) = fast_path::response(answer) {
                return Err(response);
            }
        } else if self.calls.cancel(id, &bytes) {
            return Err(StatusCode::ACCEPTED.into_response());
        }
        Ok((bytes.into(), false))
    }
}

/// The tenant's shared session store, when it has Redis (read at start).
fn shared_sessions(state: &AppState, lifetime: Duration) -> Option<Arc<SharedSessions>> {
    let runtime = state.runtime();
    let connected = match crate::redis_client::RedisEndpoint::from_config(&runtime.config.storage) {
        Ok(None) => return None,
        Ok(Some(endpoint)) => SharedSessions::connect(&endpoint, &runtime.config.tenant.name, lifetime),
        Err(e) => Err(e),
    };
    match connected {
        Ok(shared) => Some(shared),
        Err(e) => {
            tracing::warn!(error = %e, "MCP sessions stay on this replica: the Redis URL is not usable");
            None
        }
    }
}

/// The `/mcp` route.
pub fn router(state: &AppState) -> Router<AppState> {
    let hub = state.carried().mcp();
    let settings = hub.http_settings();
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(settings.session_idle);
    let sessions = Arc::new(manager);
    let (factory_hub, factory_state) = (hub.clone(), state.clone());
    let shared = shared_sessions(state, settings.session_lifetime);
    let mut config = StreamableHttpServerConfig::default()
        // Every request is authenticated and Origin is checked here, so the
        // Host allow-list (a DNS-rebinding defence for unauthenticated local servers) is off.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(settings.max_message_bytes);
    // With a store, rmcp saves each session's initialize parameters and
    // restores a session another replica created (see `session_store`).
    config.session_store =
        shared.clone().map(|s| s as Arc<dyn rmcp::transport::streamable_http_server::session::SessionStore>);
    let service = StreamableHttpService::new(
        move || {
            Ok(AggregateServer::new(factory_hub.clone(), super::call::Mode::Tenant(factory_state.tenant().clone())))
        },
        sessions.clone(),
        config,
    );
    let endpoint = Endpoint {
        service,
        sessions,
        bindings: Arc::new(SessionBindings::new(settings.session_lifetime)),
        shared,
        allowed_origins: settings.allowed_origins.into(),
        fast: Arc::new(FastSessions::new(settings.session_idle)),
        calls: Arc::default(),
        max_message_bytes: settings.max_message_bytes,
    };
    Router::new().route(
        "/mcp",
        any(move |State(state): State<AppState>, request: Request| {
            let endpoint = endpoint.clone();
            async move { handle(endpoint, state, request).await }
        }),
    )
}

async fn handle(endpoint: Endpoint, state: AppState, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Err(e) = check_origin(&parts.headers, &endpoint.allowed_origins) {
        return e.into_response();
    }
    let caller = match crate::api::caller::authenticate(&parts, &state, Audience::Mcp).await {
        Ok(c) => c,
        Err(e) => {
            let challenge = (!e.is_forbidden())
                .then(|| super::resource::challenge(&state.runtime().config.auth.mcp, &parts.headers, &parts.uri, &e));
            let mut response = AppError::from(e).into_response();
            if let Some(challenge) = challenge {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
            }
            return response;
        }
    };
    let session = parts.headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(id) = &session {
        match endpoint.check(id, &caller.0.subject).await {
            SessionCheck::Valid => {}
            SessionCheck::Unknown => {
                return AppError::NotFound("unknown MCP session: send initialize without Mcp-Session-Id".into())
                    .into_response();
            }
            SessionCheck::Expired => {
                endpoint.fast.remove(id);
                let _ = endpoint.sessions.close_session(&id.as_str().into()).await;
                return AppError::NotFound("the MCP session expired: send initialize again".into()).into_response();
            }
        }
    }
    let traced = crate::traces::RequestSpan::current();
    let body = match &traced {
        Some(span) => match traced_message(span, &parts, body, endpoint.max_message_bytes, session.as_deref()).await {
            Ok(body) => body,
            Err(too_large) => return json_rpc_error(too_large, true).await,
        },
        None => body,
    };
    let (body, qualifies) = match endpoint.pass_through(&state, &caller, session.as_deref(), &parts, body).await {
        Ok(full) => full,
        Err(answered) => return answered,
    };
    if let Some(id) = &session {
        endpoint.fast.saw_full(id);
    }
    let subject = caller.0.subject.clone();
    let is_delete = parts.method == Method::DELETE;
    let sent_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    parts.extensions.insert(caller);
    if let Some(span) = &traced {
        // rmcp serves the call on the session's task: its handler finds the trace here.
        parts.extensions.insert(span.context());
    }
    let response = endpoint.service.handle(Request::from_parts(parts, body)).await;
    match &session {
        None => {
            if let Some(id) = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
                endpoint.bindings.bind(id, &subject);
                if qualifies {
                    endpoint.fast.admit(id);
                }
                if let Some(shared) = &endpoint.shared
                    && let Err(e) = shared.bind(id, &subject).await
                {
                    tracing::warn!(error = %e, "MCP session not shared with the other replicas (Redis)");
                }
            }
        }
        Some(id) if is_delete && response.status().is_success() => {
            endpoint.bindings.remove(id);
            endpoint.fast.remove(id);
        }
        Some(_) => {}
    }
    let response = response.map(axum::body::Body::new);
    if response.status().is_client_error() && !response.headers().contains_key(header::CONTENT_TYPE) {
        return json_rpc_error(response, sent_json).await;
    }
    response
}

/// The MCP attributes of a traced request's span (semantic conventions for
/// MCP: `mcp.method.name`, `gen_ai.tool.name`, `mcp.session.id`, ...), from
/// its JSON-RPC message, read here whole (at most `limit` bytes, as rmcp
/// would) and handed on as bytes.
async fn traced_message(
    span: &crate::traces::RequestSpan,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
    limit: usize,
    session: Option<&str>,
) -> Result<axum::body::Body, Response> {
    use crate::traces::KeyValue;
    #[derive(serde::Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
        id: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        params: Option<Params<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        name: Option<std::borrow::Cow<'a, str>>,
    }
    let mut attributes = Vec::new();
    if let Some(id) = session {
        attributes.push(KeyValue::new("mcp.session.id", id.to_owned()));
    }
    if let Some(version) = parts.headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok()) {
        attributes.push(KeyValue::new("mcp.protocol.version", version.to_owned()));
    }
    if parts.method != Method::POST {
        span.set(attributes);
        return Ok(body);
    }
    let bytes = fast_path::read_body(body, limit).await?;
    // A batch or a message that is not JSON-RPC: rmcp answers it; the span says no more.
    if let Ok(message) = serde_json::from_slice::<Message<'_>>(&bytes)
        && let Some(method) = message.method
    {
        let tool = message.params.and_then(|p| p.name).filter(|_| method == "tools/call");
        span.rename(match &tool {
            Some(tool) => format!("{method} {tool}"),
            None => method.to_string(),
        });
        attributes.push(KeyValue::new("mcp.method.name", method.into_owned()));
        if let Some(id) = message.id {
            attributes.push(KeyValue::new("jsonrpc.request.id", id.get().trim_matches('"').to_owned()));
        }
        if let Some(tool) = tool {
            attributes.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
            attributes.push(KeyValue::new("gen_ai.tool.name", tool.into_owned()));
        }
    }
    span.set(attributes);
    Ok(bytes.into())
}

/// rmcp answers transport-level failures with a plain-text body; give clients
/// a JSON-RPC error carrying that message instead. A body rmcp could not
/// parse (which it reports as 415 even when the Content-Type was JSON) is a
/// JSON-RPC parse error, 400.
async fn json_rpc_error(response: Response, sent_json: bool) -> Response {
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 16 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let (status, code) = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE if sent_json => (StatusCode::BAD_REQUEST, -32700),
        other => (other, -32600),
    };
    let body = serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": text}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Absent `Origin` (non-browser clients) passes; a present one must be the
/// gateway's own (its authority is the request's `Host`) or an allowed one.
pub(crate) fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), AppError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let own = headers.get(header::HOST).and_then(|h| h.to_str().ok()).is_some_and(|host| {
        origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .is_some_and(|a| a.eq_ignore_ascii_case(host))
    });
    if own || allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    tracing::info!(%origin, "MCP request from a disallowed Origin refused");
    Err(AppError::Forbidden(format!("Origin {origin} is not allowed to use this MCP endpoint")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gw.example:8080"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    #[test]
    fn origin_absent_own_or_allowed() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(check_origin(&headers(None), &allowed).is_ok());
        assert!(check_origin(&headers(Some("http://gw.example:8080")), &allowed).is_ok());
        assert!(check_origin(&headers(Some("https://app.example")), &allowed).is_ok());
        assert!(check_origin(&headers(Some("https://evil.example")), &allowed).is_err());
        assert!(check_origin(&headers(Some("null")), &allowed).is_err());
    }
}
