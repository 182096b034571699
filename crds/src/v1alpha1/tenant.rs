//! `Tenant`: one tenant of the platform and everything its gateway needs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::api_key::RFC3339_RULE;

use super::common::SecretKeyRef;
use super::model_price::{Price, default_currency};
use super::observability::Observability;

/// Desired state of a tenant: identity, upstreams, limits, and how its gateway runs.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tenantgate.dev",
    doc = "A tenant of the platform. The operator turns each Tenant into an isolated namespace running the tenant's own AI gateway: OpenAI-compatible chat routed to its providers, and one MCP endpoint over its McpConnections.",
    version = "v1alpha1",
    derive = "PartialEq",
    kind = "Tenant",
    plural = "tenants",
    shortname = "tgt",
    category = "tenantgate",
    status = "TenantStatus",
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace", description = "Namespace the tenant's gateway runs in"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the tenant's gateway is ready"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1, description = "Why the tenant is or is not ready"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint", description = "URL tenants call"),
    printcolumn(name = "Spent", type_ = "string", json_path = ".status.budget.spent", description = "What the tenant's budget has spent in its current window"),
    printcolumn(name = "Budget", type_ = "string", json_path = ".status.budget.amount", description = "The tenant's budget per window, in status.budget.currency"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 60 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label of at most 60 characters (the default namespace is tg-<name>)"),
)]
#[x_kube(
    validation = Rule::new("self.models.all(m, m.targets.all(t, self.providers.exists(p, p.name == t.provider)))").message("every model target must name a provider declared in spec.providers").field_path(".models"),
    validation = Rule::new("self.models.all(m, !has(m.type) || m.type != 'embedding' || m.targets.all(t, !self.providers.exists(p, p.name == t.provider && p.type in ['anthropic', 'gemini', 'vertex', 'bedrock'])))").message("an embedding model's targets must be providers with an embeddings API (openai, azureOpenai or mock): anthropic has none, and gemini's, vertex's and bedrock's are not supported yet").field_path(".models"),
    validation = Rule::new("(self.gateway.replicas <= 1 && !has(self.gateway.autoscaling)) || (has(self.storage.redis))").message("more than one gateway replica (or autoscaling) needs spec.storage.redis: without Redis, rate limits and MCP sessions live in one process").field_path(".storage.redis"),
    validation = Rule::new("!has(self.storage.volume) || has(self.storage.database) || (self.gateway.replicas <= 1 && !has(self.gateway.autoscaling) && (!has(self.storage.volume.accessMode) || self.storage.volume.accessMode == 'ReadWriteOnce'))").message("without spec.storage.database the volume holds the SQLite file, which only one gateway pod on one node may use: set replicas 1 (no autoscaling, accessMode ReadWriteOnce) or a database").field_path(".storage.volume"),
    validation = Rule::new("has(self.namespace) == has(oldSelf.namespace)").message("spec.namespace is immutable: create a new Tenant to move it").field_path(".namespace"),
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Human-readable name of the tenant, available to prompt templates as `tenant.displayName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// Namespace the operator creates for this tenant's gateway. Defaults to `tg-<metadata.name>`.
    /// The operator owns it: an existing namespace not labelled for this tenant is refused. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = Rule::new(super::common::DNS_LABEL_RULE).message(super::common::DNS_LABEL_MESSAGE),
        validation = Rule::new("self == oldSelf").message("spec.namespace is immutable: create a new Tenant to move it"),
    )]
    pub namespace: Option<String>,

    /// How callers of the gateway prove who they are.
    pub auth: TenantAuth,

    /// Upstream LLM APIs the tenant's models route to.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub providers: Vec<Provider>,

    /// Model names tenants ask for, each mapped to ordered upstream targets (failover order).
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub models: Vec<Model>,

    /// ISO 4217 code of the currency the tenant's usage is priced in: prices (a target's own, the
    /// cluster's ModelPrices, the shipped defaults) in another currency do not apply to it.
    #[serde(default = "default_currency")]
    #[schemars(length(min = 3, max = 3))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z]{3}$')").message("must be an ISO 4217 currency code: three capital letters, e.g. USD"))]
    pub currency: String,

    /// Retry, timeout and circuit-breaker settings for calls to providers.
    #[serde(default)]
    pub routing: Routing,

    /// Rate limits and quotas for the whole tenant and for each user. Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,

    /// The gateway Deployment: replicas, autoscaling and resources.
    #[serde(default)]
    pub gateway: GatewaySpec,

    /// Where limits, sessions, usage and audit events are kept.
    #[serde(default)]
    pub storage: Storage,

    /// What the audit trail records.
    #[serde(default)]
    pub audit: Audit,

    /// Network fence around the gateway.
    #[serde(default)]
    pub network: Network,

    /// Reach the gateway from outside the cluster through an Ingress or a Gateway API HTTPRoute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Exposure>,

    /// How MCP clients find out where to get a token for `/mcp` (OAuth 2.0 Protected Resource
    /// Metadata, RFC 9728) and which token audience `/mcp` requires (RFC 8707).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<TenantMcp>,

    /// Telemetry the gateway exports beyond its logs and Prometheus metrics: OpenTelemetry
    /// traces over OTLP. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<Observability>,
}

/// The tenant's `/mcp` endpoint as an OAuth 2.0 protected resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantMcp {
    /// The resource identifier of `/mcp` (RFC 8707): its canonical absolute URL, without a
    /// fragment, e.g. `https://acme.ai.example.com/mcp`. Defaults to `https://<exposure.host>/mcp`
    /// when `spec.exposure` is set. With a resource (set or derived), a JWT on `/mcp` must name it
    /// in its `aud` claim (clients ask the identity provider for it with the `resource`
    /// parameter); the audiences of `spec.auth.jwt` are not enough there. Without one, tokens on
    /// `/mcp` are checked against `spec.auth.jwt.audiences` only, and the metadata names the URL
    /// the request came to (see docs/mcp.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an absolute http(s) URL"),
        validation = Rule::new("!self.contains('#')").message("must not contain a fragment (#): a resource identifier is an absolute URI without one (RFC 8707)"),
    )]
    pub resource: Option<String>,
    /// OAuth scopes clients should ask for, advertised in the metadata (`scopes_supported`) and
    /// in the `scope` of `/mcp`'s 401 challenges. The gateway does not check a token's scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[!#-\\\\[\\\\]-~]+$'))").message("each scope must be a non-empty OAuth scope token: printable ASCII without spaces, quotes or backslashes"))]
    pub scopes: Vec<String>,
}

