//! The one pure function that turns a Tenant and the objects around it into
//! the [`GatewayConfig`] its gateway runs.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::config::{
    AuthConfig, AwsCredentialsConfig, AzureConfig, BedrockConfig, CONFIG_VERSION, DatabaseConfig, DeclaredApiKey,
    EntraCredential, EntraIdConfig, EnvValue, GatewayConfig, GoogleWorkloadIdentityConfig, JwtConfig, JwtKeys,
    KeysConfig, McpAuthConfig, McpConnectionConfig, McpEndpointTransport, McpResourceConfig, NetworkConfig,
    PolicyConfig, PolicyLayer, PolicyOrigin, ProviderConfig, StdioProcess, StorageConfig, TenantIdentity,
    TracingConfig,
};
use crate::issue::{ConfigIssue, ObjectRef, Reason};
use crate::pricing::{self, TargetRef};
use crate::v1alpha1::{
    ApiKey, AzureProvider, BedrockProvider, McpConnection, McpTransport, ModelPrice, PromptPolicy, SecretKeyRef,
    Tenant, VertexWorkloadIdentity,
};

/// Where the gateway Deployment mounts the projected Secret volume.
pub const SECRETS_ROOT: &str = "/var/run/secrets/tenantgate";
/// The operator-generated Secret of per-tenant keys.
pub const GATEWAY_KEYS_SECRET: &str = "gateway-keys";
/// Key of the token-encryption key in [`GATEWAY_KEYS_SECRET`].
pub const TOKEN_ENCRYPTION_KEY: &str = "token-encryption-key";
/// Key of the API-key pepper in [`GATEWAY_KEYS_SECRET`].
pub const API_KEY_PEPPER: &str = "api-key-pepper";
/// Where the gateway keeps SQLite when no database is configured.
pub const SQLITE_PATH: &str = "/var/lib/tenantgate/gateway.db";
/// Port of the bridge that serves a stdio McpConnection over streamable HTTP in a cluster.
pub const STDIO_BRIDGE_PORT: u16 = 8080;
/// Key of the token in a stdio bridge's token Secret ([`stdio_bridge_token`]).
pub const BRIDGE_TOKEN_KEY: &str = "token";
/// Where the gateway Deployment mounts its projected service account tokens
/// (workload identity): `<root>/<slug>/token`, one directory per audience. A
/// sibling of [`SECRETS_ROOT`], not inside it: a mount point cannot be made
/// inside the read-only Secret volume, and a Secret may be called `identity`.
pub const IDENTITY_ROOT: &str = "/var/run/secrets/tenantgate-identity";
/// The audience Entra ID expects of a federated client assertion.
pub const ENTRA_TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Entra ID's public-cloud authority.
pub const ENTRA_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Google's Security Token Service endpoint.
pub const GOOGLE_STS_URL: &str = "https://sts.googleapis.com/v1/token";
/// Google's IAM Credentials API.
pub const GOOGLE_IAM_CREDENTIALS_URL: &str = "https://iamcredentials.googleapis.com";

/// Where the gateway runs, which decides how stdio MCP servers are reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RenderMode {
    /// In a cluster: stdio servers run as their own Deployment behind a bridge Service.
    #[default]
    Cluster,
    /// On a workstation (`gateway --manifests DIR`): the gateway spawns stdio servers.
    Local,
}

/// Settings of a render that do not come from the objects.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// Root of the Secret files: `<root>/<secret>/<key>`.
    pub secrets_root: String,
    /// Where SQLite lives when the tenant has no database.
    pub sqlite_path: String,
    /// Cluster or local.
    pub mode: RenderMode,
    /// Root of the projected service account tokens: `<root>/<slug>/token` per audience
    /// ([`identity_token_slug`]).
    pub identity_root: String,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            secrets_root: SECRETS_ROOT.into(),
            sqlite_path: SQLITE_PATH.into(),
            mode: RenderMode::Cluster,
            identity_root: IDENTITY_ROOT.into(),
        }
    }
}

/// The objects one tenant's config is made of.
#[derive(Clone, Copy, Debug)]
pub struct RenderInput<'a> {
    /// The tenant.
    pub tenant: &'a Tenant,
    /// McpConnections in the tenant's namespace.
    pub mcp_connections: &'a [McpConnection],
    /// PromptPolicies in the tenant's namespace.
    pub tenant_policies: &'a [PromptPolicy],
    /// PromptPolicies in the operator's namespace.
    pub global_policies: &'a [PromptPolicy],
    /// The cluster's ModelPrices.
    pub model_prices: &'a [ModelPrice],
    /// ApiKeys in the tenant's namespace with the key the operator generated for each
    /// (those without one yet are not here).
    pub api_keys: &'a [IssuedApiKey],
}

