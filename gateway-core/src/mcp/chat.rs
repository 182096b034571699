//! The tenant's MCP tools inside a chat request: the `tenantgate.mcp`
//! extension field, the tools it offers (from the hub's catalog, so `/mcp`'s
//! prefixes, allow/deny globs, pin blocking and the caller's `tools.access`
//! apply unchanged), and the
//! running of the calls a model makes (through [`super::call::call_tool`], so
//! each one is rate-limited, guard-checked and audited like an `/mcp` call).
//! The loop of model turns lives with the chat handler (`api::chat_tools`).

use std::collections::HashSet;

use rmcp::model::{CallToolRequestParams, CallToolResponse, ContentBlock};
use serde::Deserialize;
use serde_json::{Map, Value};
use tenantgate_crds::config::McpConnectionConfig;

use super::McpHub;
use super::call::{Mode, Via, call_tool};
use super::catalog::Catalog;
use crate::auth::Identity;
use crate::config::RuntimeHandle;
use crate::llm::types::{ChatRequest, FunctionDef, Message, Tool, ToolCall};

/// The request field the gateway reads and removes before a request goes upstream.
pub const FIELD: &str = "tenantgate";
/// Tool-calling model turns when `maxSteps` is not given.
pub const DEFAULT_MAX_STEPS: u32 = 4;
/// The largest `maxSteps` accepted.
pub const MAX_STEPS: u32 = 16;
/// `connections` entry that selects every connection.
const ALL: &str = "*";

/// Why a `tenantgate` field was refused (each a 400 naming the field at fault).
#[derive(Debug, thiserror::Error)]
pub enum ChatToolsError {
    /// The field does not have the documented shape.
    #[error("{param}: {message}")]
    Invalid {
        /// The field at fault, e.g. `tenantgate.mcp.maxSteps`.
        param: String,
        /// What is wrong.
        message: String,
    },
    /// A connection name the tenant has no McpConnection for.
    #[error("tenantgate.mcp.connections[{index}]: the tenant has no MCP connection named {name:?}")]
    UnknownConnection {
        /// Position in `connections`.
        index: usize,
        /// The name.
        name: String,
    },
    /// A connection that exists but is not connected now.
    #[error(
        "tenantgate.mcp.connections[{index}]: MCP connection {name:?} is not ready (not connected to its server); try again shortly"
    )]
    NotReady {
        /// Position in `connections`.
        index: usize,
        /// The name.
        name: String,
    },
    /// The client offered its own `tools` too.
    #[error(
        "tools: cannot be combined with tenantgate.mcp; the gateway runs every tool call itself when tenantgate.mcp is set (send client-side tools in a request without it)"
    )]
    MixedTools,
}

impl ChatToolsError {
    /// The request field at fault.
    pub fn param(&self) -> String {
        match self {
            Self::Invalid { param, .. } => param.clone(),
            Self::UnknownConnection { index, .. } | Self::NotReady { index, .. } => {
                format!("tenantgate.mcp.connections[{index}]")
            }
            Self::MixedTools => "tools".into(),
        }
    }
}

/// `tenantgate` as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Extension {
    /// MCP tools to offer.
    #[serde(default)]
    mcp: Option<McpOptions>,
}

/// `tenantgate.mcp` as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct McpOptions {
    /// Connection names, or `["*"]`.
    connections: Vec<String>,
    /// Tool-calling model turns allowed.
    #[serde(default)]
    max_steps: Option<u32>,
}

/// The MCP tools one chat request may use, resolved against the catalog in
/// force when it started (a tool that disappears mid-loop is answered with
/// the unknown-tool error of [`call_tool`]).
#[derive(Debug)]
pub struct ChatTools {
    offered: Vec<Tool>,
    names: HashSet<String>,
    /// Tools of the selected connections that `tools.access` withholds from the caller.
    withheld: HashSet<String>,
    /// Tool-calling model turns allowed (1..=16).
    pub max_steps: u32,
}