/// How callers authenticate. JWTs come from the tenant's identity provider;
/// API keys are minted by tenant admins through the admin API or declared as
/// ApiKey objects in the tenant's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.jwt) || (has(self.apiKeys) && self.apiKeys.enabled)").message("set jwt, or enable apiKeys: a tenant needs at least one way to authenticate callers"))]
#[serde(rename_all = "camelCase")]
pub struct TenantAuth {
    /// Bearer JWTs issued by the tenant's identity provider. Optional: without it the
    /// tenant authenticates with API keys alone (`apiKeys.enabled` must be true), and the
    /// admin API takes an API key with the role `tenant-admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    /// API keys as an alternative to JWTs for applications.
    #[serde(default)]
    pub api_keys: ApiKeys,
}

/// JWT validation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.jwksUri), has(self.jwksSecretRef), has(self.hmacSecretRef)].filter(x, x).size() == 1").message("set exactly one of jwksUri, jwksSecretRef or hmacSecretRef"))]
#[serde(rename_all = "camelCase")]
pub struct JwtAuth {
    /// Expected `iss` claim.
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them.
    #[schemars(length(min = 1, max = 16))]
    pub audiences: Vec<String>,
    /// URL of the identity provider's JWKS. Keys are cached and refreshed when a token names an unknown `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an http(s) URL"))]
    pub jwks_uri: Option<String>,
    /// A Secret key holding a static JWKS document (JSON), for identity providers without a JWKS endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<SecretKeyRef>,
    /// A Secret key holding a shared secret for HS256/384/512 tokens. Only set this
    /// when the identity provider cannot sign asymmetrically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_ref: Option<SecretKeyRef>,
    /// Claim holding the caller's roles (a list of strings, or one space-separated string).
    #[serde(default = "default_roles_claim")]
    #[schemars(length(min = 1, max = 256))]
    pub roles_claim: String,
    /// Claim naming the caller's team (a string; a list of strings: its first entry), for
    /// team budgets (`spec.limits.perTeam`), usage and spend by team. Absent: teams come
    /// from roles (`spec.limits.perTeam.rolePrefix`) or not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub team_claim: Option<String>,
    /// Roles that may use the admin API, in a token's roles claim or among an API key's
    /// roles. (A tenant without `jwt` has the admin role `tenant-admin`.)
    #[serde(default = "default_admin_roles")]
    #[schemars(length(max = 16))]
    pub admin_roles: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_seconds")]
    #[schemars(range(max = 300))]
    pub leeway_seconds: u32,
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_admin_roles() -> Vec<String> {
    vec!["tenant-admin".into()]
}

fn default_leeway_seconds() -> u32 {
    30
}

/// API key settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeys {
    /// Accept API keys: those minted through the admin API (only their hashes are stored)
    /// and the ApiKey objects of the tenant's namespace (only their hashes reach the
    /// gateway config). Off: ApiKey objects are not used and say so in their status.
    #[serde(default)]
    pub enabled: bool,
}

/// Wire protocol of an upstream LLM API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProviderType {
    /// Any OpenAI-compatible Chat Completions API: OpenAI, Azure OpenAI, vLLM, Ollama, ...
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Azure OpenAI: targets name deployments; the key goes in the `api-key` header, or
    /// Entra ID tokens (`azure.entraId`) as a bearer.
    AzureOpenai,
    /// Google's Gemini API (`generateContent`), e.g. `https://generativelanguage.googleapis.com/v1beta`;
    /// the key goes in the `x-goog-api-key` header.
    Gemini,
    /// Gemini on Google Vertex AI: `baseUrl` is the publisher's URL, e.g.
    /// `https://us-central1-aiplatform.googleapis.com/v1/projects/P/locations/us-central1/publishers/google`;
    /// requests carry an access token from the credentials in `vertex` (a service account key
    /// or workload identity federation).
    Vertex,
    /// Amazon Bedrock's Converse API (`/model/{model}/converse`, `converse-stream`), signed with
    /// SigV4 (credentials in `bedrock`) or with a Bedrock API key in `apiKeySecretRef`.
    /// `baseUrl` defaults to `https://bedrock-runtime.{region}.amazonaws.com`.
    Bedrock,
    /// An in-process deterministic model, for the quickstart and tests.
    Mock,
}

