//! JWT verification with a cache of verified tokens, so the signature check
//! (an RSA verify costs tens of microseconds) is paid once per token.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use quick_cache::sync::Cache;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tenantgate_crds::config::JwtConfig;

use super::keys::KeySource;
use super::{AuthError, Identity};

/// Verified tokens kept at most (each entry is a few hundred bytes).
const CACHE_ENTRIES: usize = 10_000;

/// Where a token is presented, which decides the audience it must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The API (chat, models, admin): one of the tenant's `audiences`.
    Api,
    /// `/mcp`: the tenant's MCP resource identifier when it has one (RFC 8707), else as [`Self::Api`].
    Mcp,
}

/// Checks bearer tokens against one tenant's issuer, audiences and keys.
#[derive(Debug)]
pub struct JwtVerifier {
    issuer: String,
    audiences: Vec<String>,
    /// The resource identifier tokens for `/mcp` must name.
    mcp_resource: Option<String>,
    leeway: u64,
    roles_claim: String,
    team_claim: Option<String>,
    admin_roles: HashSet<String>,
    keys: Arc<KeySource>,
    /// SHA-256 of the token -> the identity it proved, until `exp`.
    cache: Cache<[u8; 32], Verified>,
}

/// A token that verified, and which audiences it names.
#[derive(Debug, Clone)]
struct Verified {
    identity: Arc<Identity>,
    /// One of the configured `audiences`.
    for_api: bool,
    /// The MCP resource identifier.
    for_mcp: bool,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(flatten)]
    other: Map<String, Value>,
}

impl JwtVerifier {
    /// A verifier for `config`, with keys from `keys`; `admin_roles` open the admin API.
    pub fn new(config: &JwtConfig, admin_roles: &[String], keys: Arc<KeySource>) -> Self {
        Self {
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            mcp_resource: None,
            leeway: u64::from(config.leeway_seconds),
            roles_claim: config.roles_claim.clone(),
            team_claim: config.team_claim.clone(),
            admin_roles: admin_roles.iter().cloned().collect(),
            keys,
            cache: Cache::new(CACHE_ENTRIES),
        }
    }

    /// Tokens for `/mcp` ([`Audience::Mcp`]) must name `resource` in their `aud`.
    pub fn with_mcp_resource(mut self, resource: Option<String>) -> Self {
        self.mcp_resource = resource;
        self
    }

    /// The key source (for readiness).
    pub fn keys(&self) -> &KeySource {
        &self.keys
    }

    /// The identity a token for the API proves.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        self.verify_for(token, Audience::Api).await
    }

    /// The identity a token proves where it is presented (`audience`).
    pub async fn verify_for(&self, token: &str, audience: Audience) -> Result<Arc<Identity>, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_secs();
        let verified = match self.cache.get(&digest) {
            Some(v) if v.identity.expires_at.saturating_add(self.leeway) > now => v,
            cached => {
                if cached.is_some() {
                    self.cache.remove(&digest);
                }
                let verified = self.verify_uncached(token).await?;
                if verified.identity.expires_at > now {
                    self.cache.insert(digest, verified.clone());
                }
                verified
            }
        };
        match (audience, &self.mcp_resource) {
            (Audience::Mcp, Some(resource)) if !verified.for_mcp => Err(AuthError::WrongResource(resource.clone())),
            (Audience::Mcp, Some(_)) => Ok(verified.identity),
            _ if !verified.for_api => Err(AuthError::WrongAudience),
            _ => Ok(verified.identity),
        }
    }

    async fn verify_uncached(&self, token: &str) -> Result<Verified, AuthError> {
        // `decode_header` refuses `alg: none` and unknown algorithms.
        let header = jsonwebtoken::decode_header(token).map_err(|_| match header_alg(token) {
            Some(_) => AuthError::Malformed("algorithm is not allowed"),
            None => AuthError::Malformed("not a well-formed JWT"),
        })?;
        let hmac = matches!(header.alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        if hmac != self.keys.is_hmac() {
            // Algorithm confusion: an HMAC token against public keys, or the reverse.
            return Err(AuthError::Malformed("algorithm is not allowed"));
        }
        let kid = header.kid.as_deref();
        match self.verify_with_current_keys(token, kid, header.alg) {
            Err(AuthError::UnknownKey | AuthError::KeysUnavailable) if self.keys.refresh().await => {
                self.verify_with_current_keys(token, kid, header.alg)
            }
            Err(AuthError::BadSignature) if self.keys.is_hmac() && self.keys.refresh().await => {
                // The shared secret may have rotated.
                self.verify_with_current_keys(token, kid, header.alg)
            }
            other => other,
        }
    }

    fn verify_with_current_keys(&self, token: &str, kid: Option<&str>, alg: Algorithm) -> Result<Verified, AuthError> {
        let set = self.keys.current().ok_or(AuthError::KeysUnavailable)?;
        let key = set.find(kid).ok_or(AuthError::UnknownKey)?;
        if !key.algorithms.contains(&alg) {
            return Err(AuthError::Malformed("algorithm is not allowed for this key"));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        // Either audience passes here; `verify_for` asks for the one its endpoint needs.
        let mut audiences: Vec<&str> = self.audiences.iter().map(String::as_str).collect();
        audiences.extend(self.mcp_resource.as_deref());
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) => AuthError::BadClaims(format!("missing claim {c}")),
            ErrorKind::InvalidAlgorithm => AuthError::Malformed("algorithm is not allowed for this key"),
            ErrorKind::Json(_) => AuthError::BadClaims("claims have the wrong types".into()),
            _ => AuthError::Malformed("not a well-formed JWT"),
        })?;
        let claims = data.claims;
        let named = strings(claims.other.get("aud"));
        let for_api = named.iter().any(|a| self.audiences.contains(a));
        let for_mcp = self.mcp_resource.as_ref().is_some_and(|r| named.contains(r));
        let roles = strings(claims.other.get(&self.roles_claim));
        let admin = roles.iter().any(|r| self.admin_roles.contains(r));
        let team = self.team_claim.as_ref().and_then(|c| team(claims.other.get(c)));
        let identity = Identity {
            team,
            subject: claims.sub.unwrap_or_default(),
            roles,
            admin,
            expires_at: claims.exp,
            allowed_models: Vec::new(),
            api_key: None,
        };
        Ok(Verified { identity: Arc::new(identity), for_api, for_mcp })
    }
}

