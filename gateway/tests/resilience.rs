//! Retry, failover, circuit breaking, timeouts and broken streams against
//! e2e/mock-llm misbehaving; Anthropic translation end to end.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

async fn setup() -> (Upstream, Gateway) {
    let upstream = Upstream::start();
    let gateway = Gateway::start(&tenant_yaml(&upstream.url)).await;
    (upstream, gateway)
}

#[tokio::test]
async fn retries_5xx_and_429_then_succeeds() {
    let (upstream, gw) = setup().await;
    upstream.script("flaky", json!([{"status": 503}, {"status": 429, "retry_after": 0}]), None).await;
    let (status, body) = gw.chat("flaky").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.count("flaky").await, 3);
}

#[tokio::test]
async fn honours_retry_after() {
    let (upstream, gw) = setup().await;
    upstream.script("flaky", json!([{"status": 429, "retry_after": 1}]), None).await;
    let started = Instant::now();
    assert_eq!(gw.chat("flaky").await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(950), "waited {:?}", started.elapsed());
}

#[tokio::test]
async fn client_errors_are_not_retried_and_pass_through() {
    let (upstream, gw) = setup().await;
    upstream.script("primary", json!([{"status": 400}]), None).await;
    let (status, body) = gw.chat("chat").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["message"], "mock-llm scripted 400 Bad Request");
    assert_eq!(upstream.count("primary").await, 1);
}

#[tokio::test]
async fn fails_over_to_the_next_target() {
    let (upstream, gw) = setup().await;
    upstream.script("down", json!([]), Some(json!({"status": 500}))).await;
    let (status, body) = gw.chat("failover").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "backup");
    assert_eq!(upstream.count("down").await, 3, "the first target is retried max_retries times first");
}

#[tokio::test]
async fn fails_over_from_a_refused_connection() {
    let (_upstream, gw) = setup().await;
    let (status, body) = gw.chat("dead-then-up").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "after-dead");
}

