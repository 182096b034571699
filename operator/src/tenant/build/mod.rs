//! Step 3 of the pipeline: the desired objects of one tenant, built without a
//! client from what dereferencing found. One file per object family, one
//! `build_*` function per object, each returning a typed object (k8s-openapi,
//! or a small typed custom resource), so the compiler checks every field.

mod config;
mod data_volume;
mod deployment;
mod exposure;
mod keys;
mod monitoring;
mod namespace;
mod network_policy;
mod pod;
mod rbac;
mod scaling;
mod stdio_bridge;
#[cfg(test)]
pub(crate) mod test_support;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::core::TypeMeta;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use tenantgate_crds::render::{GATEWAY_KEYS_SECRET, RenderedConfig, tenant_namespace};
use tenantgate_crds::v1alpha1::{McpConnection, Tenant};

pub use self::config::{build_config_map, build_spend_map};
pub use self::data_volume::{DATA_CLAIM, build_data_claim, data_is_durable};
pub use self::deployment::{build_deployment, build_service, pod_checksum};
pub use self::exposure::{HttpRoute, HttpRouteSpec, build_http_route, build_ingress};
pub use self::keys::{build_bridge_token, build_gateway_keys};
pub use self::monitoring::{ServiceMonitor, ServiceMonitorSpec, build_service_monitor};
pub use self::namespace::build_namespace;
pub use self::network_policy::build_network_policy;
pub use self::rbac::{build_role, build_role_binding, build_service_account};
pub use self::scaling::{build_hpa, build_pdb};
pub use self::stdio_bridge::{StdioBridge, build_stdio_bridges, stdio_bridge_name};
use crate::labels::{GATEWAY, GATEWAY_PORT, labels, owner_reference};

/// Settings of the operator that shape what it builds.
#[derive(Clone, Debug)]
pub struct BuildSettings {
    /// Namespace the operator runs in (allowed to reach gateways; global policies live there).
    pub operator_namespace: String,
    /// Gateway image.
    pub gateway_image: String,
    /// Label selector of namespaces whose pods may scrape gateway metrics.
    pub metrics_namespace_labels: BTreeMap<String, String>,
    /// Whether the Gateway API's HTTPRoute exists in the cluster.
    pub gateway_api: bool,
    /// Whether the Prometheus Operator's ServiceMonitor exists in the cluster.
    pub service_monitors: bool,
    /// Where the API server really listens: the endpoints of the `kubernetes`
    /// Service in `default` (empty when unknown, e.g. `render` without a cluster).
    pub api_server: Vec<std::net::SocketAddr>,
    /// The cluster DNS, as the gateways' NetworkPolicy egress peer.
    pub dns: DnsPeer,
    /// Pull secrets and scheduling of the pods the operator runs for tenants.
    pub tenant_pods: TenantPods,
    /// Labels every Secret the operator watches must carry
    /// (`--secret-label-selector`; empty: every Secret is watched). The
    /// Secret it generates (`gateway-keys`) carries them too.
    pub secret_watch_labels: BTreeMap<String, String>,
}

/// The cluster DNS pods, as a NetworkPolicy peer: pods matching `pod_labels`
/// in namespaces matching `namespace_labels`, and any `cidrs` (a DNS cache on
/// the node, such as NodeLocal DNSCache's link-local address, is no pod a
/// selector can match).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPeer {
    /// Labels of the DNS pods' namespace.
    pub namespace_labels: BTreeMap<String, String>,
    /// Labels of the DNS pods.
    pub pod_labels: BTreeMap<String, String>,
    /// Further DNS addresses, as CIDRs.
    pub cidrs: Vec<String>,
}

impl Default for DnsPeer {
    fn default() -> Self {
        Self {
            namespace_labels: BTreeMap::from([("kubernetes.io/metadata.name".into(), "kube-system".into())]),
            pod_labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
            cidrs: Vec::new(),
        }
    }
}

/// What the platform sets on every pod the operator runs for tenants (the
/// gateways and the stdio bridges): pull secrets for their images, and where
/// they may be scheduled.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantPods {
    /// Names of Secrets in the tenant namespace to pull images with.
    pub image_pull_secrets: Vec<String>,
    /// Node labels the pods require.
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// PriorityClass of the pods.
    pub priority_class_name: Option<String>,
}

