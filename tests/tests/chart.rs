//! The chart lints, installs into a namespace that enforces Pod Security
//! `restricted`, and every pod the operator renders for the examples passes
//! `restricted` too (server-side dry runs against the real API server).

use std::io::Write;
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use tenantgate_tests::operator::workspace_binary;
use tenantgate_tests::*;

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<(bool, String)> {
    let mut child =
        Command::new(cmd).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes())?;
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    ))
}

async fn restricted_namespace(client: &kube::Client) -> anyhow::Result<String> {
    let name = unique_name("pss");
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {
        TEST_LABEL: "true",
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}}))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    Ok(name)
}

/// Creates (dry run) a Pod from each Deployment's template in `namespace`: Pod
/// Security admission rejects what `restricted` forbids.
async fn pods_pass_restricted(client: &kube::Client, namespace: &str, yaml: &str) -> anyhow::Result<usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut checked = 0;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if value.get("kind").and_then(|k| k.as_str()) != Some("Deployment") {
            continue;
        }
        let deployment: Deployment = serde_json::from_value(value)?;
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let template = deployment.spec.expect("spec").template;
        // Pod Security does not look at the ServiceAccount; the dry run must not depend on it existing.
        let spec = template.spec.map(|mut s| {
            s.service_account_name = None;
            s
        });
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("pss-{name}")),
                labels: template.metadata.and_then(|m| m.labels),
                ..Default::default()
            },
            spec,
            ..Default::default()
        };
        pods.create(&PostParams { dry_run: true, ..Default::default() }, &pod)
            .await
            .map_err(|e| anyhow::anyhow!("Deployment {name}'s pod is refused in a restricted namespace: {e}"))?;
        checked += 1;
    }
    Ok(checked)
}

#[test]
fn helm_lint_passes() -> anyhow::Result<()> {
    let (ok, out) =
        run("helm", &["lint", "--strict", &repo_root().join("charts/tenantgate").display().to_string()], None)?;
    assert!(ok, "helm lint: {out}");
    // values.schema.json refuses nonsense.
    let (ok, out) = run(
        "helm",
        &["template", "x", &repo_root().join("charts/tenantgate").display().to_string(), "--set", "logFormat=xml"],
        None,
    )?;
    assert!(!ok && out.contains("logFormat"), "the values schema must refuse logFormat=xml: {out}");
    Ok(())
}

#[tokio::test]
async fn the_chart_installs_into_a_restricted_namespace() -> anyhow::Result<()> {
    let client = admin_client().await?;
    let ns = restricted_namespace(&client).await?;
    let chart = repo_root().join("charts/tenantgate").display().to_string();
    let (ok, manifests) = run("helm", &["template", "tenantgate", &chart, "--namespace", &ns], None)?;
    assert!(ok, "{manifests}");
    let (ok, out) = run("kubectl", &["apply", "--dry-run=server", "-f", "-"], Some(&manifests))?;
    assert!(ok, "server-side dry run of the chart: {out}");
    assert!(!out.contains("would violate PodSecurity"), "{out}");
    assert_eq!(pods_pass_restricted(&client, &ns, &manifests).await?, 1, "the operator's pod");
    // The check can fail: a pod that runs as root is refused in the same namespace.
    let root = manifests.replace("runAsNonRoot: true", "runAsNonRoot: false");
    assert!(pods_pass_restricted(&client, &ns, &root).await.is_err(), "Pod Security must refuse runAsNonRoot: false");
    Api::<Namespace>::all(client).delete(&ns, &DeleteParams::background()).await?;
    Ok(())
}

#[tokio::test]
async fn every_rendered_pod_passes_restricted() -> anyhow::Result<()> {
    let client = admin_client().await?;
    let ns = restricted_namespace(&client).await?;
    let examples = repo_root().join("manifests/examples");
    let (ok, rendered) = run(
        &workspace_binary("tenantgate-operator").display().to_string(),
        &[
            "render",
            "-f",
            &examples.join("quickstart").display().to_string(),
            "-f",
            &examples.join("acme").display().to_string(),
            "-f",
            &examples.join("global").display().to_string(),
        ],
        None,
    )?;
    assert!(ok, "render: {rendered}");
    // quickstart and acme gateways, and acme's stdio bridge.
    assert_eq!(pods_pass_restricted(&client, &ns, &rendered).await?, 3);
    Api::<Namespace>::all(client).delete(&ns, &DeleteParams::background()).await?;
    Ok(())
}

#[test]
fn render_refuses_bad_yaml_naming_file_object_and_field() -> anyhow::Result<()> {
    let bad = repo_root().join("manifests/examples/invalid/tenant-unknown-provider.yaml");
    let (ok, out) = run(
        &workspace_binary("tenantgate-operator").display().to_string(),
        &["render", "-f", &bad.display().to_string()],
        None,
    )?;
    assert!(!ok);
    assert!(
        out.contains("tenant-unknown-provider.yaml (document 1): Tenant invalid-unknown-provider: spec.models: every model target must name a provider"),
        "{out}"
    );
    Ok(())
}

/// The chart's operator account can create each gateway's status Role: RBAC
/// lets an account grant only what it holds (get and patch of
/// mcpconnections/status), and refuses more (the control).
#[tokio::test]
async fn the_operator_can_grant_each_gateway_its_status_role() -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::Role;
    use tenantgate_tests::operator::{OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, install_chart_rbac};

    let admin = admin_client().await?;
    install_chart_rbac(&admin).await?;
    let (ok, rendered) = run(
        &workspace_binary("tenantgate-operator").display().to_string(),
        &["render", "-f", &repo_root().join("manifests/examples/quickstart").display().to_string()],
        None,
    )?;
    assert!(ok, "render: {rendered}");
    let mut role: Option<Role> = None;
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if value["kind"] == "Role" {
            role = Some(serde_json::from_value(value)?);
        }
    }
    let mut role = role.ok_or_else(|| anyhow::anyhow!("the render has no Role: {rendered}"))?;
    let ns = TestNamespace::create(&admin, "grant").await?;
    role.metadata.namespace = Some(ns.name.clone());
    role.metadata.owner_references = None;
    let operator = client_as_service_account(&admin, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await?;
    let roles: Api<Role> = Api::namespaced(operator, &ns.name);
    roles.create(&PostParams::default(), &role).await.map_err(|e| anyhow::anyhow!("the operator's account: {e}"))?;
    let mut more = role.clone();
    more.metadata.name = Some("more".into());
    if let Some(rule) = more.rules.as_mut().and_then(|r| r.first_mut()) {
        rule.verbs.push("update".into());
    }
    match roles.create(&PostParams::default(), &more).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => anyhow::bail!("granting update, which the operator does not hold, must be refused: {other:?}"),
    }
    ns.delete().await
}
