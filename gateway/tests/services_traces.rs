//! OpenTelemetry traces, as a real OpenTelemetry Collector receives them: the
//! collector of e2e/otelcol (its OTLP receiver and file exporter, built from
//! the collector's Go modules by e2e/otelcol/build, which `e2e/with-services`
//! runs and exports as TENANTGATE_OTELCOL; without it this test builds it)
//! listens on free ports; gateways export to it over OTLP/HTTP and OTLP/gRPC;
//! the test reads the spans the collector wrote as OTLP JSON.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mcp::{PROTOCOL, initialize, post, request, wait_for_tool};
use common::{Gateway, McpEcho, Proc, Upstream, free_port, repo_root, temp_dir, tenant_yaml_with, token};
use serde_json::{Value, json};

/// The collector binary: TENANTGATE_OTELCOL, or built now (cached by e2e/otelcol/build).
fn otelcol_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TENANTGATE_OTELCOL") {
        return bin.into();
    }
    let out = Command::new(repo_root().join("e2e/otelcol/build"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run e2e/otelcol/build");
    assert!(out.status.success(), "e2e/otelcol/build failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A running collector: OTLP over gRPC and HTTP on 127.0.0.1, every span
/// written to `traces.json` (one OTLP JSON export request per line).
struct Collector {
    proc: Proc,
    grpc: String,
    http: String,
    file: PathBuf,
    dir: PathBuf,
}

impl Collector {
    async fn start() -> Self {
        let dir = temp_dir("otelcol");
        std::fs::create_dir_all(&dir).expect("collector dir");
        let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let file = dir.join("traces.json");
        let config = format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: '{grpc}' }}\n      http: {{ endpoint: '{http}' }}\n\
             exporters:\n  file:\n    path: '{}'\n    flush_interval: 100ms\n\
             service:\n  telemetry:\n    logs: {{ level: warn }}\n    metrics: {{ level: none }}\n\
             \x20 pipelines:\n    traces: {{ receivers: [otlp], exporters: [file] }}\n",
            file.display()
        );
        std::fs::write(dir.join("config.yaml"), config).expect("collector config");
        let child = Command::new(otelcol_bin())
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("collector.log")).expect("log")))
            .spawn()
            .expect("start the collector");
        let mut collector = Self { proc: Proc(child), grpc, http, file, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&collector.http).await.is_err()
            || tokio::net::TcpStream::connect(&collector.grpc).await.is_err()
        {
            let exited = collector.proc.0.try_wait().expect("try_wait");
            assert!(exited.is_none() && Instant::now() < deadline, "the collector did not listen: {}", collector.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        collector
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collector.log")).unwrap_or_default()
    }

    /// Every span received so far, flattened.
    fn spans(&self) -> Vec<Span> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut spans = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let export: Value = serde_json::from_str(line).expect("OTLP JSON");
            for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                let resource = attributes(&rs["resource"]["attributes"]);
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        spans.push(Span {
                            trace_id: s["traceId"].as_str().unwrap_or_default().to_owned(),
                            span_id: s["spanId"].as_str().unwrap_or_default().to_owned(),
                            parent_id: s["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                            name: s["name"].as_str().unwrap_or_default().to_owned(),
                            kind: s["kind"].as_i64().unwrap_or_default(),
                            status: s["status"]["code"].as_i64().unwrap_or_default(),
                            attributes: attributes(&s["attributes"]),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// The spans once `done` holds for them, waiting up to 20 s.
    async fn spans_until(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "{what}: not received in time: {spans:#?}\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Debug)]
#[allow(dead_code)]
struct Span {
    trace_id: String,
    span_id: String,
    parent_id: String,
    name: String,
    /// OTLP: 2 server, 3 client.
    kind: i64,
    /// OTLP: 0 unset, 1 ok, 2 error.
    status: i64,
    attributes: BTreeMap<String, Value>,
    resource: BTreeMap<String, Value>,
}

impl Span {
    fn str(&self, key: &str) -> &str {
        self.attributes.get(key).and_then(Value::as_str).unwrap_or_default()
    }

    /// An integer attribute (OTLP JSON writes them as strings).
    fn int(&self, key: &str) -> i64 {
        match self.attributes.get(key) {
            Some(Value::String(s)) => s.parse().unwrap_or_else(|_| panic!("{key} = {s:?} is not an integer")),
            Some(v) => v.as_i64().unwrap_or_else(|| panic!("{key} = {v} is not an integer")),
            None => panic!("{key} missing on {self:#?}"),
        }
    }
}

/// OTLP JSON's `[{key, value: {stringValue|intValue|doubleValue|boolValue}}]` as a map.
fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let value = kv["value"].as_object()?.values().next()?.clone();
            Some((kv["key"].as_str()?.to_owned(), value))
        })
        .collect()
}

/// The SERVER span of the request whose `x-request-id` was `id`.
fn request_span<'a>(spans: &'a [Span], id: &str) -> &'a Span {
    let found: Vec<_> = spans.iter().filter(|s| s.kind == 2 && s.str("tenantgate.request_id") == id).collect();
    assert_eq!(found.len(), 1, "one SERVER span for request {id}: {spans:#?}");
    found[0]
}

