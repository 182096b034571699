//! The single `tools/call` path of `/mcp`.
//!
//! [`call_tool`] is where per-call policy attaches: the connection's
//! `tools.access` for the caller and the tenant's rate limits before the call
//! is forwarded; after it, the prompt guards over the result
//! (tool output is untrusted input) and one audit event (connection, tool,
//! subject, duration, outcome, redacted arguments). Everything that runs a
//! tenant's MCP tool (the `/mcp` endpoint and the server-side tool loop of
//! chat, [`super::chat`]) goes through it, or, for the `/mcp` pass-through
//! ([`super::passthrough`]), through the same steps: [`admit`] before the
//! call is forwarded, [`Admitted::guard`] and [`Admitted::finish`] after.

use std::sync::Arc;
use std::time::Instant;

use rmcp::RoleServer;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest, ContentBlock, ErrorData,
    ServerResult,
};
use rmcp::service::RequestContext;

use super::McpHub;
use super::catalog::Route;
use super::upstream::ForwardError;
use crate::auth::Identity;
use crate::config::{Runtime, RuntimeHandle};
use crate::limits::Reservation;
use crate::policy::{Finding, redact_secrets};
use crate::storage::{AuditEvent, AuditKind};

/// Whose rules a tool call runs under.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The gateway's own tenant: its rate limits, prompt guards and audit trail.
    Tenant(RuntimeHandle),
    /// The stdio bridge: calls pass straight through (the gateway in front of
    /// it applies limits, guards and audit).
    Bridge,
}

/// Where a tool call comes from.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    /// An `/mcp` client session: its progress notifications and cancellation pass through.
    Mcp(&'a RequestContext<RoleServer>),
    /// An `/mcp` client session through the pass-through (`super::passthrough`),
    /// which relays the upstream's answer itself.
    Passthrough,
    /// The server-side tool loop of the chat request with this `x-request-id`.
    Chat {
        /// The chat request's id, recorded in the audit event.
        request_id: Option<&'a str>,
    },
}

impl<'a> Via<'a> {
    fn context(self) -> Option<&'a RequestContext<RoleServer>> {
        match self {
            Self::Mcp(context) => Some(context),
            Self::Passthrough | Self::Chat { .. } => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Mcp(_) | Self::Passthrough => "mcp",
            Self::Chat { .. } => "chat",
        }
    }
}

/// Runs one `tools/call` for `caller`: resolves the exposed name to its
/// upstream (an unknown or filtered-out name is a JSON-RPC `invalid params`
/// error, and nothing is sent upstream), forwards it, and maps the outcome.
/// An upstream that is down, slow or failing yields a tool result with
/// `isError: true` so the model can read why; a JSON-RPC error from the
/// upstream is passed on unchanged.
pub async fn call_tool(
    hub: &McpHub,
    mode: &Mode,
    caller: Option<&Identity>,
    request: CallToolRequestParams,
    via: Via<'_>,
) -> Result<CallToolResponse, ErrorData> {
    let arguments = || request.arguments.as_ref().and_then(|a| serde_json::to_string(a).ok());
    let admitted = admit(hub, mode, caller, &request.name, arguments, via).await?;
    let started = Instant::now();
    let (forwarded, outcome) = forward(&admitted.route, request, via.context(), admitted.subject()).await;
    let mut findings = Vec::new();
    let forwarded = match forwarded {
        Ok(ServerResult::CallToolResult(result)) => {
            Ok(ServerResult::CallToolResult(admitted.guard(result, &mut findings)))
        }
        other => other,
    };
    let connection = admitted.finish(outcome, &findings, started);
    respond(&connection, forwarded)
}

/// A `tools/call` the policy let through: the route to forward it on, and
/// what its guards and its audit event need once the upstream answered.
/// [`call_tool`] and the `/mcp` pass-through (`super::passthrough`) share it.
#[derive(Debug)]
pub struct Admitted {
    /// The upstream tool.
    pub route: Route,
    /// The connection's name.
    connection: String,
    /// Under [`Mode::Tenant`]: what the guards and the audit event need.
    tenant: Option<TenantCall>,
}