/// The `alg` of a token whose header jsonwebtoken refused (`none`, unknown algorithms).
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let segment = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()?;
    let header: Value = serde_json::from_slice(&bytes).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

/// Roles (or audiences) from an array of strings or a space-separated string.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// A team claim: a string, or the first string of a list.
fn team(value: Option<&Value>) -> Option<String> {
    let name = match value? {
        Value::Array(items) => items.iter().find_map(Value::as_str)?,
        Value::String(s) => s,
        _ => return None,
    };
    Some(name.trim()).filter(|t| !t.is_empty()).map(str::to_owned)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use tenantgate_crds::config::JwtKeys;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn config() -> JwtConfig {
        JwtConfig {
            issuer: "https://issuer.test".into(),
            audiences: vec!["tenantgate".into()],
            keys: JwtKeys::HmacSecretFile(String::new()),
            roles_claim: "roles".into(),
            team_claim: None,
            leeway_seconds: 0,
        }
    }

    async fn verifier() -> (JwtVerifier, tempfile_path::TempPath) {
        let path = tempfile_path::TempPath::new("hmac");
        std::fs::write(&path.0, SECRET).expect("write secret");
        let keys = Arc::new(KeySource::hmac_file(path.0.clone(), Duration::from_secs(30)));
        keys.load().await.expect("keys load");
        (JwtVerifier::new(&config(), &["tenant-admin".into()], keys), path)
    }

    fn token(claims: Value, alg: Algorithm) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET)).expect("encode")
    }

    fn claims(extra: Value) -> Value {
        let mut base = json!({"iss": "https://issuer.test", "aud": "tenantgate", "sub": "alice", "exp": now_secs() + 600, "roles": ["tenant-admin", "dev"]});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        base
    }

    #[tokio::test]
    async fn valid_token_yields_identity_and_is_cached() {
        let (v, _p) = verifier().await;
        let t = token(claims(json!({})), Algorithm::HS256);
        let id = v.verify(&t).await.expect("valid");
        assert_eq!(id.subject, "alice");
        assert!(id.admin);
        assert_eq!(id.roles, ["tenant-admin", "dev"]);
        assert!(Arc::ptr_eq(&id, &v.verify(&t).await.expect("cached")));
    }

    #[tokio::test]
    async fn the_team_claim_names_the_team_and_roles_name_it_only_without_one() {
        let path = tempfile_path::TempPath::new("hmac-team");
        std::fs::write(&path.0, SECRET).expect("write secret");
        let keys = Arc::new(KeySource::hmac_file(path.0.clone(), Duration::from_secs(30)));
        keys.load().await.expect("keys load");
        let v = JwtVerifier::new(&JwtConfig { team_claim: Some("team".into()), ..config() }, &[], keys);
        let team = |c| async { v.verify(&token(claims(c), Algorithm::HS256)).await.expect("valid").team.clone() };
        assert_eq!(team(json!({"team": "search ranking"})).await.as_deref(), Some("search ranking"), "a whole string");
        assert_eq!(team(json!({"team": ["ml", "infra"]})).await.as_deref(), Some("ml"), "a list: its first entry");
        assert_eq!(team(json!({"team": 7})).await, None);
        assert_eq!(team(json!({})).await, None);
        let (plain, _p) = verifier().await;
        let id = plain.verify(&token(claims(json!({"team": "ml"})), Algorithm::HS256)).await.expect("valid");
        assert_eq!(id.team, None, "no teamClaim configured");
        let by_role = Arc::new(Identity::with_roles("a", &["dev", "team:infra"])).with_team_from_roles(Some("team:"));
        assert_eq!(by_role.team.as_deref(), Some("infra"));
        let claimed = Arc::new(Identity { team: Some("ml".into()), ..Identity::with_roles("a", &["team:infra"]) });
        assert_eq!(claimed.with_team_from_roles(Some("team:")).team.as_deref(), Some("ml"), "the claim wins");
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_with_their_reason() {
        let (v, _p) = verifier().await;
        let cases = [
            (claims(json!({"exp": now_secs() - 10})), AuthError::Expired),
            (claims(json!({"nbf": now_secs() + 100})), AuthError::NotYetValid),
            (claims(json!({"iss": "https://evil.test"})), AuthError::WrongIssuer),
            (claims(json!({"aud": "other"})), AuthError::WrongAudience),
        ];
        for (c, expected) in cases {
            assert_eq!(v.verify(&token(c, Algorithm::HS256)).await, Err(expected));
        }
        let forged = encode(&Header::new(Algorithm::HS256), &claims(json!({})), &EncodingKey::from_secret(b"x"))
            .expect("encode");
        assert_eq!(v.verify(&forged).await, Err(AuthError::BadSignature));
        // alg=none: header {"alg":"none"}, no signature.
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", b64(&claims(json!({}))));
        assert_eq!(v.verify(&none).await, Err(AuthError::Malformed("algorithm is not allowed")));
        assert!(matches!(v.verify("garbage").await, Err(AuthError::Malformed(_))));
    }

    #[tokio::test]
    async fn tokens_on_mcp_must_name_the_resource_and_api_tokens_an_audience() {
        const RESOURCE: &str = "https://gw.example/mcp";
        let (plain, _p) = verifier().await;
        let (bound, _q) = verifier().await;
        let bound = bound.with_mcp_resource(Some(RESOURCE.into()));
        let api_only = token(claims(json!({})), Algorithm::HS256);
        let mcp_only = token(claims(json!({"aud": RESOURCE})), Algorithm::HS256);
        let both = token(claims(json!({"aud": ["tenantgate", RESOURCE]})), Algorithm::HS256);

        assert!(bound.verify_for(&api_only, Audience::Api).await.is_ok());
        let refused = bound.verify_for(&api_only, Audience::Mcp).await.expect_err("not for the MCP resource");
        assert_eq!(refused, AuthError::WrongResource(RESOURCE.into()));
        let message = refused.to_string();
        assert!(message.contains(RESOURCE) && message.contains("aud") && !message.contains(&api_only), "{message}");
        assert_eq!(refused.as_reason(), "WrongResource");

        assert!(bound.verify_for(&mcp_only, Audience::Mcp).await.is_ok());
        // The cached verification still holds the API to its own audiences.
        assert_eq!(bound.verify_for(&mcp_only, Audience::Api).await, Err(AuthError::WrongAudience));
        assert!(bound.verify_for(&both, Audience::Mcp).await.is_ok());
        assert!(bound.verify_for(&both, Audience::Api).await.is_ok());

        // Without a resource, /mcp takes what the API takes.
        assert!(plain.verify_for(&api_only, Audience::Mcp).await.is_ok());
        assert_eq!(plain.verify_for(&mcp_only, Audience::Mcp).await, Err(AuthError::WrongAudience));
    }

    fn b64(v: &Value) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn roles_and_audiences_from_array_or_string() {
        assert_eq!(strings(Some(&json!("a b"))), ["a", "b"]);
        assert_eq!(strings(Some(&json!(["a", 1, "c"]))), ["a", "c"]);
        assert!(strings(None).is_empty());
    }

    /// A file removed on drop.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new(tag: &str) -> Self {
                let n = fastrand::u64(..);
                Self(std::env::temp_dir().join(format!("tg-test-{tag}-{}-{n}", std::process::id())))
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}