/// An upstream LLM API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.type in ['mock', 'bedrock'] || has(self.baseUrl)").message("baseUrl is required unless type is mock or bedrock"))]
#[x_kube(validation = Rule::new("self.type == 'mock' || !has(self.mock)").message("mock settings are only allowed when type is mock"))]
#[x_kube(validation = Rule::new("self.type == 'azureOpenai' || !has(self.azure)").message("azure settings are only allowed when type is azureOpenai"))]
#[x_kube(validation = Rule::new("self.type != 'azureOpenai' || has(self.apiKeySecretRef) != (has(self.azure) && has(self.azure.entraId))").message("an azureOpenai provider needs exactly one of apiKeySecretRef (its api-key) or azure.entraId (Entra ID tokens)"))]
#[x_kube(validation = Rule::new("self.type != 'gemini' || has(self.apiKeySecretRef)").message("a gemini provider needs apiKeySecretRef (its API key)"))]
#[x_kube(validation = Rule::new("self.type == 'vertex' ? has(self.vertex) && !has(self.apiKeySecretRef) : !has(self.vertex)").message("a vertex provider needs vertex (serviceAccountKeySecretRef or workloadIdentity) and no apiKeySecretRef; vertex settings are only allowed when type is vertex"))]
#[x_kube(validation = Rule::new("self.type == 'bedrock' ? has(self.bedrock) : !has(self.bedrock)").message("a bedrock provider needs bedrock.region; bedrock settings are only allowed when type is bedrock"))]
#[x_kube(validation = Rule::new("self.type != 'bedrock' || (has(self.apiKeySecretRef) ? 1 : 0) + (has(self.bedrock.accessKeyIdSecretRef) ? 1 : 0) + (has(self.bedrock.webIdentity) ? 1 : 0) == 1").message("a bedrock provider needs exactly one credential: apiKeySecretRef (a Bedrock API key), bedrock.accessKeyIdSecretRef with bedrock.secretAccessKeySecretRef, or bedrock.webIdentity"))]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    /// Name targets refer to. A DNS label.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new(super::common::DNS_LABEL_RULE).message(super::common::DNS_LABEL_MESSAGE))]
    pub name: String,
    /// API the provider speaks.
    #[serde(rename = "type")]
    pub type_: ProviderType,
    /// Base URL of the API, e.g. `https://api.openai.com/v1`. Required unless type is mock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an http(s) URL"))]
    pub base_url: Option<String>,
    /// Secret key holding the provider's API key, in the tenant namespace. Rotating it takes effect without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Extra HTTP headers sent with every request to this provider (e.g. an API version).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: BTreeMap<String, String>,
    /// Behaviour of a mock provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockProvider>,
    /// Azure OpenAI settings (type azureOpenai).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureProvider>,
    /// Vertex AI settings (type vertex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<VertexProvider>,
    /// Amazon Bedrock settings (type bedrock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockProvider>,
}

/// Where an Amazon Bedrock provider runs and how its requests are signed (SigV4, service
/// `bedrock`). The credentials are an access key from Secrets, or the pod's web identity;
/// a Bedrock API key goes in the provider's `apiKeySecretRef` instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.accessKeyIdSecretRef) == has(self.secretAccessKeySecretRef)").message("accessKeyIdSecretRef and secretAccessKeySecretRef go together"))]
#[x_kube(validation = Rule::new("!has(self.sessionTokenSecretRef) || has(self.accessKeyIdSecretRef)").message("sessionTokenSecretRef needs accessKeyIdSecretRef and secretAccessKeySecretRef"))]
#[serde(rename_all = "camelCase")]
pub struct BedrockProvider {
    /// AWS region of the Bedrock runtime, e.g. `us-east-1`: part of every signature.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z]{2}(-[a-z]+)+-[0-9]+$')").message("must be an AWS region such as us-east-1"))]
    pub region: String,
    /// Secret key holding the access key ID (`AKIA...` or `ASIA...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding a session token, for temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_secret_ref: Option<SecretKeyRef>,
    /// Assume an IAM role with the gateway pod's service account token (as EKS's IAM roles
    /// for service accounts do): the operator projects a token for the audience
    /// `sts.amazonaws.com`, and the gateway exchanges it at STS
    /// (`AssumeRoleWithWebIdentity`) for temporary credentials, cached until five minutes
    /// before they expire. The cluster's service account issuer must be an IAM OIDC provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity: Option<BedrockWebIdentity>,
}

/// The IAM role the gateway assumes with its service account token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BedrockWebIdentity {
    /// ARN of the role, e.g. `arn:aws:iam::123456789012:role/tenant-a-bedrock`.
    #[schemars(length(min = 20, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^arn:aws[a-z-]*:iam::[0-9]{12}:role/[a-zA-Z0-9_+=,.@/-]+$')").message("must be an IAM role ARN such as arn:aws:iam::123456789012:role/name"))]
    pub role_arn: String,
    /// The STS endpoint. Defaults to the regional one, `https://sts.{region}.amazonaws.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an http(s) URL"))]
    pub sts_url: Option<String>,
}

