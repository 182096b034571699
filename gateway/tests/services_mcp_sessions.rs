//! MCP sessions across replicas: two gateway processes of one tenant share
//! its Redis; a session initialized on one is used on the other (the other
//! replays the handshake internally), stays bound to its subject there, and a
//! session deleted or expired on one is gone on both.
//!
//! Run: `e2e/with-services cargo test -p tenantgate-gateway --test services_mcp_sessions`
//! (fails without `TENANTGATE_REDIS_URL`).

mod common;

use std::time::Duration;

use common::mcp::{PROTOCOL, initialize, post, tool_names, wait_for_tool};
use common::*;
use reqwest::StatusCode;
use serde_json::json;

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
    tokio::join!(wait_for_tool(&a, &a.token, "echo_echo"), wait_for_tool(&b, &b.token, "echo_echo"));
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
    tokio::join!(wait_for_tool(&a, &a.token, "echo_echo"), wait_for_tool(&b, &b.token, "echo_echo"));
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
