//! McpConnections and PromptPolicies in a namespace that belongs to no
//! tenant get a status saying so (the Tenant controller writes the status of
//! those it binds).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use tenantgate_crds::render::tenant_namespace;

use crate::context::Context;
use crate::tenant::{BindingStatus, binding_status};

/// Every few seconds, marks objects in namespaces without a tenant as unbound.
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
