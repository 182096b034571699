//! `/mcp`: one MCP server (streamable HTTP, rmcp) that aggregates the
//! tenant's McpConnections.
//!
//! - [`McpHub`] owns the upstream connections (kept alive in the background,
//!   reconciled on every config load) and the aggregated [`catalog::Catalog`].
//! - [`call::call_tool`] is the single `tools/call` path.
//! - [`chat`] offers the tools inside chat requests (`tenantgate.mcp`).
//! - [`user_oauth`]: per-user OAuth (authorization code with PKCE) for
//!   connections that act on behalf of each user.
//!
//! The HTTP side lives in `tenantgate-gateway`'s `mcp`: the rmcp
//! `ServerHandler` of one client session (`server`), the endpoint behind
//! auth, Origin and session checks (`http`), the OAuth redirect endpoints
//! (`authorize`) and the `stdio-bridge` / `install-bridge` subcommands
//! (`bridge`).

pub mod access;
pub mod call;
pub mod catalog;
pub mod chat;
pub mod drift_status;
pub mod filter;
pub mod logs;
pub mod oauth;
pub mod passthrough;
pub mod pin;
pub mod seal;
pub mod session_store;
pub mod sessions;
pub mod settings;
pub mod sse;
pub mod transport;
pub mod upstream;
pub mod user_oauth;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tenantgate_crds::config::McpConnectionConfig;
use tokio::sync::{broadcast, watch};

pub use catalog::Catalog;
pub use settings::McpHttpSettings;
pub use upstream::Upstream;

/// Which aggregated lists changed; sent to every client session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListChanged {
    /// `notifications/tools/list_changed`.
    pub tools: bool,
    /// `notifications/prompts/list_changed`.
    pub prompts: bool,
    /// `notifications/resources/list_changed`.
    pub resources: bool,
}

/// The tenant's MCP connections and their aggregated catalog. Cheap to clone;
/// outlives config reloads (connections whose config did not change stay up).
#[derive(Clone, Debug)]
pub struct McpHub(Arc<HubInner>);

struct HubInner {
    running: Mutex<Vec<Running>>,
    catalog: ArcSwap<Catalog>,
    changes: broadcast::Sender<ListChanged>,
    on_change: Arc<dyn Fn() + Send + Sync>,
    http: McpHttpSettings,
    /// The egress client, the user token store, the drift feed and board: shared by every upstream.
    links: upstream::HubLinks,
    /// Taken once by whoever audits drifts; buffers them until then.
    drift_feed: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<pin::PinDrift>>>,
    /// Whether the client may connect to local addresses (`allowLocalUpstreams`).
    local: crate::egress::LocalUpstreams,
}

impl std::fmt::Debug for HubInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpHub").field("tools", &self.catalog.load().tools.len()).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Running {
    upstream: Arc<Upstream>,
    stop: watch::Sender<bool>,
}

impl McpHub {
    /// A hub without connections, under the `/mcp` endpoint's `http`
    /// settings, with the tenant's store of users' upstream OAuth tokens when
    /// `vault` is given (the stdio bridge and tests have none); fails when its
    /// HTTP client cannot be built.
    pub fn new(http: McpHttpSettings, vault: Option<user_oauth::Vault>) -> Result<Self, crate::egress::EgressError> {
        let local = crate::egress::LocalUpstreams::default();
        let settings = crate::egress::ClientSettings {
            connect_timeout: Duration::from_secs(5),
            follow_redirects: true,
            max_idle_per_host: usize::MAX,
        };
        let client = crate::egress::client(&local, settings)?;
        let user_tokens =
            vault.map(|v| Arc::new(user_oauth::UserTokens::new(v.db, &v.tenant, &v.key_file, client.clone())));
        let (changes, _) = broadcast::channel(16);
        let (drifts, drift_feed) = tokio::sync::mpsc::unbounded_channel();
        Ok(Self(Arc::new_cyclic(|weak: &std::sync::Weak<HubInner>| {
            let weak = weak.clone();
            HubInner {
                running: Mutex::new(Vec::new()),
                catalog: ArcSwap::from_pointee(Catalog::default()),
                changes,
                on_change: Arc::new(move || {
                    if let Some(inner) = weak.upgrade() {
                        McpHub(inner).rebuild();
                    }
                }),
                http,
                links: upstream::HubLinks {
                    user_tokens,
                    client,
                    drifts,
                    drift_board: drift_status::DriftBoard::default(),
                    logs: Arc::new(logs::LogFeed::default()),
                },
                drift_feed: Mutex::new(Some(drift_feed)),
                local,
            }
        })))
    }

