//! Step 3 of the pipeline: the desired objects of one tenant, built without a
//! client from what dereferencing found. One `build_*` function per object.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tenantgate_crds::address::{HostClass, classify_url};
use tenantgate_crds::render::{RenderedConfig, STDIO_BRIDGE_PORT, tenant_namespace};
use tenantgate_crds::v1alpha1::{McpConnection, McpTransport, Tenant};

use crate::labels::*;

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
    /// resourceVersion of each referenced Secret that exists, by name: part of
    /// the pod checksum so a Secret change rolls the pods.
    pub secret_versions: &'a BTreeMap<String, String>,
    /// Whether the `gateway-keys` Secret must be created (it is never rewritten).
    pub create_gateway_keys: bool,
    /// Operator settings.
    pub settings: &'a BuildSettings,
}

/// Everything the operator applies for one tenant. The apply step takes it
/// apart without `..`, so a new object cannot be forgotten there.
#[derive(Clone, Debug)]
pub struct TenantStack {
    /// The tenant namespace.
    pub namespace: Namespace,
    /// The gateway's ServiceAccount.
    pub service_account: ServiceAccount,
    /// What that ServiceAccount may do: write McpConnection status.
    pub role: Role,
    /// Binds the Role to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// Generated keys, only when they do not exist yet.
    pub gateway_keys: Option<Secret>,
    /// The rendered GatewayConfig.
    pub config_map: ConfigMap,
    /// The gateway.
    pub deployment: Deployment,
    /// Its Service.
    pub service: Service,
    /// Its autoscaler, when autoscaling is set.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Its disruption budget, when more than one replica runs.
    pub pdb: Option<PodDisruptionBudget>,
    /// The network fence.
    pub network_policy: NetworkPolicy,
    /// External exposure through an Ingress.
    pub ingress: Option<Ingress>,
    /// External exposure through a Gateway API HTTPRoute.
    pub http_route: Option<DynamicObject>,
    /// Prometheus Operator scraping.
    pub service_monitor: Option<DynamicObject>,
    /// A bridge Deployment and Service per stdio McpConnection.
    pub stdio_bridges: Vec<(Deployment, Service)>,
}

/// A builder produced an object its type refuses: a bug, reported not panicked.
#[derive(Debug, thiserror::Error)]
#[error("building {kind}: {source}")]
pub struct BuildError {
    kind: &'static str,
    #[source]
    source: serde_json::Error,
}

fn typed<T: DeserializeOwned>(kind: &'static str, value: Value) -> Result<T, BuildError> {
    serde_json::from_value(value).map_err(|source| BuildError { kind, source })
}

fn meta(input: &BuildInput<'_>, name: &str, component: &str) -> Value {
    json!({
        "name": name,
        "namespace": tenant_namespace(input.tenant),
        "labels": labels(&input.tenant.name_any(), component),
        "ownerReferences": [owner_reference(input.tenant)],
    })
}

/// Builds the whole stack.
pub fn build(input: &BuildInput<'_>) -> Result<TenantStack, BuildError> {
    Ok(TenantStack {
        namespace: build_namespace(input)?,
        service_account: build_service_account(input)?,
        role: build_role(input)?,
        role_binding: build_role_binding(input)?,
        gateway_keys: input.create_gateway_keys.then(|| build_gateway_keys(input)).transpose()?,
        config_map: build_config_map(input)?,
        deployment: build_deployment(input)?,
        service: build_service(input)?,
        hpa: build_hpa(input)?,
        pdb: build_pdb(input)?,
        network_policy: build_network_policy(input)?,
        ingress: build_ingress(input)?,
        http_route: build_http_route(input)?,
        service_monitor: build_service_monitor(input)?,
        stdio_bridges: build_stdio_bridges(input)?,
    })
}

/// The tenant namespace: Pod Security `restricted` enforced.
pub fn build_namespace(input: &BuildInput<'_>) -> Result<Namespace, BuildError> {
    let tenant = input.tenant.name_any();
    let mut labels = labels(&tenant, "namespace");
    labels.insert("pod-security.kubernetes.io/enforce".into(), "restricted".into());
    labels.insert("pod-security.kubernetes.io/enforce-version".into(), "latest".into());
    labels.insert("pod-security.kubernetes.io/warn".into(), "restricted".into());
    typed(
        "Namespace",
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": tenant_namespace(input.tenant), "labels": labels, "ownerReferences": [owner_reference(input.tenant)] },
        }),
    )
}

/// The gateway's ServiceAccount. No token is automounted: the gateway
/// container alone gets one, through its own projected volume.
pub fn build_service_account(input: &BuildInput<'_>) -> Result<ServiceAccount, BuildError> {
    typed(
        "ServiceAccount",
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(input, GATEWAY, "gateway"),
            "automountServiceAccountToken": false,
        }),
    )
}

/// What the gateway may do against the API server: get and patch the status
/// of the McpConnections of its own namespace, to publish
/// `status.driftedTools` (it alone sees the upstream tools). Scoped by
/// namespace, not by name: resourceNames cannot name connections created later.
pub fn build_role(input: &BuildInput<'_>) -> Result<Role, BuildError> {
    typed(
        "Role",
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": meta(input, GATEWAY_STATUS_WRITER, "gateway"),
            "rules": [{
                "apiGroups": [McpConnection::group(&())],
                "resources": [format!("{}/status", McpConnection::plural(&()))],
                "verbs": ["get", "patch"],
            }],
        }),
    )
}

