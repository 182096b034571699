//! OAuth access tokens that a provider's requests carry as a bearer (Vertex
//! AI, Azure OpenAI with Entra ID). Each [`Grant`] exchanges its credential
//! for a token; [`AccessTokens`] caches the token until five minutes before it
//! expires and runs one exchange at a time: requests that need a token
//! meanwhile wait for it. Every credential file (a key, a client secret, a
//! projected service account token) is read again at each exchange, so a
//! rotated secret or a refreshed token is used without a restart.
//!
//! Nothing secret is logged or returned: a failure logs the file's path or the
//! endpoint, the status and the OAuth error code, and surfaces as
//! [`UpstreamError::Credentials`].

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::UpstreamError;
use super::entra::EntraId;
use super::google_auth::ServiceAccountKey;
use super::google_federation::WorkloadIdentity;

/// A cached token is replaced this long before it expires.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// How a provider's access tokens are obtained.
#[derive(Debug)]
pub enum Grant {
    /// A Google service account key file, as a signed JWT (RFC 7523).
    GoogleServiceAccount(ServiceAccountKey),
    /// Google workload identity federation: a projected token exchanged at STS.
    GoogleWorkloadIdentity(WorkloadIdentity),
    /// An Entra ID application's client credentials.
    EntraId(EntraId),
}

impl Grant {
    async fn exchange(&self, client: &reqwest::Client) -> Result<Token, UpstreamError> {
        match self {
            Self::GoogleServiceAccount(g) => g.exchange(client).await,
            Self::GoogleWorkloadIdentity(g) => g.exchange(client).await,
            Self::EntraId(g) => g.exchange(client).await,
        }
    }
}

/// An access token and how long it lives.
pub(super) struct Token {
    /// The token itself.
    pub access_token: String,
    /// Its lifetime from now.
    pub lifetime: Duration,
}

/// The OAuth token answer (RFC 6749 5.1), as Google's token endpoints, STS
/// and Entra ID give it.
#[derive(Deserialize)]
pub(super) struct OAuthToken {
    access_token: String,
    #[serde(default = "default_lifetime")]
    expires_in: u64,
}

fn default_lifetime() -> u64 {
    3600
}

impl From<OAuthToken> for Token {
    fn from(t: OAuthToken) -> Self {
        Self { access_token: t.access_token, lifetime: Duration::from_secs(t.expires_in) }
    }
}

/// A credential that expires, and when: replaced once it has less than
/// [`REFRESH_BEFORE`] left, one fetch at a time (callers that need it
/// meanwhile wait for that fetch).
#[derive(Debug)]
pub(super) struct Cached<T>(tokio::sync::Mutex<Option<(T, Instant)>>);

impl<T: Clone> Cached<T> {
    pub(super) fn new() -> Self {
        Self(tokio::sync::Mutex::new(None))
    }

    /// The cached value, or the one `fetch` gives (with its lifetime) before `deadline`.
    pub(super) async fn get_or_fetch(
        &self,
        deadline: Instant,
        fetch: impl Future<Output = Result<(T, Duration), UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let mut slot = self.0.lock().await;
        if let Some((value, until)) = slot.as_ref()
            && Instant::now() + REFRESH_BEFORE < *until
        {
            return Ok(value.clone());
        }
        let (value, lifetime) =
            tokio::time::timeout_at(deadline, fetch).await.map_err(|_| UpstreamError::Timeout("token"))??;
        *slot = Some((value.clone(), Instant::now() + lifetime));
        Ok(value)
    }

    /// Drops the cached value: the next call fetches again.
    pub(super) async fn forget(&self) {
        *self.0.lock().await = None;
    }
}

/// The access tokens of one provider.
#[derive(Debug)]
pub struct AccessTokens {
    grant: Grant,
    client: reqwest::Client,
    /// The token's `Authorization` value.
    cached: Cached<HeaderValue>,
}

impl AccessTokens {
    /// Tokens of `grant`, exchanged through `client` (the egress client).
    pub fn new(grant: Grant, client: reqwest::Client) -> Self {
        Self { grant, client, cached: Cached::new() }
    }

    /// `Bearer <token>`: the cached one, or a fresh one exchanged before `deadline`.
    pub async fn header(&self, deadline: Instant) -> Result<HeaderValue, UpstreamError> {
        let exchange = async {
            let token = self.grant.exchange(&self.client).await?;
            Ok((bearer(&token.access_token, "the access token cannot be sent in a header")?, token.lifetime))
        };
        self.cached.get_or_fetch(deadline, exchange).await
    }

    /// Drops the cached token (the provider refused it): the next call exchanges again.
    pub async fn forget(&self) {
        self.cached.forget().await;
    }
}

/// `Bearer <token>`, marked sensitive so no debug output shows it.
pub(super) fn bearer(token: &str, why: &str) -> Result<HeaderValue, UpstreamError> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| refused("access token", "token answer", why))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Logs why no token could be had (`what` and `place`: a file's path or an
/// endpoint, never a secret) and returns the error the call fails with.
pub(super) fn refused(what: &str, place: &str, why: &str) -> UpstreamError {
    tracing::warn!(what, place, why, "cannot get a provider access token");
    UpstreamError::Credentials
}

/// The trimmed content of a credential file (`what` names it in the log).
pub(super) async fn read_credential(path: &Path, what: &str) -> Result<String, UpstreamError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|_| refused(what, &path.display().to_string(), "the file cannot be read"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(refused(what, &path.display().to_string(), "the file is empty"));
    }
    Ok(text.to_owned())
}

/// A POST of a form (`application/x-www-form-urlencoded`) to `url`.
pub(super) fn post_form<'a>(
    client: &reqwest::Client,
    url: &str,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> reqwest::RequestBuilder {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    client.post(url).header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(body)
}

/// Sends a token request to `endpoint` and returns the body of a successful
/// answer. A refusal logs the status and the error code the answer names
/// (OAuth's `error`, Google's `error.status`, Entra ID's first `error_codes`),
/// never the body, which could echo what was sent.
pub(super) async fn send(request: reqwest::RequestBuilder, endpoint: &str) -> Result<Bytes, UpstreamError> {
    let response = request.send().await.map_err(|e| UpstreamError::from_send(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|_| refused("token answer", endpoint, "the answer was cut"))?;
    if !status.is_success() {
        let answer = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
        let error = &answer["error"];
        let reason = error.as_str().or_else(|| error["status"].as_str()).unwrap_or_default();
        let code = answer["error_codes"][0].as_u64().map(|c| format!("AADSTS{c}")).unwrap_or_default();
        tracing::warn!(endpoint, status = status.as_u16(), reason, code, "the token endpoint refused the credential");
        return Err(UpstreamError::Credentials);
    }
    Ok(body)
}

/// The JSON answer of `endpoint`, as `T`.
pub(super) fn parse<T: DeserializeOwned>(body: &[u8], endpoint: &str) -> Result<T, UpstreamError> {
    serde_json::from_slice(body).map_err(|_| refused("token answer", endpoint, "the answer is not the expected JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_are_sensitive() {
        let value = bearer("secret-token", "x").expect("header");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("secret-token"));
        assert!(bearer("line\nbreak", "x").is_err());
    }
}
