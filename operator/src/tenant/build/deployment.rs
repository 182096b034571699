//! The gateway Deployment and its Service.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIProjection, DownwardAPIVolumeFile,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SecretProjection, Service,
    ServiceAccountTokenProjection, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::pod::{restricted_container_security, restricted_pod_security};
use super::{BuildInput, meta};
use crate::labels::{
    CHECKSUM_ANNOTATION, CONFIG_KEY, DATA_DIR, GATEWAY, GATEWAY_CONFIG, GATEWAY_OPS_PORT, GATEWAY_PORT,
    SERVICE_ACCOUNT_DIR, gateway_selector, labels,
};

/// Checksum of what the gateway reads only when it starts: the config's
/// storage and keys sections (the database pool, the Redis endpoint, the
/// pepper and token key files) and the versions of the Secrets the storage
/// URLs and CAs live in. Its change rolls the pods. Everything else (models,
/// providers, limits, policies, MCP connections, auth, and the Secrets those
/// name, read when used) the running gateways reload in place: changing it
/// restarts nothing, so in-process state (MCP sessions, the spill, SQLite)
/// stays. Mounting a Secret the pods did not mount before changes the pod
/// template itself, and rolls them as any template change does.
pub fn pod_checksum(input: &BuildInput<'_>) -> String {
    let config = &input.rendered.config;
    let mut hasher = Sha256::new();
    // Serializing plain structs cannot fail.
    hasher.update(serde_json::to_vec(&(&config.storage, &config.keys)).unwrap_or_default());
    let storage = &input.tenant.spec.storage;
    let startup_secrets: BTreeSet<&str> = [&storage.redis, &storage.database]
        .into_iter()
        .flatten()
        .flat_map(|s| std::iter::once(&s.url_secret_ref).chain(s.ca_secret_ref.as_ref()))
        .map(|r| r.name.as_str())
        .collect();
    for (name, version) in input.secret_versions {
        if startup_secrets.contains(name.as_str()) {
            hasher.update(format!("\n{name}={version}").as_bytes());
        }
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}

/// The gateway container's API credentials, as the kubelet would automount
/// them but for that container only: a bound token the kubelet rotates (one
/// hour), the cluster CA and the namespace, at the standard path.
fn api_access_volume() -> Volume {
    let sources = vec![
        VolumeProjection {
            service_account_token: Some(ServiceAccountTokenProjection {
                path: "token".into(),
                expiration_seconds: Some(3600),
                ..ServiceAccountTokenProjection::default()
            }),
            ..VolumeProjection::default()
        },
        VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: "kube-root-ca.crt".into(),
                items: Some(vec![KeyToPath { key: "ca.crt".into(), path: "ca.crt".into(), ..KeyToPath::default() }]),
                ..ConfigMapProjection::default()
            }),
            ..VolumeProjection::default()
        },
        VolumeProjection {
            downward_api: Some(DownwardAPIProjection {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "namespace".into(),
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: "metadata.namespace".into(),
                    }),
                    ..DownwardAPIVolumeFile::default()
                }]),
            }),
            ..VolumeProjection::default()
        },
    ];
    Volume {
        name: "kube-api-access".into(),
        projected: Some(ProjectedVolumeSource { default_mode: Some(0o444), sources: Some(sources) }),
        ..Volume::default()
    }
}

/// The projected volume of every Secret key the config points at, laid out as
/// `<secret>/<key>` so the config's paths resolve.
fn secret_volume(input: &BuildInput<'_>) -> Volume {
    let mut by_secret: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &input.rendered.secret_refs {
        by_secret.entry(r.name.as_str()).or_default().push(r.key.as_str());
    }
    let sources = by_secret
        .iter()
        .map(|(name, keys)| VolumeProjection {
            secret: Some(SecretProjection {
                name: (*name).into(),
                items: Some(
                    keys.iter()
                        .map(|k| KeyToPath { key: (*k).into(), path: format!("{name}/{k}"), ..KeyToPath::default() })
                        .collect(),
                ),
                ..SecretProjection::default()
            }),
            ..VolumeProjection::default()
        })
        .collect();
    Volume {
        name: "secrets".into(),
        projected: Some(ProjectedVolumeSource { sources: Some(sources), default_mode: Some(0o440) }),
        ..Volume::default()
    }
}

