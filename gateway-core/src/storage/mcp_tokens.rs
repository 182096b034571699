//! Users' upstream OAuth tokens for MCP connections, and the pending
//! authorizations (PKCE state) that lead to them. Values arrive here already
//! sealed (see `mcp::seal`): this module never sees a token in clear.

use serde::Serialize;

use super::queries::rfc3339;
use super::records::now_ms;
use super::{Db, on_db};

/// One user's sealed tokens for one connection.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredToken {
    /// McpConnection name.
    pub connection: String,
    /// The user.
    pub subject: String,
    /// Access and refresh token, sealed.
    pub sealed: String,
    /// Whether a refresh token is sealed with it.
    pub has_refresh_token: bool,
    /// Scope granted.
    pub scope: Option<String>,
    /// When the access token expires, milliseconds since the epoch.
    pub expires_at_ms: Option<i64>,
    /// First authorized.
    pub created_at_ms: i64,
    /// Last stored (authorization or refresh).
    pub updated_at_ms: i64,
}

/// The admin API's view of a stored token: metadata only.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView<'a> {
    connection: &'a str,
    subject: &'a str,
    scope: Option<&'a str>,
    has_refresh_token: bool,
    expires_at: Option<String>,
    created_at: String,
    updated_at: String,
}

impl StoredToken {
    /// Metadata without the sealed value.
    pub fn view(&self) -> TokenView<'_> {
        TokenView {
            connection: &self.connection,
            subject: &self.subject,
            scope: self.scope.as_deref(),
            has_refresh_token: self.has_refresh_token,
            expires_at: self.expires_at_ms.map(rfc3339),
            created_at: rfc3339(self.created_at_ms),
            updated_at: rfc3339(self.updated_at_ms),
        }
    }
}

/// A pending authorization.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingState {
    /// McpConnection name.
    pub connection: String,
    /// Who started it.
    pub subject: String,
    /// The PKCE verifier, sealed.
    pub sealed_verifier: String,
    /// The redirect URI sent with the authorization request (the token request repeats it).
    pub redirect_uri: String,
    /// Expiry, milliseconds since the epoch.
    pub expires_at_ms: i64,
}

const TOKEN_COLUMNS: &str =
    "connection, subject, sealed, has_refresh_token, scope, expires_at_ms, created_at_ms, updated_at_ms";

/// Stores a pending authorization under the hash of its state; forgets expired ones on the way.
pub async fn put_state(db: &Db, tenant: &str, state_hash: &str, pending: &PendingState) -> Result<(), sqlx::Error> {
    on_db!(db, pool => {
        sqlx::query("DELETE FROM mcp_oauth_states WHERE expires_at_ms < $1").bind(now_ms()).execute(pool).await?;
        sqlx::query(
            "INSERT INTO mcp_oauth_states (state_hash, tenant, connection, subject, sealed_verifier, redirect_uri, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(state_hash)
        .bind(tenant)
        .bind(pending.connection.as_str())
        .bind(pending.subject.as_str())
        .bind(pending.sealed_verifier.as_str())
        .bind(pending.redirect_uri.as_str())
        .bind(pending.expires_at_ms)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Takes a pending authorization: it is deleted in the same statement, so a
/// state is used at most once (also across replicas). Expired ones are
/// returned too (the caller tells the user it expired).
pub async fn take_state(db: &Db, tenant: &str, state_hash: &str) -> Result<Option<PendingState>, sqlx::Error> {
    Ok(on_db!(db, pool => {
        sqlx::query_as(
            "DELETE FROM mcp_oauth_states WHERE state_hash = $1 AND tenant = $2 \
             RETURNING connection, subject, sealed_verifier, redirect_uri, expires_at_ms",
        )
        .bind(state_hash)
        .bind(tenant)
        .fetch_optional(pool)
        .await?
    }))
}

/// Stores (or replaces) a user's tokens for a connection.
pub async fn upsert_token(db: &Db, tenant: &str, token: &StoredToken) -> Result<(), sqlx::Error> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO mcp_user_tokens (tenant, connection, subject, sealed, has_refresh_token, scope, expires_at_ms, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (tenant, connection, subject) DO UPDATE SET sealed = excluded.sealed, \
             has_refresh_token = excluded.has_refresh_token, scope = excluded.scope, \
             expires_at_ms = excluded.expires_at_ms, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(tenant)
        .bind(token.connection.as_str())
        .bind(token.subject.as_str())
        .bind(token.sealed.as_str())
        .bind(token.has_refresh_token)
        .bind(token.scope.as_deref())
        .bind(token.expires_at_ms)
        .bind(token.created_at_ms)
        .bind(token.updated_at_ms)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// A user's tokens for a connection.
pub async fn get_token(
    db: &Db,
    tenant: &str,
    connection: &str,
    subject: &str,
) -> Result<Option<StoredToken>, sqlx::Error> {
    Ok(on_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM mcp_user_tokens WHERE tenant = $1 AND connection = $2 AND subject = $3"
        )))
        .bind(tenant)
        .bind(connection)
        .bind(subject)
        .fetch_optional(pool)
        .await?
    }))
}