#[tokio::test]
async fn exhausted_429_is_a_429_with_retry_after() {
    let (upstream, gw) = setup().await;
    upstream.script("flaky", json!([]), Some(json!({"status": 429, "retry_after": 0}))).await;
    let r = gw
        .post("/v1/chat/completions", &json!({"model": "flaky", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn first_byte_timeout_gives_504() {
    let (upstream, gw) = setup().await;
    upstream.script("slow", json!([]), Some(json!({"hang": true}))).await;
    let started = Instant::now();
    let (status, body) = gw.chat("slow").await;
    assert_eq!(status, 504, "{body}");
    // 1 s first-byte timeout, three attempts, small backoff: well under the 5 s total.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn breaker_opens_then_recovers_through_half_open() {
    let (upstream, gw) = setup().await;
    upstream.script("brk", json!([]), Some(json!({"status": 503}))).await;
    // Threshold 3: the first request's three attempts open the breaker.
    let (status, _) = gw.chat("breaker").await;
    assert_eq!(status, 502);
    let seen = upstream.count("brk").await;
    assert_eq!(seen, 3);
    // Open: refused without calling the upstream.
    let r = gw
        .post("/v1/chat/completions", &json!({"model": "breaker", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(upstream.count("brk").await, seen, "an open breaker skips the target");
    assert!(gw.metrics().await.contains("tenantgate_circuit_breaker_state{target=\"up/brk\"} 1"));
    // After open_seconds one probe goes through; the upstream has healed, so the breaker closes.
    upstream.script("brk", json!([]), None).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = gw.chat("breaker").await;
    assert_eq!(status, 200, "{body}");
    assert!(gw.metrics().await.contains("tenantgate_circuit_breaker_state{target=\"up/brk\"} 0"));
    assert_eq!(gw.chat("breaker").await.0, 200);
}

#[tokio::test]
async fn failed_half_open_probe_reopens() {
    let (upstream, gw) = setup().await;
    upstream.script("brk", json!([]), Some(json!({"status": 503}))).await;
    assert_eq!(gw.chat("breaker").await.0, 502);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = upstream.count("brk").await;
    assert_eq!(gw.chat("breaker").await.0, 502, "the probe fails");
    assert_eq!(upstream.count("brk").await, before + 1, "half-open sends exactly one probe");
    assert_eq!(gw.chat("breaker").await.0, 503, "open again");
}

async fn stream_text(gw: &Gateway, model: &str) -> (u16, String) {
    let body = json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let r = gw.post("/v1/chat/completions", &body).await;
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("JSON event"))
        .collect()
}

#[tokio::test]
async fn streams_pass_through_with_usage() {
    let (_upstream, gw) = setup().await;
    let (status, text) = stream_text(&gw, "chat").await;
    assert_eq!(status, 200);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events = events(&text);
    let content: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "Hello from the Tenantgate mock model, a");
    assert_eq!(events.last().expect("usage chunk")["usage"]["completion_tokens"], 8);
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_one_error_event() {
    let (upstream, gw) = setup().await;
    upstream.script("broken-stream", json!([{"fail_after_chunks": 3}]), None).await;
    let (status, text) = stream_text(&gw, "broken-stream").await;
    assert_eq!(status, 200);
    let events = events(&text);
    assert_eq!(events.len(), 4, "three chunks and an error: {text}");
    assert!(events[3]["error"]["message"].as_str().is_some_and(|m| m.contains("stream")), "{text}");
    assert!(!text.contains("[DONE]"));
    assert_eq!(upstream.count("broken-stream").await, 1, "no retry once streaming started");
}

#[tokio::test]
async fn anthropic_is_translated_both_ways() {
    let (upstream, gw) = setup().await;
    let (status, body) = gw.chat("claude").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from the Tenantgate mock model, a");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let last = upstream.last("claude-mock").await;
    assert_eq!(last["credential"], "key-one", "x-api-key carries the key");

    let request = json!({"model": "claude", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]});
    let r = gw.post("/v1/chat/completions", &request).await;
    let body: Value = serde_json::from_str(&r.text().await.expect("text")).expect("json");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"mock"}"#);
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let sent = &upstream.last("claude-mock").await["body"];
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["tools"][0]["input_schema"]["properties"]["city"]["type"], "string");

    let (status, text) = stream_text(&gw, "claude").await;
    assert_eq!(status, 200);
    let events = events(&text);
    let content: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "Hello from the Tenantgate mock model, a");
    assert_eq!(events.last().expect("usage")["usage"]["completion_tokens"], 8);
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_are_shed_with_503() {
    let upstream = Upstream::start();
    let gw = Gateway::start_with(&tenant_yaml(&upstream.url), &["--max-in-flight", "1"]).await;
    upstream.script("slow", json!([{"latency_ms": 500}]), None).await;
    let body = json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}]});
    let (first, second) = tokio::join!(gw.post("/v1/chat/completions", &body), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gw.post("/v1/chat/completions", &body).await
    });
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["retry-after"], "1");
    let error: Value = serde_json::from_str(&second.text().await.expect("body")).expect("json");
    assert_eq!(error["error"]["code"], "overloaded");
    assert!(gw.metrics().await.contains("status=\"503\""));
}

