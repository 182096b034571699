//! One McpConnection: an rmcp client session kept alive in the background
//! (connect, list everything following pagination, refresh on list-changed
//! notifications, reconnect with backoff when it drops), and the forwarding
//! of requests to it with the connection's timeout, circuit breaker,
//! progress and cancellation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rmcp::model::{
    CancelledNotificationParam, ClientRequest, ErrorData, ProgressNotificationParam, ProgressToken, ServerResult,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RequestContext, ServiceError};
use rmcp::{ClientHandler, RoleClient, RoleServer, ServiceExt};
use tenantgate_crds::config::McpConnectionConfig;
use tokio::sync::{mpsc, watch};

use super::catalog::Offer;
use super::filter::ToolFilter;
use super::transport::{self, ConnectError, Transport};
use crate::routing::Breaker;

/// Failures before the breaker opens, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 5;
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a connected upstream is pinged: an HTTP upstream that went away
/// is otherwise only noticed by the next request.
const PING_EVERY: Duration = Duration::from_secs(2);

/// Why a forwarded request failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The connection is down.
    #[error("MCP connection {0} is not connected")]
    Down(String),
    /// Its breaker is open after repeated failures.
    #[error("MCP connection {0} is failing; its circuit breaker is open")]
    BreakerOpen(String),
    /// No answer within `timeoutSeconds`.
    #[error("MCP connection {0} did not answer within {1} s")]
    Timeout(String, u64),
    /// The client cancelled the request.
    #[error("cancelled by the client")]
    Cancelled,
    /// The upstream answered with a JSON-RPC error: passed on as it is.
    #[error("{0}")]
    Upstream(ErrorData),
    /// The transport failed or the answer was not what the request asked for.
    #[error("MCP connection {0} failed: {1}")]
    Transport(String, String),
}

impl ForwardError {
    /// Reason for logs and metrics.
    pub fn as_reason(&self) -> &'static str {
        match self {
            Self::Down(_) => "ConnectionDown",
            Self::BreakerOpen(_) => "BreakerOpen",
            Self::Timeout(..) => "UpstreamTimeout",
            Self::Cancelled => "Cancelled",
            Self::Upstream(_) => "UpstreamError",
            Self::Transport(..) => "UpstreamFailed",
        }
    }

    /// The JSON-RPC error a client gets.
    pub fn into_error_data(self) -> ErrorData {
        match self {
            Self::Upstream(e) => e,
            other => ErrorData::internal_error(other.to_string(), None),
        }
    }
}

/// What a list-changed notification from an upstream asks to refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    Tools,
    Prompts,
    Resources,
}

/// Upstream progress token -> the downstream peer and its own token.
type ProgressRoutes = Mutex<HashMap<ProgressToken, (Peer<RoleServer>, ProgressToken)>>;

/// One upstream connection and its current session.
#[derive(Debug)]
pub struct Upstream {
    config: McpConnectionConfig,
    filter: ToolFilter,
    timeout: Duration,
    breaker: Arc<Breaker>,
    live: ArcSwapOption<Live>,
    progress: Arc<ProgressRoutes>,
    /// Woken when a forwarded request fails at the transport: check the session now.
    suspect: tokio::sync::Notify,
}

/// A connected session.
#[derive(Debug)]
struct Live {
    peer: Peer<RoleClient>,
    offer: Arc<Offer>,
}

/// Receives the upstream's notifications.
#[derive(Debug, Clone)]
struct UpstreamClient {
    refresh: mpsc::UnboundedSender<Refresh>,
    progress: Arc<ProgressRoutes>,
}

impl ClientHandler for UpstreamClient {
    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        let route = self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&params.progress_token)
            .cloned();
        if let Some((peer, token)) = route {
            let mut forwarded = params;
            forwarded.progress_token = token;
            let _ = peer.notify_progress(forwarded).await;
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.refresh.send(Refresh::Tools);
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.refresh.send(Refresh::Prompts);
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.refresh.send(Refresh::Resources);
    }
}

/// Removes a progress route when the forwarded request ends, however it ends.
struct ProgressRoute<'a>(&'a ProgressRoutes, Option<ProgressToken>);

impl Drop for ProgressRoute<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.1.take() {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&token);
        }
    }
}

impl Upstream {
    /// A disconnected upstream for a connection config.
    pub fn new(config: McpConnectionConfig) -> Self {
        let label: Arc<str> = format!("mcp/{}", config.name).into();
        Self {
            filter: ToolFilter::new(&config.tools),
            timeout: Duration::from_secs(u64::from(config.timeout_seconds.max(1))),
            breaker: Arc::new(Breaker::new(label, BREAKER_THRESHOLD, BREAKER_OPEN_FOR)),
            live: ArcSwapOption::empty(),
            progress: Arc::new(Mutex::new(HashMap::new())),
            suspect: tokio::sync::Notify::new(),
            config,
        }
    }

