//! Verification keys: a JWKS from the identity provider or a mounted file, or
//! an HMAC secret. Keys are refreshed on an unknown `kid` at most once per
//! interval, and the last good set is served while the source is down.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

const RSA_ALGS: &[Algorithm] =
    &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];
const HMAC_ALGS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// One verification key and the algorithms it may verify.
#[derive(Clone)]
pub struct VerifyKey {
    /// `kid`, when the JWK has one.
    pub kid: Option<String>,
    /// The key.
    pub key: DecodingKey,
    /// Algorithms allowed with this key: never `none`, never HMAC for a public key.
    pub algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("algorithms", &self.algorithms).finish()
    }
}

/// Why keys could not be loaded or a key was skipped.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The document is not a JWKS.
    #[error("not a JWKS document: {0}")]
    NotJwks(serde_json::Error),
    /// Every key of the JWKS was skipped.
    #[error("the JWKS has no usable signing key")]
    NoUsableKey,
    /// The HMAC secret is too short to be safe.
    #[error("the HMAC secret must be at least 32 bytes")]
    ShortSecret,
    /// The key's `use` is not `sig`.
    #[error("key is not for signatures")]
    NotForSignatures,
    /// An elliptic curve other than P-256/P-384.
    #[error("unsupported curve {0}")]
    Curve(String),
    /// An `oct` key in a JWKS.
    #[error("symmetric keys are not accepted in a JWKS")]
    Symmetric,
    /// An `alg` this gateway does not verify.
    #[error("unsupported algorithm {0}")]
    Algorithm(String),
    /// An `alg` of another key family.
    #[error("algorithm {0} does not fit the key type")]
    AlgorithmMismatch(String),
    /// The key material does not parse.
    #[error("invalid key: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    /// The identity provider did not answer.
    #[error("fetching the JWKS failed: {0}")]
    Fetch(reqwest::Error),
    /// The identity provider answered with an error status.
    #[error("fetching the JWKS failed: HTTP {0}")]
    Status(reqwest::StatusCode),
    /// The body could not be read.
    #[error("reading the JWKS failed: {0}")]
    Body(reqwest::Error),
    /// A mounted key file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A mounted key file holds no usable key.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        source: Box<KeyError>,
    },
}

/// A loaded set of keys.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    /// The key for a token's `kid` (a token without `kid` needs a set of one key).
    pub fn find(&self, kid: Option<&str>) -> Option<&VerifyKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    /// Parses a JWKS document; keys of unsupported types are skipped with a log line.
    pub fn from_jwks(text: &[u8]) -> Result<Self, KeyError> {
        let set: JwkSet = serde_json::from_slice(text).map_err(KeyError::NotJwks)?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            match verify_key(jwk) {
                Ok(k) => keys.push(k),
                Err(why) => tracing::warn!(kid = ?jwk.common.key_id, %why, "skipping JWKS key"),
            }
        }
        if keys.is_empty() {
            return Err(KeyError::NoUsableKey);
        }
        Ok(Self { keys })
    }

    /// A shared HMAC secret (HS256/384/512 only).
    pub fn from_hmac_secret(secret: &[u8]) -> Result<Self, KeyError> {
        let secret = secret.strip_suffix(b"\n").unwrap_or(secret);
        if secret.len() < 32 {
            return Err(KeyError::ShortSecret);
        }
        Ok(Self {
            keys: vec![VerifyKey { kid: None, key: DecodingKey::from_secret(secret), algorithms: HMAC_ALGS.to_vec() }],
        })
    }
}

fn verify_key(jwk: &Jwk) -> Result<VerifyKey, KeyError> {
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
        return Err(KeyError::NotForSignatures);
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS.to_vec(),
        AlgorithmParameters::EllipticCurve(ec) => match &ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            other => return Err(KeyError::Curve(format!("{other:?}"))),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        AlgorithmParameters::OctetKey(_) => return Err(KeyError::Symmetric),
    };
    let algorithms = match &jwk.common.key_algorithm {
        // A key that names its algorithm verifies only that one.
        Some(named) => {
            let name = serde_json::to_value(named).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            let alg = Algorithm::from_str(&name).map_err(|_| KeyError::Algorithm(name.clone()))?;
            if !family.contains(&alg) {
                return Err(KeyError::AlgorithmMismatch(name));
            }
            vec![alg]
        }
        None => family,
    };
    let key = DecodingKey::from_jwk(jwk).map_err(KeyError::Invalid)?;
    Ok(VerifyKey { kid: jwk.common.key_id.clone(), key, algorithms })
}

/// Where keys come from.
#[derive(Debug)]
enum Origin {
    Uri { url: String, client: reqwest::Client },
    JwksFile(PathBuf),
    HmacFile(PathBuf),
}

/// A refreshable source of keys.
#[derive(Debug)]
pub struct KeySource {
    origin: Origin,
    current: ArcSwapOption<KeySet>,
    /// Time of the last refresh attempt; the lock makes refreshes single-flight
    /// and is only taken on the refresh path, never while verifying.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    min_refresh: Duration,
}

