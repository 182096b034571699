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
