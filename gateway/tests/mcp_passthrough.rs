//! The `tools/call` pass-through of `/mcp`: a session whose client declared
//! none of sampling, elicitation and roots is served without rmcp's decoding,
//! and gets what a session on the full path gets (the same ids, results,
//! errors, guards, limits and audit events). The gateway process with
//! e2e/mcp-echo (which answers over an event stream) as the MCP server.

mod common;

use common::mcp::{PROTOCOL, request, wait_for_tool};
use common::{Gateway, McpEcho, Upstream, audit_events, tenant_yaml_with, token};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The test tenant with `spec` added, an `echo` connection whose `echo` tool
/// only developers may call, and a policy that redacts e-mail addresses.
fn manifests(upstream: &Upstream, echo: &McpEcho, spec: &str) -> String {
    let docs = format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{ name: echo, namespace: tg-test }}\nspec:\n  url: {}/mcp\n  tools:\n    prefix: echo\n    deny: [\"secret_*\"]\n    access: [ {{ tools: [echo], roles: [developer] }} ]\n  timeoutSeconds: 5\n---\napiVersion: tenantgate.dev/v1alpha1\nkind: PromptPolicy\nmetadata: {{ name: guard, namespace: tg-test }}\nspec:\n  guards:\n    redact: [email]\n",
        echo.url
    );
    tenant_yaml_with(&upstream.url, "test", spec, &docs)
}

/// One POST to `/mcp`: the status, the content type and the body.
async fn post(gw: &Gateway, token: &str, session: Option<&str>, body: &Value) -> (StatusCode, String, String, String) {
    let response = request(gw, token, session, body).send().await.expect("POST /mcp");
    let status = response.status();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (content_type, session) = (header("content-type"), header("mcp-session-id"));
    (status, content_type, session, response.text().await.expect("body"))
}

/// The JSON-RPC message answering `id` in a JSON or event-stream body.
fn answer(content_type: &str, text: &str, id: &Value) -> Value {
    if !content_type.starts_with("text/event-stream") {
        return serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()));
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|m| m.get("id") == Some(id) && m.get("method").is_none())
        .unwrap_or(Value::Null)
}

/// A session whose client declared `capabilities`.
async fn session(gw: &Gateway, token: &str, capabilities: Value) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": capabilities, "clientInfo": {"name": "passthrough-test", "version": "1"}}});
    let (status, _, session, text) = post(gw, token, None, &init).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, ..) =
        post(gw, token, Some(&session), &json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    session
}

/// Sessions on both paths for `token`: (pass-through, full).
async fn sessions(gw: &Gateway, token: &str) -> (String, String) {
    (session(gw, token, json!({})).await, session(gw, token, json!({"roots": {"listChanged": true}})).await)
}

