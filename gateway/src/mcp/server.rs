//! The rmcp `ServerHandler` of one `/mcp` client session: lists from the
//! aggregated catalog, requests routed to the upstream that owns the name,
//! the upstreams' log messages passed on at the level the client set.
#![allow(deprecated)] // logging/setLevel (rmcp marks it deprecated, SEP-2577): 2025 clients still use it

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientRequest, ErrorData, GetPromptRequest, GetPromptRequestParams,
    GetPromptResponse, Implementation, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequest, ReadResourceRequestParams, ReadResourceResponse,
    ServerCapabilities, ServerConfig, ServerNotification, ServerResult, SetLevelRequestParams, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, SubscriptionContext, SubscriptionSendError};
use rmcp::{RoleServer, ServerHandler};

use super::McpHub;
use super::call::Mode;
use super::catalog::exposed_uri;
use super::logs;
use crate::auth::{Caller, Identity};

/// One client session's handler.
#[derive(Debug, Clone)]
pub struct AggregateServer {
    hub: McpHub,
    mode: Mode,
    /// The severity of the least severe log message the client wants (none: it did not set a level).
    log_level: Arc<OnceLevel>,
}

/// A session's log level: unset until `logging/setLevel`, then the severity asked for last.
#[derive(Debug, Default)]
struct OnceLevel(std::sync::Mutex<Option<u8>>);

impl OnceLevel {
    /// Sets the severity; whether it was unset.
    fn set(&self, severity: u8) -> bool {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).replace(severity).is_none()
    }

    fn admits(&self, severity: u8) -> bool {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some_and(|least| severity >= least)
    }
}

impl AggregateServer {
    /// A handler over the hub's catalog. Under [`Mode::Tenant`] (the
    /// gateway's `/mcp`), tool calls run under the tenant's limits, policies
    /// and audit trail; under [`Mode::Bridge`] (the stdio bridge, behind a
    /// gateway that applies them), they pass straight through.
    pub fn new(hub: McpHub, mode: Mode) -> Self {
        Self { hub, mode, log_level: Arc::default() }
    }
}

/// The authenticated caller of a request, put there by the `/mcp` HTTP layer.
fn caller(context: &RequestContext<RoleServer>) -> Option<std::sync::Arc<Identity>> {
    context.extensions.get::<http::request::Parts>()?.extensions.get::<Caller>().map(|c| c.0.clone())
}

/// The next change of the catalog's lists (`None`: the hub is gone). A
/// receiver that fell behind is told that everything may have changed.
async fn next_change(changes: &mut tokio::sync::broadcast::Receiver<super::ListChanged>) -> Option<super::ListChanged> {
    match changes.recv().await {
        Ok(c) => Some(c),
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
            Some(super::ListChanged { tools: true, prompts: true, resources: true })
        }
        Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
    }
}

/// The list-changed notifications of one change.
fn notifications(changed: super::ListChanged) -> impl Iterator<Item = ServerNotification> {
    [
        changed.tools.then(|| ServerNotification::ToolListChangedNotification(Default::default())),
        changed.prompts.then(|| ServerNotification::PromptListChangedNotification(Default::default())),
        changed.resources.then(|| ServerNotification::ResourceListChangedNotification(Default::default())),
    ]
    .into_iter()
    .flatten()
}