/// How the gateway authenticates to Vertex AI: a service account key or
/// workload identity federation, exactly one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.serviceAccountKeySecretRef) != has(self.workloadIdentity)").message("set exactly one of serviceAccountKeySecretRef or workloadIdentity"))]
#[serde(rename_all = "camelCase")]
pub struct VertexProvider {
    /// Secret key holding a service account key (the JSON file Google issues): the gateway
    /// signs a JWT with it and exchanges it at the key's `token_uri` for access tokens, which
    /// it caches until five minutes before they expire. Rotating the key takes effect at the
    /// next exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key_secret_ref: Option<SecretKeyRef>,
    /// Workload identity federation instead of a key: the gateway pod's projected
    /// service account token is exchanged at Google's STS for a federated access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<VertexWorkloadIdentity>,
}

/// Google workload identity federation with the gateway's Kubernetes service account,
/// as Google's external-account credentials do it: the pod's projected service account
/// token (audience `https:` followed by `audience`, e.g.
/// `https://iam.googleapis.com/projects/...`, the pool provider's default allowed
/// audience) is exchanged at the STS endpoint (RFC 8693) for a federated access token;
/// with `serviceAccountEmail`, that token then impersonates the service account
/// (`generateAccessToken`). Tokens are cached until five minutes before they expire;
/// the projected token is read again at each exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VertexWorkloadIdentity {
    /// The workload identity pool provider, e.g.
    /// `//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/my-pool/providers/my-cluster`:
    /// the STS exchange's `audience`.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^//iam\\\\.googleapis\\\\.com/projects/[0-9]+/locations/global/workloadIdentityPools/[-a-z0-9]+/providers/[-a-z0-9]+$')").message("must be a workload identity pool provider: //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER"))]
    pub audience: String,
    /// A service account to impersonate with the federated token; absent, the federated
    /// token itself calls Vertex AI (the pool's principal needs the roles then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 254))]
    #[x_kube(validation = Rule::new("self.matches('^[^@/ ]+@[^@/ ]+$')").message("must be a service account email"))]
    pub service_account_email: Option<String>,
    /// The STS token endpoint; default `https://sts.googleapis.com/v1/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an http(s) URL"))]
    pub sts_url: Option<String>,
    /// The IAM Credentials API root; default `https://iamcredentials.googleapis.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an http(s) URL"))]
    pub iam_credentials_url: Option<String>,
}

/// How an Azure OpenAI resource is called. `baseUrl` is the resource's
/// endpoint, e.g. `https://my-resource.openai.azure.com`; each target's
/// `model` names a deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureProvider {
    /// With an API version (e.g. `2024-10-21`), calls go to
    /// `{baseUrl}/openai/deployments/{deployment}/chat/completions?api-version=...`;
    /// without one, to the v1 API, `{baseUrl}/openai/v1/chat/completions`, with the
    /// deployment as the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$')").message("must be an API version such as 2024-10-21 or 2025-04-01-preview"))]
    pub api_version: Option<String>,
    /// Microsoft Entra ID access tokens instead of the `api-key` (then leave
    /// `apiKeySecretRef` out): sent as `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra_id: Option<AzureEntraId>,
}

/// An Entra ID application whose tokens (scope
/// `https://cognitiveservices.azure.com/.default`) call Azure OpenAI, from the
/// client credentials grant at `{authorityHost}/{tenantId}/oauth2/v2.0/token`.
/// With `clientSecretSecretRef` the client authenticates with its secret; without
/// it, with workload identity federation: the gateway pod's projected service
/// account token (audience `api://AzureADTokenExchange`) is the client assertion,
/// so the app needs a federated credential for the gateway's service account.
/// Tokens are cached until five minutes before they expire; the secret or the
/// projected token is read again at each exchange.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureEntraId {
    /// The directory (tenant) ID: a GUID or a domain such as `contoso.onmicrosoft.com`.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][-.A-Za-z0-9]*$')").message("must be a directory (tenant) ID: a GUID or a domain name"))]
    pub tenant_id: String,
    /// The application (client) ID.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[-.A-Za-z0-9]+$')").message("must be an application (client) ID, e.g. a GUID"))]
    pub client_id: String,
    /// Secret key holding the application's client secret; absent: workload identity federation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_secret_ref: Option<SecretKeyRef>,
    /// The Entra ID authority; default `https://login.microsoftonline.com` (another for sovereign
    /// clouds, e.g. `https://login.microsoftonline.us`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("must be an http(s) URL"))]
    pub authority_host: Option<String>,
}

/// Behaviour of the in-process mock provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MockProvider {
    /// Delay before the first token, in milliseconds.
    #[serde(default)]
    #[schemars(range(max = 60000))]
    pub latency_ms: u32,
    /// Tokens in each answer.
    #[serde(default = "default_mock_tokens")]
    #[schemars(range(min = 1, max = 4096))]
    pub completion_tokens: u32,
    /// Delay between streamed chunks, in milliseconds.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub chunk_interval_ms: u32,
}

fn default_mock_tokens() -> u32 {
    16
}

/// A model name tenants may ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    /// The name clients put in `model`, e.g. `chat-default` or `gpt-4o-mini`.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._:/-]*$')").message("must start with a letter or digit and contain only letters, digits, '.', '_', ':', '/' and '-'"))]
    pub name: String,
    /// What the model does: `chat` (the default) answers `/v1/chat/completions`,
    /// `/v1/responses` and `/v1/messages`; `embedding` answers `/v1/embeddings`, and its targets must be providers
    /// with an embeddings API (openai, azureOpenai, mock).
    #[serde(default, rename = "type", skip_serializing_if = "ModelType::is_chat")]
    pub type_: ModelType,
    /// Upstream targets in failover order: the first healthy one serves the request.
    #[schemars(length(min = 1, max = 8))]
    pub targets: Vec<ModelTarget>,
}

