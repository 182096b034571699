//! API keys: `tg_<prefix>_<secret>`, made from the OS CSPRNG, shown once.
//! Only the prefix (to tell keys apart) and an HMAC-SHA256 of the whole key
//! with the tenant's pepper (from the `gateway-keys` Secret) are stored, so a
//! copy of the table alone does not let anyone check guesses.

use std::path::Path;

use serde::Serialize;
use tenantgate_crds::api_key::{self as format, PREFIX_BYTES, SECRET_BYTES};

use super::queries::rfc3339;
use super::records::{new_id, now_ms};
use super::{Db, on_db};

pub use tenantgate_crds::api_key::{KEY_PREFIX, key_prefix};

/// Why an API key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// No pepper: the `gateway-keys` Secret was not mounted.
    #[error("API keys are unavailable: the API-key pepper is not loaded")]
    NoPepper,
    /// The OS gave no randomness.
    #[error("no randomness available: {0}")]
    Random(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// The secret mixed into key hashes.
#[derive(Clone)]
pub struct Pepper(Vec<u8>);

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper(..)")
    }
}

/// Why there is no pepper.
#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    /// The file could not be read.
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    /// Too few bytes.
    #[error("the API-key pepper must hold at least 16 bytes")]
    TooShort,
    /// Too few bytes in the file.
    #[error("{0}: the API-key pepper must hold at least 16 bytes")]
    FileTooShort(String),
}

impl Pepper {
    /// Reads the pepper file: base64 (as the operator writes it), or raw bytes.
    pub fn from_file(path: &Path) -> Result<Self, PepperError> {
        let raw = std::fs::read(path).map_err(|e| PepperError::Read(path.display().to_string(), e))?;
        Self::from_bytes(&raw).map_err(|_| PepperError::FileTooShort(path.display().to_string()))
    }

    /// A pepper from the file's bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, PepperError> {
        format::pepper_bytes(raw).map(Self).ok_or(PepperError::TooShort)
    }

    /// The stored hash of a key: hex HMAC-SHA256.
    pub fn hash(&self, key: &str) -> String {
        format::hash(&self.0, key)
    }
}

/// A fresh key and its display prefix.
fn generate() -> Result<(String, String), ApiKeyError> {
    let (mut prefix, mut secret) = ([0u8; PREFIX_BYTES], [0u8; SECRET_BYTES]);
    getrandom::fill(&mut prefix)
        .and_then(|()| getrandom::fill(&mut secret))
        .map_err(|e| ApiKeyError::Random(e.to_string()))?;
    Ok(format::format_key(&prefix, &secret))
}

/// What a new key is for.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    /// A name to recognise it by.
    pub name: String,
    /// Roles it grants.
    pub roles: Vec<String>,
    /// When it stops working, milliseconds since the epoch.
    pub expires_at_ms: Option<i64>,
}

/// A stored key (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// Id.
    pub id: String,
    /// Display prefix.
    pub prefix: String,
    /// Name.
    pub name: String,
    /// Roles it grants.
    pub roles: Vec<String>,
    /// Created, milliseconds since the epoch.
    pub created_at_ms: i64,
    /// Who created it.
    pub created_by: String,
    /// Expiry, milliseconds since the epoch.
    pub expires_at_ms: Option<i64>,
    /// Revocation time.
    pub revoked_at_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    prefix: String,
    name: String,
    roles: String,
    created_at_ms: i64,
    created_by: String,
    expires_at_ms: Option<i64>,
    revoked_at_ms: Option<i64>,
}

impl From<KeyRow> for KeyRecord {
    fn from(r: KeyRow) -> Self {
        Self {
            id: r.id,
            prefix: r.prefix,
            name: r.name,
            roles: serde_json::from_str(&r.roles).unwrap_or_default(),
            created_at_ms: r.created_at_ms,
            created_by: r.created_by,
            expires_at_ms: r.expires_at_ms,
            revoked_at_ms: r.revoked_at_ms,
        }
    }
}

/// The JSON shape of a key in the admin API.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView<'a> {
    id: &'a str,
    name: &'a str,
    prefix: &'a str,
    roles: &'a [String],
    created_at: String,
    created_by: &'a str,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    state: &'static str,
    /// `admin`: minted through the admin API (an ApiKey object's key is `kubernetes`).
    origin: &'static str,
}

