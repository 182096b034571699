//! `GatewayConfig`: the contract between the operator and the gateway.
//!
//! The operator writes it into the `gateway-config` ConfigMap; the gateway
//! reads it from the mounted file (or renders it itself from CRD YAML with
//! `--manifests DIR`). It carries no secret values: every secret is a path to
//! a file of the projected Secret volume.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pricing::PricingConfig;
use crate::v1alpha1::{
    Audit, Guards, Limits, McpTools, MockProvider, Model, PolicyMatch, ProviderType, Routing, SystemPrompt,
};

/// Format version of [`GatewayConfig`]; bumped on incompatible changes.
pub const CONFIG_VERSION: u32 = 1;

/// Everything one tenant's gateway runs from.
///
/// Enums are written as single-key maps (`keys: {jwksFile: ...}`), never as
/// YAML tags, so any YAML or JSON tool reads the ConfigMap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    /// Format version ([`CONFIG_VERSION`]).
    pub version: u32,
    /// Which tenant this gateway serves.
    pub tenant: TenantIdentity,
    /// How callers authenticate.
    pub auth: AuthConfig,
    /// Upstream LLM APIs, in spec order.
    pub providers: Vec<ProviderConfig>,
    /// Model names and their targets in failover order (without prices: see `pricing`).
    pub models: Vec<Model>,
    /// The priced targets and the tenant's currency; absent: no target has a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<PricingConfig>,
    /// Retries, timeouts and circuit breaking.
    pub routing: Routing,
    /// Rate limits and quotas; absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Upstream MCP servers, sorted by name.
    pub mcp: Vec<McpConnectionConfig>,
    /// Prompt policies in composition order: global, tenant, user; by priority inside a layer.
    pub policies: Vec<PolicyConfig>,
    /// Where state lives.
    pub storage: StorageConfig,
    /// What the audit trail records.
    pub audit: Audit,
    /// Upstream address rules.
    pub network: NetworkConfig,
    /// Files of the operator-generated `gateway-keys` Secret.
    pub keys: KeysConfig,
    /// OpenTelemetry traces over OTLP. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    /// SHA-256 of this document with this field empty: changes exactly when the config does.
    #[serde(default)]
    pub config_hash: String,
}

/// Identity of the tenant a gateway serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantIdentity {
    /// metadata.name of the Tenant.
    pub name: String,
    /// spec.displayName, or the name.
    pub display_name: String,
    /// Namespace the gateway runs in.
    pub namespace: String,
}

/// Caller authentication.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// JWT validation; absent: the tenant accepts API keys only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Roles (of a JWT or an API key) allowed on the admin API.
    pub admin_roles: Vec<String>,
    /// Whether API keys are accepted: those minted through the admin API and `declaredApiKeys`.
    pub api_keys_enabled: bool,
    /// API keys declared as ApiKey objects, sorted by name: their hashes, never their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declared_api_keys: Vec<DeclaredApiKey>,
    /// `/mcp` as an OAuth 2.0 protected resource.
    #[serde(default, skip_serializing_if = "McpResourceConfig::is_empty")]
    pub mcp: McpResourceConfig,
}

/// An API key declared as an ApiKey object: what the gateway checks a presented key against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeclaredApiKey {
    /// metadata.name of the ApiKey (the admin API lists the key under it).
    pub name: String,
    /// The key's public prefix (`tg_<prefix>_...`).
    pub prefix: String,
    /// Hex HMAC-SHA256 of the whole key with the tenant's API-key pepper.
    pub hash: String,
    /// Who the key acts as.
    pub subject: String,
    /// Roles it grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Model globs it may use; empty: every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_models: Vec<String>,
    /// When it stops working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// CIDRs of the client addresses it is accepted from; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow_list: Vec<String>,
    /// The team its spend counts toward (over what its roles say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Its spend cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::v1alpha1::Budget>,
}

