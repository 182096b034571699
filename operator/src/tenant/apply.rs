//! Step 4: server-side apply of what changed, under one field manager, and
//! deletion of what is no longer wanted. Unchanged objects cost no request.

use std::collections::BTreeSet;
use std::fmt::Debug;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, NamespaceResourceScope};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::TenantStack;
use crate::context::{Context, Stores};
use crate::diff::is_applied;
use crate::labels::FIELD_MANAGER;

/// Why applying failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {object}: {source}")]
pub struct ApplyError {
    action: &'static str,
    object: String,
    #[source]
    source: kube::Error,
}

impl ApplyError {
    /// Whether the API server refused the object itself (a bug or a policy), not a passing fault.
    pub fn is_refusal(&self) -> bool {
        matches!(&self.source, kube::Error::Api(s) if s.code == 422 || s.code == 403)
    }
}

fn describe<K: Resource>(obj: &K) -> String
where
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    match obj.meta().namespace.as_deref() {
        Some(ns) => format!("{kind} {ns}/{}", obj.meta().name.as_deref().unwrap_or_default()),
        None => format!("{kind} {}", obj.meta().name.as_deref().unwrap_or_default()),
    }
}

fn api_for<K>(client: &Client, obj: &K) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    Api::namespaced(client.clone(), obj.meta().namespace.as_deref().unwrap_or_default())
}

/// Applies `desired` unless the cached live object already matches it.
/// Returns whether a write was made.
pub async fn apply<K>(client: &Client, store: &Store<K>, desired: &K) -> Result<bool, ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let mut reference = ObjectRef::<K>::new(&name);
    if let Some(ns) = desired.meta().namespace.as_deref() {
        reference = reference.within(ns);
    }
    if let Some(live) = store.get(&reference) {
        let (d, l) = (serde_json::to_value(desired), serde_json::to_value(&*live));
        if let (Ok(d), Ok(l)) = (d, l)
            && is_applied(&d, &l)
        {
            return Ok(false);
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api_for(client, desired).patch(&name, &params, &Patch::Apply(desired)).await.map_err(|source| ApplyError {
        action: "applying",
        object: describe(desired),
        source,
    })?;
    Ok(true)
}

/// Applies a dynamically typed object (HTTPRoute, ServiceMonitor) the same way.
pub async fn apply_dynamic(
    client: &Client,
    resource: &ApiResource,
    store: &Store<DynamicObject>,
    desired: &DynamicObject,
) -> Result<bool, ApplyError> {
    let name = desired.name_any();
    let ns = desired.namespace().unwrap_or_default();
    let reference = ObjectRef::<DynamicObject>::new_with(&name, resource.clone()).within(&ns);
    if let Some(live) = store.get(&reference)
        && let (Ok(d), Ok(l)) = (serde_json::to_value(desired), serde_json::to_value(&*live))
        && is_applied(&d, &l)
    {
        return Ok(false);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, resource);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)).await.map_err(|source| {
        ApplyError { action: "applying", object: format!("{} {ns}/{name}", resource.kind), source }
    })?;
    Ok(true)
}

/// Creates `secret` unless it exists: generated keys are never rewritten.
async fn create_once<K>(client: &Client, obj: &K) -> Result<bool, ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + Serialize + DeserializeOwned,
{
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match api_for(client, obj).create(&params, obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(source) => Err(ApplyError { action: "creating", object: describe(obj), source }),
    }
}

/// Deletes every cached object of `tenant` in `namespace` that is not in `keep`.
async fn prune<K>(
    client: &Client,
    store: &Store<K>,
    namespace: &str,
    tenant: &str,
    keep: &BTreeSet<String>,
) -> Result<u32, ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + Serialize + DeserializeOwned,
{
    let mut deleted = 0;
    for obj in store.state() {
        let ours = obj.labels().get(crate::labels::TENANT_LABEL).map(String::as_str) == Some(tenant);
        if !ours || obj.namespace().as_deref() != Some(namespace) || keep.contains(&obj.name_any()) {
            continue;
        }
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        match api.delete(&obj.name_any(), &DeleteParams::background()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(ApplyError { action: "deleting", object: describe(&*obj), source }),
        }
    }
    Ok(deleted)
}

async fn prune_dynamic(
    client: &Client,
    stores: Option<&(ApiResource, Store<DynamicObject>)>,
    namespace: &str,
    tenant: &str,
    keep: Option<&DynamicObject>,
) -> Result<u32, ApplyError> {
    let Some((resource, store)) = stores else { return Ok(0) };
    let mut deleted = 0;
    for obj in store.state() {
        let ours = obj.labels().get(crate::labels::TENANT_LABEL).map(String::as_str) == Some(tenant);
        if !ours
            || obj.namespace().as_deref() != Some(namespace)
            || keep.is_some_and(|k| k.name_any() == obj.name_any())
        {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
        match api.delete(&obj.name_any(), &DeleteParams::background()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(ApplyError {
                    action: "deleting",
                    object: format!("{} {namespace}/{}", resource.kind, obj.name_any()),
                    source,
                });
            }
        }
    }
    Ok(deleted)
}

fn names<K: Resource>(objects: impl IntoIterator<Item = K>) -> BTreeSet<String> {
    objects.into_iter().filter_map(|o| o.meta().name.clone()).collect()
}

