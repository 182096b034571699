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
    CancelledNotificationParam, ClientCapabilities, ClientConfig, ClientRequest, ClientResult, ElicitRequest,
    ElicitRequestParams, ElicitResult, ErrorData, GetExtensions, Implementation, InputRequest, InputRequiredResult,
    ProgressNotificationParam, ProgressToken, ProtocolVersion, RequestId, ResultType, ServerRequest, ServerResult,
};
// Sampling and roots: rmcp marks them deprecated (SEP-2577); 2025 servers still ask for them.
#[allow(deprecated)]
use rmcp::model::{
    CreateMessageRequest, CreateMessageRequestParams, CreateMessageResult, ListRootsRequest, ListRootsResult,
};
use rmcp::service::{
    InboundStreamOrigin, NotificationContext, OriginatingRequestId, Peer, PeerRequestOptions, RequestContext,
    ServiceError,
};
use rmcp::{ClientHandler, RoleClient, RoleServer, ServiceExt};
use tenantgate_crds::config::{McpAuthConfig, McpConnectionConfig};
use tokio::sync::{mpsc, watch};

use super::access::ToolAccess;
use super::catalog::Offer;
use super::drift_status::DriftBoard;
use super::filter::ToolFilter;
use super::logs::{self, LogFeed, UpstreamLog};
use super::pin::{DriftLog, PinDrift};
use super::transport::{self, ConnectError, RawSender, Transport, UserCredential};
use super::user_oauth::{UserOAuthError, UserTokensCell};
use crate::routing::Breaker;
use crate::routing::breaker::Permit;

/// Failures before the breaker opens, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 5;
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a connected upstream is pinged: an HTTP upstream that went away
/// is otherwise only noticed by the next request.
const PING_EVERY: Duration = Duration::from_secs(2);
/// How long an upstream gets to answer `logging/setLevel`.
const LOG_LEVEL_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// A per-user connection the caller has not authorized (the message says where to).
    #[error("{0}")]
    NotAuthorized(String),
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
            Self::NotAuthorized(_) => "NotAuthorized",
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

/// One of an upstream's sessions: the shared one or a user's own (`user`, of a
/// per-user connection), at 2025-11-25 for clients of that revision and older
/// (the server may ask them for sampling, elicitation or roots in the middle of
/// a request, which the gateway relays), or at 2026-07-28 (`mrtr`) for clients
/// of that revision, which take multi round-trip requests instead. An upstream
/// that does not speak 2026-07-28 answers both the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct SessionKey {
    user: Option<Arc<str>>,
    mrtr: bool,
}

/// (Upstream session, its progress token) -> the downstream peer and its own token.
type ProgressRoutes = Mutex<HashMap<(SessionKey, ProgressToken), (Peer<RoleServer>, ProgressToken)>>;

/// Forwarded requests in flight, by upstream session and upstream request id:
/// the client session that made each, and its own request id. What an upstream
/// asks while serving one (sampling, elicitation, roots) goes back to that client.
type Askers = Mutex<HashMap<(SessionKey, RequestId), (Peer<RoleServer>, RequestId)>>;

/// One upstream connection and its current session.
#[derive(Debug)]
pub struct Upstream {
    config: McpConnectionConfig,
    /// What one answered tool call costs, in nano-units (`tools.pricePerCall`).
    price_per_call: u64,
    filter: ToolFilter,
    access: ToolAccess,
    timeout: Duration,
    breaker: Arc<Breaker>,
    live: ArcSwapOption<Live>,
    progress: Arc<ProgressRoutes>,
    askers: Arc<Askers>,
    /// Woken when a forwarded request fails at the transport: check the session now.
    suspect: tokio::sync::Notify,
    /// What it shares with the hub's other upstreams.
    links: HubLinks,
    /// The sessions opened on demand: per-user OAuth users' own, and the
    /// 2026-07-28 ones for clients of that revision.
    sessions: Mutex<HashMap<SessionKey, Arc<SessionSlot>>>,
    /// Where the list changes of every session go: to the connection's
    /// listing loop (`run`), while it has a session.
    refresh: Mutex<Option<mpsc::UnboundedSender<Refresh>>>,
    /// Pin drifts reported so far.
    drift_log: DriftLog,
}

