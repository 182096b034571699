//! Tool pin drift (`tools.pin`) is audited once per tool and definition, and
//! `block` keeps a drifted tool out of chat: the gateway process, e2e/mcp-echo
//! as the MCP server (two connections to it) and e2e/mock-llm as the model.

mod common;

use std::time::Duration;

use common::{Gateway, McpEcho, Upstream, tenant_yaml};
use serde_json::{Value, json};

const WRONG_PIN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn connection(name: &str, prefix: &str, mode: &str, echo: &McpEcho) -> String {
    format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{ name: {name}, namespace: tg-test }}\nspec:\n  transport: streamableHttp\n  url: {}/mcp\n  tools: {{ prefix: {prefix}, pin: {mode}, pins: {{ echo: \"{WRONG_PIN}\" }} }}\n  timeoutSeconds: 5\n",
        echo.url
    )
}

async fn drift_events(gw: &Gateway, want: usize) -> Vec<Value> {
    let admin = common::token(json!({"roles": ["tenant-admin"], "sub": "auditor"}));
    let mut events = Vec::new();
    for _ in 0..100 {
        let (status, page) = gw.get_json("/admin/v1/audit?kind=toolPinDrift&limit=1000", &admin).await;
        assert_eq!(status, 200, "{page}");
        events = page["data"].as_array().cloned().expect("data");
        if events.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    events
}

/// The tool names offered to the model by a chat using `connections`
/// (`tool_choice: "none"`, so one model turn), once they are connected.
async fn offered(gw: &Gateway, upstream: &Upstream, connections: Value) -> Vec<String> {
    let body = chat(connections, json!("none"));
    let mut r = gw.post("/v1/chat/completions", &body).await;
    for _ in 0..50 {
        if r.status() != 400 {
            break;
        }
        // A drift is audited while the connection lists its tools, just before it is published.
        tokio::time::sleep(Duration::from_millis(100)).await;
        r = gw.post("/v1/chat/completions", &body).await;
    }
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let last = upstream.last("primary").await;
    last["body"]["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect()
}

fn chat(connections: Value, tool_choice: Value) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "tool_choice": tool_choice,
        "tenantgate": {"mcp": {"connections": connections, "maxSteps": 1}}})
}

#[tokio::test]
async fn drift_is_audited_once_and_block_hides_the_tool_from_chat() {
    let upstream = Upstream::start();
    let echo = McpEcho::start();
    let manifests = format!(
        "{}\n---\n{}---\n{}",
        tenant_yaml(&upstream.url),
        connection("warned", "w", "warn", &echo),
        connection("blocked", "b", "block", &echo)
    );
    let gw = Gateway::start(&manifests).await;
    let events = drift_events(&gw, 2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let by = |resource: &str| events.iter().find(|e| e["resource"] == resource).cloned().expect(resource);
    let warned = by("warned/echo");
    let blocked = by("blocked/echo");
    for (e, is_blocked) in [(&warned, false), (&blocked, true)] {
        assert_eq!(e["actor"], "system");
        assert_eq!(e["action"], "mcp.pinDrift");
        assert_eq!(e["details"]["tool"], "echo");
        assert_eq!(e["details"]["expectedHash"], WRONG_PIN);
        let actual = e["details"]["actualHash"].as_str().expect("actual hash");
        assert!(actual.len() == 64 && actual != WRONG_PIN, "{e}");
        assert_eq!(e["details"]["blocked"], is_blocked);
    }
    assert_eq!(warned["details"]["actualHash"], blocked["details"]["actualHash"], "one definition, one hash");

    // `block` hides the drifted tool from chat; `warn` keeps it.
    let tools = offered(&gw, &upstream, json!(["blocked"])).await;
    assert!(!tools.contains(&"b_echo".to_string()) && tools.contains(&"b_slow".to_string()), "{tools:?}");
    let tools = offered(&gw, &upstream, json!(["warned"])).await;
    assert!(tools.contains(&"w_echo".to_string()), "{tools:?}");

    // `grow` makes the server announce a list change: `warned` lists again
    // (now with `extra`), and the unchanged drift is not reported twice.
    let grow = json!({"type": "function", "function": {"name": "w_grow"}});
    let r = gw.post("/v1/chat/completions", &chat(json!(["warned"]), grow)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["tenantgate-mcp-tool-calls"], "1");
    let mut relisted = false;
    for _ in 0..50 {
        if offered(&gw, &upstream, json!(["warned"])).await.contains(&"w_extra".to_string()) {
            relisted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(relisted, "the connection listed its tools again");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = drift_events(&gw, 3).await;
    assert_eq!(events.len(), 2, "a drift is audited once per definition: {events:?}");
}