impl TenantPods {
    /// Sets these on `pod`.
    pub(crate) fn apply_to(&self, pod: &mut k8s_openapi::api::core::v1::PodSpec) {
        use k8s_openapi::api::core::v1::LocalObjectReference;
        pod.image_pull_secrets = (!self.image_pull_secrets.is_empty())
            .then(|| self.image_pull_secrets.iter().map(|name| LocalObjectReference { name: name.clone() }).collect());
        pod.node_selector = (!self.node_selector.is_empty()).then(|| self.node_selector.clone());
        pod.tolerations = (!self.tolerations.is_empty()).then(|| self.tolerations.clone());
        pod.priority_class_name.clone_from(&self.priority_class_name);
    }
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            operator_namespace: "tenantgate-system".into(),
            gateway_image: "ghcr.io/tenantgate/gateway:0.1.0".into(),
            metrics_namespace_labels: BTreeMap::from([("tenantgate.dev/metrics-scraper".into(), "true".into())]),
            gateway_api: false,
            service_monitors: false,
            api_server: Vec::new(),
            dns: DnsPeer::default(),
            tenant_pods: TenantPods::default(),
            secret_watch_labels: BTreeMap::new(),
        }
    }
}

/// What the build step needs besides the Tenant itself.
#[derive(Clone, Debug)]
pub struct BuildInput<'a> {
    /// The tenant.
    pub tenant: &'a Tenant,
    /// Its rendered config.
    pub rendered: &'a RenderedConfig,
    /// Its McpConnections (stdio ones get a bridge Deployment).
    pub mcp_connections: &'a [McpConnection],
    /// resourceVersion of each referenced Secret that exists, by name: the
    /// storage ones are part of the pod checksum.
    pub secret_versions: &'a BTreeMap<String, String>,
    /// Whether to create the Secrets the operator generates (`gateway-keys`,
    /// the stdio bridges' tokens) that [`Self::secret_versions`] does not list.
    /// They are never rewritten. Off for `render`: they hold fresh randomness.
    pub generate_secrets: bool,
    /// Operator settings.
    pub settings: &'a BuildSettings,
}

impl BuildInput<'_> {
    /// Whether the generated Secret `name` is to be created now.
    pub fn generates(&self, name: &str) -> bool {
        self.generate_secrets && !self.secret_versions.contains_key(name)
    }
}

/// Everything the operator applies for one tenant: a list of objects, each of
/// a kind in [`crate::kinds::managed_kinds`], in the order `render` prints them.
/// The apply step orders them by the phase of their kind.
#[derive(Clone, Debug, Default)]
pub struct TenantStack {
    objects: Vec<DynamicObject>,
}

/// Building failed: no randomness for the generated keys, or a typed object
/// that does not serialize (a bug). Reported, not panicked.
#[derive(Debug, thiserror::Error)]
#[error("building {kind}: {message}")]
pub struct BuildError {
    kind: String,
    message: String,
}

impl TenantStack {
    /// Adds a typed object, erased to the dynamic form the apply step and
    /// `render` share. The typed builders cannot fail; serializing a
    /// k8s-openapi struct cannot either, short of a bug, which is reported.
    pub fn push<K>(&mut self, object: &K) -> Result<(), BuildError>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let kind = K::kind(&()).into_owned();
        let value =
            serde_json::to_value(object).map_err(|e| BuildError { kind: kind.clone(), message: e.to_string() })?;
        let serde_json::Value::Object(mut data) = value else {
            return Err(BuildError { kind, message: "not serialized as an object".into() });
        };
        data.remove("apiVersion");
        data.remove("kind");
        data.remove("metadata");
        self.objects.push(DynamicObject {
            types: Some(TypeMeta { api_version: K::api_version(&()).into_owned(), kind }),
            metadata: object.meta().clone(),
            data: serde_json::Value::Object(data),
        });
        Ok(())
    }

    /// The objects, in build order.
    pub fn objects(&self) -> &[DynamicObject] {
        &self.objects
    }

    /// Takes the objects out.
    pub fn into_objects(self) -> Vec<DynamicObject> {
        self.objects
    }

    /// Every object of kind `K`, typed again (for tests and readers).
    pub fn all<K>(&self) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        self.objects
            .iter()
            .filter(|o| {
                o.types.as_ref().is_some_and(|t| t.kind == K::kind(&()) && t.api_version == K::api_version(&()))
            })
            .filter_map(|o| o.clone().try_parse::<K>().ok())
            .collect()
    }

    /// The object of kind `K` named `name`, typed again.
    pub fn get<K>(&self, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        self.all::<K>().into_iter().find(|o| o.meta().name.as_deref() == Some(name))
    }
}

