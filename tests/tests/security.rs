//! The operator side of the security suite: the chart's RBAC grants exactly
//! what the operator uses, and a tenant's gateway ServiceAccount, as the
//! operator renders it, cannot read another tenant's Secrets (checked as that
//! ServiceAccount against the real API server). Pod Security `restricted` for
//! every rendered pod is `chart.rs`'s `every_rendered_pod_passes_restricted`.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tenantgate_crds::v1alpha1::{BudgetStatus, McpConnection};
use tenantgate_gateway_core::auth::declared_key_id;
use tenantgate_gateway_core::config::ApiCopy;
use tenantgate_gateway_core::limits::alerts::{self, Alerts};
use tenantgate_gateway_core::limits::{BudgetState, Period, Scope};
use tenantgate_tests::operator::workspace_binary;
use tenantgate_tests::*;

/// What the operator does, by (API group, resource, verb): its controllers
/// list and watch what they own and read, apply (patch) what they build,
/// create Namespaces and the one generated Secret, delete objects a tenant no
/// longer needs, patch status, record Events, and hold the leader Lease.
/// Changing what the operator does means changing this list and the chart together.
const OPERATOR_USES: &[(&str, &[&str], &[&str])] = &[
    ("tenantgate.dev", &["tenants", "mcpconnections", "promptpolicies", "modelprices", "apikeys"], &["list", "watch"]),
    (
        "tenantgate.dev",
        &["tenants/status", "mcpconnections/status", "promptpolicies/status", "modelprices/status", "apikeys/status"],
        &["patch"],
    ),
    // Held to grant it to the gateways (RBAC forbids granting more than one holds).
    ("tenantgate.dev", &["mcpconnections/status"], &["get"]),
    ("rbac.authorization.k8s.io", &["roles", "rolebindings"], &["list", "watch", "create", "patch", "delete"]),
    // The `kubernetes` EndpointSlice in default (resourceNames: that one), watched.
    ("discovery.k8s.io", &["endpointslices"], &["get", "list", "watch"]),
    ("", &["namespaces"], &["list", "watch", "create", "patch"]),
    // Secrets: watched (metadata only) for the ones configs reference; gateway-keys and each
    // ApiKey's key (one Secret per rotation) are created once, never read or updated.
    ("", &["secrets"], &["list", "watch", "create"]),
    ("", &["configmaps", "services", "serviceaccounts"], &["list", "watch", "create", "patch", "delete"]),
    ("", &["persistentvolumeclaims"], &["list", "watch", "create", "patch", "delete"]),
    ("apps", &["deployments"], &["list", "watch", "create", "patch", "delete"]),
    ("autoscaling", &["horizontalpodautoscalers"], &["list", "watch", "create", "patch", "delete"]),
    ("policy", &["poddisruptionbudgets"], &["list", "watch", "create", "patch", "delete"]),
    ("networking.k8s.io", &["networkpolicies", "ingresses"], &["list", "watch", "create", "patch", "delete"]),
    ("gateway.networking.k8s.io", &["httproutes"], &["list", "watch", "create", "patch", "delete"]),
    ("monitoring.coreos.com", &["servicemonitors"], &["list", "watch", "create", "patch", "delete"]),
    ("events.k8s.io", &["events"], &["create", "patch"]),
    ("coordination.k8s.io", &["leases"], &["get", "create", "patch"]),
];

type Grant = (String, String, String);

fn expand(group: &str, resources: &[&str], verbs: &[&str], into: &mut BTreeSet<Grant>) {
    for r in resources {
        for v in verbs {
            into.insert((group.to_string(), (*r).to_string(), (*v).to_string()));
        }
    }
}

/// Every (group, resource, verb) the chart's Roles and ClusterRoles grant.
fn chart_grants() -> anyhow::Result<BTreeSet<Grant>> {
    let text = std::fs::read_to_string(repo_root().join("charts/tenantgate/templates/rbac.yaml"))?;
    // Template lines (labels, names) carry no rules: drop them so the rest parses as YAML.
    let plain: String = text.lines().filter(|l| !l.contains("{{")).map(|l| format!("{l}\n")).collect();
    let mut grants = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&plain) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if !matches!(value["kind"].as_str(), Some("Role" | "ClusterRole")) {
            continue;
        }
        for rule in value["rules"].as_array().into_iter().flatten() {
            let strings = |key: &str| -> Vec<String> {
                rule[key].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
            };
            // resourceNames narrow a get, and a list or watch only when it asks for one
            // name (fieldSelector metadata.name=...), as the operator's watch does.
            let named = !strings("resourceNames").is_empty();
            assert!(
                !named || strings("verbs").iter().all(|v| ["get", "list", "watch"].contains(&v.as_str())),
                "resourceNames on more than get, list and watch: {rule}"
            );
            assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
            for group in strings("apiGroups") {
                let resources = strings("resources");
                let verbs = strings("verbs");
                assert!(!verbs.iter().any(|v| v == "*") && !resources.iter().any(|r| r == "*"), "wildcard in {rule}");
                let resources: Vec<&str> = resources.iter().map(String::as_str).collect();
                let verbs: Vec<&str> = verbs.iter().map(String::as_str).collect();
                expand(&group, &resources, &verbs, &mut grants);
            }
        }
    }
    Ok(grants)
}