/// What every upstream of a hub shares, built once with the hub.
#[derive(Debug, Clone)]
pub struct HubLinks {
    /// Per-user OAuth: the tenant's token store (set once storage is open).
    pub user_tokens: UserTokensCell,
    /// The egress HTTP client (for users' own sessions too).
    pub client: reqwest::Client,
    /// Where new pin drifts go (the hub's audit feed).
    pub drifts: mpsc::UnboundedSender<PinDrift>,
    /// Where the drifted tools of each complete listing go (McpConnection status).
    pub drift_board: DriftBoard,
    /// Where the upstreams' log messages go, and the level they are asked for.
    pub logs: Arc<LogFeed>,
}

/// An upstream session opened on first use, closed when idle.
#[derive(Debug, Default)]
struct SessionSlot {
    session: tokio::sync::OnceCell<Session>,
    last_used: Mutex<Option<std::time::Instant>>,
}

/// A session opened on demand is closed after this long idle.
const SESSION_IDLE: Duration = Duration::from_secs(600);

/// A connected session.
#[derive(Debug)]
struct Live {
    peer: Peer<RoleClient>,
    offer: Arc<Offer>,
    /// Posts raw messages on the same session (streamable HTTP only).
    raw: Option<RawSender>,
}

/// Receives the upstream's notifications.
#[derive(Debug, Clone)]
struct UpstreamClient {
    refresh: mpsc::UnboundedSender<Refresh>,
    progress: Arc<ProgressRoutes>,
    askers: Arc<Askers>,
    /// Where its log messages go, with what says whose they are.
    logs: Arc<LogFeed>,
    connection: Arc<str>,
    prefix: Arc<str>,
    /// Which session it serves.
    session: SessionKey,
}

impl UpstreamClient {
    /// The client session, and its request, that the upstream asks something of
    /// while serving it: the forwarded request whose response stream the ask came
    /// on; over stdio and HTTP+SSE, which carry no such stream, the session's one
    /// request in flight. Never a guess between clients: otherwise it is refused.
    fn asker(&self, context: &RequestContext<RoleClient>) -> Result<(Peer<RoleServer>, RequestId), ErrorData> {
        let askers = self.askers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = match context.extensions.get::<InboundStreamOrigin>() {
            Some(InboundStreamOrigin::OutboundRequest(id)) => askers.get(&(self.session.clone(), id.clone())).cloned(),
            Some(InboundStreamOrigin::Unassociated) => None,
            None => {
                let mut mine = askers.iter().filter(|((session, _), _)| *session == self.session);
                match (mine.next(), mine.next()) {
                    (Some((_, asker)), None) => Some(asker.clone()),
                    _ => None,
                }
            }
        };
        found.ok_or_else(|| {
            ErrorData::invalid_request(
                format!("{} asked outside a client's request: the gateway has no client to ask", self.connection),
                None,
            )
        })
    }
}

/// Asks the client session `peer`, on the stream of its request `id`, what the upstream asked.
async fn ask((peer, id): (Peer<RoleServer>, RequestId), mut request: ServerRequest) -> Result<ClientResult, ErrorData> {
    request.extensions_mut().insert(OriginatingRequestId(id));
    peer.send_request(request).await.map_err(|e| match e {
        ServiceError::McpError(e) => e,
        other => ErrorData::internal_error(format!("the client did not answer: {other}"), None),
    })
}

/// An answer of the client that is not what the upstream asked for.
fn unexpected(asked: &str) -> ErrorData {
    ErrorData::internal_error(format!("the client answered {asked} with another result"), None)
}

