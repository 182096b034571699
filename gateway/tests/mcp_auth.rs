//! `/mcp` as an OAuth protected resource (its metadata, the 401 challenge, the
//! audience tokens must name) and `tools.access` (who may list and call which
//! tools, on `/mcp` and in chat's tool loop): the gateway process with
//! e2e/mcp-echo as the MCP server and e2e/mock-llm as the model.

mod common;

use common::mcp::{initialize, post, tool_names, wait_for_tool};
use common::{Gateway, McpEcho, Upstream, audit_events, tenant_yaml, tenant_yaml_with, token};
use reqwest::StatusCode;
use serde_json::{Value, json};

const RESOURCE: &str = "https://gw.example/mcp";
const METADATA_URL: &str = "https://gw.example/.well-known/oauth-protected-resource/mcp";

/// The test tenant with an MCP resource and scopes, and an `echo` connection
/// whose `echo` tool only developers and alice@x may use.
fn manifests(upstream: &Upstream, echo: &McpEcho) -> String {
    let spec = format!("  mcp:\n    resource: {RESOURCE}\n    scopes: [\"mcp:tools\", openid]\n");
    let connection = format!(
        "apiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{ name: echo, namespace: tg-test }}\nspec:\n  url: {}/mcp\n  tools:\n    prefix: echo\n    deny: [\"secret_*\"]\n    access: [ {{ tools: [echo], roles: [developer], subjects: [\"alice@x\"] }} ]\n  timeoutSeconds: 5\n",
        echo.url
    );
    tenant_yaml_with(&upstream.url, "test", &spec, &connection)
}

/// A token for `/mcp` (its audience is the resource) as `sub` with `roles`.
fn mcp_token(sub: &str, roles: &[&str]) -> String {
    token(json!({"aud": RESOURCE, "sub": sub, "roles": roles}))
}

