//! `tenantgate-gateway token`: mints a development JWT for a tenant of a
//! manifests directory, with its issuer and first audience.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tenantgate_crds::manifests::ManifestSet;
use tenantgate_crds::render::tenant_namespace;

use crate::cli::TokenArgs;

/// The signed token.
pub fn mint(args: &TokenArgs) -> Result<String, String> {
    let mut set = ManifestSet::default();
    let mut files: Vec<_> = std::fs::read_dir(&args.manifests)
        .map_err(|e| format!("{}: {e}", args.manifests.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        set.add_yaml(&f.display().to_string(), &text).map_err(|e| e.to_string())?;
    }
    let tenant = match &args.tenant {
        Some(name) => set.tenant(name).ok_or_else(|| format!("no Tenant {name:?}"))?,
        None => match set.tenants.as_slice() {
            [only] => only,
            _ => return Err("choose a tenant with --tenant".into()),
        },
    };
    let jwt = &tenant.spec.auth.jwt;
    let audience = match &args.audience {
        Some(a) => a,
        None => jwt.audiences.first().ok_or("the tenant has no audience")?,
    };
    let issuer = args.issuer.as_ref().unwrap_or(&jwt.issuer);
    let kid = match &args.kid {
        Some(kid) => Some(kid.clone()),
        None => jwt.jwks_secret_ref.as_ref().and_then(|r| {
            let namespace = tenant_namespace(tenant);
            let secret = set.secrets.iter().find(|s| {
                s.metadata.name.as_deref() == Some(&r.name) && s.metadata.namespace.as_deref() == Some(&namespace)
            })?;
            let text = secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key).map(|s| s.as_bytes().to_vec()))
                .or_else(|| secret.data.as_ref().and_then(|d| d.get(&r.key).map(|b| b.0.clone())))?;
            let jwks: JwkSet = serde_json::from_slice(&text).ok()?;
            match jwks.keys.as_slice() {
                [only] => only.common.key_id.clone(),
                _ => None,
            }
        }),
    };
    let pem = std::fs::read(&args.key).map_err(|e| format!("{}: {e}", args.key.display()))?;
    let (key, alg) = EncodingKey::from_rsa_pem(&pem)
        .map(|k| (k, Algorithm::RS256))
        .or_else(|_| EncodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
        .or_else(|_| EncodingKey::from_ed_pem(&pem).map(|k| (k, Algorithm::EdDSA)))
        .map_err(|_| format!("{}: not an RSA, EC or Ed25519 private key in PEM", args.key.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let exp = now.saturating_add_signed(args.ttl_secs);
    let issued = now.min(exp);
    let claims = json!({
        "iss": issuer, "aud": audience, "sub": args.subject,
        "iat": issued, "nbf": issued, "exp": exp,
        jwt.roles_claim.clone(): args.roles,
    });
    let mut header = Header::new(alg);
    header.kid = kid;
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing failed: {e}"))
}