    /// The store of users' upstream OAuth tokens, when the hub has one.
    pub fn user_tokens(&self) -> Option<Arc<user_oauth::UserTokens>> {
        self.0.links.user_tokens.clone()
    }

    /// The HTTP client of upstream connections.
    pub fn http_client(&self) -> &reqwest::Client {
        &self.0.links.client
    }

    /// Closes `subject`'s own upstream session of a per-user connection (after a revocation).
    pub fn forget_user(&self, connection: &str, subject: &str) {
        let running = self.0.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in running.iter().filter(|r| r.upstream.name() == connection) {
            r.upstream.forget_user(subject);
        }
    }

    /// The HTTP settings in force.
    pub fn http_settings(&self) -> McpHttpSettings {
        self.0.http.clone()
    }

    /// The catalog in force; a request keeps the one it started with.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.0.catalog.load_full()
    }

    /// The tool pin drifts the connections find, each tool once per
    /// definition (the first caller gets the feed; later ones `None`).
    pub fn take_drift_feed(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<pin::PinDrift>> {
        self.0.drift_feed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// The drifted tools of each connection after its latest listing.
    pub fn drift_board(&self) -> &drift_status::DriftBoard {
        &self.0.links.drift_board
    }

    /// Notifications of catalog changes.
    pub fn subscribe(&self) -> broadcast::Receiver<ListChanged> {
        self.0.changes.subscribe()
    }

    /// The upstreams' log messages from now on (see [`logs`]).
    pub fn subscribe_logs(&self) -> broadcast::Receiver<Arc<logs::UpstreamLog>> {
        self.0.links.logs.subscribe()
    }

    /// A client session wants log messages at `level` and above: when that is
    /// more verbose than the upstreams were asked for, asks them again.
    #[allow(deprecated)] // logging: see `logs`
    pub async fn want_logs(&self, level: rmcp::model::LoggingLevel) {
        let Some(level) = self.0.links.logs.want(level) else { return };
        let upstreams: Vec<Arc<Upstream>> = {
            let running = self.0.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            running.iter().map(|r| r.upstream.clone()).collect()
        };
        futures_util::future::join_all(upstreams.iter().map(|u| u.ask_log_level(level))).await;
    }

    /// Whether connections may reach loopback and link-local addresses
    /// (`spec.network.allowLocalUpstreams`); checked when a name resolves.
    pub fn allow_local_upstreams(&self, allowed: bool) {
        self.0.local.set(allowed);
    }

    /// Applies a config's connections: unchanged ones stay connected, changed
    /// ones reconnect, removed ones close. Connecting happens in the background:
    /// the gateway serves without waiting for any upstream.
    pub fn reconcile(&self, configs: &[McpConnectionConfig]) {
        let mut running = self.0.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut old: Vec<Running> = std::mem::take(&mut *running);
        for config in configs {
            if let Some(i) = old.iter().position(|r| r.upstream.config() == config) {
                running.push(old.swap_remove(i));
                continue;
            }
            let upstream = Arc::new(Upstream::new(config.clone(), self.0.links.clone()));
            let (stop, stop_rx) = watch::channel(false);
            tokio::spawn(upstream::run(
                upstream.clone(),
                self.0.links.client.clone(),
                Arc::downgrade(&self.0.on_change),
                stop_rx,
            ));
            running.push(Running { upstream, stop });
        }
        for r in old {
            let _ = r.stop.send(true);
        }
        self.0.links.drift_board.retain(&configs.iter().map(|c| c.name.as_str()).collect());
        drop(running);
        self.rebuild();
    }

    /// Whether the connection `name` is connected now.
    pub fn is_connected(&self, name: &str) -> bool {
        let running = self.0.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.iter().any(|r| r.upstream.name() == name && r.upstream.offer().is_some())
    }

    /// Rebuilds the catalog from the live upstreams and tells sessions what changed.
    fn rebuild(&self) {
        let live: Vec<_> = {
            let running = self.0.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            running.iter().filter_map(|r| r.upstream.offer().map(|o| (r.upstream.clone(), o))).collect()
        };
        let catalog = Catalog::build(&live);
        let old = self.0.catalog.swap(Arc::new(catalog));
        let new = self.0.catalog.load();
        let changed = ListChanged {
            tools: old.tools != new.tools,
            prompts: old.prompts != new.prompts,
            resources: old.resources != new.resources || old.templates != new.templates,
        };
        metrics::gauge!("tenantgate_mcp_tools").set(new.tools.len() as f64);
        if changed != ListChanged::default() {
            let _ = self.0.changes.send(changed);
        }
    }
}
