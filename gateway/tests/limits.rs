//! Rate limits of a gateway without Redis (the local default): the same
//! 429s and headers as with Redis, from the in-process store.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn body(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": stream})
}

#[tokio::test]
async fn in_process_limits_refuse_with_openai_headers() {
    let upstream = Upstream::start();
    let limits = "  limits:\n    requestsPerMinute: 6\n    burst: 3\n    tokensPerDay: 100000\n";
    let gw = Gateway::start(&tenant_yaml_with(&upstream.url, "local-limits", limits, "")).await;
    for expected_remaining in ["2", "1", "0"] {
        let r = gw.post("/v1/chat/completions", &body("in-process", false)).await;
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["x-ratelimit-limit-requests"], "6");
        assert_eq!(h["x-ratelimit-remaining-requests"], expected_remaining);
        assert_eq!(h["x-ratelimit-limit-tokens"], "100000");
        assert!(h.contains_key("x-ratelimit-reset-tokens"));
    }
    let r = gw.post("/v1/chat/completions", &body("in-process", false)).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let e: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
    assert_eq!(e["error"]["type"], "rate_limit_error");
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    let m = gw.metrics().await;
    assert!(m.contains("tenantgate_ratelimit_denied_total{reason=\"RateLimited\"} 1"), "{m}");
}

#[tokio::test]
async fn in_process_stream_slots_free_when_the_client_goes_away() {
    let upstream = Upstream::start();
    upstream.script("slow", json!([]), Some(json!({"chunk_interval_ms": 300}))).await;
    let gw = Gateway::start(&tenant_yaml_with(
        &upstream.url,
        "local-streams",
        "  limits:\n    maxConcurrentStreams: 1\n",
        "",
    ))
    .await;
    let first = gw.post("/v1/chat/completions", &body("slow", true)).await;
    assert_eq!(first.status(), 200);
    let second = gw.post("/v1/chat/completions", &body("slow", true)).await;
    assert_eq!(second.status(), 429);
    assert!(second.text().await.expect("body").contains("streams open at once (tenant limit 1)"));
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = gw.post("/v1/chat/completions", &body("slow", true)).await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot of a closed stream was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn in_process_budgets_refuse_every_client_api_with_402_and_unpriced_models_with_403() {
    let upstream = Upstream::start();
    // "in-process" costs 0.0005 a request plus its tokens: three answers fit in 0.002, a fourth's worst case does not.
    let limits = "  limits:\n    budget: { amount: \"0.002\", period: Day }\n";
    let gw = Gateway::start(&tenant_yaml_with(&upstream.url, "local-budget", limits, "")).await;
    let mut left = Vec::new();
    for _ in 0..3 {
        let r = gw.post("/v1/chat/completions", &body("in-process", false)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-budget-limit"], "0.002");
        assert!(r.headers()["x-budget-reset"].to_str().expect("ascii").ends_with('s'));
        left.push(r.headers()["x-budget-remaining"].to_str().expect("ascii").parse::<f64>().expect("amount"));
    }
    assert!(left.windows(2).all(|w| w[1] < w[0]), "what is left goes down: {left:?}");
    let r = gw.post("/v1/chat/completions", &body("in-process", false)).await;
    assert_eq!(r.status(), 402);
    assert_eq!(r.headers()["x-budget-scope"], "tenant");
    let left = r.headers()["x-budget-remaining"].to_str().expect("ascii").to_owned();
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
    assert_eq!(e["error"]["type"], "insufficient_quota", "{e}");
    assert_eq!(e["error"]["code"], "budget_exceeded", "{e}");
    let message = e["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("The tenant budget of 0.002 USD per day (UTC) has 0.000"), "{message}");
    // The admin API shows the budget as it stands.
    let admin = token(json!({"roles": ["tenant-admin"], "sub": "auditor"}));
    let (status, budgets) = gw.get_json("/admin/v1/budgets?subject=tester", &admin).await;
    assert_eq!(status, 200, "{budgets}");
    assert_eq!(budgets["currency"], "USD");
    let tenant = &budgets["data"][0];
    assert_eq!(
        (&tenant["scope"], &tenant["amount"], &tenant["period"]),
        (&json!("tenant"), &json!("0.002"), &json!("Day"))
    );
    assert_eq!(tenant["remaining"], left.as_str(), "{budgets}");
    let spent: f64 = tenant["spent"].as_str().expect("spent").parse().expect("amount");
    assert!((spent + left.parse::<f64>().expect("left") - 0.002).abs() < 1e-12, "{budgets}");
    assert_eq!(tenant["window"], chrono::Utc::now().format("%Y-%m-%d").to_string());
    assert_eq!(budgets["data"].as_array().map(Vec::len), Some(1), "no per-user budget: {budgets}");
    // The other client APIs are charged against the same budget.
    let messages = json!({"model": "in-process", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let r = gw
        .client
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(&gw.token)
        .header("anthropic-version", "2023-06-01")
        .json(&messages)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 402);
    let e: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
    assert_eq!(e["error"]["type"], "billing_error", "Anthropic's type for 402: {e}");
    let r = gw.post("/v1/responses", &json!({"model": "in-process", "input": "hi", "max_output_tokens": 16})).await;
    assert_eq!(r.status(), 402);
    // A model with an unpriced target cannot be charged: refused, naming it.
    let r = gw.post("/v1/chat/completions", &body("failover", false)).await;
    assert_eq!(r.status(), 403);
    let e: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
    assert_eq!(e["error"]["code"], "model_unpriced", "{e}");
    assert!(e["error"]["message"].as_str().expect("message").contains("model \"failover\""), "{e}");
    let r = gw.post("/v1/embeddings", &json!({"model": "embed", "input": "hi"})).await;
    assert_eq!(r.status(), 403, "embeddings go through the same check");
    let m = gw.metrics().await;
    assert!(m.contains("tenantgate_ratelimit_denied_total{reason=\"BudgetExceeded\"} 3"), "{m}");
}
