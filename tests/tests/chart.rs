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

fn chart_dir() -> String {
    repo_root().join("charts/tenantgate").display().to_string()
}

/// The values file that turns every option of the chart on.
fn every_option() -> String {
    repo_root().join("charts/tenantgate/ci/every-option-values.yaml").display().to_string()
}

/// `helm template RELEASE` of the chart in `namespace` with `extra` arguments.
fn template(release: &str, namespace: &str, extra: &[&str]) -> anyhow::Result<String> {
    let chart = chart_dir();
    let mut args = vec!["template", release, chart.as_str(), "--namespace", namespace];
    args.extend_from_slice(extra);
    let (ok, out) = run("helm", &args, None)?;
    anyhow::ensure!(ok, "helm {}: {out}", args.join(" "));
    Ok(out)
}

/// The documents of a multi-document YAML stream.
fn documents(yaml: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

#[test]
fn helm_lint_passes() -> anyhow::Result<()> {
    let (ok, out) = run("helm", &["lint", "--strict", &chart_dir()], None)?;
    assert!(ok, "helm lint: {out}");
    let (ok, out) = run("helm", &["lint", "--strict", &chart_dir(), "-f", &every_option()], None)?;
    assert!(ok, "helm lint with every option: {out}");
    // values.schema.json refuses nonsense, naming the value.
    for (bad, names) in [
        ("logFormat=xml", "logFormat"),
        ("image.digest=latest", "digest"),
        ("dns.cidrs[0]=kube-dns", "cidrs"),
        ("serviceAccount.create=false", "name"),
        ("networkPolicy.apiServerPorts[0]=70000", "apiServerPorts"),
        ("nonsense=1", "nonsense"),
    ] {
        let (ok, out) = run("helm", &["template", "x", &chart_dir(), "--set", bad], None)?;
        assert!(!ok && out.contains(names), "the values schema must refuse {bad}: {out}");
    }
    // A parent chart's global values are accepted.
    template("x", "ns", &["--set", "global.imageRegistry=r.example.com"])?;
    Ok(())
}

/// Two releases with every option on, side by side in one namespace: no two
/// objects share a kind, namespace and name (cluster-scoped ones included),
/// and every option reaches what it configures.
#[test]
fn two_releases_with_every_option_render_side_by_side_without_collisions() -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeMap::new();
    for release in ["tenantgate", "other"] {
        let docs =
            documents(&template(release, "shared", &["-f", &every_option(), "--set", "createNamespace=false"])?)?;
        for d in &docs {
            let key = format!(
                "{} {}/{}",
                d["kind"].as_str().unwrap_or_default(),
                d["metadata"]["namespace"].as_str().unwrap_or("-"),
                d["metadata"]["name"].as_str().unwrap_or_default()
            );
            if let Some(other) = seen.insert(key.clone(), release) {
                panic!("{key} of release {release} collides with release {other}'s");
            }
        }
        let kinds: std::collections::BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for kind in ["ServiceMonitor", "PrometheusRule", "NetworkPolicy", "ServiceAccount", "ClusterRole", "Pod"] {
            assert!(kinds.contains(kind), "release {release} has no {kind}: {kinds:?}");
        }
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("the operator Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert!(
            container["image"].as_str().is_some_and(
                |i| i.ends_with("@sha256:1111111111111111111111111111111111111111111111111111111111111111")
            )
        );
        assert_eq!(container["args"], serde_json::json!(["run", "--concurrency=4"]));
        assert_eq!(pod["securityContext"]["runAsUser"], 10001);
        assert_eq!(pod["priorityClassName"], "system-cluster-critical");
        let env: std::collections::BTreeMap<String, String> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
            .collect();
        assert_eq!(env["TENANTGATE_SECRET_LABEL_SELECTOR"], "tenantgate.dev/watch=true");
        assert_eq!(env["TENANTGATE_DNS_CIDRS"], "169.254.20.10/32");
        assert_eq!(
            env["TENANTGATE_GATEWAY_IMAGE"],
            "registry.example.com/tenantgate/gateway@sha256:2222222222222222222222222222222222222222222222222222222222222222"
        );
        assert_eq!(env["RUST_LOG"], "info,kube=warn", "extraEnv");
        // The helm test pod is not one of the Service's endpoints (it would probe itself).
        let service = docs.iter().find(|d| d["kind"] == "Service").expect("the metrics Service");
        let test_pod = docs.iter().find(|d| d["kind"] == "Pod").expect("the helm test pod");
        assert_eq!(test_pod["metadata"]["annotations"]["helm.sh/hook"], "test");
        let selected = service["spec"]["selector"]
            .as_object()
            .is_some_and(|sel| sel.iter().all(|(k, v)| &test_pod["metadata"]["labels"][k] == v));
        assert!(!selected, "the metrics Service selects the helm test pod: {}", test_pod["metadata"]["labels"]);
        let account = docs.iter().find(|d| d["kind"] == "ServiceAccount").expect("account");
        assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
        assert!(account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].is_string());
    }
    Ok(())
}

