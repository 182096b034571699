//! OAuth 2.0 client credentials (RFC 6749 §4.4) for an upstream MCP server:
//! the access token is cached and refreshed before it expires, the RFC 8707
//! `resource` is sent, the client authenticates with HTTP Basic, and the
//! client secret is read from its Secret file at each refresh (so rotation
//! needs no restart). Concurrent callers share one refresh.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::llm::SecretFile;

/// Refresh this long before the token's stated expiry (or at half its life when shorter).
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The client secret file could not be read.
    #[error("the OAuth client secret file could not be read")]
    Secret,
    /// The token endpoint could not be reached.
    #[error("token endpoint unreachable: {0}")]
    Http(#[from] reqwest::Error),
    /// The token endpoint refused (its `error` code, never the secret).
    #[error("token endpoint answered {status}: {error}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// OAuth error code.
        error: String,
    },
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
}

/// A client-credentials grant with its cached token.
#[derive(Debug)]
pub struct ClientCredentials {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    secret: SecretFile,
    scopes: Vec<String>,
    resource: String,
    /// The cached token and when to refresh it; read without awaiting.
    cached: std::sync::Mutex<Option<(String, Instant)>>,
    /// Single-flight refresh.
    refreshing: tokio::sync::Mutex<()>,
}

impl ClientCredentials {
    /// A grant for one connection.
    pub fn new(
        http: reqwest::Client,
        token_url: &str,
        client_id: &str,
        client_secret_file: &str,
        scopes: &[String],
        resource: &str,
    ) -> Self {
        Self {
            http,
            token_url: token_url.to_string(),
            client_id: client_id.to_string(),
            secret: SecretFile::new(client_secret_file, ""),
            scopes: scopes.to_vec(),
            resource: resource.to_string(),
            cached: std::sync::Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<String> {
        let cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cached.as_ref().filter(|(_, refresh_at)| Instant::now() < *refresh_at).map(|(t, _)| t.clone())
    }

    /// A valid access token: the cached one, or a new one from the token endpoint.
    pub async fn token(&self) -> Result<String, OAuthError> {
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let _one = self.refreshing.lock().await;
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let secret = self.secret.header().map_err(|_| OAuthError::Secret)?;
        let secret = secret.to_str().map_err(|_| OAuthError::Secret)?;
        let scope = self.scopes.join(" ");
        let mut form = vec![("grant_type", "client_credentials"), ("resource", self.resource.as_str())];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let token: TokenResponse = match token_request(&self.http, &self.token_url, &self.client_id, Some(secret), form)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                if matches!(e, OAuthError::Refused { .. }) {
                    metrics::counter!("tenantgate_mcp_oauth_token_requests_total", "result" => "refused").increment(1);
                }
                return Err(e);
            }
        };
        metrics::counter!("tenantgate_mcp_oauth_token_requests_total", "result" => "issued").increment(1);
        let life = Duration::from_secs(token.expires_in.unwrap_or(3600));
        let refresh_at = Instant::now() + life.saturating_sub(REFRESH_MARGIN.min(life / 2));
        *self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((token.access_token.clone(), refresh_at));
        Ok(token.access_token)
    }
}

/// One request to a token endpoint (RFC 6749 §4.1.3, §4.4.2, §6): the form
/// `params`, the client authenticated with HTTP Basic when it has a secret
/// (`client_id` in the form otherwise); the JSON answer, or the endpoint's
/// `error` code (never its body, which could echo a secret).
pub async fn token_request<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    token_url: &str,
    client_id: &str,
    client_secret: Option<&str>,
    mut params: Vec<(&str, &str)>,
) -> Result<T, OAuthError> {
    let mut request = http
        .post(token_url)
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::ACCEPT, "application/json");
    match client_secret {
        Some(secret) => request = request.basic_auth(client_id, Some(secret)),
        None => params.push(("client_id", client_id)),
    }
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let response = request.body(body).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        let error = serde_json::from_slice::<ErrorResponse>(&body).map(|e| e.error).unwrap_or_default();
        return Err(OAuthError::Refused { status: status.as_u16(), error });
    }
    serde_json::from_slice(&body).map_err(|_| OAuthError::Refused {
        status: status.as_u16(),
        error: "the token response is not an OAuth token (JSON with access_token)".into(),
    })
}
