//! Google OAuth access tokens from a service account key (the JSON file
//! Google issues), for Vertex AI: a JWT signed with the key (RS256) is
//! exchanged at the key's `token_uri` (the RFC 7523 jwt-bearer grant). The
//! token is cached until five minutes before it expires; the key file is read
//! again for each exchange, so a rotated key is used without a restart. One
//! exchange runs at a time: requests that need a token meanwhile wait for it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::UpstreamError;

/// What Vertex AI needs.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// A cached token is replaced this long before it expires.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// The assertion's lifetime (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;

/// The fields of a service account key file the exchange uses.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default = "default_lifetime")]
    expires_in: u64,
}

fn default_lifetime() -> u64 {
    3600
}

/// Access tokens of one service account key file.
#[derive(Debug)]
pub struct GoogleTokens {
    key_file: PathBuf,
    client: reqwest::Client,
    /// The token's `Authorization` value and when it expires; held across the exchange.
    cached: tokio::sync::Mutex<Option<(HeaderValue, Instant)>>,
}

impl GoogleTokens {
    /// Tokens for the key in `key_file`, exchanged through `client` (the egress client).
    pub fn new(key_file: impl Into<PathBuf>, client: reqwest::Client) -> Self {
        Self { key_file: key_file.into(), client, cached: tokio::sync::Mutex::new(None) }
    }

    /// `Bearer <token>`: the cached one, or a fresh one exchanged before `deadline`.
    pub async fn header(&self, deadline: Instant) -> Result<HeaderValue, UpstreamError> {
        let mut cached = self.cached.lock().await;
        if let Some((value, until)) = cached.as_ref()
            && Instant::now() + REFRESH_BEFORE < *until
        {
            return Ok(value.clone());
        }
        let (value, lifetime) =
            tokio::time::timeout_at(deadline, self.exchange()).await.map_err(|_| UpstreamError::Timeout("token"))??;
        *cached = Some((value.clone(), Instant::now() + lifetime));
        Ok(value)
    }

    async fn exchange(&self) -> Result<(HeaderValue, Duration), UpstreamError> {
        let credentials = |why: &str| {
            // Never the key or the token: the file's path and what failed.
            tracing::warn!(path = %self.key_file.display(), why, "cannot get a Google access token");
            UpstreamError::Credentials
        };
        let text =
            tokio::fs::read_to_string(&self.key_file).await.map_err(|_| credentials("the key file cannot be read"))?;
        let account: ServiceAccount =
            serde_json::from_str(&text).map_err(|_| credentials("the key file is not a service account key"))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|_| credentials("the key file's private_key is not an RSA key"))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            iss: &account.client_email,
            sub: &account.client_email,
            scope: SCOPE,
            aud: &account.token_uri,
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = account.private_key_id.clone();
        let assertion =
            jsonwebtoken::encode(&header, &claims, &key).map_err(|_| credentials("signing the assertion failed"))?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", GRANT)
            .append_pair("assertion", &assertion)
            .finish();
        let response = self
            .client
            .post(&account.token_uri)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| UpstreamError::from_send(&e))?;
        let status = response.status();
        if !status.is_success() {
            // An OAuth error body (`invalid_grant`, ...) names no secret.
            let body = response.text().await.unwrap_or_default();
            let reason = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_default();
            tracing::warn!(status = status.as_u16(), reason, "the token endpoint refused the service account");
            return Err(UpstreamError::Credentials);
        }
        let body = response.bytes().await.map_err(|_| credentials("the token endpoint's answer was cut"))?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| credentials("the token endpoint's answer has no access_token"))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|_| credentials("the access token cannot be sent in a header"))?;
        value.set_sensitive(true);
        Ok((value, Duration::from_secs(answer.expires_in)))
    }
}