/// Binds [`build_role`] to the gateway's ServiceAccount.
pub fn build_role_binding(input: &BuildInput<'_>) -> Result<RoleBinding, BuildError> {
    typed(
        "RoleBinding",
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": meta(input, GATEWAY_STATUS_WRITER, "gateway"),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": GATEWAY_STATUS_WRITER },
            "subjects": [{ "kind": "ServiceAccount", "name": GATEWAY, "namespace": tenant_namespace(input.tenant) }],
        }),
    )
}

/// The gateway container's API credentials, as the kubelet would automount
/// them but for that container only: a bound token the kubelet rotates (one
/// hour), the cluster CA and the namespace, at the standard path.
fn api_access_volume() -> Value {
    json!({
        "name": "kube-api-access",
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                { "serviceAccountToken": { "path": "token", "expirationSeconds": 3600 } },
                { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                { "downwardAPI": { "items": [{ "path": "namespace", "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } },
            ],
        },
    })
}

/// Per-tenant keys from the operating system's CSPRNG. Created once; the
/// operator never rewrites it, so stored tokens and API key hashes survive.
pub fn build_gateway_keys(input: &BuildInput<'_>) -> Result<Secret, BuildError> {
    use base64::Engine;
    let key = |len: usize| {
        let mut bytes = vec![0u8; len];
        // The OS CSPRNG does not fail on supported platforms; an all-zero key would, so refuse it.
        getrandom::fill(&mut bytes).map(|()| base64::engine::general_purpose::STANDARD.encode(&bytes))
    };
    let (Ok(encryption), Ok(pepper)) = (key(32), key(32)) else {
        return Err(BuildError {
            kind: "Secret gateway-keys",
            source: serde::de::Error::custom("no randomness available"),
        });
    };
    typed(
        "Secret",
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": meta(input, tenantgate_crds::render::GATEWAY_KEYS_SECRET, "keys"),
            "type": "Opaque",
            "stringData": {
                tenantgate_crds::render::TOKEN_ENCRYPTION_KEY: encryption,
                tenantgate_crds::render::API_KEY_PEPPER: pepper,
            },
        }),
    )
}

/// The rendered GatewayConfig (no secret values: only file paths).
pub fn build_config_map(input: &BuildInput<'_>) -> Result<ConfigMap, BuildError> {
    let config = &input.rendered.config;
    let yaml = config.to_yaml().map_err(|e| BuildError { kind: "ConfigMap", source: serde::de::Error::custom(e) })?;
    let mut metadata = meta(input, GATEWAY_CONFIG, "config");
    metadata["annotations"] = json!({ CONFIG_HASH_ANNOTATION: config.config_hash });
    typed(
        "ConfigMap",
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": { CONFIG_KEY: yaml } }),
    )
}

/// Checksum of everything the pods read: the config and the versions of the
/// Secrets they mount. Its change rolls the pods.
pub fn pod_checksum(input: &BuildInput<'_>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(input.rendered.config.config_hash.as_bytes());
    for (name, version) in input.secret_versions {
        hasher.update(format!("\n{name}={version}").as_bytes());
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}

fn restricted_container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

fn restricted_pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// The projected volume of every Secret key the config points at, laid out as
/// `<secret>/<key>` so the config's paths resolve.
fn secret_volume(input: &BuildInput<'_>) -> Value {
    let mut by_secret: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &input.rendered.secret_refs {
        by_secret.entry(r.name.as_str()).or_default().push(r.key.as_str());
    }
    let sources: Vec<Value> = by_secret
        .iter()
        .map(|(name, keys)| {
            let items: Vec<Value> = keys.iter().map(|k| json!({ "key": k, "path": format!("{name}/{k}") })).collect();
            json!({ "secret": { "name": name, "items": items } })
        })
        .collect();
    json!({ "name": "secrets", "projected": { "sources": sources, "defaultMode": 0o440 } })
}

/// The gateway Deployment. `replicas` is left to the HPA when autoscaling is on.
pub fn build_deployment(input: &BuildInput<'_>) -> Result<Deployment, BuildError> {
    let spec = &input.tenant.spec;
    let tenant = input.tenant.name_any();
    let selector = gateway_selector(&tenant);
    let mut pod_labels = labels(&tenant, "gateway");
    pod_labels.extend(selector.clone());
    let resources =
        spec.gateway.resources.as_ref().map(|r| serde_json::to_value(r).unwrap_or(Value::Null)).unwrap_or_else(
            || json!({ "requests": { "cpu": "100m", "memory": "64Mi" }, "limits": { "memory": "256Mi" } }),
        );
    let probe = |path: &str, period: u32| json!({ "httpGet": { "path": path, "port": "http" }, "periodSeconds": period, "timeoutSeconds": 2, "failureThreshold": 3 });
    let mut deployment_spec = json!({
        "selector": { "matchLabels": selector },
        "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } },
        "template": {
            "metadata": { "labels": pod_labels, "annotations": { CHECKSUM_ANNOTATION: pod_checksum(input) } },
            "spec": {
                "serviceAccountName": GATEWAY,
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "securityContext": restricted_pod_security(),
                "terminationGracePeriodSeconds": 45,
                "topologySpreadConstraints": [
                    { "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": { "matchLabels": selector } },
                    { "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": { "matchLabels": selector } },
                ],
                "containers": [{
                    "name": "gateway",
                    "image": spec.gateway.image.clone().unwrap_or_else(|| input.settings.gateway_image.clone()),
                    "args": ["--config", format!("/etc/tenantgate/{CONFIG_KEY}"), "--listen", format!("0.0.0.0:{GATEWAY_PORT}")],
                    "ports": [{ "name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP" }],
                    "env": [
                        { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                        { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                        // The root filesystem is read-only: the SQLite database (no
                        // `storage.database`) and the usage/audit spill file live on the
                        // `data` volume, which outlives container restarts.
                        { "name": "TENANTGATE_STATE_DIR", "value": DATA_DIR },
                    ],
                    "resources": resources,
                    "livenessProbe": probe("/livez", 10),
                    "readinessProbe": probe("/readyz", 5),
                    "startupProbe": { "httpGet": { "path": "/livez", "port": "http" }, "periodSeconds": 2, "failureThreshold": 30 },
                    "securityContext": restricted_container_security(),
                    "volumeMounts": [
                        { "name": "config", "mountPath": "/etc/tenantgate", "readOnly": true },
                        { "name": "secrets", "mountPath": tenantgate_crds::render::SECRETS_ROOT, "readOnly": true },
                        { "name": "data", "mountPath": DATA_DIR },
                        { "name": "tmp", "mountPath": "/tmp" },
                        { "name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": true },
                    ],
                }],
                "volumes": [
                    { "name": "config", "configMap": { "name": GATEWAY_CONFIG } },
                    secret_volume(input),
                    { "name": "data", "emptyDir": {} },
                    { "name": "tmp", "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } },
                    api_access_volume(),
                ],
            },
        },
    });
    if spec.gateway.autoscaling.is_none() {
        deployment_spec["replicas"] = json!(spec.gateway.replicas);
    }
    typed(
        "Deployment",
        json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(input, GATEWAY, "gateway"), "spec": deployment_spec }),
    )
}

/// The gateway Service.
pub fn build_service(input: &BuildInput<'_>) -> Result<Service, BuildError> {
    typed(
        "Service",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(input, GATEWAY, "gateway"),
            "spec": {
                "type": "ClusterIP",
                "selector": gateway_selector(&input.tenant.name_any()),
                "ports": [{ "name": "http", "port": GATEWAY_PORT, "targetPort": "http", "protocol": "TCP" }],
            },
        }),
    )
}

/// An autoscaling/v2 HPA on CPU, when autoscaling is set.
pub fn build_hpa(input: &BuildInput<'_>) -> Result<Option<HorizontalPodAutoscaler>, BuildError> {
    let Some(a) = &input.tenant.spec.gateway.autoscaling else { return Ok(None) };
    typed(
        "HorizontalPodAutoscaler",
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": meta(input, GATEWAY, "gateway"),
            "spec": {
                "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY },
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": [{ "type": "Resource", "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": a.target_cpu_utilization_percentage } } }],
            },
        }),
    )
    .map(Some)
}