    /// The connection's config.
    pub fn config(&self) -> &McpConnectionConfig {
        &self.config
    }

    /// metadata.name of the connection.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Prefix of its exposed names.
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// What it offers now, if connected.
    pub fn offer(&self) -> Option<Arc<Offer>> {
        self.live.load().as_ref().map(|l| l.offer.clone())
    }

    /// Whether the upstream tool `name` passes the connection's allow/deny globs.
    pub fn permits_tool(&self, name: &str) -> bool {
        self.filter.permits(name)
    }

    /// Keeps the listed tools its allow/deny globs permit and applies its pins.
    pub(crate) fn admit_tools(&self, tools: &mut Vec<rmcp::model::Tool>) {
        tools.retain(|t| self.filter.permits(&t.name));
        super::pin::apply_pins(&self.config.name, &self.config.tools, tools);
    }

    /// Forwards one request with the connection's timeout and breaker, passing
    /// the client's progress notifications and cancellation through.
    pub async fn forward(
        &self,
        request: ClientRequest,
        context: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, ForwardError> {
        let name = &self.config.name;
        let peer = match self.live.load().as_ref() {
            Some(live) => live.peer.clone(),
            None => return Err(ForwardError::Down(name.clone())),
        };
        let permit = self.breaker.try_acquire().ok_or_else(|| ForwardError::BreakerOpen(name.clone()))?;
        let handle = match peer.send_request_with_option(request, PeerRequestOptions::with_timeout(self.timeout)).await
        {
            Ok(h) => h,
            Err(e) => {
                permit.failure();
                self.suspect.notify_one();
                return Err(ForwardError::Transport(name.clone(), e.to_string()));
            }
        };
        let _route = ProgressRoute(
            &self.progress,
            context.meta.get_progress_token().map(|downstream| {
                let upstream = handle.progress_token.clone();
                self.progress
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(upstream.clone(), (context.peer.clone(), downstream));
                upstream
            }),
        );
        let id = handle.id.clone();
        let outcome = tokio::select! {
            r = handle.await_response() => r,
            () = context.ct.cancelled() => {
                let _ = peer
                    .notify_cancelled(CancelledNotificationParam::new(Some(id), Some("cancelled by the client".into())))
                    .await;
                // Not the upstream's fault: neither success nor failure for the breaker.
                permit.success();
                return Err(ForwardError::Cancelled);
            }
        };
        match outcome {
            Ok(result) => {
                permit.success();
                Ok(result)
            }
            Err(ServiceError::McpError(e)) => {
                permit.success();
                Err(ForwardError::Upstream(e))
            }
            Err(ServiceError::Timeout { .. }) => {
                permit.failure();
                Err(ForwardError::Timeout(name.clone(), self.timeout.as_secs()))
            }
            Err(e) => {
                permit.failure();
                self.suspect.notify_one();
                Err(ForwardError::Transport(name.clone(), e.to_string()))
            }
        }
    }
}

/// Keeps an upstream connected until `stop` flips: connects, lists, publishes
/// its offer through `changed`, refreshes on list-changed, and reconnects with
/// exponential backoff (with jitter) when the session drops.
pub(super) async fn run(
    upstream: Arc<Upstream>,
    client: reqwest::Client,
    changed: Weak<dyn Fn() + Send + Sync>,
    mut stop: watch::Receiver<bool>,
) {
    let name = upstream.config.name.clone();
    let gauge = metrics::gauge!("tenantgate_mcp_connection_up", "connection" => name.clone());
    gauge.set(0.0);
    let publish = || {
        if let Some(f) = changed.upgrade() {
            f();
        }
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            break;
        }
        let (refresh_tx, mut refresh_rx) = mpsc::unbounded_channel();
        let handler = UpstreamClient { refresh: refresh_tx, progress: upstream.progress.clone() };
        let connected = tokio::select! {
            r = connect(&upstream, &client, handler) => r,
            _ = stop.changed() => break,
        };
        match connected {
            Ok(session) => {
                backoff = BACKOFF_MIN;
                let peer = session.peer().clone();
                let offer = tokio::select! {
                    o = list_offer(&upstream, &peer) => o,
                    _ = stop.changed() => { let _ = session.cancel().await; break; }
                };
                match offer {
                    Ok(offer) => {
                        tracing::info!(
                            connection = %name,
                            tools = offer.tools.len(),
                            prompts = offer.prompts.len(),
                            resources = offer.resources.len(),
                            "MCP connection up"
                        );
                        upstream.live.store(Some(Arc::new(Live { peer: peer.clone(), offer: Arc::new(offer) })));
                        gauge.set(1.0);
                        publish();
                        let cancel = session.cancellation_token();
                        let mut waiting = std::pin::pin!(session.waiting());
                        let mut ping = tokio::time::interval(PING_EVERY);
                        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tokio::select! {
                                _ = &mut waiting => {
                                    tracing::warn!(connection = %name, "MCP connection lost; its tools are withdrawn until it reconnects");
                                    break;
                                }
                                _ = async { tokio::select! { _ = ping.tick() => {}, () = upstream.suspect.notified() => {} } } => {
                                    if let Err(e) = alive(&peer, upstream.timeout).await {
                                        tracing::warn!(connection = %name, error = %e, "MCP connection lost (ping failed); its tools are withdrawn until it reconnects");
                                        cancel.cancel();
                                        break;
                                    }
                                }
                                Some(what) = refresh_rx.recv() => {
                                    tracing::info!(connection = %name, list = ?what, "upstream list changed; refreshing");
                                    match list_offer(&upstream, &peer).await {
                                        Ok(offer) => {
                                            upstream.live.store(Some(Arc::new(Live { peer: peer.clone(), offer: Arc::new(offer) })));
                                            publish();
                                        }
                                        Err(e) => tracing::warn!(connection = %name, error = %e, "refreshing the upstream lists failed"),
                                    }
                                }
                                _ = stop.changed() => {
                                    cancel.cancel();
                                    let _ = waiting.await;
                                    upstream.live.store(None);
                                    gauge.set(0.0);
                                    publish();
                                    tracing::info!(connection = %name, "MCP connection closed (removed from the config)");
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(connection = %name, error = %e, "listing the upstream's tools failed");
                        let _ = session.cancel().await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    connection = %name,
                    reason = e.as_reason(),
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "MCP connection down"
                );
            }
        }
        if upstream.live.swap(None).is_some() {
            gauge.set(0.0);
            publish();
        }
        metrics::counter!("tenantgate_mcp_reconnects_total", "connection" => name.clone()).increment(1);
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 4));
        tokio::select! {
            () = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    upstream.live.store(None);
    gauge.set(0.0);
    publish();
}

type Session = rmcp::service::RunningService<RoleClient, UpstreamClient>;

async fn connect(
    upstream: &Upstream,
    client: &reqwest::Client,
    handler: UpstreamClient,
) -> Result<Session, ConnectError> {
    let secs = upstream.config.timeout_seconds.max(1);
    let handshake = async {
        let transport = transport::build(&upstream.config, client).await?;
        let served = match transport {
            Transport::Http(t) => handler.serve(t).await,
            Transport::Sse(t) => handler.serve(t).await,
            Transport::Stdio(t) => handler.serve(t).await,
        };
        served.map_err(|e| ConnectError::Handshake(e.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(u64::from(secs)), handshake)
        .await
        .map_err(|_| ConnectError::Timeout(secs))?
}

/// Lists everything the upstream offers (all pages), keeping only the tools
/// its filter permits. Lists it does not support are empty.
async fn list_offer(upstream: &Upstream, peer: &Peer<RoleClient>) -> Result<Offer, ServiceError> {
    let caps = peer.peer_info().map(|i| i.capabilities.clone()).unwrap_or_default();
    let timeout = upstream.timeout;
    let mut tools = if caps.tools.is_some() { bounded(timeout, peer.list_all_tools()).await? } else { Vec::new() };
    upstream.admit_tools(&mut tools);
    let prompts = if caps.prompts.is_some() { bounded(timeout, peer.list_all_prompts()).await? } else { Vec::new() };
    let (resources, templates) = if caps.resources.is_some() {
        (
            bounded(timeout, peer.list_all_resources()).await?,
            // Some servers offer resources without templates: an error there is not fatal.
            tokio::time::timeout(timeout, peer.list_all_resource_templates())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Offer { tools, prompts, resources, templates })
}

/// Pings the upstream: only a transport failure or a timeout means it is gone
/// (a JSON-RPC error is an answer).
async fn alive(peer: &Peer<RoleClient>, timeout: Duration) -> Result<(), ServiceError> {
    match bounded(timeout, peer.send_request(ClientRequest::PingRequest(Default::default()))).await {
        Ok(_) | Err(ServiceError::McpError(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn bounded<T>(timeout: Duration, f: impl Future<Output = Result<T, ServiceError>>) -> Result<T, ServiceError> {
    tokio::time::timeout(timeout, f).await.unwrap_or(Err(ServiceError::Timeout { timeout }))
}
