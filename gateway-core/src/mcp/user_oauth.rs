//! Per-user OAuth 2.0 authorization code with PKCE (RFC 6749 §4.1, RFC 7636
//! S256, RFC 8707 `resource`) for McpConnections with
//! `oauth2AuthorizationCode`.
//!
//! - [`UserTokens::start`] makes a PKCE verifier and a `state` bound to the
//!   caller's subject and the connection, stores them (the state hashed, the
//!   verifier sealed) for [`STATE_LIFETIME`], and returns the authorization URL.
//! - [`UserTokens::finish`] takes the state (single use: deleted in the same
//!   statement, across replicas), checks it, exchanges the code with the
//!   verifier, and stores the tokens sealed (AES-256-GCM, see [`super::seal`]).
//! - [`UserTokens::access_token`] gives a user's access token to the upstream
//!   transport, refreshing it (refresh_token grant) before it expires.
//!
//! Token values never reach logs, metrics or error messages.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tenantgate_crds::config::{McpAuthConfig, McpConnectionConfig};

use super::oauth::OAuthError;
use super::seal::{Binding, SealError, TokenKey};
use crate::llm::SecretFile;
use crate::storage::mcp_tokens::{self, PendingState, StoredToken};
use crate::storage::{Db, now_ms};

/// How long a started authorization may take.
pub const STATE_LIFETIME: Duration = Duration::from_secs(600);
/// Refresh this long before expiry (or at half the token's life when shorter).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// A decrypted access token is reused from memory at most this long: a
/// revocation on another replica takes effect here within it.
const CACHE_FOR: Duration = Duration::from_secs(30);

/// Why per-user OAuth failed. Messages name what is wrong, never a token.
#[derive(Debug, thiserror::Error)]
pub enum UserOAuthError {
    /// The token-encryption key is not loaded.
    #[error("per-user OAuth is unavailable: {0}")]
    Unavailable(String),
    /// No such McpConnection.
    #[error("no MCP connection named {0:?}")]
    UnknownConnection(String),
    /// The connection does not use per-user OAuth.
    #[error("MCP connection {0:?} does not use per-user OAuth (oauth2AuthorizationCode)")]
    NotPerUser(String),
    /// The state was never issued, or was already used.
    #[error("unknown or already used OAuth state: start again at /oauth/mcp/{0}/start")]
    UnknownState(String),
    /// The state is past its lifetime.
    #[error("the OAuth state expired (it lives {secs} s): start again at /oauth/mcp/{0}/start", secs = STATE_LIFETIME.as_secs())]
    ExpiredState(String),
    /// The state belongs to another connection.
    #[error("this OAuth state was issued for another MCP connection")]
    WrongConnection,
    /// The state was issued to another user than the one calling back.
    #[error("this OAuth state was issued to another user")]
    OtherSubject,
    /// The callback lacks a parameter.
    #[error("the OAuth callback is missing its {0} parameter")]
    MissingParameter(&'static str),
    /// The authorization server sent the user back with an error.
    #[error("the authorization server refused: {0}")]
    Denied(String),
    /// The user has not authorized the gateway for this connection (or revoked it).
    #[error(
        "MCP connection {0} needs your authorization: open /oauth/mcp/{0}/start on this gateway (with your usual token), sign in, then call again"
    )]
    NotAuthorized(String),
    /// The token endpoint failed.
    #[error("{0}")]
    Token(#[from] OAuthError),
    /// Stored tokens or the verifier do not decrypt.
    #[error("{0}")]
    Seal(#[from] SealError),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl UserOAuthError {
    /// Reason for logs, metrics and audit events.
    pub fn as_reason(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "OAuthUnavailable",
            Self::UnknownConnection(_) => "UnknownConnection",
            Self::NotPerUser(_) => "NotPerUserOAuth",
            Self::UnknownState(_) => "UnknownState",
            Self::ExpiredState(_) => "ExpiredState",
            Self::WrongConnection => "WrongConnection",
            Self::OtherSubject => "OtherSubject",
            Self::MissingParameter(_) => "MissingParameter",
            Self::Denied(_) => "AuthorizationDenied",
            Self::NotAuthorized(_) => "NotAuthorized",
            Self::Token(_) => "TokenEndpoint",
            Self::Seal(_) => "Seal",
            Self::Db(_) => "Database",
        }
    }
}

