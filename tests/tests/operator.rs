//! The operator against the real local control plane, running as the chart's
//! ServiceAccount with the chart's RBAC (a missing permission fails here).
//! One operator runs at a time: the tests of this file take turns.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tenantgate_crds::config::GatewayConfig;
use tenantgate_crds::pricing::{PriceSource, TargetPrice};
use tenantgate_crds::v1alpha1::{ApiKey, McpConnection, ModelPrice, PromptPolicy, Tenant};
use tenantgate_tests::operator::*;
use tenantgate_tests::*;

static ONE_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("kubectl").args(args).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "kubectl {}: {text}", args.join(" "));
    Ok(text)
}

async fn eventually<F, Fut>(
    what: &str,
    timeout: Duration,
    op: Option<&OperatorProcess>,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => "not yet".to_string(),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            let log = op.map(|o| o.log_tail(30)).unwrap_or_default();
            anyhow::bail!("{what}: not within {timeout:?} ({last})\noperator log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn condition(t: &Tenant, type_: &str) -> Option<(String, String)> {
    t.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}

async fn wait_ready(client: &Client, name: &str, op: &OperatorProcess) -> anyhow::Result<Tenant> {
    let tenants: Api<Tenant> = Api::all(client.clone());
    // As the README tells platform teams:
    let waited = kubectl(&["wait", "--for=condition=Ready", &format!("tenant/{name}"), "--timeout=90s"]);
    if let Err(e) = waited {
        let t = tenants.get(name).await?;
        anyhow::bail!("{e}\nstatus: {:?}\noperator log:\n{}", t.status, op.log_tail(40));
    }
    Ok(tenants.get(name).await?)
}

async fn setup() -> anyhow::Result<Client> {
    let client = admin_client().await?;
    install_crds(&client).await?;
    Ok(client)
}

async fn delete_tenant_and_wait(
    client: &Client,
    name: &str,
    namespace: &str,
    op: &OperatorProcess,
) -> anyhow::Result<()> {
    kubectl(&["delete", "tenant", name, "--wait=true", "--timeout=60s"])?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually(&format!("namespace {namespace} removed with its tenant"), Duration::from_secs(90), Some(op), || {
        let namespaces = namespaces.clone();
        let namespace = namespace.to_owned();
        async move { Ok(namespaces.get_opt(&namespace).await?.is_none()) }
    })
    .await
}

#[tokio::test]
async fn quickstart_tenant_becomes_ready_with_its_whole_stack_and_goes_with_it() -> anyhow::Result<()> {
    let _turn = ONE_OPERATOR.lock().await;
    let client = setup().await?;
    let op = OperatorProcess::start(&client, "operator-a").await?;
    kubectl(&["apply", "-f", &repo_root().join("manifests/examples/quickstart").display().to_string()])?;
    let tenant = wait_ready(&client, "quickstart", &op).await?;
    let status = tenant.status.clone().expect("status");
    assert_eq!(status.namespace.as_deref(), Some("tg-quickstart"));
    assert_eq!(status.endpoint.as_deref(), Some("http://gateway.tg-quickstart.svc:8080"));
    assert_eq!(status.observed_generation, tenant.metadata.generation);
    assert_eq!(condition(&tenant, "Reconciled"), Some(("True".into(), "Applied".into())));
    assert_eq!(condition(&tenant, "GatewayAvailable").map(|c| c.0), Some("True".into()));
    // No database: the status says the data is not durable.
    assert_eq!(condition(&tenant, "Degraded"), Some(("True".into(), "StorageNotDurable".into())));

    let ns = "tg-quickstart";
    let namespace = Api::<Namespace>::all(client.clone()).get(ns).await?;
    assert_eq!(namespace.labels().get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));
    assert_eq!(namespace.labels().get("tenantgate.dev/tenant").map(String::as_str), Some("quickstart"));
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns).get("gateway").await?;
    assert_eq!(sa.automount_service_account_token, Some(false));
    // The gateway's status writer: applied as the chart's account (RBAC lets it grant what it holds).
    let role = Api::<Role>::namespaced(client.clone(), ns).get("gateway-mcp-status").await?;
    assert_eq!(role.rules.unwrap_or_default()[0].verbs, ["get", "patch"]);
    let binding = Api::<RoleBinding>::namespaced(client.clone(), ns).get("gateway-mcp-status").await?;
    assert_eq!(binding.subjects.unwrap_or_default()[0].name, "gateway");
    let keys = Api::<Secret>::namespaced(client.clone(), ns).get("gateway-keys").await?;
    let data = keys.data.clone().unwrap_or_default();
    assert_eq!(data.get("token-encryption-key").map(|k| k.0.len()), Some(44), "32 random bytes, base64");
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get("gateway-config").await?;
    let config_yaml = cm.data.as_ref().and_then(|d| d.get("config.yaml")).expect("config.yaml");
    let config = tenantgate_crds::config::GatewayConfig::from_yaml(config_yaml)?;
    assert_eq!(Some(config.config_hash.clone()), status.config_hash);
    assert!(config.hash_matches());
    assert!(!config_yaml.contains("\"kty\""), "no secret values in the ConfigMap");
    let deploy = Api::<Deployment>::namespaced(client.clone(), ns).get("gateway").await?;
    let pod = deploy.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("pod spec");
    let container = &pod.containers[0];
    let sc = container.security_context.as_ref().expect("security context");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert!(container.liveness_probe.is_some() && container.readiness_probe.is_some());
    let projected = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "secrets")
        .and_then(|v| v.projected.clone())
        .expect("projected");
    let mounted: Vec<String> =
        projected.sources.iter().flatten().filter_map(|s| s.secret.as_ref()).map(|s| s.name.clone()).collect();
    assert_eq!(mounted, ["gateway-keys", "quickstart-jwks"]);
    Api::<Service>::namespaced(client.clone(), ns).get("gateway").await?;
    Api::<NetworkPolicy>::namespaced(client.clone(), ns).get("gateway").await?;
    assert!(
        Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns).get_opt("gateway").await?.is_none(),
        "no HPA without autoscaling"
    );
    assert!(
        Api::<PodDisruptionBudget>::namespaced(client.clone(), ns).get_opt("gateway").await?.is_none(),
        "no PDB for one replica"
    );
    let policy = Api::<PromptPolicy>::namespaced(client.clone(), ns).get("assistant").await?;
    let accepted = policy
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"))
        .map(|c| c.status.clone());
    assert_eq!(accepted.as_deref(), Some("True"));
    assert_eq!(policy.status.as_ref().and_then(|s| s.tenant.clone()).as_deref(), Some("quickstart"));
    let listing = kubectl(&["get", "tenants"])?;
    assert!(
        listing.contains("quickstart") && listing.contains("tg-quickstart") && listing.contains("True"),
        "{listing}"
    );

    delete_tenant_and_wait(&client, "quickstart", ns, &op).await?;
    Ok(())
}

