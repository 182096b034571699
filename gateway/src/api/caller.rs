//! The [`Caller`] extractor: authenticates a request's bearer token (a JWT
//! or an API key) against the config in force.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};

use crate::auth::{Audience, AuthError, Caller, SubjectSlot, api_key};
use crate::error::AppError;
use crate::state::AppState;

/// 403 unless the caller has an admin role.
pub fn require_admin(caller: &Caller) -> Result<(), AppError> {
    if caller.0.admin { Ok(()) } else { Err(AppError::Forbidden("this endpoint needs an admin role".into())) }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(authenticate(parts, state, Audience::Api).await?)
    }
}

/// Authenticates a request's bearer token for the endpoint's `audience`
/// (a JWT's `aud`; API keys are the tenant's own and valid everywhere). On
/// the API, without an `Authorization` header, the `x-api-key` header (as
/// Anthropic's clients send it) carries the same token.
pub async fn authenticate(parts: &Parts, state: &AppState, audience: Audience) -> Result<Caller, AuthError> {
    let token = match parts.headers.get(header::AUTHORIZATION) {
        Some(value) => bearer(Some(value)),
        None if audience == Audience::Api => parts.headers.get(X_API_KEY).and_then(|v| v.to_str().ok()).map(str::trim),
        None => None,
    }
    .filter(|t| !t.is_empty())
    .ok_or(AuthError::Missing)?;
    let runtime = state.runtime();
    let verified = if api_key::is_api_key(token) {
        let client = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        api_key::verify(state.storage(), &runtime, token, client).await
    } else {
        match &runtime.auth {
            Some(jwt) => jwt.verify_for(token, audience).await,
            None => Err(AuthError::JwtDisabled),
        }
    };
    match verified {
        Ok(identity) => {
            let identity = identity.with_team_from_roles(runtime.team_role_prefix());
            if let Some(slot) = parts.extensions.get::<SubjectSlot>() {
                slot.fill(&identity);
            }
            Ok(Caller(identity))
        }
        Err(e) => {
            metrics::counter!("tenantgate_auth_failures_total", "reason" => e.as_reason()).increment(1);
            let request_id = parts.headers.get(super::X_REQUEST_ID).and_then(|v| v.to_str().ok());
            tracing::info!(request_id, reason = e.as_reason(), "authentication failed");
            Err(e)
        }
    }
}

/// Anthropic's credential header.
const X_API_KEY: header::HeaderName = header::HeaderName::from_static("x-api-key");

fn bearer(value: Option<&HeaderValue>) -> Option<&str> {
    let value = value?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer(Some(&HeaderValue::from_static("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&HeaderValue::from_static("bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&HeaderValue::from_static("Basic abc"))), None);
        assert_eq!(bearer(Some(&HeaderValue::from_static("Bearer "))), None);
        assert_eq!(bearer(None), None);
    }
}