/// How often a forwarder checks that its client session is still open.
const SESSION_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Resolves once the client session `peer` belongs to has ended (checked every
/// [`SESSION_CHECK_EVERY`]): a forwarder with nothing to send stops too.
async fn closed(peer: &Peer<RoleServer>) {
    while !peer.is_transport_closed() {
        tokio::time::sleep(SESSION_CHECK_EVERY).await;
    }
}

/// Sends the catalog's list changes to one client session (2025 revisions)
/// until it ends.
async fn forward_list_changes(hub: McpHub, peer: Peer<RoleServer>) {
    let mut changes = hub.subscribe();
    loop {
        let changed = tokio::select! {
            changed = next_change(&mut changes) => match changed {
                Some(changed) => changed,
                None => return,
            },
            () = closed(&peer) => return,
        };
        for notification in notifications(changed) {
            if peer.send_notification(notification).await.is_err() {
                return;
            }
        }
    }
}

/// Sends one client session the upstreams' log messages at its level and
/// above, from the connections `caller` can see (see `logs`), until the session ends.
async fn forward_logs(hub: McpHub, peer: Peer<RoleServer>, level: Arc<OnceLevel>, caller: Option<Arc<Identity>>) {
    let mut logs = hub.subscribe_logs();
    loop {
        let received = tokio::select! {
            received = logs.recv() => received,
            () = closed(&peer) => return,
        };
        let log = match received {
            Ok(log) => log,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "a slow MCP client session missed upstream log messages");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if !level.admits(logs::severity(log.message.level)) {
            continue;
        }
        let visible = match (&caller, &log.user) {
            (Some(caller), Some(user)) => caller.subject == **user,
            (Some(caller), None) => hub.catalog().shows_connection(&log.connection, caller),
            // The stdio bridge has no callers: the gateway in front of it decides.
            (None, _) => true,
        };
        if visible && peer.notify_logging_message(log.message.clone()).await.is_err() {
            return;
        }
    }
}

fn forward_error(e: super::upstream::ForwardError) -> ErrorData {
    e.into_error_data()
}

/// Sends `request` to `upstream` for the session's caller (their own
/// session of a per-user connection); a failure becomes the client's error.
async fn forward(
    upstream: &super::Upstream,
    request: ClientRequest,
    context: &RequestContext<RoleServer>,
) -> Result<ServerResult, ErrorData> {
    let caller = caller(context);
    let subject = caller.as_ref().map(|c| c.subject.as_str());
    upstream.forward(request, Some(context), subject).await.map_err(forward_error)
}

impl ServerHandler for AggregateServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_resources()
                .enable_resources_list_changed()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("tenantgate", env!("CARGO_PKG_VERSION")))
        .with_instructions("The tenant's MCP tools, prompts and resources; names are prefixed by their connection.")
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        tokio::spawn(forward_list_changes(self.hub.clone(), context.peer));
    }

    /// `subscriptions/listen` (2026-07-28): the list changes it asks for; no resource updates.
    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.tools_list_changed = requested.tools_list_changed;
        accepted.prompts_list_changed = requested.prompts_list_changed;
        accepted.resources_list_changed = requested.resources_list_changed;
        Some(accepted)
    }

    /// Sends one subscription the catalog's list changes it accepted until it is cancelled.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.hub.subscribe();
        loop {
            let changed = tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = next_change(&mut changes) => match changed {
                    Some(changed) => changed,
                    None => return Ok(()),
                },
            };
            for notification in notifications(changed) {
                match context.sink().send(notification).await {
                    Ok(()) | Err(SubscriptionSendError::NotificationNotAccepted(_)) => {}
                    Err(_) => return Ok(()),
                }
            }
        }
    }

    /// Logging for the session: from now on, the upstreams' log messages at
    /// `level` and above (the upstreams are asked for it when it is more
    /// verbose than what they were asked for).
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.hub.want_logs(request.level).await;
        if self.log_level.set(logs::severity(request.level)) {
            let caller = match self.mode {
                Mode::Tenant(_) => Some(caller(&context).ok_or_else(|| ErrorData::internal_error("no caller", None))?),
                Mode::Bridge => None,
            };
            tokio::spawn(forward_logs(self.hub.clone(), context.peer, self.log_level.clone(), caller));
        }
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let catalog = self.hub.catalog();
        // The bridge has no callers of its own: the gateway in front of it applies `tools.access`.
        let tools = match (&self.mode, caller(&context)) {
            (Mode::Tenant(_), Some(caller)) => catalog.tools_for(&caller),
            (Mode::Tenant(_), None) => Vec::new(),
            (Mode::Bridge, _) => catalog.tools.clone(),
        };
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        use crate::traces::FutureExt as _;
        let caller = caller(&context);
        let trace = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<crate::traces::Context>())
            .cloned();
        let call =
            super::call::call_tool(&self.hub, &self.mode, caller.as_deref(), request, super::call::Via::Mcp(&context));
        match trace {
            Some(trace) => call.with_context(trace).await,
            None => call.await,
        }
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(self.hub.catalog().prompts.clone()))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let catalog = self.hub.catalog();
        let route = catalog
            .prompt(&request.name)
            .ok_or_else(|| ErrorData::invalid_params(format!("unknown prompt: {}", request.name), None))?;
        let mut params = request;
        params.name = route.name.to_string();
        match forward(&route.upstream, ClientRequest::GetPromptRequest(GetPromptRequest::new(params)), &context).await?
        {
            ServerResult::GetPromptResult(r) => Ok(GetPromptResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(GetPromptResponse::InputRequired(r)),
            _ => Err(ErrorData::internal_error("the upstream answered prompts/get with another result", None)),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(self.hub.catalog().resources.clone()))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(self.hub.catalog().templates.clone()))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let catalog = self.hub.catalog();
        let (upstream, uri) = catalog.resource(&request.uri).ok_or_else(|| {
            let data = serde_json::json!({"uri": request.uri});
            ErrorData::resource_not_found(format!("unknown resource: {}", request.uri), Some(data))
        })?;
        let mut params = request;
        params.uri = uri;
        match forward(&upstream, ClientRequest::ReadResourceRequest(ReadResourceRequest::new(params)), &context).await?
        {
            ServerResult::ReadResourceResult(mut r) => {
                // Contents name their URI: give the client the exposed one back.
                for c in &mut r.contents {
                    rewrite_contents_uri(c, upstream.prefix());
                }
                Ok(ReadResourceResponse::Complete(r))
            }
            ServerResult::InputRequiredResult(r) => Ok(ReadResourceResponse::InputRequired(r)),
            _ => Err(ErrorData::internal_error("the upstream answered resources/read with another result", None)),
        }
    }
}

/// Gives resource contents their exposed URI (`<prefix>+<uri>`).
pub(crate) fn rewrite_contents_uri(contents: &mut rmcp::model::ResourceContents, prefix: &str) {
    use rmcp::model::ResourceContents;
    match contents {
        ResourceContents::TextResourceContents { uri, .. } | ResourceContents::BlobResourceContents { uri, .. } => {
            *uri = exposed_uri(prefix, uri);
        }
        #[allow(unreachable_patterns)]
        _ => {}
    }
}