/// What only the operator changes, for every kind in its table of managed
/// kinds: resourceVersions of objects no other controller writes, and
/// `metadata.generation` (the spec) of those whose status other controllers
/// keep up to date (Deployment, HPA, PDB).
async fn managed_versions(client: &Client, ns: &str) -> anyhow::Result<BTreeMap<String, String>> {
    const STATUS_BY_OTHERS: [&str; 3] = ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"];
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=tenantgate-operator");
    let mut out = BTreeMap::new();
    for kind in tenantgate_operator::kinds::managed_kinds() {
        let name = &kind.resource.kind;
        if !kind.namespaced {
            // The one cluster-scoped kind: the tenant namespace itself.
            let api = Api::<DynamicObject>::all_with(client.clone(), &kind.resource);
            out.insert(name.clone(), api.get(ns).await?.resource_version().unwrap_or_default());
            continue;
        }
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &kind.resource);
        let items = match api.list(&lp).await {
            Ok(list) => list.items,
            Err(kube::Error::Api(s)) if kind.optional && s.code == 404 => continue,
            Err(e) => return Err(e.into()),
        };
        for o in items {
            if STATUS_BY_OTHERS.contains(&name.as_str()) {
                out.insert(format!("{name}/{} generation", o.name_any()), format!("{:?}", o.metadata.generation));
            } else {
                out.insert(format!("{name}/{}", o.name_any()), o.resource_version().unwrap_or_default());
            }
        }
    }
    Ok(out)
}

