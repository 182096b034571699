//! API keys declared as ApiKey objects: the operator puts their peppered
//! hashes into the config, and they are checked here, in memory, before the
//! database of admin-minted keys. A key rotated away or deleted is gone with
//! the config that dropped it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use tenantgate_crds::config::AuthConfig;
use tenantgate_crds::issue::{ConfigIssue, Reason};

use super::{AuthError, Identity};

/// What the id of a declared key starts with.
const DECLARED_KEY_ID_PREFIX: &str = "kubernetes:";

/// The id of the ApiKey object `name` in the admin API and in usage rows.
pub fn declared_key_id(name: &str) -> String {
    format!("{DECLARED_KEY_ID_PREFIX}{name}")
}

/// The ApiKey name of the declared key `id` ([`declared_key_id`] undone).
pub fn declared_key_name(id: &str) -> Option<&str> {
    id.strip_prefix(DECLARED_KEY_ID_PREFIX)
}

/// The declared keys of one config, by hash.
#[derive(Debug, Default)]
pub struct DeclaredKeys {
    by_hash: HashMap<String, DeclaredKey>,
}

#[derive(Debug)]
struct DeclaredKey {
    name: String,
    /// Built once per config: a request with the key only clones the `Arc`.
    identity: Arc<Identity>,
    expires_at_ms: Option<i64>,
    networks: Vec<ipnet::IpNet>,
}

impl DeclaredKeys {
    /// Compiles `auth.declaredApiKeys`; a time or CIDR that does not parse refuses the config.
    pub fn compile(auth: &AuthConfig) -> Result<Self, ConfigIssue> {
        let mut by_hash = HashMap::with_capacity(auth.declared_api_keys.len());
        for (i, k) in auth.declared_api_keys.iter().enumerate() {
            let at = |field: &str| format!("auth.declaredApiKeys[{i}].{field}");
            let expires_at_ms =
                k.expires_at_ms().map_err(|e| ConfigIssue::new(Reason::InvalidValue, e).at(at("expiresAt")))?;
            let networks = k.networks().map_err(|e| ConfigIssue::new(Reason::InvalidValue, e).at(at("ipAllowList")))?;
            let identity = Identity {
                subject: k.subject.clone(),
                roles: k.roles.clone(),
                admin: k.roles.iter().any(|r| auth.admin_roles.contains(r)),
                expires_at: expires_at_ms.map_or(u64::MAX, |ms| u64::try_from(ms / 1000).unwrap_or(0)),
                allowed_models: k.allowed_models.clone(),
                api_key: Some(declared_key_id(&k.name)),
                team: k.team.clone(),
            };
            let key = DeclaredKey { name: k.name.clone(), identity: Arc::new(identity), expires_at_ms, networks };
            if by_hash.insert(k.hash.clone(), key).is_some() {
                return Err(ConfigIssue::new(Reason::Duplicate, "two keys have the same hash").at(at("hash")));
            }
        }
        Ok(Self { by_hash })
    }

    /// The identity of the declared key with this hash, presented from `client` at
    /// `now_ms`; `None` when no declared key has the hash.
    pub fn check(&self, hash: &str, client: Option<IpAddr>, now_ms: i64) -> Option<Result<Arc<Identity>, AuthError>> {
        let key = self.by_hash.get(hash)?;
        if key.expires_at_ms.is_some_and(|e| e <= now_ms) {
            return Some(Err(AuthError::ExpiredApiKey));
        }
        if !key.networks.is_empty() {
            // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
            let allowed = client.map(|a| a.to_canonical()).is_some_and(|a| key.networks.iter().any(|n| n.contains(&a)));
            if !allowed {
                let address = client.map_or_else(|| "an unknown address".to_owned(), |a| a.to_canonical().to_string());
                return Some(Err(AuthError::AddressNotAllowed { key: key.name.clone(), address }));
            }
        }
        Some(Ok(key.identity.clone()))
    }

    /// How many keys are declared.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no key is declared.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use tenantgate_crds::config::{AuthConfig, DeclaredApiKey};