/// One projected volume per workload identity audience the config reads: a
/// service account token for that audience the kubelet rotates (one hour),
/// mounted at `<IDENTITY_ROOT>/<slug>` so the config's `.../<slug>/token` resolves.
fn identity_token_volumes(input: &BuildInput<'_>) -> Vec<(Volume, VolumeMount)> {
    use tenantgate_crds::render::{IDENTITY_ROOT, identity_token_slug};
    input
        .rendered
        .identity_token_audiences
        .iter()
        .map(|audience| {
            let slug = identity_token_slug(audience);
            let name = format!("identity-{slug}");
            let volume = Volume {
                name: name.clone(),
                projected: Some(ProjectedVolumeSource {
                    default_mode: Some(0o440),
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(audience.clone()),
                            expiration_seconds: Some(3600),
                            path: "token".into(),
                        }),
                        ..VolumeProjection::default()
                    }]),
                }),
                ..Volume::default()
            };
            (volume, mount(&name, &format!("{IDENTITY_ROOT}/{slug}"), true))
        })
        .collect()
}

/// An HTTP GET of `path` on the container's port named `port`.
fn get_on(port: &str, path: &str) -> Option<HTTPGetAction> {
    Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::String(port.into()), ..HTTPGetAction::default() })
}

/// An HTTP GET on the container's `http` port.
pub(super) fn http_get(path: &str) -> Option<HTTPGetAction> {
    get_on("http", path)
}

/// An HTTP GET on the gateway container's `ops` port (probes and metrics).
fn ops_get(path: &str) -> Option<HTTPGetAction> {
    get_on("ops", path)
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: ops_get(path),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: field_path.into(), ..ObjectFieldSelector::default() }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

pub(super) fn empty_dir(name: &str, source: EmptyDirVolumeSource) -> Volume {
    Volume { name: name.into(), empty_dir: Some(source), ..Volume::default() }
}

fn quantities<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, Quantity> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), Quantity(v.to_owned()))).collect()
}

/// `requests`/`limits` of a container.
pub(super) fn resources<const R: usize, const L: usize>(
    requests: [(&str, &str); R],
    limits: [(&str, &str); L],
) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities(requests)),
        limits: Some(quantities(limits)),
        ..ResourceRequirements::default()
    }
}

fn spread(topology_key: &str, selector: &BTreeMap<String, String>) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: topology_key.into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() }),
        ..TopologySpreadConstraint::default()
    }
}

