//! `tenantgate-gateway token`: mints a development JWT for a tenant of a
//! manifests directory, with its issuer and first audience (and its MCP
//! resource, `spec.mcp.resource` or the exposure's, when it has one).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tenantgate_crds::files::{WalkError, yaml_files};
use tenantgate_crds::manifests::{ManifestErrors, ManifestSet};
use tenantgate_crds::render::{mcp_resource, tenant_namespace};

use crate::cli::TokenArgs;

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The manifests directory could not be walked.
    #[error("{0}")]
    Walk(#[from] WalkError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The CRD YAML was refused.
    #[error("{0}")]
    Manifests(#[from] ManifestErrors),
    /// The named tenant is not there.
    #[error("no Tenant {0:?}")]
    NoTenant(String),
    /// Several tenants (or none) and no `--tenant`.
    #[error("choose a tenant with --tenant")]
    ChooseTenant,
    /// The tenant has no JWT settings: it takes API keys only.
    #[error("Tenant {0:?} has no spec.auth.jwt: it accepts API keys only (mint one with the admin API)")]
    NoJwt(String),
    /// No `--audience` and the tenant lists none.
    #[error("the tenant has no audience")]
    NoAudience,
    /// The signing key is not a private key.
    #[error("{0}: not an RSA, EC or Ed25519 private key in PEM")]
    Key(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// The signed token.
pub fn mint(args: &TokenArgs) -> Result<String, TokenError> {
    let failed = |path: &Path| {
        let path = path.display().to_string();
        move |source| TokenError::Read { path, source }
    };
    let mut set = ManifestSet::default();
    for f in &yaml_files(&args.manifests)? {
        let text = std::fs::read_to_string(f).map_err(failed(f))?;
        set.add_yaml(&f.display().to_string(), &text)?;
    }
    let tenant = match &args.tenant {
        Some(name) => set.tenant(name).ok_or_else(|| TokenError::NoTenant(name.clone()))?,
        None => match set.tenants.as_slice() {
            [only] => only,
            _ => return Err(TokenError::ChooseTenant),
        },
    };
    let jwt = tenant
        .spec
        .auth
        .jwt
        .as_ref()
        .ok_or_else(|| TokenError::NoJwt(tenant.metadata.name.clone().unwrap_or_default()))?;
    // By default valid for the API and, when the tenant has an MCP resource, for `/mcp` too.
    let audience = match &args.audience {
        Some(a) => json!(a),
        None => {
            let first = jwt.audiences.first().ok_or(TokenError::NoAudience)?;
            match mcp_resource(tenant) {
                Some(resource) => json!([first, resource]),
                None => json!(first),
            }
        }
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
    let pem = std::fs::read(&args.key).map_err(failed(&args.key))?;
    let (key, alg) = EncodingKey::from_rsa_pem(&pem)
        .map(|k| (k, Algorithm::RS256))
        .or_else(|_| EncodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
        .or_else(|_| EncodingKey::from_ed_pem(&pem).map(|k| (k, Algorithm::EdDSA)))
        .map_err(|_| TokenError::Key(args.key.display().to_string()))?;
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
    jsonwebtoken::encode(&header, &claims, &key).map_err(TokenError::Sign)
}
