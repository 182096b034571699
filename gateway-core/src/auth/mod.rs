//! Caller authentication: JWT bearer tokens against the tenant's keys, or
//! API keys minted through the admin API.

pub mod api_key;
mod declared;
mod jwt;
mod keys;

use std::sync::Arc;

use http::HeaderValue;

pub use declared::{DeclaredKeys, declared_key_id, declared_key_name};
pub use jwt::{Audience, JwtVerifier};
pub use keys::{KeyError, KeySource};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub` of the token.
    pub subject: String,
    /// Roles from the configured claim.
    pub roles: Vec<String>,
    /// Whether one of the roles is an admin role.
    pub admin: bool,
    /// `exp` of the token, seconds since the epoch.
    pub expires_at: u64,
    /// Model globs an API key declared with `allowedModels` may use; empty: every model.
    pub allowed_models: Vec<String>,
    /// The API key the caller presented, by the id the admin API lists it under
    /// (`kubernetes:<name>` for an ApiKey object, the key's id for an admin-minted one);
    /// `None` for a JWT. Recorded with each usage row, so spend can be grouped by key.
    pub api_key: Option<String>,
    /// The caller's team: the token's team claim (`spec.auth.jwt.teamClaim`), an ApiKey's
    /// `spec.team`, or the first role under `limits.perTeam.rolePrefix`; `None`: no team.
    pub team: Option<String>,
}

impl Identity {
    /// A caller with `roles` and nothing else: not an admin, no expiry recorded, every model,
    /// no API key (tests, examples and the sample the prompt templates are checked with).
    pub fn with_roles(subject: &str, roles: &[&str]) -> Self {
        Self {
            subject: subject.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            admin: false,
            expires_at: 0,
            allowed_models: Vec::new(),
            api_key: None,
            team: None,
        }
    }

    /// The same caller with `team` when it has none of its own and one of its
    /// roles starts with `prefix` (the role less the prefix names the team).
    pub fn with_team_from_roles(self: std::sync::Arc<Self>, prefix: Option<&str>) -> std::sync::Arc<Self> {
        let Some(prefix) = prefix.filter(|_| self.team.is_none()) else { return self };
        match self.roles.iter().find_map(|r| r.strip_prefix(prefix).filter(|t| !t.is_empty())) {
            Some(team) => {
                let team = Some(team.to_owned());
                std::sync::Arc::new(Self { team, ..(*self).clone() })
            }
            None => self,
        }
    }

    /// Whether the caller may use tenant model `model` (an ApiKey's `allowedModels`).
    pub fn may_use_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || crate::policy::glob::any(&self.allowed_models, model)
    }
}

/// Why a caller was not authenticated. The message says what is wrong with the
/// token, never anything about the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token: send an Authorization: Bearer <token> header")]
    Missing,
    /// Not a JWT, or an algorithm that is not allowed (`none` included).
    #[error("invalid token: {0}")]
    Malformed(&'static str),
    /// No key with the token's `kid`.
    #[error("invalid token: signed by an unknown key")]
    UnknownKey,
    /// Signature does not verify.
    #[error("invalid token: signature does not verify")]
    BadSignature,
    /// Past `exp`.
    #[error("invalid token: expired")]
    Expired,
    /// Before `nbf`.
    #[error("invalid token: not valid yet")]
    NotYetValid,
    /// Wrong `iss`.
    #[error("invalid token: wrong issuer")]
    WrongIssuer,
    /// Wrong `aud`.
    #[error("invalid token: wrong audience")]
    WrongAudience,
    /// A token on `/mcp` whose `aud` does not name the tenant's MCP resource (RFC 8707).
    #[error(
        "invalid token: its audience (aud) does not include this MCP server's resource {0}; ask the authorization server for a token for it (resource parameter, RFC 8707)"
    )]
    WrongResource(String),
    /// Missing or mistyped claims.
    #[error("invalid token: {0}")]
    BadClaims(String),
    /// The keys could not be loaded (IdP down and nothing cached).
    #[error("token keys are unavailable, try again later")]
    KeysUnavailable,
    /// An API key that does not exist (or is not well-formed).
    #[error("invalid API key: unknown key")]
    UnknownApiKey,
    /// A revoked API key.
    #[error("invalid API key: the key was revoked")]
    RevokedApiKey,
    /// An API key past its expiry.
    #[error("invalid API key: the key has expired")]
    ExpiredApiKey,
    /// API keys are off for this tenant.
    #[error("API keys are not enabled for this tenant: use a JWT")]
    ApiKeysDisabled,
    /// API keys cannot be checked now (database down, nothing cached).
    #[error("API keys cannot be checked right now, try again later")]
    ApiKeysUnavailable,
    /// A JWT presented to a tenant without JWT settings.
    #[error("this tenant does not accept JWTs: authenticate with an API key")]
    JwtDisabled,
    /// A declared API key used from an address outside its `ipAllowList` (a 403: the key is valid).
    #[error("API key {key} is not accepted from {address}: the address is outside the key's ipAllowList")]
    AddressNotAllowed {
        /// metadata.name of the ApiKey.
        key: String,
        /// The client address the gateway saw (`unknown` when it saw none).
        address: String,
    },
}

impl AuthError {
    /// Reason for logs and metrics.
    pub fn as_reason(&self) -> &'static str {
        match self {
            Self::Missing => "MissingToken",
            Self::Malformed(_) => "MalformedToken",
            Self::UnknownKey => "UnknownKey",
            Self::BadSignature => "BadSignature",
            Self::Expired => "TokenExpired",
            Self::NotYetValid => "TokenNotYetValid",
            Self::WrongIssuer => "WrongIssuer",
            Self::WrongAudience => "WrongAudience",
            Self::WrongResource(_) => "WrongResource",
            Self::BadClaims(_) => "BadClaims",
            Self::KeysUnavailable => "KeysUnavailable",
            Self::UnknownApiKey => "UnknownApiKey",
            Self::RevokedApiKey => "RevokedApiKey",
            Self::ExpiredApiKey => "ExpiredApiKey",
            Self::ApiKeysDisabled => "ApiKeysDisabled",
            Self::ApiKeysUnavailable => "ApiKeysUnavailable",
            Self::JwtDisabled => "JwtDisabled",
            Self::AddressNotAllowed { .. } => "AddressNotAllowed",
        }
    }

    /// Whether the credentials are valid but not allowed here (403, not 401).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::AddressNotAllowed { .. })
    }

    /// RFC 6750 challenge.
    pub fn www_authenticate(&self) -> HeaderValue {
        match self {
            Self::Missing => HeaderValue::from_static(r#"Bearer realm="tenantgate""#),
            other => {
                // Messages are static ASCII without quotes, so this cannot fail; fall back anyway.
                let description = other.to_string().replace('"', "'");
                HeaderValue::from_str(&format!(
                    r#"Bearer realm="tenantgate", error="invalid_token", error_description="{description}""#
                ))
                .unwrap_or_else(|_| HeaderValue::from_static(r#"Bearer realm="tenantgate", error="invalid_token""#))
            }
        }
    }
}

/// An authenticated caller: the extractor every API handler takes.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Identity>);

/// Who a request authenticated as, for its access log line: the access-log
/// layer puts an empty slot in the request, the [`Caller`] extractor fills it.
#[derive(Debug, Clone, Default)]
pub struct SubjectSlot(Arc<std::sync::OnceLock<Arc<Identity>>>);

impl SubjectSlot {
    /// Records who authenticated.
    pub fn fill(&self, identity: &Arc<Identity>) {
        let _ = self.0.set(identity.clone());
    }

    /// The subject, once authenticated.
    pub fn subject(&self) -> Option<&str> {
        self.0.get().map(|identity| identity.subject.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_names_the_problem() {
        let v = AuthError::Expired.www_authenticate();
        assert_eq!(
            v,
            r#"Bearer realm="tenantgate", error="invalid_token", error_description="invalid token: expired""#
        );
    }
}