/// A PodDisruptionBudget when more than one replica runs.
pub fn build_pdb(input: &BuildInput<'_>) -> Result<Option<PodDisruptionBudget>, BuildError> {
    let g = &input.tenant.spec.gateway;
    let least = g.autoscaling.as_ref().map_or(g.replicas, |a| a.min_replicas);
    if least <= 1 {
        return Ok(None);
    }
    typed(
        "PodDisruptionBudget",
        json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": meta(input, GATEWAY, "gateway"),
            "spec": { "maxUnavailable": 1, "selector": { "matchLabels": gateway_selector(&input.tenant.name_any()) } },
        }),
    )
    .map(Some)
}

/// Where an upstream URL is, as NetworkPolicy can express it.
fn egress_for_url(url: &str) -> Option<Value> {
    let parsed = url::Url::parse(url).ok()?;
    let port = parsed.port_or_known_default()?;
    let ports = json!([{ "protocol": "TCP", "port": port }]);
    let host = parsed.host_str()?.trim_end_matches('.');
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        let cidr = if ip.is_ipv4() { format!("{ip}/32") } else { format!("{ip}/128") };
        return Some(json!({ "to": [{ "ipBlock": { "cidr": cidr } }], "ports": ports }));
    }
    // In-cluster Services: <svc>.<namespace>.svc[.cluster.local]
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() >= 3 && labels[2] == "svc" {
        return Some(json!({
            "to": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": labels[1] } } }],
            "ports": ports,
        }));
    }
    // A public name: the internet on that port, nothing inside private ranges.
    Some(json!({
        "to": [{ "ipBlock": { "cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"] } }],
        "ports": ports,
    }))
}

/// The gateway's way to the API server (it publishes McpConnection status).
/// NetworkPolicy implementations match traffic after the Service's DNAT, so
/// the `kubernetes` Service's ClusterIP would match nothing: the rule names
/// its endpoints, the API servers' own addresses and port (a control plane
/// outside the pod network, as in most managed clusters, is only reachable
/// by ipBlock). One /32 (or /128) per address.
fn api_server_egress(endpoints: &[std::net::SocketAddr]) -> Vec<Value> {
    let mut by_port: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for e in endpoints {
        let cidr = if e.is_ipv4() { format!("{}/32", e.ip()) } else { format!("{}/128", e.ip()) };
        by_port.entry(e.port()).or_default().insert(cidr);
    }
    by_port
        .into_iter()
        .map(|(port, cidrs)| {
            let to: Vec<Value> = cidrs.into_iter().map(|cidr| json!({ "ipBlock": { "cidr": cidr } })).collect();
            json!({ "to": to, "ports": [{ "protocol": "TCP", "port": port }] })
        })
        .collect()
}