impl KeyRecord {
    /// `active`, `revoked` or `expired` at `now_ms`.
    pub fn state(&self, now_ms: i64) -> &'static str {
        if self.revoked_at_ms.is_some() {
            "revoked"
        } else if self.expires_at_ms.is_some_and(|e| e <= now_ms) {
            "expired"
        } else {
            "active"
        }
    }

    /// The admin API's view of the key.
    pub fn view(&self) -> KeyView<'_> {
        KeyView {
            id: &self.id,
            name: &self.name,
            prefix: &self.prefix,
            roles: &self.roles,
            created_at: rfc3339(self.created_at_ms),
            created_by: &self.created_by,
            expires_at: self.expires_at_ms.map(rfc3339),
            revoked_at: self.revoked_at_ms.map(rfc3339),
            state: self.state(now_ms()),
            origin: "admin",
        }
    }
}

/// A key just created: the only time its secret exists outside the caller.
#[derive(Debug)]
pub struct ApiKey {
    /// What is stored.
    pub record: KeyRecord,
    /// The whole key, to show once.
    pub key: String,
}

const COLUMNS: &str = "id, prefix, name, roles, created_at_ms, created_by, expires_at_ms, revoked_at_ms";

/// Creates a key of `tenant`.
pub async fn create(
    db: &Db,
    tenant: &str,
    pepper: &Pepper,
    new: NewApiKey,
    created_by: &str,
) -> Result<ApiKey, ApiKeyError> {
    let (key, prefix) = generate()?;
    let record = KeyRecord {
        id: new_id(),
        prefix,
        name: new.name,
        roles: new.roles,
        created_at_ms: now_ms(),
        created_by: created_by.to_owned(),
        expires_at_ms: new.expires_at_ms,
        revoked_at_ms: None,
    };
    let hash = pepper.hash(&key);
    let roles = serde_json::to_string(&record.roles).unwrap_or_else(|_| "[]".into());
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO api_keys (id, prefix, hash, name, roles, created_at_ms, created_by, expires_at_ms, tenant) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(record.id.as_str())
        .bind(record.prefix.as_str())
        .bind(hash.as_str())
        .bind(record.name.as_str())
        .bind(roles.as_str())
        .bind(record.created_at_ms)
        .bind(record.created_by.as_str())
        .bind(record.expires_at_ms)
        .bind(tenant)
        .execute(pool)
        .await?;
    });
    Ok(ApiKey { record, key })
}

/// Every key of `tenant`, newest first.
pub async fn list(db: &Db, tenant: &str) -> Result<Vec<KeyRecord>, sqlx::Error> {
    let rows: Vec<KeyRow> = on_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 ORDER BY created_at_ms DESC, id"
        )))
        .bind(tenant)
        .fetch_all(pool)
            .await?
    });
    Ok(rows.into_iter().map(KeyRecord::from).collect())
}

/// `tenant`'s key with this hash, if any.
pub async fn find_by_hash(db: &Db, tenant: &str, hash: &str) -> Result<Option<KeyRecord>, sqlx::Error> {
    let row: Option<KeyRow> = on_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM api_keys WHERE hash = $1 AND tenant = $2")))
            .bind(hash)
            .bind(tenant)
            .fetch_optional(pool)
            .await?
    });
    Ok(row.map(KeyRecord::from))
}

/// Revokes a key of `tenant` (once: a revoked key keeps its first revocation
/// time). `None` when the tenant has no such key.
pub async fn revoke(db: &Db, tenant: &str, id: &str, by: &str) -> Result<Option<KeyRecord>, sqlx::Error> {
    on_db!(db, pool => {
        sqlx::query(
            "UPDATE api_keys SET revoked_at_ms = $1, revoked_by = $2 \
             WHERE id = $3 AND tenant = $4 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms())
        .bind(by)
        .bind(id)
        .bind(tenant)
            .execute(pool)
            .await?;
    });
    let row: Option<KeyRow> = on_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1 AND tenant = $2")))
            .bind(id)
            .bind(tenant)
            .fetch_optional(pool)
            .await?
    });
    Ok(row.map(KeyRecord::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_well_formed_and_hashed_with_the_pepper() {
        let (a, prefix) = generate().expect("key");
        let (b, _) = generate().expect("key");
        assert_ne!(a, b);
        assert_eq!(key_prefix(&a), Some(prefix.as_str()));
        assert!(a.len() > 50, "{a}");
        assert_eq!(key_prefix("tg_zz_secret"), None);
        assert_eq!(key_prefix("eyJhbGciOi.x.y"), None);
        let p1 = Pepper::from_bytes(b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").expect("pepper");
        let p2 = Pepper::from_bytes(b"another pepper of enough bytes").expect("pepper");
        assert_eq!(p1.hash(&a), p1.hash(&a));
        assert_ne!(p1.hash(&a), p2.hash(&a));
        assert_eq!(p1.hash(&a).len(), 64);
        assert!(!p1.hash(&a).contains(&prefix));
        assert!(Pepper::from_bytes(b"short").is_err());
    }
}