#[allow(deprecated)] // sampling and roots: rmcp marks them deprecated (SEP-2577); 2025 servers still ask
impl ClientHandler for UpstreamClient {
    /// What the gateway offers upstreams: each ask is relayed to the client being served.
    fn get_info(&self) -> ClientConfig {
        let capabilities = ClientCapabilities::builder().enable_sampling().enable_elicitation().enable_roots().build();
        let config = ClientConfig::new(capabilities, Implementation::new("tenantgate", env!("CARGO_PKG_VERSION")));
        if self.session.mrtr { config } else { config.with_protocol_version(ProtocolVersion::V_2025_11_25) }
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let asker = self.asker(&context)?;
        match ask(asker, ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params))).await? {
            ClientResult::CreateMessageResult(r) => Ok(*r),
            _ => Err(unexpected("sampling/createMessage")),
        }
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let asker = self.asker(&context)?;
        match ask(asker, ServerRequest::ElicitRequest(ElicitRequest::new(request))).await? {
            ClientResult::ElicitResult(r) => Ok(r),
            _ => Err(unexpected("elicitation/create")),
        }
    }

    async fn list_roots(&self, context: RequestContext<RoleClient>) -> Result<ListRootsResult, ErrorData> {
        let asker = self.asker(&context)?;
        match ask(asker, ServerRequest::ListRootsRequest(ListRootsRequest::default())).await? {
            ClientResult::ListRootsResult(r) => Ok(r),
            _ => Err(unexpected("roots/list")),
        }
    }

    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        let route = self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(self.session.clone(), params.progress_token.clone()))
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

    #[allow(deprecated)] // logging: see `logs`
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.logs.publish(UpstreamLog {
            connection: self.connection.clone(),
            user: self.session.user.clone(),
            message: logs::prefixed(params, &self.prefix),
        });
    }
}

/// Removes a route (a progress token's, a forwarded request's asker) when the
/// forwarded request ends, however it ends.
struct Route<'a, K: Eq + std::hash::Hash, V>(&'a Mutex<HashMap<K, V>>, Option<K>);

impl<K: Eq + std::hash::Hash, V> Drop for Route<'_, K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.1.take() {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
        }
    }
}

impl Upstream {
    /// A disconnected upstream for a connection config; tool pin drifts it
    /// finds are sent to the hub's feed, once per tool and definition.
    pub fn new(config: McpConnectionConfig, links: HubLinks) -> Self {
        let label: Arc<str> = format!("mcp/{}", config.name).into();
        // A price that does not parse never gets here: the config load refuses it.
        let price_per_call = config.tools.price_per_call.as_deref().map_or(0, |p| {
            tenantgate_crds::pricing::per_call_nanos(p).unwrap_or_else(|e| {
                tracing::error!(connection = %config.name, error = %e, "tools.pricePerCall does not parse; calls are charged nothing");
                0
            })
        });
        Self {
            price_per_call,
            filter: ToolFilter::new(&config.tools),
            access: ToolAccess::new(&config.tools),
            timeout: Duration::from_secs(u64::from(config.timeout_seconds.max(1))),
            breaker: Arc::new(Breaker::new(label, BREAKER_THRESHOLD, BREAKER_OPEN_FOR)),
            live: ArcSwapOption::empty(),
            progress: Arc::new(Mutex::new(HashMap::new())),
            askers: Arc::new(Mutex::new(HashMap::new())),
            suspect: tokio::sync::Notify::new(),
            links,
            sessions: Mutex::new(HashMap::new()),
            refresh: Mutex::new(None),
            drift_log: DriftLog::default(),
            config,
        }
    }

    /// Whether each user reaches this upstream with their own OAuth token.
    pub fn is_per_user(&self) -> bool {
        matches!(self.config.auth, Some(McpAuthConfig::Oauth2AuthorizationCode { .. }))
    }

