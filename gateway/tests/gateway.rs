//! The gateway as a process: the OpenAI surface, auth, bad input, config
//! reload and key rotation.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn setup() -> (Upstream, Gateway) {
    let upstream = Upstream::start();
    let gateway = Gateway::start(&tenant_yaml(&upstream.url)).await;
    (upstream, gateway)
}

async fn error_of(r: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = r.status().as_u16();
    let challenge = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON error body");
    assert!(body["error"]["message"].is_string(), "OpenAI error shape: {body}");
    assert!(body["error"]["type"].is_string(), "OpenAI error shape: {body}");
    (status, challenge, body)
}

#[tokio::test]
async fn chat_goes_upstream_with_the_target_model_and_credentials() {
    let (upstream, gw) = setup().await;
    let (status, body) = gw.chat("chat").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    let last = upstream.last("primary").await;
    assert_eq!(last["body"]["model"], "primary");
    assert_eq!(last["credential"], "Bearer key-one");
}

#[tokio::test]
async fn unknown_fields_pass_through_to_the_provider() {
    let (upstream, gw) = setup().await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "seed": 42,
        "response_format": {"type": "json_object"}, "max_completion_tokens": 3, "logit_bias": {"50256": -100}});
    assert_eq!(gw.post("/v1/chat/completions", &body).await.status(), 200);
    let sent = &upstream.last("primary").await["body"];
    assert_eq!(sent["seed"], 42);
    assert_eq!(sent["response_format"]["type"], "json_object");
    assert_eq!(sent["max_completion_tokens"], 3);
    assert_eq!(sent["logit_bias"]["50256"], -100);
}