async fn call(gw: &Gateway, token: &str, session: &str, id: Value, params: Value) -> (String, String, Value) {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
    let (status, content_type, _, text) = post(gw, token, Some(session), &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let message = answer(&content_type, &text, &id);
    (content_type, text, message)
}

/// How many calls the pass-through served.
async fn passed_through(gw: &Gateway) -> u64 {
    let metrics = gw.metrics().await;
    metrics
        .lines()
        .find(|l| l.starts_with("tenantgate_mcp_passthrough_total{") && l.contains(r#"path="passthrough""#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_pass_through_answers_tools_call_as_the_full_path_does() {
    let (upstream, echo) = (Upstream::start(), McpEcho::start());
    let gw = Gateway::start(&manifests(&upstream, &echo, "")).await;
    let (bob, mallory) =
        (token(json!({"sub": "bob", "roles": ["developer"]})), token(json!({"sub": "mallory", "roles": ["dev"]})));
    wait_for_tool(&gw, &bob, "echo_echo").await;
    let (fast, full) = sessions(&gw, &bob).await;
    let before = (passed_through(&gw).await, echo.calls().await);

    // The prefix is stripped upstream, the ids come back as they were sent, the guard redacts.
    for id in [json!(7), json!("req-7"), json!(-1)] {
        let params = json!({"name": "echo_echo", "arguments": {"text": "write to bob@example.com"}});
        let (content_type, _, through) = call(&gw, &bob, &fast, id.clone(), params.clone()).await;
        let (_, _, served) = call(&gw, &bob, &full, id.clone(), params).await;
        assert!(
            content_type.starts_with("text/event-stream"),
            "the upstream's event stream is relayed: {content_type}"
        );
        assert_eq!(through["id"], id, "{through}");
        assert_eq!(through, served, "pass-through and full path differ");
        let text = through["result"]["content"][0]["text"].as_str().unwrap_or_default();
        assert!(text.starts_with("write to ") && !text.contains("bob@example.com"), "not redacted: {through}");
    }
    assert_eq!(echo.calls().await, before.1 + 6);

    // Unknown, filtered out and refused by tools.access: the same errors, nothing sent upstream.
    let (mallory_fast, mallory_full) = sessions(&gw, &mallory).await;
    for (token, (fast, full), tool, code) in [
        (&bob, (&fast, &full), "echo_nope", -32602),
        (&bob, (&fast, &full), "echo_secret_delete", -32602),
        (&mallory, (&mallory_fast, &mallory_full), "echo_echo", -32600),
    ] {
        let params = json!({"name": tool, "arguments": {"text": "hi"}});
        let (_, _, through) = call(&gw, token, fast, json!(11), params.clone()).await;
        let (_, _, served) = call(&gw, token, full, json!(11), params).await;
        assert_eq!(through["error"]["code"], code, "{tool}: {through}");
        assert_eq!(through, served, "{tool}: pass-through and full path differ");
    }
    assert_eq!(echo.calls().await, before.1 + 6, "a refused call reached the MCP server");

    // Progress notifications of the upstream reach the client on the call's stream.
    let params = json!({"name": "echo_slow", "arguments": {"ms": 40}, "_meta": {"progressToken": "p-1"}});
    let (_, text, through) = call(&gw, &bob, &fast, json!(12), params).await;
    assert_eq!(through["result"]["content"][0]["text"], "slept 40 ms", "{text}");
    let progress = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .filter(|m| m["method"] == "notifications/progress" && m["params"]["progressToken"] == "p-1")
        .count();
    assert_eq!(progress, 4, "{text}");

    // 3 answered + 3 refused + 1 slow on the pass-through; the full path's calls are not counted.
    assert_eq!(passed_through(&gw).await, before.0 + 7);

    // One audit event per call either way, alike but for the duration.
    let events = audit_events(&gw, "toolCall", 6, |e| e["actor"] == "bob" && e["resource"] == "echo_echo").await;
    assert_eq!(events.len(), 6, "{events:?}");
    let strip = |e: &Value| {
        let mut e = e.clone();
        for volatile in ["id", "time", "timestamp", "createdAt"] {
            e.as_object_mut().map(|o| o.remove(volatile));
        }
        e["details"].as_object_mut().map(|d| d.remove("durationMs"));
        e
    };
    let first = strip(&events[0]);
    assert_eq!((first["status"].as_i64(), first["details"]["via"].as_str()), (Some(200), Some("mcp")), "{first}");
    assert_eq!(first["details"]["tool"], "echo");
    for e in &events[1..] {
        assert_eq!(strip(e), first);
    }
    let refused = audit_events(&gw, "toolCall", 2, |e| e["actor"] == "mallory").await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(strip(&refused[0]), strip(&refused[1]));
    assert_eq!(refused[0]["reason"], "ToolAccessDenied");
}

#[tokio::test]
async fn the_pass_through_counts_calls_against_the_limits() {
    let (upstream, echo) = (Upstream::start(), McpEcho::start());
    let limits =
        "  limits:\n    requestsPerMinute: 6000\n    burst: 1000\n    perUser: { requestsPerMinute: 1, burst: 2 }\n";
    let gw = Gateway::start(&manifests(&upstream, &echo, limits)).await;
    let bob = token(json!({"sub": "bob", "roles": ["developer"]}));
    wait_for_tool(&gw, &bob, "echo_echo").await;
    let (fast, full) = sessions(&gw, &bob).await;
    let params = json!({"name": "echo_echo", "arguments": {"text": "hi"}});
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(call(&gw, &bob, &fast, json!(5), params.clone()).await.2);
    }
    assert_eq!(answers[0]["result"]["content"][0]["text"], "hi", "{answers:?}");
    let limited = &answers[2];
    assert_eq!(limited["error"]["code"], -32600, "{limited}");
    assert!(limited["error"]["data"]["retryAfterSeconds"].as_f64().is_some_and(|s| s > 0.0), "{limited}");
    let (_, _, served) = call(&gw, &bob, &full, json!(5), params).await;
    assert_eq!(served["error"]["code"], limited["error"]["code"], "{served}");
    assert!(served["error"]["data"]["retryAfterSeconds"].is_number(), "{served}");
    let events = audit_events(&gw, "toolCall", 2, |e| e["status"] == 429).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e["details"]["via"] == "mcp" && e["resource"] == "echo_echo"), "{events:?}");
}

