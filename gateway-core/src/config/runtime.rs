//! A GatewayConfig compiled into what requests use: model routes with their
//! providers and breakers, the JWT verifier and the `/v1/models` body.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tenantgate_crds::config::{GatewayConfig, JwtKeys, TracingConfig};
use tenantgate_crds::issue::{ConfigIssue, Reason};
use tenantgate_crds::pricing::Amounts;
use tenantgate_crds::v1alpha1::{ModelType, ProviderType};

use crate::auth::{DeclaredKeys, JwtVerifier, KeySource};
use crate::limits::{LimitStores, RateLimiter};
use crate::llm::access_token::{AccessTokens, Grant};
use crate::llm::aws_auth::AwsAuth;
use crate::llm::azure::AzureOpenAi;
use crate::llm::bedrock::Bedrock;
use crate::llm::entra::EntraId;
use crate::llm::gemini::Gemini;
use crate::llm::google_auth::ServiceAccountKey;
use crate::llm::google_federation::WorkloadIdentity;
use crate::llm::{Endpoint, EndpointError, Provider, Wire, anthropic::Anthropic, mock::Mock, openai::OpenAi};
use crate::policy::Policies;
use crate::routing::{Breaker, ModelRoute, RetryPolicy, Target};
use crate::storage::Price;
use crate::traces::{SharedTraces, Traces, TracesError};

/// Every budget of `config`, with where it is.
fn budgets_of(config: &GatewayConfig) -> Vec<(String, &tenantgate_crds::v1alpha1::Budget)> {
    let mut out = Vec::new();
    if let Some(limits) = &config.limits {
        out.extend(limits.budget.iter().map(|b| ("limits.budget".to_owned(), b)));
        out.extend(limits.per_user.iter().flat_map(|u| &u.budget).map(|b| ("limits.perUser.budget".to_owned(), b)));
        if let Some(team) = &limits.per_team {
            out.extend(team.budget.iter().map(|b| ("limits.perTeam.budget".to_owned(), b)));
            for (i, t) in team.teams.iter().enumerate() {
                out.push((format!("limits.perTeam.teams[{i}].budget"), &t.budget));
            }
        }
    }
    for (i, k) in config.auth.declared_api_keys.iter().enumerate() {
        out.extend(k.budget.iter().map(|b| (format!("auth.declaredApiKeys[{i}].budget"), b)));
    }
    out
}

/// The config in force, compiled.
#[derive(Debug)]
pub struct Runtime {
    /// The config it was compiled from.
    pub config: GatewayConfig,
    /// JWT verification; `None` when the tenant accepts API keys only.
    pub auth: Option<JwtVerifier>,
    /// The API keys declared as ApiKey objects, by hash.
    pub declared_keys: DeclaredKeys,
    /// Tenant model name -> route.
    pub models: HashMap<String, ModelRoute>,
    /// Retries and timeouts.
    pub retry: RetryPolicy,
    /// Prebuilt `GET /v1/models` body.
    pub models_body: Bytes,
    /// Rate limits and quotas.
    pub limiter: RateLimiter,
    /// Prompt policies, compiled.
    pub policies: Policies,
    /// The trace pipeline, when the tenant exports traces.
    pub traces: Option<SharedTraces>,
}

impl Runtime {
    /// The prefix of the roles that name a caller's team (`limits.perTeam.rolePrefix`).
    pub fn team_role_prefix(&self) -> Option<&str> {
        self.config.limits.as_ref()?.per_team.as_ref()?.role_prefix.as_deref()
    }
}

/// What outlives one config: breakers keep their state across reloads, and
/// unchanged key sources keep their cached keys, and the limit store (the
/// Redis connection, or the in-process limit state) stays while its URL does.
#[derive(Debug)]
pub struct Carried {
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    keys: Mutex<Option<(JwtKeys, Arc<KeySource>)>>,
    jwks_min_refresh: Duration,
    limits: LimitStores,
    mcp: crate::mcp::McpHub,
    traces: Mutex<Option<(TracingConfig, SharedTraces)>>,
}