    /// Closes `subject`'s own sessions (their tokens were revoked).
    pub fn forget_user(&self, subject: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.retain(|key, _| key.user.as_deref() != Some(subject));
    }

    fn credential(&self, subject: &str) -> Option<UserCredential> {
        let tokens = self.links.user_tokens.clone()?;
        Some(UserCredential { tokens, config: Arc::new(self.config.clone()), subject: subject.to_string() })
    }

    /// The caller's own session of a per-user connection: opened on first
    /// use (after checking they authorized the gateway), closed when idle.
    async fn user_peer(&self, subject: Option<&str>, mrtr: bool) -> Result<Peer<RoleClient>, ForwardError> {
        let name = &self.config.name;
        let not_authorized = || ForwardError::NotAuthorized(UserOAuthError::NotAuthorized(name.clone()).to_string());
        let subject = subject.ok_or_else(not_authorized)?;
        let Some(tokens) = self.links.user_tokens.as_ref() else {
            return Err(ForwardError::Transport(name.clone(), "per-user OAuth is not ready yet".into()));
        };
        match tokens.has_token(name, subject).await {
            Ok(true) => {}
            Ok(false) => return Err(not_authorized()),
            Err(e) => return Err(ForwardError::Transport(name.clone(), e.to_string())),
        }
        self.session_peer(SessionKey { user: Some(subject.into()), mrtr }).await
    }

    /// The session `key`, opened on first use (with the user's credential for
    /// a user's own); sessions idle for [`SESSION_IDLE`] or closed are dropped.
    async fn session_peer(&self, key: SessionKey) -> Result<Peer<RoleClient>, ForwardError> {
        let slot = {
            let now = std::time::Instant::now();
            let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            sessions.retain(|_, s| {
                let idle = s
                    .last_used
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_some_and(|t| now - t > SESSION_IDLE);
                let closed = s.session.get().is_some_and(|session| session.is_transport_closed());
                Arc::strong_count(s) > 1 || !(idle || closed)
            });
            sessions.entry(key.clone()).or_default().clone()
        };
        *slot.last_used.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
        let credential = key.user.as_deref().and_then(|subject| self.credential(subject));
        let session = slot
            .session
            .get_or_try_init(|| async {
                let refresh = self.refresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                let refresh = refresh.unwrap_or_else(|| mpsc::unbounded_channel().0);
                let (session, _) =
                    connect(self, &self.links.client, self.handler(refresh, key.clone()), credential).await?;
                if let Some(level) = self.links.logs.level() {
                    set_log_level(self.name(), session.peer(), level).await;
                }
                Ok::<_, ConnectError>(session)
            })
            .await;
        match session {
            Ok(session) => Ok(session.peer().clone()),
            Err(e) => {
                self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
                Err(ForwardError::Transport(self.config.name.clone(), e.to_string()))
            }
        }
    }

    /// The handler of its session `session`.
    fn handler(&self, refresh: mpsc::UnboundedSender<Refresh>, session: SessionKey) -> UpstreamClient {
        UpstreamClient {
            refresh,
            progress: self.progress.clone(),
            askers: self.askers.clone(),
            logs: self.links.logs.clone(),
            connection: self.config.name.as_str().into(),
            prefix: self.config.prefix.as_str().into(),
            session,
        }
    }

    /// Asks its sessions (the shared one, and users' own) for log messages at `level` and above.
    #[allow(deprecated)] // logging: see `logs`
    pub(super) async fn ask_log_level(&self, level: rmcp::model::LoggingLevel) {
        let mut peers: Vec<Peer<RoleClient>> = self.live.load().iter().map(|l| l.peer.clone()).collect();
        {
            let sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            peers.extend(sessions.values().filter_map(|slot| slot.session.get().map(|s| s.peer().clone())));
        }
        futures_util::future::join_all(peers.iter().map(|peer| set_log_level(self.name(), peer, level))).await;
    }

