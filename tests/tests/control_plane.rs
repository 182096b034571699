//! Proof that the local control plane is a real one, and that our CRDs and
//! examples behave on it as they will on a platform team's cluster.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Client, ResourceExt};
use tenantgate_tests::*;

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => last = "condition not met".into(),
            Err(e) => last = e.to_string(),
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what}: not within {timeout:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn yaml_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    tenantgate_crds::files::yaml_files(dir).expect("read dir")
}

#[tokio::test]
async fn crds_are_accepted_and_become_established() -> anyhow::Result<()> {
    let client = admin_client().await?;
    let names = install_crds(&client).await?;
    assert_eq!(
        names,
        [
            "tenants.tenantgate.dev",
            "mcpconnections.tenantgate.dev",
            "promptpolicies.tenantgate.dev",
            "modelprices.tenantgate.dev",
            "apikeys.tenantgate.dev"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn valid_examples_are_accepted_by_server_side_apply() -> anyhow::Result<()> {
    let client = admin_client().await?;
    install_crds(&client).await?;
    let root = repo_root().join("manifests/examples");
    let files: Vec<_> = yaml_files(&root).into_iter().filter(|p| !p.starts_with(root.join("invalid"))).collect();
    // Namespaces first, as `kubectl apply -f DIR` users do by ordering files or re-running.
    let system = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"tenantgate-system"}}"#;
    apply_yaml(&client, system, None).await?;
    let mut rest = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for doc in text.split("\n---\n") {
            if doc.contains("kind: Namespace") {
                apply_yaml(&client, doc, None).await?;
            } else {
                rest.push((file.clone(), doc.to_owned()));
            }
        }
    }
    let mut applied = Vec::new();
    for (file, doc) in &rest {
        let objects = apply_yaml(&client, doc, None).await.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        applied.extend(
            objects
                .into_iter()
                .map(|o| format!("{}/{}", o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default(), o.name_any())),
        );
    }
    for expected in [
        "Tenant/quickstart",
        "Tenant/acme",
        "McpConnection/github",
        "McpConnection/everything",
        "PromptPolicy/platform-baseline",
    ] {
        assert!(applied.iter().any(|a| a == expected), "{expected} not applied: {applied:?}");
    }
    // The API server applied the schema defaults, exactly as the types declare them.
    let tenants: Api<tenantgate_crds::v1alpha1::Tenant> = Api::all(client.clone());
    let quickstart = tenants.get("quickstart").await?;
    assert_eq!(quickstart.spec.gateway.replicas, 1);
    assert_eq!(quickstart.spec.routing.circuit_breaker.open_seconds, 30);
    // Applying the same YAML again changes nothing.
    let before = quickstart.resource_version();
    let text = std::fs::read_to_string(root.join("quickstart/00-tenant.yaml"))?;
    apply_yaml(&client, &text, None).await?;
    assert_eq!(tenants.get("quickstart").await?.resource_version(), before, "a second apply must be a no-op");

    for t in ["quickstart", "acme"] {
        tenants.delete(t, &DeleteParams::default()).await?;
    }
    // The operator's namespace stays (other tests install into it); the
    // tenant namespaces go, and the test waits until they are gone so the
    // next test can create them again.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["tg-quickstart", "tg-acme"] {
        namespaces.delete(ns, &DeleteParams::background()).await?;
    }
    eventually("example namespaces deleted", Duration::from_secs(120), || {
        let namespaces = namespaces.clone();
        async move {
            Ok(namespaces.get_opt("tg-quickstart").await?.is_none() && namespaces.get_opt("tg-acme").await?.is_none())
        }
    })
    .await
}

#[tokio::test]
async fn invalid_examples_are_refused_naming_the_field() -> anyhow::Result<()> {
    let client = admin_client().await?;
    install_crds(&client).await?;
    apply_yaml(&client, r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"tg-invalid"}}"#, None).await?;
    let files = yaml_files(&repo_root().join("manifests/examples/invalid"));
    assert!(files.len() >= 15);
    let mut created_tenants: Vec<String> = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let expect: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        let docs: Vec<&str> = text.split("\n---\n").collect();
        // kubectl, as a platform team applies YAML (strict field validation by default).
        let message = if file.to_string_lossy().ends_with(".update.yaml") {
            let original = kubectl_apply(docs[0])?;
            assert!(original.0, "{}: the original object was refused: {}", file.display(), original.1);
            created_tenants.push(
                docs[0]
                    .lines()
                    .find_map(|l| l.strip_prefix("metadata: { name: "))
                    .unwrap_or("")
                    .trim_end_matches(" }")
                    .to_owned(),
            );
            let (ok, out) = kubectl_apply(docs[1])?;
            assert!(!ok, "{}: the update was accepted", file.display());
            out
        } else {
            let (ok, out) = kubectl_apply(&text)?;
            assert!(!ok, "{} was accepted: {out}", file.display());
            out
        };
        for e in &expect {
            assert!(
                message.contains(e),
                "{}: the API server said {message:?}, which does not contain {e:?}",
                file.display()
            );
        }
    }
    let tenants: Api<tenantgate_crds::v1alpha1::Tenant> = Api::all(client.clone());
    for t in created_tenants {
        tenants.delete(&t, &DeleteParams::default()).await?;
    }
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces.delete("tg-invalid", &DeleteParams::background()).await?;
    eventually("tg-invalid deleted", Duration::from_secs(120), || {
        let namespaces = namespaces.clone();
        async move { Ok(namespaces.get_opt("tg-invalid").await?.is_none()) }
    })
    .await
}