/// The sealed bundle of one user's tokens.
#[derive(Serialize, Deserialize)]
struct Bundle {
    #[serde(rename = "a")]
    access_token: String,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

/// The per-user OAuth settings of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// Connection name.
    pub connection: &'a str,
    authorization_url: &'a str,
    token_url: &'a str,
    client_id: &'a str,
    client_secret_file: Option<&'a str>,
    scopes: &'a [String],
    resource: &'a str,
}

impl<'a> Grant<'a> {
    /// The grant of a connection that uses per-user OAuth.
    pub fn of(config: &'a McpConnectionConfig) -> Result<Self, UserOAuthError> {
        match &config.auth {
            Some(McpAuthConfig::Oauth2AuthorizationCode {
                authorization_url,
                token_url,
                client_id,
                client_secret_file,
                scopes,
                resource,
            }) => Ok(Self {
                connection: &config.name,
                authorization_url,
                token_url,
                client_id,
                client_secret_file: client_secret_file.as_deref(),
                scopes,
                resource,
            }),
            _ => Err(UserOAuthError::NotPerUser(config.name.clone())),
        }
    }
}

/// A cached access token and when to stop using it.
struct Cached {
    access_token: String,
    refresh_at: Instant,
}

/// Users' upstream tokens of one tenant: sealing, storage, refresh.
/// Where the hub's store of users' upstream OAuth tokens lives.
#[derive(Debug)]
pub struct Vault {
    /// The tenant's database.
    pub db: Db,
    /// The tenant, whose rows these are.
    pub tenant: String,
    /// The key that seals the tokens at rest.
    pub key_file: std::path::PathBuf,
}