#[derive(Debug)]
struct TenantCall {
    state: RuntimeHandle,
    runtime: Arc<Runtime>,
    caller: Identity,
    audit: AuditEvent,
    via: &'static str,
    arguments: Option<String>,
    /// The call's place under the limits and budgets: settled when it is dropped.
    admission: crate::limits::Admission,
}

/// The per-call policy before a `tools/call` is forwarded: the exposed
/// `name` must be in the catalog (else `invalid params`, counted, nothing
/// sent), the caller must be granted it by `tools.access` (else refused and
/// audited), and the call counts as one request against the caller's and the
/// tenant's limits (else refused with `retryAfterSeconds`, audited).
/// `arguments` gives the call's arguments as JSON text for the audit event
/// (redacted there); it is asked for only under [`Mode::Tenant`].
pub async fn admit(
    hub: &McpHub,
    mode: &Mode,
    caller: Option<&Identity>,
    name: &str,
    arguments: impl FnOnce() -> Option<String>,
    via: Via<'_>,
) -> Result<Admitted, ErrorData> {
    let catalog = hub.catalog();
    let Some(route) = catalog.tool(name) else {
        metrics::counter!("tenantgate_mcp_tool_calls_total", "connection" => "", "outcome" => "unknown_tool")
            .increment(1);
        tracing::info!(tool = %name, subject = caller.map(|c| c.subject.as_str()), "call to an unknown or filtered-out MCP tool refused");
        return Err(ErrorData::invalid_params(format!("unknown tool: {name}"), None));
    };
    let connection = route.upstream.name().to_string();
    let (state, caller) = match (mode, caller) {
        (Mode::Tenant(state), Some(caller)) => (state, caller),
        (Mode::Bridge, _) => return Ok(Admitted { route: route.clone(), connection, tenant: None }),
        (Mode::Tenant(_), None) => {
            return Err(ErrorData::invalid_request("tools/call needs an authenticated caller", None));
        }
    };
    let runtime = state.runtime();
    let mut audit = AuditEvent::new(&runtime.config.tenant.name, &caller.subject, AuditKind::ToolCall, "tools/call");
    audit.resource = Some(name.to_string());
    if let Via::Chat { request_id } = via {
        audit.request_id = request_id.map(str::to_owned);
    }
    let arguments = arguments().map(|text| redact_secrets(&text).into_owned());

    if !route.upstream.grants_tool(&route.name, caller) {
        metrics::counter!("tenantgate_mcp_tool_calls_total", "connection" => connection.clone(), "outcome" => "access_denied")
            .increment(1);
        tracing::info!(tool = %name, %connection, subject = %caller.subject, "MCP tool call refused by the connection's tools.access");
        let refusal = access_denied(name, &connection, caller);
        audit.status = Some(403);
        audit.reason = Some(ACCESS_DENIED.into());
        audit.details = serde_json::json!({"connection": connection, "tool": &*route.name, "via": via.label(), "roles": &caller.roles, "message": &refusal.message, "arguments": arguments});
        state.storage().recorder.audit(audit);
        return Err(refusal);
    }

    // A tool call counts as one request against the caller's and the tenant's limits, and
    // reserves its price (`tools.pricePerCall`) in their budgets.
    let reservation = Reservation::default().costing(route.upstream.price_per_call());
    let admission = runtime.limiter.admit_reservation(caller, reservation, false).await;
    let admission = match admission {
        Ok(admission) => admission,
        Err(limited) => {
            audit.status = Some(i32::from(limited.status().as_u16()));
            audit.reason = Some(limited.as_reason().into());
            audit.details = serde_json::json!({"connection": connection, "tool": &*route.name, "via": via.label(), "arguments": arguments});
            state.storage().recorder.audit(audit);
            return Err(ErrorData::invalid_request(
                limited.to_string(),
                Some(
                    serde_json::json!({"reason": limited.as_reason(), "retryAfterSeconds": limited.retry_after().map(|d| d.as_secs_f64().ceil())}),
                ),
            ));
        }
    };
    let tenant = TenantCall {
        state: state.clone(),
        runtime,
        caller: caller.clone(),
        audit,
        via: via.label(),
        arguments,
        admission,
    };
    Ok(Admitted { route: route.clone(), connection, tenant: Some(tenant) })
}