/// An ApiKey and what the operator generated for it: the key's prefix and its
/// peppered hash (never the key).
#[derive(Clone, Debug, PartialEq)]
pub struct IssuedApiKey {
    /// The object.
    pub key: ApiKey,
    /// The key's public prefix.
    pub prefix: String,
    /// Hex HMAC-SHA256 of the key with the tenant's pepper.
    pub hash: String,
}

/// Admin roles of a tenant without JWT settings.
pub const DEFAULT_ADMIN_ROLES: &[&str] = &["tenant-admin"];

/// A rendered config and what it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedConfig {
    /// The config, sealed with its hash.
    pub config: GatewayConfig,
    /// Every Secret key the config points at (the projected volume mounts exactly these).
    pub secret_refs: BTreeSet<SecretKeyRef>,
    /// Those of [`Self::secret_refs`] the operator generates (`gateway-keys`,
    /// the stdio bridges' tokens): never missing for long, never the user's to create.
    pub generated_secrets: BTreeSet<String>,
    /// The audiences of the projected service account tokens the config reads
    /// (workload identity): the operator projects one token per audience at
    /// `<identity_root>/<identity_token_slug(audience)>/token`.
    pub identity_token_audiences: BTreeSet<String>,
    /// McpConnections left out, with why.
    pub skipped: Vec<ConfigIssue>,
    /// `provider/model` of the targets without a price in the tenant's currency, sorted.
    pub unpriced_targets: Vec<String>,
}

/// Why a tenant's config could not be rendered; the old config stays in force.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct RenderError {
    /// Every problem found, not just the first.
    pub issues: Vec<ConfigIssue>,
}

/// The namespace a tenant's gateway runs in.
pub fn tenant_namespace(tenant: &Tenant) -> String {
    tenant.spec.namespace.clone().unwrap_or_else(|| format!("tg-{}", tenant.name_any()))
}

/// The directory name of the projected token of `audience` under the identity
/// root: a DNS label (the operator names the volume after it), the same for
/// the same audience on every render.
pub fn identity_token_slug(audience: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(audience.as_bytes())[..8])
}

/// In-cluster URL of the bridge Service of a stdio McpConnection.
pub fn stdio_bridge_url(connection: &str, namespace: &str) -> String {
    format!("http://mcp-{connection}.{namespace}.svc:{STDIO_BRIDGE_PORT}/mcp")
}

/// The operator-generated token a stdio McpConnection's bridge requires and
/// the gateway sends as its bearer token.
pub fn stdio_bridge_token(connection: &str) -> SecretKeyRef {
    SecretKeyRef::new(format!("mcp-{connection}-bridge-token"), BRIDGE_TOKEN_KEY)
}

/// The resource identifier of a tenant's `/mcp` (RFC 8707): `spec.mcp.resource`, else
/// `https://<spec.exposure.host>/mcp`, else none.
pub fn mcp_resource(tenant: &Tenant) -> Option<String> {
    let spec = &tenant.spec;
    spec.mcp
        .as_ref()
        .and_then(|m| m.resource.clone())
        .or_else(|| spec.exposure.as_ref().map(|e| format!("https://{}/mcp", e.host)))
}

/// Why a URL cannot be a resource identifier: RFC 8707 asks for an absolute URI
/// without a fragment; the MCP authorization spec for its canonical http(s) form.
fn resource_problem(resource: &str) -> Option<String> {
    let parsed = match url::Url::parse(resource) {
        Ok(u) => u,
        Err(e) => return Some(format!("{resource:?} is not an absolute URL: {e}")),
    };
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Some(format!("{resource:?} must be an http(s) URL with a host"));
    }
    if parsed.fragment().is_some() {
        return Some(format!("{resource:?} must not contain a fragment (#)"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Some(format!("{resource:?} must not contain credentials"));
    }
    None
}

/// Whether `scope` is an OAuth scope token (RFC 6749 3.3: printable ASCII but space, `"` and `\`).
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty() && scope.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// Why an extra provider header cannot be sent: a name that is not an HTTP
/// token, or a value with control characters (CR/LF would split the request).
fn header_problem(name: &str, value: &str) -> Option<&'static str> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Some("is not a valid HTTP header name");
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Some("must not contain control characters (CR, LF, NUL)");
    }
    None
}