/// One write (or its skip) in flight.
type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, ApplyError>> + Send + 'a>>;

/// Applies a tenant's stack in dependency order and prunes what is no longer
/// wanted. Returns the number of writes made.
pub async fn apply_stack(ctx: &Context, tenant: &str, stack: TenantStack) -> Result<u32, ApplyError> {
    let TenantStack {
        namespace,
        service_account,
        role,
        role_binding,
        gateway_keys,
        config_map,
        deployment,
        service,
        hpa,
        pdb,
        network_policy,
        ingress,
        http_route,
        service_monitor,
        stdio_bridges,
    } = stack;
    let client = &ctx.client;
    let Stores {
        namespaces: _,
        deployments,
        services,
        config_maps,
        service_accounts,
        roles,
        role_bindings,
        hpas,
        pdbs,
        network_policies,
        ingresses,
        http_routes,
        service_monitors,
        ..
    } = &ctx.stores;
    let ns = namespace.metadata.name.clone().unwrap_or_default();
    let mut writes = 0u32;
    let mut count = |written: bool| {
        if written {
            writes += 1;
        }
    };
    // The namespace is cached as metadata only; compare labels and owner to skip the write.
    let ns_live = ctx.stores.namespaces.get(&ObjectRef::new(&ns));
    let ns_applied = ns_live.is_some_and(|live| {
        let desired = serde_json::json!({ "metadata": { "labels": namespace.metadata.labels, "ownerReferences": namespace.metadata.owner_references } });
        serde_json::to_value(&*live).is_ok_and(|l| is_applied(&desired, &l))
    });
    if !ns_applied {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        api.patch(&ns, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&namespace))
            .await
            .map_err(|source| ApplyError { action: "applying", object: format!("Namespace {ns}"), source })?;
        count(true);
    }
    // Everything the Deployment's pods need (ServiceAccount, keys, config) and
    // what does not depend on anything goes in parallel, then the Deployments:
    // a pod created before its ServiceAccount would fail and back off.
    let mut first: Vec<Pending<'_>> = vec![
        Box::pin(apply(client, service_accounts, &service_account)),
        Box::pin(apply(client, roles, &role)),
        Box::pin(apply(client, config_maps, &config_map)),
        Box::pin(apply(client, services, &service)),
        Box::pin(apply(client, network_policies, &network_policy)),
    ];
    if let Some(keys) = &gateway_keys {
        first.push(Box::pin(create_once(client, keys)));
    }
    for (_, s) in &stdio_bridges {
        first.push(Box::pin(apply(client, services, s)));
    }
    if let Some(h) = &hpa {
        first.push(Box::pin(apply(client, hpas, h)));
    }
    if let Some(p) = &pdb {
        first.push(Box::pin(apply(client, pdbs, p)));
    }
    if let Some(i) = &ingress {
        first.push(Box::pin(apply(client, ingresses, i)));
    }
    if let (Some(route), Some((resource, store))) = (&http_route, http_routes) {
        first.push(Box::pin(apply_dynamic(client, resource, store, route)));
    }
    if let (Some(monitor), Some((resource, store))) = (&service_monitor, service_monitors) {
        first.push(Box::pin(apply_dynamic(client, resource, store, monitor)));
    }
    for written in futures::future::try_join_all(first).await? {
        count(written);
    }
    // The RoleBinding after its Role: binding checks the Role's rules (RBAC
    // escalation), so a binding to a Role not there yet is refused (404).
    let mut then: Vec<Pending<'_>> =
        vec![Box::pin(apply(client, deployments, &deployment)), Box::pin(apply(client, role_bindings, &role_binding))];
    for (d, _) in &stdio_bridges {
        then.push(Box::pin(apply(client, deployments, d)));
    }
    for written in futures::future::try_join_all(then).await? {
        count(written);
    }
    let (bridge_deployments, bridge_services): (Vec<_>, Vec<_>) = stdio_bridges.into_iter().unzip();

    let mut keep_deployments = names(bridge_deployments);
    keep_deployments.insert(deployment.metadata.name.clone().unwrap_or_default());
    let mut keep_services = names(bridge_services);
    keep_services.insert(service.metadata.name.clone().unwrap_or_default());
    writes += prune(client, deployments, &ns, tenant, &keep_deployments).await?;
    writes += prune(client, services, &ns, tenant, &keep_services).await?;
    writes += prune(client, hpas, &ns, tenant, &names(hpa)).await?;
    writes += prune(client, pdbs, &ns, tenant, &names(pdb)).await?;
    writes += prune(client, ingresses, &ns, tenant, &names(ingress)).await?;
    writes += prune(client, config_maps, &ns, tenant, &names([config_map])).await?;
    writes += prune(client, network_policies, &ns, tenant, &names([network_policy])).await?;
    writes += prune(client, service_accounts, &ns, tenant, &names([service_account])).await?;
    writes += prune(client, roles, &ns, tenant, &names([role])).await?;
    writes += prune(client, role_bindings, &ns, tenant, &names([role_binding])).await?;
    writes += prune_dynamic(client, http_routes.as_ref(), &ns, tenant, http_route.as_ref()).await?;
    writes += prune_dynamic(client, service_monitors.as_ref(), &ns, tenant, service_monitor.as_ref()).await?;
    Ok(writes)
}