/// `kubectl apply -f -` with `text`: whether it succeeded, and what it printed.
fn kubectl_apply(text: &str) -> anyhow::Result<(bool, String)> {
    use std::io::Write;
    let mut child = std::process::Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running kubectl (is it on PATH? run via make test-cluster): {e}"))?;
    child.stdin.take().expect("stdin").write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    ))
}

#[tokio::test]
async fn fake_nodes_are_ready_and_a_deployment_becomes_available() -> anyhow::Result<()> {
    let client = admin_client().await?;
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?;
    assert!(!nodes.items.is_empty(), "kwok nodes exist");
    let ns = TestNamespace::create(&client, "deploy").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.example/web:1", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
            }
        }
    }))?;
    deployments.create(&PostParams::default(), &deployment).await?;
    let available = |d: Option<&Deployment>| {
        d.and_then(|d| d.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Available" && c.status == "True"))
            && d.and_then(|d| d.status.as_ref()).and_then(|s| s.available_replicas) == Some(3)
    };
    tokio::time::timeout(Duration::from_secs(60), await_condition(deployments.clone(), "web", available)).await??;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name).list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(pods.items.len(), 3);
    for pod in &pods.items {
        let status = pod.status.as_ref().expect("pod status");
        assert_eq!(status.phase.as_deref(), Some("Running"), "{}", pod.name_any());
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).expect("scheduled");
        assert!(nodes.items.iter().any(|n| n.name_any() == node), "scheduled onto a kwok node");
    }
    ns.delete().await
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_what_it_owns() -> anyhow::Result<()> {
    let client = admin_client().await?;
    let ns = TestNamespace::create(&client, "gc").await?;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let owner = maps
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "owner"}}))?)
        .await?;
    let owned: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "owned", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().expect("uid"), "controller": true
        }]}
    }))?;
    maps.create(&PostParams::default(), &owned).await?;
    maps.delete("owner", &DeleteParams::background()).await?;
    eventually("owned ConfigMap garbage-collected", Duration::from_secs(60), || {
        let maps = maps.clone();
        async move { Ok(maps.get_opt("owned").await?.is_none()) }
    })
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn autoscaling_v2_hpa_is_accepted() -> anyhow::Result<()> {
    let client = admin_client().await?;
    let ns = TestNamespace::create(&client, "hpa").await?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "gateway"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"},
            "minReplicas": 2, "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
        }
    }))?;
    let created = hpas.patch("gateway", &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&hpa)).await?;
    assert_eq!(created.spec.max_replicas, 10);
    ns.delete().await
}

#[tokio::test]
async fn service_account_clients_are_bound_by_rbac() -> anyhow::Result<()> {
    let admin = admin_client().await?;
    let ns = TestNamespace::create(&admin, "rbac").await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns.name);
    accounts
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "reader"}}))?)
        .await?;
    let reader: Client = client_as_service_account(&admin, &ns.name, "reader").await?;
    let as_reader: Api<ConfigMap> = Api::namespaced(reader.clone(), &ns.name);
    match as_reader.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("a ServiceAccount without RBAC must be refused, got {other:?}"),
    }
    let grant = format!(
        r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{{"name":"read-cm","namespace":"{ns}"}},
        "rules":[{{"apiGroups":[""],"resources":["configmaps"],"verbs":["list"]}}]}}
---
{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{{"name":"read-cm","namespace":"{ns}"}},
        "roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"read-cm"}},
        "subjects":[{{"kind":"ServiceAccount","name":"reader","namespace":"{ns}"}}]}}"#,
        ns = ns.name
    );
    apply_yaml(&admin, &grant, None).await?;
    eventually("RoleBinding takes effect", Duration::from_secs(10), || {
        let api = as_reader.clone();
        async move { Ok(api.list(&ListParams::default()).await.is_ok()) }
    })
    .await?;
    // Still nothing beyond the grant.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(reader, &ns.name);
    assert!(matches!(secrets.list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 403));
    ns.delete().await
}
