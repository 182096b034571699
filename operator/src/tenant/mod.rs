//! The Tenant controller: `dereference → validate → build → apply → status`.

pub mod api_keys;
pub mod apply;
pub mod build;
pub mod dereference;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tenantgate_crds::issue::ConfigIssue;
use tenantgate_crds::render::{RenderInput, RenderOptions, RenderedConfig, render};
use tenantgate_crds::v1alpha1::{McpConnection, PromptPolicy, Tenant, TenantStatus, conditions};

use crate::context::Context;
use crate::labels::FIELD_MANAGER;
use crate::metrics::{ErrorLabels, ReconcileLabels};
use build::{BuildInput, build, endpoint};
use dereference::{Dependencies, dereference};
use status::{condition, gateway_available, same_conditions};

/// Why a reconcile failed; each maps to a condition reason and a metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The desired objects could not be built (a bug).
    #[error(transparent)]
    Build(#[from] build::BuildError),
    /// The API server refused or failed a write.
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    /// Writing status failed.
    #[error("writing status of {object}: {source}")]
    Status {
        /// The object.
        object: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Build(_) => "BuildFailed",
            Error::Apply(e) if e.is_refusal() => "ApplyRefused",
            Error::Apply(_) => "ApplyFailed",
            Error::Status { .. } => "StatusFailed",
        }
    }
}

/// How often a converged tenant is looked at again (it costs no write).
const RESYNC: Duration = Duration::from_secs(600);

/// Reconciles one Tenant.
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&tenant, &ctx).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.get_or_create(&ReconcileLabels { result: outcome }).inc();
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&ObjectRef::from_obj(&*tenant));
    }
    result
}

async fn reconcile_inner(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let name = tenant.name_any();
    if !matches!(tokio::time::timeout(Duration::from_secs(5), ctx.stores.wait_ready()).await, Ok(true)) {
        tracing::debug!(tenant = %name, "caches not synced yet; trying again shortly");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let deps = dereference(tenant, &ctx.stores, &ctx.settings.operator_namespace);
    if let Some(owner) = &deps.namespace_conflict {
        let message = format!(
            "namespace {} is claimed by {owner}; label it tenantgate.dev/tenant={name} or choose another spec.namespace",
            deps.namespace
        );
        warn(ctx, tenant, "NamespaceConflict", &message).await;
        write_status(ctx, tenant, &deps, None, Err(("NamespaceConflict", message))).await?;
        return Ok(Action::requeue(RESYNC));
    }
    let enabled = tenant.spec.auth.api_keys.enabled;
    // Keys are generated only for a tenant that accepts them.
    let issuance = if enabled {
        api_keys::issue(ctx, &name, &deps.namespace, &deps.api_keys).await
    } else {
        api_keys::Issuance::default()
    };
    let issued = &issuance.issued;
    let rendered = render(
        RenderInput {
            tenant,
            mcp_connections: &deps.mcp_connections,
            tenant_policies: &deps.tenant_policies,
            global_policies: &deps.global_policies,
            model_prices: &deps.model_prices,
            api_keys: issued,
        },
        &RenderOptions::default(),
    );
    let rendered = match rendered {
        Ok(r) => r,
        Err(e) => {
            warn(ctx, tenant, "RenderFailed", &e.to_string()).await;
            write_child_statuses(ctx, tenant, &deps, None, &e.issues).await?;
            api_keys::write_statuses(ctx, &name, &deps, enabled, &issuance, None).await?;
            write_status(ctx, tenant, &deps, None, Err(("InvalidConfig", e.to_string()))).await?;
            return Ok(Action::requeue(RESYNC));
        }
    };
    let referenced: BTreeMap<String, String> = rendered
        .secret_refs
        .iter()
        .filter_map(|r| deps.secret_versions.get(&r.name).map(|v| (r.name.clone(), v.clone())))
        .collect();
    let settings =
        build::BuildSettings { api_server: crate::api_server::current(&ctx.stores.api_server), ..ctx.settings.clone() };
    let stack = build(&BuildInput {
        tenant,
        rendered: &rendered,
        mcp_connections: &deps.mcp_connections,
        secret_versions: &referenced,
        generate_secrets: true,
        settings: &settings,
    })?;
    let applied = apply::apply_stack(ctx, &name, &deps.namespace, stack).await;
    let writes = match applied {
        Ok(writes) => writes,
        Err(e) => {
            let err = Error::from(e);
            write_status(ctx, tenant, &deps, Some(&rendered), Err((err.reason(), err.to_string()))).await?;
            return Err(err);
        }
    };
    if writes > 0 {
        ctx.metrics.objects_written.inc_by(u64::from(writes));
        tracing::info!(tenant = %name, writes, "applied the tenant's stack");
    }
    write_child_statuses(ctx, tenant, &deps, Some(&rendered), &rendered.skipped).await?;
    api_keys::write_statuses(ctx, &name, &deps, enabled, &issuance, Some(&rendered)).await?;
    write_status(ctx, tenant, &deps, Some(&rendered), Ok(())).await?;
    // A key whose Secret was created a moment ago and is not in the cache yet.
    Ok(Action::requeue(if issuance.waiting() { Duration::from_secs(2) } else { RESYNC }))
}

async fn warn(ctx: &Context, tenant: &Tenant, reason: &str, note: &str) {
    tracing::warn!(tenant = %tenant.name_any(), reason, "{note}");
    publish(ctx, &tenant.object_ref(&()), EventType::Warning, "Reconcile", reason, note).await;
}

/// Records an Event on `object`; a failure to record it is only logged.
pub(crate) async fn publish(
    ctx: &Context,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    action: &str,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, object).await {
        tracing::debug!(error = %e, "could not publish an event");
    }
}