impl DeclaredApiKey {
    /// The ApiKey `name` (subject `apikey:<name>`, no roles or restrictions) with
    /// hash `hash` and budget `budget`: how benchmarks and tests declare one.
    pub fn with_budget(name: &str, hash: &str, budget: Option<crate::v1alpha1::Budget>) -> Self {
        Self {
            name: name.into(),
            prefix: String::new(),
            hash: hash.into(),
            subject: crate::v1alpha1::default_api_key_subject(name),
            roles: Vec::new(),
            allowed_models: Vec::new(),
            expires_at: None,
            ip_allow_list: Vec::new(),
            team: None,
            budget,
        }
    }

    /// `expires_at` in milliseconds since the epoch; `Err` names what does not parse.
    pub fn expires_at_ms(&self) -> Result<Option<i64>, String> {
        self.expires_at.as_deref().map(parse_rfc3339_ms).transpose()
    }

    /// `ip_allow_list` parsed; `Err` names the first entry that is not a CIDR.
    pub fn networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.ip_allow_list.iter().map(|c| parse_cidr(c)).collect()
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let at: k8s_openapi::jiff::Timestamp =
        text.parse().map_err(|e| format!("{text:?} is not an RFC 3339 time with a zone: {e}"))?;
    Ok(at.as_millisecond())
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`), its host bits cleared.
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("{text:?} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))
}

/// `/mcp` as an OAuth 2.0 protected resource (RFC 9728, RFC 8707).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpResourceConfig {
    /// Resource identifier a JWT on `/mcp` must have in its `aud`; absent: no binding, and the
    /// metadata names the URL a request came to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Scopes advertised in the metadata and in 401 challenges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

impl McpResourceConfig {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.resource.is_none() && self.scopes.is_empty()
    }
}

/// JWT validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtConfig {
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Where verification keys come from.
    #[serde(with = "serde_yaml::with::singleton_map")]
    #[schemars(with = "JwtKeys")]
    pub keys: JwtKeys,
    /// Claim holding roles.
    pub roles_claim: String,
    /// Claim naming the caller's team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_claim: Option<String>,
    /// Tolerated clock skew in seconds.
    pub leeway_seconds: u32,
}

/// Source of JWT verification keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum JwtKeys {
    /// Fetched from the identity provider's JWKS URL.
    JwksUri(String),
    /// A JWKS document in a mounted Secret file.
    JwksFile(String),
    /// A shared HMAC secret in a mounted Secret file (HS256/384/512 only).
    HmacSecretFile(String),
}

/// An upstream LLM API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name targets refer to.
    pub name: String,
    /// API the provider speaks.
    #[serde(rename = "type")]
    pub type_: ProviderType,
    /// Base URL (absent for mock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// File holding the API key; read on each use so rotation needs no restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<String>,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Mock behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockProvider>,
    /// Azure OpenAI settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureConfig>,
    /// File holding a Google service account key (vertex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key_file: Option<String>,
    /// Google workload identity federation (vertex), instead of a key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_workload_identity: Option<GoogleWorkloadIdentityConfig>,
    /// Amazon Bedrock's region and SigV4 credentials (bedrock without an API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockConfig>,
}

/// How an Azure OpenAI resource is called.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureConfig {
    /// The deployment API's version; absent: the v1 API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Entra ID tokens instead of the `api-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra_id: Option<EntraIdConfig>,
}

/// An Entra ID application's client credentials grant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntraIdConfig {
    /// `{authorityHost}/{tenantId}/oauth2/v2.0/token`.
    pub token_url: String,
    /// The application (client) ID.
    pub client_id: String,
    /// How the client authenticates.
    pub credential: EntraCredential,
}

/// How an Entra ID client authenticates; each file is read again at every exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum EntraCredential {
    /// A mounted Secret file holding the client secret.
    ClientSecretFile(String),
    /// A projected service account token (audience `api://AzureADTokenExchange`), sent as
    /// the client assertion (workload identity federation).
    ClientAssertionFile(String),
}