impl Carried {
    /// Empty state around the tenant's MCP hub; JWKS refreshes at most every
    /// `jwks_min_refresh`.
    pub fn new(jwks_min_refresh: Duration, mcp: crate::mcp::McpHub) -> Self {
        Self {
            breakers: Mutex::new(HashMap::new()),
            keys: Mutex::new(None),
            jwks_min_refresh,
            limits: LimitStores::default(),
            mcp,
            traces: Mutex::new(None),
        }
    }

    /// The trace pipeline of `config`: the one in use while its settings stay, else a new one
    /// (put in use by [`Self::keep_traces`] once the whole config compiled).
    fn traces(&self, config: Option<&TracingConfig>, tenant: &str) -> Result<Option<SharedTraces>, TracesError> {
        let Some(config) = config else { return Ok(None) };
        let current = self.traces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((c, traces)) = current.as_ref()
            && c == config
        {
            return Ok(Some(traces.clone()));
        }
        Ok(Some(Arc::new(Traces::new(config, tenant)?)))
    }

    /// Puts `traces` in use and flushes and stops the pipeline it replaces (in
    /// the background: a flush waits on the collector).
    fn keep_traces(&self, config: Option<&TracingConfig>, traces: Option<&SharedTraces>) {
        let mut current = self.traces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = config.cloned().zip(traces.cloned());
        let unchanged = match (current.as_ref(), next.as_ref()) {
            (Some((_, old)), Some((_, new))) => Arc::ptr_eq(old, new),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        if let Some((_, old)) = std::mem::replace(&mut *current, next) {
            tokio::task::spawn_blocking(move || old.shutdown());
        }
    }

    /// Flushes and stops the trace pipeline in use (at exit; blocking).
    pub fn shutdown_traces(&self) {
        let current = self.traces.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((_, traces)) = current {
            traces.shutdown();
        }
    }

    /// The tenant's MCP connections, kept across reloads.
    pub fn mcp(&self) -> &crate::mcp::McpHub {
        &self.mcp
    }

    fn breaker(&self, label: &Arc<str>, threshold: u32, open_for: Duration) -> Arc<Breaker> {
        let mut breakers = self.breakers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = breakers
            .entry(label.to_string())
            .or_insert_with(|| Arc::new(Breaker::new(label.clone(), threshold, open_for)));
        b.configure(threshold, open_for);
        b.clone()
    }

    fn key_source(&self, keys: &JwtKeys, client: &reqwest::Client) -> (Arc<KeySource>, bool) {
        let mut current = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((k, source)) = current.as_ref()
            && k == keys
            && source.is_loaded()
        {
            return (source.clone(), false);
        }
        let source = Arc::new(match keys {
            JwtKeys::JwksUri(url) => KeySource::uri(url.clone(), client.clone(), self.jwks_min_refresh),
            JwtKeys::JwksFile(path) => KeySource::jwks_file(PathBuf::from(path), self.jwks_min_refresh),
            JwtKeys::HmacSecretFile(path) => KeySource::hmac_file(PathBuf::from(path), self.jwks_min_refresh),
        });
        *current = Some((keys.clone(), source.clone()));
        (source, true)
    }
}

/// Compiles a config. Errors name what is wrong; the caller keeps the old runtime.
pub async fn compile(config: GatewayConfig, carried: &Carried) -> Result<Runtime, ConfigIssue> {
    let routing = &config.routing;
    crate::egress::check_config(&config)?;
    let local = crate::egress::LocalUpstreams::default();
    local.set(config.network.allow_local_upstreams);
    // Redirects are not followed: a provider answering a chat completion with
    // one is an error to report, and a JWKS URI must answer itself (following
    // them cost a tower layer on every call).
    let settings = crate::egress::ClientSettings {
        connect_timeout: Duration::from_millis(u64::from(routing.connect_timeout_ms)),
        follow_redirects: false,
        max_idle_per_host: 256,
    };
    let client =
        crate::egress::client(&local, settings).map_err(|e| ConfigIssue::new(Reason::Internal, e.to_string()))?;
    // The providers' requests go through hyper-util's client; token endpoints and the JWKS through reqwest.
    let http = crate::egress::HttpClient::new(&local, settings);

    let auth = match &config.auth.jwt {
        Some(jwt) => {
            let (keys, fresh) = carried.key_source(&jwt.keys, &client);
            if fresh {
                match (&jwt.keys, keys.load().await) {
                    (_, Ok(())) => {}
                    // The identity provider may be down: start without keys, refresh on demand, readiness says so.
                    (JwtKeys::JwksUri(url), Err(e)) => tracing::warn!(%url, error = %e, "JWKS not loaded yet"),
                    (_, Err(e)) => {
                        return Err(ConfigIssue::new(Reason::InvalidKeys, e.to_string()).at("auth.jwt.keys"));
                    }
                }
            }
            let verifier = JwtVerifier::new(jwt, &config.auth.admin_roles, keys);
            Some(verifier.with_mcp_resource(config.auth.mcp.resource.clone()))
        }
        None => None,
    };
    let declared_keys = DeclaredKeys::compile(&config.auth)?;

    let mut providers: HashMap<&str, Arc<Provider>> = HashMap::new();
    for (i, p) in config.providers.iter().enumerate() {
        let endpoint = |wire: &Wire| {
            let base_url = p.base_url.as_deref().ok_or_else(|| {
                ConfigIssue::new(Reason::InvalidSpec, format!("required for {:?}", p.type_))
                    .at(format!("providers[{i}].baseUrl"))
            })?;
            Endpoint::new(wire, base_url, p.api_key_file.as_deref(), &p.headers, http.clone()).map_err(|e| {
                let reason =
                    if matches!(e, EndpointError::BaseUrl { .. }) { Reason::InvalidUrl } else { Reason::InvalidHeader };
                ConfigIssue::new(reason, e.to_string()).at(format!("providers[{i}].{}", e.field()))
            })
        };
        let provider = match p.type_ {
            ProviderType::Openai => {
                Provider::OpenAi(OpenAi::new(endpoint(&OpenAi::WIRE)?, endpoint(&OpenAi::EMBEDDINGS_WIRE)?))
            }
            ProviderType::Anthropic => Provider::Anthropic(Anthropic::new(endpoint(&Anthropic::WIRE)?)),
            ProviderType::Gemini => Provider::Gemini(Gemini::new(endpoint(&Gemini::WIRE)?)),
            ProviderType::Vertex => {
                let grant = match (&p.service_account_key_file, &p.google_workload_identity) {
                    (Some(key_file), None) => Grant::GoogleServiceAccount(ServiceAccountKey::new(key_file)),
                    (None, Some(federation)) => Grant::GoogleWorkloadIdentity(WorkloadIdentity::new(federation)),
                    _ => {
                        let message = "set exactly one of serviceAccountKeySecretRef or workloadIdentity";
                        return Err(ConfigIssue::new(Reason::InvalidSpec, message).at(format!("providers[{i}].vertex")));
                    }
                };
                let tokens = AccessTokens::new(grant, client.clone());
                Provider::Vertex(Gemini::new(endpoint(&Gemini::VERTEX_WIRE)?.with_access_tokens(tokens)))
            }
            ProviderType::Bedrock => {
                let bedrock = p.bedrock.as_ref().ok_or_else(|| {
                    ConfigIssue::new(Reason::InvalidSpec, "required for bedrock").at(format!("providers[{i}].bedrock"))
                })?;
                let mut endpoint = endpoint(&Bedrock::WIRE)?;
                // Without credentials, a Bedrock API key is sent as a bearer token.
                if let Some(credentials) = &bedrock.credentials {
                    endpoint = endpoint.with_aws_auth(AwsAuth::from_config(&bedrock.region, credentials, &client));
                }
                Provider::Bedrock(Bedrock::new(endpoint))
            }
            ProviderType::AzureOpenai => {
                let version = p.azure.as_ref().and_then(|a| a.api_version.clone());
                let mut endpoint = endpoint(&AzureOpenAi::WIRE)?;
                if let Some(entra) = p.azure.as_ref().and_then(|a| a.entra_id.as_ref()) {
                    let tokens = AccessTokens::new(Grant::EntraId(EntraId::new(entra)), client.clone());
                    endpoint = endpoint.with_access_tokens(tokens);
                }
                Provider::Azure(AzureOpenAi::new(endpoint, version))
            }
            ProviderType::Mock => Provider::Mock(Mock::new(p.mock.as_ref())),
        };
        providers.insert(p.name.as_str(), Arc::new(provider));
    }

    let breaker = &routing.circuit_breaker;
    let open_for = Duration::from_secs(u64::from(breaker.open_seconds));
    for (at, budget) in budgets_of(&config) {
        tenantgate_crds::pricing::check_budget(budget).map_err(|e| ConfigIssue::new(Reason::InvalidSpec, e).at(at))?;
    }
    for (i, c) in config.mcp.iter().enumerate() {
        if let Some(price) = &c.tools.price_per_call {
            tenantgate_crds::pricing::per_call_nanos(price).map_err(|e| {
                ConfigIssue::new(Reason::InvalidSpec, e.to_string()).at(format!("mcp[{i}].tools.pricePerCall"))
            })?;
        }
    }
    let mut prices = HashMap::new();
    for (i, t) in config.pricing.iter().flat_map(|p| p.targets.iter()).enumerate() {
        let amounts = Amounts::of_target(t).map_err(|e| {
            ConfigIssue::new(Reason::InvalidSpec, e.to_string()).at(format!("pricing.targets[{i}].{}", e.field))
        })?;
        prices.insert((t.provider.as_str(), t.model.as_str()), Price::new(&amounts, &t.version));
    }
    let mut models = HashMap::with_capacity(config.models.len());
    for (i, m) in config.models.iter().enumerate() {
        let mut targets = Vec::with_capacity(m.targets.len());
        for (j, t) in m.targets.iter().enumerate() {
            let provider = providers.get(t.provider.as_str()).ok_or_else(|| {
                ConfigIssue::new(Reason::InvalidSpec, format!("unknown provider {:?}", t.provider))
                    .at(format!("models[{i}].targets[{j}].provider"))
            })?;
            if m.type_ == ModelType::Embedding && !provider.embeds() {
                let message = format!("provider {:?} ({}) has no embeddings API", t.provider, provider.kind());
                return Err(
                    ConfigIssue::new(Reason::InvalidSpec, message).at(format!("models[{i}].targets[{j}].provider"))
                );
            }
            let label: Arc<str> = format!("{}/{}", t.provider, t.model).into();
            targets.push(Target {
                provider: provider.clone(),
                model: t.model.as_str().into(),
                breaker: carried.breaker(&label, breaker.failure_threshold, open_for),
                label,
                price: prices.get(&(t.provider.as_str(), t.model.as_str())).cloned(),
            });
        }
        let worst = tenantgate_crds::pricing::Rates::worst(targets.iter().map(|t| t.price.as_ref().map(|p| &p.rates)));
        models.insert(m.name.clone(), ModelRoute { name: m.name.as_str().into(), type_: m.type_, targets, worst });
    }

    let data: Vec<_> = config
        .models
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": config.tenant.name}))
        .collect();
    let models_body = Bytes::from(json!({"object": "list", "data": data}).to_string());
    let retry = RetryPolicy::from(routing);
    let limiter =
        carried.limits.limiter(&config).await.map_err(|e| ConfigIssue::new(Reason::Unavailable, e.to_string()))?;
    let policies = Policies::compile(&config)?;
    let traces = carried
        .traces(config.tracing.as_ref(), &config.tenant.name)
        .map_err(|e| ConfigIssue::new(Reason::InvalidSpec, e.to_string()).at("tracing"))?;
    // Last, once nothing can fail: connections are (re)made in the background.
    carried.mcp.allow_local_upstreams(config.network.allow_local_upstreams);
    carried.mcp.reconcile(&config.mcp);
    carried.keep_traces(config.tracing.as_ref(), traces.as_ref());
    Ok(Runtime { config, auth, declared_keys, models, retry, models_body, limiter, policies, traces })
}
