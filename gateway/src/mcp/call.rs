//! The single `tools/call` path of `/mcp`.
//!
//! [`call_tool`] is where per-call policy attaches: rate limits and quotas
//! before the call is forwarded, the audit event and the prompt guards on the
//! result after it (marked `HOOK` below). Everything that runs a tenant's MCP
//! tool (the `/mcp` endpoint today, the server-side tool loop of chat later)
//! goes through it.

use std::time::Instant;

use rmcp::RoleServer;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest, ContentBlock, ErrorData,
    ServerResult,
};
use rmcp::service::RequestContext;

use super::McpHub;
use super::upstream::ForwardError;
use crate::auth::Identity;

/// Runs one `tools/call` for `caller`: resolves the exposed name to its
/// upstream (an unknown or filtered-out name is a JSON-RPC `invalid params`
/// error, and nothing is sent upstream), forwards it, and maps the outcome.
/// An upstream that is down, slow or failing yields a tool result with
/// `isError: true` so the model can read why; a JSON-RPC error from the
/// upstream is passed on unchanged.
pub async fn call_tool(
    hub: &McpHub,
    caller: Option<&Identity>,
    request: CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> Result<CallToolResponse, ErrorData> {
    let catalog = hub.catalog();
    let Some(route) = catalog.tool(&request.name) else {
        metrics::counter!("tenantgate_mcp_tool_calls_total", "connection" => "", "outcome" => "unknown_tool")
            .increment(1);
        tracing::info!(tool = %request.name, subject = caller.map(|c| c.subject.as_str()), "call to an unknown or filtered-out MCP tool refused");
        return Err(ErrorData::invalid_params(format!("unknown tool: {}", request.name), None));
    };
    let connection = route.upstream.name().to_string();

    // HOOK(limits): the tenant's rate limits and quotas for tool calls go here,
    // before anything is forwarded; a refusal returns a JSON-RPC error.

    let started = Instant::now();
    let mut upstream_params = request;
    upstream_params.name = route.name.to_string().into();
    let forwarded =
        route.upstream.forward(ClientRequest::CallToolRequest(CallToolRequest::new(upstream_params)), context).await;
    let outcome = match &forwarded {
        Ok(_) => "ok",
        Err(e) => e.as_reason(),
    };
    metrics::counter!("tenantgate_mcp_tool_calls_total", "connection" => connection.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("tenantgate_mcp_tool_call_duration_seconds", "connection" => connection.clone())
        .record(started.elapsed().as_secs_f64());

    // HOOK(audit, guards): record the audit event (connection, tool, subject,
    // duration, outcome, redacted arguments) and run the prompt guards over the
    // result before it is returned.

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