    use super::*;

    fn auth(keys: Vec<DeclaredApiKey>) -> AuthConfig {
        AuthConfig {
            jwt: None,
            admin_roles: vec!["tenant-admin".into()],
            api_keys_enabled: true,
            declared_api_keys: keys,
            mcp: Default::default(),
        }
    }

    fn key(name: &str, hash: &str) -> DeclaredApiKey {
        DeclaredApiKey {
            name: name.into(),
            prefix: "0123456789ab".into(),
            hash: hash.into(),
            subject: format!("apikey:{name}"),
            roles: vec!["dev".into()],
            allowed_models: Vec::new(),
            expires_at: None,
            ip_allow_list: Vec::new(),
            team: None,
            budget: None,
        }
    }

    #[test]
    fn a_declared_keys_id_names_its_api_key() {
        assert_eq!(declared_key_id("ci"), "kubernetes:ci");
        assert_eq!(declared_key_name(&declared_key_id("ci.bot")), Some("ci.bot"));
        assert_eq!(declared_key_name("3f9a0c17b2e4"), None, "an admin-minted key's id");
    }

    #[test]
    fn declared_keys_check_expiry_and_client_address() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        let keys = DeclaredKeys::compile(&auth(vec![
            DeclaredApiKey { roles: vec!["tenant-admin".into()], ..key("admin", "h-admin") },
            DeclaredApiKey { expires_at: Some("2030-01-01T00:00:00Z".into()), ..key("dated", "h-dated") },
            DeclaredApiKey { ip_allow_list: vec!["10.1.0.0/16".into(), "2001:db8::/32".into()], ..key("net", "h-net") },
        ]))
        .expect("compiles");
        assert_eq!(keys.len(), 3);
        let id = keys.check("h-admin", None, 0).expect("known").expect("valid");
        assert_eq!((id.subject.as_str(), id.admin, id.expires_at), ("apikey:admin", true, u64::MAX));
        assert!(keys.check("h-unknown", None, 0).is_none(), "a rotated-away hash is not a declared key");

        let expiry = 1_893_456_000_000;
        let id = keys.check("h-dated", None, expiry - 1).expect("known").expect("valid until then");
        assert_eq!(id.expires_at, 1_893_456_000);
        assert!(!id.admin);
        assert_eq!(keys.check("h-dated", None, expiry).expect("known"), Err(AuthError::ExpiredApiKey));

        assert!(keys.check("h-net", ip("10.1.2.3"), 0).expect("known").is_ok());
        assert!(keys.check("h-net", ip("::ffff:10.1.2.3"), 0).expect("known").is_ok(), "IPv4-mapped");
        assert!(keys.check("h-net", ip("2001:db8::7"), 0).expect("known").is_ok());
        let refused = keys.check("h-net", ip("10.2.0.1"), 0).expect("known").expect_err("outside");
        assert!(refused.is_forbidden());
        assert_eq!(
            refused.to_string(),
            "API key net is not accepted from 10.2.0.1: the address is outside the key's ipAllowList"
        );
        let unknown = keys.check("h-net", None, 0).expect("known").expect_err("no address: refused");
        assert!(unknown.to_string().contains("an unknown address"), "{unknown}");
    }

    #[test]
    fn a_bad_time_or_cidr_refuses_the_config_naming_the_field() {
        let bad = DeclaredKeys::compile(&auth(vec![DeclaredApiKey {
            ip_allow_list: vec!["10.0.0.0/40".into()],
            ..key("net", "h")
        }]))
        .expect_err("refused");
        assert!(bad.to_string().contains("auth.declaredApiKeys[0].ipAllowList"), "{bad}");
        let bad =
            DeclaredKeys::compile(&auth(vec![DeclaredApiKey { expires_at: Some("soon".into()), ..key("t", "h") }]))
                .expect_err("refused");
        assert!(bad.to_string().contains("auth.declaredApiKeys[0].expiresAt"), "{bad}");
    }
}