    /// The connection's config.
    pub fn config(&self) -> &McpConnectionConfig {
        &self.config
    }

    /// What one answered tool call costs, in nano-units (0: free).
    pub fn price_per_call(&self) -> u64 {
        self.price_per_call
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

    /// Whether `caller` may list and call the upstream tool `name` (`tools.access`).
    pub fn grants_tool(&self, name: &str, caller: &crate::auth::Identity) -> bool {
        self.access.permits(name, caller)
    }

    /// Keeps the listed tools its allow/deny globs permit and applies its pins;
    /// the drifts found.
    pub(crate) fn admit_tools(&self, tools: &mut Vec<rmcp::model::Tool>) -> Vec<PinDrift> {
        tools.retain(|t| self.filter.permits(&t.name));
        super::pin::apply_pins(&self.config.name, &self.config.tools, tools)
    }

    /// Forwards one request for `subject` with the connection's timeout and
    /// breaker, passing the client's progress notifications and cancellation
    /// through when it comes from an MCP client session (`context`; the chat
    /// tool loop has none). A per-user connection is reached through the
    /// caller's own session, with their own token.
    ///
    /// A client on 2026-07-28 is served through a session opened at that
    /// revision, where the upstream answers with an `InputRequiredResult`
    /// (multi round-trip requests) what it needs from the client; the client
    /// retries with its answers itself. Other clients are served through a
    /// 2025-11-25 session, where the upstream asks in the middle of the request
    /// (relayed by [`UpstreamClient`]). The upstream is told which of sampling,
    /// elicitation and roots the client declared (request `_meta`), and an
    /// input request of another kind is refused with -32021 (missing required
    /// client capability).
    pub async fn forward(
        &self,
        mut request: ClientRequest,
        context: Option<&RequestContext<RoleServer>>,
        subject: Option<&str>,
    ) -> Result<ServerResult, ForwardError> {
        if let Some(context) = context {
            declare_capabilities(&mut request, context.client_capabilities().unwrap_or_default());
        }
        let result = self.send(request, context, subject).await?;
        if let (ServerResult::InputRequiredResult(asked), Some(context)) = (&result, context) {
            let needed = needed_capabilities(asked);
            if !declared(context.client_capabilities().unwrap_or_default(), &needed) {
                return Err(ForwardError::Upstream(ErrorData::missing_required_client_capability(needed)));
            }
            if !speaks_mrtr(context.protocol_version()) {
                return Err(ForwardError::Upstream(ErrorData::internal_error(
                    format!(
                        "MCP connection {} answered a 2025-11-25 request with input_required, which only 2026-07-28 clients take",
                        self.config.name
                    ),
                    None,
                )));
            }
        }
        Ok(result)
    }

    /// The raw sender of its shared session, for the `tools/call`
    /// pass-through: only a connected streamable-HTTP connection whose
    /// credentials are the connection's own (not a per-user one) has one.
    pub fn raw_sender(&self) -> Option<RawSender> {
        if self.is_per_user() {
            return None;
        }
        self.live.load().as_ref().and_then(|live| live.raw.clone()).filter(RawSender::ready)
    }

    /// Posts one raw JSON-RPC request with `sender` under the connection's
    /// breaker (the same one [`Self::forward`] uses); the answer, to be read
    /// by `deadline` (the connection's timeout), and the breaker's permit to
    /// settle with [`Self::settle_raw`] once it is read.
    pub async fn post_raw(
        &self,
        sender: &RawSender,
        body: Vec<u8>,
    ) -> Result<(reqwest::Response, Permit, tokio::time::Instant), ForwardError> {
        let name = &self.config.name;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let permit = self.breaker.try_acquire().ok_or_else(|| ForwardError::BreakerOpen(name.clone()))?;
        let failed = match tokio::time::timeout_at(deadline, sender.post(body)).await {
            Ok(Ok(response)) if response.status().is_success() => return Ok((response, permit, deadline)),
            Ok(Ok(response)) => ForwardError::Transport(name.clone(), format!("HTTP {}", response.status())),
            Ok(Err(e)) => ForwardError::Transport(name.clone(), e),
            Err(_) => ForwardError::Timeout(name.clone(), self.timeout.as_secs()),
        };
        self.settle_raw(permit, Err(&failed));
        Err(failed)
    }

    /// Settles a raw request's breaker permit as [`Self::forward`] would its
    /// outcome: a JSON-RPC error or a cancellation is an answer, a timeout or
    /// a transport failure counts against the upstream (and a transport
    /// failure has the session checked now).
    pub fn settle_raw(&self, permit: Permit, outcome: Result<(), &ForwardError>) {
        match outcome {
            Ok(()) | Err(ForwardError::Upstream(_) | ForwardError::Cancelled) => permit.success(),
            Err(ForwardError::Transport(..)) => {
                permit.failure();
                self.suspect.notify_one();
            }
            Err(_) => permit.failure(),
        }
    }

    /// A notification the upstream sent on the stream of a raw request, as
    /// its session's handler ([`UpstreamClient`]) takes it: log messages to the
    /// hub's feed, list changes to the listing loop; anything else is dropped.
    #[allow(deprecated)] // logging: see `logs`
    pub fn on_raw_notification(&self, method: &str, params: Option<&serde_json::value::RawValue>) {
        let refresh = match method {
            "notifications/message" => {
                let Some(params) = params.and_then(|p| serde_json::from_str(p.get()).ok()) else { return };
                self.links.logs.publish(UpstreamLog {
                    connection: self.config.name.as_str().into(),
                    user: None,
                    message: logs::prefixed(params, &self.config.prefix),
                });
                return;
            }
            "notifications/tools/list_changed" => Refresh::Tools,
            "notifications/prompts/list_changed" => Refresh::Prompts,
            "notifications/resources/list_changed" => Refresh::Resources,
            _ => return,
        };
        if let Some(tx) = &*self.refresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            let _ = tx.send(refresh);
        }
    }

