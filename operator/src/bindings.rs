//! McpConnections and PromptPolicies in a namespace that belongs to no
//! tenant get a status saying so (the Tenant controller writes the status of
//! those it binds); ModelPrices get their price version.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tenantgate_crds::pricing::Amounts;
use tenantgate_crds::render::tenant_namespace;
use tenantgate_crds::v1alpha1::{ModelPrice, ModelPriceStatus};

use crate::context::Context;
use crate::labels::FIELD_MANAGER;
use crate::tenant::{BindingStatus, binding_status};

/// Every few seconds, marks objects in namespaces without a tenant as unbound
/// and writes each ModelPrice's version (only what changed: no write when nothing did).
pub async fn sweep_unbound(ctx: Arc<Context>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let tenant_namespaces: BTreeSet<String> =
            ctx.stores.tenants.state().iter().map(|t| tenant_namespace(t)).collect();
        for c in ctx.stores.mcp_connections.state() {
            mark_if_unbound(&ctx, &*c, &tenant_namespaces).await;
        }
        for p in ctx.stores.prompt_policies.state() {
            mark_if_unbound(&ctx, &*p, &tenant_namespaces).await;
        }
        for k in ctx.stores.api_keys.state() {
            let ns = k.namespace().unwrap_or_default();
            if tenant_namespaces.contains(&ns) {
                continue;
            }
            let message =
                format!("namespace {ns} belongs to no Tenant: an ApiKey belongs to the tenant of its namespace");
            if let Err(e) = crate::tenant::api_keys::write_unbound(&ctx, &k, &message).await {
                tracing::warn!(object = %k.name_any(), namespace = %ns, error = %e, "could not write status");
            }
        }
        for p in ctx.stores.model_prices.state() {
            if let Err(e) = price_status(&ctx, &p).await {
                tracing::warn!(object = %p.name_any(), error = %e, "could not write status");
            }
        }
    }
}

async fn mark_if_unbound<K: BindingStatus>(ctx: &Context, obj: &K, tenant_namespaces: &BTreeSet<String>) {
    let ns = obj.namespace().unwrap_or_default();
    if ns == ctx.settings.operator_namespace || tenant_namespaces.contains(&ns) {
        return;
    }
    let message =
        format!("namespace {ns} belongs to no Tenant: create a Tenant with spec.namespace: {ns}, or move this object");
    if let Err(e) = binding_status(ctx, obj, "", false, "NoTenant", &message).await {
        tracing::warn!(object = %obj.name_any(), namespace = %ns, error = %e, "could not write status");
    }
}

/// Writes a ModelPrice's `status.version` (what usage rows priced with it carry) when it changed.
async fn price_status(ctx: &Context, price: &ModelPrice) -> Result<(), kube::Error> {
    let status = ModelPriceStatus {
        observed_generation: price.meta().generation,
        version: Amounts::parse(&price.spec.price).ok().map(|a| a.version(&price.spec.currency)),
    };
    if price.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = json!({ "apiVersion": ModelPrice::api_version(&()), "kind": ModelPrice::kind(&()), "status": status });
    Api::<ModelPrice>::all(ctx.client.clone())
        .patch_status(&price.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map(drop)
}
