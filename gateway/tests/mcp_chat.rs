//! MCP tools inside chat (`tenantgate.mcp`): the gateway process, e2e/mock-llm
//! as the model and e2e/mcp-echo (rmcp, streamable HTTP) as the MCP server.

mod common;

use std::time::Duration;

use common::{Gateway, McpEcho, Upstream, tenant_yaml};
use serde_json::{Value, json};

/// The test tenant plus an `echo` connection (its `secret_*` tools denied)
/// and a `down` connection to a closed port.
async fn start() -> (Upstream, McpEcho, Gateway) {
    let upstream = Upstream::start();
    let echo = McpEcho::start();
    let manifests = format!(
        "{}\n---\napiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{ name: echo, namespace: tg-test }}\nspec:\n  transport: streamableHttp\n  url: {}/mcp\n  tools: {{ prefix: echo, deny: [\"secret_*\"] }}\n  timeoutSeconds: 5\n---\napiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{ name: down, namespace: tg-test }}\nspec:\n  transport: streamableHttp\n  url: http://127.0.0.1:{}/mcp\n  timeoutSeconds: 1\n",
        tenant_yaml(&upstream.url),
        echo.url,
        common::free_port()
    );
    let gw = Gateway::start(&manifests).await;
    // The gateway is ready before its MCP upstreams: wait until `echo` is.
    for _ in 0..100 {
        let r = gw.post("/v1/chat/completions", &ask("chat", json!({"connections": ["echo"], "maxSteps": 1}))).await;
        if r.status() != 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (upstream, echo, gw)
}

fn ask(model: &str, mcp: Value) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "What does the echo tool say?"}], "tenantgate": {"mcp": mcp}})
}

async fn send(gw: &Gateway, body: &Value, request_id: &str) -> reqwest::Response {
    gw.client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&gw.token)
        .header("x-request-id", request_id)
        .json(body)
        .send()
        .await
        .expect("request")
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Audit events of `kind` for the request `request_id`, once `want` are there (5 s at most).
async fn audited(gw: &Gateway, kind: &str, request_id: &str, want: usize) -> Vec<Value> {
    common::audit_events(gw, kind, want, |e| e["requestId"] == request_id).await
}

fn tool_names(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_model_calls_an_mcp_tool_and_answers_with_its_result() {
    let (upstream, echo, gw) = start().await;
    let calls_before = echo.calls().await;
    let seen_before = upstream.requests("primary").await.len();
    let r = send(&gw, &ask("chat", json!({"connections": ["echo"]})), "mcp-chat-answer").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "tenantgate-mcp-turns"), "2");
    assert_eq!(header(&r, "tenantgate-mcp-steps"), "1");
    assert_eq!(header(&r, "tenantgate-mcp-tool-calls"), "1");
    assert_eq!(header(&r, "tenantgate-mcp-finish"), "answered");
    let body: Value = r.json().await.expect("JSON");
    // mock-llm answers with the tool results it was given: the echo server's output.
    assert_eq!(body["choices"][0]["message"]["content"], "Tool results: mock", "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(echo.calls().await, calls_before + 1, "the tool ran on the MCP server");

    let seen = upstream.requests("primary").await;
    let turns = &seen[seen_before..];
    assert_eq!(turns.len(), 2, "two model turns");
    for t in turns {
        assert!(t.get("tenantgate").is_none(), "the extension field reached the provider: {t}");
        assert!(!t.to_string().contains("tenantgate\":"), "{t}");
        assert_eq!(t["stream"], Value::Null, "tool-calling turns run without streaming");
    }
    // Offered under their /mcp names, the denied tool not among them.
    assert_eq!(tool_names(&turns[0]), ["echo_echo", "echo_slow", "echo_grow"]);
    let messages = turns[1]["messages"].as_array().expect("messages");
    let last = messages.last().expect("a message");
    assert_eq!(last["role"], "tool");
    assert_eq!(last["content"], "mock");
    let assistant = &messages[messages.len() - 2];
    assert_eq!(assistant["tool_calls"][0]["function"]["name"], "echo_echo");
    assert_eq!(last["tool_call_id"], assistant["tool_calls"][0]["id"]);

    // One usage row and chat event per model turn; the tool call audited like /mcp's.
    let chats = audited(&gw, "chat", "mcp-chat-answer", 2).await;
    assert_eq!(chats.len(), 2, "{chats:?}");
    assert!(chats.iter().all(|e| e["status"] == 200 && e["resource"] == "chat"), "{chats:?}");
    assert!(chats.iter().all(|e| e["details"]["promptTokens"].as_u64() > Some(0)), "{chats:?}");
    assert_ne!(chats[0]["details"]["usageId"], chats[1]["details"]["usageId"]);
    let tools = audited(&gw, "toolCall", "mcp-chat-answer", 1).await;
    assert_eq!(tools.len(), 1, "{tools:?}");
    let t = &tools[0];
    assert_eq!(
        (t["action"].as_str(), t["resource"].as_str(), t["status"].as_i64()),
        (Some("tools/call"), Some("echo_echo"), Some(200))
    );
    assert_eq!(t["details"]["via"], "chat");
    assert_eq!(t["details"]["connection"], "echo");
    assert_eq!(t["details"]["outcome"], "ok");
    assert_eq!(t["actor"], "tester");
}