    /// Sends `request` through the session for `context`'s revision.
    async fn send(
        &self,
        request: ClientRequest,
        context: Option<&RequestContext<RoleServer>>,
        subject: Option<&str>,
    ) -> Result<ServerResult, ForwardError> {
        let name = &self.config.name;
        let mrtr = context.is_some_and(|c| speaks_mrtr(c.protocol_version()));
        let (peer, key) = if self.is_per_user() {
            (self.user_peer(subject, mrtr).await?, SessionKey { user: subject.map(Arc::from), mrtr })
        } else if mrtr {
            let key = SessionKey { user: None, mrtr };
            (self.session_peer(key.clone()).await?, key)
        } else {
            match self.live.load().as_ref() {
                Some(live) => (live.peer.clone(), SessionKey::default()),
                None => return Err(ForwardError::Down(name.clone())),
            }
        };
        let permit = self.breaker.try_acquire().ok_or_else(|| ForwardError::BreakerOpen(name.clone()))?;
        let handle = match peer.send_request_with_option(request, PeerRequestOptions::with_timeout(self.timeout)).await
        {
            Ok(h) => h,
            Err(e) => {
                permit.failure();
                self.suspect.notify_one();
                if let Some(subject) = subject.filter(|_| self.is_per_user()) {
                    self.forget_user(subject);
                }
                return Err(ForwardError::Transport(name.clone(), e.to_string()));
            }
        };
        let _asker = Route(
            &self.askers,
            context.map(|context| {
                let key = (key.clone(), handle.id.clone());
                self.askers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key.clone(), (context.peer.clone(), context.id.clone()));
                key
            }),
        );
        let _route = Route(
            &self.progress,
            context.and_then(|c| c.meta.get_progress_token().map(|token| (c, token))).map(|(context, downstream)| {
                let upstream = (key.clone(), handle.progress_token.clone());
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
            () = cancelled(context) => {
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
                Ok(typed(result))
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
                if let Some(subject) = subject.filter(|_| self.is_per_user()) {
                    self.forget_user(subject);
                }
                Err(ForwardError::Transport(name.clone(), e.to_string()))
            }
        }
    }
}

/// Whether a peer of protocol `version` takes multi round-trip requests
/// (2026-07-28 and later) rather than requests in the middle of its own.
fn speaks_mrtr(version: Option<ProtocolVersion>) -> bool {
    version.is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
}

/// The client capabilities an upstream's input requests need.
#[allow(deprecated)] // sampling and roots: see the imports
fn needed_capabilities(asked: &InputRequiredResult) -> ClientCapabilities {
    let mut needed = ClientCapabilities::default();
    for request in asked.input_requests.iter().flat_map(|r| r.values()) {
        match request {
            InputRequest::CreateMessage(_) => needed.sampling = Some(Default::default()),
            InputRequest::Elicitation(_) => needed.elicitation = Some(Default::default()),
            InputRequest::ListRoots(_) => needed.roots = Some(Default::default()),
            _ => {}
        }
    }
    needed
}

/// Whether `client` declared every capability of `needed`.
#[allow(deprecated)] // sampling and roots: see the imports
fn declared(client: ClientCapabilities, needed: &ClientCapabilities) -> bool {
    (needed.sampling.is_none() || client.sampling.is_some())
        && (needed.elicitation.is_none() || client.elicitation.is_some())
        && (needed.roots.is_none() || client.roots.is_some())
}

/// Declares to the upstream, in the request's `_meta` (2026-07-28), which of
/// sampling, elicitation and roots the client declared (what the gateway
/// relays): an upstream then asks only for input this client can give.
#[allow(deprecated)] // sampling and roots: see the imports
fn declare_capabilities(request: &mut ClientRequest, client: ClientCapabilities) {
    let meta = match request {
        ClientRequest::CallToolRequest(r) => &mut r.params.meta,
        ClientRequest::GetPromptRequest(r) => &mut r.params.meta,
        ClientRequest::ReadResourceRequest(r) => &mut r.params.meta,
        _ => return,
    };
    let mut relayed = ClientCapabilities::default();
    relayed.sampling = client.sampling;
    relayed.elicitation = client.elicitation;
    relayed.roots = client.roots;
    meta.get_or_insert_with(Default::default).set_client_capabilities(relayed);
}

/// A complete result with its `resultType`: a 2025 upstream leaves it out, and
/// 2026-07-28 clients require it on every result they get.
fn typed(mut result: ServerResult) -> ServerResult {
    match &mut result {
        ServerResult::CallToolResult(r) => r.result_type.get_or_insert(ResultType::COMPLETE),
        ServerResult::GetPromptResult(r) => r.result_type.get_or_insert(ResultType::COMPLETE),
        ServerResult::ReadResourceResult(r) => r.result_type.get_or_insert(ResultType::COMPLETE),
        _ => return result,
    };
    result
}

/// Asks an upstream session for log messages at `level` and above, when its
/// server offers logging; a refusal is logged, not fatal.
#[allow(deprecated)] // logging: see `logs`
async fn set_log_level(name: &str, peer: &Peer<RoleClient>, level: rmcp::model::LoggingLevel) {
    if peer.peer_info().is_none_or(|info| info.capabilities.logging.is_none()) {
        return;
    }
    let asked = tokio::time::timeout(LOG_LEVEL_TIMEOUT, peer.set_level(rmcp::model::SetLevelRequestParams::new(level)));
    match asked.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(connection = %name, error = %e, "the upstream refused logging/setLevel"),
        Err(_) => tracing::warn!(connection = %name, "the upstream did not answer logging/setLevel"),
    }
}

