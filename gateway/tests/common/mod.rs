//! Starts e2e/mock-llm and the gateway binary as processes on free
//! 127.0.0.1 ports, and mints tokens with the quickstart development key.
#![allow(dead_code, unreachable_pub)]

pub mod mcp;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("gateway/ has a parent").to_path_buf()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The mock-llm binary, built once per test run into the current target dir.
fn mock_llm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("tenantgate-mock-llm"))
}

/// The e2e/mcp-echo binary (an rmcp MCP server; stdio without `--listen`), built once per test run.
pub fn mcp_echo_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("tenantgate-mcp-echo"))
}

/// Builds the workspace package `name` (whose binary has the same name) and returns its path.
fn workspace_bin(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-q", "-p", name, "--message-format=json"])
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cargo build {name}: {e}"));
    assert!(out.status.success(), "building {name} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("{name} executable in cargo output"))
}

/// Starts `bin` with `args` and reads the `listening on ADDR` line it prints first.
fn spawn_listening(bin: &Path, args: &[&str]) -> (Proc, String) {
    let mut child =
        Command::new(bin).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("the server prints its address");
    let addr = line.trim().strip_prefix("listening on ").expect("address line").to_string();
    (Proc(child), addr)
}

/// A running e2e/mcp-echo over streamable HTTP (`{url}/mcp`), with its call counter.
pub struct McpEcho {
    _proc: Proc,
    pub url: String,
}

impl McpEcho {
    pub fn start() -> Self {
        let (proc, addr) = spawn_listening(mcp_echo_bin(), &["--listen", "127.0.0.1:0"]);
        Self { _proc: proc, url: format!("http://{addr}") }
    }

    /// `tools/call` requests it received (any tool, even unknown ones).
    pub async fn calls(&self) -> u64 {
        let text = reqwest::get(format!("{}/calls", self.url)).await.expect("GET /calls").text().await.expect("body");
        text.trim().parse().expect("a count")
    }
}

/// A child process killed (by its PID) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running e2e/mock-llm.
pub struct Upstream {
    _proc: Proc,
    pub url: String,
    client: reqwest::Client,
}

impl Upstream {
    pub fn start() -> Self {
        let (proc, addr) = spawn_listening(mock_llm_bin(), &["--listen", "127.0.0.1:0", "--tokens", "8"]);
        Self { _proc: proc, url: format!("http://{addr}"), client: reqwest::Client::new() }
    }

    /// Scripts the answers for upstream model `model`.
    pub async fn script(&self, model: &str, steps: Value, default: Option<Value>) {
        let body = json!({"model": model, "steps": steps, "default": default});
        let r = self
            .client
            .post(format!("{}/_control/script", self.url))
            .body(body.to_string())
            .header("content-type", "application/json")
            .send()
            .await
            .expect("script");
        assert!(r.status().is_success(), "script refused: {}", r.status());
    }

    /// Requests seen for `model`.
    pub async fn count(&self, model: &str) -> u64 {
        let v: Value = get_json(&self.client, &format!("{}/_control/stats", self.url)).await;
        v["requests"][model].as_u64().unwrap_or(0)
    }

    /// The bodies of the last requests for `model`, oldest first.
    pub async fn requests(&self, model: &str) -> Vec<Value> {
        let v: Value = get_json(&self.client, &format!("{}/_control/requests?model={model}", self.url)).await;
        v.as_array().cloned().expect("an array of requests")
    }

    /// The last request for `model`: `{"body", "credential"}`.
    pub async fn last(&self, model: &str) -> Value {
        get_json(&self.client, &format!("{}/_control/last?model={model}", self.url)).await
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let text = client.get(url).send().await.expect("GET").text().await.expect("body");
    serde_json::from_str(&text).expect("JSON")
}

/// The public JWKS of the quickstart development key.
pub fn quickstart_jwks() -> String {
    let dir = repo_root().join("manifests/examples/quickstart");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("quickstart").filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    let marker = "jwks.json: '";
    for f in files.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let text = std::fs::read_to_string(f).expect("read");
        if let Some(at) = text.find(marker) {
            let start = at + marker.len();
            let len = text[start..].find('\'').expect("closing quote");
            return text[start..start + len].to_string();
        }
    }
    panic!("no JWKS in {}", dir.display());
}

/// The test tenant's manifests for `upstream`.
pub fn tenant_yaml(upstream: &str) -> String {
    let template =
        std::fs::read_to_string(repo_root().join("gateway/tests/fixtures/tenant.yaml.tmpl")).expect("template");
    template
        .replace("${UPSTREAM}", upstream)
        .replace("${DEAD}", &format!("http://127.0.0.1:{}", free_port()))
        .replace("${JWKS}", &quickstart_jwks())
}

/// A running gateway in local mode over a temporary manifests directory.
pub struct Gateway {
    proc: Option<Proc>,
    pub url: String,
    pub dir: PathBuf,
    pub client: reqwest::Client,
    pub token: String,
    /// Whether the directory is removed on drop (not for [`Gateway::start_in`]).
    owns_dir: bool,
}

/// A fresh temporary directory path.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    std::env::temp_dir().join(format!("tg-{tag}-{}-{n}", std::process::id()))
}