/// Google workload identity federation: a projected token exchanged at STS,
/// optionally impersonating a service account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GoogleWorkloadIdentityConfig {
    /// The workload identity pool provider (`//iam.googleapis.com/projects/...`).
    pub audience: String,
    /// The projected service account token: the subject token of the exchange.
    pub subject_token_file: String,
    /// A service account to impersonate with the federated token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_email: Option<String>,
    /// The STS token endpoint.
    pub sts_url: String,
    /// The IAM Credentials API root.
    pub iam_credentials_url: String,
}

/// How a bedrock provider signs its requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BedrockConfig {
    /// AWS region, part of every signature.
    pub region: String,
    /// Where the signing credentials come from (absent with a Bedrock API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<AwsCredentialsConfig>,
}

/// AWS credentials of a bedrock provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AwsCredentialsConfig {
    /// An access key in Secret files, re-read so rotation needs no restart.
    AccessKey {
        /// File holding the access key ID.
        access_key_id_file: String,
        /// File holding the secret access key.
        secret_access_key_file: String,
        /// File holding a session token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_token_file: Option<String>,
    },
    /// `AssumeRoleWithWebIdentity` with the pod's projected service account token.
    WebIdentity {
        /// The role to assume.
        role_arn: String,
        /// The STS endpoint.
        sts_url: String,
        /// File holding the projected token.
        token_file: String,
    },
}

/// How the gateway reaches an MCP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum McpEndpointTransport {
    /// Streamable HTTP.
    StreamableHttp,
    /// Legacy HTTP+SSE.
    Sse,
    /// A child process of the gateway (local mode only).
    Stdio,
}

/// An upstream MCP server as the gateway reaches it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpConnectionConfig {
    /// metadata.name of the McpConnection.
    pub name: String,
    /// Transport the gateway uses (a stdio connection in a cluster is reached
    /// over streamable HTTP through its bridge Service).
    pub transport: McpEndpointTransport,
    /// URL for HTTP transports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Process to spawn for the stdio transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<StdioProcess>,
    /// Upstream credentials.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_yaml::with::singleton_map")]
    #[schemars(with = "Option<McpAuthConfig>")]
    pub auth: Option<McpAuthConfig>,
    /// Exposed tool names are `<prefix>_<tool>`.
    pub prefix: String,
    /// Tool filters and pins.
    pub tools: McpTools,
    /// Timeout of one upstream request, in seconds.
    pub timeout_seconds: u32,
}

/// A stdio MCP server process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StdioProcess {
    /// Program.
    pub command: String,
    /// Arguments (the rest of `command` followed by `args`).
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<EnvValue>,
}

/// An environment variable: a literal or the content of a mounted Secret file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvValue {
    /// Variable name.
    pub name: String,
    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// File whose content is the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Upstream MCP credentials, with secrets as file paths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum McpAuthConfig {
    /// A static bearer token.
    #[serde(rename_all = "camelCase")]
    Bearer {
        /// File holding the token.
        token_file: String,
    },
    /// OAuth 2.0 client credentials.
    #[serde(rename_all = "camelCase")]
    Oauth2ClientCredentials {
        /// Token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// File holding the client secret.
        client_secret_file: String,
        /// Scopes.
        scopes: Vec<String>,
        /// RFC 8707 resource.
        resource: String,
    },
    /// OAuth 2.0 authorization code with PKCE, per user.
    #[serde(rename_all = "camelCase")]
    Oauth2AuthorizationCode {
        /// Authorization endpoint.
        authorization_url: String,
        /// Token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// File holding the client secret, for confidential clients.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_secret_file: Option<String>,
        /// Scopes.
        scopes: Vec<String>,
        /// RFC 8707 resource.
        resource: String,
    },
}

/// Where a policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PolicyOrigin {
    /// The operator's namespace: applies to every tenant.
    Global,
    /// The tenant's namespace.
    Tenant,
}

/// Composition layer of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PolicyLayer {
    /// Global policies without roles or subjects.
    Global,
    /// Tenant policies without roles or subjects.
    Tenant,
    /// Policies whose match names roles or subjects.
    User,
}