/// What a tenant model does, which decides the API that serves it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ModelType {
    /// Chat completions.
    #[default]
    Chat,
    /// Embeddings (`/v1/embeddings`).
    Embedding,
}

impl ModelType {
    /// Whether this is the default, chat.
    pub fn is_chat(&self) -> bool {
        *self == Self::Chat
    }

    /// The name used in the CRD.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embedding => "embedding",
        }
    }
}

/// One upstream model behind a tenant model name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelTarget {
    /// Name of a provider in spec.providers.
    #[schemars(length(min = 1, max = 63))]
    pub provider: String,
    /// Model name sent to the provider.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// What this target costs, in spec.currency. Absent: the cluster's ModelPrice for the
    /// provider's type and this model, else the shipped default list's price, else unpriced
    /// (usage is recorded without a cost, and status.unpricedTargets names the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
}

/// Retries, timeouts and circuit breaking for calls to providers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    /// Retries of one target (connect errors, timeouts, 429 and 5xx) before failing over to the next.
    #[serde(default = "default_max_retries")]
    #[schemars(range(max = 10))]
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubles each retry, with jitter.
    #[serde(default = "default_backoff_ms")]
    #[schemars(range(min = 1, max = 60000))]
    pub initial_backoff_ms: u32,
    /// Upper bound of a retry delay in milliseconds (a longer Retry-After skips to the next target).
    #[serde(default = "default_max_backoff_ms")]
    #[schemars(range(min = 1, max = 300000))]
    pub max_backoff_ms: u32,
    /// Time to establish a connection to a provider, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    #[schemars(range(min = 1, max = 300000))]
    pub connect_timeout_ms: u32,
    /// Time until the provider's response headers arrive, in milliseconds.
    #[serde(default = "default_first_byte_timeout_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub first_byte_timeout_ms: u32,
    /// Time for the whole upstream call, streaming included, in milliseconds.
    #[serde(default = "default_total_timeout_ms")]
    #[schemars(range(min = 1, max = 86400000))]
    pub total_timeout_ms: u32,
    /// Circuit breaker kept per target.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            max_retries: default_max_retries(),
            initial_backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            first_byte_timeout_ms: default_first_byte_timeout_ms(),
            total_timeout_ms: default_total_timeout_ms(),
            circuit_breaker: CircuitBreaker::default(),
        }
    }
}

fn default_max_retries() -> u32 {
    2
}
fn default_backoff_ms() -> u32 {
    100
}
fn default_max_backoff_ms() -> u32 {
    2000
}
fn default_connect_timeout_ms() -> u32 {
    5000
}
fn default_first_byte_timeout_ms() -> u32 {
    60000
}
fn default_total_timeout_ms() -> u32 {
    600000
}

/// Per-target circuit breaker: after `failureThreshold` consecutive failures the
/// target is skipped for `openSeconds`, then one probe request decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Consecutive failures that open the breaker.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: u32,
    /// Seconds the breaker stays open before a half-open probe.
    #[serde(default = "default_open_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub open_seconds: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self { failure_threshold: default_failure_threshold(), open_seconds: default_open_seconds() }
    }
}

fn default_failure_threshold() -> u32 {
    5
}
fn default_open_seconds() -> u32 {
    30
}

/// What happens to requests when the limit store (Redis) cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FailMode {
    /// Let requests through unlimited until the store is back.
    #[default]
    Open,
    /// Refuse requests with 503 until the store is back.
    Closed,
}

/// Limits for the whole tenant, with `perUser` limits applied to each subject or API key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.burst) || has(self.requestsPerMinute)").message("burst needs requestsPerMinute"))]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Sustained requests per minute for the tenant (GCRA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u32>,
    /// Requests allowed at once above the sustained rate. Defaults to 10% of requestsPerMinute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
    /// Prompt plus completion tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
    /// Prompt plus completion tokens per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_day: Option<u64>,
    /// Streaming responses and MCP sessions open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent_streams: Option<u32>,
    /// Spend cap for the whole tenant, in spec.currency, reserved before each request goes
    /// upstream and settled to its cost (docs/budgets.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Limits applied to each user (JWT subject or API key) separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<UserLimits>,
    /// Budgets of teams. A caller's team is named by the token's `spec.auth.jwt.teamClaim`,
    /// an ApiKey's `spec.team`, or else its first role starting with `rolePrefix`. A team's
    /// spend also counts toward the tenant's budget; a user's and a key's toward their team's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_team: Option<TeamLimits>,
    /// Behaviour when Redis is unreachable.
    #[serde(default)]
    pub fail_mode: FailMode,
}

/// Limits applied to each user separately.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.burst) || has(self.requestsPerMinute)").message("burst needs requestsPerMinute"))]
#[serde(rename_all = "camelCase")]
pub struct UserLimits {
    /// Sustained requests per minute for one user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u32>,
    /// Requests one user may make at once above the sustained rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
    /// Tokens per minute for one user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
    /// Tokens per UTC day for one user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_day: Option<u64>,
    /// Spend cap for each user, in spec.currency; a user's spend also counts toward the
    /// tenant's budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// Budgets of teams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeamLimits {
    /// A caller without a team from `spec.auth.jwt.teamClaim` or an ApiKey's `spec.team`
    /// belongs to the team named by its first role that starts with this prefix, less the
    /// prefix: role `team:search` with prefix `team:` is team `search`. Absent: roles name no team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub role_prefix: Option<String>,
    /// The budget of each team not listed in `teams`. Absent: only listed teams have budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Teams with budgets of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub teams: Vec<TeamBudget>,
}