/// Default deny; ingress only from allowed peers, the operator's namespace and
/// metrics scrapers; egress only to DNS, the API server and what the config names.
pub fn build_network_policy(input: &BuildInput<'_>) -> Result<NetworkPolicy, BuildError> {
    let spec = &input.tenant.spec;
    let mut from: Vec<Value> =
        spec.network.allow_ingress_from.iter().map(|p| serde_json::to_value(p).unwrap_or(Value::Null)).collect();
    from.push(json!({ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": input.settings.operator_namespace } } }));
    from.push(json!({ "namespaceSelector": { "matchLabels": input.settings.metrics_namespace_labels } }));

    let mut egress = vec![json!({
        "to": [{ "namespaceSelector": {}, "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } } }],
        "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }],
    })];
    egress.extend(api_server_egress(&input.settings.api_server));
    let mut urls: BTreeSet<String> = BTreeSet::new();
    let config = &input.rendered.config;
    urls.extend(config.providers.iter().filter_map(|p| p.base_url.clone()));
    urls.extend(config.mcp.iter().filter_map(|c| c.url.clone()));
    if let tenantgate_crds::config::JwtKeys::JwksUri(uri) = &config.auth.jwt.keys {
        urls.insert(uri.clone());
    }
    for c in &config.mcp {
        match &c.auth {
            Some(tenantgate_crds::config::McpAuthConfig::Oauth2ClientCredentials { token_url, .. }) => {
                urls.insert(token_url.clone());
            }
            Some(tenantgate_crds::config::McpAuthConfig::Oauth2AuthorizationCode { token_url, .. }) => {
                urls.insert(token_url.clone());
            }
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    for url in &urls {
        if matches!(classify_url(url), Ok(HostClass::Local(_))) {
            continue; // only reachable with allowLocalUpstreams, and never across pods
        }
        if let Some(rule) = egress_for_url(url)
            && seen.insert(rule.to_string())
        {
            egress.push(rule);
        }
    }
    // Storage URLs live in Secrets the operator does not read: allow the
    // standard ports anywhere, so Redis and PostgreSQL work in or out of cluster.
    let storage_ports: Vec<Value> =
        [spec.storage.redis.as_ref().map(|_| 6379), spec.storage.database.as_ref().map(|_| 5432)]
            .into_iter()
            .flatten()
            .map(|port| json!({ "protocol": "TCP", "port": port }))
            .collect();
    if !storage_ports.is_empty() {
        egress.push(json!({ "to": [{ "namespaceSelector": {} }, { "ipBlock": { "cidr": "0.0.0.0/0" } }], "ports": storage_ports }));
    }
    if !spec.network.allow_egress_to.is_empty() {
        let to: Vec<Value> =
            spec.network.allow_egress_to.iter().map(|p| serde_json::to_value(p).unwrap_or(Value::Null)).collect();
        egress.push(json!({ "to": to }));
    }
    typed(
        "NetworkPolicy",
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(input, GATEWAY, "gateway"),
            "spec": {
                "podSelector": { "matchLabels": gateway_selector(&input.tenant.name_any()) },
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{ "from": from, "ports": [{ "protocol": "TCP", "port": GATEWAY_PORT }] }],
                "egress": egress,
            },
        }),
    )
}

fn exposure_annotations(input: &BuildInput<'_>) -> BTreeMap<String, String> {
    let Some(exposure) = &input.tenant.spec.exposure else { return BTreeMap::new() };
    let mut annotations = exposure.annotations.clone();
    if let Some(issuer) = exposure.tls.as_ref().and_then(|t| t.cert_manager_issuer.as_ref()) {
        let key = if issuer.kind == "Issuer" { "cert-manager.io/issuer" } else { "cert-manager.io/cluster-issuer" };
        annotations.insert(key.into(), issuer.name.clone());
    }
    annotations
}

fn tls_secret_name(input: &BuildInput<'_>) -> Option<String> {
    let tls = input.tenant.spec.exposure.as_ref()?.tls.as_ref()?;
    Some(tls.secret_name.clone().unwrap_or_else(|| format!("{}-tls", input.tenant.name_any())))
}

/// An Ingress when exposure is set without a gatewayRef.
pub fn build_ingress(input: &BuildInput<'_>) -> Result<Option<Ingress>, BuildError> {
    let Some(exposure) = &input.tenant.spec.exposure else { return Ok(None) };
    if exposure.gateway_ref.is_some() {
        return Ok(None);
    }
    let mut metadata = meta(input, GATEWAY, "exposure");
    metadata["annotations"] = json!(exposure_annotations(input));
    let mut spec = json!({
        "rules": [{ "host": exposure.host, "http": { "paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": GATEWAY, "port": { "name": "http" } } },
        }] } }],
    });
    if let Some(class) = &exposure.ingress_class_name {
        spec["ingressClassName"] = json!(class);
    }
    if let Some(secret) = tls_secret_name(input) {
        spec["tls"] = json!([{ "hosts": [exposure.host], "secretName": secret }]);
    }
    typed(
        "Ingress",
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec }),
    )
    .map(Some)
}

/// An HTTPRoute when exposure names a Gateway and the Gateway API is installed.
pub fn build_http_route(input: &BuildInput<'_>) -> Result<Option<DynamicObject>, BuildError> {
    let Some(exposure) = &input.tenant.spec.exposure else { return Ok(None) };
    let Some(gateway) = &exposure.gateway_ref else { return Ok(None) };
    if !input.settings.gateway_api {
        return Ok(None);
    }
    let mut parent = json!({ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name, "namespace": gateway.namespace });
    if let Some(section) = &gateway.section_name {
        parent["sectionName"] = json!(section);
    }
    let mut metadata = meta(input, GATEWAY, "exposure");
    metadata["annotations"] = json!(exposure_annotations(input));
    typed(
        "HTTPRoute",
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": metadata,
            "spec": {
                "parentRefs": [parent],
                "hostnames": [exposure.host],
                "rules": [{ "backendRefs": [{ "name": GATEWAY, "port": GATEWAY_PORT }] }],
            },
        }),
    )
    .map(Some)
}

