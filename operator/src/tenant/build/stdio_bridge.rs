//! A Deployment and Service per stdio McpConnection: the server's image runs
//! the gateway's `stdio-bridge` (copied in by an init container from the
//! gateway image), which spawns the server and serves it over streamable HTTP
//! to whoever presents the connection's token: the tenant's gateway.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, PodSpec, PodTemplateSpec, Probe,
    Secret, SecretKeySelector, SecretVolumeSource, Service, ServiceSpec, Volume,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use tenantgate_crds::render::{BRIDGE_TOKEN_KEY, STDIO_BRIDGE_PORT, stdio_bridge_token};
use tenantgate_crds::v1alpha1::{McpConnection, McpTransport, StdioEnv};

use super::deployment::{empty_dir, http_get, http_service_port, mount, resources};
use super::keys::build_bridge_token;
use super::network_policy::{dns_egress, match_labels, port};
use super::pod::{restricted_container_security, restricted_pod_security};
use super::{BuildError, BuildInput, meta};
use crate::labels::{gateway_selector, labels};

/// Where the init container puts the bridge binary.
const BRIDGE_DIR: &str = "/tenantgate/bin";
/// Where the bridge reads the token it requires.
const TOKEN_DIR: &str = "/var/run/secrets/tenantgate/bridge";

/// Name of the bridge Deployment and Service of a stdio McpConnection.
pub fn stdio_bridge_name(connection: &str) -> String {
    format!("mcp-{connection}")
}

