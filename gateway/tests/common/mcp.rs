//! A raw `/mcp` client for the tests: JSON-RPC over streamable HTTP with
//! reqwest, as a client that knows only the URL and a token sends it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::Gateway;

pub const PROTOCOL: &str = "2025-06-18";

/// One JSON-RPC exchange over streamable HTTP: the status, the session id
/// header, and the JSON-RPC message answering `id` (from JSON or SSE).
pub async fn post(
    gw: &Gateway,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> (StatusCode, Option<String>, Value) {
    let request = request(gw, token, session, &body);
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

/// A POST of `body` to `/mcp` as a streamable-HTTP client sends it.
pub fn request(gw: &Gateway, token: &str, session: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
    let request = gw
        .client
        .post(format!("{}/mcp", gw.url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL)
        .json(body);
    match session {
        Some(id) => request.header("mcp-session-id", id),
        None => request,
    }
}

pub async fn initialize(gw: &Gateway, token: &str) -> String {
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

pub async fn tool_names(gw: &Gateway, token: &str, session: &str) -> (StatusCode, Vec<String>) {
    let (status, _, message) =
        post(gw, token, Some(session), json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).await;
    let names = message["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    (status, names)
}

/// Waits until `token`'s caller sees `tool` listed (connections connect in the background).
pub async fn wait_for_tool(gw: &Gateway, token: &str, tool: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let session = initialize(gw, token).await;
        if tool_names(gw, token, &session).await.1.iter().any(|n| n == tool) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{tool} never listed on {}", gw.url);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
