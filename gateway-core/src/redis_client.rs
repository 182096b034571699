//! The one place that turns `storage.redisUrlFile` (and `storage.redisCaFile`)
//! into a Redis client, shared by the rate limiter and the MCP session store.
//!
//! `redis://` is plain TCP. `rediss://` is TLS (rustls): the server's
//! certificate is verified against the system roots, or, when
//! `storage.redisCaFile` names a PEM file (the Tenant's
//! `storage.redis.caSecretRef`), against the CA certificates in it instead.
//! Errors never show the URL: it may hold a password.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use tenantgate_crds::config::StorageConfig;

/// Why the Redis settings are not usable.
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    /// A file could not be read.
    #[error("storage.{field}: cannot read {path}: {source}")]
    Read { field: &'static str, path: String, source: std::io::Error },
    /// The URL file is empty.
    #[error("storage.redisUrlFile: {0} is empty")]
    EmptyUrl(String),
    /// The URL does not parse (only the kind of problem is shown).
    #[error("storage.redisUrlFile: not a valid Redis URL ({0})")]
    BadUrl(String),
    /// The CA file holds no usable PEM certificate.
    #[error("storage.redisCaFile: {path} holds no valid PEM certificate{detail}")]
    BadCa { path: String, detail: String },
    /// The connection manager could not be set up.
    #[error("cannot set up the Redis connection: {0}")]
    Setup(String),
    /// A CA is configured but the URL is not TLS.
    #[error("storage.redisCaFile is set but the Redis URL is not rediss:// (TLS): use rediss:// or drop the CA")]
    CaWithoutTls,
}

/// The Redis the config names: its URL and the private CA to trust, if any.
pub struct RedisEndpoint {
    url: String,
    ca: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("tls", &self.is_tls())
            .field("ca_file", &self.ca.as_ref().map(|(p, _)| p))
            .finish_non_exhaustive()
    }
}

fn read(field: &'static str, path: &str) -> Result<Vec<u8>, RedisConfigError> {
    std::fs::read(path).map_err(|source| RedisConfigError::Read { field, path: path.to_owned(), source })
}

impl RedisEndpoint {
    /// Reads the URL and CA files `storage` names; `None` when it names no Redis.
    pub fn from_config(storage: &StorageConfig) -> Result<Option<Self>, RedisConfigError> {
        let Some(url_file) = storage.redis_url_file.as_deref() else { return Ok(None) };
        let url = String::from_utf8_lossy(&read("redisUrlFile", url_file)?).trim().to_owned();
        if url.is_empty() {
            return Err(RedisConfigError::EmptyUrl(url_file.to_owned()));
        }
        let ca = match storage.redis_ca_file.as_deref() {
            Some(path) => Some((path.to_owned(), read("redisCaFile", path)?)),
            None => None,
        };
        Ok(Some(Self { url, ca }))
    }

    /// An endpoint from a URL and optional CA PEM, without files (tests, tools).
    pub fn new(url: impl Into<String>, ca_pem: Option<Vec<u8>>) -> Self {
        Self { url: url.into(), ca: ca_pem.map(|pem| ("(inline)".to_owned(), pem)) }
    }

    /// Whether the URL asks for TLS.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    /// SHA-256 over the URL and the CA (never the URL itself: it may hold a
    /// password), to tell whether a reloaded config names the same Redis.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.url.as_bytes());
        if let Some((_, pem)) = &self.ca {
            h.update([0]);
            h.update(pem);
        }
        h.finalize().into()
    }

    /// The multiplexed connection every Redis user of the gateway holds: it
    /// connects on first use (or [`warm_up`]) and reconnects by itself;
    /// `connect` bounds a connection attempt (TLS handshake included),
    /// `respond` a command; one retry, 20 to 200 ms apart.
    pub fn connection(&self, connect: Duration, respond: Duration) -> Result<ConnectionManager, RedisConfigError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(respond))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        ConnectionManager::new_lazy_with_config(self.client()?, config)
            .map_err(|e| RedisConfigError::Setup(e.to_string()))
    }

    /// The client; it connects only when used.
    pub fn client(&self) -> Result<redis::Client, RedisConfigError> {
        crate::tls::ensure_crypto_provider();
        // The crate's parse errors do not echo the URL; say only what kind of problem it is.
        let bad_url = |e: redis::RedisError| RedisConfigError::BadUrl(format!("{:?}", e.kind()));
        let Some((path, pem)) = &self.ca else { return redis::Client::open(self.url.as_str()).map_err(bad_url) };
        if !self.is_tls() {
            return Err(RedisConfigError::CaWithoutTls);
        }
        check_pem(path, pem)?;
        let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
        redis::Client::build_with_tls(self.url.as_str(), certificates).map_err(|e| match e.kind() {
            // URL problems; certificate problems are I/O errors (their text holds no URL).
            redis::ErrorKind::InvalidClientConfig => bad_url(e),
            _ => RedisConfigError::BadCa { path: path.clone(), detail: format!(": {e}") },
        })
    }
}

/// Makes the first connection of `connection` (from [`RedisEndpoint::connection`])
/// and checks it with a `PING`, waiting at most `within`. A `rediss://`
/// connection costs a TLS handshake (and the crate loads the system roots),
/// longer than a rate-limit decision may wait: done ahead of the first
/// request, it does not count against that request, and a failure is
/// reported with its real cause (e.g. `invalid peer certificate: UnknownIssuer`).
pub async fn warm_up(mut connection: ConnectionManager, within: Duration) -> Result<(), WarmUpError> {
    let ping = async move { redis::cmd("PING").query_async::<String>(&mut connection).await };
    match tokio::time::timeout(within, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(WarmUpError::Redis(e)),
        Err(_) => Err(WarmUpError::Timeout(within)),
    }
}

