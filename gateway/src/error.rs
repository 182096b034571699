//! The one error type of request handling and its mapping to OpenAI's error shape.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;
use crate::limits::LimitError;
use crate::policy::PolicyError;

/// Everything a request can fail with. Messages are safe to show to clients:
/// they never carry secrets, key material or upstream credentials.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed; `param` names the offending field.
    #[error("{message}")]
    BadRequest { message: String, param: Option<String> },
    /// The body is larger than the limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// No valid credentials.
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// Valid credentials without the needed role.
    #[error("{0}")]
    Forbidden(String),
    /// The model is not one of the tenant's models.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// The caller's API key does not allow the model (its ApiKey's `allowedModels`).
    #[error("this API key may not use the model `{0}`: it is not in the key's allowedModels")]
    ModelNotAllowed(String),
    /// The request conflicts with how a resource is managed (a Kubernetes-managed API key).
    #[error("{0}")]
    Conflict(String),
    /// Something the request names does not exist (an API key id, an MCP session).
    #[error("{0}")]
    NotFound(String),
    /// No such route.
    #[error("Unknown request URL: {method} {path}")]
    RouteNotFound { method: String, path: String },
    /// A tenant or user limit refused the request (429), or the limit store
    /// is down and the tenant fails closed (503).
    #[error("{0}")]
    Limited(#[from] LimitError),
    /// Every target answered 429.
    #[error("{message}")]
    RateLimited { message: String, retry_after: Option<Duration> },
    /// Every target of the model is down or its breaker is open.
    #[error("{message}")]
    Unavailable { message: String, retry_after: Option<Duration> },
    /// An upstream answered with an error the client caused (4xx): passed on.
    #[error("{message}")]
    UpstreamRejected { status: StatusCode, message: String, kind: String, param: Option<String>, code: Option<String> },
    /// The gateway is at its in-flight limit or body memory budget: shed rather than queue.
    #[error("{0}")]
    Overloaded(crate::admission::Shed),
    /// Upstreams failed (5xx, protocol errors, connection errors).
    #[error("{0}")]
    BadGateway(String),
    /// Upstreams did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// A prompt policy refused the request or the answer.
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// A prompt policy refused the input of an embeddings request (its field is `input`).
    #[error("{0}")]
    InputPolicy(PolicyError),
    /// A bug or an unexpected condition; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// The error.
    pub error: ErrorDetail<'a>,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    /// Human-readable message.
    pub message: &'a str,
    /// OpenAI error type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The request field at fault.
    pub param: Option<&'a str>,
    /// Machine-readable code.
    pub code: Option<&'a str>,
}

impl From<crate::routing::RouteError> for AppError {
    fn from(e: crate::routing::RouteError) -> Self {
        use crate::routing::RouteError;
        match e {
            RouteError::Rejected { status, message, kind, param, code } => {
                Self::UpstreamRejected { status, message, kind, param, code }
            }
            RouteError::RateLimited { message, retry_after } => Self::RateLimited { message, retry_after },
            RouteError::Unavailable { message, retry_after } => Self::Unavailable { message, retry_after },
            RouteError::Timeout(message) => Self::GatewayTimeout(message),
            RouteError::Failed(message) => Self::BadGateway(message),
        }
    }
}

impl From<crate::llm::types::RequestError> for AppError {
    fn from(e: crate::llm::types::RequestError) -> Self {
        Self::BadRequest { message: e.message, param: e.param }
    }
}

/// Per-user OAuth's errors for an HTTP caller.
impl From<crate::mcp::user_oauth::UserOAuthError> for AppError {
    fn from(e: crate::mcp::user_oauth::UserOAuthError) -> Self {
        use crate::mcp::user_oauth::UserOAuthError;
        match e {
            UserOAuthError::UnknownConnection(_) => AppError::NotFound(e.to_string()),
            UserOAuthError::NotPerUser(_)
            | UserOAuthError::UnknownState(_)
            | UserOAuthError::ExpiredState(_)
            | UserOAuthError::WrongConnection
            | UserOAuthError::OtherSubject
            | UserOAuthError::Denied(_)
            | UserOAuthError::NotAuthorized(_) => AppError::bad_request(None, e.to_string()),
            UserOAuthError::MissingParameter(p) => AppError::bad_request(Some(p.to_string()), e.to_string()),
            UserOAuthError::Token(token) => AppError::BadGateway(token.to_string()),
            UserOAuthError::Unavailable(_) | UserOAuthError::Seal(_) => {
                tracing::warn!(error = %e, "per-user OAuth failed");
                AppError::Unavailable { message: e.to_string(), retry_after: None }
            }
            UserOAuthError::Db(db) => {
                tracing::warn!(error = %db, "per-user OAuth: database error");
                AppError::Unavailable {
                    message: "the database is unavailable, try again later".into(),
                    retry_after: None,
                }
            }
        }
    }
}