#[tokio::test]
async fn full_tenant_converges_follows_changes_and_makes_no_writes_at_rest() -> anyhow::Result<()> {
    let _turn = ONE_OPERATOR.lock().await;
    let client = setup().await?;
    let op = OperatorProcess::start(&client, "operator-b").await?;
    let examples = repo_root().join("manifests/examples");
    kubectl(&["apply", "-f", &examples.join("global").display().to_string()])?;
    kubectl(&["apply", "-f", &examples.join("acme").display().to_string()])?;
    let tenant = wait_ready(&client, "acme", &op).await?;
    let ns = "tg-acme";
    assert_eq!(tenant.status.as_ref().map(|s| s.endpoint.clone()), Some(Some("https://acme.ai.example.com".into())));
    let tenants: Api<Tenant> = Api::all(client.clone());
    eventually("both McpConnections and all three policies are bound", Duration::from_secs(15), Some(&op), || {
        let tenants = tenants.clone();
        async move { Ok(tenants.get("acme").await?.status.map(|s| (s.mcp_connections, s.prompt_policies)) == Some((2, 3))) }
    })
    .await?;
    let deploy = Api::<Deployment>::namespaced(client.clone(), ns).get("gateway").await?;
    let hpa = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns).get("gateway").await?;
    assert_eq!((hpa.spec.min_replicas, hpa.spec.max_replicas), (Some(2), 10));
    Api::<PodDisruptionBudget>::namespaced(client.clone(), ns).get("gateway").await?;
    let ingress = Api::<Ingress>::namespaced(client.clone(), ns).get("gateway").await?;
    assert_eq!(ingress.annotations().get("cert-manager.io/cluster-issuer").map(String::as_str), Some("letsencrypt"));
    Api::<Deployment>::namespaced(client.clone(), ns).get("mcp-everything").await?;
    // The stdio bridge's token: generated once, owned by its McpConnection.
    let connections: Api<McpConnection> = Api::namespaced(client.clone(), ns);
    let everything = connections.get("everything").await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let token = secrets.get("mcp-everything-bridge-token").await?;
    assert_eq!(token.data.unwrap_or_default().get("token").map(|k| k.0.len()), Some(44), "32 random bytes, base64");
    let owners: Vec<String> = token.metadata.owner_references.iter().flatten().map(|o| o.uid.clone()).collect();
    assert_eq!(owners, [everything.uid().unwrap_or_default()]);
    let conn = connections.get("github").await?;
    assert_eq!(conn.status.as_ref().and_then(|s| s.tenant.clone()).as_deref(), Some("acme"));
    let global = Api::<PromptPolicy>::namespaced(client.clone(), OPERATOR_NAMESPACE).get("platform-baseline").await?;
    assert_eq!(global.status.as_ref().and_then(|s| s.tenant.clone()).as_deref(), Some("*"));

    // The HPA owns replicas: the operator does not set them, so it never fights the autoscaler.
    let managers: Vec<String> = deploy
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some("tenantgate-operator"))
        .filter_map(|m| m.fields_v1.as_ref().map(|f| f.0.to_string()))
        .collect();
    assert!(
        managers.iter().all(|f| !f.contains("f:replicas")),
        "the operator must not own spec.replicas: {managers:?}"
    );

    // Steady state: no new resourceVersions and no write requests.
    let settle =
        Duration::from_secs(std::env::var("TENANTGATE_STEADY_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60));
    // Let the HPA controller take the Deployment to minReplicas (its sync period is 15 s).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = managed_versions(&client, ns).await?;
    // Lease renewals are the only writes allowed at rest.
    let writes_before = op.writes_except_leases().await?;
    tokio::time::sleep(settle).await;
    let after = managed_versions(&client, ns).await?;
    let writes_after = op.writes_except_leases().await?;
    assert_eq!(before, after, "managed objects changed at rest");
    assert_eq!(writes_before, writes_after, "the operator wrote at rest; log:\n{}", op.log_tail(30));

    // A PromptPolicy edit and a provider key rotation reach the ConfigMap and the mounted
    // Secret, which the running gateways reload: the pod template stays. Rotating the Secret
    // of a storage URL (read once, at start) rolls the pods.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let hash = |cm: &ConfigMap| cm.annotations().get("tenantgate.dev/config-hash").cloned();
    let old_hash = hash(&maps.get("gateway-config").await?);
    let checksum = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .and_then(|a| a.get("tenantgate.dev/config-checksum").cloned())
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let before = deployments.get("gateway").await?;
    let (old_checksum, old_generation) = (checksum(&before), before.metadata.generation);
    let policies: Api<PromptPolicy> = Api::namespaced(client.clone(), ns);
    policies
        .patch("acme-base", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"priority": 150}})))
        .await?;
    eventually("a PromptPolicy edit changes the config", Duration::from_secs(15), Some(&op), || {
        let maps = maps.clone();
        let old = old_hash.clone();
        async move { Ok(hash(&maps.get("gateway-config").await?) != old) }
    })
    .await?;
    let rotate = |name: &'static str, key: &'static str| {
        let secrets = secrets.clone();
        async move {
            let patch = serde_json::json!({"stringData": {key: "rotated"}});
            secrets.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await
        }
    };
    rotate("openai-key", "apiKey").await?;
    rotate("redis", "url").await?;
    eventually("a storage Secret rotation rolls the pods", Duration::from_secs(15), Some(&op), || {
        let deployments = deployments.clone();
        let old = old_checksum.clone();
        async move { Ok(checksum(&deployments.get("gateway").await?) != old) }
    })
    .await?;
    // Changes are applied in the order they happen: had the policy edit or the provider key
    // changed the pod template, the Deployment would be two or three generations on.
    let generation = deployments.get("gateway").await?.metadata.generation;
    assert_eq!(
        generation,
        old_generation.map(|g| g + 1),
        "only the storage Secret rotation may change the pod template; log:\n{}",
        op.log_tail(30)
    );

    // The cluster's price for gpt-4o-mini (acme/40-model-price.yaml) replaces the shipped
    // default; the ModelPrice shows the version the usage rows priced with it carry, and an
    // edit reaches the config. Every target of acme has a price.
    let mini = |cm: &ConfigMap| -> anyhow::Result<Option<TargetPrice>> {
        let yaml = cm.data.as_ref().and_then(|d| d.get("config.yaml")).cloned().unwrap_or_default();
        let config = tenantgate_crds::config::GatewayConfig::from_yaml(&yaml)?;
        Ok(config.pricing.into_iter().flat_map(|p| p.targets).find(|t| t.model == "gpt-4o-mini"))
    };
    let price = mini(&maps.get("gateway-config").await?)?.expect("gpt-4o-mini is priced");
    assert_eq!(
        (price.input_per_million.as_str(), &price.source),
        ("0.135", &PriceSource::ModelPrice("openai-gpt-4o-mini".into()))
    );
    let prices: Api<ModelPrice> = Api::all(client.clone());
    eventually("the ModelPrice shows its version", Duration::from_secs(15), Some(&op), || {
        let (prices, version) = (prices.clone(), price.version.clone());
        async move {
            let status = prices.get("openai-gpt-4o-mini").await?.status.unwrap_or_default();
            Ok(status.version == Some(version) && status.observed_generation.is_some())
        }
    })
    .await?;
    let unpriced = tenants.get("acme").await?.status.map(|s| s.unpriced_targets);
    assert_eq!(unpriced, Some(vec![]), "every acme target has a price");
    let patch = serde_json::json!({"spec": {"price": {"inputPerMillion": "0.12"}}});
    prices.patch("openai-gpt-4o-mini", &PatchParams::default(), &Patch::Merge(patch)).await?;
    eventually("a ModelPrice edit reaches the config", Duration::from_secs(15), Some(&op), || {
        let maps = maps.clone();
        async move { Ok(mini(&maps.get("gateway-config").await?)?.is_some_and(|p| p.input_per_million == "0.12")) }
    })
    .await?;

    // The budget the gateway publishes (as it would: its own field manager) reaches the Tenant's
    // status, and the operator's applies leave the gateway's data alone.
    let spend = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {
        "amount": "2000", "spent": "401.5", "currency": "USD", "window": "2026-12", "updatedAt": "2026-12-06T12:00:00Z"}});
    maps.patch("gateway-spend", &PatchParams::apply("tenantgate-gateway").force(), &Patch::Apply(&spend)).await?;
    eventually("the published spend reaches status.budget", Duration::from_secs(15), Some(&op), || {
        let tenants = tenants.clone();
        async move {
            let budget = tenants.get("acme").await?.status.and_then(|s| s.budget);
            Ok(budget.is_some_and(|b| {
                (b.spent.as_str(), b.amount.as_str(), b.window.as_str()) == ("401.5", "2000", "2026-12")
            }))
        }
    })
    .await?;
    let map = maps.get("gateway-spend").await?;
    assert_eq!(map.data.unwrap_or_default().get("spent").map(String::as_str), Some("401.5"), "not overwritten");

    // Faults: a deleted child comes back, a hand edit is undone.
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services.delete("gateway", &DeleteParams::default()).await?;
    eventually("a deleted Service is recreated", Duration::from_secs(15), Some(&op), || {
        let services = services.clone();
        async move { Ok(services.get_opt("gateway").await?.is_some_and(|s| s.metadata.deletion_timestamp.is_none())) }
    })
    .await?;
    deployments
        .patch(
            "gateway",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "spec": {"template": {"metadata": {"annotations": {"tenantgate.dev/config-checksum": "tampered"}}}}
            })),
        )
        .await?;
    eventually("a hand edit is undone", Duration::from_secs(15), Some(&op), || {
        let deployments = deployments.clone();
        async move { Ok(checksum(&deployments.get("gateway").await?).as_deref() != Some("tampered")) }
    })
    .await?;
    // Removing autoscaling removes the HPA (and the PDB stays: two replicas).
    Api::<Tenant>::all(client.clone())
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"gateway": {"autoscaling": null}}})),
        )
        .await?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    eventually("the HPA goes with spec.gateway.autoscaling", Duration::from_secs(15), Some(&op), || {
        let hpas = hpas.clone();
        async move { Ok(hpas.get_opt("gateway").await?.is_none()) }
    })
    .await?;
    // A stdio connection's bridge and its token go with it: nothing of it is left behind.
    connections.delete("everything", &DeleteParams::default()).await?;
    eventually("the bridge and its token go with their connection", Duration::from_secs(30), Some(&op), || {
        let (deployments, secrets) = (deployments.clone(), secrets.clone());
        async move {
            Ok(deployments.get_opt("mcp-everything").await?.is_none()
                && secrets.get_opt("mcp-everything-bridge-token").await?.is_none())
        }
    })
    .await?;

    delete_tenant_and_wait(&client, "acme", ns, &op).await?;
    kubectl(&["delete", "-f", &examples.join("global").display().to_string(), "--ignore-not-found"])?;
    prices.delete("openai-gpt-4o-mini", &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn status_names_what_a_human_must_fix() -> anyhow::Result<()> {
    let _turn = ONE_OPERATOR.lock().await;
    let client = setup().await?;
    let op = OperatorProcess::start(&client, "operator-c").await?;
    // A namespace that belongs to someone else is refused, not taken over.
    let taken = TestNamespace::create(&client, "taken").await?;
    let tenant = format!(
        r#"{{"apiVersion":"tenantgate.dev/v1alpha1","kind":"Tenant","metadata":{{"name":"squatter"}},
        "spec":{{"namespace":"{ns}","auth":{{"jwt":{{"issuer":"https://idp","audiences":["a"],"jwksUri":"https://idp.example/jwks"}}}},
        "providers":[{{"name":"m","type":"mock"}}],"models":[{{"name":"chat","targets":[{{"provider":"m","model":"x"}}]}}]}}}}"#,
        ns = taken.name
    );
    apply_yaml(&client, &tenant, None).await?;
    let tenants: Api<Tenant> = Api::all(client.clone());
    eventually("NamespaceConflict is reported", Duration::from_secs(20), Some(&op), || {
        let tenants = tenants.clone();
        async move {
            Ok(tenants.get("squatter").await.map(|t| condition(&t, "Reconciled"))?
                == Some(("False".into(), "NamespaceConflict".into())))
        }
    })
    .await?;
    assert!(Api::<Deployment>::namespaced(client.clone(), &taken.name).get_opt("gateway").await?.is_none());

    // An McpConnection in a namespace of no tenant says so.
    let lonely = TestNamespace::create(&client, "lonely").await?;
    let conn = r#"{"apiVersion":"tenantgate.dev/v1alpha1","kind":"McpConnection","metadata":{"name":"orphan"},"spec":{"url":"https://mcp.example.com/mcp"}}"#;
    apply_yaml(&client, conn, Some(&lonely.name)).await?;
    let conns: Api<McpConnection> = Api::namespaced(client.clone(), &lonely.name);
    eventually("NoTenant is reported", Duration::from_secs(20), Some(&op), || {
        let conns = conns.clone();
        async move {
            let c = conns.get("orphan").await?;
            Ok(c.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"))
                .map(|c| c.reason.clone())
                .as_deref()
                == Some("NoTenant"))
        }
    })
    .await?;
    tenants.delete("squatter", &DeleteParams::default()).await?;

    // A referenced Secret that does not exist: never Ready, even while the Deployment
    // reports its pods available (kwok's pods start without mounting anything; a real
    // node's next pod could not).
    let unsigned = r#"{"apiVersion":"tenantgate.dev/v1alpha1","kind":"Tenant","metadata":{"name":"unsigned"},
        "spec":{"auth":{"jwt":{"issuer":"https://idp","audiences":["a"],"jwksSecretRef":{"name":"not-there","key":"jwks.json"}}},
        "providers":[{"name":"m","type":"mock"}],"models":[{"name":"chat","targets":[{"provider":"m","model":"x"}]}]}}"#;
    apply_yaml(&client, unsigned, None).await?;
    eventually("Ready=False MissingSecret beside GatewayAvailable=True", Duration::from_secs(30), Some(&op), || {
        let tenants = tenants.clone();
        async move {
            let t = tenants.get("unsigned").await?;
            Ok(condition(&t, "GatewayAvailable").map(|c| c.0).as_deref() == Some("True")
                && condition(&t, "Ready") == Some(("False".into(), "MissingSecret".into()))
                && condition(&t, "Degraded") == Some(("True".into(), "MissingSecret".into())))
        }
    })
    .await?;
    delete_tenant_and_wait(&client, "unsigned", "tg-unsigned", &op).await?;
    taken.delete().await?;
    lonely.delete().await
}

