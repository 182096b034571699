//! Step 1: everything a tenant's stack depends on, read from the caches.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::Resource;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use tenantgate_crds::render::tenant_namespace;
use tenantgate_crds::spend::api_key_budgets;
use tenantgate_crds::v1alpha1::{ApiKey, BudgetStatus, McpConnection, ModelPrice, PromptPolicy, Tenant};

use crate::context::Stores;
use crate::labels::{GATEWAY, GATEWAY_SPEND, TENANT_LABEL};

/// What a tenant's stack depends on.
#[derive(Clone, Debug, Default)]
pub struct Dependencies {
    /// The tenant namespace.
    pub namespace: String,
    /// Who else claims the namespace, when someone does.
    pub namespace_conflict: Option<String>,
    /// McpConnections in the tenant namespace, by name.
    pub mcp_connections: Vec<McpConnection>,
    /// PromptPolicies in the tenant namespace.
    pub tenant_policies: Vec<PromptPolicy>,
    /// ApiKeys in the tenant namespace, by name.
    pub api_keys: Vec<ApiKey>,
    /// PromptPolicies in the operator namespace.
    pub global_policies: Vec<PromptPolicy>,
    /// The cluster's ModelPrices (pricing::resolve orders them).
    pub model_prices: Vec<ModelPrice>,
    /// resourceVersion of every Secret in the tenant namespace, by name.
    pub secret_versions: BTreeMap<String, String>,
    /// The gateway Deployment as last seen.
    pub deployment: Option<Deployment>,
    /// The tenant's budget as its gateway last published it (the `gateway-spend` ConfigMap).
    pub budget: Option<BudgetStatus>,
    /// The budget of each ApiKey as the gateway last published it, by ApiKey name.
    pub api_key_budgets: BTreeMap<String, BudgetStatus>,
}

/// Reads a tenant's dependencies from the caches.
pub fn dereference(tenant: &Tenant, stores: &Stores, operator_namespace: &str) -> Dependencies {
    let namespace = tenant_namespace(tenant);
    let name = tenant.name_any();
    let namespaces = stores.store::<PartialObjectMeta<Namespace>>();
    let namespace_conflict = namespaces.and_then(|s| s.get(&ObjectRef::new(&namespace))).and_then(|ns| {
        match ns.labels().get(TENANT_LABEL) {
            Some(owner) if owner == &name => None,
            Some(owner) => Some(format!("Tenant {owner}")),
            None => Some("no tenant (it exists without the tenantgate.dev/tenant label)".to_string()),
        }
    });
    let mcp_connections = in_namespace(&stores.mcp_connections, &namespace);
    let tenant_policies = in_namespace(&stores.prompt_policies, &namespace);
    let api_keys = in_namespace(&stores.api_keys, &namespace);
    let global_policies = in_namespace(&stores.prompt_policies, operator_namespace);
    let model_prices: Vec<ModelPrice> = stores.model_prices.state().iter().map(|p| (**p).clone()).collect();
    let mut secret_versions = BTreeMap::new();
    let secrets = stores.store::<PartialObjectMeta<Secret>>().map(Store::state).unwrap_or_default();
    for s in secrets.iter().filter(|s| s.namespace().as_deref() == Some(namespace.as_str())) {
        secret_versions.insert(s.name_any(), s.resource_version().unwrap_or_default());
    }
    let deployment = stores
        .store::<Deployment>()
        .and_then(|s| s.get(&ObjectRef::new(GATEWAY).within(&namespace)))
        .map(|d| (*d).clone());
    let spend = stores.store::<ConfigMap>().and_then(|s| s.get(&ObjectRef::new(GATEWAY_SPEND).within(&namespace)));
    let spend = spend.as_ref().and_then(|m| m.data.as_ref());
    Dependencies {
        budget: spend.and_then(BudgetStatus::from_data),
        api_key_budgets: spend.map(api_key_budgets).unwrap_or_default(),
        namespace,
        namespace_conflict,
        mcp_connections,
        tenant_policies,
        api_keys,
        global_policies,
        model_prices,
        secret_versions,
        deployment,
    }
}

/// The cached objects in `namespace`, by name.
fn in_namespace<K>(store: &Store<K>, namespace: &str) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    let mut out: Vec<K> =
        store.state().iter().filter(|o| o.namespace().as_deref() == Some(namespace)).map(|o| (**o).clone()).collect();
    out.sort_by_key(|o| o.name_any());
    out
}