/// Resolves when the MCP client cancels its request; never without one.
async fn cancelled(context: Option<&RequestContext<RoleServer>>) {
    match context {
        Some(c) => c.ct.cancelled().await,
        None => std::future::pending().await,
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
    let mut delays = crate::backoff::Delays::new(BACKOFF_MIN, BACKOFF_MAX).peekable();
    loop {
        if *stop.borrow() {
            break;
        }
        let (refresh_tx, mut refresh_rx) = mpsc::unbounded_channel();
        *upstream.refresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(refresh_tx.clone());
        let handler = upstream.handler(refresh_tx, SessionKey::default());
        // A per-user connection is listed with the token of the user who
        // authorized last (anonymously while nobody has).
        let lister = match upstream.links.user_tokens.as_ref().filter(|_| upstream.is_per_user()) {
            Some(tokens) => tokens.lister(&name).await.ok().flatten().and_then(|s| upstream.credential(&s)),
            None => None,
        };
        let anonymous_per_user = upstream.is_per_user() && lister.is_none();
        let connected = tokio::select! {
            r = connect(&upstream, &client, handler, lister) => r,
            _ = stop.changed() => break,
        };
        match connected {
            Ok((session, raw)) => {
                delays = crate::backoff::Delays::new(BACKOFF_MIN, BACKOFF_MAX).peekable();
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
                        go_live(&upstream, &peer, offer, &raw).await;
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
                                            go_live(&upstream, &peer, offer, &raw).await;
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
                    retry_in_ms = delays.peek().map_or(0, |d| d.as_millis() as u64),
                    "MCP connection down"
                );
                if anonymous_per_user {
                    tracing::info!(
                        connection = %name,
                        "this per-user OAuth connection is listed with a user's token once one authorizes at /oauth/mcp/{name}/start"
                    );
                }
            }
        }
        if upstream.live.swap(None).is_some() {
            gauge.set(0.0);
            publish();
        }
        metrics::counter!("tenantgate_mcp_reconnects_total", "connection" => name.clone()).increment(1);
        let delay = delays.next().unwrap_or(BACKOFF_MAX);
        tokio::select! {
            () = tokio::time::sleep(crate::backoff::spread(delay)) => {}
            _ = stop.changed() => break,
        }
    }
    upstream.live.store(None);
    gauge.set(0.0);
    publish();
}

