//! Step 4: server-side apply of what changed, under one field manager, in
//! the phase order of the table of managed kinds, and deletion of what is no
//! longer wanted. Unchanged objects cost no request.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::build::TenantStack;
use crate::context::{Context, ManagedCache};
use crate::diff::is_applied;
use crate::kinds::{Cache, Phase, Write};
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

fn describe(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn api(client: &Client, managed: &ManagedCache, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) if managed.kind.namespaced => Api::namespaced_with(client.clone(), ns, &managed.kind.resource),
        _ => Api::all_with(client.clone(), &managed.kind.resource),
    }
}

/// Whether the cached object already is what `desired` says. A kind cached
/// as metadata only is compared on its metadata (labels, owner).
fn applied(managed: &ManagedCache, desired: &DynamicObject) -> bool {
    let name = desired.name_any();
    let Some(live) = managed.cache.live(desired.metadata.namespace.as_deref(), &name) else { return false };
    let desired = match managed.kind.cache {
        Cache::Owned => serde_json::to_value(desired),
        Cache::AllMetadata => serde_json::to_value(&desired.metadata)
            .map(|m| serde_json::Value::Object([("metadata".to_owned(), m)].into_iter().collect())),
    };
    desired.is_ok_and(|d| is_applied(&d, &live))
}

/// Writes `desired` as its kind says, unless the cache shows it is already
/// there. Returns whether a write was made.
async fn write(client: &Client, managed: &ManagedCache, desired: &DynamicObject) -> Result<bool, ApplyError> {
    let name = desired.name_any();
    let namespace = desired.metadata.namespace.as_deref();
    let api = api(client, managed, namespace);
    let failed =
        |action, source| ApplyError { action, object: describe(&managed.kind.resource.kind, namespace, &name), source };
    match managed.kind.write {
        Write::Apply => {
            if applied(managed, desired) {
                return Ok(false);
            }
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&name, &params, &Patch::Apply(desired)).await.map_err(|e| failed("applying", e))?;
            Ok(true)
        }
        // Generated keys are never rewritten.
        Write::CreateOnce => {
            let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            match api.create(&params, desired).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(source) => Err(failed("creating", source)),
            }
        }
    }
}

/// Deletes every cached object of `managed`'s kind of `tenant` in
/// `namespace` that is not in `keep`.
async fn prune(
    client: &Client,
    managed: &ManagedCache,
    namespace: &str,
    tenant: &str,
    keep: &BTreeSet<String>,
) -> Result<u32, ApplyError> {
    let mut deleted = 0;
    for name in managed.cache.tenant_objects(tenant, namespace) {
        if keep.contains(&name) {
            continue;
        }
        match api(client, managed, Some(namespace)).delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(ApplyError {
                    action: "deleting",
                    object: describe(&managed.kind.resource.kind, Some(namespace), &name),
                    source,
                });
            }
        }
    }
    Ok(deleted)
}

fn key(managed: &ManagedCache) -> (&str, &str) {
    (managed.kind.resource.api_version.as_str(), managed.kind.resource.kind.as_str())
}

/// Applies a tenant's stack phase by phase (the objects of one phase in
/// parallel) and prunes what is no longer wanted. Objects of a kind the
/// cluster lacks (an optional CRD) are skipped. Returns the number of writes made.
pub async fn apply_stack(ctx: &Context, tenant: &str, namespace: &str, stack: TenantStack) -> Result<u32, ApplyError> {
    let client = &ctx.client;
    let mut phases: BTreeMap<Phase, Vec<(&ManagedCache, DynamicObject)>> = BTreeMap::new();
    for object in stack.into_objects() {
        let Some(types) = &object.types else { continue };
        let Some(managed) = ctx.stores.managed(&types.api_version, &types.kind) else { continue };
        phases.entry(managed.kind.phase).or_default().push((managed, object));
    }
    let mut writes = 0u32;
    let mut keep: BTreeMap<(&str, &str), BTreeSet<String>> = BTreeMap::new();
    for objects in phases.values() {
        let pending = objects.iter().map(|(managed, object)| write(client, managed, object));
        writes += futures::future::try_join_all(pending).await?.into_iter().map(u32::from).sum::<u32>();
        for (managed, object) in objects {
            keep.entry(key(managed)).or_default().insert(object.name_any());
        }
    }
    // Dependents first: a Deployment goes before the ConfigMap it mounts.
    for managed in ctx.stores.managed.iter().rev().filter(|m| m.kind.pruned()) {
        let keep = keep.get(&key(managed)).cloned().unwrap_or_default();
        writes += prune(client, managed, namespace, tenant, &keep).await?;
    }
    Ok(writes)
}