impl KeySource {
    /// Keys from the identity provider.
    pub fn uri(url: String, client: reqwest::Client, min_refresh: Duration) -> Self {
        Self::new(Origin::Uri { url, client }, min_refresh)
    }

    /// Keys from a mounted JWKS file.
    pub fn jwks_file(path: PathBuf, min_refresh: Duration) -> Self {
        Self::new(Origin::JwksFile(path), min_refresh)
    }

    /// A shared HMAC secret from a mounted file.
    pub fn hmac_file(path: PathBuf, min_refresh: Duration) -> Self {
        Self::new(Origin::HmacFile(path), min_refresh)
    }

    fn new(origin: Origin, min_refresh: Duration) -> Self {
        Self { origin, current: ArcSwapOption::empty(), last_refresh: tokio::sync::Mutex::new(None), min_refresh }
    }

    /// Whether HMAC algorithms are allowed (only with a shared secret).
    pub fn is_hmac(&self) -> bool {
        matches!(self.origin, Origin::HmacFile(_))
    }

    /// Whether a key set is loaded.
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// The current set, if any.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Loads the keys now. On failure the previous set stays.
    pub async fn load(&self) -> Result<(), KeyError> {
        let read = |path: &PathBuf| {
            let path = path.display().to_string();
            async move { tokio::fs::read(&path).await.map_err(|source| KeyError::Read { path, source }) }
        };
        let in_file = |path: &PathBuf| {
            let path = path.display().to_string();
            move |e| KeyError::File { path, source: Box::new(e) }
        };
        let loaded = match &self.origin {
            Origin::Uri { url, client } => {
                let response = client.get(url).send().await.map_err(KeyError::Fetch)?;
                if !response.status().is_success() {
                    return Err(KeyError::Status(response.status()));
                }
                let body = response.bytes().await.map_err(KeyError::Body)?;
                KeySet::from_jwks(&body)
            }
            Origin::JwksFile(path) => KeySet::from_jwks(&read(path).await?).map_err(in_file(path)),
            Origin::HmacFile(path) => KeySet::from_hmac_secret(&read(path).await?).map_err(in_file(path)),
        }?;
        self.current.store(Some(Arc::new(loaded)));
        Ok(())
    }

    /// Reloads the keys unless that was tried within the refresh interval.
    /// Returns whether a reload happened.
    pub async fn refresh(&self) -> bool {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return false;
        }
        *last = Some(Instant::now());
        match self.load().await {
            Ok(()) => true,
            Err(e) => {
                // The stale set keeps serving while the source is down.
                tracing::warn!(error = %e, "refreshing token keys failed; keeping the previous keys");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::routing::get;

    use super::*;

    const JWKS: &str = r#"{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"k1","n":"31KW0mtK2IzPNoKmbSVN5_pOv1QhQwkH--IQ6nx7o6hEoVGQoO6xETAloWepYElhXe4BkYBo8aQFftxzBnzSjsANd7yzVlg1oFDVpLJ07dR-MQ0TiCYI-KJ7aURb0JrKHOdr8odVk4BebtFoTGTjhu_raEw0TQ0_Ae1Jgdz3YM7i77hA0Hbd4F8ptrkJ7ZOELrbq_lFkH_wNMD3dn_tSJ5T2FoExaw2xGPjL3bP1iTvLibuED1M6yD99msSlpU-lqY_FH_CR4JSvStkXjQ0W_JbBZFBmfLlWQelx-p47C-AZLwkLz19BaCbV9SFu58ve0zef8Ti3-h5IQet-M9JICQ","e":"AQAB"}]}"#;

    #[test]
    fn jwks_keys_verify_only_their_algorithm_and_symmetric_keys_are_refused() {
        let set = KeySet::from_jwks(JWKS.as_bytes()).expect("jwks");
        let key = set.find(Some("k1")).expect("k1");
        assert_eq!(key.algorithms, [Algorithm::RS256]);
        assert!(set.find(Some("other")).is_none());
        assert!(set.find(None).is_some(), "a single key serves tokens without kid");
        assert!(KeySet::from_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(KeySet::from_hmac_secret(b"short").is_err());
    }

    #[tokio::test]
    async fn uri_keys_refresh_at_most_once_per_interval_and_stay_when_the_idp_is_down() {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = Router::new().route(
            "/jwks",
            get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        (http::StatusCode::OK, JWKS)
                    } else {
                        (http::StatusCode::BAD_GATEWAY, "down")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let source = KeySource::uri(format!("http://{addr}/jwks"), reqwest::Client::new(), Duration::from_millis(200));
        source.load().await.expect("first load");
        assert!(source.is_loaded());
        assert!(source.refresh().await, "first refresh runs");
        assert!(!source.refresh().await, "a second refresh within the interval is skipped");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!source.refresh().await, "the IdP is down");
        assert!(source.current().and_then(|s| s.find(Some("k1")).map(|_| ())).is_some(), "stale keys are served");
    }
}