#[tokio::test]
async fn request_bodies_beyond_the_memory_budget_are_shed_with_503_until_memory_is_free() {
    // 8 MiB of memory: 1 MiB for request bodies at four times their size, 256 KiB of raw body.
    let upstream = Upstream::start();
    let gw = Gateway::start_with(&tenant_yaml(&upstream.url), &["--memory-limit", "8Mi"]).await;
    upstream.script("slow", json!([{"latency_ms": 800}]), None).await;
    let body = |model: &str, kib: usize| json!({"model": model, "messages": [{"role": "user", "content": "x".repeat(kib * 1024)}]});
    let big = body("slow", 200);
    let first = gw.post("/v1/chat/completions", &big);
    let shed = async {
        // The first request holds its 800 KiB from admission until its (slow) answer.
        while upstream.count("slow").await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let declared = gw.post("/v1/chat/completions", &body("chat", 100)).await;
        // A body of undeclared length (chunked) is charged as it arrives, and refused as well.
        let text = body("chat", 100).to_string().into_bytes();
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = text.chunks(8192).map(|c| Ok(c.to_vec())).collect();
        let chunked = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        (declared, gw.post_raw("/v1/chat/completions", chunked, Some(&gw.token)).await)
    };
    let (first, (shed, chunked)) = tokio::join!(first, shed);
    assert_eq!(chunked.status(), 503, "{:?}", chunked.text().await);
    assert_eq!(first.status(), 200);
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let error: Value = serde_json::from_str(&shed.text().await.expect("body")).expect("json");
    assert_eq!(error["error"]["code"], "overloaded");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(message.contains("request bodies as its memory allows (1 MiB)"), "{message}");
    let (status, _) = gw.chat("chat").await;
    assert_eq!(status, 200, "the memory is free again once the first request is answered");
    let metrics = gw.metrics().await;
    assert!(metrics.contains("tenantgate_requests_shed_total{reason=\"body_memory\"} 2"), "{metrics}");
    for line in [
        "tenantgate_capacity{resource=\"in_flight\"} 32",
        "tenantgate_capacity{resource=\"connections\"} 64",
        "tenantgate_capacity{resource=\"body_bytes\"} 1048576",
        "tenantgate_capacity{resource=\"recorder_queue\"} 1024",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
}

#[tokio::test]
async fn a_connection_past_the_cap_is_answered_503_and_closed_instead_of_waiting() {
    let upstream = Upstream::start();
    // A stream of ~10 events 200 ms apart: its connection is busy for about 2 s.
    upstream.script("slow", json!([]), Some(json!({"chunk_interval_ms": 200}))).await;
    let gw = Gateway::start_with(&tenant_yaml(&upstream.url), &["--max-connections", "1"]).await;
    let body = |model: &str, stream: bool| json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    // The first client's stream holds the one slot (its connection is the one it was ready on).
    let stream = gw.post_raw("/v1/chat/completions", body("slow", true).to_string(), Some(&gw.token)).await;
    assert_eq!(stream.status(), 200);
    let other = reqwest::Client::new();
    let refused = other
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&gw.token)
        .json(&body("chat", false))
        .send()
        .await
        .expect("answered, not left waiting");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["connection"], "close");
    let error: Value = serde_json::from_str(&refused.text().await.expect("body")).expect("json");
    assert_eq!(error["error"]["code"], "overloaded");
    assert_eq!(error["error"]["message"], "the gateway is at its limit of 1 open connections; try again shortly");
    let events = stream.text().await.expect("the busy stream was not cut");
    assert!(events.contains("data: [DONE]"), "{events}");
    let metrics = gw.metrics().await;
    assert!(metrics.contains("tenantgate_requests_shed_total{reason=\"connections\"} 1"), "{metrics}");
    assert!(!metrics.contains("tenantgate_connections_evicted_total"), "a busy connection is never evicted: {metrics}");
}

#[tokio::test]
async fn at_the_cap_an_idle_keep_alive_connection_makes_room_for_a_new_client() {
    let upstream = Upstream::start();
    let gw = Gateway::start_with(&tenant_yaml(&upstream.url), &["--max-connections", "1"]).await;
    // The first client's connection stays open (keep-alive) and idle after its answer.
    let (status, _) = gw.chat("chat").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let other = reqwest::Client::new();
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    let served = other
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&gw.token)
        .json(&body)
        .send()
        .await
        .expect("answered");
    assert_eq!(served.status(), 200, "the idle connection's slot serves the new client");
    // The new client goes away; the metrics request takes its slot (closed, or idle long enough).
    drop(other);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = gw.metrics().await;
    assert!(metrics.contains("tenantgate_connections_evicted_total"), "{metrics}");
    assert!(!metrics.contains("tenantgate_requests_shed_total{reason=\"connections\"}"), "{metrics}");
}
