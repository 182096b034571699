//! What every reconcile shares: the client, the caches and the metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use tenantgate_crds::v1alpha1::{ApiKey, McpConnection, ModelPrice, PromptPolicy, Tenant};

use crate::caches::KindCache;
use crate::kinds::ManagedKind;
use crate::metrics::Metrics;
use crate::tenant::build::BuildSettings;

/// The cache of one row of the table of managed kinds.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // kube's Store is not Debug
pub struct ManagedCache {
    /// The row.
    pub kind: ManagedKind,
    /// Its cache.
    pub cache: Arc<dyn KindCache>,
}

/// Caches of everything reconciles read: filled by the controller's watches,
/// so a reconcile reads without a request to the API server.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // kube's Store is not Debug
pub struct Stores {
    /// Tenants.
    pub tenants: Store<Tenant>,
    /// McpConnections, everywhere.
    pub mcp_connections: Store<McpConnection>,
    /// PromptPolicies, everywhere.
    pub prompt_policies: Store<PromptPolicy>,
    /// ModelPrices (cluster-scoped).
    pub model_prices: Store<ModelPrice>,
    /// ApiKeys, everywhere.
    pub api_keys: Store<ApiKey>,
    /// The API server's EndpointSlice (`default/kubernetes`), the one object.
    pub api_server: Store<EndpointSlice>,
    /// One cache per row of [`crate::kinds::managed_kinds`] whose kind the
    /// cluster has (an optional kind without its CRD has none).
    pub managed: Vec<ManagedCache>,
}

impl Stores {
    /// The cache of the managed kind `apiVersion`/`kind`, when it is watched.
    pub fn managed(&self, api_version: &str, kind: &str) -> Option<&ManagedCache> {
        self.managed.iter().find(|m| m.kind.is(api_version, kind))
    }

    /// The typed store `Store<K>` among the managed caches (`K` is the kind,
    /// or `PartialObjectMeta` of it for kinds cached as metadata).
    pub fn store<K: 'static + kube::Resource>(&self) -> Option<&Store<K>>
    where
        K::DynamicType: std::hash::Hash + Eq + Clone,
    {
        self.managed.iter().find_map(|m| m.cache.as_any().downcast_ref::<Store<K>>())
    }

    /// Resolves once every cache has finished its first list. A reconcile
    /// before that could mistake "not listed yet" for "absent" (and, say,
    /// take over a namespace that belongs to someone else).
    pub async fn wait_ready(&self) -> bool {
        let (a, b, c, d, e, f) = futures::join!(
            self.tenants.wait_until_ready(),
            self.mcp_connections.wait_until_ready(),
            self.prompt_policies.wait_until_ready(),
            self.api_server.wait_until_ready(),
            self.model_prices.wait_until_ready(),
            self.api_keys.wait_until_ready(),
        );
        let managed = futures::future::join_all(self.managed.iter().map(|m| m.cache.wait_ready())).await;
        [a, b, c, d, e, f].iter().all(Result::is_ok) && managed.into_iter().all(|ready| ready)
    }
}

/// Shared state of the controllers.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// How stacks are built (its `api_server` is empty: each reconcile
    /// reads the endpoints from [`Stores::api_server`]).
    pub settings: BuildSettings,
    /// Caches.
    pub stores: Stores,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Consecutive failures per tenant, for exponential requeue.
    pub failures: Mutex<HashMap<ObjectRef<Tenant>, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("settings", &self.settings).finish_non_exhaustive()
    }
}