impl Gateway {
    pub async fn start(manifests: &str) -> Self {
        Self::start_with(manifests, &[]).await
    }

    pub async fn start_with(manifests: &str, extra: &[&str]) -> Self {
        let mut gw = Self::start_in_inner(&temp_dir("gw-test"), manifests, extra, None, true).await;
        gw.owns_dir = true;
        gw
    }

    /// Like [`Self::start_with`], with the gateway's stderr in a file [`Self::log`] reads.
    pub async fn start_logged(manifests: &str, extra: &[&str]) -> Self {
        Self::start_logged_at(manifests, extra, "warn").await
    }

    /// Like [`Self::start_logged`], logging at `filter` (a `RUST_LOG` value).
    pub async fn start_logged_at(manifests: &str, extra: &[&str], filter: &str) -> Self {
        let mut gw = Self::start_in_inner(&temp_dir("gw-test"), manifests, extra, Some(filter), true).await;
        gw.owns_dir = true;
        gw
    }

    /// Like [`Self::start_logged_at`], without waiting for it to be ready.
    pub async fn spawn_logged_at(manifests: &str, extra: &[&str], filter: &str) -> Self {
        let mut gw = Self::start_in_inner(&temp_dir("gw-test"), manifests, extra, Some(filter), false).await;
        gw.owns_dir = true;
        gw
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.0.try_wait().expect("wait").is_none())
    }

    /// Starts over `dir` (manifests and state), which is kept afterwards: a
    /// second gateway started in the same directory finds the first one's state.
    pub async fn start_in(dir: &Path, manifests: &str, extra: &[&str]) -> Self {
        Self::start_in_inner(dir, manifests, extra, None, true).await
    }

    /// `log`: `None` logs to the test's stderr at `GATEWAY_LOG` (default `warn`);
    /// `Some(filter)` logs to a file at `filter`. `ready`: wait until `/readyz` answers 200.
    async fn start_in_inner(dir: &Path, manifests: &str, extra: &[&str], log: Option<&str>, ready: bool) -> Self {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(dir.join("manifests")).expect("temp dir");
        std::fs::write(dir.join("manifests/tenant.yaml"), manifests).expect("write manifests");
        let port = free_port();
        let stderr = if log.is_some() {
            Stdio::from(std::fs::File::create(dir.join("stderr.log")).expect("log file"))
        } else {
            Stdio::inherit()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_tenantgate-gateway"))
            .arg("--manifests")
            .arg(dir.join("manifests"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--config-poll-ms", "200", "--shutdown-delay-ms", "0"])
            .args(extra)
            .env(
                "RUST_LOG",
                log.map_or_else(|| std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "warn".into()), str::to_owned),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start gateway");
        let gw = Self {
            proc: Some(Proc(child)),
            url: format!("http://127.0.0.1:{port}"),
            dir,
            // Idle pooled connections are dropped before a gateway run with a
            // short --header-read-timeout-secs closes them under a request.
            client: reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(1)).build().expect("http client"),
            token: token(json!({})),
            owns_dir: false,
        };
        if ready {
            gw.wait_ready().await;
        }
        gw
    }

    /// Starts over a rendered GatewayConfig file (`--config`, as in a cluster, where
    /// the operator renders it) in `dir`, which is removed on drop.
    pub async fn start_config(dir: &Path, config: &Path) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_tenantgate-gateway"))
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--config-poll-ms", "200", "--shutdown-delay-ms", "0"])
            .env("RUST_LOG", std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .spawn()
            .expect("start gateway");
        let gw = Self {
            proc: Some(Proc(child)),
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            client: reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(1)).build().expect("http client"),
            token: token(json!({})),
            owns_dir: true,
        };
        gw.wait_ready().await;
        gw
    }

    /// Runs a gateway over `manifests` that is expected not to start: waits
    /// (at most 30 s) for it to exit and returns whether it exited cleanly and
    /// its stderr.
    pub fn run_to_exit(manifests: &str) -> (bool, String) {
        let dir = temp_dir("gw-exit");
        std::fs::create_dir_all(dir.join("manifests")).expect("temp dir");
        std::fs::write(dir.join("manifests/tenant.yaml"), manifests).expect("write manifests");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenantgate-gateway"))
            .arg("--manifests")
            .arg(dir.join("manifests"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("stderr.log")).expect("log file")))
            .spawn()
            .expect("start gateway");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the gateway was expected to exit but still runs after 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        (status.success(), log)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = self.client.get(format!("{}/readyz", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway at {} did not become ready", self.url);
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map(|p| p.0.id()).expect("running")
    }

    /// Waits for the process to exit and returns whether it exited cleanly.
    pub fn wait_exit(&mut self) -> bool {
        let mut proc = self.proc.take().expect("running");
        let status = proc.0.wait().expect("wait");
        std::mem::forget(proc);
        status.success()
    }

    /// Stops the gateway with SIGINT (a graceful stop) and waits for it;
    /// returns whether it exited cleanly.
    pub fn interrupt(&mut self) -> bool {
        let status = Command::new("kill").args(["-INT", &self.pid().to_string()]).status().expect("kill");
        assert!(status.success(), "kill -INT failed");
        self.wait_exit()
    }

    /// Stops the gateway with SIGTERM (what the kubelet sends) and waits for
    /// it; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("kill");
        assert!(status.success(), "kill -TERM failed");
        self.wait_exit()
    }

    /// GET `path` with `token`: status and JSON body.
    pub async fn get_json(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self.client.get(format!("{}{path}", self.url)).bearer_auth(token).send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}")))
    }

    /// A chat request with `token`: status and JSON body.
    pub async fn chat_as(&self, token: &str, model: &str) -> (u16, Value) {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let r = self.post_raw("/v1/chat/completions", body.to_string(), Some(token)).await;
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.text().await.expect("body")).expect("JSON body"))
    }

    /// POST a JSON body to `path` with the default token.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_raw(path, body.to_string(), Some(&self.token)).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>, token: Option<&str>) -> reqwest::Response {
        let mut r =
            self.client.post(format!("{}{path}", self.url)).header("content-type", "application/json").body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.expect("request")
    }

    pub async fn chat(&self, model: &str) -> (u16, Value) {
        let r = self
            .post("/v1/chat/completions", &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .await;
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.text().await.expect("body")).expect("JSON body"))
    }

    /// What a gateway started with [`Self::start_logged`] wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The log once it contains `needle`, waiting up to 5 s (the gateway's log
    /// writer is asynchronous: a line can land after the response it explains).
    pub async fn log_with(&self, needle: &str) -> String {
        for _ in 0..50 {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = self.log();
        panic!("the gateway log has no {needle:?} after 5 s:\n{log}");
    }

    pub async fn metrics(&self) -> String {
        self.client.get(format!("{}/metrics", self.url)).send().await.expect("metrics").text().await.expect("text")
    }

    /// Waits up to 5 s for a config reload to be counted as refused.
    pub async fn reload_refused(&self) -> bool {
        for _ in 0..50 {
            if self.metrics().await.contains("tenantgate_config_reloads_total{result=\"refused\"}") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        drop(self.proc.take());
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The test tenant with API keys on and, when `postgres_url` is given, its
/// usage and audit in that PostgreSQL database (else SQLite in the state dir).
pub fn tenant_yaml_with_storage(upstream: &str, postgres_url: Option<&str>) -> String {
    let mut yaml = tenant_yaml(upstream).replace(
        "      adminRoles: [tenant-admin]\n",
        "      adminRoles: [tenant-admin]\n    apiKeys: { enabled: true }\n",
    );
    assert!(yaml.contains("apiKeys"), "the fixture's auth block moved");
    if let Some(url) = postgres_url {
        assert!(yaml.contains("\nspec:\n  namespace: tg-test\n"), "the fixture's Tenant spec moved");
        yaml = yaml.replacen(
            "\nspec:\n  namespace: tg-test\n",
            "\nspec:\n  namespace: tg-test\n  storage:\n    database: { urlSecretRef: { name: db, key: url } }\n",
            1,
        );
        yaml.push_str(&format!(
            "\n---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: db, namespace: tg-test }}\nstringData:\n  url: '{url}'\n"
        ));
    }
    yaml
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A token for the test tenant signed with the quickstart key; `overrides` replace claims.
pub fn token(overrides: Value) -> String {
    sign(overrides, "manifests/examples/quickstart/dev-signing-key.pem", Some("quickstart-dev"))
}

pub fn sign(overrides: Value, key: &str, kid: Option<&str>) -> String {
    let mut claims = json!({"iss": "https://issuer.test", "aud": "tenantgate", "sub": "tester", "exp": now() + 600, "roles": ["dev"]});
    for (k, v) in overrides.as_object().into_iter().flatten() {
        claims[k] = v.clone();
    }
    let pem = std::fs::read(repo_root().join(key)).expect("key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).expect("RSA key")).expect("sign")
}

/// The test tenant renamed to `name` (tenants sharing one Redis keep apart by
/// name), with `spec` lines added to its spec and `docs` (more YAML
/// documents, e.g. Secrets) added to the manifests.
pub fn tenant_yaml_with(upstream: &str, name: &str, spec: &str, docs: &str) -> String {
    let base = tenant_yaml(upstream);
    assert!(base.contains("metadata: { name: test }") && base.contains("\nspec:\n"), "fixture layout changed");
    let tenant = base.replacen("metadata: { name: test }", &format!("metadata: {{ name: {name} }}"), 1);
    let tenant = tenant.replacen("\nspec:\n", &format!("\nspec:\n{spec}"), 1);
    if docs.is_empty() { tenant } else { format!("{docs}\n---\n{tenant}") }
}

/// A required environment variable of `e2e/with-services` (tests fail, never skip, without it).
pub fn services_env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run this test under e2e/with-services (make test-services)"))
}

/// A new empty database on `e2e/with-services`' PostgreSQL, owned by its
/// `tenantgate` role; its URL.
pub async fn fresh_database(tag: &str) -> String {
    let base = services_env("TENANTGATE_POSTGRES_URL");
    let admin = sqlx::PgPool::connect(&base).await.expect("connect to PostgreSQL");
    let name = format!("tg_{tag}_{}", fastrand::u32(..));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.expect("create database");
    admin.close().await;
    let (server, _) = base.rsplit_once('/').expect("URL with a database");
    format!("{server}/{name}")
}

/// Runs `e2e/lib/common.sh` functions (`services_stop_redis KILL`, `services_start_redis`, ..).
pub fn services(commands: &str) {
    services_env("TENANTGATE_RUN");
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!("source e2e/lib/common.sh; {commands}"))
        .current_dir(repo_root())
        .status()
        .expect("bash");
    assert!(status.success(), "`{commands}` failed");
}

/// Sends `n` copies of `body` to `/v1/chat/completions` at once, alternating
/// between `a` and `b`, and fails when they took 9 s or more: the limits
/// tests count admissions exactly within one 10 s window.
pub async fn burst_across(a: &Gateway, b: &Gateway, body: &str, n: usize) -> Vec<reqwest::Response> {
    let started = Instant::now();
    let calls = (0..n).map(|i| {
        let gw = if i % 2 == 0 { a } else { b };
        gw.post_raw("/v1/chat/completions", body.to_owned(), Some(&gw.token))
    });
    let responses = futures_util::future::join_all(calls).await;
    assert!(started.elapsed() < Duration::from_secs(9), "too slow for the exact count: {:?}", started.elapsed());
    responses
}

/// Audit events of `kind` that `keep` accepts, once `want` are there (5 s at most).
pub async fn audit_events(gw: &Gateway, kind: &str, want: usize, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let admin = token(json!({"roles": ["tenant-admin"], "sub": "auditor"}));
    let mut events = Vec::new();
    for _ in 0..50 {
        let (status, page) = gw.get_json(&format!("/admin/v1/audit?kind={kind}&limit=1000"), &admin).await;
        assert_eq!(status, 200, "{page}");
        events = page["data"].as_array().expect("data").iter().filter(|e| keep(e)).cloned().collect();
        if events.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    events
}
