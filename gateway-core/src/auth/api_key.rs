//! API-key authentication: `Authorization: Bearer tg_<prefix>_<secret>`.
//! A key declared as an ApiKey object is found by its SHA-256 in the
//! config in force ([`super::DeclaredKeys`]); any other is looked up in the
//! database of admin-minted keys by the same hash, with a short cache of answers
//! (found and not found), so a revocation on any replica takes effect here
//! within [`CACHE_TTL`] and a flood of bad keys costs one query each per TTL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use super::{AuthError, Identity};
use crate::storage::{Db, KeyRecord, Pepper, api_keys, now_ms};
use tenantgate_crds::api_key::declared_hash;

/// How long an answer from the database is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// How long a found key is still accepted when the database cannot be asked.
const STALE_TTL: Duration = Duration::from_secs(60);
const CACHE_ENTRIES: usize = 10_000;
/// Longest a request waits for a lookup before the cached answer (or an error) is used.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

/// Looks keys up, with a short cache.
#[derive(Debug)]
pub struct ApiKeyVerifier {
    /// Peppered hash -> when it was looked up, and what was found.
    cache: Cache<String, (Instant, Option<Arc<KeyRecord>>)>,
}

impl Default for ApiKeyVerifier {
    fn default() -> Self {
        Self { cache: Cache::new(CACHE_ENTRIES) }
    }
}

/// Whether a bearer token is an API key rather than a JWT.
pub fn is_api_key(token: &str) -> bool {
    token.starts_with(api_keys::KEY_PREFIX)
}

impl ApiKeyVerifier {
    /// The identity an API key proves.
    pub async fn verify(
        &self,
        db: &Db,
        tenant: &str,
        pepper: Option<&Pepper>,
        admin_roles: &[String],
        token: &str,
    ) -> Result<Arc<Identity>, AuthError> {
        let prefix = api_keys::key_prefix(token).ok_or(AuthError::UnknownApiKey)?;
        let pepper = pepper.ok_or(AuthError::ApiKeysUnavailable)?;
        let hash = pepper.hash(token);
        let cached = self.cache.get(&hash);
        let record = match cached {
            Some((at, record)) if at.elapsed() < CACHE_TTL => record,
            stale => match tokio::time::timeout(LOOKUP_TIMEOUT, api_keys::find_by_hash(db, tenant, &hash))
                .await
                .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut))
            {
                Ok(found) => {
                    let found = found.map(Arc::new);
                    self.cache.insert(hash, (Instant::now(), found.clone()));
                    found
                }
                Err(e) => match stale {
                    Some((at, Some(record))) if at.elapsed() < STALE_TTL => {
                        tracing::warn!(error = %e, "API-key lookup failed; using the cached answer");
                        Some(record)
                    }
                    _ => {
                        tracing::warn!(error = %e, "API-key lookup failed");
                        return Err(AuthError::ApiKeysUnavailable);
                    }
                },
            },
        };
        let record = record.ok_or(AuthError::UnknownApiKey)?;
        if record.revoked_at_ms.is_some() {
            return Err(AuthError::RevokedApiKey);
        }
        if record.expires_at_ms.is_some_and(|e| e <= now_ms()) {
            return Err(AuthError::ExpiredApiKey);
        }
        let admin_roles: HashSet<&str> = admin_roles.iter().map(String::as_str).collect();
        Ok(Arc::new(Identity {
            subject: format!("apikey:{prefix}"),
            admin: record.roles.iter().any(|r| admin_roles.contains(r.as_str())),
            roles: record.roles.clone(),
            expires_at: record.expires_at_ms.map_or(u64::MAX, |ms| u64::try_from(ms / 1000).unwrap_or(0)),
            allowed_models: Vec::new(),
            api_key: Some(record.id.clone()),
            team: None,
        }))
    }

    /// Forgets what is cached (after a revocation on this replica).
    pub fn clear(&self) {
        self.cache.clear();
    }
}

