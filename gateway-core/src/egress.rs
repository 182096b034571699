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

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reqwest::dns::{Addrs, Resolve, Resolving};
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
        .user_agent(USER_AGENT)
        .build()
        .map_err(EgressError::Client)
}

/// The providers' HTTP client: hyper-util's pooled client (HTTP/1.1, or
/// HTTP/2 where TLS negotiates it), rustls with the system's roots, every name
/// resolved through [`UpstreamResolver`]. The chat hot path posts through it:
/// measured against reqwest (which wraps the same client in more layers) in
/// `make bench-gateway`'s A/B.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: LegacyClient<HttpsConnector<HttpConnector<UpstreamResolver>>, Full<Bytes>>,
}

/// A provider's answer, its body still to be read.
pub type Response = http::Response<hyper::body::Incoming>;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection was not made in time.
    #[error("connecting timed out")]
    ConnectTimeout,
    /// The connection could not be made (refused, a name that does not resolve or resolves to a refused address, TLS).
    #[error("{0}")]
    Connect(String),
    /// The connection broke before the response's headers.
    #[error("{0}")]
    Request(String),
}

/// What every upstream client of the gateway sends as its User-Agent.
const USER_AGENT: &str = concat!("tenantgate-gateway/", env!("CARGO_PKG_VERSION"));

impl HttpClient {
    /// A client for `settings` under `local` (redirects are never followed),
    /// verifying TLS against the system's roots (`SSL_CERT_FILE`, the image's CA bundle).
    pub fn new(local: &LocalUpstreams, settings: ClientSettings) -> Self {
        crate::tls::ensure_crypto_provider();
        let mut http = HttpConnector::new_with_resolver(UpstreamResolver::new(local.clone()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let tls = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(tls) => tls,
            Err(error) => {
                // Providers on http:// (a model server in the cluster) still work; an https:// one
                // fails its handshake with UnknownIssuer, naming the cause at each call.
                tracing::warn!(%error, "no system TLS roots (set SSL_CERT_FILE); https:// providers cannot be verified");
                let roots = rustls::RootCertStore::empty();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth(),
                )
            }
        };
        let https = tls.https_or_http().enable_http1().enable_http2().wrap_connector(http);
        let inner = LegacyClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(settings.max_idle_per_host)
            .build(https);
        Self { inner }
    }

    /// POSTs `body` to `url` with `headers` (and the gateway's User-Agent, and
    /// the `traceparent` of a traced request's attempt) and waits for the response's headers.
    pub async fn post(&self, url: &url::Url, mut headers: HeaderMap, body: Vec<u8>) -> Result<Response, SendError> {
        let uri =
            http::Uri::try_from(url.as_str()).map_err(|e| SendError::Request(format!("the URL is not valid: {e}")))?;
        headers.entry(http::header::USER_AGENT).or_insert(HeaderValue::from_static(USER_AGENT));
        crate::traces::inject(&mut headers);
        let mut request = http::Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        self.inner.request(request).await.map_err(|e| send_error(&e))
    }
}

/// The error's chain of causes in one line (hyper's errors never carry the
/// URL, so no credentials in userinfo either), at most 200 characters.
fn send_error(e: &hyper_util::client::legacy::Error) -> SendError {
    let mut causes = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    let mut timed_out = false;
    while let Some(cause) = source {
        if cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            timed_out = true;
        }
        causes.push(cause.to_string());
        source = cause.source();
    }
    let mut message = causes.join(": ");
    message.truncate(200);
    match (e.is_connect(), timed_out) {
        (true, true) => SendError::ConnectTimeout,
        (true, false) => SendError::Connect(message),
        (false, _) => SendError::Request(message),
    }
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

impl UpstreamResolver {
    /// Resolves `host` and keeps the addresses that may be connected to.
    async fn lookup(&self, host: String) -> Result<Vec<SocketAddr>, EgressError> {
        let allow_local = self.local.allowed();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
            .await
            .map_err(|e| EgressError::Resolve { host: host.clone(), message: e.to_string() })?
            .collect();
        admit(&host, addrs, allow_local)
    }
}

/// The resolver of hyper-util's connector ([`HttpClient`]).
impl tower_service::Service<Name> for UpstreamResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = EgressError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, EgressError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), EgressError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move { resolver.lookup(name.as_str().to_owned()).await.map(Vec::into_iter) })
    }
}

/// The resolver of reqwest's clients (MCP servers, token endpoints, JWKS).
impl Resolve for UpstreamResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let kept = resolver.lookup(name.as_str().to_owned()).await?;
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
    async fn the_providers_client_posts_and_resolves_names_through_the_guard() {
        use http_body_util::BodyExt;
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(|headers: HeaderMap, body: String| async move {
                format!("{} {}", headers[http::header::USER_AGENT].to_str().unwrap_or_default(), body)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let settings =
            ClientSettings { connect_timeout: Duration::from_secs(2), follow_redirects: false, max_idle_per_host: 1 };
        let local = LocalUpstreams::default();
        let client = HttpClient::new(&local, settings);
        let url = url::Url::parse(&format!("http://localhost:{port}/v1/chat/completions")).expect("url");

        let refused = client.post(&url, HeaderMap::new(), b"{}".to_vec()).await.expect_err("localhost refused");
        let SendError::Connect(message) = refused else { panic!("not a connect error: {refused:?}") };
        assert!(message.contains("localhost resolves to a loopback address only"), "{message}");

        local.set(true);
        let response = client.post(&url, HeaderMap::new(), b"{\"a\":1}".to_vec()).await.expect("answered");
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, format!("{USER_AGENT} {{\"a\":1}}").as_bytes());

        let closed = url::Url::parse(&format!("http://127.0.0.1:{}/", free_port())).expect("url");
        let error = client.post(&closed, HeaderMap::new(), Vec::new()).await.expect_err("nothing listens");
        assert!(matches!(&error, SendError::Connect(m) if m.contains("Connection refused")), "{error:?}");
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_names() {
        let local = LocalUpstreams::default();
        let resolver = UpstreamResolver::new(local.clone());
        let name = || "localhost".parse::<reqwest::dns::Name>().expect("name");
        let err = resolver.resolve(name()).await.err().expect("refused").to_string();
        assert!(err.contains("localhost resolves to a loopback address only"), "{err}");
        local.set(true);
        assert!(resolver.resolve(name()).await.is_ok());
    }
}