/// Metadata of an object of `input`'s tenant in its namespace: the standard
/// labels with `component`, owned by the Tenant (garbage-collected with it).
pub(crate) fn meta(input: &BuildInput<'_>, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(tenant_namespace(input.tenant)),
        labels: Some(labels(&input.tenant.name_any(), component)),
        owner_references: Some(vec![owner_reference(input.tenant)]),
        ..ObjectMeta::default()
    }
}

/// Builds the whole stack, in the order `render` prints it.
pub fn build(input: &BuildInput<'_>) -> Result<TenantStack, BuildError> {
    let mut stack = TenantStack::default();
    stack.push(&build_namespace(input))?;
    stack.push(&build_service_account(input))?;
    stack.push(&build_role(input))?;
    stack.push(&build_role_binding(input))?;
    if input.generates(GATEWAY_KEYS_SECRET) {
        stack.push(&build_gateway_keys(input)?)?;
    }
    stack.push(&build_config_map(input)?)?;
    stack.push(&build_spend_map(input))?;
    if let Some(claim) = build_data_claim(input) {
        stack.push(&claim)?;
    }
    stack.push(&build_service(input))?;
    stack.push(&build_network_policy(input))?;
    for bridge in build_stdio_bridges(input)? {
        if let Some(token) = &bridge.token {
            stack.push(token)?;
        }
        stack.push(&bridge.deployment)?;
        stack.push(&bridge.service)?;
        stack.push(&bridge.policy)?;
    }
    stack.push(&build_deployment(input))?;
    if let Some(hpa) = build_hpa(input) {
        stack.push(&hpa)?;
    }
    if let Some(pdb) = build_pdb(input) {
        stack.push(&pdb)?;
    }
    if let Some(ingress) = build_ingress(input) {
        stack.push(&ingress)?;
    }
    if let Some(route) = build_http_route(input) {
        stack.push(&route)?;
    }
    if let Some(monitor) = build_service_monitor(input) {
        stack.push(&monitor)?;
    }
    Ok(stack)
}

/// URL tenants call: the external one when exposed, else the Service's.
pub fn endpoint(tenant: &Tenant) -> String {
    match &tenant.spec.exposure {
        Some(e) if e.tls.is_some() => format!("https://{}", e.host),
        Some(e) => format!("http://{}", e.host),
        None => format!("http://{GATEWAY}.{}.svc:{GATEWAY_PORT}", tenant_namespace(tenant)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    use super::test_support::*;
    use crate::labels::{GATEWAY, GATEWAY_CONFIG};

    #[test]
    fn everything_is_owned_labelled_and_in_the_tenant_namespace() {
        let s = plain_stack();
        let metas = [
            s.get::<ServiceAccount>(GATEWAY).expect("service account").metadata,
            s.get::<ConfigMap>(GATEWAY_CONFIG).expect("config map").metadata,
            s.get::<Deployment>(GATEWAY).expect("deployment").metadata,
            s.get::<Service>(GATEWAY).expect("service").metadata,
            s.get::<NetworkPolicy>(GATEWAY).expect("network policy").metadata,
        ];
        for m in &metas {
            assert_eq!(m.namespace.as_deref(), Some("tg-acme"));
            let owner = &m.owner_references.as_ref().expect("owned")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str(), owner.controller),
                ("Tenant", "acme", "1234", Some(true))
            );
            let labels = m.labels.as_ref().expect("labels");
            assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("tenantgate-operator"));
            assert_eq!(labels.get("tenantgate.dev/tenant").map(String::as_str), Some("acme"));
        }
        let ns = s.get::<Namespace>("tg-acme").expect("namespace");
        let ns_labels = ns.metadata.labels.as_ref().expect("labels");
        assert_eq!(ns_labels.get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));
    }

    #[test]
    fn typed_objects_survive_the_erasure_unchanged() {
        let s = stack_of(&tenant(""), &[stdio_connection()], &BTreeMap::new());
        for d in s.all::<Deployment>() {
            let again = serde_json::to_value(&d).expect("json");
            let erased = s
                .objects()
                .iter()
                .find(|o| {
                    o.metadata.name == d.metadata.name && o.types.as_ref().is_some_and(|t| t.kind == "Deployment")
                })
                .expect("erased");
            assert_eq!(serde_json::to_value(erased).expect("json"), again);
        }
    }
}
