//! `McpConnection`: one upstream MCP server a tenant's gateway aggregates.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicyEgressRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::SecretKeyRef;

/// `tools.prefix`: empty, or a DNS label.
const PREFIX_RULE: &str = "self == '' || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";
const PREFIX_MESSAGE: &str =
    "must be empty or a DNS label: lower-case letters, digits and '-', starting and ending with a letter or digit";

/// Desired state of an MCP connection: where the server is and what of it is exposed.
// Several printcolumns repeat `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tenantgate.dev",
    doc = "An upstream MCP server, in a tenant's namespace. The tenant's gateway exposes its tools, prompts and resources at /mcp under tools.prefix.",
    version = "v1alpha1",
    derive = "PartialEq",
    kind = "McpConnection",
    plural = "mcpconnections",
    namespaced,
    shortname = "mcpc",
    category = "tenantgate",
    status = "McpConnectionStatus",
    printcolumn(name = "Transport", type_ = "string", json_path = ".spec.transport"),
    printcolumn(
        name = "Tenant",
        type_ = "string",
        json_path = ".status.tenant",
        description = "Tenant this connection is bound to"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(
    validation = Rule::new("self.transport == 'stdio' || has(self.url)").message("url is required unless transport is stdio").field_path(".url"),
    validation = Rule::new("self.transport != 'stdio' || has(self.stdio)").message("stdio is required when transport is stdio").field_path(".stdio"),
    validation = Rule::new("self.transport == 'stdio' || !has(self.stdio)").message("stdio is only allowed when transport is stdio").field_path(".stdio"),
    validation = Rule::new("self.transport != 'stdio' || !has(self.url)").message("url is not allowed when transport is stdio: the operator runs the server and connects to it").field_path(".url"),
    validation = Rule::new("self.transport != 'stdio' || !has(self.auth)").message("auth is not allowed when transport is stdio: the gateway reaches the bridge with a token the operator generates").field_path(".auth"),
)]
#[serde(rename_all = "camelCase")]
pub struct McpConnectionSpec {
    /// How the gateway talks to the server.
    #[serde(default)]
    pub transport: McpTransport,
    /// Endpoint of the server (streamableHttp and sse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an http(s) URL"))]
    pub url: Option<String>,
    /// Credentials the gateway presents upstream (streamableHttp and sse; a stdio
    /// connection's bridge takes a token the operator generates instead). The
    /// tenant's own token is never forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<McpAuth>,
    /// Which tools are exposed, under what names.
    #[serde(default)]
    pub tools: McpTools,
    /// Timeout of one request to the server, in seconds.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
    /// The server process, for transport stdio. In a cluster the operator runs it as its own
    /// Deployment behind a bridge that serves it over streamable HTTP; locally the gateway spawns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<StdioServer>,
}

fn default_timeout_seconds() -> u32 {
    30
}

/// MCP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum McpTransport {
    /// Streamable HTTP, the current MCP transport.
    #[default]
    StreamableHttp,
    /// The legacy HTTP+SSE transport.
    Sse,
    /// A local process speaking MCP on stdin/stdout.
    Stdio,
}

/// Upstream credentials: exactly one method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.bearerSecretRef), has(self.oauth2ClientCredentials), has(self.oauth2AuthorizationCode)].filter(x, x).size() == 1").message("set exactly one of bearerSecretRef, oauth2ClientCredentials or oauth2AuthorizationCode"))]
#[serde(rename_all = "camelCase")]
pub struct McpAuth {
    /// A static bearer token kept in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_secret_ref: Option<SecretKeyRef>,
    /// OAuth 2.0 client credentials: the gateway obtains and refreshes a token for itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_client_credentials: Option<OAuth2ClientCredentials>,
    /// OAuth 2.0 authorization code with PKCE: each user authorizes the gateway once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_authorization_code: Option<OAuth2AuthorizationCode>,
}

/// OAuth 2.0 client credentials grant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2ClientCredentials {
    /// Token endpoint.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an http(s) URL"))]
    pub token_url: String,
    /// Client id.
    #[schemars(length(min = 1, max = 512))]
    pub client_id: String,
    /// Secret key holding the client secret.
    pub client_secret_ref: SecretKeyRef,
    /// Scopes requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub scopes: Vec<String>,
    /// RFC 8707 resource indicator sent with the token request. Defaults to the connection URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub resource: Option<String>,
}

/// OAuth 2.0 authorization code grant with PKCE, per user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2AuthorizationCode {
    /// Authorization endpoint users are sent to.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an http(s) URL"))]
    pub authorization_url: String,
    /// Token endpoint.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an http(s) URL"))]
    pub token_url: String,
    /// Client id.
    #[schemars(length(min = 1, max = 512))]
    pub client_id: String,
    /// Secret key holding the client secret; absent for public clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
    /// Scopes requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub scopes: Vec<String>,
    /// RFC 8707 resource indicator. Defaults to the connection URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub resource: Option<String>,
}