/// Writes the Tenant's status when it differs from what is there.
async fn write_status(
    ctx: &Context,
    tenant: &Tenant,
    deps: &Dependencies,
    rendered: Option<&RenderedConfig>,
    reconciled: Result<(), (&str, String)>,
) -> Result<(), Error> {
    let generation = tenant.metadata.generation;
    let previous = tenant.status.clone().unwrap_or_default();
    let prev = &previous.conditions;
    let (available, avail_reason, avail_message) = gateway_available(deps.deployment.as_ref());
    let mut degraded: Vec<(&str, String)> = Vec::new();
    if let Some(r) = rendered {
        let missing: Vec<String> = r
            .secret_refs
            .iter()
            .filter(|s| !r.generated_secrets.contains(&s.name) && !deps.secret_versions.contains_key(&s.name))
            .map(|s| format!("{}/{}", s.name, s.key))
            .collect();
        if !missing.is_empty() {
            degraded.push(("MissingSecret", missing_secrets_message(ctx, &deps.namespace, &missing)));
        }
        let skipped: Vec<&ConfigIssue> =
            r.skipped.iter().filter(|i| i.object.as_ref().is_some_and(|o| o.kind == "McpConnection")).collect();
        if !skipped.is_empty() {
            let list: Vec<String> = skipped.iter().map(ToString::to_string).collect();
            degraded.push(("McpConnectionSkipped", list.join("; ")));
        }
        if tenant.spec.storage.database.is_none() && tenant.spec.storage.volume.is_none() {
            degraded.push((
                "StorageNotDurable",
                "no spec.storage.database or spec.storage.volume: API keys, usage and audit events live in SQLite \
                 inside the pod and are lost with it"
                    .into(),
            ));
        }
    }
    let missing_secret =
        degraded.iter().find(|(reason, _)| *reason == "MissingSecret").map(|(_, message)| message.clone());
    let conditions: Vec<Condition> = match &reconciled {
        Ok(()) => vec![
            condition(
                prev,
                conditions::RECONCILED,
                true,
                "Applied",
                "every object of the tenant's stack is applied",
                generation,
            ),
            condition(prev, conditions::GATEWAY_AVAILABLE, available, avail_reason, avail_message.clone(), generation),
            match degraded.first() {
                Some((reason, _)) => condition(
                    prev,
                    conditions::DEGRADED,
                    true,
                    reason,
                    degraded.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "),
                    generation,
                ),
                None => {
                    condition(prev, conditions::DEGRADED, false, "AsExpected", "nothing needs attention", generation)
                }
            },
            // A missing Secret is never Ready, even while pods started before it went
            // still answer: the next pod (a rollout, a reschedule) cannot mount it.
            match missing_secret {
                Some(message) => condition(prev, conditions::READY, false, "MissingSecret", message, generation),
                None if available => {
                    condition(prev, conditions::READY, true, "GatewayAvailable", avail_message, generation)
                }
                None => condition(prev, conditions::READY, false, avail_reason, avail_message, generation),
            },
        ],
        Err((reason, message)) => vec![
            condition(prev, conditions::RECONCILED, false, reason, message.clone(), generation),
            condition(prev, conditions::GATEWAY_AVAILABLE, available, avail_reason, avail_message, generation),
            condition(prev, conditions::DEGRADED, true, reason, message.clone(), generation),
            condition(prev, conditions::READY, false, reason, message.clone(), generation),
        ],
    };
    let status = TenantStatus {
        observed_generation: generation,
        namespace: Some(deps.namespace.clone()),
        endpoint: Some(endpoint(tenant)),
        mcp_connections: rendered.map_or(previous.mcp_connections, |r| r.config.mcp.len() as u32),
        prompt_policies: rendered.map_or(previous.prompt_policies, |r| r.config.policies.len() as u32),
        config_hash: rendered.map(|r| r.config.config_hash.clone()).or(previous.config_hash.clone()),
        unpriced_targets: rendered.map_or(previous.unpriced_targets.clone(), |r| r.unpriced_targets.clone()),
        // Only while the tenant has a budget: what a gateway published before it was removed goes.
        budget: deps.budget.clone().filter(|_| tenant.spec.limits.as_ref().is_some_and(|l| l.budget.is_some())),
        conditions,
    };
    let unchanged = TenantStatus { conditions: Vec::new(), ..status.clone() }
        == TenantStatus { conditions: Vec::new(), ..previous.clone() }
        && same_conditions(&status.conditions, &previous.conditions);
    if unchanged {
        return Ok(());
    }
    let patch = json!({ "apiVersion": Tenant::api_version(&()), "kind": Tenant::kind(&()), "status": status });
    Api::<Tenant>::all(ctx.client.clone())
        .patch_status(&tenant.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Status { object: format!("Tenant {}", tenant.name_any()), source })?;
    Ok(())
}

