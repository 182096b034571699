//! Where the gateway may connect: providers, MCP servers and the JWKS URI
//! must not lead to loopback, link-local (cloud metadata endpoints live
//! there) or unspecified addresses unless the tenant set
//! `spec.network.allowLocalUpstreams`. The operator refuses such URLs when it
//! renders; the gateway checks again, because a name that looked remote when
//! the config was rendered may resolve to a local address when connecting
//! (DNS rebinding): every HTTP client of the gateway resolves names through
//! [`UpstreamResolver`], which drops local addresses, and [`check_config`]
//! refuses a config naming a local address literally (literals are never resolved).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tenantgate_crds::address::{HostClass, classify_ip, classify_url};
use tenantgate_crds::config::GatewayConfig;
use tenantgate_crds::issue::{ConfigIssue, Reason};

/// Why a connection was refused before it was made.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The name resolved to local addresses only.
    #[error(
        "{host} resolves to a {kind} address only; refused (set spec.network.allowLocalUpstreams on the Tenant to allow it)"
    )]
    Local {
        /// The name.
        host: String,
        /// Loopback, link-local, ...
        kind: &'static str,
    },
    /// The name did not resolve.
    #[error("{host} does not resolve: {message}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        message: String,
    },
    /// The HTTP client could not be built (no TLS roots, ...).
    #[error("building the HTTP client failed: {0}")]
    Client(reqwest::Error),
}

/// What differs between the gateway's upstream clients.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Whether redirects are followed (each hop resolves through the same resolver).
    pub follow_redirects: bool,
    /// Idle connections kept per host.
    pub max_idle_per_host: usize,
}

/// The one way to build an upstream HTTP client: every name resolves through
/// [`UpstreamResolver`] under `local`. It fails rather than falling back to a
/// client without that resolver.
pub fn client(local: &LocalUpstreams, settings: ClientSettings) -> Result<reqwest::Client, EgressError> {
    let redirect = if settings.follow_redirects {
        reqwest::redirect::Policy::default()
    } else {
        reqwest::redirect::Policy::none()
    };
    reqwest::Client::builder()
        .dns_resolver(UpstreamResolver::new(local.clone()))
        .connect_timeout(settings.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(settings.max_idle_per_host)
        .tcp_nodelay(true)
        .redirect(redirect)
        .user_agent(concat!("tenantgate-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(EgressError::Client)
}

/// Whether local upstreams are allowed, shared by the resolvers of every
/// client and switched by config reloads.
#[derive(Debug, Clone, Default)]
pub struct LocalUpstreams(Arc<AtomicBool>);

impl LocalUpstreams {
    /// Allowed or not, from now on.
    pub fn set(&self, allowed: bool) {
        self.0.store(allowed, Ordering::Relaxed);
    }

    /// Whether they are allowed now.
    pub fn allowed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A DNS resolver for reqwest that drops local addresses unless allowed.
#[derive(Debug, Clone)]
pub struct UpstreamResolver {
    local: LocalUpstreams,
}

impl UpstreamResolver {
    /// A resolver under `local`.
    pub fn new(local: LocalUpstreams) -> Self {
        Self { local }
    }
}

/// Keeps the addresses that may be connected to; an error when none is left.
pub fn admit(host: &str, addrs: Vec<SocketAddr>, allow_local: bool) -> Result<Vec<SocketAddr>, EgressError> {
    if allow_local {
        return Ok(addrs);
    }
    let mut refused = None;
    let kept: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| match classify_ip(a.ip()) {
            HostClass::Remote => true,
            HostClass::Local(kind) => {
                refused = Some(kind);
                false
            }
        })
        .collect();
    match (kept.is_empty(), refused) {
        (true, Some(kind)) => {
            tracing::warn!(%host, kind, "upstream name resolves to a local address; connection refused");
            Err(EgressError::Local { host: host.to_string(), kind })
        }
        _ => Ok(kept),
    }
}

impl Resolve for UpstreamResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_local = self.local.allowed();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| EgressError::Resolve { host: host.clone(), message: e.to_string() })?
                .collect();
            let kept = admit(&host, addrs, allow_local)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// Refuses a config whose provider or MCP URLs name a local address while
/// local upstreams are not allowed (the renderer's check, for a config file
/// that did not come from it).
pub fn check_config(config: &GatewayConfig) -> Result<(), ConfigIssue> {
    if config.network.allow_local_upstreams {
        return Ok(());
    }
    let providers = config
        .providers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.base_url.as_deref().map(|u| (format!("providers[{i}].baseUrl"), u)));
    let mcp = config.mcp.iter().enumerate().filter_map(|(i, c)| c.url.as_deref().map(|u| (format!("mcp[{i}].url"), u)));
    for (field, url) in providers.chain(mcp) {
        if let Ok(HostClass::Local(kind)) = classify_url(url) {
            let message = format!(
                "{url} points at a {kind} address; set spec.network.allowLocalUpstreams on the Tenant to allow it"
            );
            return Err(ConfigIssue::new(Reason::LocalUpstreamRefused, message).at(field));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn local_addresses_are_dropped_unless_allowed() {
        let metadata = vec![addr("169.254.169.254:0")];
        assert!(matches!(
            admit("rebind.example", metadata.clone(), false),
            Err(EgressError::Local { kind: "link-local", .. })
        ));
        assert_eq!(admit("rebind.example", metadata.clone(), true).expect("allowed"), metadata);
        let v6 = vec![addr("[fe80::1]:0"), addr("[::1]:0"), addr("[::ffff:127.0.0.1]:0")];
        assert!(admit("v6.example", v6, false).is_err());
        let mixed = vec![addr("127.0.0.1:0"), addr("93.184.215.14:0")];
        assert_eq!(admit("mixed.example", mixed, false).expect("one remote"), vec![addr("93.184.215.14:0")]);
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_names() {
        let local = LocalUpstreams::default();
        let resolver = UpstreamResolver::new(local.clone());
        let name = || "localhost".parse::<Name>().expect("name");
        let err = resolver.resolve(name()).await.err().expect("refused").to_string();
        assert!(err.contains("localhost resolves to a loopback address only"), "{err}");
        local.set(true);
        assert!(resolver.resolve(name()).await.is_ok());
    }
}