impl From<crate::mcp::chat::ChatToolsError> for AppError {
    fn from(e: crate::mcp::chat::ChatToolsError) -> Self {
        AppError::bad_request(e.param(), e.to_string())
    }
}

/// The SSE event that ends a stream the output guards stopped: OpenAI's
/// error JSON of the refusal.
pub fn policy_error_event(e: &PolicyError) -> bytes::Bytes {
    crate::llm::sse::data_event(&AppError::from(e.clone()).to_json())
}

impl AppError {
    /// A 400 naming the field at fault.
    pub fn bad_request(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self::BadRequest { message: message.into(), param: param.into() }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(e) if e.is_forbidden() => StatusCode::FORBIDDEN,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::ModelNotFound(_) | Self::RouteNotFound { .. } | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Limited(e) => e.status(),
            Self::Unavailable { .. } | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamRejected { status, .. } => *status,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Policy(e) | Self::InputPolicy(e) => e.status(),
        }
    }

    /// Short CamelCase reason for logs and metric labels.
    pub fn as_reason(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "BadRequest",
            Self::PayloadTooLarge { .. } => "PayloadTooLarge",
            Self::Unauthorized(e) => e.as_reason(),
            Self::Forbidden(_) => "Forbidden",
            Self::ModelNotAllowed(_) => "ModelNotAllowedForKey",
            Self::Conflict(_) => "Conflict",
            Self::ModelNotFound(_) => "ModelNotFound",
            Self::RouteNotFound { .. } => "RouteNotFound",
            Self::NotFound(_) => "NotFound",
            Self::RateLimited { .. } => "UpstreamRateLimited",
            Self::Limited(e) => e.as_reason(),
            Self::Unavailable { .. } => "NoHealthyTarget",
            Self::Overloaded(_) => "Overloaded",
            Self::UpstreamRejected { .. } => "UpstreamRejected",
            Self::BadGateway(_) => "UpstreamFailed",
            Self::GatewayTimeout(_) => "UpstreamTimeout",
            Self::Internal(_) => "Internal",
            Self::Policy(e) | Self::InputPolicy(e) => e.as_reason(),
        }
    }

    fn kind(&self) -> &str {
        match self {
            Self::BadRequest { .. } | Self::PayloadTooLarge { .. } | Self::ModelNotFound(_) => "invalid_request_error",
            Self::RouteNotFound { .. } | Self::NotFound(_) => "invalid_request_error",
            Self::Unauthorized(e) if e.is_forbidden() => "permission_error",
            Self::Unauthorized(_) => "authentication_error",
            Self::Forbidden(_) | Self::ModelNotAllowed(_) => "permission_error",
            Self::Conflict(_) => "invalid_request_error",
            Self::RateLimited { .. } | Self::Limited(LimitError::Exceeded(_)) => "rate_limit_error",
            Self::Limited(LimitError::Budget { .. }) => "insufficient_quota",
            Self::Limited(LimitError::Unpriced { .. }) => "permission_error",
            Self::Limited(LimitError::StoreUnavailable) => "api_error",
            Self::UpstreamRejected { kind, .. } => kind,
            Self::Unavailable { .. } | Self::Overloaded(_) | Self::BadGateway(_) | Self::GatewayTimeout(_) => {
                "api_error"
            }
            Self::Internal(_) => "api_error",
            Self::Policy(e) | Self::InputPolicy(e) => e.kind(),
        }
    }

    fn code(&self) -> Option<&str> {
        match self {
            Self::PayloadTooLarge { .. } => Some("request_too_large"),
            Self::Unauthorized(e) if e.is_forbidden() => Some("address_not_allowed"),
            Self::Unauthorized(_) => Some("invalid_token"),
            Self::ModelNotFound(_) => Some("model_not_found"),
            Self::ModelNotAllowed(_) => Some("model_not_allowed"),
            Self::Conflict(_) => Some("conflict"),
            Self::RouteNotFound { .. } => Some("unknown_url"),
            Self::NotFound(_) => Some("not_found"),
            Self::RateLimited { .. } | Self::Limited(LimitError::Exceeded(_)) => Some("rate_limit_exceeded"),
            Self::Limited(LimitError::Budget { .. }) => Some("budget_exceeded"),
            Self::Limited(LimitError::Unpriced { .. }) => Some("model_unpriced"),
            Self::Limited(LimitError::StoreUnavailable) => Some("rate_limit_store_unavailable"),
            Self::Overloaded(_) => Some("overloaded"),
            Self::UpstreamRejected { code, .. } => code.as_deref(),
            Self::Policy(e) | Self::InputPolicy(e) => Some(e.code()),
            _ => None,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::BadRequest { param, .. } | Self::UpstreamRejected { param, .. } => param.as_deref(),
            Self::ModelNotFound(_) | Self::ModelNotAllowed(_) => Some("model"),
            Self::Policy(e) => e.param(),
            Self::InputPolicy(e) => e.param().map(|p| if p == "messages" { "input" } else { p }),
            _ => None,
        }
    }

    /// The JSON body of this error, also used for SSE error events.
    pub fn to_json(&self) -> Vec<u8> {
        let message = match self {
            // Internal details go to the log only.
            Self::Internal(_) => "The server had an error while processing your request.".to_string(),
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail { message: &message, kind: self.kind(), param: self.param(), code: self.code() },
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":{"message":"error","type":"api_error"}}"#.to_vec())
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Unavailable { retry_after, .. } => *retry_after,
            Self::Overloaded(_) => Some(Duration::from_secs(1)),
            Self::Limited(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        // A limit store outage is logged once by the limiter, not per refused request;
        // shed requests are counted, not logged one by one (thousands a second in an overload).
        if let Self::Overloaded(shed) = &self {
            metrics::counter!("tenantgate_requests_shed_total", "reason" => shed.as_label()).increment(1);
        } else if status.is_server_error() && !matches!(self, Self::Limited(_)) {
            // Logged once here; the message of Internal never reaches the client.
            match &self {
                Self::Internal(detail) => tracing::error!(reason = self.as_reason(), %detail, "request failed"),
                other => tracing::warn!(reason = other.as_reason(), error = %other, "request failed"),
            }
        }
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.to_json())
                .into_response();
        if let Self::Unauthorized(e) = &self
            && !e.is_forbidden()
        {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, e.www_authenticate());
        }
        if let Self::Limited(e) = &self {
            e.apply_headers(response.headers_mut());
        }
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response.extensions_mut().insert(ErrorReason(self.as_reason()));
        response
    }
}