/// Makes a listing of the shared session `peer` the live one (asking the
/// session for log messages first, when a client wants them).
async fn go_live(upstream: &Upstream, peer: &Peer<RoleClient>, offer: Offer, raw: &Option<RawSender>) {
    if let Some(level) = upstream.links.logs.level() {
        set_log_level(upstream.name(), peer, level).await;
    }
    upstream.live.store(Some(Arc::new(Live { peer: peer.clone(), offer: Arc::new(offer), raw: raw.clone() })));
}

type Session = rmcp::service::RunningService<RoleClient, UpstreamClient>;

async fn connect(
    upstream: &Upstream,
    client: &reqwest::Client,
    handler: UpstreamClient,
    user: Option<UserCredential>,
) -> Result<(Session, Option<RawSender>), ConnectError> {
    let secs = upstream.config.timeout_seconds.max(1);
    let handshake = async {
        let transport = transport::build(&upstream.config, client, user).await?;
        let (served, raw) = match transport {
            Transport::Http(t, raw) => (handler.serve(t).await, Some(raw)),
            Transport::Sse(t) => (handler.serve(t).await, None),
            Transport::Stdio(t) => (handler.serve(t).await, None),
        };
        served.map(|s| (s, raw)).map_err(|e| ConnectError::Handshake(e.to_string()))
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
    let drifts = upstream.admit_tools(&mut tools);
    upstream.links.drift_board.set(upstream.name(), drifts.iter().map(|d| d.tool.clone()).collect());
    for drift in upstream.drift_log.fresh(drifts) {
        let _ = upstream.links.drifts.send(drift);
    }
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