/// The CLIENT spans under `parent`, in start order (their `tenantgate.attempt`s and targets say it).
fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.parent_id == parent.span_id && s.trace_id == parent.trace_id).collect()
}

/// A chat request: its `x-request-id` and answer.
async fn chat(gw: &Gateway, model: &str, traceparent: Option<&str>) -> (String, Value) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let mut r = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&gw.token)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(tp) = traceparent {
        r = r.header("traceparent", tp);
    }
    let response = r.send().await.expect("chat");
    assert_eq!(response.status(), 200, "{model}");
    let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).expect("x-request-id").to_owned();
    (id, response.json().await.expect("JSON answer"))
}

fn manifests(upstream: &Upstream, echo: &McpEcho, endpoint: &str, protocol: &str) -> String {
    let spec = format!("  observability:\n    tracing: {{ otlpEndpoint: '{endpoint}', protocol: {protocol} }}\n");
    let docs = format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{ name: echo, namespace: tg-test }}\nspec:\n  url: {}/mcp\n  tools: {{ prefix: echo }}\n  timeoutSeconds: 5\n",
        echo.url
    );
    tenant_yaml_with(&upstream.url, "test", &spec, &docs)
}

/// A `tools/call` of `echo_echo` in `session`: its `x-request-id`, and the `traceparent` the
/// MCP server received with it.
async fn call_echo(gw: &Gateway, token: &str, session: &str, echo: &McpEcho) -> (String, String) {
    let call = json!({"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": {"name": "echo_echo", "arguments": {"text": "traced"}}});
    let response = request(gw, token, Some(session), &call).send().await.expect("tools/call");
    assert_eq!(response.status(), 200);
    let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).expect("id").to_owned();
    assert!(response.text().await.expect("body").contains("traced"));
    let saw = reqwest::get(format!("{}/last-traceparent", echo.url)).await.expect("GET").text().await.expect("body");
    (id, saw)
}

/// The trace id and span id of a W3C `traceparent`.
fn ids(traceparent: &str) -> (&str, &str) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent:?}");
    (parts[1], parts[2])
}