/// The operator takes every value the chart hands it: `render` run with the
/// every-option Deployment's environment puts them on the gateway pods and
/// in their NetworkPolicy (a value the operator refused would fail here).
#[test]
fn the_operator_accepts_what_the_chart_passes_it() -> anyhow::Result<()> {
    let docs = documents(&template("tenantgate", "tenantgate-system", &["-f", &every_option()])?)?;
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("the operator Deployment");
    let mut render = Command::new(workspace_binary("tenantgate-operator"));
    render.env_clear().args(["render", "-f"]).arg(repo_root().join("manifests/examples/quickstart"));
    for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (e["name"].as_str(), e["value"].as_str()) {
            render.env(name, value);
        }
    }
    let out = render.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "render with the chart's environment: {}", String::from_utf8_lossy(&out.stderr));
    let objects = documents(&text)?;
    let gateway = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "gateway")
        .expect("the gateway Deployment");
    let pod = &gateway["spec"]["template"]["spec"];
    assert_eq!(pod["imagePullSecrets"], serde_json::json!([{"name": "registry"}]));
    assert_eq!(pod["nodeSelector"], serde_json::json!({"pool": "tenants"}));
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert_eq!(pod["priorityClassName"], "tenant-gateways");
    assert!(pod["containers"][0]["image"].as_str().is_some_and(|i| i.contains("@sha256:2222")));
    let policy = objects.iter().find(|o| o["kind"] == "NetworkPolicy").expect("policy");
    let egress = policy["spec"]["egress"].to_string();
    assert!(egress.contains("node-local-dns") && egress.contains("169.254.20.10/32"), "{egress}");
    // And a value the operator cannot take is refused with its name.
    let refused = Command::new(workspace_binary("tenantgate-operator"))
        .env_clear()
        .env("TENANTGATE_GATEWAY_NODE_SELECTOR", "pool in (a,b)")
        .args(["render", "-f"])
        .arg(repo_root().join("manifests/examples/quickstart"))
        .output()?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--gateway-node-selector"));
    Ok(())
}

