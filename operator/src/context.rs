//! What every reconcile shares: the client, the caches and the metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{DynamicObject, PartialObjectMeta};
use kube::core::ApiResource;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use tenantgate_crds::v1alpha1::{McpConnection, PromptPolicy, Tenant};

use crate::metrics::Metrics;
use crate::tenant::build::BuildSettings;

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
    /// Metadata of Secrets (never their data).
    pub secrets: Store<PartialObjectMeta<Secret>>,
    /// Metadata of Namespaces.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Managed Deployments.
    pub deployments: Store<Deployment>,
    /// Managed Services.
    pub services: Store<Service>,
    /// Managed ConfigMaps.
    pub config_maps: Store<ConfigMap>,
    /// Managed ServiceAccounts.
    pub service_accounts: Store<ServiceAccount>,
    /// Managed Roles (the gateway's status writer).
    pub roles: Store<Role>,
    /// Managed RoleBindings.
    pub role_bindings: Store<RoleBinding>,
    /// Managed HPAs.
    pub hpas: Store<HorizontalPodAutoscaler>,
    /// Managed PDBs.
    pub pdbs: Store<PodDisruptionBudget>,
    /// Managed NetworkPolicies.
    pub network_policies: Store<NetworkPolicy>,
    /// Managed Ingresses.
    pub ingresses: Store<Ingress>,
    /// Managed HTTPRoutes, when the Gateway API is installed.
    pub http_routes: Option<(ApiResource, Store<DynamicObject>)>,
    /// Managed ServiceMonitors, when the Prometheus Operator is installed.
    pub service_monitors: Option<(ApiResource, Store<DynamicObject>)>,
}

impl Stores {
    /// Resolves once every cache has finished its first list. A reconcile
    /// before that could mistake "not listed yet" for "absent" (and, say,
    /// take over a namespace that belongs to someone else).
    pub async fn wait_ready(&self) -> bool {
        let (a, b, c, d, e) = futures::join!(
            self.tenants.wait_until_ready(),
            self.mcp_connections.wait_until_ready(),
            self.prompt_policies.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.namespaces.wait_until_ready(),
        );
        let (f, g, h, i, j) = futures::join!(
            self.deployments.wait_until_ready(),
            self.services.wait_until_ready(),
            self.config_maps.wait_until_ready(),
            self.service_accounts.wait_until_ready(),
            self.network_policies.wait_until_ready(),
        );
        let (k, l, m, n, o) = futures::join!(
            self.hpas.wait_until_ready(),
            self.pdbs.wait_until_ready(),
            self.ingresses.wait_until_ready(),
            self.roles.wait_until_ready(),
            self.role_bindings.wait_until_ready(),
        );
        [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o].iter().all(Result::is_ok)
    }
}

/// Shared state of the controllers.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// How stacks are built.
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
