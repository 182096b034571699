//! MCP sessions across replicas: two gateway processes of one tenant share
//! its Redis; a session initialized on one is used on the other (the other
//! replays the handshake internally), stays bound to its subject there, and a
//! session deleted or expired on one is gone on both.
//!
//! Run: `e2e/with-services cargo test -p tenantgate-gateway --test services_mcp_sessions`
//! (fails without `TENANTGATE_REDIS_URL`).

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PROTOCOL: &str = "2025-06-18";

fn manifests(tenant: &str) -> String {
    let redis = services_env("TENANTGATE_REDIS_URL");
    let docs = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: redis, namespace: tg-test }}\nstringData:\n  url: {redis}\n\
         ---\napiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{ name: echo, namespace: tg-test }}\n\
         spec:\n  transport: stdio\n  stdio: {{ command: [\"{}\"] }}\n  tools: {{ prefix: echo }}\n  timeoutSeconds: 10\n",
        mcp_echo_bin().display()
    );
    let spec = "  storage:\n    redis: { urlSecretRef: { name: redis, key: url } }\n";
    // Chat is not used here: the provider URL needs no listener.
    tenant_yaml_with("http://127.0.0.1:9", tenant, spec, &docs)
}

/// One JSON-RPC exchange over streamable HTTP: the status, the session id
/// header, and the JSON-RPC message answering `id` (from JSON or SSE).
async fn post(gw: &Gateway, token: &str, session: Option<&str>, body: Value) -> (StatusCode, Option<String>, Value) {
    let mut request = gw
        .client
        .post(format!("{}/mcp", gw.url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL)
        .json(&body);
    if let Some(id) = session {
        request = request.header("mcp-session-id", id);
    }
    let response = tokio::time::timeout(Duration::from_secs(20), request.send()).await.expect("in time").expect("send");
    let status = response.status();
    let session = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let text =
        tokio::time::timeout(Duration::from_secs(20), response.text()).await.expect("body in time").expect("body");
    let message = if sse {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m.get("id").is_some() && m["id"] == body["id"])
            .unwrap_or(Value::Null)
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, session, message)
}

async fn initialize(gw: &Gateway, token: &str) -> String {
    let (status, session, message) = post(
        gw,
        token,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "replica-test", "version": "1"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{message}");
    assert_eq!(message["result"]["protocolVersion"], PROTOCOL, "{message}");
    let session = session.expect("Mcp-Session-Id");
    let (status, _, _) =
        post(gw, token, Some(&session), json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    session
}

async fn tool_names(gw: &Gateway, token: &str, session: &str) -> (StatusCode, Vec<String>) {
    let (status, _, message) =
        post(gw, token, Some(session), json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).await;
    let names = message["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    (status, names)
}

/// Waits until the gateway lists the echo connection's tools (it connects in the background).
async fn wait_for_tools(gw: &Gateway) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let session = initialize(gw, &gw.token).await;
        if tool_names(gw, &gw.token, &session).await.1.iter().any(|n| n == "echo_echo") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "echo_echo never listed on {}", gw.url);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn delete(gw: &Gateway, token: &str, session: &str) -> StatusCode {
    gw.client
        .delete(format!("{}/mcp", gw.url))
        .bearer_auth(token)
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", PROTOCOL)
        .send()
        .await
        .expect("delete")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_replica_a_works_on_replica_b_and_stays_bound() {
    let m = manifests("mcpsessions");
    let (a, b) = tokio::join!(Gateway::start(&m), Gateway::start(&m));
    tokio::join!(wait_for_tools(&a), wait_for_tools(&b));
    let alice = token(json!({"sub": "alice"}));
    let mallory = token(json!({"sub": "mallory"}));

    let session = initialize(&a, &alice).await;
    // Replica B never saw this session: it restores it from Redis.
    let (status, names) = tool_names(&b, &alice, &session).await;
    assert_eq!(status, StatusCode::OK);
    assert!(names.iter().any(|n| n == "echo_echo"), "{names:?}");
    let (status, _, message) = post(
        &b,
        &alice,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo_echo", "arguments": {"text": "from B"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{message}");
    assert_eq!(message["result"]["content"][0]["text"], "from B", "{message}");
    // And back on A, the same session still works.
    assert_eq!(tool_names(&a, &alice, &session).await.0, StatusCode::OK);

    // Another subject presenting the id: 404 on both replicas, nothing restored for them.
    for gw in [&a, &b] {
        let (status, _, message) =
            post(gw, &mallory, Some(&session), json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{message}");
    }
    // An id nobody issued: 404.
    assert_eq!(tool_names(&b, &alice, "00000000-0000-4000-8000-000000000000").await.0, StatusCode::NOT_FOUND);

    // Deleted on A: gone on B (which had restored it) and on A.
    assert!(delete(&a, &alice, &session).await.is_success());
    assert_eq!(tool_names(&b, &alice, &session).await.0, StatusCode::NOT_FOUND);
    assert_eq!(tool_names(&a, &alice, &session).await.0, StatusCode::NOT_FOUND);

    // Deleted on B, created on A and never used on B before.
    let session = initialize(&a, &alice).await;
    assert!(delete(&b, &alice, &session).await.is_success());
    assert_eq!(tool_names(&a, &alice, &session).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_session_expires_on_every_replica() {
    let m = manifests("mcpexpiry");
    let extra = ["--mcp-session-lifetime-secs", "3"];
    let (a, b) = tokio::join!(Gateway::start_with(&m, &extra), Gateway::start_with(&m, &extra));
    tokio::join!(wait_for_tools(&a), wait_for_tools(&b));
    let alice = token(json!({"sub": "alice"}));
    let session = initialize(&a, &alice).await;
    assert_eq!(tool_names(&b, &alice, &session).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(tool_names(&b, &alice, &session).await.0, StatusCode::NOT_FOUND);
    assert_eq!(tool_names(&a, &alice, &session).await.0, StatusCode::NOT_FOUND);
    // A new initialize works again.
    let session = initialize(&b, &alice).await;
    assert_eq!(tool_names(&a, &alice, &session).await.0, StatusCode::OK);
}