/// `--secret-label-selector` (the chart's `secretLabelSelector`): the operator
/// works with only labelled Secrets in view, says clearly when a referenced
/// Secret lacks the label (without a word of its data), labels the keys it
/// generates, and converges without writes once the label is there.
#[tokio::test]
async fn a_secret_label_selector_narrows_the_watch_and_names_unlabelled_secrets() -> anyhow::Result<()> {
    let _turn = ONE_OPERATOR.lock().await;
    let client = setup().await?;
    let selector = ("TENANTGATE_SECRET_LABEL_SELECTOR", "tenantgate.dev/watch=true");
    let op = OperatorProcess::start_with_env(&client, "operator-labels", &[selector]).await?;
    let tenant = r#"{"apiVersion":"tenantgate.dev/v1alpha1","kind":"Tenant","metadata":{"name":"labelled"},
        "spec":{"auth":{"jwt":{"issuer":"https://idp","audiences":["a"],"jwksSecretRef":{"name":"jwks","key":"jwks.json"}}},
        "providers":[{"name":"m","type":"mock"}],"models":[{"name":"chat","targets":[{"provider":"m","model":"x"}]}]}}"#;
    apply_yaml(&client, tenant, None).await?;
    let ns = "tg-labelled";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually("the tenant namespace", Duration::from_secs(30), Some(&op), || {
        let namespaces = namespaces.clone();
        async move { Ok(namespaces.get_opt(ns).await?.is_some()) }
    })
    .await?;
    // The referenced Secret exists, but without the label the operator watches by.
    let secret_value = "do-not-leak-7f3a";
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "jwks", "namespace": ns},
        "stringData": {"jwks.json": format!("{{\"keys\": [], \"note\": \"{secret_value}\"}}")},
    }))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets.create(&Default::default(), &secret).await?;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let message = |t: &Tenant, type_: &str| {
        t.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == type_)).map(|c| c.message.clone())
    };
    eventually("Ready=False MissingSecret naming the label", Duration::from_secs(30), Some(&op), || {
        let tenants = tenants.clone();
        async move {
            let t = tenants.get("labelled").await?;
            Ok(condition(&t, "Ready") == Some(("False".into(), "MissingSecret".into()))
                && message(&t, "Ready").is_some_and(|m| {
                    m.contains("lack the label tenantgate.dev/watch=true") && m.contains("jwks/jwks.json")
                }))
        }
    })
    .await?;
    let t = tenants.get("labelled").await?;
    let status = serde_json::to_string(&t.status)?;
    assert!(!status.contains(secret_value), "a Secret's data in status: {status}");
    // The keys the operator generated carry the label, so it sees its own Secret.
    let keys = secrets.get("gateway-keys").await?;
    assert_eq!(keys.labels().get("tenantgate.dev/watch").map(String::as_str), Some("true"));

    // Labelled, the Secret is seen and the tenant becomes Ready.
    secrets
        .patch(
            "jwks",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"tenantgate.dev/watch": "true"}}})),
        )
        .await?;
    let ready = wait_ready(&client, "labelled", &op).await?;
    assert_eq!(condition(&ready, "Degraded").map(|c| c.1).as_deref(), Some("StorageNotDurable"));

    // Converged: a reconcile (set off by a new labelled Secret) writes nothing,
    // not even a create of the keys the operator sees in its cache.
    let reconciles = op.counter("tenantgate_operator_reconciles_total", "").await?;
    let writes = op.writes_except_leases().await?;
    let other: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "unrelated", "namespace": ns, "labels": {"tenantgate.dev/watch": "true"}},
        "stringData": {"x": "y"},
    }))?;
    secrets.create(&Default::default(), &other).await?;
    eventually("a reconcile after the new Secret", Duration::from_secs(20), Some(&op), || async {
        Ok(op.counter("tenantgate_operator_reconciles_total", "").await? > reconciles)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(op.writes_except_leases().await?, writes, "writes at rest:\n{}", op.log_tail(20));
    delete_tenant_and_wait(&client, "labelled", ns, &op).await
}

/// The gateways' NetworkPolicy follows the API server's EndpointSlice
/// (`default/kubernetes`), which the operator watches: an address added to it
/// appears in every tenant's egress rule, and goes when it goes.
#[tokio::test]
async fn the_api_server_egress_rule_follows_the_endpoint_slice() -> anyhow::Result<()> {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};

    let _turn = ONE_OPERATOR.lock().await;
    let client = setup().await?;
    let op = OperatorProcess::start(&client, "operator-endpoints").await?;
    // What the chart's helm test pod runs, against this operator: 200 from /readyz, and a
    // failure (with the status, after its last try) for a path that is not 200.
    let probe = |path: &str| {
        Command::new(workspace_binary("tenantgate-operator"))
            .args(["probe", "--attempts", "2", &format!("{}{path}", op.metrics_url)])
            .output()
    };
    let ok = probe("/readyz")?;
    assert!(ok.status.success(), "probe /readyz: {}", String::from_utf8_lossy(&ok.stderr));
    let missing = probe("/no-such-path")?;
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && said.contains("HTTP 404"), "{said}");
    assert_eq!(said.matches("trying again").count(), 1, "two tries, one retry: {said}");
    let tenant = r#"{"apiVersion":"tenantgate.dev/v1alpha1","kind":"Tenant","metadata":{"name":"apiwatch"},
        "spec":{"auth":{"jwt":{"issuer":"https://idp","audiences":["a"],"jwksUri":"https://idp.example/jwks"}},
        "providers":[{"name":"m","type":"mock"}],"models":[{"name":"chat","targets":[{"provider":"m","model":"x"}]}]}}"#;
    apply_yaml(&client, tenant, None).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    // A control plane that keeps its own slice (most) has one; the local one
    // runs without the API server's endpoint reconciler, so the test makes it.
    let made = match slices.get_opt("kubernetes").await? {
        Some(_) => false,
        None => {
            let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.99.0.2"], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
            }))?;
            slices.create(&Default::default(), &slice).await?;
            true
        }
    };
    let original = slices.get("kubernetes").await?;
    let first = original
        .endpoints
        .iter()
        .flatten()
        .next()
        .and_then(|e| e.addresses.first())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the kubernetes EndpointSlice has no address: {original:?}"))?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "tg-apiwatch");
    let egress = || {
        let policies = policies.clone();
        async move {
            let policy = policies.get_opt("gateway").await?;
            Ok::<_, anyhow::Error>(serde_json::to_string(&policy.and_then(|p| p.spec).and_then(|s| s.egress))?)
        }
    };
    eventually("the API server's address in the egress rule", Duration::from_secs(30), Some(&op), || async {
        Ok(egress().await?.contains(&format!("{first}/")))
    })
    .await?;

    // An API server joins: its address is added to the slice.
    let added = "10.99.0.1";
    let set_extra = |present: bool| {
        let slices = slices.clone();
        async move {
            // The API server may write the slice at the same time: retry a conflict.
            for _ in 0..5 {
                let mut slice = slices.get("kubernetes").await?;
                slice.metadata.managed_fields = None;
                let endpoints = slice.endpoints.get_or_insert_default();
                endpoints.retain(|e| e.addresses.iter().all(|a| a != added));
                if present {
                    endpoints.push(Endpoint {
                        addresses: vec![added.into()],
                        conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
                        ..Default::default()
                    });
                }
                match slices.replace("kubernetes", &Default::default(), &slice).await {
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    other => {
                        other?;
                        return Ok::<_, anyhow::Error>(());
                    }
                }
            }
            anyhow::bail!("the kubernetes EndpointSlice kept changing under the test")
        }
    };
    set_extra(true).await?;
    let followed = eventually("the new address in the egress rule", Duration::from_secs(20), Some(&op), || async {
        Ok(egress().await?.contains(&format!("{added}/32")))
    })
    .await;
    // Put the slice back before anything else can fail (the API server may
    // already have, reconciling its own endpoints).
    set_extra(false).await?;
    followed?;
    eventually("the address gone from the egress rule", Duration::from_secs(20), Some(&op), || async {
        let text = egress().await?;
        Ok(!text.contains(added) && text.contains(&format!("{first}/")))
    })
    .await?;
    if made {
        slices.delete("kubernetes", &DeleteParams::default()).await?;
    }
    delete_tenant_and_wait(&client, "apiwatch", "tg-apiwatch", &op).await
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_dies() -> anyhow::Result<()> {
    let _turn = ONE_OPERATOR.lock().await;
    let client = setup().await?;
    let mut leader = OperatorProcess::start(&client, "leader").await?;
    eventually("the first replica leads", Duration::from_secs(15), Some(&leader), || async {
        Ok(leader.counter("tenantgate_operator_leader", "").await? == 1.0)
    })
    .await?;
    let standby = OperatorProcess::start(&client, "standby").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(standby.counter("tenantgate_operator_leader", "").await?, 0.0, "only one leader");
    let killed = tokio::time::Instant::now();
    leader.kill();
    eventually("the standby takes over", Duration::from_secs(15), Some(&standby), || async {
        Ok(standby.counter("tenantgate_operator_leader", "").await? == 1.0)
    })
    .await?;
    eprintln!("takeover after {:?}", killed.elapsed());
    Ok(())
}