/// Renders a tenant's [`GatewayConfig`].
///
/// Problems with the tenant or any prompt policy fail the render: a policy
/// that cannot be applied must not be silently dropped. An McpConnection that
/// cannot be used is left out and reported in [`RenderedConfig::skipped`].
pub fn render(input: RenderInput<'_>, options: &RenderOptions) -> Result<RenderedConfig, RenderError> {
    let mut r = Renderer::new(options);
    let tenant = input.tenant;
    let spec = &tenant.spec;
    let namespace = tenant_namespace(tenant);
    let tenant_obj = ObjectRef::cluster("Tenant", &tenant.name_any());

    let jwt = spec.auth.jwt.as_ref().map(|jwt| {
        let keys = match (&jwt.jwks_uri, &jwt.jwks_secret_ref, &jwt.hmac_secret_ref) {
            (Some(uri), None, None) => JwtKeys::JwksUri(uri.clone()),
            (None, Some(secret), None) => JwtKeys::JwksFile(r.secret_file(secret)),
            (None, None, Some(secret)) => JwtKeys::HmacSecretFile(r.secret_file(secret)),
            _ => {
                r.issue(
                    &tenant_obj,
                    "spec.auth.jwt",
                    "set exactly one of jwksUri, jwksSecretRef or hmacSecretRef",
                    Reason::InvalidSpec,
                );
                JwtKeys::JwksUri(String::new())
            }
        };
        JwtConfig {
            issuer: jwt.issuer.clone(),
            audiences: jwt.audiences.clone(),
            keys,
            roles_claim: jwt.roles_claim.clone(),
            team_claim: jwt.team_claim.clone(),
            leeway_seconds: jwt.leeway_seconds,
        }
    });
    if jwt.is_none() && !spec.auth.api_keys.enabled {
        r.issue(
            &tenant_obj,
            "spec.auth",
            "set jwt, or enable apiKeys: a tenant needs at least one way to authenticate callers",
            Reason::InvalidSpec,
        );
    }
    let admin_roles = match &spec.auth.jwt {
        Some(jwt) => jwt.admin_roles.clone(),
        None => DEFAULT_ADMIN_ROLES.iter().map(|r| (*r).to_owned()).collect(),
    };
    let mut skipped = Vec::new();
    let declared_api_keys = declared_api_keys(input.api_keys, &namespace, spec.auth.api_keys.enabled, &mut skipped);
    let auth = AuthConfig {
        jwt,
        admin_roles,
        declared_api_keys,
        api_keys_enabled: spec.auth.api_keys.enabled,
        mcp: McpResourceConfig {
            resource: mcp_resource(tenant),
            scopes: spec.mcp.as_ref().map(|m| m.scopes.clone()).unwrap_or_default(),
        },
    };
    if let Some(problem) = auth.mcp.resource.as_deref().and_then(resource_problem) {
        let field = if spec.mcp.as_ref().is_some_and(|m| m.resource.is_some()) {
            "spec.mcp.resource"
        } else {
            "spec.exposure.host"
        };
        r.issue(&tenant_obj, field, &problem, Reason::InvalidSpec);
    }
    for (i, scope) in auth.mcp.scopes.iter().enumerate() {
        if !is_scope_token(scope) {
            r.issue(
                &tenant_obj,
                &format!("spec.mcp.scopes[{i}]"),
                &format!(
                    "{scope:?} is not an OAuth scope token: printable ASCII without spaces, quotes or backslashes"
                ),
                Reason::InvalidSpec,
            );
        }
    }

    let mut provider_names = BTreeSet::new();
    let mut providers = Vec::with_capacity(spec.providers.len());
    for (i, p) in spec.providers.iter().enumerate() {
        if !provider_names.insert(p.name.as_str()) {
            r.issue(
                &tenant_obj,
                &format!("spec.providers[{i}].name"),
                &format!("duplicate provider name {:?}", p.name),
                Reason::InvalidSpec,
            );
        }
        if let Some(url) = &p.base_url {
            r.check_upstream_url(
                &tenant_obj,
                &format!("spec.providers[{i}].baseUrl"),
                url,
                spec.network.allow_local_upstreams,
            );
        }
        let token_urls = [
            (
                "azure.entraId.authorityHost",
                p.azure.as_ref().and_then(|a| a.entra_id.as_ref()?.authority_host.as_ref()),
            ),
            (
                "vertex.workloadIdentity.stsUrl",
                p.vertex.as_ref().and_then(|v| v.workload_identity.as_ref()?.sts_url.as_ref()),
            ),
            (
                "vertex.workloadIdentity.iamCredentialsUrl",
                p.vertex.as_ref().and_then(|v| v.workload_identity.as_ref()?.iam_credentials_url.as_ref()),
            ),
            ("bedrock.webIdentity.stsUrl", p.bedrock.as_ref().and_then(|b| b.web_identity.as_ref()?.sts_url.as_ref())),
        ];
        for (field, url) in token_urls.into_iter().filter_map(|(f, u)| Some((f, u?))) {
            r.check_upstream_url(
                &tenant_obj,
                &format!("spec.providers[{i}].{field}"),
                url,
                spec.network.allow_local_upstreams,
            );
        }
        for (name, value) in &p.headers {
            if let Some(problem) = header_problem(name, value) {
                r.issue(&tenant_obj, &format!("spec.providers[{i}].headers.{name}"), problem, Reason::InvalidSpec);
            }
        }
        let vertex = p.vertex.as_ref();
        let bedrock = p.bedrock.as_ref().map(|b| bedrock_config(&mut r, b));
        let base_url = match (&p.base_url, &p.bedrock) {
            (Some(url), _) => Some(url.trim_end_matches('/').to_string()),
            (None, Some(b)) => Some(format!("https://bedrock-runtime.{}.amazonaws.com", b.region)),
            (None, None) => None,
        };
        providers.push(ProviderConfig {
            name: p.name.clone(),
            type_: p.type_,
            base_url,
            api_key_file: p.api_key_secret_ref.as_ref().map(|s| r.secret_file(s)),
            headers: p.headers.clone(),
            mock: p.mock.clone(),
            azure: p.azure.as_ref().map(|a| r.azure(a)),
            service_account_key_file: vertex
                .and_then(|v| v.service_account_key_secret_ref.as_ref())
                .map(|s| r.secret_file(s)),
            google_workload_identity: vertex
                .and_then(|v| v.workload_identity.as_ref())
                .map(|w| r.google_workload_identity(w)),
            bedrock,
        });
    }
    let mut model_names = BTreeSet::new();
    for (i, m) in spec.models.iter().enumerate() {
        if !model_names.insert(m.name.as_str()) {
            r.issue(
                &tenant_obj,
                &format!("spec.models[{i}].name"),
                &format!("duplicate model name {:?}", m.name),
                Reason::InvalidSpec,
            );
        }
        for (j, t) in m.targets.iter().enumerate() {
            if !provider_names.contains(t.provider.as_str()) {
                r.issue(
                    &tenant_obj,
                    &format!("spec.models[{i}].targets[{j}].provider"),
                    &format!("provider {:?} is not declared in spec.providers", t.provider),
                    Reason::InvalidSpec,
                );
            }
        }
    }
    let provider_type = |name: &str| spec.providers.iter().find(|p| p.name == name).map(|p| p.type_);
    let targets = spec.models.iter().enumerate().flat_map(|(i, m)| {
        m.targets.iter().enumerate().filter_map(move |(j, t)| {
            Some(TargetRef {
                provider: &t.provider,
                provider_type: provider_type(&t.provider)?,
                model: &t.model,
                price: t.price.as_ref(),
                field: format!("spec.models[{i}].targets[{j}].price"),
            })
        })
    });
    let prices = pricing::resolve(&spec.currency, targets, input.model_prices);
    for (field, problem) in &prices.invalid {
        r.issue(&tenant_obj, &format!("{field}.{}", problem.field), &problem.to_string(), Reason::InvalidSpec);
    }
    // The config carries each target's price once, resolved, in `pricing`.
    let mut models = spec.models.clone();
    for t in models.iter_mut().flat_map(|m| m.targets.iter_mut()) {
        t.price = None;
    }

    let storage = StorageConfig {
        redis_url_file: spec.storage.redis.as_ref().map(|s| r.secret_file(&s.url_secret_ref)),
        redis_ca_file: spec.storage.redis.as_ref().and_then(|s| s.ca_secret_ref.as_ref()).map(|c| r.secret_file(c)),
        database_ca_file: spec
            .storage
            .database
            .as_ref()
            .and_then(|s| s.ca_secret_ref.as_ref())
            .map(|c| r.secret_file(c)),
        database: match &spec.storage.database {
            Some(db) => DatabaseConfig::PostgresUrlFile(r.secret_file(&db.url_secret_ref)),
            None => DatabaseConfig::SqlitePath(options.sqlite_path.clone()),
        },
    };
    let keys = KeysConfig {
        token_encryption_key_file: r.generated_file(&SecretKeyRef::new(GATEWAY_KEYS_SECRET, TOKEN_ENCRYPTION_KEY)),
        api_key_pepper_file: r.generated_file(&SecretKeyRef::new(GATEWAY_KEYS_SECRET, API_KEY_PEPPER)),
    };

    let tracing = spec.observability.as_ref().and_then(|o| o.tracing.as_ref()).map(|t| TracingConfig {
        otlp_endpoint: t.otlp_endpoint.clone(),
        protocol: t.protocol,
        sample_ratio: t.sample_ratio,
        headers_file: t.headers_secret_ref.as_ref().map(|s| r.secret_file(s)),
    });
    if let Some(t) = &tracing {
        if let Err(problem) = tracing_endpoint_problem(&t.otlp_endpoint) {
            r.issue(&tenant_obj, "spec.observability.tracing.otlpEndpoint", &problem, Reason::InvalidSpec);
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            r.issue(
                &tenant_obj,
                "spec.observability.tracing.sampleRatio",
                "must be between 0 and 1",
                Reason::InvalidSpec,
            );
        }
    }

    let mut policies = Vec::new();
    for (origin, list) in [(PolicyOrigin::Global, input.global_policies), (PolicyOrigin::Tenant, input.tenant_policies)]
    {
        for policy in list {
            if let Some(p) = r.policy(policy, origin) {
                policies.push(p);
            }
        }
    }
    policies.sort_by(|a, b| (a.layer, a.priority, &a.id).cmp(&(b.layer, b.priority, &b.id)));

    if !r.issues.is_empty() {
        return Err(RenderError { issues: r.issues });
    }

    let mut connections: Vec<&McpConnection> = input.mcp_connections.iter().collect();
    connections.sort_by_key(|c| c.name_any());
    let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
    let mut mcp = Vec::new();
    for c in connections {
        let mut cr = Renderer::new(options);
        let config = cr.mcp_connection(c, &namespace, spec.network.allow_local_upstreams);
        if let Some(other) = prefixes.get(&config.prefix) {
            cr.issue(
                &ObjectRef::namespaced("McpConnection", &namespace, &c.name_any()),
                "spec.tools.prefix",
                &format!("prefix {:?} is already used by McpConnection {other}", config.prefix),
                Reason::PrefixConflict,
            );
        }
        if cr.issues.is_empty() {
            prefixes.insert(config.prefix.clone(), c.name_any());
            r.secret_refs.append(&mut cr.secret_refs);
            r.generated.append(&mut cr.generated);
            mcp.push(config);
        } else {
            skipped.append(&mut cr.issues);
        }
    }

    let config = GatewayConfig {
        version: CONFIG_VERSION,
        tenant: TenantIdentity {
            name: tenant.name_any(),
            display_name: spec.display_name.clone().unwrap_or_else(|| tenant.name_any()),
            namespace,
        },
        auth,
        providers,
        models,
        // With budgets the currency is named even when nothing is priced (every request is then refused).
        pricing: (!prices.pricing.targets.is_empty() || has_budget(spec.limits.as_ref())).then_some(prices.pricing),
        routing: spec.routing.clone(),
        limits: spec.limits.clone(),
        mcp,
        policies,
        storage,
        audit: spec.audit.clone(),
        network: NetworkConfig { allow_local_upstreams: spec.network.allow_local_upstreams },
        keys,
        tracing,
        config_hash: String::new(),
    }
    .seal();
    Ok(RenderedConfig {
        config,
        secret_refs: r.secret_refs,
        generated_secrets: r.generated,
        identity_token_audiences: r.identity_audiences,
        skipped,
        unpriced_targets: prices.unpriced,
    })
}