/// Why the first connection to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum WarmUpError {
    /// Redis answered with an error, or the connection failed.
    #[error("{0}")]
    Redis(redis::RedisError),
    /// Nothing within the wait.
    #[error("no connection to Redis within {0:?}")]
    Timeout(Duration),
}

/// At least one certificate, and every PEM certificate block parses.
fn check_pem(path: &str, pem: &[u8]) -> Result<(), RedisConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |detail: String| RedisConfigError::BadCa { path: path.to_owned(), detail };
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| bad(format!(": {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad(String::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway self-signed CA (openssl, P-256), only parsed here.
    const CA: &str = concat!(
        "-----BEGIN CERTIFICATE-----\n",
        "MIIBjzCCATagAwIBAgITNFIrTJWKR6o/pkzOfUXJWER6ZTAKBggqhkjOPQQDAjAd\n",
        "MRswGQYDVQQDDBJ0ZW5hbnRnYXRlLXRlc3QtY2EwIBcNMjYxMTIyMDY0NDQ3WhgP\n",
        "MjEyNjEwMjkwNjQ0NDdaMB0xGzAZBgNVBAMMEnRlbmFudGdhdGUtdGVzdC1jYTBZ\n",
        "MBMGByqGSM49AgEGCCqGSM49AwEHA0IABObMWBnG+cpu8UeFIMnhnzaKwWcH0S44\n",
        "P5nbXWDH9B40n7joGpWUDXKBlMvqJfqD/q4Q2qCVon/FhjxouIIlkBSjUzBRMB0G\n",
        "A1UdDgQWBBSmX03smG6WCCa1xQ9AtHJe6HOn2zAfBgNVHSMEGDAWgBSmX03smG6W\n",
        "CCa1xQ9AtHJe6HOn2zAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQC\n",
        "IFw49D2+IQdU12b0+C/wHOlUUGeTOOPMpqzIIdnyfHt0AiB9pzaELqGm2pCr40dM\n",
        "8zNbViL6Cock5QbMIgStbOkdTQ==\n",
        "-----END CERTIFICATE-----\n",
    );

    #[test]
    fn plain_and_tls_urls_build_clients() {
        assert!(RedisEndpoint::new("redis://127.0.0.1:6379/0", None).client().is_ok());
        let tls = RedisEndpoint::new("rediss://:pw@127.0.0.1:6380/0", None);
        assert!(tls.is_tls());
        assert!(tls.client().is_ok());
    }

    #[test]
    fn a_ca_needs_a_tls_url_and_a_certificate() {
        let e = RedisEndpoint::new("redis://:hunter2@127.0.0.1:6379", Some(CA.into())).client().expect_err("plain");
        assert!(matches!(e, RedisConfigError::CaWithoutTls), "{e}");
        assert!(!e.to_string().contains("hunter2"));
        let e = RedisEndpoint::new("rediss://:hunter2@127.0.0.1:6379", Some(b"not a cert".to_vec()))
            .client()
            .expect_err("no PEM");
        assert!(matches!(e, RedisConfigError::BadCa { .. }), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn the_url_is_not_echoed_in_errors_or_debug() {
        let e = RedisEndpoint::new("redis://:hunter2@[::1", None).client().expect_err("broken URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let debug = format!("{:?}", RedisEndpoint::new("rediss://:hunter2@h:1", None));
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn the_fingerprint_follows_url_and_ca() {
        let a = RedisEndpoint::new("rediss://h:1", None).fingerprint();
        assert_eq!(a, RedisEndpoint::new("rediss://h:1", None).fingerprint());
        assert_ne!(a, RedisEndpoint::new("rediss://h:2", None).fingerprint());
        assert_ne!(a, RedisEndpoint::new("rediss://h:1", Some(CA.into())).fingerprint());
    }

    #[test]
    fn files_are_read_and_named_in_errors() {
        let dir = std::env::temp_dir().join(format!("tg-redis-client-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let url_file = dir.join("url");
        std::fs::write(&url_file, " \n").expect("write");
        let mut storage = StorageConfig {
            redis_url_file: Some(url_file.display().to_string()),
            redis_ca_file: Some(dir.join("missing-ca").display().to_string()),
            database_ca_file: None,
            database: tenantgate_crds::config::DatabaseConfig::SqlitePath("x".into()),
        };
        let e = RedisEndpoint::from_config(&storage).expect_err("empty URL");
        assert!(matches!(e, RedisConfigError::EmptyUrl(_)), "{e}");
        std::fs::write(&url_file, "rediss://127.0.0.1:1\n").expect("write");
        let e = RedisEndpoint::from_config(&storage).expect_err("missing CA");
        assert!(e.to_string().starts_with("storage.redisCaFile: cannot read"), "{e}");
        storage.redis_ca_file = None;
        let endpoint = RedisEndpoint::from_config(&storage).expect("reads").expect("configured");
        assert!(endpoint.is_tls());
        storage.redis_url_file = None;
        assert!(RedisEndpoint::from_config(&storage).expect("reads").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