impl ChatTools {
    /// Removes the `tenantgate` field from `request` (it never goes upstream)
    /// and resolves its `mcp` part against the tenant's connections: the
    /// tools offered are those `caller` may use. `None` when the request does
    /// not ask for MCP tools.
    pub fn take(
        request: &mut ChatRequest,
        hub: &McpHub,
        connections: &[McpConnectionConfig],
        caller: &Identity,
    ) -> Result<Option<Self>, ChatToolsError> {
        let Some(field) = request.rest.remove(FIELD) else { return Ok(None) };
        let extension: Extension = serde_path_to_error::deserialize(field).map_err(|e| {
            let inner = e.path().to_string();
            let param = if inner == "." { FIELD.to_string() } else { format!("{FIELD}.{inner}") };
            ChatToolsError::Invalid { param, message: e.into_inner().to_string() }
        })?;
        let Some(options) = extension.mcp else { return Ok(None) };
        let max_steps = options.max_steps.unwrap_or(DEFAULT_MAX_STEPS);
        if !(1..=MAX_STEPS).contains(&max_steps) {
            return Err(ChatToolsError::Invalid {
                param: "tenantgate.mcp.maxSteps".into(),
                message: format!("must be between 1 and {MAX_STEPS}, got {max_steps}"),
            });
        }
        // Readiness and the tools offered come from the same catalog snapshot.
        let catalog = hub.catalog();
        let selected = select(&options.connections, &catalog, connections)?;
        if request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ChatToolsError::MixedTools);
        }
        let mut offered = Vec::new();
        let mut names = HashSet::new();
        let mut withheld = HashSet::new();
        for tool in &catalog.tools {
            let Some(route) = catalog.tool(&tool.name) else { continue };
            if !selected.contains(route.upstream.name()) {
                continue;
            }
            if !route.upstream.grants_tool(&route.name, caller) {
                withheld.insert(tool.name.to_string());
                continue;
            }
            names.insert(tool.name.to_string());
            offered.push(openai_tool(tool));
        }
        Ok(Some(Self { offered, names, withheld, max_steps }))
    }

    /// The tools in OpenAI's format, under their `/mcp` names.
    pub fn offered(&self) -> &[Tool] {
        &self.offered
    }

    /// Whether the model may call `name` here (offered to this request).
    pub fn offers(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Runs the tool calls of one assistant message (concurrently) and
    /// returns their `tool` messages, in call order. A call of a tool that was
    /// not offered, or with arguments that are not a JSON object, is answered
    /// with an error message and never reaches an upstream; one of a tool
    /// `tools.access` withholds is refused by [`call_tool`], which audits it.
    pub async fn run_calls(
        &self,
        tenant: &RuntimeHandle,
        caller: &Identity,
        request_id: Option<&str>,
        calls: &[ToolCall],
    ) -> Vec<Message> {
        let mode = Mode::Tenant(tenant.clone());
        let mode = &mode;
        let runs = calls.iter().map(|call| async move {
            let content = self.run_one(tenant, mode, caller, request_id, call).await;
            Message::tool_result(&call.id, content)
        });
        futures_util::future::join_all(runs).await
    }

    async fn run_one(
        &self,
        tenant: &RuntimeHandle,
        mode: &Mode,
        caller: &Identity,
        request_id: Option<&str>,
        call: &ToolCall,
    ) -> String {
        let name = &call.function.name;
        if !self.offers(name) && !self.withheld.contains(name) {
            tracing::info!(tool = %name, subject = %caller.subject, "model called a tool that was not offered; refused");
            return format!("Error: the tool {name:?} is not available; use one of the tools offered");
        }
        let arguments = match parse_arguments(&call.function.arguments) {
            Ok(a) => a,
            Err(message) => return format!("Error: {message}"),
        };
        let mut params = CallToolRequestParams::new(name.clone());
        params.arguments = arguments;
        match call_tool(tenant.carried().mcp(), mode, Some(caller), params, Via::Chat { request_id }).await {
            Ok(CallToolResponse::Complete(result)) => {
                let text = content_text(&result.content, result.structured_content.as_ref());
                if result.is_error == Some(true) { format!("Error: {text}") } else { text }
            }
            Ok(_) => format!("Error: the tool {name:?} asked for input or started a task, which a chat cannot provide"),
            Err(e) => format!("Error: {}", e.message),
        }
    }
}

/// The connection names selected by `connections` (`["*"]`: all that are connected).
fn select(
    requested: &[String],
    catalog: &Catalog,
    configured: &[McpConnectionConfig],
) -> Result<HashSet<String>, ChatToolsError> {
    if requested.is_empty() {
        return Err(ChatToolsError::Invalid {
            param: "tenantgate.mcp.connections".into(),
            message: "must name at least one MCP connection (or \"*\" for all)".into(),
        });
    }
    if requested.iter().any(|n| n == ALL) {
        if requested.len() > 1 {
            return Err(ChatToolsError::Invalid {
                param: "tenantgate.mcp.connections".into(),
                message: "\"*\" selects every connection and cannot be combined with names".into(),
            });
        }
        return Ok(configured.iter().map(|c| c.name.clone()).collect());
    }
    let mut selected = HashSet::with_capacity(requested.len());
    for (index, name) in requested.iter().enumerate() {
        if !configured.iter().any(|c| &c.name == name) {
            return Err(ChatToolsError::UnknownConnection { index, name: name.clone() });
        }
        if !catalog.has_connection(name) {
            return Err(ChatToolsError::NotReady { index, name: name.clone() });
        }
        selected.insert(name.clone());
    }
    Ok(selected)
}

/// An MCP tool as an OpenAI function tool.
fn openai_tool(tool: &rmcp::model::Tool) -> Tool {
    Tool::function(FunctionDef {
        name: tool.name.to_string(),
        description: tool.description.as_ref().map(|d| d.to_string()),
        parameters: Some(Value::Object(tool.input_schema.as_ref().clone())),
        rest: Map::new(),
    })
}

/// The arguments of a call: a JSON object (an empty string means none).
fn parse_arguments(text: &str) -> Result<Option<Map<String, Value>>, ArgumentsError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(ArgumentsError::NotAnObject),
        Err(e) => Err(ArgumentsError::Json(e)),
    }
}