impl Admitted {
    /// The connection's name.
    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// Whose call it is, under [`Mode::Tenant`].
    pub fn subject(&self) -> Option<&str> {
        self.tenant.as_ref().map(|t| t.caller.subject.as_str())
    }

    /// Whether a prompt policy applies to the caller, so the result must be
    /// read for [`Self::guard`] (with none, guarding changes nothing).
    pub fn guards_results(&self) -> bool {
        self.tenant.as_ref().is_some_and(|t| t.runtime.policies.applies_to(&t.caller))
    }

    /// Runs the prompt guards over the result (under [`Mode::Tenant`]).
    pub fn guard(&self, result: CallToolResult, findings: &mut Vec<Finding>) -> CallToolResult {
        match &self.tenant {
            Some(t) => guard_result(&t.runtime, &t.caller, result, findings),
            None => result,
        }
    }

    /// Writes the call's audit event (under [`Mode::Tenant`]): `outcome` is
    /// the forward's (`ok` or a [`ForwardError`] reason), `started` when it
    /// was sent. Returns the connection's name.
    pub fn finish(self, outcome: &str, findings: &[Finding], started: Instant) -> String {
        let Some(mut t) = self.tenant else { return self.connection };
        // An answered call costs its price; a failed one nothing.
        let price = self.route.upstream.price_per_call();
        let cost = (outcome == "ok" && price > 0).then_some(price);
        match cost {
            Some(nanos) => {
                t.admission.record_cost(nanos);
                metrics::counter!("tenantgate_mcp_tool_cost_nanounits_total", "connection" => self.connection.clone())
                    .increment(nanos);
            }
            None => t.admission.record_failure(),
        }
        t.audit.status = Some(if outcome == "ok" { 200 } else { 502 });
        t.audit.reason = (outcome != "ok").then(|| outcome.to_string());
        t.audit.findings = crate::policy::audit::findings(findings);
        t.audit.details = serde_json::json!({
            "connection": self.connection,
            "tool": &*self.route.name,
            "durationMs": started.elapsed().as_millis() as u64,
            "outcome": outcome,
            "via": t.via,
            "arguments": t.arguments,
            "cost": cost.map(|nanos| tenantgate_crds::pricing::format_nanos(nanos as i64)),
        });
        t.state.storage().recorder.audit(t.audit);
        self.connection
    }
}

/// The audit reason of a call `tools.access` refused.
pub const ACCESS_DENIED: &str = "ToolAccessDenied";

/// The JSON-RPC error of a call `tools.access` refused: names the caller's
/// roles and the rule's field, never the roles that would have been granted.
fn access_denied(tool: &str, connection: &str, caller: &Identity) -> ErrorData {
    let roles = if caller.roles.is_empty() { "(none)".to_string() } else { caller.roles.join(", ") };
    ErrorData::invalid_request(
        format!(
            "the caller's roles ({roles}) may not call the tool {tool}: McpConnection {connection} grants it to other roles or subjects (spec.tools.access)"
        ),
        Some(serde_json::json!({"reason": ACCESS_DENIED, "tool": tool})),
    )
}