#[tokio::test]
async fn the_collector_receives_a_trace_per_request_with_genai_and_mcp_spans() {
    let collector = Collector::start().await;
    let (upstream, echo) = (Upstream::start(), McpEcho::start());
    let mut gw =
        Gateway::start(&manifests(&upstream, &echo, &format!("http://{}", collector.http), "http/protobuf")).await;
    let mut grpc = Gateway::start(&manifests(&upstream, &echo, &format!("http://{}", collector.grpc), "grpc")).await;

    // A plain request; one that fails over (up/down answers 503, then up/backup); one
    // continuing a client's trace.
    let (plain, answer) = chat(&gw, "chat", None).await;
    upstream.script("down", json!([]), Some(json!({"status": 503}))).await;
    let (failover, _) = chat(&gw, "failover", None).await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (continued, _) = chat(&gw, "chat", Some(&format!("00-{client_trace}-00f067aa0ba902b7-01"))).await;
    let upstream_saw = upstream.last("primary").await["traceparent"].as_str().map(str::to_owned);
    let (over_grpc, _) = chat(&grpc, "chat", None).await;

    // An MCP tool call (on the pass-through path of a session initialized here).
    let bob = token(json!({"sub": "bob"}));
    wait_for_tool(&gw, &bob, "echo_echo").await;
    let session = initialize(&gw, &bob).await;
    let (mcp_request, echo_saw) = call_echo(&gw, &bob, &session, &echo).await;

    // The same call in a session on rmcp's full path (its client declared roots).
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": PROTOCOL,
        "capabilities": {"roots": {"listChanged": true}}, "clientInfo": {"name": "trace-test", "version": "1"}}});
    let (status, full_session, _) = post(&gw, &bob, None, init).await;
    assert_eq!(status, 200);
    let full_session = full_session.expect("a session");
    let (status, ..) =
        post(&gw, &bob, Some(&full_session), json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    assert_eq!(status, 202);
    let (full_request, echo_saw_full) = call_echo(&gw, &bob, &full_session, &echo).await;

    // Stopping flushes what is still batched.
    assert!(gw.terminate(), "the gateway stops cleanly");
    assert!(grpc.terminate(), "the gRPC gateway stops cleanly");
    let spans = collector
        .spans_until("every request's span", |spans| {
            [&plain, &failover, &continued, &over_grpc, &mcp_request, &full_request]
                .iter()
                .all(|id| spans.iter().any(|s| s.kind == 2 && s.str("tenantgate.request_id") == id.as_str()))
        })
        .await;

    // One trace per request, each with one SERVER span.
    let servers: Vec<&Span> =
        [&plain, &failover, &continued, &over_grpc].iter().map(|id| request_span(&spans, id)).collect();
    let mut traces: Vec<&str> = servers.iter().map(|s| s.trace_id.as_str()).collect();
    traces.sort_unstable();
    traces.dedup();
    assert_eq!(traces.len(), 4, "a trace per request: {servers:#?}");
    for server in &servers {
        let in_trace = spans.iter().filter(|s| s.trace_id == server.trace_id && s.kind == 2).count();
        assert_eq!(in_trace, 1, "one request in trace {}", server.trace_id);
    }

    // The plain request: GenAI attributes, the cost at the target's price, one attempt.
    let s = request_span(&spans, &plain);
    assert_eq!(s.name, "chat chat");
    assert_eq!(s.resource.get("service.name"), Some(&json!("tenantgate-gateway")));
    assert_eq!(s.resource.get("tenantgate.tenant"), Some(&json!("test")));
    assert_eq!(s.str("gen_ai.operation.name"), "chat");
    assert_eq!(s.str("gen_ai.request.model"), "chat");
    assert_eq!(s.str("gen_ai.response.model"), "primary");
    assert_eq!(s.str("gen_ai.provider.name"), "openai");
    assert_eq!(s.str("http.request.method"), "POST");
    assert_eq!(s.int("http.response.status_code"), 200);
    let (input, output) = (answer["usage"]["prompt_tokens"].as_i64(), answer["usage"]["completion_tokens"].as_i64());
    assert_eq!(Some(s.int("gen_ai.usage.input_tokens")), input, "{answer}");
    assert_eq!(Some(s.int("gen_ai.usage.output_tokens")), output, "{answer}");
    // inputPerMillion 2.5, outputPerMillion 10 (USD), in nano-dollars.
    let nanos = input.unwrap_or_default() * 2_500 + output.unwrap_or_default() * 10_000;
    assert!(nanos > 0, "a priced request");
    assert_eq!(s.int("tenantgate.cost_nanos"), nanos);
    let cost = s.attributes.get("tenantgate.cost").and_then(Value::as_f64).expect("tenantgate.cost");
    assert!((cost - nanos as f64 / 1e9).abs() < 1e-12, "{cost}");
    assert_eq!(s.str("tenantgate.currency"), "USD");
    let attempts = children(&spans, s);
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!((attempts[0].kind, attempts[0].status), (3, 1), "a CLIENT span, ok");
    assert_eq!(attempts[0].str("tenantgate.target"), "up/primary");
    assert_eq!(attempts[0].str("gen_ai.request.model"), "primary");

    // Failover: the failed attempts on up/down (503s), then up/backup, all under the request.
    let s = request_span(&spans, &failover);
    assert_eq!(s.str("gen_ai.response.model"), "backup");
    let mut attempts = children(&spans, s);
    attempts.sort_by_key(|a| (a.str("tenantgate.target") != "up/down", a.int("tenantgate.attempt")));
    let targets: Vec<&str> = attempts.iter().map(|a| a.str("tenantgate.target")).collect();
    assert!(targets.len() >= 2 && targets[..targets.len() - 1].iter().all(|t| *t == "up/down"), "{targets:?}");
    assert_eq!(targets.last(), Some(&"up/backup"), "{targets:?}");
    for failed in &attempts[..attempts.len() - 1] {
        assert_eq!(failed.status, 2, "an error: {failed:#?}");
        assert_eq!(failed.int("http.response.status_code"), 503);
        assert_eq!(failed.str("error.type"), "server_error");
    }
    assert_eq!(attempts.last().map(|a| a.status), Some(1));

    // The client's trace continues, and the provider's request carries it with the attempt's span.
    let s = request_span(&spans, &continued);
    assert_eq!(s.trace_id, client_trace);
    assert_eq!(s.parent_id, "00f067aa0ba902b7", "the client's span is the parent");
    let attempt = children(&spans, s);
    assert_eq!(attempt.len(), 1);
    let saw = upstream_saw.expect("the provider got a traceparent");
    assert_eq!(ids(&saw), (client_trace, attempt[0].span_id.as_str()), "{saw}");

    // OTLP over gRPC delivers as well.
    assert_eq!(request_span(&spans, &over_grpc).str("gen_ai.response.model"), "primary");

    // The MCP tool call: MCP attributes, an upstream CLIENT span, its traceparent at the server.
    let s = request_span(&spans, &mcp_request);
    assert_eq!(s.name, "tools/call echo_echo");
    assert_eq!(s.str("mcp.method.name"), "tools/call");
    assert_eq!(s.str("gen_ai.tool.name"), "echo_echo");
    assert_eq!(s.str("gen_ai.operation.name"), "execute_tool");
    assert_eq!(s.str("mcp.session.id"), session);
    assert_eq!(s.str("jsonrpc.request.id"), "42");
    let upstream_call = children(&spans, s);
    assert_eq!(upstream_call.len(), 1, "{upstream_call:#?}");
    assert_eq!(upstream_call[0].str("tenantgate.mcp_connection"), "echo");
    assert_eq!(ids(echo_saw.trim()), (s.trace_id.as_str(), upstream_call[0].span_id.as_str()), "{echo_saw}");

    // On the full path too: the request's span, the upstream call's under it, its traceparent at the server.
    let s = request_span(&spans, &full_request);
    assert_eq!(s.name, "tools/call echo_echo");
    assert_eq!(s.str("mcp.session.id"), full_session);
    let upstream_call = children(&spans, s);
    assert_eq!(upstream_call.len(), 1, "{upstream_call:#?}");
    assert_eq!(upstream_call[0].str("gen_ai.tool.name"), "echo_echo");
    assert_eq!(upstream_call[0].str("tenantgate.mcp_connection"), "echo");
    assert_eq!(ids(echo_saw_full.trim()), (s.trace_id.as_str(), upstream_call[0].span_id.as_str()), "{echo_saw_full}");
}

#[tokio::test]
async fn a_collector_that_is_down_slows_no_request_and_the_log_says_so() {
    let (upstream, echo) = (Upstream::start(), McpEcho::start());
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut gw = Gateway::start_logged(&manifests(&upstream, &echo, &nowhere, "http/protobuf"), &[]).await;
    let started = Instant::now();
    for _ in 0..20 {
        chat(&gw, "chat", None).await;
    }
    assert!(started.elapsed() < Duration::from_secs(5), "20 requests took {:?}", started.elapsed());
    assert!(gw.terminate(), "the gateway stops cleanly, its last export failing");
    let log = gw.log();
    assert!(log.contains("BatchSpanProcessor") && log.contains("Export"), "the failed export is logged: {log}");
}