fn challenge(r: &reqwest::Response) -> String {
    r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = gw.client.get(format!("{}{path}", gw.url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("GET")
}

async fn post_mcp(gw: &Gateway, token: Option<&str>, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = gw
        .client
        .post(format!("{}/mcp", gw.url))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("POST /mcp")
}

#[tokio::test]
async fn the_metadata_names_the_resource_and_every_401_points_at_it() {
    let (upstream, echo) = (Upstream::start(), McpEcho::start());
    let gw = Gateway::start(&manifests(&upstream, &echo)).await;
    let expected = json!({
        "resource": RESOURCE,
        "authorization_servers": ["https://issuer.test"],
        "scopes_supported": ["mcp:tools", "openid"],
        "bearer_methods_supported": ["header"],
        "resource_name": "test",
    });
    for path in ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"] {
        let r = get(&gw, path, &[("x-forwarded-host", "elsewhere.example")]).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        assert!(r.headers().get("vary").is_none(), "a configured resource does not vary");
        assert_eq!(r.json::<Value>().await.expect("JSON"), expected, "{path}");
    }
    assert_eq!(get(&gw, "/.well-known/oauth-protected-resource/other", &[]).await.status(), StatusCode::NOT_FOUND);
    // A browser's preflight for a cross-origin fetch with MCP-Protocol-Version.
    let r = gw
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/.well-known/oauth-protected-resource/mcp", gw.url))
        .header("origin", "https://inspector.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "mcp-protocol-version")
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(r.headers()["access-control-allow-headers"], "mcp-protocol-version");

    // No token: where to get one, and which scopes to ask for.
    let r = post_mcp(&gw, None, &[]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&r), format!(r#"Bearer resource_metadata="{METADATA_URL}", scope="mcp:tools openid""#));

    // A valid token of the tenant, but for the API audience only: refused on /mcp, naming the audience.
    let api_token = token(json!({"sub": "bob", "roles": ["developer"]}));
    let r = post_mcp(&gw, Some(&api_token), &[]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let header = challenge(&r);
    assert!(
        header.starts_with(&format!(r#"Bearer resource_metadata="{METADATA_URL}", scope="mcp:tools openid", error="invalid_token", error_description=""#)),
        "{header}"
    );
    assert!(header.contains("audience (aud)") && header.contains(RESOURCE), "{header}");
    let body = r.text().await.expect("body");
    assert!(body.contains("audience (aud) does not include") && body.contains(RESOURCE), "{body}");
    assert!(!body.contains(&api_token) && !header.contains(&api_token), "the token is echoed");

    // Expired: invalid_token too.
    let expired = token(json!({"aud": RESOURCE, "exp": common::now() - 600}));
    let r = post_mcp(&gw, Some(&expired), &[]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&r).contains(r#"error="invalid_token", error_description="invalid token: expired""#));

    // A token for the resource works on /mcp; the API keeps its own audience.
    let bound = mcp_token("bob", &["developer"]);
    initialize(&gw, &bound).await;
    let (status, body) = gw.chat_as(&bound, "chat").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("wrong audience"), "{body}");
    assert_eq!(gw.chat_as(&api_token, "chat").await.0, 200);
}

#[tokio::test]
async fn without_a_resource_the_metadata_names_the_url_the_request_came_to() {
    let upstream = Upstream::start();
    let gw = Gateway::start(&tenant_yaml(&upstream.url)).await;
    let own = format!("{}/mcp", gw.url);
    let resource_of = |body: Value| body["resource"].as_str().unwrap_or_default().to_string();

    let r = get(&gw, "/.well-known/oauth-protected-resource/mcp", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["vary"], "host, x-forwarded-host, x-forwarded-proto");
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(resource_of(body.clone()), own);
    assert!(body.get("scopes_supported").is_none(), "{body}");

    let proxied = [("x-forwarded-proto", "https"), ("x-forwarded-host", "GW.Example:8443")];
    let r = get(&gw, "/.well-known/oauth-protected-resource", &proxied).await;
    assert_eq!(resource_of(r.json().await.expect("JSON")), "https://gw.example:8443/mcp");
    // Unusable forwarded values are ignored, not copied into the URL.
    let hostile = [("x-forwarded-proto", "javascript"), ("x-forwarded-host", "evil.example/\"><x")];
    let r = get(&gw, "/.well-known/oauth-protected-resource/mcp", &hostile).await;
    assert_eq!(resource_of(r.json().await.expect("JSON")), own);

    let r = post_mcp(&gw, None, &proxied).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&r),
        r#"Bearer resource_metadata="https://gw.example:8443/.well-known/oauth-protected-resource/mcp""#
    );
    // No resource, no binding: the tenant's usual tokens work on /mcp.
    initialize(&gw, &gw.token).await;
}

async fn call(gw: &Gateway, token: &str, session: &str, tool: &str) -> Value {
    let params = json!({"name": tool, "arguments": {"text": "hi"}});
    let (status, _, message) =
        post(gw, token, Some(session), json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": params}))
            .await;
    assert_eq!(status, StatusCode::OK, "{message}");
    message
}

#[tokio::test]
async fn tools_access_hides_and_refuses_tools_by_role_and_subject_and_audits_refusals() {
    let (upstream, echo) = (Upstream::start(), McpEcho::start());
    let gw = Gateway::start(&manifests(&upstream, &echo)).await;
    let (developer, alice, mallory) =
        (mcp_token("bob", &["developer"]), mcp_token("alice@x", &[]), mcp_token("mallory", &["dev"]));
    wait_for_tool(&gw, &developer, "echo_echo").await;

    for (who, token, sees) in [("developer", &developer, true), ("alice", &alice, true), ("mallory", &mallory, false)] {
        let session = initialize(&gw, token).await;
        let (status, names) = tool_names(&gw, token, &session).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(names.iter().any(|n| n == "echo_echo"), sees, "{who}: {names:?}");
        // Tools no rule matches stay open to everyone; allow/deny still apply.
        assert!(names.iter().any(|n| n == "echo_slow"), "{who}: {names:?}");
        assert!(!names.iter().any(|n| n.starts_with("echo_secret")), "{who}: {names:?}");
    }

    let before = echo.calls().await;
    let session = initialize(&gw, &mallory).await;
    let refused = call(&gw, &mallory, &session, "echo_echo").await;
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the caller's roles (dev) may not call the tool echo_echo")
            && message.contains("spec.tools.access"),
        "{message}"
    );
    assert!(!message.contains("developer"), "the roles that would be granted leak: {message}");
    assert_eq!(echo.calls().await, before, "a refused call reached the MCP server");

    let session = initialize(&gw, &alice).await;
    let answered = call(&gw, &alice, &session, "echo_echo").await;
    assert_eq!(answered["result"]["content"][0]["text"], "hi", "{answered}");
    assert_eq!(echo.calls().await, before + 1);

    let events = audit_events(&gw, "toolCall", 1, |e| e["actor"] == "mallory").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!((e["status"].as_i64(), e["reason"].as_str()), (Some(403), Some("ToolAccessDenied")), "{e}");
    assert_eq!((e["resource"].as_str(), e["details"]["via"].as_str()), (Some("echo_echo"), Some("mcp")), "{e}");
    assert_eq!(e["details"]["tool"], "echo");
    assert_eq!(e["details"]["roles"], json!(["dev"]));
}

#[tokio::test]
async fn chat_offers_only_the_callers_tools_and_refuses_and_audits_a_withheld_one() {
    let (upstream, echo) = (Upstream::start(), McpEcho::start());
    let gw = Gateway::start(&manifests(&upstream, &echo)).await;
    wait_for_tool(&gw, &mcp_token("bob", &["developer"]), "echo_echo").await;
    // The model calls echo_echo whether or not it was offered, then answers from the tool results.
    upstream.script("primary", json!([{"tool_call": "echo_echo"}]), None).await;
    let before = echo.calls().await;
    let mallory = token(json!({"sub": "mallory", "roles": ["dev"]}));
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "echo hi"}],
        "tenantgate": {"mcp": {"connections": ["echo"]}}});
    let r = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&mallory)
        .header("x-request-id", "withheld-tool")
        .json(&body)
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["tenantgate-mcp-tool-calls"], "1");
    let answer: Value = r.json().await.expect("JSON");
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(content.contains("may not call the tool echo_echo"), "{answer}");
    assert_eq!(echo.calls().await, before, "a withheld tool reached the MCP server");

    let turns = upstream.requests("primary").await;
    let offered: Vec<&str> =
        turns[0]["tools"].as_array().into_iter().flatten().filter_map(|t| t["function"]["name"].as_str()).collect();
    assert!(offered.contains(&"echo_slow") && !offered.contains(&"echo_echo"), "{offered:?}");

    let events = audit_events(&gw, "toolCall", 1, |e| e["requestId"] == "withheld-tool").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!((e["status"].as_i64(), e["reason"].as_str()), (Some(403), Some("ToolAccessDenied")), "{e}");
    assert_eq!((e["actor"].as_str(), e["details"]["via"].as_str()), (Some("mallory"), Some("chat")), "{e}");
}