#[tokio::test]
async fn an_api_server_restart_mid_reconcile_converges_without_duplicates_or_orphans() -> anyhow::Result<()> {
    let _turn = ONE_OPERATOR.lock().await;
    let client = setup().await?;
    let op = OperatorProcess::start(&client, "operator-d").await?;
    let n = 20;
    let tenants: Api<Tenant> = Api::all(client.clone());
    for i in 0..n {
        let t = format!(
            r#"{{"apiVersion":"tenantgate.dev/v1alpha1","kind":"Tenant","metadata":{{"name":"restart-{i}"}},
            "spec":{{"auth":{{"jwt":{{"issuer":"https://idp","audiences":["a"],"jwksUri":"https://idp.example/jwks"}}}},
            "providers":[{{"name":"m","type":"mock"}}],"models":[{{"name":"chat","targets":[{{"provider":"m","model":"x"}}]}}]}}}}"#
        );
        apply_yaml(&client, &t, None).await?;
    }
    // Mid-reconcile: the API server goes away for 3 s and comes back.
    let out = Command::new(repo_root().join("e2e/cluster/restart")).args(["kube-apiserver", "3"]).output()?;
    anyhow::ensure!(out.status.success(), "restart: {}", String::from_utf8_lossy(&out.stderr));
    let client = admin_client().await?;
    let tenants_api = tenants.clone();
    // Reconciled, not Ready: after an API server restart the controller-manager
    // can take minutes (ReplicaSet expectations) to roll pods, which is not the
    // operator's to fix; what the operator owes is every stack applied, once.
    eventually("every tenant Reconciled after the restart", Duration::from_secs(180), Some(&op), || {
        let tenants = tenants_api.clone();
        async move {
            let list = tenants.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .filter(|t| t.name_any().starts_with("restart-"))
                .filter(|t| condition(t, "Reconciled").is_some_and(|c| c.0 == "True"))
                .filter(|t| t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation)
                .count()
                == n)
        }
    })
    .await?;
    // Exactly one of each object per tenant namespace: no duplicates, nothing stray.
    for i in 0..n {
        let ns = format!("tg-restart-{i}");
        let lp = ListParams::default().labels("app.kubernetes.io/managed-by=tenantgate-operator");
        assert_eq!(Api::<Deployment>::namespaced(client.clone(), &ns).list(&lp).await?.items.len(), 1, "{ns}");
        let maps = Api::<ConfigMap>::namespaced(client.clone(), &ns).list(&lp).await?.items;
        let mut names: Vec<String> = maps.iter().map(ResourceExt::name_any).collect();
        names.sort();
        assert_eq!(names, ["gateway-config", "gateway-spend"], "{ns}");
        assert_eq!(Api::<Service>::namespaced(client.clone(), &ns).list(&lp).await?.items.len(), 1, "{ns}");
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?;
        assert_eq!(secrets.items.iter().filter(|s| s.name_any() == "gateway-keys").count(), 1, "{ns}");
    }
    for i in 0..n {
        tenants.delete(&format!("restart-{i}"), &DeleteParams::background()).await?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually("every namespace goes with its tenant", Duration::from_secs(120), Some(&op), || {
        let namespaces = namespaces.clone();
        async move {
            let list = namespaces.list(&ListParams::default()).await?;
            Ok(!list.items.iter().any(|ns| ns.name_any().starts_with("tg-restart-")))
        }
    })
    .await
}