#[tokio::test]
async fn the_step_limit_ends_with_a_streamed_answer_without_tools() {
    let (upstream, echo, gw) = start().await;
    let calls_before = echo.calls().await;
    let seen_before = upstream.requests("primary").await.len();
    // `required`: the mock calls a tool on every turn it may.
    let mut body = ask("chat", json!({"connections": ["*"], "maxSteps": 2}));
    body["tool_choice"] = json!("required");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = send(&gw, &body, "mcp-chat-limit").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    assert_eq!(header(&r, "tenantgate-mcp-turns"), "3");
    assert_eq!(header(&r, "tenantgate-mcp-steps"), "2");
    assert_eq!(header(&r, "tenantgate-mcp-tool-calls"), "2");
    assert_eq!(header(&r, "tenantgate-mcp-finish"), "max_steps");
    let text = r.text().await.expect("body");
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk")).collect();
    let answer: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(answer, "Tool results: mock");
    assert!(chunks.iter().any(|c| c["usage"]["total_tokens"].as_u64() > Some(0)), "{text}");
    assert_eq!(echo.calls().await, calls_before + 2);

    let seen = upstream.requests("primary").await;
    let turns = &seen[seen_before..];
    assert_eq!(turns.len(), 3);
    assert!(turns.iter().all(|t| t.get("tenantgate").is_none()));
    assert_eq!(turns[2]["tool_choice"], "none", "the last turn may not call tools");
    assert_eq!(turns[2]["stream"], true, "the last turn streams from the provider");
    assert_eq!(turns[0]["tool_choice"], "required");
    assert_eq!(audited(&gw, "chat", "mcp-chat-limit", 3).await.len(), 3);
    assert_eq!(audited(&gw, "toolCall", "mcp-chat-limit", 2).await.len(), 2);
}

#[tokio::test]
async fn anthropic_routes_run_the_same_loop() {
    let (_upstream, echo, gw) = start().await;
    let calls_before = echo.calls().await;
    let mut body = ask("claude", json!({"connections": ["echo"], "maxSteps": 3}));
    body["stream"] = json!(true);
    let r = send(&gw, &body, "mcp-chat-claude").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "tenantgate-mcp-finish"), "answered");
    let text = r.text().await.expect("body");
    let answer: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(answer, "Tool results: mock", "{text}");
    assert_eq!(echo.calls().await, calls_before + 1);
}

#[tokio::test]
async fn bad_extensions_are_refused_naming_the_field_and_reach_nobody() {
    let (upstream, echo, gw) = start().await;
    let calls_before = echo.calls().await;
    let count_before = upstream.count("primary").await;
    let cases = [
        (ask("chat", json!({"connections": ["github"]})), "tenantgate.mcp.connections[0]", "\"github\""),
        (ask("chat", json!({"connections": ["echo", "down"]})), "tenantgate.mcp.connections[1]", "not ready"),
        (ask("chat", json!({"connections": ["echo"], "maxSteps": 17})), "tenantgate.mcp.maxSteps", "between 1 and 16"),
        (ask("chat", json!({"connections": ["echo"], "maxSteps": 0})), "tenantgate.mcp.maxSteps", "between 1 and 16"),
        (ask("chat", json!({"connections": []})), "tenantgate.mcp.connections", "at least one"),
        (ask("chat", json!({"connection": ["echo"]})), "tenantgate.mcp.connection", "unknown field"),
    ];
    for (body, param, says) in cases {
        let r = send(&gw, &body, "mcp-chat-bad").await;
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.expect("JSON");
        assert_eq!(e["error"]["param"], param, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(e["error"]["message"].as_str().expect("message").contains(says), "{e}");
    }
    let mut mixed = ask("chat", json!({"connections": ["echo"]}));
    mixed["tools"] = json!([{"type": "function", "function": {"name": "mine", "parameters": {"type": "object"}}}]);
    let r = send(&gw, &mixed, "mcp-chat-bad").await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.expect("JSON");
    assert_eq!(e["error"]["param"], "tools", "{e}");
    assert_eq!(upstream.count("primary").await, count_before, "nothing reached the model");
    assert_eq!(echo.calls().await, calls_before, "nothing reached the MCP server");
}
