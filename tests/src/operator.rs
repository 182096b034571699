//! Runs the operator binary the way a cluster would: as the chart's
//! ServiceAccount, with exactly the chart's RBAC, never as admin.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;

use crate::{apply_yaml, repo_root};

/// Namespace the operator runs in during tests (as the chart installs it).
pub const OPERATOR_NAMESPACE: &str = "tenantgate-system";
/// The chart's ServiceAccount.
pub const OPERATOR_ACCOUNT: &str = "tenantgate-operator";

/// Path of a workspace binary built by `cargo build` (the Makefile builds them before the tests).
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Some(p) =
        std::env::var_os(format!("TENANTGATE_{}_BIN", name.trim_start_matches("tenantgate-").to_uppercase()))
    {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join(name)
}

/// `helm template` of the chart, as the README installs it.
pub fn chart_manifests() -> anyhow::Result<String> {
    let out = Command::new("helm")
        .args(["template", "tenantgate"])
        .arg(repo_root().join("charts/tenantgate"))
        .args(["--namespace", OPERATOR_NAMESPACE, "--set", "createNamespace=true"])
        .output()
        .context("running helm (on PATH under make test-cluster)")?;
    if !out.status.success() {
        bail!("helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Applies the chart's Namespace, ServiceAccount and RBAC (everything but the
/// Deployment, which cannot run here: the tests run the binary instead).
pub async fn install_chart_rbac(client: &Client) -> anyhow::Result<()> {
    let manifests = chart_manifests()?;
    for doc in manifests.split("\n---") {
        let keep = ["kind: Namespace", "kind: ServiceAccount", "kind: ClusterRole", "kind: Role"]
            .iter()
            .any(|k| doc.contains(k));
        if !keep {
            continue;
        }
        // A namespace still terminating from an earlier test refuses new content for a while.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match apply_yaml(client, doc, None).await {
                Ok(_) => break,
                Err(crate::ApplyError::Api(kube::Error::Api(s)))
                    if s.message.contains("being terminated") && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => bail!("applying chart RBAC: {e}"),
            }
        }
    }
    Ok(())
}

/// Writes a kubeconfig that authenticates as the chart's ServiceAccount with a fresh token.
pub async fn service_account_kubeconfig(admin: &Client, dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(6 * 3600), ..Default::default() }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request(OPERATOR_ACCOUNT, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .context("no token issued")?;
    let admin_path = PathBuf::from(std::env::var_os("KUBECONFIG").context("KUBECONFIG")?);
    let admin_config = Kubeconfig::read_from(&admin_path)?;
    let cluster =
        admin_config.clusters.first().and_then(|c| c.cluster.clone()).context("admin kubeconfig has no cluster")?;
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{ "name": "e2e", "cluster": {
            "server": cluster.server,
            "certificate-authority-data": cluster.certificate_authority_data,
        } }],
        "users": [{ "name": OPERATOR_ACCOUNT, "user": { "token": token } }],
        "contexts": [{ "name": "operator", "context": { "cluster": "e2e", "user": OPERATOR_ACCOUNT } }],
        "current-context": "operator",
    });
    let path = dir.join("operator.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    Ok(path)
}

/// A running operator process; killed when dropped.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Child,
    /// Where its /metrics, /livez and /readyz are.
    pub metrics_url: String,
    /// Its log file.
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts the operator as the chart's ServiceAccount (installing the chart's RBAC first).
    pub async fn start(admin: &Client, identity: &str) -> anyhow::Result<Self> {
        Self::start_with_env(admin, identity, &[]).await
    }

    /// [`OperatorProcess::start`] with further environment (the operator's flags).
    pub async fn start_with_env(admin: &Client, identity: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        install_chart_rbac(admin).await?;
        let dir = std::env::temp_dir().join(crate::unique_name("operator"));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = service_account_kubeconfig(admin, &dir).await?;
        let port = free_port()?;
        let log = dir.join(format!("{identity}.log"));
        let child = Command::new(workspace_binary("tenantgate-operator"))
            .arg("run")
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
            .env("POD_NAME", identity)
            .env("TENANTGATE_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("TENANTGATE_API_QPS", std::env::var("TENANTGATE_API_QPS").unwrap_or_else(|_| "200".into()))
            .env("TENANTGATE_API_BURST", std::env::var("TENANTGATE_API_BURST").unwrap_or_else(|_| "400".into()))
            .env("RUST_LOG", "info,kube=warn")
            // As the chart sets it: glibc's per-thread malloc arenas otherwise grow RSS far past live data.
            .env("MALLOC_ARENA_MAX", "2")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting tenantgate-operator (build it first: cargo build -p tenantgate-operator)")?;
        let process = Self { child, metrics_url: format!("http://127.0.0.1:{port}"), log };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if http_get(&format!("{}/readyz", process.metrics_url)).await.is_ok_and(|(code, _)| code == 200) {
                return Ok(process);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("the operator did not become ready in 30 s; log:\n{}", process.log_tail(40))
    }

    /// Where its log is written.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Its metrics as text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(http_get(&format!("{}/metrics", self.metrics_url)).await?.1)
    }

    /// Sum of a counter family's samples whose labels contain `label_filter`.
    pub async fn counter(&self, family: &str, label_filter: &str) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(family) && l.contains(label_filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Write requests to the API server, not counting Lease renewals, from one scrape.
    pub async fn writes_except_leases(&self) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        let sum = |filter: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("tenantgate_operator_api_requests_total")
                        && l.contains("kind=\"write\"")
                        && l.contains(filter)
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok(sum("") - sum("resource=\"leases\""))
    }

    /// Its OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it at once (SIGKILL), as a crashed leader.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks it to stop (SIGTERM) and waits.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A minimal HTTP/1.1 GET over loopback: status code and body.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("http URLs only")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}