/// Leaf paths of a values tree (a map is a leaf when empty or when its
/// values are user data: labels, annotations, selectors).
fn value_paths(prefix: &str, value: &serde_yaml::Value, out: &mut Vec<String>) {
    const DATA: &[&str] = &[
        "global",
        "dns.namespaceSelector",
        "dns.podSelector",
        "secretLabelSelector",
        "serviceAccount.annotations",
        "podSecurityContext",
        "securityContext",
        "resources",
        "podAnnotations",
        "podLabels",
        "nodeSelector",
        "affinity",
        "gateway.nodeSelector",
        "serviceMonitor.labels",
        "prometheusRule.labels",
    ];
    match value {
        serde_yaml::Value::Mapping(map) if !map.is_empty() && !DATA.contains(&prefix) => {
            for (k, v) in map {
                let key = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") };
                value_paths(&path, v, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

/// The chart README's table lists every value of values.yaml, and no value
/// that is not there: it cannot go stale unnoticed.
#[test]
fn the_chart_readme_lists_every_value() -> anyhow::Result<()> {
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("charts/tenantgate/values.yaml"))?)?;
    let mut paths = Vec::new();
    value_paths("", &values, &mut paths);
    assert!(paths.len() > 40, "{paths:?}");
    let readme = std::fs::read_to_string(repo_root().join("charts/tenantgate/README.md"))?;
    let listed: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    for p in &paths {
        assert!(listed.contains(p), "charts/tenantgate/README.md does not list the value {p}");
    }
    for l in &listed {
        assert!(paths.contains(l), "charts/tenantgate/README.md lists {l}, which values.yaml does not have");
    }
    Ok(())
}

/// The chart's PrometheusRule holds exactly the alerts docs/operations.md recommends.
#[test]
fn the_prometheus_rule_is_the_documented_alerts() -> anyhow::Result<()> {
    let docs = documents(&template("tenantgate", "ns", &["--set", "prometheusRule.enabled=true"])?)?;
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule");
    let operations = std::fs::read_to_string(repo_root().join("docs/operations.md"))?;
    let section = operations.split("## Alerts worth having").nth(1).expect("the alerts section");
    let block = section.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).expect("its YAML");
    let documented: serde_json::Value = serde_yaml::from_str(block)?;
    assert_eq!(rule["spec"], documented);
    let alerts = rule["spec"]["groups"][0]["rules"].as_array().map(Vec::len).unwrap_or_default();
    assert!(alerts >= 10, "{alerts}");
    // Off by default.
    let plain = documents(&template("tenantgate", "ns", &[])?)?;
    assert!(!plain.iter().any(|d| d["kind"] == "PrometheusRule" || d["kind"] == "ServiceMonitor"));
    Ok(())
}

#[tokio::test]
async fn the_chart_installs_into_a_restricted_namespace() -> anyhow::Result<()> {
    let client = admin_client().await?;
    let ns = restricted_namespace(&client).await?;
    let chart = repo_root().join("charts/tenantgate").display().to_string();
    let (ok, manifests) = run("helm", &["template", "tenantgate", &chart, "--namespace", &ns], None)?;
    assert!(ok, "{manifests}");
    // Server-side apply: one request per object, create or update, so an object another test
    // applies at the same moment (the chart's ClusterRoleBinding) is no AlreadyExists race.
    let dry_run =
        ["apply", "--server-side", "--force-conflicts", "--field-manager=chart-test", "--dry-run=server", "-f", "-"];
    let (ok, out) = run("kubectl", &dry_run, Some(&manifests))?;
    assert!(ok, "server-side dry run of the chart: {out}");
    assert!(!out.contains("would violate PodSecurity"), "{out}");
    assert_eq!(pods_pass_restricted(&client, &ns, &manifests).await?, 1, "the operator's pod");
    // The check can fail: a pod that runs as root is refused in the same namespace.
    let root = manifests.replace("runAsNonRoot: true", "runAsNonRoot: false");
    assert!(pods_pass_restricted(&client, &ns, &root).await.is_err(), "Pod Security must refuse runAsNonRoot: false");
    // Every option on: the API server takes each object (but the Prometheus
    // Operator's, whose CRDs this cluster lacks), and the pods stay restricted.
    let every = template("other", &ns, &["-f", &every_option(), "--set", "createNamespace=false"])?;
    let kept: Vec<String> = documents(&every)?
        .into_iter()
        .filter(|d| d["apiVersion"].as_str().is_some_and(|v| !v.starts_with("monitoring.coreos.com/")))
        .map(|d| serde_yaml::to_string(&d))
        .collect::<Result<_, _>>()?;
    let kept = kept.join("---\n");
    let (ok, out) = run("kubectl", &dry_run, Some(&kept))?;
    assert!(ok && !out.contains("would violate PodSecurity"), "server-side dry run of every option: {out}");
    assert_eq!(pods_pass_restricted(&client, &ns, &kept).await?, 1, "the operator's pod, every option on");
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
