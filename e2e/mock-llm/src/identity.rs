//! The identity services in front of Azure OpenAI and Vertex AI, checking
//! what the real ones check:
//! - Entra ID's token endpoint, `POST /{tenant}/oauth2/v2.0/token`: the client
//!   credentials grant for a `.default` scope, the client authenticated by its
//!   secret (`--azure-client-id`, `--azure-client-secret`) or by a JWT client
//!   assertion (workload identity federation: a projected service account
//!   token whose `aud` holds `api://AzureADTokenExchange`, unexpired, signed by
//!   a key of `--identity-jwks` when given). Azure OpenAI accepts the tokens it issues.
//! - Google's STS, `POST /v1/token`: the RFC 8693 token exchange of a JWT for
//!   an access token, for the pool provider `--google-workload-pool` (its
//!   subject token must have `https:` and that name among its audiences, be
//!   unexpired, and be signed by a key of `--identity-jwks` when given). Vertex
//!   AI accepts the federated tokens it issues.
//! - The IAM Credentials API, `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken`:
//!   a federated token of STS buys a service account's token, which Vertex AI accepts.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tenantgate_gateway::llm::mock::next_id;

use super::{Mock, google_error};

const ENTRA_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Issued tokens' lifetime, in seconds.
const LIFETIME: u64 = 3599;

/// What a projected service account token claims.
#[derive(Deserialize)]
struct Projected {
    #[serde(default)]
    aud: Audiences,
    #[serde(default)]
    exp: u64,
}

/// A JWT's `aud`: one string or several.
#[derive(Default, Deserialize)]
#[serde(untagged)]
enum Audiences {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audiences {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Self::None => false,
            Self::One(a) => a == audience,
            Self::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why a projected token is not acceptable for `audience`, if it is not.
fn projected_token_problem(mock: &Mock, token: &str, audience: &str) -> Option<String> {
    let claims = match jsonwebtoken::dangerous::insecure_decode::<Projected>(token) {
        Ok(data) => data.claims,
        Err(e) => return Some(format!("the token is not a JWT: {e}")),
    };
    if !claims.aud.contains(audience) {
        return Some(format!("the token's audience does not contain {audience}"));
    }
    if claims.exp <= now() {
        return Some("the token has expired".into());
    }
    // Without `--identity-jwks` the signature is not checked.
    let jwks = mock.args.identity_jwks.as_deref()?;
    let Some(key) = crate::signing_key(Some(jwks), token) else {
        return Some("no trusted key signed the token".into());
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation).err().map(|e| format!("the token's signature: {e}"))
}

/// Entra ID's error body (`error`, `error_description` with its AADSTS code, `error_codes`).
fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description}"),
        "error_codes": [code],
    });
    (status, Json(body)).into_response()
}

/// Entra ID's v2 token endpoint: the client credentials grant.
pub async fn entra_token(
    State(mock): State<Mock>,
    Path(_tenant): Path<String>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if !field("scope").ends_with("/.default") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        );
    }
    let client_id = field("client_id");
    if client_id.is_empty() || mock.args.azure_client_id.as_deref().is_some_and(|id| id != client_id) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application was not found in the directory.",
        );
    }
    match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(secret), None) => {
            if mock.args.azure_client_secret.as_deref() != Some(secret.as_str()) {
                return entra_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
                );
            }
        }
        (None, Some(assertion)) => {
            if field("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
                return entra_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    50027,
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
                );
            }
            if let Some(problem) = projected_token_problem(&mock, assertion, ENTRA_EXCHANGE_AUDIENCE) {
                return entra_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    700211,
                    &format!("No matching federated identity record found for presented assertion: {problem}."),
                );
            }
        }
        _ => {
            return entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
    }
    let token = next_id("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra-mock-");
    let Ok(mut s) = mock.scripts.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    *s.counts.entry("entra-oauth".into()).or_default() += 1;
    s.issued_azure.insert(token.clone());
    Json(json!({"token_type": "Bearer", "expires_in": LIFETIME, "ext_expires_in": LIFETIME, "access_token": token}))
        .into_response()
}

/// Whether `headers` carry a bearer token the Entra double issued.
pub fn azure_bearer_issued(mock: &Mock, headers: &HeaderMap) -> Option<bool> {
    let bearer = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?;
    Some(mock.scripts.lock().is_ok_and(|s| s.issued_azure.contains(bearer)))
}

/// Google STS's OAuth error body.
fn sts_error(error: &str, description: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error, "error_description": description}))).into_response()
}

/// Google's Security Token Service: the RFC 8693 token exchange.
pub async fn google_sts(State(mock): State<Mock>, axum::Form(form): axum::Form<HashMap<String, String>>) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" {
        return sts_error("unsupported_grant_type", "Invalid value for \"grant_type\".");
    }
    if field("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token" {
        return sts_error("invalid_request", "Invalid value for \"requested_token_type\".");
    }
    if !matches!(
        field("subject_token_type"),
        "urn:ietf:params:oauth:token-type:jwt" | "urn:ietf:params:oauth:token-type:id_token"
    ) {
        return sts_error("invalid_request", "Invalid value for \"subject_token_type\".");
    }
    let audience = field("audience");
    if mock.args.google_workload_pool.as_deref() != Some(audience) {
        return sts_error(
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn't exist.",
        );
    }
    if !field("scope").split(' ').any(|s| s == CLOUD_PLATFORM) {
        return sts_error("invalid_scope", "Invalid value for \"scope\".");
    }
    let expected = format!("https:{audience}");
    if let Some(problem) = projected_token_problem(&mock, field("subject_token"), &expected) {
        return sts_error("invalid_grant", &format!("The subject token is invalid: {problem}."));
    }
    let token = next_id("ya29.federated-mock-");
    let Ok(mut s) = mock.scripts.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    *s.counts.entry("google-sts".into()).or_default() += 1;
    s.federated.insert(token.clone());
    s.issued.insert(token.clone());
    Json(json!({
        "access_token": token,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": LIFETIME,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct GenerateAccessToken {
    #[serde(default)]
    scope: Vec<String>,
}

/// The IAM Credentials API's `generateAccessToken`, for a federated token.
pub async fn generate_access_token(
    State(mock): State<Mock>,
    Path((project, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(email) = name.strip_suffix(":generateAccessToken") else {
        return google_error(StatusCode::NOT_FOUND, "Requested entity was not found.", "NOT_FOUND");
    };
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !mock.scripts.lock().is_ok_and(|s| bearer.is_some_and(|b| s.federated.contains(b))) {
        let message = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.";
        return google_error(StatusCode::UNAUTHORIZED, message, "UNAUTHENTICATED");
    }
    if project != "-" || !email.ends_with(".iam.gserviceaccount.com") || !email.contains('@') {
        return google_error(
            StatusCode::NOT_FOUND,
            &format!("Not found; Gaia id not found for email {email}"),
            "NOT_FOUND",
        );
    }
    let scopes = serde_json::from_slice::<GenerateAccessToken>(&body).map(|r| r.scope).unwrap_or_default();
    if !scopes.iter().any(|s| s == CLOUD_PLATFORM) {
        return google_error(StatusCode::BAD_REQUEST, "Request contains an invalid argument.", "INVALID_ARGUMENT");
    }
    let token = next_id("ya29.impersonated-mock-");
    let Ok(mut s) = mock.scripts.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    *s.counts.entry("google-impersonation".into()).or_default() += 1;
    s.issued.insert(token.clone());
    let expires = chrono::Utc::now() + Duration::from_secs(LIFETIME);
    Json(json!({"accessToken": token, "expireTime": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}))
        .into_response()
}