/// Checks an API key presented from `client` for the tenant in force, when API
/// keys are enabled: a declared key first (in memory), else an admin-minted one.
pub async fn verify(
    storage: &crate::storage::Storage,
    runtime: &crate::config::Runtime,
    token: &str,
    client: Option<std::net::IpAddr>,
) -> Result<Arc<Identity>, AuthError> {
    if !runtime.config.auth.api_keys_enabled {
        return Err(AuthError::ApiKeysDisabled);
    }
    if !runtime.declared_keys.is_empty()
        && api_keys::key_prefix(token).is_some()
        && let Some(verdict) = runtime.declared_keys.check(&declared_hash(token), client, now_ms())
    {
        return verdict;
    }
    let tenant = &runtime.config.tenant.name;
    let admin_roles = &runtime.config.auth.admin_roles;
    storage.api_keys.verify(&storage.db, tenant, storage.pepper.as_ref(), admin_roles, token).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{NewApiKey, api_keys::create, api_keys::revoke};

    #[tokio::test]
    async fn keys_prove_their_identity_until_revoked_or_expired() {
        let dir = std::env::temp_dir().join(format!("tg-apikey-{}-{}", std::process::id(), fastrand::u64(..)));
        let db = Db::sqlite(&dir.join("gateway.db")).await.expect("sqlite");
        let pepper = Pepper::from_bytes(b"a pepper long enough for tests").expect("pepper");
        let admin_roles = vec!["tenant-admin".to_string()];
        let new = |roles: &[&str], expires_at_ms| NewApiKey {
            name: "k".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            expires_at_ms,
        };
        let verifier = ApiKeyVerifier::default();
        let key = create(&db, "t", &pepper, new(&["tenant-admin", "dev"], None), "alice").await.expect("create");

        let id = verifier.verify(&db, "t", Some(&pepper), &admin_roles, &key.key).await.expect("valid");
        assert_eq!(id.subject, format!("apikey:{}", key.record.prefix));
        assert_eq!(id.roles, ["tenant-admin", "dev"]);
        assert!(id.admin);
        assert_eq!(verifier.verify(&db, "t", None, &admin_roles, &key.key).await, Err(AuthError::ApiKeysUnavailable));

        // Another pepper (another tenant) does not know the key.
        let other = Pepper::from_bytes(b"another pepper, another tenant").expect("pepper");
        assert_eq!(
            verifier.verify(&db, "t", Some(&other), &admin_roles, &key.key).await,
            Err(AuthError::UnknownApiKey)
        );
        let forged = format!("{}x", key.key);
        assert_eq!(
            verifier.verify(&db, "t", Some(&pepper), &admin_roles, &forged).await,
            Err(AuthError::UnknownApiKey)
        );
        assert_eq!(
            verifier.verify(&db, "t", Some(&pepper), &admin_roles, "tg_bad").await,
            Err(AuthError::UnknownApiKey)
        );

        // Another tenant sharing the database can neither revoke nor use it.
        assert!(revoke(&db, "u", &key.record.id, "mallory").await.expect("revoke").is_none());
        let other_tenant = ApiKeyVerifier::default();
        assert_eq!(
            other_tenant.verify(&db, "u", Some(&pepper), &admin_roles, &key.key).await,
            Err(AuthError::UnknownApiKey)
        );
        revoke(&db, "t", &key.record.id, "alice").await.expect("revoke").expect("found");
        verifier.clear();
        assert_eq!(
            verifier.verify(&db, "t", Some(&pepper), &admin_roles, &key.key).await,
            Err(AuthError::RevokedApiKey)
        );

        let soon = create(&db, "t", &pepper, new(&["dev"], Some(now_ms() + 300)), "alice").await.expect("create");
        let id = verifier.verify(&db, "t", Some(&pepper), &admin_roles, &soon.key).await.expect("valid");
        assert!(!id.admin);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            verifier.verify(&db, "t", Some(&pepper), &admin_roles, &soon.key).await,
            Err(AuthError::ExpiredApiKey)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
