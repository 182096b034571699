//! MCP sessions shared by every replica of a tenant through Redis (the same
//! Redis the rate limiter uses), so a client's requests may land on any replica.
//!
//! rmcp's streamable HTTP server does the protocol part: with a
//! [`SessionStore`] configured it saves the client's `initialize` parameters
//! (protocol version, client info and capabilities) after the handshake, and
//! a replica that gets a session id it does not hold loads them and replays
//! the handshake internally against a fresh `AggregateServer` (`tenantgate-gateway`'s `mcp::server`)
//! (`StreamableHttpService::try_restore_from_store`); a `DELETE` removes the
//! entry. This store keeps, in one Redis hash per session, those parameters
//! and the subject the session is bound to; the hash expires with the
//! session's lifetime, so expiry and deletion are seen by every replica.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use rmcp::transport::streamable_http_server::session::{SessionState, SessionStore, SessionStoreError};

use crate::redis_client::RedisEndpoint;

/// Longest wait for Redis on a request.
const TIMEOUT: Duration = Duration::from_millis(250);
const FIELD_INIT: &str = "init";
const FIELD_SUBJECT: &str = "subject";

/// Why the shared session store failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedSessionError {
    /// No answer in time.
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    /// Connection or command error.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// A stored value that is not ours.
    #[error("a stored MCP session is not readable: {0}")]
    Corrupt(String),
}

/// Sessions of one tenant in Redis. Its `Debug` shows no URL (it may hold a password).
pub struct SharedSessions {
    connection: ConnectionManager,
    prefix: String,
    lifetime: Duration,
}

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSessions").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

async fn warm_up_in_background(connection: ConnectionManager) {
    if let Err(e) = crate::redis_client::warm_up(connection, Duration::from_secs(5)).await {
        tracing::warn!(error = %e, "shared MCP sessions: Redis is not reachable yet");
    }
}

impl SharedSessions {
    /// Sessions of `tenant` at `endpoint`, living at most `lifetime`; connects lazily.
    pub fn connect(
        endpoint: &RedisEndpoint,
        tenant: &str,
        lifetime: Duration,
    ) -> Result<Arc<Self>, crate::redis_client::RedisConfigError> {
        let connection = endpoint.connection(TIMEOUT, TIMEOUT)?;
        // The first connection (a TLS handshake for rediss://) in the background, with its cause when it fails.
        tokio::spawn(warm_up_in_background(connection.clone()));
        // The braces make every key of a tenant one Redis Cluster hash slot, like the limiter's.
        Ok(Arc::new(Self { connection, prefix: format!("tg:{{{tenant}}}:mcp-session:"), lifetime }))
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    async fn bounded<T>(f: impl Future<Output = Result<T, redis::RedisError>>) -> Result<T, SharedSessionError> {
        match tokio::time::timeout(TIMEOUT, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SharedSessionError::Timeout(TIMEOUT)),
        }
    }

    /// Sets one field of a session and (re)starts its lifetime: both happen
    /// when the session is created (rmcp stores `init`, then the HTTP layer binds the subject).
    async fn set(&self, id: &str, field: &str, value: &str) -> Result<(), SharedSessionError> {
        let mut c = self.connection.clone();
        let key = self.key(id);
        let secs = self.lifetime.as_secs().max(1) as i64;
        Self::bounded(async move {
            redis::pipe()
                .atomic()
                .hset(&key, field, value)
                .ignore()
                .expire(&key, secs)
                .ignore()
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Binds a new session to `subject`.
    pub async fn bind(&self, id: &str, subject: &str) -> Result<(), SharedSessionError> {
        self.set(id, FIELD_SUBJECT, subject).await
    }

    /// The subject a live session is bound to; `None` when it does not exist
    /// (never created, deleted, or expired: Redis dropped it).
    pub async fn subject(&self, id: &str) -> Result<Option<String>, SharedSessionError> {
        let mut c = self.connection.clone();
        let key = self.key(id);
        Self::bounded(async move { c.hget(&key, FIELD_SUBJECT).await }).await
    }

    /// Forgets a session everywhere.
    pub async fn remove(&self, id: &str) -> Result<(), SharedSessionError> {
        let mut c = self.connection.clone();
        let key = self.key(id);
        Self::bounded(async move { c.del(&key).await }).await
    }
}

#[async_trait::async_trait]
impl SessionStore for SharedSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let mut c = self.connection.clone();
        let key = self.key(session_id);
        let init: Option<String> = Self::bounded(async move { c.hget(&key, FIELD_INIT).await }).await?;
        let Some(init) = init else { return Ok(None) };
        let state = serde_json::from_str(&init).map_err(|e| SharedSessionError::Corrupt(e.to_string()))?;
        Ok(Some(state))
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let init = serde_json::to_string(state).map_err(|e| SharedSessionError::Corrupt(e.to_string()))?;
        Ok(self.set(session_id, FIELD_INIT, &init).await?)
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        Ok(self.remove(session_id).await?)
    }
}