/// What the operator does with each resource, and why. The chart must grant
/// exactly this: nothing missing (the operator runs as the chart's account in
/// every test here), nothing more.
const NEEDED: &[(&str, &str, &[&str])] = &[
    // Watches Tenants, McpConnections, PromptPolicies and ModelPrices; writes only their status.
    ("tenantgate.dev", "tenants", &["list", "watch"]),
    ("tenantgate.dev", "mcpconnections", &["list", "watch"]),
    ("tenantgate.dev", "promptpolicies", &["list", "watch"]),
    ("tenantgate.dev", "modelprices", &["list", "watch"]),
    ("tenantgate.dev", "apikeys", &["list", "watch"]),
    ("tenantgate.dev", "apikeys/status", &["patch"]),
    ("tenantgate.dev", "tenants/status", &["patch"]),
    ("tenantgate.dev", "modelprices/status", &["patch"]),
    // get is never used, but held: the gateways' Roles grant it and RBAC lets the operator grant only what it holds.
    ("tenantgate.dev", "mcpconnections/status", &["get", "patch"]),
    ("tenantgate.dev", "promptpolicies/status", &["patch"]),
    // Server-side apply creates what does not exist yet: patch and create.
    ("", "namespaces", &["list", "watch", "create", "patch"]),
    // Watched as metadata; gateway-keys and each ApiKey's key (one Secret per rotation) created once.
    ("", "secrets", &["list", "watch", "create"]),
    ("", "configmaps", &["list", "watch", "create", "patch", "delete"]),
    ("", "services", &["list", "watch", "create", "patch", "delete"]),
    ("", "serviceaccounts", &["list", "watch", "create", "patch", "delete"]),
    // The gateway's data volume (spec.storage.volume.size).
    ("", "persistentvolumeclaims", &["list", "watch", "create", "patch", "delete"]),
    // The gateway's Role and RoleBinding (McpConnection status) in each tenant namespace.
    ("rbac.authorization.k8s.io", "roles", &["list", "watch", "create", "patch", "delete"]),
    ("rbac.authorization.k8s.io", "rolebindings", &["list", "watch", "create", "patch", "delete"]),
    ("apps", "deployments", &["list", "watch", "create", "patch", "delete"]),
    ("autoscaling", "horizontalpodautoscalers", &["list", "watch", "create", "patch", "delete"]),
    ("policy", "poddisruptionbudgets", &["list", "watch", "create", "patch", "delete"]),
    ("networking.k8s.io", "networkpolicies", &["list", "watch", "create", "patch", "delete"]),
    ("networking.k8s.io", "ingresses", &["list", "watch", "create", "patch", "delete"]),
    ("gateway.networking.k8s.io", "httproutes", &["list", "watch", "create", "patch", "delete"]),
    ("monitoring.coreos.com", "servicemonitors", &["list", "watch", "create", "patch", "delete"]),
    // Warning Events on Tenants.
    ("events.k8s.io", "events", &["create", "patch"]),
    // The API server's endpoints, watched (a Role in default, for that one object by resourceNames:
    // the watch asks for metadata.name=kubernetes, which RBAC matches against them).
    ("discovery.k8s.io", "endpointslices", &["get", "list", "watch"]),
    // Leader election (namespaced Role).
    ("coordination.k8s.io", "leases", &["get", "create", "patch"]),
];

fn chart_grants() -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut granted = std::collections::BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&chart_manifests()?) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if !matches!(v["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        for rule in v["rules"].as_array().into_iter().flatten() {
            for g in rule["apiGroups"].as_array().into_iter().flatten() {
                for r in rule["resources"].as_array().into_iter().flatten() {
                    for verb in rule["verbs"].as_array().into_iter().flatten() {
                        granted.insert(format!(
                            "{}/{}:{}",
                            g.as_str().unwrap_or(""),
                            r.as_str().unwrap_or(""),
                            verb.as_str().unwrap_or("")
                        ));
                    }
                }
            }
        }
    }
    Ok(granted)
}

