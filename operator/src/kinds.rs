//! What the operator manages, declared once (in the spirit of Stackable's
//! `ClusterResources`): one row per kind. The table drives the watches and
//! caches (`run`), readiness (`context`), the phase-ordered apply and the
//! prune by label (`tenant::apply`), the object count (metrics) and the
//! harness's counts (`tests/`). A new kind is one row here and one build
//! function in `tenant::build`.

use std::any::TypeId;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Resource;
use kube::core::{ApiResource, NamespaceResourceScope};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::caches::{CacheStart, watch_metadata, watch_whole};
use crate::labels::MANAGED_SELECTOR;
use crate::tenant::build::{HttpRoute, ServiceMonitor};

/// When a kind is applied: every object of a phase goes in parallel, after
/// every object of the phases before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The tenant namespace, which everything else lives in.
    Namespace,
    /// What other objects refer to (ServiceAccount, Role, Secrets, ConfigMap)
    /// and what refers to nothing that could be missing.
    Prerequisites,
    /// What must come after its prerequisites: a Deployment after its
    /// ServiceAccount (a pod created before it fails and backs off), a
    /// RoleBinding after its Role (binding checks the Role's rules against
    /// RBAC escalation, so a binding to a Role not there yet is refused).
    Dependents,
}

/// How the operator writes a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Server-side apply when the cached object differs; objects of the
    /// tenant no longer desired are deleted (pruned by the tenant label).
    Apply,
    /// Created when missing, never rewritten nor pruned (generated keys).
    CreateOnce,
}

/// What the operator caches of a kind, and what a change of it triggers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// Whole objects carrying the operator's managed-by label; a change
    /// reconciles the owning Tenant.
    Owned,
    /// Metadata of every object of the kind in the cluster (the operator
    /// also reads those it did not make: referenced Secrets, namespaces it
    /// must not take over); a change reconciles the tenants of its namespace.
    AllMetadata,
}

/// One row of the table.
#[derive(Clone)]
pub struct ManagedKind {
    /// Group, version, kind and plural, from the type's `Resource` impl.
    pub resource: ApiResource,
    /// Whether objects of the kind live in a namespace.
    pub namespaced: bool,
    /// When it is applied.
    pub phase: Phase,
    /// Whether its CRD may be absent (discovered at start; absent: not
    /// watched, not built, not applied).
    pub optional: bool,
    /// How it is written.
    pub write: Write,
    /// What is cached of it.
    pub cache: Cache,
    /// Whether the watch of a kind cached as metadata takes the operator's
    /// `--secret-label-selector` (Secrets: then only labelled ones are seen).
    pub narrowed_by_secret_selector: bool,
    /// Starts its watch and cache (typed by the row's kind).
    pub(crate) start: CacheStart,
}

impl Debug for ManagedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedKind")
            .field("kind", &self.resource.kind)
            .field("api_version", &self.resource.api_version)
            .field("namespaced", &self.namespaced)
            .field("phase", &self.phase)
            .field("optional", &self.optional)
            .field("write", &self.write)
            .field("cache", &self.cache)
            .field("narrowed_by_secret_selector", &self.narrowed_by_secret_selector)
            .finish()
    }
}

impl ManagedKind {
    /// A row for `K`: applied, cached whole when it carries the managed-by label, required.
    fn of<K>(phase: Phase) -> Self
    where
        K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
        K::Scope: 'static,
    {
        Self {
            resource: ApiResource::erase::<K>(&()),
            namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
            phase,
            optional: false,
            write: Write::Apply,
            cache: Cache::Owned,
            narrowed_by_secret_selector: false,
            start: watch_whole::<K>,
        }
    }

    /// A row for `K` whose metadata the operator caches for every object of the kind.
    fn metadata_of_all<K>(phase: Phase, write: Write) -> Self
    where
        K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
        K::Scope: 'static,
    {
        Self { write, cache: Cache::AllMetadata, start: watch_metadata::<K>, ..Self::of::<K>(phase) }
    }

    /// The same row, for a kind whose CRD may be absent.
    fn optional(self) -> Self {
        Self { optional: true, ..self }
    }

    /// The same row, its watch narrowed by `--secret-label-selector` when set.
    fn narrowed_by_secret_selector(self) -> Self {
        Self { narrowed_by_secret_selector: true, ..self }
    }

    /// The label selector of this row's watch: the managed-by label for owned
    /// kinds; for kinds cached as metadata, `secret_selector` where the row
    /// takes it, else none (every object).
    pub fn selector<'a>(&self, secret_selector: Option<&'a str>) -> Option<&'a str> {
        match self.cache {
            Cache::Owned => Some(MANAGED_SELECTOR),
            Cache::AllMetadata if self.narrowed_by_secret_selector => secret_selector,
            Cache::AllMetadata => None,
        }
    }

    /// Whether `object` (`apiVersion`, `kind`) is of this kind.
    pub fn is(&self, api_version: &str, kind: &str) -> bool {
        self.resource.api_version == api_version && self.resource.kind == kind
    }

    /// Whether objects of this kind that a tenant no longer wants are deleted.
    pub fn pruned(&self) -> bool {
        self.write == Write::Apply && self.namespaced
    }
}