/// What a Degraded/Ready condition says of referenced Secrets the operator
/// does not see: absent, or (under `--secret-label-selector`) not labelled.
fn missing_secrets_message(ctx: &Context, namespace: &str, missing: &[String]) -> String {
    let labels = &ctx.settings.secret_watch_labels;
    if labels.is_empty() {
        format!("referenced Secret keys do not exist in {namespace}: {}", missing.join(", "))
    } else {
        let selector = crate::labels::selector_of(labels);
        let pairs = selector.replace(',', " ");
        format!(
            "referenced Secrets are not watched: they do not exist in {namespace} or lack the label {selector} (the operator watches only Secrets labelled {selector}; add it with kubectl label secret -n {namespace} NAME {pairs}): {}",
            missing.join(", ")
        )
    }
}

/// Writes Accepted/Ready on the tenant's McpConnections and PromptPolicies
/// (and the global policies), naming the tenant or why they were not used.
async fn write_child_statuses(
    ctx: &Context,
    tenant: &Tenant,
    deps: &Dependencies,
    rendered: Option<&RenderedConfig>,
    issues: &[ConfigIssue],
) -> Result<(), Error> {
    let name = tenant.name_any();
    let issue_for = |kind: &str, ns: &str, obj: &str| {
        issues.iter().find(|i| i.object.as_ref().is_some_and(|o| o.is(kind, Some(ns), obj)))
    };
    for c in &deps.mcp_connections {
        let issue = issue_for("McpConnection", &c.namespace().unwrap_or_default(), &c.name_any());
        let (accepted, reason, message) = outcome(issue, rendered, &name, ("Bound", format!("bound to Tenant {name}")));
        binding_status::<McpConnection>(ctx, c, &name, accepted, reason, &message).await?;
    }
    for p in deps.tenant_policies.iter() {
        let issue = issue_for("PromptPolicy", &p.namespace().unwrap_or_default(), &p.name_any());
        let (accepted, reason, message) =
            outcome(issue, rendered, &name, ("Applied", format!("applied to Tenant {name}")));
        binding_status::<PromptPolicy>(ctx, p, &name, accepted, reason, &message).await?;
    }
    for p in deps.global_policies.iter() {
        let ns = p.namespace().unwrap_or_default();
        if let Some(i) = issue_for("PromptPolicy", &ns, &p.name_any()) {
            binding_status::<PromptPolicy>(ctx, p, "*", false, i.reason.as_str(), &i.to_string()).await?;
        } else if rendered.is_some() {
            binding_status::<PromptPolicy>(ctx, p, "*", true, "Applied", "applied to every tenant").await?;
        }
    }
    Ok(())
}