#[tokio::test]
async fn the_chart_grants_exactly_what_the_operator_uses() -> anyhow::Result<()> {
    let _turn = ONE_OPERATOR.lock().await;
    let needed: std::collections::BTreeSet<String> =
        NEEDED.iter().flat_map(|(g, r, verbs)| verbs.iter().map(move |v| format!("{g}/{r}:{v}"))).collect();
    assert_eq!(chart_grants()?, needed, "the chart's RBAC differs from what the operator needs");
    // And what a real run uses is inside it: run the quickstart and read the request metrics.
    let client = setup().await?;
    let op = OperatorProcess::start(&client, "operator-rbac").await?;
    kubectl(&["apply", "-f", &repo_root().join("manifests/examples/quickstart").display().to_string()])?;
    wait_ready(&client, "quickstart", &op).await?;
    let metrics = op.metrics().await?;
    let mut used = std::collections::BTreeSet::new();
    for line in metrics.lines().filter(|l| l.starts_with("tenantgate_operator_api_requests_total{")) {
        let label =
            |k: &str| line.split(&format!("{k}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string();
        used.insert((label("resource"), label("verb")));
    }
    assert!(used.len() >= 10, "{used:?}");
    for (resource, verb) in used.iter().filter(|(r, _)| r != "discovery") {
        // (discovery is open to every authenticated user through system:discovery)
        assert!(
            NEEDED.iter().any(|(_, r, verbs)| r == resource && verbs.contains(&verb.as_str())),
            "the operator used {verb} on {resource}, which NEEDED does not list"
        );
    }
    delete_tenant_and_wait(&client, "quickstart", "tg-quickstart", &op).await
}

/// The ApiKey `ci` of the tenant `keys`, as a test reads it back.
async fn api_key_state(client: &Client) -> anyhow::Result<(Option<String>, Option<ApiKey>, Option<GatewayConfig>)> {
    let ns = "tg-keys";
    let key = Api::<ApiKey>::namespaced(client.clone(), ns).get_opt("ci").await?;
    // The Secret the ApiKey names (the status may lag the spec: only one of the current rotation).
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let secret = match key.as_ref().and_then(|k| k.status.as_ref()?.secret_name.clone()) {
        Some(name) if key.as_ref().is_some_and(|k| k.secret_name() == name) => secrets.get_opt(&name).await?,
        _ => None,
    };
    let value =
        secret.and_then(|s| s.data).and_then(|d| d.get("apiKey").map(|v| String::from_utf8_lossy(&v.0).into_owned()));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt("gateway-config").await?;
    let config = match cm.as_ref().and_then(|c| c.data.as_ref()).and_then(|d| d.get("config.yaml")) {
        Some(text) => Some(GatewayConfig::from_yaml(text)?),
        None => None,
    };
    Ok((value, key, config))
}

fn key_ready(key: &ApiKey) -> bool {
    key.status.as_ref().is_some_and(|s| {
        s.observed_generation == key.metadata.generation
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Everything of the tenant's namespace where a key's value must never appear:
/// the ConfigMap, the ApiKey's status and every Event.
async fn where_values_must_not_be(client: &Client) -> anyhow::Result<String> {
    let ns = "tg-keys";
    let mut text = String::new();
    for cm in Api::<ConfigMap>::namespaced(client.clone(), ns).list(&ListParams::default()).await? {
        text.push_str(&serde_json::to_string(&cm.data)?);
    }
    for k in Api::<ApiKey>::namespaced(client.clone(), ns).list(&ListParams::default()).await? {
        text.push_str(&serde_json::to_string(&k.status)?);
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    for e in events.list(&ListParams::default()).await? {
        text.push_str(&serde_json::to_string(&e)?);
    }
    Ok(text)
}

/// Applies the tenant `name` that takes API keys alone (no JWT settings) and waits for its
/// namespace, `tg-<name>`.
async fn keys_only_tenant(client: &Client, name: &str, op: &OperatorProcess) -> anyhow::Result<()> {
    apply_yaml(
        client,
        &format!("apiVersion: tenantgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec:\n  auth: {{apiKeys: {{enabled: true}}}}\n  providers: [{{name: m, type: mock}}]\n  models: [{{name: chat, targets: [{{provider: m, model: x}}]}}]\n"),
        None,
    )
    .await?;
    let ns = format!("tg-{name}");
    eventually("the tenant namespace", Duration::from_secs(60), Some(op), || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { Ok(Api::<Namespace>::all(client).get_opt(&ns).await?.is_some()) }
    })
    .await
}

#[tokio::test]
async fn api_keys_are_generated_rotated_and_revoked_and_their_value_stays_in_their_secret() -> anyhow::Result<()> {
    let _turn = ONE_OPERATOR.lock().await;
    let client = setup().await?;
    let op = OperatorProcess::start(&client, "operator-keys").await?;
    let ns = "tg-keys";
    keys_only_tenant(&client, "keys", &op).await?;
    let api_key = |rotation: &str| {
        format!(
            "apiVersion: tenantgate.dev/v1alpha1\nkind: ApiKey\nmetadata: {{name: ci, namespace: {ns}}}\nspec: {{roles: [dev], allowedModels: [chat], expiresAt: '2030-01-01T00:00:00Z', ipAllowList: [10.0.0.0/8], rotation: '{rotation}'}}\n"
        )
    };
    apply_yaml(&client, &api_key("1"), None).await?;

    // The key appears in its Secret, its hash in the config, and the ApiKey says Ready.
    eventually("the key generated, in the config and Ready", Duration::from_secs(60), Some(&op), || {
        let client = client.clone();
        async move {
            let (value, key, config) = api_key_state(&client).await?;
            let in_config = config.is_some_and(|c| c.auth.declared_api_keys.iter().any(|k| k.name == "ci"));
            Ok(value.is_some() && in_config && key.as_ref().is_some_and(key_ready))
        }
    })
    .await?;
    let (value, key, config) = api_key_state(&client).await?;
    let (value, key) = (value.expect("value"), key.expect("ApiKey"));
    let declared = config.expect("config").auth.declared_api_keys.into_iter().find(|k| k.name == "ci").expect("ci");
    assert!(value.starts_with("tg_") && value.len() > 50, "same format as admin-minted keys");
    let prefix = tenantgate_crds::api_key::key_prefix(&value).expect("well-formed").to_owned();
    assert_eq!(declared.hash, tenantgate_crds::api_key::declared_hash(&value), "the config holds the key's hash");
    assert_eq!(declared.prefix, prefix);
    assert_eq!(declared.subject, "apikey:ci");
    assert_eq!(declared.allowed_models, ["chat"]);
    assert_eq!(declared.ip_allow_list, ["10.0.0.0/8"]);
    let status = key.status.clone().expect("status");
    assert_eq!(status.prefix.as_deref(), Some(prefix.as_str()));
    let first_secret = key.secret_name();
    assert_eq!(status.secret_name.as_deref(), Some(first_secret.as_str()));
    assert_eq!(status.tenant.as_deref(), Some("keys"));
    let secret = Api::<Secret>::namespaced(client.clone(), ns).get(&first_secret).await?;
    assert_eq!(secret.immutable, Some(true));
    let owner = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owner.first().map(|o| (o.kind.as_str(), o.uid.as_str())),
        Some(("ApiKey", key.uid().unwrap_or_default().as_str()))
    );
    // The whole secret part: base64url may hold `_`, so never only what follows the last one.
    let secret_part = tenantgate_crds::api_key::key_secret(&value).expect("secret part").to_owned();
    let seen = where_values_must_not_be(&client).await?;
    assert!(!seen.contains(&secret_part), "the key's value is in the ConfigMap, a status or an Event");
    assert!(seen.contains("KeyGenerated") && seen.contains(&prefix), "an Event names the new key by its prefix");
    assert!(
        !std::fs::read_to_string(op.log_path())?.contains(&secret_part),
        "the key's value is in the operator's log"
    );
    let listing = kubectl(&["get", "apikeys", "-n", ns])?;
    for column in ["TENANT", "SUBJECT", "PREFIX", "EXPIRES", "READY", "AGE", "apikey:ci", prefix.as_str(), "True"] {
        assert!(listing.contains(column), "{column} not in:\n{listing}");
    }
    // At rest: no new key on a reconcile (the Secret is not rewritten).
    let version = secret.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = Api::<Secret>::namespaced(client.clone(), ns).get(&first_secret).await?;
    assert_eq!(again.metadata.resource_version, version, "the Secret was rewritten without a rotation");

    // Rotation: a new value and a new hash; the old hash leaves the config.
    apply_yaml(&client, &api_key("2"), None).await?;
    eventually("a new key after the rotation", Duration::from_secs(60), Some(&op), || {
        let client = client.clone();
        let (old_value, old_hash) = (value.clone(), declared.hash.clone());
        async move {
            let (new_value, key, config) = api_key_state(&client).await?;
            let old_gone = config.is_some_and(|c| c.auth.declared_api_keys.iter().all(|k| k.hash != old_hash));
            Ok(new_value.is_some_and(|v| v != old_value) && old_gone && key.as_ref().is_some_and(key_ready))
        }
    })
    .await?;
    let (new_value, key, config) = api_key_state(&client).await?;
    let (new_value, key) = (new_value.expect("value"), key.expect("ApiKey"));
    let hashes: Vec<String> = config.expect("config").auth.declared_api_keys.into_iter().map(|k| k.hash).collect();
    assert_eq!(hashes, [tenantgate_crds::api_key::declared_hash(&new_value)]);
    // A Secret of its own: the operator only creates Secrets, never rewrites one.
    let new_secret = key.secret_name();
    assert_ne!(new_secret, first_secret);
    assert_eq!(key.status.as_ref().and_then(|s| s.secret_name.as_deref()), Some(new_secret.as_str()));
    let old = Api::<Secret>::namespaced(client.clone(), ns).get(&first_secret).await?;
    assert_eq!(old.metadata.resource_version, version, "the old key's Secret is left as it was");
    let new_prefix = tenantgate_crds::api_key::key_prefix(&new_value).expect("well-formed");
    assert_eq!(key.status.as_ref().and_then(|s| s.prefix.as_deref()), Some(new_prefix));
    let seen = where_values_must_not_be(&client).await?;
    assert!(!seen.contains(tenantgate_crds::api_key::key_secret(&new_value).expect("secret")), "the new value leaked");
    assert!(seen.contains("KeyRotated"), "the rotation is an Event");
    assert!(
        !std::fs::read_to_string(op.log_path())?
            .contains(tenantgate_crds::api_key::key_secret(&new_value).expect("secret"))
    );

    // Deletion revokes: the key leaves the config and its Secret goes with it.
    kubectl(&["delete", "apikey", "ci", "-n", ns, "--wait=true", "--timeout=60s"])?;
    eventually("the key gone from the config and its Secrets deleted", Duration::from_secs(90), Some(&op), || {
        let client = client.clone();
        let names = [first_secret.clone(), new_secret.clone()];
        async move {
            let (_, _, config) = api_key_state(&client).await?;
            let secrets = Api::<Secret>::namespaced(client.clone(), ns);
            let mut left = 0;
            for name in &names {
                left += usize::from(secrets.get_opt(name).await?.is_some());
            }
            Ok(left == 0 && config.is_some_and(|c| c.auth.declared_api_keys.is_empty()))
        }
    })
    .await?;
    delete_tenant_and_wait(&client, "keys", ns, &op).await
}

#[tokio::test]
async fn api_key_spend_reaches_its_status_and_a_malformed_entry_does_not() -> anyhow::Result<()> {
    let _turn = ONE_OPERATOR.lock().await;
    let client = setup().await?;
    let op = OperatorProcess::start(&client, "operator-key-spend").await?;
    let ns = "tg-keyspend";
    keys_only_tenant(&client, "keyspend", &op).await?;
    let api_key = |name: &str, budget: &str| {
        format!(
            "apiVersion: tenantgate.dev/v1alpha1\nkind: ApiKey\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{roles: [dev]{budget}}}\n"
        )
    };
    apply_yaml(&client, &api_key("ci", ", budget: {amount: '50'}"), None).await?;
    apply_yaml(&client, &api_key("ops", ", budget: {amount: '20', period: Day}"), None).await?;
    let keys: Api<ApiKey> = Api::namespaced(client.clone(), ns);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually("both keys Ready and the spend map made", Duration::from_secs(60), Some(&op), || {
        let (keys, maps) = (keys.clone(), maps.clone());
        async move {
            let ready = keys.list(&ListParams::default()).await?.items.iter().filter(|k| key_ready(k)).count();
            Ok(ready == 2 && maps.get_opt("gateway-spend").await?.is_some())
        }
    })
    .await?;
    // As the gateway publishes: its own field manager, every entry in one apply.
    let publish = |ci: &str, updated_at: &str| {
        let maps = maps.clone();
        let data = serde_json::json!({
            "apikey.ci": ci,
            "apikey.ops": r#"{"amount":"20","currency":"USD","spent":"3","window":"2026-12-06"}"#,
            "updatedAt": updated_at,
        });
        async move {
            let map = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": data});
            maps.patch("gateway-spend", &PatchParams::apply("tenantgate-gateway").force(), &Patch::Apply(&map)).await
        }
    };
    let budget_of = |name: &'static str| {
        let keys = keys.clone();
        async move { anyhow::Ok(keys.get(name).await?.status.and_then(|s| s.budget)) }
    };

    // A malformed entry is refused; the well-formed one beside it reaches its key's status.
    publish(r#"{"amount":"50","currency":"USD","spent":"<b>lots</b>","window":"2026-12"}"#, "2026-12-06T12:00:00Z")
        .await?;
    eventually("ops's published spend reaches its status", Duration::from_secs(15), Some(&op), || async {
        Ok(budget_of("ops").await?.is_some_and(|b| (b.spent.as_str(), b.window.as_str()) == ("3", "2026-12-06")))
    })
    .await?;
    assert_eq!(budget_of("ci").await?, None, "a malformed entry is not copied");

    // Well-formed: copied, and shown in the columns.
    publish(r#"{"amount":"50","currency":"USD","spent":"12.5","window":"2026-12"}"#, "2026-12-06T12:00:30Z").await?;
    eventually("ci's published spend reaches its status", Duration::from_secs(15), Some(&op), || async {
        Ok(budget_of("ci").await?.is_some())
    })
    .await?;
    let ci = budget_of("ci").await?.expect("ci's budget");
    assert_eq!(
        (ci.amount.as_str(), ci.spent.as_str(), ci.currency.as_str(), ci.window.as_str()),
        ("50", "12.5", "USD", "2026-12")
    );
    assert_eq!(ci.updated_at.as_deref(), Some("2026-12-06T12:00:30Z"));
    let listing = kubectl(&["get", "apikeys", "-n", ns])?;
    let header = listing.lines().next().unwrap_or_default();
    assert!(header.contains("SPENT") && header.contains("BUDGET"), "{listing}");
    assert!(listing.lines().any(|l| l.starts_with("ci ") && l.contains("12.5") && l.contains("50")), "{listing}");
    // ops's figures did not change: its status was not rewritten, and still dates them by their first publication.
    let ops = keys.get("ops").await?;
    assert_eq!(
        ops.status.as_ref().and_then(|s| s.budget.as_ref()).and_then(|b| b.updated_at.as_deref()),
        Some("2026-12-06T12:00:00Z")
    );
    let ops_version = ops.resource_version();

    // The budget gone from the spec: status.budget cleared, though the map still has the entry.
    apply_yaml(&client, &api_key("ci", ""), None).await?;
    eventually("ci's status.budget cleared with its spec.budget", Duration::from_secs(15), Some(&op), || async {
        Ok(budget_of("ci").await?.is_none())
    })
    .await?;
    assert_eq!(keys.get("ops").await?.resource_version(), ops_version, "ops's status rewritten for nothing");
    delete_tenant_and_wait(&client, "keyspend", ns, &op).await
}