/// One team's budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeamBudget {
    /// The team, as the claim, key or role names it.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Its spend cap, in spec.currency.
    pub budget: Budget,
}

/// Largest budget amount, in units of the currency: budgets are kept in nano-units in Redis,
/// whose Lua numbers are exact integers only up to 2^53 (about 9.007e15 nano-units).
pub const MAX_BUDGET_UNITS: u64 = 9_000_000;

/// A spend cap over a calendar or fixed window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.fixedWindow) == (has(self.period) && self.period == 'Fixed')").message("fixedWindow is set exactly when period is Fixed"))]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// The most that may be spent in one period, a decimal string in spec.currency, e.g.
    /// `"250"` or `"12.50"`; at most `"9000000"`. `"0"` refuses every priced request.
    #[schemars(length(min = 1, max = 17))]
    #[x_kube(validation = Rule::new("self.matches('^(0|[1-9][0-9]{0,6})([.][0-9]{1,9})?$') && double(self) <= 9000000.0").message("must be a decimal amount written as a string, e.g. \"12.50\": at most \"9000000\", with up to 9 decimals"))]
    pub amount: String,
    /// The window the amount applies to: `Day` (a UTC day), `Month` (a UTC calendar month) or
    /// `Fixed` (windows of `fixedWindow.length` one after another from `fixedWindow.start`).
    #[serde(default)]
    pub period: BudgetPeriod,
    /// The windows of a `Fixed` period (required then, refused otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_window: Option<FixedWindow>,
    /// Percentages of the amount at which the budget alerts, once per window each: a log line,
    /// the counter `tenantgate_budget_alerts_total` and, for the tenant's budget and an ApiKey's,
    /// a Kubernetes Event in the tenant's namespace (reason `BudgetThreshold`, related to the
    /// Tenant; an ApiKey's regards the ApiKey). A listed team's (`perTeam.teams`) alerts without
    /// an Event; `perTeam.budget` and `perUser` budgets do not alert.
    #[serde(default = "default_alert_at_percent")]
    #[schemars(length(max = 8), inner(range(min = 1, max = 100)))]
    pub alert_at_percent: Vec<u8>,
}

impl Budget {
    /// A budget of `amount` per `period`, alerting at the default thresholds.
    pub fn new(amount: &str, period: BudgetPeriod) -> Self {
        Self { amount: amount.into(), period, fixed_window: None, alert_at_percent: default_alert_at_percent() }
    }

    /// A budget of `amount` per window of `length` from `start`.
    pub fn fixed(amount: &str, start: &str, length: &str) -> Self {
        Self {
            fixed_window: Some(FixedWindow { start: start.into(), length: length.into() }),
            ..Self::new(amount, BudgetPeriod::Fixed)
        }
    }
}

impl FixedWindow {
    /// The start (seconds since the epoch) and length (seconds); `Err` names what does not parse.
    pub fn seconds(&self) -> Result<(i64, i64), String> {
        let start = crate::config::parse_rfc3339_ms(&self.start)
            .map_err(|e| format!("fixedWindow.start: {e}"))?
            .div_euclid(1000);
        let length = parse_hms(&self.length).filter(|l| (3_600..=87_600 * 3_600).contains(l)).ok_or_else(|| {
            format!("fixedWindow.length {:?} is not a duration from 1h to 87600h, e.g. 168h", self.length)
        })?;
        Ok((start, length))
    }
}

/// Seconds of a duration written `1h30m`, `90m`, `45s` (hours, minutes, seconds, in that order).
fn parse_hms(text: &str) -> Option<i64> {
    let (mut total, mut rest, mut last) = (0i64, text, 0u8);
    if text.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: i64 = rest[..digits].parse().ok()?;
        let (unit, scale) = match rest.as_bytes().get(digits)? {
            b'h' => (1, 3_600),
            b'm' => (2, 60),
            b's' => (3, 1),
            _ => return None,
        };
        if unit <= last {
            return None;
        }
        last = unit;
        total = total.checked_add(n.checked_mul(scale)?)?;
        rest = &rest[digits + 1..];
    }
    Some(total)
}

/// Back-to-back windows of one length from a start: a sprint, a billing cycle that does not
/// follow the calendar, a one-off event (one long window).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FixedWindow {
    /// Start of the first window, an RFC 3339 time (e.g. `2026-12-01T09:00:00Z`). Before it,
    /// spend counts toward the window that ends at it.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(RFC3339_RULE).message("must be an RFC 3339 time with a zone, e.g. 2026-12-01T09:00:00Z"))]
    pub start: String,
    /// Length of each window, a duration in hours, minutes and seconds (e.g. `168h` for a
    /// week, `336h` for two); from 1h to 87600h (ten years).
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != '' && duration(self) >= duration('1h') && duration(self) <= duration('87600h')").message("must be a duration such as 168h or 90m, from 1h to 87600h"))]
    pub length: String,
}

fn default_alert_at_percent() -> Vec<u8> {
    vec![80, 95, 100]
}