/// The subject whose tokens for `connection` were stored last, if any.
pub async fn latest_subject(db: &Db, tenant: &str, connection: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(on_db!(db, pool => {
        sqlx::query_scalar(
            "SELECT subject FROM mcp_user_tokens WHERE tenant = $1 AND connection = $2 \
             ORDER BY updated_at_ms DESC, subject LIMIT 1",
        )
        .bind(tenant)
        .bind(connection)
        .fetch_optional(pool)
        .await?
    }))
}

/// Stored tokens, optionally of one connection and/or one subject.
pub async fn list_tokens(
    db: &Db,
    tenant: &str,
    connection: Option<&str>,
    subject: Option<&str>,
) -> Result<Vec<StoredToken>, sqlx::Error> {
    Ok(on_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM mcp_user_tokens WHERE tenant = $1 \
             AND ($2 IS NULL OR connection = $2) AND ($3 IS NULL OR subject = $3) \
             ORDER BY connection, subject"
        )))
        .bind(tenant)
        .bind(connection)
        .bind(subject)
        .fetch_all(pool)
        .await?
    }))
}

/// Deletes a user's tokens for a connection; whether there were any.
pub async fn delete_token(db: &Db, tenant: &str, connection: &str, subject: &str) -> Result<bool, sqlx::Error> {
    let deleted = on_db!(db, pool => {
        sqlx::query("DELETE FROM mcp_user_tokens WHERE tenant = $1 AND connection = $2 AND subject = $3")
            .bind(tenant)
            .bind(connection)
            .bind(subject)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(deleted > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db(dir: &std::path::Path) -> Db {
        Db::sqlite(&dir.join("t.db")).await.expect("sqlite")
    }

    fn token(subject: &str, sealed: &str, updated: i64) -> StoredToken {
        StoredToken {
            connection: "gh".into(),
            subject: subject.into(),
            sealed: sealed.into(),
            has_refresh_token: true,
            scope: Some("repo".into()),
            expires_at_ms: Some(updated + 3_600_000),
            created_at_ms: updated,
            updated_at_ms: updated,
        }
    }

    #[tokio::test]
    async fn tokens_upsert_list_and_delete_per_tenant() {
        let dir = tempdir();
        let db = db(&dir).await;
        upsert_token(&db, "acme", &token("alice", "s1", 1)).await.expect("insert");
        upsert_token(&db, "acme", &token("bob", "s2", 2)).await.expect("insert");
        upsert_token(&db, "other", &token("alice", "s3", 3)).await.expect("insert");
        upsert_token(&db, "acme", &token("alice", "s4", 4)).await.expect("replace");
        let alice = get_token(&db, "acme", "gh", "alice").await.expect("get").expect("row");
        assert_eq!((alice.sealed.as_str(), alice.created_at_ms, alice.updated_at_ms), ("s4", 1, 4));
        assert!(alice.has_refresh_token);
        assert_eq!(latest_subject(&db, "acme", "gh").await.expect("latest").as_deref(), Some("alice"));
        let all = list_tokens(&db, "acme", None, None).await.expect("list");
        assert_eq!(all.iter().map(|t| t.subject.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!(list_tokens(&db, "acme", Some("gh"), Some("bob")).await.expect("list").len(), 1);
        assert!(list_tokens(&db, "acme", Some("other"), None).await.expect("list").is_empty());
        assert!(delete_token(&db, "acme", "gh", "alice").await.expect("delete"));
        assert!(!delete_token(&db, "acme", "gh", "alice").await.expect("delete again"));
        assert!(get_token(&db, "acme", "gh", "alice").await.expect("get").is_none());
        assert!(get_token(&db, "other", "gh", "alice").await.expect("get").is_some());
    }

    #[tokio::test]
    async fn a_state_is_taken_once() {
        let dir = tempdir();
        let db = db(&dir).await;
        let pending = PendingState {
            connection: "gh".into(),
            subject: "alice".into(),
            sealed_verifier: "v".into(),
            redirect_uri: "http://gw/cb".into(),
            expires_at_ms: now_ms() + 60_000,
        };
        put_state(&db, "acme", "h1", &pending).await.expect("put");
        assert!(take_state(&db, "other", "h1").await.expect("take").is_none(), "another tenant's state");
        assert_eq!(take_state(&db, "acme", "h1").await.expect("take"), Some(pending));
        assert!(take_state(&db, "acme", "h1").await.expect("take again").is_none());
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tg-mcp-tokens-{}", super::super::new_id()));
        std::fs::create_dir_all(&dir).expect("tempdir");
        dir
    }
}