#[test]
fn the_chart_grants_exactly_what_the_operator_uses() -> anyhow::Result<()> {
    let mut uses = BTreeSet::new();
    for (group, resources, verbs) in OPERATOR_USES {
        expand(group, resources, verbs, &mut uses);
    }
    let grants = chart_grants()?;
    let extra: Vec<_> = grants.difference(&uses).collect();
    let missing: Vec<_> = uses.difference(&grants).collect();
    assert!(extra.is_empty(), "the chart grants more than the operator uses: {extra:?}");
    assert!(missing.is_empty(), "the chart lacks what the operator uses: {missing:?}");
    // Secrets: never update or delete (patch only writes the Secrets generated for ApiKeys, which
    // garbage collection deletes with them; get reads no more than list already does).
    for verb in ["update", "delete"] {
        assert!(!grants.contains(&(String::new(), "secrets".into(), verb.into())), "secrets {verb}");
    }
    Ok(())
}

fn tenant_yaml(name: &str, namespace: &str) -> String {
    format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{ name: {name} }}\nspec:\n  namespace: {namespace}\n  auth:\n    jwt: {{ issuer: 'https://idp.example', audiences: [tenantgate], jwksUri: 'https://idp.example/jwks.json' }}\n  providers: [ {{ name: mock, type: mock }} ]\n  models: [ {{ name: chat, targets: [ {{ provider: mock, model: m }} ] }} ]\n"
    )
}