/// Accepted or not, the reason and the message of one McpConnection or
/// PromptPolicy of `tenant`: its issue, else `bound` when the config rendered.
fn outcome<'a>(
    issue: Option<&'a ConfigIssue>,
    rendered: Option<&RenderedConfig>,
    tenant: &str,
    bound: (&'a str, String),
) -> (bool, &'a str, String) {
    match (issue, rendered) {
        (Some(i), _) => (false, i.reason.as_str(), i.to_string()),
        (None, Some(_)) => (true, bound.0, bound.1),
        (None, None) => {
            (false, "TenantConfigInvalid", format!("Tenant {tenant}'s config cannot be rendered; see its status"))
        }
    }
}

/// The status shape McpConnection and PromptPolicy share.
pub trait BindingStatus:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    /// Current tenant and conditions.
    fn binding(&self) -> (Option<String>, Vec<Condition>);
    /// Whether this kind has a Ready condition besides Accepted.
    const HAS_READY: bool;
}

impl BindingStatus for McpConnection {
    fn binding(&self) -> (Option<String>, Vec<Condition>) {
        self.status.as_ref().map(|s| (s.tenant.clone(), s.conditions.clone())).unwrap_or_default()
    }
    const HAS_READY: bool = true;
}

impl BindingStatus for PromptPolicy {
    fn binding(&self) -> (Option<String>, Vec<Condition>) {
        self.status.as_ref().map(|s| (s.tenant.clone(), s.conditions.clone())).unwrap_or_default()
    }
    const HAS_READY: bool = false;
}

/// Writes an object's binding status when it changed.
pub async fn binding_status<K: BindingStatus>(
    ctx: &Context,
    obj: &K,
    tenant: &str,
    accepted: bool,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let (prev_tenant, prev) = obj.binding();
    let generation = obj.meta().generation;
    let mut conds = vec![condition(&prev, conditions::ACCEPTED, accepted, reason, message, generation)];
    if K::HAS_READY {
        conds.push(condition(&prev, conditions::READY, accepted, reason, message, generation));
    }
    let observed = prev.first().and_then(|c| c.observed_generation);
    if prev_tenant.as_deref().unwrap_or_default() == tenant && same_conditions(&conds, &prev) && observed == generation
    {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "status": { "observedGeneration": generation, "tenant": (!tenant.is_empty()).then_some(tenant), "conditions": conds },
    });
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Status { object: format!("{} {ns}/{name}", K::kind(&())), source })?;
    Ok(())
}

/// Requeue after a failure: exponential from 1 s to 5 min per tenant.
pub fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.get_or_create(&ErrorLabels { reason: error.reason() }).inc();
    tracing::warn!(tenant = %tenant.name_any(), reason = error.reason(), error = %error, "reconcile failed");
    let attempt = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(ObjectRef::from_obj(&*tenant)).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let delays = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_factor(2.0)
        .without_max_times();
    let delay = delays.build().nth(attempt.min(8).saturating_sub(1) as usize).unwrap_or(Duration::from_secs(300));
    Action::requeue(delay)
}