/// Why a model's tool arguments cannot be sent.
#[derive(Debug, thiserror::Error)]
enum ArgumentsError {
    /// Valid JSON, but not an object.
    #[error("the tool arguments must be a JSON object")]
    NotAnObject,
    /// Not JSON.
    #[error("the tool arguments are not valid JSON: {0}")]
    Json(serde_json::Error),
}

/// The text a model reads from a tool result: text blocks as they are, other
/// blocks (images, resources) as their JSON; the structured result when there
/// is no content.
fn content_text(content: &[ContentBlock], structured: Option<&Value>) -> String {
    let mut out = String::new();
    for block in content {
        if !out.is_empty() {
            out.push('\n');
        }
        match block {
            ContentBlock::Text(t) => out.push_str(&t.text),
            other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
        }
    }
    if out.is_empty()
        && let Some(v) = structured
    {
        out = v.to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).expect("request")
    }

    fn connection(name: &str) -> McpConnectionConfig {
        serde_json::from_value(json!({"name": name, "transport": "streamableHttp", "url": "http://127.0.0.1:1/mcp",
            "prefix": name, "tools": {}, "timeoutSeconds": 5}))
        .expect("connection config")
    }

    fn caller() -> Identity {
        Identity::with_roles("alice", &["dev"])
    }

    fn take(body: Value) -> (ChatRequest, Result<Option<ChatTools>, ChatToolsError>) {
        let mut r = request(body);
        let hub = McpHub::new(Default::default(), None).expect("hub");
        let result = ChatTools::take(&mut r, &hub, &[connection("echo")], &caller());
        (r, result)
    }

    fn base(extension: Value) -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tenantgate": extension})
    }

    #[test]
    fn the_field_is_removed_and_absent_mcp_is_plain_chat() {
        let (r, result) = take(base(json!({})));
        assert!(result.expect("valid").is_none());
        assert!(!r.rest.contains_key(FIELD));
        let (r, result) = take(json!({"model": "m", "messages": [], "seed": 1}));
        assert!(result.expect("valid").is_none());
        assert_eq!(r.rest["seed"], 1);
    }

    #[test]
    fn bad_fields_are_named() {
        let param = |ext: Value| take(base(ext)).1.expect_err("refused").param();
        assert_eq!(param(json!({"mcp": {"connections": ["echo"], "maxSteps": 0}})), "tenantgate.mcp.maxSteps");
        assert_eq!(param(json!({"mcp": {"connections": ["echo"], "maxSteps": 17}})), "tenantgate.mcp.maxSteps");
        assert_eq!(param(json!({"mcp": {"connections": ["echo"], "maxSteps": "x"}})), "tenantgate.mcp.maxSteps");
        assert_eq!(param(json!({"mcp": {"connections": []}})), "tenantgate.mcp.connections");
        assert_eq!(param(json!({"mcp": {"connections": ["*", "echo"]}})), "tenantgate.mcp.connections");
        assert_eq!(param(json!({"mcp": {}})), "tenantgate.mcp");
        assert_eq!(param(json!({"mcp": {"connections": ["echo"], "steps": 2}})), "tenantgate.mcp.steps");
        assert_eq!(param(json!({"other": 1})), "tenantgate.other");
        assert_eq!(param(json!("x")), "tenantgate");
        let e = take(base(json!({"mcp": {"connections": ["echo", "github"]}}))).1.expect_err("refused");
        // Checked in order: `echo` exists but is not connected in a bare hub.
        assert!(matches!(e, ChatToolsError::NotReady { index: 0, .. }), "{e}");
        let mut r = request(base(json!({"mcp": {"connections": ["github"]}})));
        let hub = McpHub::new(Default::default(), None).expect("hub");
        let e = ChatTools::take(&mut r, &hub, &[connection("echo")], &caller()).expect_err("refused");
        assert_eq!(e.param(), "tenantgate.mcp.connections[0]");
        assert!(e.to_string().contains("\"github\""), "{e}");
    }

    #[test]
    fn all_connections_offer_what_is_live_and_client_tools_do_not_mix() {
        let (_, result) = take(base(json!({"mcp": {"connections": ["*"]}})));
        let tools = result.expect("valid").expect("asked for MCP");
        assert_eq!(tools.max_steps, DEFAULT_MAX_STEPS);
        assert!(tools.offered().is_empty());
        let mut body = base(json!({"mcp": {"connections": ["*"]}}));
        body["tools"] = json!([{"type": "function", "function": {"name": "mine"}}]);
        assert!(matches!(take(body).1, Err(ChatToolsError::MixedTools)));
    }

    #[test]
    fn arguments_and_results_become_text() {
        assert_eq!(parse_arguments("").expect("none"), None);
        assert_eq!(parse_arguments(r#"{"a":1}"#).expect("object").expect("some")["a"], 1);
        assert!(parse_arguments("[1]").is_err());
        assert!(parse_arguments("{").expect_err("bad").to_string().contains("not valid JSON"));
        let text = content_text(&[ContentBlock::text("one"), ContentBlock::text("two")], None);
        assert_eq!(text, "one\ntwo");
        assert_eq!(content_text(&[], Some(&json!({"sum": 3}))), r#"{"sum":3}"#);
    }
}