/// A count from the CRD (bounded by its schema) as the API's `int32`.
pub(super) fn int32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The gateway Deployment. `replicas` is left to the HPA when autoscaling is on.
pub fn build_deployment(input: &BuildInput<'_>) -> Deployment {
    let spec = &input.tenant.spec;
    let tenant = input.tenant.name_any();
    let selector = gateway_selector(&tenant);
    let mut pod_labels = labels(&tenant, "gateway");
    pod_labels.extend(selector.clone());
    let (identity_volumes, identity_mounts): (Vec<_>, Vec<_>) = identity_token_volumes(input).into_iter().unzip();
    let container = Container {
        name: "gateway".into(),
        image: Some(spec.gateway.image.clone().unwrap_or_else(|| input.settings.gateway_image.clone())),
        args: Some(vec![
            "--config".into(),
            format!("/etc/tenantgate/{CONFIG_KEY}"),
            // The same ConfigMap through the API server: changes in seconds, not the kubelet's minute.
            "--config-configmap".into(),
            GATEWAY_CONFIG.into(),
            "--listen".into(),
            format!("0.0.0.0:{GATEWAY_PORT}"),
            "--ops-listen".into(),
            format!("0.0.0.0:{GATEWAY_OPS_PORT}"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: GATEWAY_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("ops".into()),
                container_port: GATEWAY_OPS_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        env: Some(
            [
                env_from_field("POD_NAME", "metadata.name"),
                env_from_field("POD_NAMESPACE", "metadata.namespace"),
                // The root filesystem is read-only: the SQLite database (no
                // `storage.database`) and the usage/audit spill file live on the
                // `data` volume, which outlives container restarts (and the pod,
                // when it is a claim).
                EnvVar { name: "TENANTGATE_STATE_DIR".into(), value: Some(DATA_DIR.into()), ..EnvVar::default() },
            ]
            .into_iter()
            .chain(super::data_volume::spill_env(input))
            .collect(),
        ),
        resources: Some(
            spec.gateway
                .resources
                .clone()
                .unwrap_or_else(|| resources([("cpu", "100m"), ("memory", "64Mi")], [("memory", "256Mi")])),
        ),
        liveness_probe: Some(probe("/livez", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        startup_probe: Some(Probe {
            http_get: ops_get("/livez"),
            period_seconds: Some(2),
            failure_threshold: Some(30),
            ..Probe::default()
        }),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(
            vec![
                mount("config", "/etc/tenantgate", true),
                mount("secrets", tenantgate_crds::render::SECRETS_ROOT, true),
                mount("data", DATA_DIR, false),
                mount("tmp", "/tmp", false),
                mount("kube-api-access", SERVICE_ACCOUNT_DIR, true),
            ]
            .into_iter()
            .chain(identity_mounts)
            .collect(),
        ),
        ..Container::default()
    };
    let mut pod = PodSpec {
        service_account_name: Some(GATEWAY.into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod_security()),
        termination_grace_period_seconds: Some(45),
        topology_spread_constraints: Some(vec![
            spread("kubernetes.io/hostname", &selector),
            spread("topology.kubernetes.io/zone", &selector),
        ]),
        containers: vec![container],
        volumes: Some(
            vec![
                Volume {
                    name: "config".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: GATEWAY_CONFIG.into(),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                secret_volume(input),
                super::data_volume::data_volume(input),
                empty_dir(
                    "tmp",
                    EmptyDirVolumeSource { medium: Some("Memory".into()), size_limit: Some(Quantity("16Mi".into())) },
                ),
                api_access_volume(),
            ]
            .into_iter()
            .chain(identity_volumes)
            .collect(),
        ),
        ..PodSpec::default()
    };
    input.settings.tenant_pods.apply_to(&mut pod);
    Deployment {
        metadata: meta(input, GATEWAY, "gateway"),
        spec: Some(DeploymentSpec {
            replicas: spec.gateway.autoscaling.is_none().then(|| int32(spec.gateway.replicas)),
            selector: LabelSelector { match_labels: Some(selector), ..LabelSelector::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(CHECKSUM_ANNOTATION.into(), pod_checksum(input))])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// One TCP port named `http` of a Service, to the pods' `http` port.
pub(super) fn http_service_port(port: i32) -> ServicePort {
    ServicePort {
        name: Some("http".into()),
        port,
        target_port: Some(IntOrString::String("http".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The gateway Service.
pub fn build_service(input: &BuildInput<'_>) -> Service {
    Service {
        metadata: meta(input, GATEWAY, "gateway"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(gateway_selector(&input.tenant.name_any())),
            // `metrics`: for a ServiceMonitor; an Ingress or HTTPRoute only ever names `http`.
            ports: Some(vec![
                http_service_port(GATEWAY_PORT),
                ServicePort {
                    name: Some("metrics".into()),
                    port: GATEWAY_OPS_PORT,
                    target_port: Some(IntOrString::String("ops".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, Secret};

    use super::super::test_support::*;
    use super::*;

    #[test]
    fn gateway_pods_are_restricted_and_probed() {
        let p = pod(&plain_stack());
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
    fn probes_and_metrics_have_a_port_of_their_own() {
        let s = plain_stack();
        let c = &pod(&s).containers[0];
        let args = c.args.clone().unwrap_or_default();
        assert!(args.windows(2).any(|w| w == ["--ops-listen", "0.0.0.0:9090"]), "{args:?}");
        assert!(
            args.windows(2).any(|w| w == ["--config-configmap", GATEWAY_CONFIG]),
            "followed through the API: {args:?}"
        );
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe] {
            let port = probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| h.port.clone());
            assert_eq!(port, Some(IntOrString::String("ops".into())), "probes go to the ops port");
        }
        let ports: Vec<(Option<String>, i32)> =
            c.ports.iter().flatten().map(|p| (p.name.clone(), p.container_port)).collect();
        assert_eq!(ports, [(Some("http".into()), 8080), (Some("ops".into()), 9090)]);
        let service = s.get::<Service>(GATEWAY).expect("service");
        let ports: Vec<(Option<String>, i32)> =
            service.spec.iter().flat_map(|s| s.ports.iter().flatten()).map(|p| (p.name.clone(), p.port)).collect();
        assert_eq!(ports, [(Some("http".into()), 8080), (Some("metrics".into()), 9090)]);
    }

    #[test]
    fn gateway_state_lives_on_a_writable_volume() {
        let p = pod(&plain_stack());
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
        let s = plain_stack();
        let paths = projected_paths(&pod(&s));
        assert_eq!(paths, ["gateway-keys/api-key-pepper", "gateway-keys/token-encryption-key", "openai-key/apiKey"]);
        let config_map = s.get::<k8s_openapi::api::core::v1::ConfigMap>(GATEWAY_CONFIG).expect("config map");
        let config = config_map.data.as_ref().and_then(|d| d.get("config.yaml")).expect("config");
        assert!(config.contains("/var/run/secrets/tenantgate/openai-key/apiKey"));
        let keys = s.get::<Secret>(tenantgate_crds::render::GATEWAY_KEYS_SECRET).expect("keys created");
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
        let config_map = s.get::<k8s_openapi::api::core::v1::ConfigMap>(GATEWAY_CONFIG).expect("config map");
        let config: tenantgate_crds::config::GatewayConfig =
            serde_yaml::from_str(config_map.data.as_ref().and_then(|d| d.get("config.yaml")).expect("config"))
                .expect("config parses");
        assert_eq!(config.storage.redis_ca_file.as_deref(), Some("/var/run/secrets/tenantgate/redis/ca.crt"));
        assert_eq!(config.storage.database_ca_file.as_deref(), Some("/var/run/secrets/tenantgate/db-ca/ca.crt"));
    }

    #[test]
    fn the_pod_checksum_follows_only_what_the_gateway_reads_at_start() {
        let t = tenant(
            "  storage:\n    redis: {urlSecretRef: {name: redis, key: url}}\n    database: {urlSecretRef: {name: db, key: url}}\n",
        );
        let checksum = |s: &TenantStack| {
            gateway_deployment(s)
                .spec
                .as_ref()
                .and_then(|d| d.template.metadata.clone())
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(CHECKSUM_ANNOTATION).cloned())
        };
        let versions = |openai: &str, redis: &str| {
            BTreeMap::from([("openai-key".to_string(), openai.to_string()), ("redis".to_string(), redis.to_string())])
        };
        let a = checksum(&stack_of(&t, &[], &versions("10", "20")));
        assert!(a.is_some(), "the pod template carries the checksum");
        assert_eq!(a, checksum(&stack_of(&t, &[], &versions("10", "20"))), "stable");
        assert_eq!(a, checksum(&stack_of(&t, &[], &versions("11", "20"))), "a provider key is read when used: no roll");
        assert_ne!(a, checksum(&stack_of(&t, &[], &versions("10", "21"))), "the Redis URL is read at start: roll");
        let mut reloadable = t.clone();
        reloadable.spec.routing.max_retries = 5;
        reloadable.spec.display_name = Some("Renamed".into());
        assert_eq!(a, checksum(&stack_of(&reloadable, &[], &versions("10", "20"))), "hot-reloaded: no roll");
        let mut storage = t.clone();
        storage.spec.storage.database = None;
        assert_ne!(a, checksum(&stack_of(&storage, &[], &versions("10", "20"))), "another database: roll");
    }

    #[test]
    fn workload_identity_tokens_are_projected_per_audience_where_the_config_reads_them() {
        use tenantgate_crds::config::EntraCredential;
        use tenantgate_crds::render::{IDENTITY_ROOT, identity_token_slug};
        let mut t = tenant("");
        t.spec.providers = serde_yaml::from_str(concat!(
            "- {name: azure, type: azureOpenai, baseUrl: 'https://a.openai.azure.com', azure: {entraId: {tenantId: t, clientId: c}}}\n",
            "- {name: azure2, type: azureOpenai, baseUrl: 'https://b.openai.azure.com', azure: {entraId: {tenantId: t, clientId: d}}}\n",
        ))
        .expect("providers");
        t.spec.models[0].targets[0].provider = "azure".into();
        let s = stack_of(&t, &[], &BTreeMap::new());
        let p = pod(&s);
        let slug = identity_token_slug("api://AzureADTokenExchange");
        let mounts: Vec<_> = p.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.mount_path.starts_with(IDENTITY_ROOT))
            .collect();
        assert_eq!(mounts.len(), 1, "one token per audience: {mounts:?}");
        assert_eq!(mounts[0].mount_path, format!("{IDENTITY_ROOT}/{slug}"));
        assert_eq!(mounts[0].read_only, Some(true));
        let volume = p.volumes.iter().flatten().find(|v| v.name == mounts[0].name).expect("volume");
        let sources = volume.projected.as_ref().and_then(|p| p.sources.clone()).expect("projected");
        let token = sources.iter().find_map(|s| s.service_account_token.clone()).expect("token source");
        assert_eq!(token.audience.as_deref(), Some("api://AzureADTokenExchange"));
        assert_eq!((token.path.as_str(), token.expiration_seconds), ("token", Some(3600)));
        // The config reads the token where the volume puts it.
        let config_map = s.get::<k8s_openapi::api::core::v1::ConfigMap>(GATEWAY_CONFIG).expect("config map");
        let config: tenantgate_crds::config::GatewayConfig =
            serde_yaml::from_str(config_map.data.as_ref().and_then(|d| d.get("config.yaml")).expect("config"))
                .expect("config parses");
        let credential = config.providers[0].azure.as_ref().and_then(|a| a.entra_id.clone()).map(|e| e.credential);
        let expected = format!("{}/token", mounts[0].mount_path);
        assert_eq!(credential, Some(EntraCredential::ClientAssertionFile(expected)));
        // No workload identity, no token volume.
        let plain = pod(&plain_stack());
        assert!(plain.volumes.iter().flatten().all(|v| !v.name.starts_with("identity-")));
    }

    #[test]
    fn only_the_gateway_container_gets_an_api_token() {
        let s = stack_of(&tenant(""), &[stdio_connection()], &BTreeMap::new());
        let p = pod(&s);
        assert_eq!(p.automount_service_account_token, Some(false), "no token for every container");
        let account = s.get::<k8s_openapi::api::core::v1::ServiceAccount>(GATEWAY).expect("service account");
        assert_eq!(account.automount_service_account_token, Some(false));
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
        let bridge = s
            .get::<Deployment>(&super::super::stdio_bridge_name("everything"))
            .and_then(|d| d.spec)
            .and_then(|d| d.template.spec)
            .expect("bridge pod");
        assert!(bridge.volumes.iter().flatten().all(|v| {
            v.projected.as_ref().is_none_or(|p| p.sources.iter().flatten().all(|s| s.service_account_token.is_none()))
        }));
    }
}