/// One prompt policy, placed in the composition order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// `namespace/name` of the PromptPolicy, as named in errors and audit events.
    pub id: String,
    /// Where it came from.
    pub origin: PolicyOrigin,
    /// Composition layer.
    pub layer: PolicyLayer,
    /// Order inside the layer.
    pub priority: i32,
    /// Requests it applies to.
    #[serde(rename = "match")]
    pub match_: PolicyMatch,
    /// System prompt segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<SystemPrompt>,
    /// Guards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<Guards>,
    /// Allowed model globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_models: Vec<String>,
}

/// Where state lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageConfig {
    /// File holding the Redis URL; absent: in-process limits and sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url_file: Option<String>,
    /// File holding the PEM CA certificate(s) trusted for `rediss://` instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<String>,
    /// File holding the PEM CA certificate(s) of the PostgreSQL server (`sslrootcert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_ca_file: Option<String>,
    /// The usage/audit database.
    #[serde(with = "serde_yaml::with::singleton_map")]
    #[schemars(with = "DatabaseConfig")]
    pub database: DatabaseConfig,
}

/// The usage/audit database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum DatabaseConfig {
    /// PostgreSQL; the file holds its URL.
    PostgresUrlFile(String),
    /// SQLite at this path (not durable in a pod).
    SqlitePath(String),
}

/// Upstream address rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConfig {
    /// Allow loopback and link-local upstream addresses.
    pub allow_local_upstreams: bool,
}

/// Where the gateway exports its traces (the Tenant's `spec.observability.tracing`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP receiver's URL (`/v1/traces` is appended for HTTP when it has no path).
    pub otlp_endpoint: String,
    /// gRPC or HTTP with protobuf bodies.
    pub protocol: crate::v1alpha1::OtlpProtocol,
    /// The share of new traces exported, 0 to 1; a client's sampled `traceparent` decides for its trace.
    pub sample_ratio: f64,
    /// File holding export headers, one `name: value` per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_file: Option<String>,
}

/// Files of the `gateway-keys` Secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeysConfig {
    /// 32-byte key (base64) encrypting stored upstream OAuth tokens.
    pub token_encryption_key_file: String,
    /// Pepper (base64) mixed into API key hashes.
    pub api_key_pepper_file: String,
}

impl GatewayConfig {
    /// SHA-256 (hex) of the canonical JSON of this config with `config_hash` empty.
    pub fn compute_hash(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.config_hash.clear();
        // Serializing plain structs, Vecs and BTreeMaps cannot fail and is deterministic.
        let bytes = serde_json::to_vec(&unsealed).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }

    /// Sets `config_hash` to [`Self::compute_hash`].
    pub fn seal(mut self) -> Self {
        self.config_hash = self.compute_hash();
        self
    }

    /// Whether `config_hash` matches the content (a hand-edited file does not).
    pub fn hash_matches(&self) -> bool {
        self.config_hash == self.compute_hash()
    }

    /// Serializes the config as the YAML the ConfigMap holds.
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(self)
    }
}

/// Why a config file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", .path.as_ref().map(|p| format!("{p}: ")).unwrap_or_default())]
pub struct ConfigError {
    /// Field path, when the problem is in one field.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl GatewayConfig {
    /// Parses a config file strictly: unknown fields anywhere, wrong types and
    /// another format version are errors naming the field.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let mut unknown = Vec::new();
        let mut track = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let deserializer = serde_ignored::Deserializer::new(serde_yaml::Deserializer::from_str(text), &mut track);
        let config: Self = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // serde_yaml already starts its messages with the path.
            let path = (path != "." && !message.starts_with(&path)).then_some(path);
            ConfigError { path, message }
        })?;
        if let Some(path) = unknown.into_iter().next() {
            return Err(ConfigError { path: Some(path), message: "unknown field".into() });
        }
        if config.version != CONFIG_VERSION {
            return Err(ConfigError {
                path: Some("version".into()),
                message: format!("format version {} is not supported (expected {CONFIG_VERSION})", config.version),
            });
        }
        Ok(config)
    }
}