fn env_var(e: &StdioEnv) -> EnvVar {
    match (&e.value, &e.secret_key_ref) {
        (_, Some(r)) => EnvVar {
            name: e.name.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    ..SecretKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        (v, None) => EnvVar { name: e.name.clone(), value: Some(v.clone().unwrap_or_default()), ..EnvVar::default() },
    }
}

/// A bridge: its token Secret (when it is to be created), its Deployment, its
/// Service, and the NetworkPolicy that fences its pods.
#[derive(Clone, Debug)]
pub struct StdioBridge {
    /// The token the bridge requires, when it does not exist yet.
    pub token: Option<Secret>,
    /// The bridge pods.
    pub deployment: Deployment,
    /// How the gateway reaches them.
    pub service: Service,
    /// Who may reach them, and what they may reach.
    pub policy: NetworkPolicy,
}

/// The bridge of every bound stdio McpConnection with an image.
pub fn build_stdio_bridges(input: &BuildInput<'_>) -> Result<Vec<StdioBridge>, BuildError> {
    let bound: BTreeSet<&str> = input.rendered.config.mcp.iter().map(|c| c.name.as_str()).collect();
    input
        .mcp_connections
        .iter()
        .filter(|c| c.spec.transport == McpTransport::Stdio && bound.contains(c.name_any().as_str()))
        .filter_map(|c| build_stdio_bridge(input, c).transpose())
        .collect()
}

fn build_stdio_bridge(input: &BuildInput<'_>, c: &McpConnection) -> Result<Option<StdioBridge>, BuildError> {
    let Some(stdio) = c.spec.stdio.as_ref() else { return Ok(None) };
    let Some(image) = stdio.image.as_ref() else { return Ok(None) };
    let token_secret = stdio_bridge_token(&c.name_any()).name;
    let token = if input.generates(&token_secret) { Some(build_bridge_token(input, c, &token_secret)?) } else { None };
    let tenant = input.tenant.name_any();
    let name = c.name_any();
    let object = stdio_bridge_name(&name);
    let mut selector = gateway_selector(&tenant);
    selector.insert("app.kubernetes.io/component".into(), "mcp-bridge".into());
    selector.insert("tenantgate.dev/mcp-connection".into(), name);
    let mut pod_labels = labels(&tenant, "mcp-bridge");
    pod_labels.extend(selector.clone());
    let mut command = vec![
        "/tenantgate/bin/tenantgate-gateway".to_string(),
        "stdio-bridge".into(),
        "--listen".into(),
        format!("0.0.0.0:{STDIO_BRIDGE_PORT}"),
        "--token-file".into(),
        format!("{TOKEN_DIR}/{BRIDGE_TOKEN_KEY}"),
        "--".into(),
    ];
    command.extend(stdio.command.iter().chain(&stdio.args).cloned());
    let init = Container {
        name: "bridge".into(),
        image: Some(input.settings.gateway_image.clone()),
        args: Some(vec!["install-bridge".into(), BRIDGE_DIR.into()]),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(vec![mount("bridge", BRIDGE_DIR, false)]),
        ..Container::default()
    };
    let server = Container {
        name: "server".into(),
        image: Some(image.clone()),
        command: Some(command),
        env: Some(stdio.env.iter().map(env_var).collect()),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(STDIO_BRIDGE_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe { http_get: http_get("/livez"), period_seconds: Some(5), ..Probe::default() }),
        security_context: Some(restricted_container_security()),
        resources: Some(resources([("cpu", "50m"), ("memory", "64Mi")], [("memory", "512Mi")])),
        volume_mounts: Some(vec![
            mount("bridge", BRIDGE_DIR, true),
            mount("token", TOKEN_DIR, true),
            mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    };
    let mut pod = PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod_security()),
        init_containers: Some(vec![init]),
        containers: vec![server],
        volumes: Some(vec![
            empty_dir("bridge", EmptyDirVolumeSource::default()),
            Volume {
                name: "token".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(token_secret),
                    items: Some(vec![KeyToPath {
                        key: BRIDGE_TOKEN_KEY.into(),
                        path: BRIDGE_TOKEN_KEY.into(),
                        ..KeyToPath::default()
                    }]),
                    default_mode: Some(0o444),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            empty_dir("tmp", EmptyDirVolumeSource::default()),
        ]),
        ..PodSpec::default()
    };
    input.settings.tenant_pods.apply_to(&mut pod);
    let mut deployment_meta = meta(input, &object, "mcp-bridge");
    deployment_meta.labels = Some(pod_labels.clone());
    let deployment = Deployment {
        metadata: deployment_meta,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..ObjectMeta::default() }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let service = Service {
        metadata: meta(input, &object, "mcp-bridge"),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![http_service_port(i32::from(STDIO_BRIDGE_PORT))]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    // The bridge serves the server's tools (with the Secrets its env names) to whoever
    // connects: only its tenant's gateway pods may, and it reaches only DNS and what the
    // connection declares.
    let mut egress = vec![dns_egress(input)];
    egress.extend(stdio.egress.iter().cloned());
    let policy = NetworkPolicy {
        metadata: meta(input, &object, "mcp-bridge"),
        spec: Some(NetworkPolicySpec {
            pod_selector: match_labels(selector),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: match_labels(gateway_selector(&tenant)),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![port("TCP", i32::from(STDIO_BRIDGE_PORT))]),
            }]),
            egress: Some(egress),
        }),
    };
    Ok(Some(StdioBridge { token, deployment, service, policy }))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn stdio_connections_get_a_bridge() {
        let s = stack_of(&tenant(""), &[stdio_connection()], &BTreeMap::new());
        let bridges: Vec<Deployment> =
            s.all::<Deployment>().into_iter().filter(|d| d.name_any() != crate::labels::GATEWAY).collect();
        assert_eq!(bridges.len(), 1);
        let d = &bridges[0];
        let svc = s.get::<Service>("mcp-everything");
        assert_eq!(d.metadata.name.as_deref(), Some("mcp-everything"));
        assert_eq!(svc.and_then(|s| s.metadata.name).as_deref(), Some("mcp-everything"));
        let pod = d.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("pod");
        let command = pod.containers[0].command.clone().unwrap_or_default();
        assert_eq!(
            command[1..],
            [
                "stdio-bridge",
                "--listen",
                "0.0.0.0:8080",
                "--token-file",
                "/var/run/secrets/tenantgate/bridge/token",
                "--",
                "npx",
                "server"
            ]
        );
    }

    #[test]
    fn a_bridge_requires_a_generated_token_the_gateway_mounts_and_the_connection_owns() {
        let s = stack_of(&tenant(""), &[stdio_connection()], &BTreeMap::new());
        let token = s.get::<Secret>("mcp-everything-bridge-token").expect("generated while missing");
        let data = token.string_data.clone().unwrap_or_default();
        assert_eq!(data.get("token").map(String::len), Some(44), "32 random bytes, base64");
        let owner = token.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(
            owner.iter().map(|o| (o.kind.as_str(), o.name.as_str())).collect::<Vec<_>>(),
            [("McpConnection", "everything")],
            "deleted with its connection"
        );
        // The bridge mounts only its own token.
        let bridge = s.get::<Deployment>("mcp-everything").expect("bridge");
        let bridge_pod = bridge.spec.and_then(|d| d.template.spec).expect("pod");
        let volume = bridge_pod.volumes.iter().flatten().find(|v| v.name == "token").and_then(|v| v.secret.clone());
        assert_eq!(volume.and_then(|v| v.secret_name).as_deref(), Some("mcp-everything-bridge-token"));
        // The gateway mounts it where its config points.
        let gateway = pod(&s);
        let projected =
            gateway.volumes.iter().flatten().find(|v| v.name == "secrets").and_then(|v| v.projected.clone());
        let sources = projected.and_then(|p| p.sources).unwrap_or_default();
        assert!(
            sources.iter().filter_map(|p| p.secret.as_ref()).any(|p| p.name == "mcp-everything-bridge-token"),
            "{sources:?}"
        );
        // Once it exists it is never built again (never rewritten, never rotated behind the user's back).
        let existing = BTreeMap::from([("mcp-everything-bridge-token".to_string(), "7".to_string())]);
        let again = stack_of(&tenant(""), &[stdio_connection()], &existing);
        assert!(again.get::<Secret>("mcp-everything-bridge-token").is_none());
    }

    #[test]
    fn a_bridge_takes_connections_only_from_its_tenants_gateway_and_reaches_only_what_it_declares() {
        let mut conn = stdio_connection();
        let stdio = conn.spec.stdio.as_mut().expect("stdio");
        stdio.egress = serde_json::from_value(serde_json::json!([
            {"to": [{"ipBlock": {"cidr": "140.82.112.0/20"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
        ]))
        .expect("egress rules");
        let s = stack_of(&tenant(""), &[conn], &BTreeMap::new());
        let policy = s.get::<NetworkPolicy>("mcp-everything").expect("the bridge's NetworkPolicy");
        let spec = serde_json::to_value(policy.spec).expect("json");
        let bridge = s.get::<Deployment>("mcp-everything").expect("bridge");
        let pods = bridge.spec.as_ref().and_then(|d| d.selector.match_labels.clone()).expect("selector");
        assert_eq!(spec["podSelector"]["matchLabels"], serde_json::to_value(&pods).expect("json"));
        assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
        assert_eq!(
            spec["ingress"],
            serde_json::json!([{
                "from": [{"podSelector": {"matchLabels": gateway_selector("acme")}}],
                "ports": [{"port": 8080, "protocol": "TCP"}]
            }]),
            "only the tenant's gateway pods, in the bridge's namespace"
        );
        let egress = spec["egress"].as_array().expect("egress");
        assert_eq!(egress.len(), 2, "DNS and the declared rule: {egress:?}");
        assert_eq!(
            egress[0]["ports"],
            serde_json::json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
        );
        assert_eq!(egress[1]["to"], serde_json::json!([{"ipBlock": {"cidr": "140.82.112.0/20"}}]));
        // The gateway's own NetworkPolicy does not select bridge pods, nor the bridge's the gateway's.
        let gateway = s.get::<NetworkPolicy>(crate::labels::GATEWAY).expect("gateway policy");
        let gateway_pods = gateway.spec.and_then(|s| s.pod_selector).and_then(|s| s.match_labels).expect("selector");
        assert!(gateway_pods.iter().any(|(k, v)| pods.get(k) != Some(v)), "{gateway_pods:?} {pods:?}");
    }

    #[test]
    fn tenant_pods_get_the_platforms_pull_secrets_and_scheduling() {
        use k8s_openapi::api::core::v1::Toleration;

        use super::super::TenantPods;
        let t = tenant("");
        let conns = [stdio_connection()];
        let r = rendered(&t, &conns);
        let settings = BuildSettings {
            tenant_pods: TenantPods {
                image_pull_secrets: vec!["registry".into()],
                node_selector: BTreeMap::from([("pool".into(), "tenants".into())]),
                tolerations: vec![Toleration {
                    key: Some("dedicated".into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoSchedule".into()),
                    ..Toleration::default()
                }],
                priority_class_name: Some("tenant-gateways".into()),
            },
            ..BuildSettings::default()
        };
        let s = build(&BuildInput { mcp_connections: &conns, ..input(&t, &r, &settings) }).expect("builds");
        let pods: Vec<_> = s.all::<Deployment>().into_iter().filter_map(|d| d.spec?.template.spec).collect();
        assert_eq!(pods.len(), 2, "the gateway and the bridge");
        for p in pods {
            assert_eq!(p.image_pull_secrets.map(|s| s[0].name.clone()).as_deref(), Some("registry"));
            assert_eq!(p.node_selector.and_then(|n| n.get("pool").cloned()).as_deref(), Some("tenants"));
            assert_eq!(p.tolerations.map(|t| t[0].key.clone()), Some(Some("dedicated".into())));
            assert_eq!(p.priority_class_name.as_deref(), Some("tenant-gateways"));
        }
        // Unset, nothing is set.
        let plain = pod(&stack_of(&t, &[], &BTreeMap::new()));
        assert!(plain.image_pull_secrets.is_none() && plain.node_selector.is_none() && plain.tolerations.is_none());
        assert!(plain.priority_class_name.is_none());
    }
}
