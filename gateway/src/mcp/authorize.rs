//! `/oauth/mcp/{connection}/start` and `/callback`: a user authorizes the
//! gateway to call an McpConnection with `oauth2AuthorizationCode` on their
//! behalf (see [`super::user_oauth`]).
//!
//! `start` is authenticated like every route and binds the state to the
//! caller's subject. The callback is where the authorization server sends
//! the user's browser back, which carries no bearer token: the state (256
//! random bits, single use, 10 minutes) is what ties it to the user; when
//! the callback does carry a token, it must be the same user's.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::user_oauth::{Grant, STATE_LIFETIME, UserOAuthError, UserTokens};
use crate::auth::Caller;
use crate::error::AppError;
use crate::state::AppState;
use crate::storage::{AuditEvent, AuditKind};

/// The two routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth/mcp/{connection}/start", get(start))
        .route("/oauth/mcp/{connection}/callback", get(callback))
}

fn vault(state: &AppState) -> Result<std::sync::Arc<UserTokens>, AppError> {
    state
        .carried()
        .mcp()
        .user_tokens()
        .ok_or_else(|| AppError::from(UserOAuthError::Unavailable("storage is not open yet".into())))
}

/// The connection's config, which must use per-user OAuth.
fn connection_config(state: &AppState, name: &str) -> Result<tenantgate_crds::config::McpConnectionConfig, AppError> {
    let runtime = state.runtime();
    let config = runtime
        .config
        .mcp
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .ok_or_else(|| AppError::from(UserOAuthError::UnknownConnection(name.to_string())))?;
    Grant::of(&config).map_err(AppError::from)?;
    Ok(config)
}

/// The callback URL as the user's browser reaches this gateway: scheme and
/// host from `X-Forwarded-Proto`/`X-Forwarded-Host` (set by the ingress) or
/// the request's `Host`.
fn redirect_uri(headers: &HeaderMap, connection: &str) -> Result<String, AppError> {
    let get =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.split(',').next().unwrap_or(v).trim());
    let scheme = get("x-forwarded-proto").filter(|s| *s == "https" || *s == "http").unwrap_or("http");
    let host = get("x-forwarded-host")
        .or_else(|| get(header::HOST.as_str()))
        .ok_or_else(|| AppError::bad_request(None, "the request has no Host header to build the OAuth callback URL"))?;
    if host.is_empty() || host.contains(['/', '?', '#', '@', '\\', ' ']) {
        return Err(AppError::bad_request(None, format!("Host {host:?} is not a valid host")));
    }
    let mut url = url::Url::parse(&format!("{scheme}://{host}/"))
        .map_err(|_| AppError::bad_request(None, format!("Host {host:?} is not a valid host")))?;
    url.path_segments_mut()
        .map_err(|_| AppError::bad_request(None, "the OAuth callback URL cannot be built"))?
        .clear()
        .extend(["oauth", "mcp", connection, "callback"]);
    Ok(url.into())
}

fn audit(state: &AppState, subject: &str, action: &str, connection: &str, result: &Result<Response, AppError>) {
    let mut event = AuditEvent::new(&state.runtime().config.tenant.name, subject, AuditKind::Admin, action);
    event.resource = Some(connection.to_string());
    match result {
        Ok(r) => event.status = Some(i32::from(r.status().as_u16())),
        Err(e) => {
            event.status = Some(i32::from(e.status().as_u16()));
            event.reason = Some(e.as_reason().to_owned());
        }
    }
    state.storage().recorder.audit(event);
}

/// `GET /oauth/mcp/{connection}/start`: redirects to the authorization
/// endpoint, or answers `{"authorizationUrl", "expiresIn"}` to
/// `Accept: application/json`.
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(connection): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let result = async {
        let config = connection_config(&state, &connection)?;
        let grant = Grant::of(&config).map_err(AppError::from)?;
        let redirect = redirect_uri(&headers, &connection)?;
        let url = vault(&state)?.start(grant, &caller.0.subject, &redirect).await.map_err(AppError::from)?;
        let wants_json =
            headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
        Ok(if wants_json {
            Json(json!({"authorizationUrl": url, "expiresIn": STATE_LIFETIME.as_secs()})).into_response()
        } else {
            Redirect::to(&url).into_response()
        })
    }
    .await;
    audit(&state, &caller.0.subject, "mcp.oauth.start", &connection, &result);
    result
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /oauth/mcp/{connection}/callback?code&state`: exchanges the code and stores the user's tokens.
async fn callback(
    State(state): State<AppState>,
    Path(connection): Path<String>,
    q: Result<Query<CallbackQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, AppError> {
    let (mut parts, _body) = request.into_parts();
    // Optional authentication: a token that is present must be valid and the state's user's.
    let caller = if parts.headers.contains_key(header::AUTHORIZATION) {
        Some(Caller::from_request_parts(&mut parts, &state).await?)
    } else {
        None
    };
    let mut subject = caller.as_ref().map(|c| c.0.subject.clone());
    let result = async {
        let Query(q) =
            q.map_err(|e| AppError::bad_request(None, format!("invalid query string: {}", e.body_text())))?;
        let config = connection_config(&state, &connection)?;
        let grant = Grant::of(&config).map_err(AppError::from)?;
        if let Some(error) = q.error {
            // The provider's words, shortened: they are shown, not trusted.
            let mut said = error;
            if let Some(d) = q.error_description {
                said = format!("{said}: {d}");
            }
            said.truncate(300);
            return Err(AppError::from(UserOAuthError::Denied(said)));
        }
        let st = q.state.ok_or(UserOAuthError::MissingParameter("state")).map_err(AppError::from)?;
        let code = q.code.ok_or(UserOAuthError::MissingParameter("code")).map_err(AppError::from)?;
        let who = vault(&state)?
            .finish(grant, &st, &code, caller.as_ref().map(|c| c.0.subject.as_str()))
            .await
            .map_err(|e| {
                tracing::info!(connection = %connection, reason = e.as_reason(), "OAuth callback refused");
                AppError::from(e)
            })?;
        subject = Some(who.clone());
        Ok(Json(json!({
            "object": "mcp.authorization",
            "connection": connection,
            "subject": who,
            "status": "authorized",
            "message": "the gateway can now call this MCP connection for you; you may close this window",
        }))
        .into_response())
    }
    .await;
    audit(&state, subject.as_deref().unwrap_or(""), "mcp.oauth.callback", &connection, &result);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn callback_url_from_host_or_forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(redirect_uri(&h, "gh").expect("uri"), "http://127.0.0.1:8080/oauth/mcp/gh/callback");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("acme.ai.example.com"));
        assert_eq!(redirect_uri(&h, "gh").expect("uri"), "https://acme.ai.example.com/oauth/mcp/gh/callback");
        h.insert("x-forwarded-host", HeaderValue::from_static("evil/path?x"));
        assert!(redirect_uri(&h, "gh").is_err());
        assert!(redirect_uri(&HeaderMap::new(), "gh").is_err());
    }
}