pub struct UserTokens {
    db: Db,
    tenant: String,
    key: Result<TokenKey, SealError>,
    http: reqwest::Client,
    /// (connection, subject) -> fresh access token; read without awaiting.
    cache: Mutex<HashMap<UserKey, Cached>>,
    /// Single-flight loads and refreshes, per (connection, subject).
    refreshing: Mutex<HashMap<UserKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// (connection, subject).
type UserKey = (String, String);

impl std::fmt::Debug for UserTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTokens").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

fn random_b64(n: usize) -> Result<String, UserOAuthError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|_| SealError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

/// The S256 code challenge of a verifier.
pub fn code_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl UserTokens {
    /// The vault of `tenant`, with the key from the `gateway-keys` file (its
    /// absence is reported on use, not fatal at start).
    pub fn new(db: Db, tenant: &str, key_file: &Path, http: reqwest::Client) -> Self {
        let key = TokenKey::from_file(key_file);
        if let Err(e) = &key {
            tracing::warn!(error = %e, "per-user MCP OAuth unavailable: no token-encryption key");
        }
        Self::with_key(db, tenant, key, http)
    }

    /// The vault with a key already loaded (or the reason it is not).
    pub fn with_key(db: Db, tenant: &str, key: Result<TokenKey, SealError>, http: reqwest::Client) -> Self {
        Self {
            db,
            tenant: tenant.to_string(),
            key,
            http,
            cache: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self) -> Result<&TokenKey, UserOAuthError> {
        self.key.as_ref().map_err(|e| UserOAuthError::Unavailable(e.to_string()))
    }

    fn binding<'b>(&'b self, purpose: &'b str, connection: &'b str, subject: &'b str) -> Binding<'b> {
        Binding { purpose, tenant: &self.tenant, connection, subject }
    }

    /// Starts an authorization for `subject`: the URL to send the user to.
    pub async fn start(&self, grant: Grant<'_>, subject: &str, redirect_uri: &str) -> Result<String, UserOAuthError> {
        let key = self.key()?;
        let state = random_b64(32)?;
        // 32 random bytes: a 43-character verifier, within RFC 7636's 43..128.
        let verifier = random_b64(32)?;
        let pending = PendingState {
            connection: grant.connection.to_string(),
            subject: subject.to_string(),
            sealed_verifier: key.seal(self.binding("verifier", grant.connection, subject), verifier.as_bytes())?,
            redirect_uri: redirect_uri.to_string(),
            expires_at_ms: now_ms() + STATE_LIFETIME.as_millis() as i64,
        };
        mcp_tokens::put_state(&self.db, &self.tenant, &state_hash(&state), &pending).await?;
        let mut url = url::Url::parse(grant.authorization_url)
            .map_err(|_| UserOAuthError::Denied("the connection's authorizationUrl is not a URL".into()))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", grant.client_id)
                .append_pair("redirect_uri", redirect_uri);
            if !grant.scopes.is_empty() {
                q.append_pair("scope", &grant.scopes.join(" "));
            }
            q.append_pair("state", &state)
                .append_pair("code_challenge", &code_challenge(&verifier))
                .append_pair("code_challenge_method", "S256")
                .append_pair("resource", grant.resource);
        }
        metrics::counter!("tenantgate_mcp_user_oauth_total", "connection" => grant.connection.to_string(), "step" => "start").increment(1);
        Ok(url.into())
    }

    /// Completes an authorization: checks `state` (and, when the callback
    /// was authenticated, that it is the same user), exchanges `code`, stores
    /// the tokens. Returns the subject they were stored for.
    pub async fn finish(
        &self,
        grant: Grant<'_>,
        state: &str,
        code: &str,
        caller: Option<&str>,
    ) -> Result<String, UserOAuthError> {
        let key = self.key()?;
        let connection = grant.connection;
        let pending = mcp_tokens::take_state(&self.db, &self.tenant, &state_hash(state))
            .await?
            .ok_or_else(|| UserOAuthError::UnknownState(connection.to_string()))?;
        if pending.connection != connection {
            return Err(UserOAuthError::WrongConnection);
        }
        if pending.expires_at_ms <= now_ms() {
            return Err(UserOAuthError::ExpiredState(connection.to_string()));
        }
        if caller.is_some_and(|c| c != pending.subject) {
            return Err(UserOAuthError::OtherSubject);
        }
        let subject = pending.subject;
        let verifier = key.open(self.binding("verifier", connection, &subject), &pending.sealed_verifier)?;
        let verifier = String::from_utf8(verifier).map_err(|_| SealError::Open)?;
        let response = self
            .token_request(
                grant,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &pending.redirect_uri),
                    ("code_verifier", &verifier),
                    ("resource", grant.resource),
                ],
            )
            .await?;
        self.store(connection, &subject, response, None).await?;
        metrics::counter!("tenantgate_mcp_user_oauth_total", "connection" => connection.to_string(), "step" => "authorized").increment(1);
        Ok(subject)
    }

    /// Seals and stores a token response; caches its access token.
    async fn store(
        &self,
        connection: &str,
        subject: &str,
        response: TokenResponse,
        previous: Option<&StoredToken>,
    ) -> Result<String, UserOAuthError> {
        let key = self.key()?;
        let now = now_ms();
        let life = Duration::from_secs(response.expires_in.unwrap_or(3600));
        // A refresh answer without a new refresh token keeps the old one (RFC 6749 §6).
        let refresh_token = match (response.refresh_token, previous) {
            (Some(r), _) => Some(r),
            (None, Some(p)) => self.open(connection, subject, p)?.refresh_token,
            (None, None) => None,
        };
        let bundle = Bundle { access_token: response.access_token, refresh_token };
        let plain = serde_json::to_vec(&bundle).map_err(|_| SealError::Open)?;
        let row = StoredToken {
            connection: connection.to_string(),
            subject: subject.to_string(),
            sealed: key.seal(self.binding("token", connection, subject), &plain)?,
            has_refresh_token: bundle.refresh_token.is_some(),
            scope: response.scope.or_else(|| previous.and_then(|p| p.scope.clone())),
            expires_at_ms: Some(now + life.as_millis() as i64),
            created_at_ms: previous.map_or(now, |p| p.created_at_ms),
            updated_at_ms: now,
        };
        mcp_tokens::upsert_token(&self.db, &self.tenant, &row).await?;
        let refresh_at = Instant::now() + life.saturating_sub(REFRESH_MARGIN.min(life / 2));
        self.cache_put(connection, subject, &bundle.access_token, refresh_at);
        Ok(bundle.access_token)
    }

    fn open(&self, connection: &str, subject: &str, row: &StoredToken) -> Result<Bundle, UserOAuthError> {
        let plain = self.key()?.open(self.binding("token", connection, subject), &row.sealed)?;
        Ok(serde_json::from_slice(&plain).map_err(|_| SealError::Open)?)
    }

    fn cache_get(&self, connection: &str, subject: &str) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(&(connection.to_string(), subject.to_string()))
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.access_token.clone())
    }

    fn cache_put(&self, connection: &str, subject: &str, token: &str, refresh_at: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        cache.retain(|_, c| c.refresh_at > now);
        cache.insert(
            (connection.to_string(), subject.to_string()),
            Cached { access_token: token.to_string(), refresh_at: refresh_at.min(now + CACHE_FOR) },
        );
    }

    fn cache_drop(&self, connection: &str, subject: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.remove(&(connection.to_string(), subject.to_string()));
    }

    /// `subject`'s access token for the connection: cached, stored, or
    /// refreshed (and stored again) when it is about to expire.
    pub async fn access_token(&self, grant: Grant<'_>, subject: &str) -> Result<String, UserOAuthError> {
        let connection = grant.connection;
        if let Some(t) = self.cache_get(connection, subject) {
            return Ok(t);
        }
        let key = (connection.to_string(), subject.to_string());
        let lock = self.lock(&key).lock_owned().await;
        let result = self.load_or_refresh(grant, subject).await;
        drop(lock);
        // The last one out removes the per-user lock.
        let mut locks = self.refreshing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if locks.get(&key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&key);
        }
        result
    }

    fn lock(&self, key: &UserKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.refreshing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(key.clone()).or_default().clone()
    }

    /// Under the user's lock: the cached, stored or refreshed token.
    async fn load_or_refresh(&self, grant: Grant<'_>, subject: &str) -> Result<String, UserOAuthError> {
        let connection = grant.connection;
        if let Some(t) = self.cache_get(connection, subject) {
            return Ok(t);
        }
        // Read the row again: another replica may have refreshed it.
        let row = mcp_tokens::get_token(&self.db, &self.tenant, connection, subject)
            .await?
            .ok_or_else(|| UserOAuthError::NotAuthorized(connection.to_string()))?;
        let bundle = self.open(connection, subject, &row)?;
        let margin = REFRESH_MARGIN.as_millis() as i64;
        let remaining = row.expires_at_ms.map_or(i64::MAX, |e| e - now_ms());
        let life = row.expires_at_ms.map_or(i64::MAX, |e| e - row.updated_at_ms);
        if remaining > margin.min(life / 2) {
            let refresh_at = Instant::now() + Duration::from_millis((remaining - margin.min(life / 2)) as u64);
            self.cache_put(connection, subject, &bundle.access_token, refresh_at);
            return Ok(bundle.access_token);
        }
        let Some(refresh_token) = bundle.refresh_token else {
            return Err(UserOAuthError::NotAuthorized(connection.to_string()));
        };
        let response = match self
            .token_request(
                grant,
                &[("grant_type", "refresh_token"), ("refresh_token", &refresh_token), ("resource", grant.resource)],
            )
            .await
        {
            Ok(r) => r,
            // invalid_grant: the refresh token is dead; the user must authorize again.
            Err(OAuthError::Refused { error, .. }) if error == "invalid_grant" => {
                tracing::info!(
                    connection,
                    "a user's refresh token was refused (invalid_grant): authorization needed again"
                );
                mcp_tokens::delete_token(&self.db, &self.tenant, connection, subject).await?;
                return Err(UserOAuthError::NotAuthorized(connection.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        metrics::counter!("tenantgate_mcp_user_oauth_total", "connection" => connection.to_string(), "step" => "refreshed").increment(1);
        self.store(connection, subject, response, Some(&row)).await
    }

    /// Whether `subject` has tokens for the connection.
    pub async fn has_token(&self, connection: &str, subject: &str) -> Result<bool, UserOAuthError> {
        if self.cache_get(connection, subject).is_some() {
            return Ok(true);
        }
        Ok(mcp_tokens::get_token(&self.db, &self.tenant, connection, subject).await?.is_some())
    }

    /// The user whose token lists a connection's tools (the last one to authorize).
    pub async fn lister(&self, connection: &str) -> Result<Option<String>, UserOAuthError> {
        Ok(mcp_tokens::latest_subject(&self.db, &self.tenant, connection).await?)
    }

    /// Stored tokens (metadata), optionally of one connection and/or subject.
    pub async fn list(
        &self,
        connection: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Vec<StoredToken>, UserOAuthError> {
        Ok(mcp_tokens::list_tokens(&self.db, &self.tenant, connection, subject).await?)
    }

    /// Deletes a user's tokens for a connection; whether there were any.
    pub async fn revoke(&self, connection: &str, subject: &str) -> Result<bool, UserOAuthError> {
        self.cache_drop(connection, subject);
        let deleted = mcp_tokens::delete_token(&self.db, &self.tenant, connection, subject).await?;
        self.cache_drop(connection, subject);
        Ok(deleted)
    }

    /// One token request (authorization code or refresh): client_secret_basic
    /// when the connection has a secret, `client_id` in the form otherwise.
    async fn token_request(&self, grant: Grant<'_>, params: &[(&str, &str)]) -> Result<TokenResponse, OAuthError> {
        let secret = match grant.client_secret_file {
            Some(file) => {
                let value = SecretFile::new(file, "").header().map_err(|_| OAuthError::Secret)?;
                Some(value.to_str().map_err(|_| OAuthError::Secret)?.to_string())
            }
            None => None,
        };
        super::oauth::token_request(&self.http, grant.token_url, grant.client_id, secret.as_deref(), params.to_vec())
            .await
    }
}

/// Shared handle on the tenant's vault, set once storage is open.
pub type UserTokensCell = Option<Arc<UserTokens>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_challenge_matches_rfc7636_appendix_b() {
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    fn config(secret: Option<&str>) -> McpConnectionConfig {
        serde_json::from_value(serde_json::json!({
            "name": "gh",
            "prefix": "gh",
            "transport": "streamableHttp",
            "url": "http://127.0.0.1:1/mcp",
            "auth": {"oauth2AuthorizationCode": {
                "authorizationUrl": "https://as.example/authorize?tenant=x",
                "tokenUrl": "http://127.0.0.1:1/token",
                "clientId": "gw",
                "clientSecretFile": secret,
                "scopes": ["repo", "read:user"],
                "resource": "https://mcp.example/"
            }},
            "tools": {},
            "timeoutSeconds": 5
        }))
        .expect("config")
    }

    async fn vault(dir: &Path) -> UserTokens {
        let db = Db::sqlite(&dir.join("v.db")).await.expect("db");
        UserTokens::with_key(db, "acme", TokenKey::from_bytes(&[3u8; 32]), reqwest::Client::new())
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tg-user-oauth-{}", crate::storage::new_id()));
        std::fs::create_dir_all(&dir).expect("tempdir");
        dir
    }

    #[tokio::test]
    async fn start_builds_the_pkce_url_and_states_are_single_use_and_bound() {
        let dir = tempdir();
        let v = vault(&dir).await;
        let c = config(None);
        let grant = Grant::of(&c).expect("grant");
        let url = v.start(grant, "alice", "http://gw/oauth/mcp/gh/callback").await.expect("start");
        let url = url::Url::parse(&url).expect("url");
        let q: HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["tenant"], "x", "the endpoint's own query is kept");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "gw");
        assert_eq!(q["redirect_uri"], "http://gw/oauth/mcp/gh/callback");
        assert_eq!(q["scope"], "repo read:user");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"].len(), 43);
        assert_eq!(q["resource"], "https://mcp.example/");
        let state = q["state"].clone();
        // Another user calling back with it: refused, and the state is spent.
        let err = v.finish(grant, &state, "code", Some("mallory")).await.expect_err("other subject");
        assert!(matches!(err, UserOAuthError::OtherSubject), "{err}");
        let err = v.finish(grant, &state, "code", Some("alice")).await.expect_err("reused");
        assert!(matches!(err, UserOAuthError::UnknownState(_)), "{err}");
        let err = v.finish(grant, "made-up", "code", None).await.expect_err("unknown");
        assert!(err.to_string().contains("/oauth/mcp/gh/start"), "{err}");
        // A state past its lifetime: refused as expired (and spent).
        let pending = PendingState {
            connection: "gh".into(),
            subject: "alice".into(),
            sealed_verifier: "x".into(),
            redirect_uri: "http://gw/cb".into(),
            expires_at_ms: now_ms() - 1,
        };
        mcp_tokens::put_state(&v.db, "acme", &state_hash("old-state"), &pending).await.expect("put");
        let err = v.finish(grant, "old-state", "code", None).await.expect_err("expired");
        assert!(matches!(err, UserOAuthError::ExpiredState(_)), "{err}");
        // A state issued for another connection.
        let mut other = c.clone();
        other.name = "gl".into();
        let url = v.start(Grant::of(&other).expect("grant"), "alice", "http://gw/cb").await.expect("start");
        let st = url::Url::parse(&url)
            .expect("url")
            .query_pairs()
            .find(|(k, _)| k == "state")
            .expect("state")
            .1
            .into_owned();
        let err = v.finish(grant, &st, "code", None).await.expect_err("other connection");
        assert!(matches!(err, UserOAuthError::WrongConnection), "{err}");
        // No tokens: a clear NotAuthorized naming the start URL.
        let err = v.access_token(grant, "alice").await.expect_err("no token");
        assert!(matches!(err, UserOAuthError::NotAuthorized(_)) && err.to_string().contains("/oauth/mcp/gh/start"));
        // A connection without per-user OAuth is refused.
        let mut plain = c.clone();
        plain.auth = None;
        assert!(matches!(Grant::of(&plain), Err(UserOAuthError::NotPerUser(_))));
    }

    #[tokio::test]
    async fn stored_tokens_are_sealed_and_bound_to_their_user() {
        let dir = tempdir();
        let v = vault(&dir).await;
        let response = TokenResponse {
            access_token: "at-plaintext-123".into(),
            refresh_token: Some("rt-plaintext-456".into()),
            expires_in: Some(3600),
            scope: Some("repo".into()),
        };
        v.store("gh", "alice", response, None).await.expect("store");
        let row = mcp_tokens::get_token(&v.db, "acme", "gh", "alice").await.expect("get").expect("row");
        assert!(!row.sealed.contains("at-plaintext") && !row.sealed.contains("rt-plaintext"));
        assert!(row.has_refresh_token);
        // The row moved to another user does not open.
        assert!(v.open("gh", "bob", &row).is_err());
        let c = config(None);
        v.cache_drop("gh", "alice");
        assert_eq!(v.access_token(Grant::of(&c).expect("grant"), "alice").await.expect("token"), "at-plaintext-123");
        // The SQLite file holds no plaintext either.
        drop(v);
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            assert!(!bytes.windows(9).any(|w| w == b"plaintext"), "plaintext in the database files");
        }
    }
}