/// Set on error responses so the access log and metrics can name the reason.
#[derive(Clone, Copy, Debug)]
pub struct ErrorReason(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_use_openai_shape_and_hide_internal_details() {
        let body: serde_json::Value =
            serde_json::from_slice(&AppError::Internal("db password=hunter2".into()).to_json()).expect("json");
        assert_eq!(body["error"]["type"], "api_error");
        assert!(!body.to_string().contains("hunter2"));
        let body: serde_json::Value =
            serde_json::from_slice(&AppError::ModelNotFound("gpt-x".into()).to_json()).expect("json");
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
    }

    #[test]
    fn a_blocked_stream_ends_with_an_openai_error_event() {
        let error = PolicyError::OutputBlocked { policy: "ns/deny".into(), guard: crate::policy::Guard::DenyPatterns };
        let event = policy_error_event(&error);
        let data = event.strip_prefix(b"data: ").expect("a data line");
        let err: serde_json::Value = serde_json::from_slice(data.trim_ascii_end()).expect("error JSON");
        assert_eq!(err["error"]["code"], "policy_violation");
        assert_eq!(err["error"]["type"], "invalid_request_error");
        let message = err["error"]["message"].as_str().expect("message");
        assert!(message.contains("ns/deny"), "{message}");
        assert!(event.ends_with(b"\n\n"));
    }

    #[test]
    fn rate_limited_sets_retry_after() {
        let r = AppError::RateLimited { message: "slow down".into(), retry_after: Some(Duration::from_millis(1500)) }
            .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
