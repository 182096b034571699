//! Bearer tokens through the gateway's JWT verifier (jsonwebtoken underneath,
//! our algorithm, key, claim and cache handling around it), against an HMAC
//! key. An input with a newline is `<header JSON>\n<claims JSON>`, signed
//! HS256 with the tenant's real secret whatever the header says, so the
//! fuzzer reaches the claim checks; any other input is the token itself.
//!
//! Invariants: an accepted token has an HMAC `alg`, the tenant's issuer, one
//! of its audiences, an `exp` in the future and no `nbf` in the future (both
//! within the leeway); the identity is exactly the claims' subject, expiry and
//! roles; the cached answer equals the first.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sha2::Sha256;
use tenantgate_crds::config::{JwtConfig, JwtKeys};
use tenantgate_gateway::auth::{JwtVerifier, KeySource};

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef-0123456789";
const ISSUER: &str = "https://auth.acme.example";
const AUDIENCE: &str = "tenantgate";
const LEEWAY: u64 = 30;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    verifier: JwtVerifier,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    let path = std::env::temp_dir().join(format!("tenantgate-fuzz-hmac-{}", std::process::id()));
    std::fs::write(&path, SECRET).expect("write the secret");
    let keys = Arc::new(KeySource::hmac_file(path.clone(), Duration::from_secs(3600)));
    runtime.block_on(keys.load()).expect("the secret loads");
    let config = JwtConfig {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into(), "other-audience".into()],
        keys: JwtKeys::HmacSecretFile(path.display().to_string()),
        roles_claim: "roles".into(),
        // Fuzzed tokens reach the team claim's parsing too.
        team_claim: Some("team".into()),
        leeway_seconds: LEEWAY as u32,
    };
    Fixture { runtime, verifier: JwtVerifier::new(&config, &["tenant-admin".into()], keys) }
});

fn signed(header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn segment(token: &str, i: usize) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(token.split('.').nth(i)?.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let token = match data.iter().position(|&b| b == b'\n') {
        Some(i) => signed(&data[..i], &data[i + 1..]),
        None => match std::str::from_utf8(data) {
            Ok(t) => t.to_string(),
            Err(_) => return,
        },
    };
    let f = &*FIXTURE;
    let Ok(identity) = f.runtime.block_on(f.verifier.verify(&token)) else { return };
    let header = segment(&token, 0).expect("an accepted token has a JSON header");
    let claims = segment(&token, 1).expect("an accepted token has JSON claims");
    let alg = header["alg"].as_str().expect("an alg");
    assert!(["HS256", "HS384", "HS512"].contains(&alg), "accepted alg {alg}");
    assert_eq!(claims["iss"], ISSUER);
    let audience_ok = match &claims["aud"] {
        Value::String(a) => a == AUDIENCE || a == "other-audience",
        Value::Array(a) => a.iter().any(|a| a == AUDIENCE || a == "other-audience"),
        _ => false,
    };
    assert!(audience_ok, "accepted audience {}", claims["aud"]);
    let now = now();
    let exp = claims["exp"].as_u64().expect("a numeric exp");
    assert!(exp.saturating_add(LEEWAY) >= now, "accepted an expired token");
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_u64) {
        assert!(nbf <= now + LEEWAY, "accepted a token before its nbf");
    }
    assert_eq!(identity.expires_at, exp);
    assert_eq!(identity.subject, claims["sub"].as_str().unwrap_or_default());
    assert_eq!(identity.admin, identity.roles.iter().any(|r| r == "tenant-admin"));
    let again = f.runtime.block_on(f.verifier.verify(&token)).expect("a verified token verifies again");
    assert_eq!(*again, *identity, "the cache answered differently");
});