/// A ServiceMonitor when the Prometheus Operator is installed.
pub fn build_service_monitor(input: &BuildInput<'_>) -> Result<Option<DynamicObject>, BuildError> {
    if !input.settings.service_monitors {
        return Ok(None);
    }
    typed(
        "ServiceMonitor",
        json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": meta(input, GATEWAY, "gateway"),
            "spec": {
                "selector": { "matchLabels": gateway_selector(&input.tenant.name_any()) },
                "endpoints": [{ "port": "http", "path": "/metrics", "interval": "30s" }],
            },
        }),
    )
    .map(Some)
}

/// Name of the bridge Deployment and Service of a stdio McpConnection.
pub fn stdio_bridge_name(connection: &str) -> String {
    format!("mcp-{connection}")
}

/// A Deployment and Service per stdio McpConnection: the server's image runs
/// the gateway's `stdio-bridge` (copied in by an init container from the
/// gateway image), which spawns the server and serves it over streamable HTTP.
pub fn build_stdio_bridges(input: &BuildInput<'_>) -> Result<Vec<(Deployment, Service)>, BuildError> {
    let tenant = input.tenant.name_any();
    let bound: BTreeSet<&str> = input.rendered.config.mcp.iter().map(|c| c.name.as_str()).collect();
    let mut out = Vec::new();
    for c in input.mcp_connections {
        let name = c.name_any();
        let (McpTransport::Stdio, Some(stdio), true) = (c.spec.transport, &c.spec.stdio, bound.contains(name.as_str()))
        else {
            continue;
        };
        let Some(image) = &stdio.image else { continue };
        let object = stdio_bridge_name(&name);
        let mut selector = gateway_selector(&tenant);
        selector.insert("app.kubernetes.io/component".into(), "mcp-bridge".into());
        selector.insert("tenantgate.dev/mcp-connection".into(), name.clone());
        let mut pod_labels = labels(&tenant, "mcp-bridge");
        pod_labels.extend(selector.clone());
        let env: Vec<Value> = stdio
            .env
            .iter()
            .map(|e| match (&e.value, &e.secret_key_ref) {
                (_, Some(r)) => {
                    json!({ "name": e.name, "valueFrom": { "secretKeyRef": { "name": r.name, "key": r.key } } })
                }
                (v, None) => json!({ "name": e.name, "value": v.clone().unwrap_or_default() }),
            })
            .collect();
        let mut command = vec![
            "/tenantgate/bin/tenantgate-gateway".to_string(),
            "stdio-bridge".into(),
            "--listen".into(),
            format!("0.0.0.0:{STDIO_BRIDGE_PORT}"),
            "--".into(),
        ];
        command.extend(stdio.command.iter().chain(&stdio.args).cloned());
        let mut meta_value = meta(input, &object, "mcp-bridge");
        meta_value["labels"] = json!(pod_labels);
        let deployment = typed(
            "Deployment",
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": meta_value,
                "spec": {
                    "replicas": 1,
                    "selector": { "matchLabels": selector },
                    "template": {
                        "metadata": { "labels": pod_labels },
                        "spec": {
                            "automountServiceAccountToken": false,
                            "enableServiceLinks": false,
                            "securityContext": restricted_pod_security(),
                            "initContainers": [{
                                "name": "bridge",
                                "image": input.settings.gateway_image,
                                "args": ["install-bridge", "/tenantgate/bin"],
                                "securityContext": restricted_container_security(),
                                "volumeMounts": [{ "name": "bridge", "mountPath": "/tenantgate/bin" }],
                            }],
                            "containers": [{
                                "name": "server",
                                "image": image,
                                "command": command,
                                "env": env,
                                "ports": [{ "name": "http", "containerPort": STDIO_BRIDGE_PORT, "protocol": "TCP" }],
                                "readinessProbe": { "httpGet": { "path": "/livez", "port": "http" }, "periodSeconds": 5 },
                                "securityContext": restricted_container_security(),
                                "resources": { "requests": { "cpu": "50m", "memory": "64Mi" }, "limits": { "memory": "512Mi" } },
                                "volumeMounts": [
                                    { "name": "bridge", "mountPath": "/tenantgate/bin", "readOnly": true },
                                    { "name": "tmp", "mountPath": "/tmp" },
                                ],
                            }],
                            "volumes": [{ "name": "bridge", "emptyDir": {} }, { "name": "tmp", "emptyDir": {} }],
                        },
                    },
                },
            }),
        )?;
        let service = typed(
            "Service",
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": meta(input, &object, "mcp-bridge"),
                "spec": { "selector": selector, "ports": [{ "name": "http", "port": STDIO_BRIDGE_PORT, "targetPort": "http", "protocol": "TCP" }] },
            }),
        )?;
        out.push((deployment, service));
    }
    Ok(out)
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
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use tenantgate_crds::render::{RenderInput, RenderOptions, RenderedConfig, render};
    use tenantgate_crds::v1alpha1::{McpConnection, Tenant};

    use super::*;

    fn tenant(extra: &str) -> Tenant {
        let mut t: Tenant = serde_yaml::from_str(&format!(
            "apiVersion: tenantgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme, uid: 1234}}\nspec:\n  auth:\n    jwt: {{issuer: 'https://idp', audiences: [a], jwksUri: 'https://idp.example/jwks'}}\n  providers:\n    - {{name: openai, type: openai, baseUrl: 'https://api.openai.com/v1', apiKeySecretRef: {{name: openai-key, key: apiKey}}}}\n    - {{name: vllm, type: openai, baseUrl: 'http://vllm.models.svc:8000/v1'}}\n  models: [{{name: chat, targets: [{{provider: openai, model: gpt}}]}}]\n{extra}"
        ))
        .expect("tenant YAML");
        t.metadata.uid = Some("1234".into());
        t
    }

    fn rendered(t: &Tenant, conns: &[McpConnection]) -> RenderedConfig {
        render(
            RenderInput { tenant: t, mcp_connections: conns, tenant_policies: &[], global_policies: &[] },
            &RenderOptions::default(),
        )
        .expect("renders")
    }

    fn stack_of(t: &Tenant, conns: &[McpConnection], versions: &BTreeMap<String, String>) -> TenantStack {
        let r = rendered(t, conns);
        let settings = BuildSettings::default();
        build(&BuildInput {
            tenant: t,
            rendered: &r,
            mcp_connections: conns,
            secret_versions: versions,
            create_gateway_keys: true,
            settings: &settings,
        })
        .expect("builds")
    }

    /// A stdio McpConnection `everything` in tg-acme (it gets a bridge Deployment).
    fn stdio_connection() -> McpConnection {
        serde_yaml::from_str(
            "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {name: everything, namespace: tg-acme}\nspec: {transport: stdio, stdio: {image: 'node:22', command: [npx, server]}}\n",
        )
        .expect("yaml")
    }

    fn pod(stack: &TenantStack) -> PodSpec {
        stack.deployment.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("pod spec")
    }

    #[test]
    fn everything_is_owned_labelled_and_in_the_tenant_namespace() {
        let s = stack_of(&tenant(""), &[], &BTreeMap::new());
        let metas = [
            &s.service_account.metadata,
            &s.config_map.metadata,
            &s.deployment.metadata,
            &s.service.metadata,
            &s.network_policy.metadata,
        ];
        for m in metas {
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
        let ns_labels = s.namespace.metadata.labels.as_ref().expect("labels");
        assert_eq!(ns_labels.get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));
    }

    #[test]
    fn gateway_pods_are_restricted_and_probed() {
        let s = stack_of(&tenant(""), &[], &BTreeMap::new());
        let p = pod(&s);
        assert_eq!(p.automount_service_account_token, Some(false));
        let psc = p.security_context.as_ref().expect("pod security");
        assert_eq!(psc.run_as_non_root, Some(true));
        let c = &p.containers[0];
        let sc = c.security_context.as_ref().expect("container security");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
        assert_eq!(
            c.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| h.path.clone()),
            Some(Some("/livez".into()))
        );
        assert_eq!(
            c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| h.path.clone()),
            Some(Some("/readyz".into()))
        );
        assert!(!p.topology_spread_constraints.clone().unwrap_or_default().is_empty());
    }

    #[test]
    fn gateway_state_lives_on_a_writable_volume() {
        let s = stack_of(&tenant(""), &[], &BTreeMap::new());
        let p = pod(&s);
        let c = &p.containers[0];
        let state_dir = c.env.iter().flatten().find(|e| e.name == "TENANTGATE_STATE_DIR").and_then(|e| e.value.clone());
        assert_eq!(state_dir.as_deref(), Some(DATA_DIR));
        let mount = c.volume_mounts.iter().flatten().find(|m| m.mount_path == DATA_DIR).expect("data mount");
        assert_ne!(mount.read_only, Some(true));
        let volume = p.volumes.iter().flatten().find(|v| v.name == mount.name).expect("data volume");
        assert!(volume.empty_dir.is_some(), "{volume:?}");
        // The rendered config's SQLite database sits on the same volume.
        assert!(tenantgate_crds::render::SQLITE_PATH.starts_with(DATA_DIR));
    }

    #[test]
    fn replicas_belong_to_the_hpa_when_autoscaling_is_on() {
        let fixed = stack_of(&tenant("  gateway: {replicas: 1}\n"), &[], &BTreeMap::new());
        assert_eq!(fixed.deployment.spec.as_ref().and_then(|s| s.replicas), Some(1));
        assert!(fixed.hpa.is_none() && fixed.pdb.is_none());
        let scaled = stack_of(
            &tenant(
                "  storage: {redis: {urlSecretRef: {name: r, key: url}}}\n  gateway: {autoscaling: {minReplicas: 2, maxReplicas: 6}}\n",
            ),
            &[],
            &BTreeMap::new(),
        );
        assert_eq!(scaled.deployment.spec.as_ref().and_then(|s| s.replicas), None, "the HPA owns replicas");
        let hpa = scaled.hpa.expect("HPA");
        assert_eq!((hpa.spec.min_replicas, hpa.spec.max_replicas), (Some(2), 6));
        assert!(scaled.pdb.is_some(), "a PDB for two or more replicas");
    }

    /// The file paths of the gateway pod's projected Secret volume.
    fn projected_paths(p: &PodSpec) -> Vec<String> {
        let projected = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "secrets")
            .and_then(|v| v.projected.clone())
            .expect("projected");
        projected
            .sources
            .iter()
            .flatten()
            .filter_map(|s| s.secret.as_ref())
            .flat_map(|s| s.items.iter().flatten().map(|i| i.path.clone()))
            .collect()
    }

    #[test]
    fn secrets_are_projected_at_the_paths_the_config_names() {
        let s = stack_of(&tenant(""), &[], &BTreeMap::new());
        let paths = projected_paths(&pod(&s));
        assert_eq!(paths, ["gateway-keys/api-key-pepper", "gateway-keys/token-encryption-key", "openai-key/apiKey"]);
        let config = s.config_map.data.as_ref().and_then(|d| d.get("config.yaml")).expect("config");
        assert!(config.contains("/var/run/secrets/tenantgate/openai-key/apiKey"));
        let keys = s.gateway_keys.expect("keys created");
        let data = keys.string_data.expect("data");
        assert_eq!(data.get("token-encryption-key").map(String::len), Some(44));
        assert_ne!(data.get("token-encryption-key"), data.get("api-key-pepper"));
    }

    #[test]
    fn storage_ca_secrets_are_projected_and_named_in_the_config() {
        let t = tenant(concat!(
            "  storage:\n",
            "    redis: {urlSecretRef: {name: redis, key: url}, caSecretRef: {name: redis, key: ca.crt}}\n",
            "    database: {urlSecretRef: {name: db, key: url}, caSecretRef: {name: db-ca, key: ca.crt}}\n",
        ));
        let s = stack_of(&t, &[], &BTreeMap::new());
        let paths = projected_paths(&pod(&s));
        for path in ["redis/url", "redis/ca.crt", "db/url", "db-ca/ca.crt"] {
            assert!(paths.iter().any(|p| p == path), "{path} is not mounted: {paths:?}");
        }
        let config: tenantgate_crds::config::GatewayConfig =
            serde_yaml::from_str(s.config_map.data.as_ref().and_then(|d| d.get("config.yaml")).expect("config"))
                .expect("config parses");
        assert_eq!(config.storage.redis_ca_file.as_deref(), Some("/var/run/secrets/tenantgate/redis/ca.crt"));
        assert_eq!(config.storage.database_ca_file.as_deref(), Some("/var/run/secrets/tenantgate/db-ca/ca.crt"));
    }

    #[test]
    fn the_pod_checksum_follows_config_and_secret_versions() {
        let t = tenant("");
        let checksum = |s: &TenantStack| {
            s.deployment
                .spec
                .as_ref()
                .and_then(|d| d.template.metadata.clone())
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(CHECKSUM_ANNOTATION).cloned())
        };
        let v1 = BTreeMap::from([("openai-key".to_string(), "10".to_string())]);
        let v2 = BTreeMap::from([("openai-key".to_string(), "11".to_string())]);
        let a = checksum(&stack_of(&t, &[], &v1));
        assert_eq!(a, checksum(&stack_of(&t, &[], &v1)), "stable");
        assert_ne!(a, checksum(&stack_of(&t, &[], &v2)), "a Secret update rolls the pods");
        let mut changed = t.clone();
        changed.spec.routing.max_retries = 5;
        assert_ne!(a, checksum(&stack_of(&changed, &[], &v1)), "a config change rolls the pods");
    }

    #[test]
    fn the_gateway_may_patch_mcp_connection_status_in_its_namespace_only() {
        let s = stack_of(&tenant(""), &[], &BTreeMap::new());
        assert_eq!(s.role.metadata.namespace.as_deref(), Some("tg-acme"));
        let rules = s.role.rules.clone().unwrap_or_default();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0].api_groups.clone().unwrap_or_default(), ["tenantgate.dev"]);
        assert_eq!(rules[0].resources.clone().unwrap_or_default(), ["mcpconnections/status"]);
        assert_eq!(rules[0].verbs, ["get", "patch"]);
        let binding = &s.role_binding;
        assert_eq!(binding.metadata.namespace.as_deref(), Some("tg-acme"));
        assert_eq!((binding.role_ref.kind.as_str(), binding.role_ref.name.as_str()), ("Role", GATEWAY_STATUS_WRITER));
        let subjects = binding.subjects.clone().unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (subjects[0].kind.as_str(), subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
            ("ServiceAccount", GATEWAY, Some("tg-acme"))
        );
        for m in [&s.role.metadata, &binding.metadata] {
            assert_eq!(m.owner_references.as_ref().map(|o| o[0].name.as_str()), Some("acme"), "garbage-collected");
        }
    }

    #[test]
    fn only_the_gateway_container_gets_an_api_token() {
        let s = stack_of(&tenant(""), &[stdio_connection()], &BTreeMap::new());
        let p = pod(&s);
        assert_eq!(p.automount_service_account_token, Some(false), "no token for every container");
        assert_eq!(s.service_account.automount_service_account_token, Some(false));
        let mount = p.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == SERVICE_ACCOUNT_DIR)
            .expect("the gateway container mounts its token");
        assert_eq!(mount.read_only, Some(true));
        let volume = p.volumes.iter().flatten().find(|v| v.name == mount.name).expect("volume");
        let sources = volume.projected.as_ref().and_then(|p| p.sources.clone()).expect("projected");
        let token = sources.iter().find_map(|s| s.service_account_token.clone()).expect("token source");
        assert_eq!((token.path.as_str(), token.expiration_seconds), ("token", Some(3600)));
        let ca = sources.iter().find_map(|s| s.config_map.clone()).expect("CA source");
        assert_eq!(ca.name, "kube-root-ca.crt");
        let ns = sources.iter().find_map(|s| s.downward_api.clone()).expect("namespace source");
        let item = &ns.items.unwrap_or_default()[0];
        assert_eq!(
            (item.path.as_str(), item.field_ref.as_ref().map(|f| f.field_path.as_str())),
            ("namespace", Some("metadata.namespace"))
        );
        // The stdio bridge reaches no API server: no token there.
        let bridge = s.stdio_bridges[0].0.spec.as_ref().and_then(|d| d.template.spec.clone()).expect("bridge pod");
        assert!(bridge.volumes.iter().flatten().all(|v| {
            v.projected.as_ref().is_none_or(|p| p.sources.iter().flatten().all(|s| s.service_account_token.is_none()))
        }));
    }

    #[test]
    fn the_network_policy_lets_the_gateway_reach_the_api_server_endpoints() {
        let t = tenant("");
        let r = rendered(&t, &[]);
        let settings = BuildSettings {
            api_server: vec!["10.0.0.5:6443".parse().expect("addr"), "10.0.0.6:6443".parse().expect("addr")],
            ..BuildSettings::default()
        };
        let input = BuildInput {
            tenant: &t,
            rendered: &r,
            mcp_connections: &[],
            secret_versions: &BTreeMap::new(),
            create_gateway_keys: false,
            settings: &settings,
        };
        let egress = build_network_policy(&input).expect("builds").spec.and_then(|s| s.egress).unwrap_or_default();
        let rule = serde_json::to_value(
            egress
                .iter()
                .find(|r| r.ports.iter().flatten().any(|p| p.port == Some(IntOrString::Int(6443))))
                .expect("a rule for the API server's port"),
        )
        .expect("json");
        assert_eq!(
            rule["to"],
            json!([{"ipBlock": {"cidr": "10.0.0.5/32"}}, {"ipBlock": {"cidr": "10.0.0.6/32"}}]),
            "{rule}"
        );
        // Without known endpoints (render, no cluster) no such rule.
        let without = stack_of(&t, &[], &BTreeMap::new());
        assert!(!serde_json::to_string(&without.network_policy.spec).expect("json").contains("6443"));
    }

    #[test]
    fn the_network_policy_allows_exactly_what_the_config_needs() {
        let s = stack_of(
            &tenant("  network: {allowIngressFrom: [{namespaceSelector: {matchLabels: {team: web}}}]}\n"),
            &[],
            &BTreeMap::new(),
        );
        let spec = s.network_policy.spec.as_ref().expect("spec");
        assert_eq!(spec.policy_types.clone().unwrap_or_default(), ["Ingress", "Egress"]);
        let ingress = serde_json::to_string(&spec.ingress).expect("json");
        assert!(
            ingress.contains("\"team\":\"web\"")
                && ingress.contains("tenantgate-system")
                && ingress.contains("tenantgate.dev/metrics-scraper")
        );
        let egress = serde_json::to_value(&spec.egress).expect("json");
        let text = egress.to_string();
        assert!(text.contains("\"port\":53"), "DNS");
        assert!(
            text.contains("\"port\":443") && text.contains("0.0.0.0/0") && text.contains("10.0.0.0/8"),
            "public provider on 443, not private ranges: {text}"
        );
        assert!(
            text.contains("\"kubernetes.io/metadata.name\":\"models\"") && text.contains("\"port\":8000"),
            "in-cluster provider: {text}"
        );
        assert!(!text.contains("6379") && !text.contains("5432"), "no storage ports without storage");
    }

    #[test]
    fn exposure_yields_an_ingress_or_a_route_where_the_gateway_api_exists() {
        let ingress = stack_of(
            &tenant(
                "  exposure: {host: acme.example.com, tls: {certManagerIssuer: {name: le}}, ingressClassName: nginx}\n",
            ),
            &[],
            &BTreeMap::new(),
        );
        let i = ingress.ingress.expect("ingress");
        assert_eq!(i.annotations().get("cert-manager.io/cluster-issuer").map(String::as_str), Some("le"));
        let tls = i.spec.as_ref().and_then(|s| s.tls.clone()).expect("tls");
        assert_eq!(tls[0].secret_name.as_deref(), Some("acme-tls"));
        assert_eq!(
            endpoint(&tenant("  exposure: {host: acme.example.com, tls: {secretName: x}}\n")),
            "https://acme.example.com"
        );

        let t = tenant("  exposure: {host: acme.example.com, gatewayRef: {name: public, namespace: gw}}\n");
        let r = rendered(&t, &[]);
        let mut settings = BuildSettings::default();
        let input = |settings: &BuildSettings| {
            build(&BuildInput {
                tenant: &t,
                rendered: &r,
                mcp_connections: &[],
                secret_versions: &BTreeMap::new(),
                create_gateway_keys: false,
                settings: &settings.clone(),
            })
            .expect("builds")
        };
        let without = input(&settings);
        assert!(
            without.http_route.is_none() && without.ingress.is_none(),
            "no HTTPRoute where the Gateway API is not installed"
        );
        settings.gateway_api = true;
        let route = input(&settings).http_route.expect("route");
        assert_eq!(route.data["spec"]["parentRefs"][0]["name"], "public");
    }

    #[test]
    fn stdio_connections_get_a_bridge() {
        let s = stack_of(&tenant(""), &[stdio_connection()], &BTreeMap::new());
        assert_eq!(s.stdio_bridges.len(), 1);
        let (d, svc) = &s.stdio_bridges[0];
        assert_eq!(d.metadata.name.as_deref(), Some("mcp-everything"));
        assert_eq!(svc.metadata.name.as_deref(), Some("mcp-everything"));
        let pod = d.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("pod");
        let command = pod.containers[0].command.clone().unwrap_or_default();
        assert_eq!(command[1..], ["stdio-bridge", "--listen", "0.0.0.0:8080", "--", "npx", "server"]);
    }
}