/// Sends the call to the upstream that owns the tool, under its upstream
/// name; returns the answer and its outcome label (also counted and timed).
async fn forward(
    route: &Route,
    request: CallToolRequestParams,
    context: Option<&RequestContext<RoleServer>>,
    subject: Option<&str>,
) -> (Result<ServerResult, ForwardError>, &'static str) {
    let connection = route.upstream.name().to_string();
    let started = Instant::now();
    // Traced: a span for the upstream call (the tool as the client named it), named in the
    // request's `_meta.traceparent` (SEP-414), which the transport also sends as the HTTP header.
    let span = crate::traces::Attempt::start_mcp("tools/call", &request.name, &connection);
    let mut upstream_params = request;
    upstream_params.name = route.name.to_string().into();
    if let Some(traceparent) = span.as_ref().and_then(crate::traces::Attempt::traceparent) {
        upstream_params.meta.get_or_insert_default().set_traceparent(traceparent);
    }
    let forwarded = route
        .upstream
        .forward(ClientRequest::CallToolRequest(CallToolRequest::new(upstream_params)), context, subject)
        .await;
    let outcome = match &forwarded {
        Ok(_) => "ok",
        Err(e) => e.as_reason(),
    };
    if let Some(span) = span {
        match &forwarded {
            Ok(_) => span.answered(),
            Err(e) => span.failed(None, e.as_reason(), e.to_string()),
        }
    }
    record_forward(connection, outcome, started);
    (forwarded, outcome)
}

/// Counts and times one forwarded call by its outcome label.
pub fn record_forward(connection: String, outcome: &'static str, started: Instant) {
    metrics::counter!("tenantgate_mcp_tool_calls_total", "connection" => connection.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("tenantgate_mcp_tool_call_duration_seconds", "connection" => connection)
        .record(started.elapsed().as_secs_f64());
}

/// The client's answer for an upstream's.
pub fn respond(connection: &str, forwarded: Result<ServerResult, ForwardError>) -> Result<CallToolResponse, ErrorData> {
    match forwarded {
        Ok(ServerResult::CallToolResult(result)) => Ok(CallToolResponse::Complete(result)),
        Ok(ServerResult::InputRequiredResult(result)) => Ok(CallToolResponse::InputRequired(result)),
        Ok(ServerResult::CreateTaskResult(result)) => Ok(CallToolResponse::Task(result)),
        Ok(_) => Err(ErrorData::internal_error(
            format!("MCP connection {connection} answered tools/call with another result type"),
            None,
        )),
        Err(ForwardError::Upstream(e)) => Err(e),
        Err(ForwardError::Cancelled) => Err(ErrorData::internal_error("cancelled by the client", None)),
        Err(e) => {
            tracing::warn!(%connection, reason = e.as_reason(), error = %e, "MCP tool call failed");
            Ok(CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(e.to_string())])))
        }
    }
}

/// Runs the prompt guards over the text a tool returned: redaction rewrites
/// it, a block replaces the result with an error result naming the policy.
pub(crate) fn guard_result(
    runtime: &Runtime,
    caller: &Identity,
    mut result: CallToolResult,
    findings: &mut Vec<Finding>,
) -> CallToolResult {
    for block in &mut result.content {
        let ContentBlock::Text(text) = block else { continue };
        match runtime.policies.guard_tool_result(caller, None, &text.text) {
            Ok((guarded, mut found)) => {
                findings.append(&mut found);
                if let std::borrow::Cow::Owned(redacted) = guarded {
                    text.text = redacted;
                }
            }
            Err(blocked) => {
                tracing::warn!(policy = %blocked.policy(), reason = blocked.as_reason(), "a tool result was blocked by a prompt policy");
                if let Some(guard) = blocked.guard() {
                    findings.push(Finding {
                        policy: blocked.policy().clone(),
                        guard,
                        action: tenantgate_crds::v1alpha1::GuardAction::Block,
                        stage: crate::policy::Stage::ToolResult,
                    });
                }
                return CallToolResult::error(vec![ContentBlock::text(blocked.to_string())]);
            }
        }
    }
    result
}