#[tokio::test]
async fn tool_calls_reserve_and_are_charged_their_price_on_both_paths() {
    let (upstream, echo) = (Upstream::start(), McpEcho::start());
    // A call costs 0.001; bob may spend 0.0025 a day: two calls, and the third's price does not fit.
    let limits = "  limits:\n    perUser: { budget: { amount: \"0.0025\", period: Day } }\n";
    let manifests = manifests(&upstream, &echo, limits).replacen(
        "    prefix: echo\n",
        "    prefix: echo\n    pricePerCall: \"0.001\"\n",
        1,
    );
    assert!(manifests.contains("pricePerCall"));
    let gw = Gateway::start(&manifests).await;
    let bob = token(json!({"sub": "bob", "roles": ["developer"]}));
    wait_for_tool(&gw, &bob, "echo_echo").await;
    let (fast, full) = sessions(&gw, &bob).await;
    let params = json!({"name": "echo_echo", "arguments": {"text": "hi"}});
    for session in [&fast, &full] {
        let (_, _, answered) = call(&gw, &bob, session, json!(7), params.clone()).await;
        assert_eq!(answered["result"]["content"][0]["text"], "hi", "{answered}");
    }
    let (_, _, refused) = call(&gw, &bob, &fast, json!(8), params.clone()).await;
    assert_eq!(refused["error"]["data"]["reason"], "BudgetExceeded", "{refused}");
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("The user budget of 0.0025 USD per day (UTC) has 0.0005 USD left"), "{message}");
    // Another user has a budget of their own.
    let alice = token(json!({"sub": "alice", "roles": ["developer"]}));
    let alice_session = session(&gw, &alice, json!({})).await;
    let (_, _, answered) = call(&gw, &alice, &alice_session, json!(9), params).await;
    assert_eq!(answered["result"]["content"][0]["text"], "hi", "{answered}");
    // The audit trail carries each answered call's cost, and the refusal.
    let charged = audit_events(&gw, "toolCall", 3, |e| e["status"] == 200).await;
    assert!(charged.iter().all(|e| e["details"]["cost"] == "0.001"), "{charged:?}");
    let refusals = audit_events(&gw, "toolCall", 1, |e| e["status"] == 402).await;
    assert_eq!(refusals[0]["reason"], "BudgetExceeded", "{refusals:?}");
    let m = gw.metrics().await;
    assert!(m.contains("tenantgate_mcp_tool_cost_nanounits_total{connection=\"echo\"} 3000000"), "{m}");
}

#[tokio::test]
async fn a_cancelled_call_is_cancelled_upstream_and_audited() {
    let (upstream, echo) = (Upstream::start(), McpEcho::start());
    let gw = Gateway::start(&manifests(&upstream, &echo, "")).await;
    let bob = token(json!({"sub": "bob", "roles": ["developer"]}));
    wait_for_tool(&gw, &bob, "echo_slow").await;
    let (fast, _) = sessions(&gw, &bob).await;
    let cancelled = || async {
        let url = format!("{}/cancelled", echo.url);
        gw.client.get(url).send().await.expect("GET /cancelled").text().await.expect("count").trim().parse::<u64>()
    };
    let before = (cancelled().await.expect("a count"), passed_through(&gw).await);
    let params = json!({"name": "echo_slow", "arguments": {"ms": 4000}});
    let body = json!({"jsonrpc": "2.0", "id": "slow-1", "method": "tools/call", "params": params});
    let slow = request(&gw, &bob, Some(&fast), &body).send();
    let cancel = async {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "slow-1"}});
        post(&gw, &bob, Some(&fast), &note).await.0
    };
    let (answered, status) = tokio::join!(slow, cancel);
    assert_eq!(status, StatusCode::ACCEPTED);
    let text = answered.expect("the call's answer").text().await.expect("body");
    assert!(text.contains("cancelled by the client"), "{text}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while cancelled().await.ok() == Some(before.0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(cancelled().await.ok(), Some(before.0 + 1), "the upstream was not told");
    assert_eq!(passed_through(&gw).await, before.1 + 1);
    let events = audit_events(&gw, "toolCall", 1, |e| e["reason"] == "Cancelled").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0]["status"].as_i64(), events[0]["resource"].as_str()), (Some(502), Some("echo_slow")));
}

#[tokio::test]
async fn a_stdio_connection_is_served_by_the_full_path() {
    let upstream = Upstream::start();
    let docs = format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{ name: local, namespace: tg-test }}\nspec:\n  transport: stdio\n  stdio: {{ command: [\"{}\"] }}\n  tools: {{ prefix: local }}\n  timeoutSeconds: 10\n",
        common::mcp_echo_bin().display()
    );
    let gw = Gateway::start(&tenant_yaml_with(&upstream.url, "test", "", &docs)).await;
    let bob = token(json!({"sub": "bob", "roles": ["developer"]}));
    wait_for_tool(&gw, &bob, "local_echo").await;
    let (fast, _) = sessions(&gw, &bob).await;
    let before = passed_through(&gw).await;
    let params = json!({"name": "local_echo", "arguments": {"text": "over stdio"}});
    let (_, _, served) = call(&gw, &bob, &fast, json!("s-1"), params).await;
    assert_eq!(served["result"]["content"][0]["text"], "over stdio", "{served}");
    assert_eq!(served["id"], "s-1");
    assert_eq!(passed_through(&gw).await, before, "a stdio call was passed through");
    assert!(gw.metrics().await.contains(r#"tenantgate_mcp_passthrough_total{path="full"} 1"#));
}