/// Every kind the operator manages, in phase order.
pub fn managed_kinds() -> Vec<ManagedKind> {
    use Phase::{Dependents, Namespace as First, Prerequisites};
    vec![
        ManagedKind::metadata_of_all::<Namespace>(First, Write::Apply),
        ManagedKind::of::<ServiceAccount>(Prerequisites),
        ManagedKind::of::<Role>(Prerequisites),
        ManagedKind::metadata_of_all::<Secret>(Prerequisites, Write::CreateOnce).narrowed_by_secret_selector(),
        ManagedKind::of::<ConfigMap>(Prerequisites),
        ManagedKind::of::<PersistentVolumeClaim>(Prerequisites),
        ManagedKind::of::<Service>(Prerequisites),
        ManagedKind::of::<NetworkPolicy>(Prerequisites),
        ManagedKind::of::<HorizontalPodAutoscaler>(Prerequisites),
        ManagedKind::of::<PodDisruptionBudget>(Prerequisites),
        ManagedKind::of::<Ingress>(Prerequisites),
        ManagedKind::of::<HttpRoute>(Prerequisites).optional(),
        ManagedKind::of::<ServiceMonitor>(Prerequisites).optional(),
        ManagedKind::of::<RoleBinding>(Dependents),
        ManagedKind::of::<Deployment>(Dependents),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tenantgate_crds::render::{RenderInput, RenderOptions, render};
    use tenantgate_crds::v1alpha1::{McpConnection, Tenant};

    use super::*;
    use crate::tenant::build::test_support::input;
    use crate::tenant::build::{BuildInput, BuildSettings, build};

    /// Every object of a tenant that uses everything, exposed by `exposure`.
    fn built_kinds(exposure: &str) -> Vec<(String, String)> {
        let tenant: Tenant = serde_yaml::from_str(&format!(
            "{}{}{}{}{}  exposure: {exposure}\n",
            "apiVersion: tenantgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme, uid: '1'}\nspec:\n",
            "  auth: {jwt: {issuer: 'https://idp', audiences: [a], jwksUri: 'https://idp.example/jwks'}}\n",
            "  providers: [{name: m, type: mock}]\n  models: [{name: chat, targets: [{provider: m, model: x}]}]\n",
            "  storage: {redis: {urlSecretRef: {name: r, key: url}}, database: {urlSecretRef: {name: d, key: url}}, volume: {size: 1Gi}}\n",
            "  gateway: {autoscaling: {minReplicas: 2, maxReplicas: 6}}\n",
        ))
        .expect("tenant");
        let connection: McpConnection = serde_yaml::from_str(
            "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {name: e, namespace: tg-acme}\nspec: {transport: stdio, stdio: {image: 'node:22', command: [npx]}}\n",
        )
        .expect("connection");
        let connections = [connection];
        let rendered = render(
            RenderInput {
                tenant: &tenant,
                mcp_connections: &connections,
                tenant_policies: &[],
                global_policies: &[],
                model_prices: &[],
                api_keys: &[],
            },
            &RenderOptions::default(),
        )
        .expect("renders");
        let settings = BuildSettings { gateway_api: true, service_monitors: true, ..BuildSettings::default() };
        let stack = build(&BuildInput {
            mcp_connections: &connections,
            generate_secrets: true,
            ..input(&tenant, &rendered, &settings)
        })
        .expect("builds");
        stack
            .objects()
            .iter()
            .map(|o| o.types.as_ref().map(|t| (t.api_version.clone(), t.kind.clone())).expect("types"))
            .collect()
    }

    #[test]
    fn every_built_object_has_a_row_and_phases_are_ordered() {
        let mut built_objects = built_kinds("{host: a.example.com, gatewayRef: {name: g, namespace: gw}}");
        built_objects.extend(built_kinds("{host: a.example.com}"));
        let kinds = managed_kinds();
        let built: BTreeSet<String> = built_objects
            .into_iter()
            .map(|(api_version, kind)| {
                assert!(kinds.iter().any(|k| k.is(&api_version, &kind)), "{kind} has no row");
                kind
            })
            .collect();
        let listed: BTreeSet<String> = kinds.iter().map(|k| k.resource.kind.clone()).collect();
        assert_eq!(built, listed, "every row is built by some tenant");
        assert!(kinds.windows(2).all(|w| w[0].phase <= w[1].phase), "rows in phase order");
        let row = |kind: &str| kinds.iter().find(|k| k.resource.kind == kind).expect("row");
        assert!(row("ServiceAccount").phase < row("Deployment").phase);
        assert!(row("Role").phase < row("RoleBinding").phase);
        assert!(row("ConfigMap").phase < row("Deployment").phase);
        assert!(!row("Namespace").namespaced && row("Deployment").namespaced);
        assert!(row("HTTPRoute").optional && row("ServiceMonitor").optional && !row("Deployment").optional);
        assert_eq!((row("Secret").write, row("Secret").pruned()), (Write::CreateOnce, false));
        assert_eq!(row("HTTPRoute").resource.plural, "httproutes");
        assert_eq!(row("ServiceMonitor").resource.api_version, "monitoring.coreos.com/v1");
        // --secret-label-selector narrows the Secret watch only; owned kinds keep the managed-by label.
        assert_eq!(row("Secret").selector(Some("tenantgate.dev/watch=true")), Some("tenantgate.dev/watch=true"));
        assert_eq!((row("Secret").selector(None), row("Namespace").selector(Some("a=b"))), (None, None));
        assert_eq!(row("Deployment").selector(Some("a=b")), Some(MANAGED_SELECTOR));
    }
}