/// Tool exposure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpTools {
    /// Tools and prompts are exposed as `<prefix>_<name>`, resources as
    /// `<prefix>+<uri>`. Defaults to metadata.name. `""` exposes the server's
    /// names and URIs unchanged (one connection of a tenant at most; a name that
    /// another connection's prefixed names already take is left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(PREFIX_RULE).message(PREFIX_MESSAGE))]
    pub prefix: Option<String>,
    /// Globs of upstream tool names to expose (`*` and `?`). Empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow: Vec<String>,
    /// Globs of upstream tool names never exposed nor callable; wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub deny: Vec<String>,
    /// Detect changed tool definitions (rug pulls) against `pins`.
    #[serde(default)]
    pub pin: PinMode,
    /// Pinned SHA-256 of each tool's name, description and input schema, by upstream tool name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 256))]
    pub pins: BTreeMap<String, String>,
    /// Who may list and call which tools. A tool (by upstream name) that some rule's `tools`
    /// match is open only to the callers those rules name (any of their roles or subjects); a
    /// tool that no rule matches follows `accessDefault`. Applied to `/mcp`'s `tools/list` and
    /// `tools/call` and to the tools chat offers a model, after `allow`/`deny`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub access: Vec<ToolAccessRule>,
    /// Who may use a tool that no `access` rule matches: `allow` (everyone, the default) or
    /// `deny` (nobody: every tool must be granted by a rule).
    #[serde(default, skip_serializing_if = "AccessDefault::is_allow")]
    pub access_default: AccessDefault,
    /// What one answered tool call costs, a decimal string in the tenant's `spec.currency`
    /// (e.g. `"0.002"`): recorded with the call's audit event and charged to the caller's and the
    /// tenant's budgets, which reserve it before the call is forwarded. Absent: calls are free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 19))]
    #[x_kube(validation = Rule::new(super::model_price::DECIMAL_RULE).message(super::model_price::DECIMAL_MESSAGE))]
    pub price_per_call: Option<String>,
}

/// One grant of `tools.access`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("(has(self.roles) && size(self.roles) > 0) || (has(self.subjects) && size(self.subjects) > 0)").message("name at least one role or subject: a rule that grants nobody would hide its tools from everyone"))]
#[serde(rename_all = "camelCase")]
pub struct ToolAccessRule {
    /// Globs of upstream tool names (`*` and `?`) this rule grants.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(g, size(g) > 0)").message("a tool glob must not be empty"))]
    pub tools: Vec<String>,
    /// Roles (from the token's roles claim) granted these tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub roles: Vec<String>,
    /// Subjects (a JWT's `sub`; an API key's subject is `apikey:<prefix>`) granted these tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub subjects: Vec<String>,
}

/// Who may use a tool that no access rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AccessDefault {
    /// Every caller of the tenant.
    #[default]
    Allow,
    /// Nobody.
    Deny,
}

impl AccessDefault {
    /// Whether this is the default, `allow`.
    pub fn is_allow(&self) -> bool {
        *self == Self::Allow
    }
}

/// What a changed tool definition does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PinMode {
    /// No pinning.
    #[default]
    Off,
    /// Report drift (metric, audit event, status) but keep serving the tool.
    Warn,
    /// Hide a drifted tool until its pin is updated.
    Block,
}

/// A stdio MCP server process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StdioServer {
    /// Container image that holds the server (in a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,
    /// Command to run.
    #[schemars(length(min = 1, max = 16))]
    pub command: Vec<String>,
    /// Arguments to the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<String>,
    /// Environment of the process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<StdioEnv>,
    /// Where the server may connect (in a cluster), as NetworkPolicy egress rules, besides the
    /// cluster DNS. Empty: nowhere else. The bridge pod takes connections only from its tenant's
    /// gateway pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub egress: Vec<NetworkPolicyEgressRule>,
}

/// One environment variable of a stdio server: a literal value or a Secret key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.value) != has(self.secretKeyRef)").message("set exactly one of value or secretKeyRef"))]
#[serde(rename_all = "camelCase")]
pub struct StdioEnv {
    /// Variable name.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("must be a valid environment variable name"))]
    pub name: String,
    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// Secret key holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// What the operator observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpConnectionStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Tenant this connection is bound to (the tenant owning its namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Upstream tools whose definition no longer matches its pin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted_tools: Vec<String>,
    /// Ready and Accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