/// The declared API keys of the config, by name; a key that cannot be used is left
/// out and reported in `skipped` (one bad ApiKey never stalls the tenant).
fn declared_api_keys(
    keys: &[IssuedApiKey],
    namespace: &str,
    enabled: bool,
    skipped: &mut Vec<ConfigIssue>,
) -> Vec<DeclaredApiKey> {
    let mut out = Vec::new();
    for issued in keys {
        let k = &issued.key;
        let object = ObjectRef::namespaced("ApiKey", namespace, &k.name_any());
        let mut refuse = |field: &str, message: String, reason: Reason| {
            skipped.push(ConfigIssue::new(reason, message).on(object.clone()).at(field));
        };
        if !enabled {
            refuse(
                "spec",
                "the tenant does not accept API keys: its spec.auth.apiKeys.enabled is false".into(),
                Reason::ApiKeysDisabled,
            );
            continue;
        }
        let declared = DeclaredApiKey {
            name: k.name_any(),
            prefix: issued.prefix.clone(),
            hash: issued.hash.clone(),
            subject: k.subject(),
            roles: k.spec.roles.clone(),
            allowed_models: k.spec.allowed_models.clone(),
            expires_at: k.spec.expires_at.clone(),
            ip_allow_list: k.spec.ip_allow_list.clone(),
            team: k.spec.team.clone(),
            budget: k.spec.budget.clone(),
        };
        let problems = [
            declared.expires_at_ms().err().map(|e| ("spec.expiresAt", e)),
            declared.networks().err().map(|e| ("spec.ipAllowList", e)),
            declared.budget.as_ref().and_then(|b| crate::pricing::check_budget(b).err()).map(|e| ("spec.budget", e)),
        ];
        let mut usable = true;
        for (field, e) in problems.into_iter().flatten() {
            refuse(field, e, Reason::InvalidValue);
            usable = false;
        }
        if usable {
            out.push(declared);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Why an OTLP endpoint cannot be used: not an http(s) URL with a host, or
/// carrying credentials (those belong in `headersSecretRef`, not the ConfigMap).
fn tracing_endpoint_problem(endpoint: &str) -> Result<(), String> {
    let url = url::Url::parse(endpoint).map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{endpoint:?} must be an http:// or https:// URL with a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials: put them in headersSecretRef".into());
    }
    Ok(())
}

/// The audience of the service account token AWS STS accepts (as EKS projects it).
pub const AWS_TOKEN_AUDIENCE: &str = "sts.amazonaws.com";

/// A bedrock provider's region and credentials; `None` credentials with a Bedrock API key.
fn bedrock_config(r: &mut Renderer<'_>, b: &BedrockProvider) -> BedrockConfig {
    let credentials = match (&b.access_key_id_secret_ref, &b.secret_access_key_secret_ref, &b.web_identity) {
        (Some(id), Some(secret), _) => Some(AwsCredentialsConfig::AccessKey {
            access_key_id_file: r.secret_file(id),
            secret_access_key_file: r.secret_file(secret),
            session_token_file: b.session_token_secret_ref.as_ref().map(|t| r.secret_file(t)),
        }),
        (_, _, Some(w)) => Some(AwsCredentialsConfig::WebIdentity {
            role_arn: w.role_arn.clone(),
            sts_url: w.sts_url.clone().unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", b.region)),
            token_file: r.identity_token_file(AWS_TOKEN_AUDIENCE),
        }),
        _ => None,
    };
    BedrockConfig { region: b.region.clone(), credentials }
}

struct Renderer<'o> {
    options: &'o RenderOptions,
    secret_refs: BTreeSet<SecretKeyRef>,
    generated: BTreeSet<String>,
    identity_audiences: BTreeSet<String>,
    issues: Vec<ConfigIssue>,
}

impl<'o> Renderer<'o> {
    fn new(options: &'o RenderOptions) -> Self {
        Self {
            options,
            secret_refs: BTreeSet::new(),
            generated: BTreeSet::new(),
            identity_audiences: BTreeSet::new(),
            issues: Vec::new(),
        }
    }

    /// The file of the pod's projected service account token for `audience`.
    fn identity_token_file(&mut self, audience: &str) -> String {
        self.identity_audiences.insert(audience.to_owned());
        format!("{}/{}/token", self.options.identity_root, identity_token_slug(audience))
    }

    /// An Azure provider's settings, with its Entra ID credential as files.
    fn azure(&mut self, azure: &AzureProvider) -> AzureConfig {
        let entra_id = azure.entra_id.as_ref().map(|e| {
            let authority = e.authority_host.as_deref().unwrap_or(ENTRA_AUTHORITY_HOST).trim_end_matches('/');
            EntraIdConfig {
                token_url: format!("{authority}/{}/oauth2/v2.0/token", e.tenant_id),
                client_id: e.client_id.clone(),
                credential: match &e.client_secret_secret_ref {
                    Some(secret) => EntraCredential::ClientSecretFile(self.secret_file(secret)),
                    None => {
                        EntraCredential::ClientAssertionFile(self.identity_token_file(ENTRA_TOKEN_EXCHANGE_AUDIENCE))
                    }
                },
            }
        });
        AzureConfig { api_version: azure.api_version.clone(), entra_id }
    }

    /// A Vertex provider's workload identity federation. The projected token's
    /// audience is the pool provider's default allowed audience: `https:` and its name.
    fn google_workload_identity(&mut self, w: &VertexWorkloadIdentity) -> GoogleWorkloadIdentityConfig {
        GoogleWorkloadIdentityConfig {
            audience: w.audience.clone(),
            subject_token_file: self.identity_token_file(&format!("https:{}", w.audience)),
            service_account_email: w.service_account_email.clone(),
            sts_url: w.sts_url.clone().unwrap_or_else(|| GOOGLE_STS_URL.into()),
            iam_credentials_url: w
                .iam_credentials_url
                .as_deref()
                .unwrap_or(GOOGLE_IAM_CREDENTIALS_URL)
                .trim_end_matches('/')
                .to_owned(),
        }
    }

    /// The file of a Secret key the operator generates.
    fn generated_file(&mut self, secret: &SecretKeyRef) -> String {
        self.generated.insert(secret.name.clone());
        self.secret_file(secret)
    }

    fn issue(&mut self, object: &ObjectRef, field: &str, message: &str, reason: Reason) {
        self.issues.push(ConfigIssue::new(reason, message).on(object.clone()).at(field));
    }

    fn secret_file(&mut self, secret: &SecretKeyRef) -> String {
        self.secret_refs.insert(secret.clone());
        format!("{}/{}/{}", self.options.secrets_root, secret.name, secret.key)
    }

    fn check_upstream_url(&mut self, object: &ObjectRef, field: &str, url: &str, allow_local: bool) {
        match crate::address::classify_url(url) {
            Err(e) => self.issue(object, field, &e.to_string(), Reason::InvalidUrl),
            Ok(crate::address::HostClass::Local(why)) if !allow_local => self.issue(
                object,
                field,
                &format!(
                    "{url} points at a {why} address; set spec.network.allowLocalUpstreams on the Tenant to allow it"
                ),
                Reason::LocalUpstreamRefused,
            ),
            Ok(_) => {}
        }
    }

    fn mcp_connection(&mut self, c: &McpConnection, namespace: &str, allow_local: bool) -> McpConnectionConfig {
        let spec = &c.spec;
        let name = c.name_any();
        let obj = ObjectRef::namespaced("McpConnection", namespace, &name);
        if let Some(url) = &spec.url {
            self.check_upstream_url(&obj, "spec.url", url, allow_local);
        }
        let (transport, url, stdio) = match (spec.transport, self.options.mode) {
            (McpTransport::StreamableHttp, _) => (McpEndpointTransport::StreamableHttp, spec.url.clone(), None),
            (McpTransport::Sse, _) => (McpEndpointTransport::Sse, spec.url.clone(), None),
            (McpTransport::Stdio, RenderMode::Cluster) => {
                if spec.stdio.as_ref().is_none_or(|s| s.image.is_none()) {
                    self.issue(
                        &obj,
                        "spec.stdio.image",
                        "a stdio connection needs an image to run in a cluster",
                        Reason::MissingImage,
                    );
                }
                (McpEndpointTransport::StreamableHttp, Some(stdio_bridge_url(&name, namespace)), None)
            }
            (McpTransport::Stdio, RenderMode::Local) => {
                let process = spec.stdio.as_ref().map(|s| {
                    let mut parts = s.command.iter().chain(&s.args).cloned();
                    let command = parts.next().unwrap_or_default();
                    StdioProcess {
                        command,
                        args: parts.collect(),
                        env: s
                            .env
                            .iter()
                            .map(|e| EnvValue {
                                name: e.name.clone(),
                                value: e.value.clone(),
                                file: e.secret_key_ref.as_ref().map(|r| self.secret_file(r)),
                            })
                            .collect(),
                    }
                });
                if process.is_none() {
                    self.issue(&obj, "spec.stdio", "stdio is required when transport is stdio", Reason::InvalidSpec);
                }
                (McpEndpointTransport::Stdio, None, process)
            }
        };
        let resource = || spec.url.clone().unwrap_or_else(|| stdio_bridge_url(&name, namespace));
        let bridged = spec.transport == McpTransport::Stdio && self.options.mode == RenderMode::Cluster;
        if bridged && spec.auth.is_some() {
            self.issue(
                &obj,
                "spec.auth",
                "a stdio connection's bridge is reached with a token the operator generates; remove spec.auth",
                Reason::InvalidSpec,
            );
        }
        let auth = if bridged {
            Some(McpAuthConfig::Bearer { token_file: self.generated_file(&stdio_bridge_token(&name)) })
        } else {
            self.mcp_auth(&obj, spec, resource)
        };
        for (i, rule) in spec.tools.access.iter().enumerate() {
            if rule.roles.is_empty() && rule.subjects.is_empty() {
                self.issue(
                    &obj,
                    &format!("spec.tools.access[{i}]"),
                    "name at least one role or subject: a rule that grants nobody would hide its tools from everyone",
                    Reason::InvalidSpec,
                );
            }
            if rule.tools.is_empty() || rule.tools.iter().any(String::is_empty) {
                self.issue(
                    &obj,
                    &format!("spec.tools.access[{i}].tools"),
                    "name at least one tool glob, none of them empty",
                    Reason::InvalidSpec,
                );
            }
        }
        McpConnectionConfig {
            prefix: spec.tools.prefix.clone().unwrap_or_else(|| name.clone()),
            name,
            transport,
            url,
            stdio,
            auth,
            tools: spec.tools.clone(),
            timeout_seconds: spec.timeout_seconds,
        }
    }

    /// The credentials of an HTTP McpConnection, with its Secrets as files.
    fn mcp_auth(
        &mut self,
        obj: &ObjectRef,
        spec: &crate::v1alpha1::McpConnectionSpec,
        resource: impl Fn() -> String,
    ) -> Option<McpAuthConfig> {
        spec.auth.as_ref().and_then(|a| {
            match (&a.bearer_secret_ref, &a.oauth2_client_credentials, &a.oauth2_authorization_code) {
                (Some(s), None, None) => Some(McpAuthConfig::Bearer { token_file: self.secret_file(s) }),
                (None, Some(cc), None) => Some(McpAuthConfig::Oauth2ClientCredentials {
                    token_url: cc.token_url.clone(),
                    client_id: cc.client_id.clone(),
                    client_secret_file: self.secret_file(&cc.client_secret_ref),
                    scopes: cc.scopes.clone(),
                    resource: cc.resource.clone().unwrap_or_else(resource),
                }),
                (None, None, Some(ac)) => Some(McpAuthConfig::Oauth2AuthorizationCode {
                    authorization_url: ac.authorization_url.clone(),
                    token_url: ac.token_url.clone(),
                    client_id: ac.client_id.clone(),
                    client_secret_file: ac.client_secret_ref.as_ref().map(|s| self.secret_file(s)),
                    scopes: ac.scopes.clone(),
                    resource: ac.resource.clone().unwrap_or_else(resource),
                }),
                _ => {
                    self.issue(
                        obj,
                        "spec.auth",
                        "set exactly one of bearerSecretRef, oauth2ClientCredentials or oauth2AuthorizationCode",
                        Reason::InvalidSpec,
                    );
                    None
                }
            }
        })
    }

    fn policy(&mut self, policy: &PromptPolicy, origin: PolicyOrigin) -> Option<PolicyConfig> {
        let spec = &policy.spec;
        let id = format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any());
        let obj = ObjectRef::namespaced("PromptPolicy", &policy.namespace().unwrap_or_default(), &policy.name_any());
        let before = self.issues.len();
        if let Some(prompt) = &spec.system_prompt {
            if prompt.locked && origin != PolicyOrigin::Global {
                self.issue(
                    &obj,
                    "spec.systemPrompt.locked",
                    "only global policies (in the operator's namespace) can lock their prompt",
                    Reason::LockedOutsideGlobal,
                );
            }
            if let Err(e) = crate::template::check(&prompt.template) {
                self.issue(&obj, "spec.systemPrompt.template", &e.to_string(), Reason::InvalidTemplate);
            }
        }
        if let Some(guards) = &spec.guards {
            for (i, pattern) in guards.deny_patterns.iter().enumerate() {
                if let Err(e) = regex::Regex::new(pattern) {
                    self.issue(
                        &obj,
                        &format!("spec.guards.denyPatterns[{i}]"),
                        &format!("invalid regular expression: {e}"),
                        Reason::InvalidPattern,
                    );
                }
            }
        }
        if self.issues.len() > before {
            return None;
        }
        let user_level = !spec.match_.roles.is_empty() || !spec.match_.subjects.is_empty();
        let layer = match (user_level, origin) {
            (true, _) => PolicyLayer::User,
            (false, PolicyOrigin::Global) => PolicyLayer::Global,
            (false, PolicyOrigin::Tenant) => PolicyLayer::Tenant,
        };
        Some(PolicyConfig {
            id,
            origin,
            layer,
            priority: spec.priority,
            match_: spec.match_.clone(),
            system_prompt: spec.system_prompt.clone(),
            guards: spec.guards.clone(),
            allowed_models: spec.allowed_models.clone(),
        })
    }
}

/// Whether `limits` set a budget.
fn has_budget(limits: Option<&crate::v1alpha1::Limits>) -> bool {
    limits.is_some_and(|l| l.budget.is_some() || l.per_user.as_ref().is_some_and(|u| u.budget.is_some()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn provider_headers_must_be_sendable() {
        assert_eq!(super::header_problem("anthropic-beta", "tools-2024-04-04"), None);
        assert_eq!(super::header_problem("X-Team", "a\tb"), None);
        assert!(super::header_problem("X-Team", "a\r\nX-Injected: 1").is_some());
        assert!(super::header_problem("X Team", "a").is_some());
        assert!(super::header_problem("", "a").is_some());
    }
}