/// The calendar window of a budget, in UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum BudgetPeriod {
    /// From 00:00 UTC to the next midnight.
    Day,
    /// From the first of the month, 00:00 UTC, to the first of the next.
    #[default]
    Month,
    /// Windows of `fixedWindow.length` one after another from `fixedWindow.start`.
    Fixed,
}

/// The gateway Deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Replicas when autoscaling is not set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: u32,
    /// HorizontalPodAutoscaler settings. When set, the HPA owns the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Compute resources of the gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Gateway image, when it should differ from the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self { replicas: default_replicas(), autoscaling: None, resources: None, image: None }
    }
}

fn default_replicas() -> u32 {
    1
}

/// HorizontalPodAutoscaler (autoscaling/v2) settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must be less than or equal to maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Lower bound of replicas.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: u32,
    /// Upper bound of replicas.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: u32,
    /// Average CPU utilization the autoscaler aims for, in percent of requests.
    #[serde(default = "default_cpu_target", rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: u32,
}

fn default_cpu_target() -> u32 {
    70
}

/// Where the gateway keeps state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Redis for rate limits, quotas and MCP sessions shared by all replicas.
    /// Absent: kept in process (then only one replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<UrlSecret>,
    /// PostgreSQL for usage, audit events and API keys.
    /// Absent: SQLite on the gateway's data volume (see `volume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<UrlSecret>,
    /// A PersistentVolumeClaim for the gateway's data, which then outlives its pods: the usage
    /// and audit records spilled while the database is down (each pod spills into a directory of
    /// its own, and a gateway replays the spill of pods that are gone) and, without `database`,
    /// the SQLite file with API keys, usage and audit events. Absent: an emptyDir, lost with the
    /// pod (status says so; records left in it are counted in `tenantgate_recorder_lost_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<StorageVolume>,
}

/// The gateway's data volume: a claim that exists, or one the operator creates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.claimName) != has(self.size)").message("set claimName (a PersistentVolumeClaim that exists) or size (one the operator creates), not both"))]
#[x_kube(validation = Rule::new("!has(self.claimName) || (!has(self.storageClassName) && !has(self.accessMode))").message("storageClassName and accessMode describe the claim the operator creates: leave them out with claimName"))]
#[serde(rename_all = "camelCase")]
pub struct StorageVolume {
    /// A PersistentVolumeClaim in the tenant's namespace, made by the platform team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("must be a valid PersistentVolumeClaim name"))]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// Size of the claim `gateway-data` the operator creates, e.g. `1Gi`. It may grow
    /// (where the storage class allows expansion), never shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    /// Storage class of the claim the operator creates. Absent: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Access mode of the claim the operator creates. `ReadWriteOnce` (the default): every
    /// gateway pod runs on the node that mounts it. `ReadWriteMany` (NFS, CephFS, EFS, ...):
    /// pods on any node, and a spill left by a pod on one node is replayed from another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<VolumeAccessMode>,
}

/// How the gateway pods share their data volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum VolumeAccessMode {
    /// One node at a time (any number of pods on it).
    #[default]
    ReadWriteOnce,
    /// Many nodes at once.
    ReadWriteMany,
}

/// A connection URL kept in a Secret (it usually carries a password).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlSecret {
    /// Secret key holding the URL, e.g. `redis://:pw@redis:6379/0` or `postgres://user:pw@db/tenantgate`.
    /// TLS: `rediss://` for Redis; `?sslmode=verify-full` (libpq's `sslmode` values) for PostgreSQL.
    pub url_secret_ref: SecretKeyRef,
    /// Secret key holding the PEM certificate(s) of a private CA that signed the server's certificate
    /// (mounted next to the URL). Redis: trusted instead of the system roots (`rediss://` only).
    /// PostgreSQL: the `sslrootcert`; a URL without `sslmode` then means `verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Where the server is, for the gateway's NetworkPolicy (the operator never reads the URL):
    /// its peers and port. Absent: a server in the tenant's namespace on the standard port
    /// (6379 for Redis, 5432 for PostgreSQL); declare any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<StorageEgress>,
}

/// The peers a storage server is among and its port: the only way out the gateway
/// gets for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageEgress {
    /// A namespace and pod selector for a server in the cluster, an `ipBlock` (`/32`) for one
    /// outside it.
    #[schemars(length(min = 1, max = 16))]
    pub to: Vec<NetworkPolicyPeer>,
    /// The server's TCP port. Default: 6379 for Redis, 5432 for PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

/// What the audit trail records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    /// Record prompts and completions in audit events, after redaction. Off by default.
    #[serde(default)]
    pub record_prompts: bool,
}

/// The network fence around the gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Peers allowed to call the gateway, besides the operator's namespace and metrics scrapers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allow_ingress_from: Vec<NetworkPolicyPeer>,
    /// Extra egress peers, beyond DNS and what the config names (providers, MCP servers, storage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allow_egress_to: Vec<NetworkPolicyPeer>,
    /// Allow providers and MCP servers on loopback or link-local addresses (cloud metadata
    /// endpoints among them). Off by default against SSRF; local development turns it on.
    #[serde(default)]
    pub allow_local_upstreams: bool,
}