#[tokio::test]
async fn models_lists_the_tenant_models() {
    let (_upstream, gw) = setup().await;
    let r = gw.client.get(format!("{}/v1/models", gw.url)).bearer_auth(&gw.token).send().await.expect("models");
    let body: Value = serde_json::from_str(&r.text().await.expect("text")).expect("json");
    let ids: Vec<&str> = body["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"chat") && ids.contains(&"claude") && ids.contains(&"failover"), "{ids:?}");
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_challenge() {
    let (_upstream, gw) = setup().await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let expired = token(json!({"exp": now() - 120}));
    let audience = token(json!({"aud": "someone-else"}));
    let issuer = token(json!({"iss": "https://evil.test"}));
    let foreign = sign(json!({}), "gateway/tests/fixtures/foreign-signing-key.pem", Some("quickstart-dev"));
    let unknown_kid = sign(json!({}), "gateway/tests/fixtures/foreign-signing-key.pem", Some("other"));
    let none = {
        use base64::Engine;
        let e = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            e(&json!({"alg": "none", "typ": "JWT"})),
            e(&json!({"iss": "https://issuer.test", "aud": "tenantgate", "exp": now() + 600}))
        )
    };
    for (name, t, reason) in [
        ("missing", None, None),
        ("expired", Some(expired.as_str()), Some("expired")),
        ("wrong audience", Some(audience.as_str()), Some("wrong audience")),
        ("wrong issuer", Some(issuer.as_str()), Some("wrong issuer")),
        ("foreign key", Some(foreign.as_str()), Some("signature")),
        ("unknown kid", Some(unknown_kid.as_str()), Some("unknown key")),
        ("alg none", Some(none.as_str()), Some("algorithm")),
    ] {
        let (status, challenge, body) = error_of(gw.post_raw("/v1/chat/completions", body.clone(), t).await).await;
        assert_eq!(status, 401, "{name}: {body}");
        let challenge = challenge.unwrap_or_else(|| panic!("{name}: no WWW-Authenticate"));
        assert!(challenge.starts_with("Bearer realm=\"tenantgate\""), "{name}: {challenge}");
        if let Some(reason) = reason {
            assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(reason)), "{name}: {body}");
        }
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains("tenantgate_auth_failures_total{reason=\"TokenExpired\"}"), "{metrics}");
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    let (_upstream, gw) = setup().await;
    let cases: [(&str, String, u16, Option<&str>); 6] = [
        ("malformed JSON", r#"{"model": "chat", "messages": ["#.into(), 400, None),
        ("model wrong type", r#"{"model": 5, "messages": []}"#.into(), 400, Some("model")),
        (
            "role wrong type",
            r#"{"model": "chat", "messages": [{"role": 1, "content": "x"}]}"#.into(),
            400,
            Some("messages[0].role"),
        ),
        ("missing messages", r#"{"model": "chat"}"#.into(), 400, Some("messages")),
        (
            "max_tokens wrong type",
            r#"{"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}"#.into(),
            400,
            Some("max_tokens"),
        ),
        (
            "unknown model",
            r#"{"model": "nope", "messages": [{"role": "user", "content": "x"}]}"#.into(),
            404,
            Some("model"),
        ),
    ];
    for (name, body, expected, param) in cases {
        let (status, _, err) = error_of(gw.post_raw("/v1/chat/completions", body, Some(&gw.token)).await).await;
        assert_eq!(status, expected, "{name}: {err}");
        assert_eq!(err["error"]["param"].as_str(), param, "{name}: {err}");
        if let Some(p) = param {
            assert!(
                err["error"]["message"].as_str().is_some_and(|m| m.contains(p)),
                "{name}: message names {p}: {err}"
            );
        }
    }
    let big = format!(
        r#"{{"model": "chat", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    let (status, _, err) = error_of(gw.post_raw("/v1/chat/completions", big, Some(&gw.token)).await).await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["error"]["code"], "request_too_large");
}

#[tokio::test]
async fn request_ids_are_honoured_and_generated() {
    let (_upstream, gw) = setup().await;
    let r = gw.client.get(format!("{}/livez", gw.url)).header("x-request-id", "abc-123").send().await.expect("livez");
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = gw.client.get(format!("{}/livez", gw.url)).send().await.expect("livez");
    assert_eq!(r.headers()["x-request-id"].len(), 36);
}

#[tokio::test]
async fn each_request_gets_one_access_line_with_its_id_and_subject() {
    let upstream = Upstream::start();
    let gw = Gateway::start_logged_at(&tenant_yaml(&upstream.url), &[], "info").await;
    let r = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&gw.token)
        .header("x-request-id", "access-line-1")
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 200);
    let log = gw.log_with("access-line-1").await;
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.contains("access-line-1"))
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let line = &lines[0];
    assert_eq!(line["message"], "request", "{line}");
    assert_eq!(line["request_id"], "access-line-1", "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["path"], "/v1/chat/completions", "{line}");
    assert_eq!(line["subject"], "tester", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["latency_us"].as_u64().is_some(), "{line}");
    assert!(!log.contains(&gw.token), "the token is in the log");
}

#[tokio::test]
async fn unknown_routes_use_the_error_shape() {
    let (_upstream, gw) = setup().await;
    let r = gw.client.get(format!("{}/v1/nothing", gw.url)).send().await.expect("get");
    let (status, _, _) = error_of(r).await;
    assert_eq!(status, 404);
    let r = gw.client.get(format!("{}/v1/chat/completions", gw.url)).send().await.expect("get");
    let (status, _, _) = error_of(r).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn config_reloads_and_an_invalid_config_keeps_the_old_one() {
    let (upstream, gw) = setup().await;
    let manifests = gw.dir.join("manifests/tenant.yaml");
    let base = tenant_yaml(&upstream.url);
    let added = base.replace(
        "    - name: in-process\n",
        "    - name: added-later\n      targets: [ { provider: up, model: primary } ]\n    - name: in-process\n",
    );
    std::fs::write(&manifests, &added).expect("write");
    let mut seen = false;
    for _ in 0..50 {
        if gw.chat("added-later").await.0 == 200 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the new model was not served after a reload");
    // A target naming an undeclared provider: refused, old config stays.
    std::fs::write(&manifests, added.replace("provider: up, model: primary", "provider: nobody, model: primary"))
        .expect("write");
    let refused = gw.reload_refused().await;
    assert!(refused, "the invalid config was not counted as refused");
    assert_eq!(gw.chat("added-later").await.0, 200, "the old config keeps serving");
    assert!(gw.metrics().await.contains("tenantgate_config_valid 0"));
}

#[tokio::test]
async fn a_rotated_upstream_key_is_used_without_restart() {
    let (upstream, gw) = setup().await;
    assert_eq!(gw.chat("chat").await.0, 200);
    assert_eq!(upstream.last("primary").await["credential"], "Bearer key-one");
    // What the kubelet does to a projected Secret volume, in effect: the file content changes.
    std::fs::write(gw.dir.join("state/secrets/upstream-key/apiKey"), "key-two").expect("rotate");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.chat("chat").await.0, 200);
    assert_eq!(upstream.last("primary").await["credential"], "Bearer key-two");
}

#[tokio::test]
async fn sigterm_drains_an_open_stream() {
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&tenant_yaml(&upstream.url)).await;
    upstream.script("primary", json!([{"chunk_interval_ms": 100}]), None).await;
    let body = json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    let pid = gw.pid();
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    // The stream started before SIGTERM finishes whole.
    let text = response.text().await.expect("stream completes");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(gw.wait_exit(), "the gateway exits cleanly after draining");
}

/// The operator's way: a rendered GatewayConfig in a ConfigMap volume, which
/// Kubernetes updates by swapping the `..data` symlink.
#[tokio::test]
async fn a_mounted_config_reloads_when_its_configmap_symlink_swaps() {
    use std::os::unix::fs::symlink;

    use tenantgate_crds::manifests::ManifestSet;
    use tenantgate_crds::render::{RenderMode, RenderOptions};

    let upstream = Upstream::start();
    let dir = std::env::temp_dir().join(format!("tg-gw-configmap-{}-{}", std::process::id(), now()));
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(secrets.join("jwks")).expect("dirs");
    std::fs::create_dir_all(secrets.join("upstream-key")).expect("dirs");
    std::fs::write(secrets.join("jwks/jwks.json"), quickstart_jwks()).expect("jwks");
    std::fs::write(secrets.join("upstream-key/apiKey"), "key-one").expect("key");
    let render = |yaml: &str| {
        let mut set = ManifestSet::default();
        set.add_yaml("tenant.yaml", yaml).expect("manifests");
        let options = RenderOptions {
            secrets_root: secrets.display().to_string(),
            sqlite_path: dir.join("gateway.db").display().to_string(),
            mode: RenderMode::Cluster,
            identity_root: dir.join("identity").display().to_string(),
        };
        let tenant = set.tenant("test").expect("tenant");
        set.render(tenant, "tenantgate-system", &options).expect("render").config.to_yaml().expect("yaml")
    };
    let base = tenant_yaml(&upstream.url);
    // Version 1, laid out as the kubelet does: config.yaml -> ..data/config.yaml, ..data -> ..v1.
    let volume = dir.join("config");
    std::fs::create_dir_all(volume.join("..v1")).expect("dirs");
    std::fs::write(volume.join("..v1/config.yaml"), render(&base)).expect("v1");
    symlink("..v1", volume.join("..data")).expect("symlink");
    symlink("..data/config.yaml", volume.join("config.yaml")).expect("symlink");

    let port = free_port();
    let _gw = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_tenantgate-gateway"))
            .arg("--config")
            .arg(volume.join("config.yaml"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--config-poll-ms", "200"])
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start"),
    );
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    let models = || async {
        let r = client.get(format!("{url}/v1/models")).bearer_auth(token(json!({}))).send().await.ok()?;
        let body: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
        Some(body["data"].as_array()?.iter().filter_map(|m| m["id"].as_str().map(str::to_owned)).collect::<Vec<_>>())
    };
    let mut started = false;
    for _ in 0..100 {
        if models().await.is_some() {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started, "the gateway serves the mounted config");
    assert!(!models().await.unwrap_or_default().contains(&"added-later".to_string()));

    // Version 2 and the atomic swap of ..data.
    let v2 = base.replace(
        "    - name: in-process\n",
        "    - name: added-later\n      targets: [ { provider: up, model: primary } ]\n    - name: in-process\n",
    );
    std::fs::create_dir_all(volume.join("..v2")).expect("dirs");
    std::fs::write(volume.join("..v2/config.yaml"), render(&v2)).expect("v2");
    symlink("..v2", volume.join("..data_tmp")).expect("symlink");
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).expect("swap");
    let mut reloaded = false;
    for _ in 0..50 {
        if models().await.unwrap_or_default().contains(&"added-later".to_string()) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the swapped ConfigMap was not picked up");
    let _ = std::fs::remove_dir_all(&dir);
}