#[tokio::test]
async fn a_tenant_gateway_cannot_read_another_tenants_secrets() -> anyhow::Result<()> {
    let admin = admin_client().await?;
    let (a, b) = (unique_name("sec-a"), unique_name("sec-b"));
    let dir = std::env::temp_dir().join(unique_name("sec-render"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tenants.yaml"), format!("{}---\n{}", tenant_yaml(&a, &a), tenant_yaml(&b, &b)))?;
    let out = std::process::Command::new(workspace_binary("tenantgate-operator"))
        .args(["render", "-f"])
        .arg(&dir)
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "render: {}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8(out.stdout)?;
    // Apply what gives the gateway its identity and rights: namespaces, ServiceAccounts and any RBAC.
    let mut identity = String::new();
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let mut value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        // Owned by a Tenant that is not in this cluster: the ownership is not what is tested.
        if let Some(meta) = value["metadata"].as_object_mut() {
            meta.remove("ownerReferences");
        }
        if kind == "Namespace" {
            value["metadata"]["labels"][TEST_LABEL] = "true".into();
        }
        if matches!(
            kind.as_str(),
            "Namespace" | "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
        ) {
            identity.push_str(&format!("---\n{}\n", serde_json::to_string(&value)?));
        }
    }
    assert!(identity.contains("\"ServiceAccount\""), "the render has no ServiceAccount: {rendered}");
    apply_yaml(&admin, &identity, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "provider-key"}, "stringData": {"apiKey": "sk-tenant-b-secret"}
    }))?;
    Api::<Secret>::namespaced(admin.clone(), &b).create(&PostParams::default(), &secret).await?;
    Api::<Secret>::namespaced(admin.clone(), &a).create(&PostParams::default(), &secret).await?;

    let gateway_a = client_as_service_account(&admin, &a, "gateway").await?;
    let forbidden = |r: Result<_, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        Ok(_) => Err(anyhow::anyhow!("tenant {a}'s gateway could {what}")),
        Err(e) => Err(anyhow::anyhow!("{what}: expected 403, got {e}")),
    };
    let theirs: Api<Secret> = Api::namespaced(gateway_a.clone(), &b);
    forbidden(theirs.get("provider-key").await.map(drop), "get another tenant's Secret")?;
    forbidden(theirs.list(&ListParams::default()).await.map(drop), "list another tenant's Secrets")?;
    forbidden(Api::<Secret>::all(gateway_a.clone()).list(&ListParams::default()).await.map(drop), "list all Secrets")?;
    // Its own Secrets reach it as mounted files, never through the API.
    forbidden(
        Api::<Secret>::namespaced(gateway_a.clone(), &a).get("provider-key").await.map(drop),
        "read its own Secret via the API",
    )?;
    // Control: the Secret is there for someone allowed to read it.
    assert!(Api::<Secret>::namespaced(admin.clone(), &b).get("provider-key").await.is_ok());

    // What it may do: patch McpConnection status in its own namespace (status.driftedTools), nowhere else.
    install_crds(&admin).await?;
    let connection: McpConnection = serde_json::from_value(serde_json::json!({
        "apiVersion": "tenantgate.dev/v1alpha1", "kind": "McpConnection",
        "metadata": {"name": "tools"}, "spec": {"transport": "streamableHttp", "url": "https://mcp.example/mcp"},
    }))?;
    for ns in [&a, &b] {
        Api::<McpConnection>::namespaced(admin.clone(), ns).create(&PostParams::default(), &connection).await?;
    }
    let status = serde_json::json!({"apiVersion": "tenantgate.dev/v1alpha1", "kind": "McpConnection",
        "status": {"driftedTools": ["search"]}});
    let params = PatchParams::apply("tenantgate-gateway").force();
    let own: Api<McpConnection> = Api::namespaced(gateway_a.clone(), &a);
    let patched = own.patch_status("tools", &params, &Patch::Apply(&status)).await?;
    assert_eq!(patched.status.map(|s| s.drifted_tools), Some(vec!["search".to_string()]));
    let other: Api<McpConnection> = Api::namespaced(gateway_a.clone(), &b);
    forbidden(
        other.patch_status("tools", &params, &Patch::Apply(&status)).await.map(drop),
        "patch another tenant's McpConnection status",
    )?;
    forbidden(own.patch("tools", &params, &Patch::Apply(&status)).await.map(drop), "patch an McpConnection's spec")?;
    forbidden(own.list(&ListParams::default()).await.map(drop), "list McpConnections")?;

    // Budget alerts: the gateway creates its tenant's and its ApiKeys' Events in its own namespace.
    // Two replicas seeing the same crossing make one Event between them (its name is the object,
    // the window and the threshold).
    let state = BudgetState {
        scope: Scope::Tenant,
        id: String::new(),
        limit: 100_000_000_000,
        spent: 81_000_000_000,
        period: Period::Month,
        window: 2026 * 12 + 11,
        resets_in: std::time::Duration::from_secs(3_600),
    };
    // An ApiKey named like its tenant: its Event is its own.
    let key = BudgetState {
        scope: Scope::Key,
        id: declared_key_id(&a),
        limit: 10_000_000_000,
        spent: 9_000_000_000,
        ..state.clone()
    };
    for _replica in 0..2 {
        let alerts = Alerts::new(&a, Some((&a, gateway_a.clone())));
        assert_eq!(alerts.check(&state, &[50, 80, 95], "USD").await, [50, 80]);
        assert_eq!(alerts.check(&key, &[80, 95], "USD").await, [80]);
    }
    let events: Vec<Event> = Api::<Event>::namespaced(admin.clone(), &a).list(&ListParams::default()).await?.items;
    let mut names: Vec<_> = events.iter().filter_map(|e| e.metadata.name.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        [format!("{a}.apikey-budget.2026-12.80"), format!("{a}.budget.2026-12.50"), format!("{a}.budget.2026-12.80")]
    );
    let named = |name: &str| events.iter().find(|e| e.metadata.name.as_deref() == Some(name)).expect(name);
    let eighty = named(&format!("{a}.budget.2026-12.80"));
    assert_eq!(eighty.reason.as_deref(), Some("BudgetThreshold"));
    assert_eq!(eighty.related.as_ref().and_then(|r| r.name.as_deref()), Some(a.as_str()), "related to the Tenant");
    assert_eq!(eighty.regarding.as_ref().and_then(|r| r.name.as_deref()), Some("gateway"));
    assert!(eighty.note.as_deref().is_some_and(|n| n.contains("is 80% spent: 81 USD in 2026-12")), "{eighty:?}");
    let of_key = named(&format!("{a}.apikey-budget.2026-12.80"));
    let regarding = of_key.regarding.as_ref().map(|r| (r.kind.as_deref(), r.name.as_deref(), r.namespace.as_deref()));
    assert_eq!(regarding, Some((Some("ApiKey"), Some(a.as_str()), Some(a.as_str()))));
    assert_eq!(of_key.related.as_ref().and_then(|r| r.kind.as_deref()), Some("Tenant"));
    assert!(of_key.note.as_deref().is_some_and(|n| n.contains("'s budget of 10 USD")), "{of_key:?}");
    // As docs/api-keys.md tells a tenant admin to look for it.
    let listed =
        std::process::Command::new("kubectl").args(["events", "-n", &a, "--for", &format!("apikey/{a}")]).output()?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("BudgetThreshold") && listed.contains("80% spent"), "{listed}");
    assert!(!listed.contains("81 USD"), "only the key's Event: {listed}");
    let event = alerts::event(&a, &b, "gw", &state, 95, "x".into()).expect("the tenant's Event");
    forbidden(
        Api::<Event>::namespaced(gateway_a.clone(), &b).create(&PostParams::default(), &event).await.map(drop),
        "create an Event in another tenant's namespace",
    )?;
    let theirs = Api::<Event>::namespaced(gateway_a.clone(), &a);
    forbidden(theirs.list(&ListParams::default()).await.map(drop), "list Events")?;
    forbidden(theirs.delete(&names[0], &DeleteParams::default()).await.map(drop), "delete an Event")?;

    // Spend: the gateway patches the gateway-spend ConfigMap (the operator makes it), no other.
    for ns in [&a, &b] {
        let map: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": alerts::SPEND_MAP}}))?;
        Api::<ConfigMap>::namespaced(admin.clone(), ns).create(&PostParams::default(), &map).await?;
    }
    let alerts = Alerts::new(&a, Some((&a, gateway_a.clone())));
    assert!(!alerts.publish(&[], "USD").await, "nothing to publish: no write");
    let both = [state.clone(), key.clone()];
    assert!(alerts.publish(&both, "USD").await, "published");
    assert!(!alerts.publish(&both, "USD").await, "unchanged: not written again");
    let spend_data = || async {
        let map = Api::<ConfigMap>::namespaced(admin.clone(), &a).get(alerts::SPEND_MAP).await?;
        anyhow::Ok(map.data.unwrap_or_default())
    };
    let data = spend_data().await?;
    let published = BudgetStatus::from_data(&data);
    assert_eq!(published.map(|s| (s.spent, s.window)), Some(("81".into(), "2026-12".into())));
    let keys = tenantgate_crds::spend::api_key_budgets(&data);
    assert_eq!(keys.get(&a).map(|s| (s.amount.as_str(), s.spent.as_str())), Some(("10", "9")));
    // Each apply replaces what the manager applied before: another replica's apply without the
    // key drops its entry. That is why every apply carries every budget.
    assert!(Alerts::new(&a, Some((&a, gateway_a.clone()))).publish(std::slice::from_ref(&state), "USD").await);
    let data = spend_data().await?;
    assert!(tenantgate_crds::spend::api_key_budgets(&data).is_empty(), "{data:?}");
    assert!(BudgetStatus::from_data(&data).is_some());
    let write = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"x": "y"}});
    let own_maps: Api<ConfigMap> = Api::namespaced(gateway_a.clone(), &a);
    forbidden(own_maps.patch("gateway-config", &params, &Patch::Apply(&write)).await.map(drop), "patch its config")?;
    forbidden(
        Api::<ConfigMap>::namespaced(gateway_a.clone(), &b)
            .patch(alerts::SPEND_MAP, &params, &Patch::Apply(&write))
            .await
            .map(drop),
        "patch another tenant's spend",
    )?;
    forbidden(own_maps.get(alerts::SPEND_MAP).await.map(drop), "read a ConfigMap")?;

    // Its config: watched through the API server (that one ConfigMap, by name), changes seen in seconds.
    let config_map = |text: &str| -> anyhow::Result<ConfigMap> {
        Ok(serde_json::from_value(
            serde_json::json!({"metadata": {"name": "gateway-config"}, "data": {"config.yaml": text}}),
        )?)
    };
    for ns in [&a, &b] {
        Api::<ConfigMap>::namespaced(admin.clone(), ns).create(&PostParams::default(), &config_map("first")?).await?;
    }
    let copy = ApiCopy::start(gateway_a.clone(), &a, "gateway-config", "config.yaml");
    let delivered = |want: &'static str| {
        let copy = copy.clone();
        async move {
            for _ in 0..600 {
                if copy.latest().as_deref() == Some(want) {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(anyhow::anyhow!("the gateway's watch never delivered {want:?}: {:?}", copy.latest()))
        }
    };
    delivered("first").await?;
    let replace = PatchParams::apply("tenantgate-test").force();
    Api::<ConfigMap>::namespaced(admin.clone(), &a)
        .patch(
            "gateway-config",
            &replace,
            &Patch::Apply(
                &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"config.yaml": "second"}}),
            ),
        )
        .await?;
    delivered("second").await?;
    let named = ListParams::default().fields("metadata.name=gateway-config");
    forbidden(own_maps.list(&ListParams::default()).await.map(drop), "list its namespace's ConfigMaps")?;
    forbidden(
        Api::<ConfigMap>::namespaced(gateway_a.clone(), &b).list(&named).await.map(drop),
        "list another tenant's config",
    )?;

    for ns in [&a, &b] {
        Api::<Namespace>::all(admin.clone()).delete(ns, &DeleteParams::background()).await?;
    }
    Ok(())
}