/// How the gateway is reached from outside the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!(has(self.ingressClassName) && has(self.gatewayRef))").message("set ingressClassName (Ingress) or gatewayRef (HTTPRoute), not both"))]
#[serde(rename_all = "camelCase")]
pub struct Exposure {
    /// Public host name.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("must be a lower-case DNS name"))]
    pub host: String,
    /// TLS for the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExposureTls>,
    /// IngressClass of the Ingress. Ingress is used unless gatewayRef is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub ingress_class_name: Option<String>,
    /// Gateway API Gateway the HTTPRoute attaches to (used only where the Gateway API CRDs are installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ref: Option<GatewayRef>,
    /// Extra annotations for the Ingress or HTTPRoute.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 32))]
    pub annotations: BTreeMap<String, String>,
}

/// TLS settings of an exposure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.secretName) || has(self.certManagerIssuer)").message("set secretName, certManagerIssuer, or both"))]
#[serde(rename_all = "camelCase")]
pub struct ExposureTls {
    /// Secret (type kubernetes.io/tls) in the tenant namespace holding the certificate.
    /// With certManagerIssuer set, cert-manager writes it; defaults to `<tenant>-tls` then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret_name: Option<String>,
    /// cert-manager issuer that obtains the certificate (adds its annotation to the Ingress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager_issuer: Option<IssuerRef>,
}

/// A cert-manager Issuer or ClusterIssuer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the tenant namespace) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[x_kube(validation = Rule::new("self in ['Issuer', 'ClusterIssuer']").message("must be Issuer or ClusterIssuer"))]
    #[schemars(length(max = 16))]
    pub kind: String,
}

fn default_issuer_kind() -> String {
    "ClusterIssuer".into()
}

/// A Gateway API Gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Name of the Gateway.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Gateway.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Listener section of the Gateway to attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub section_name: Option<String>,
}

/// What the operator observed and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Namespace the gateway runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// URL tenants call: the external URL when exposed, else the in-cluster Service URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// McpConnections bound to this tenant.
    #[serde(default)]
    pub mcp_connections: u32,
    /// PromptPolicies applied to this tenant (global ones included).
    #[serde(default)]
    pub prompt_policies: u32,
    /// Content hash of the GatewayConfig the gateway runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Model targets (`provider/model`) without a price in spec.currency: their usage is
    /// recorded without a cost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpriced_targets: Vec<String>,
    /// The tenant's budget (`spec.limits.budget`) as its gateway last published it: at most every
    /// 30 s, never per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
    /// Ready, Reconciled, GatewayAvailable and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Where a budget (the tenant's or an ApiKey's) stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// The budget per window, in `currency`.
    pub amount: String,
    /// Spent in `window` (reservations in flight included), in `currency`.
    pub spent: String,
    /// ISO 4217 code.
    pub currency: String,
    /// The current window, UTC: `2026-12` (a month), `2026-12-06` (a day) or
    /// `2026-12-01T09:00:00Z` (the start of a fixed window).
    pub window: String,
    /// When the gateway published it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl BudgetStatus {
    /// Keys of the `gateway-spend` ConfigMap the gateway publishes it in.
    pub const KEYS: [&'static str; 5] = ["amount", "spent", "currency", "window", "updatedAt"];

    /// Reads it from the `gateway-spend` ConfigMap's data; `None` when a value
    /// is missing or not of its shape (the gateway writes it, so it is checked).
    pub fn from_data(data: &std::collections::BTreeMap<String, String>) -> Option<Self> {
        let get = |k: &str| data.get(k).filter(|v| v.len() <= 64).cloned();
        let amount = |k: &str| get(k).filter(|v| crate::pricing::budget_nanos(v).is_ok());
        let status = Self {
            amount: amount("amount")?,
            spent: get("spent").filter(|v| crate::pricing::per_call_nanos(v).is_ok())?,
            currency: get("currency").filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))?,
            window: get("window").filter(|w| {
                !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'T' | b'Z'))
            })?,
            updated_at: get("updatedAt"),
        };
        Some(status)
    }
}

#[cfg(test)]
mod budget_status_tests {
    use super::*;

    #[test]
    fn fixed_windows_take_hours_minutes_and_seconds() {
        assert_eq!(parse_hms("168h"), Some(604_800));
        assert_eq!(parse_hms("1h30m"), Some(5_400));
        assert_eq!(parse_hms("90m15s"), Some(5_415));
        for bad in ["", "h", "7d", "30m1h", "1h1h", "1.5h", "-1h"] {
            assert_eq!(parse_hms(bad), None, "{bad}");
        }
        let w = FixedWindow { start: "2026-12-01T09:00:00Z".into(), length: "30m".into() };
        assert!(w.seconds().expect_err("too short").contains("from 1h"));
    }

    #[test]
    fn what_the_gateway_publishes_is_checked_before_it_reaches_status() {
        let good: BTreeMap<String, String> =
            [("amount", "500"), ("spent", "12.5"), ("currency", "EUR"), ("window", "2026-12")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(BudgetStatus::from_data(&good).map(|s| s.spent), Some("12.5".into()));
        let mut fixed = good.clone();
        fixed.insert("window".into(), "2026-12-01T09:00:00Z".into());
        assert_eq!(BudgetStatus::from_data(&fixed).map(|s| s.window), Some("2026-12-01T09:00:00Z".into()));
        for (key, bad) in [("spent", "lots"), ("currency", "eur"), ("window", "<script>"), ("amount", "9999999999")] {
            let mut data = good.clone();
            data.insert(key.into(), bad.into());
            assert_eq!(BudgetStatus::from_data(&data), None, "{key}: {bad}");
        }
        let mut missing = good.clone();
        missing.remove("window");
        assert_eq!(BudgetStatus::from_data(&missing), None);
    }
}
