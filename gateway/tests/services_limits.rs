//! Rate limits and quotas against a real Redis shared by two or four gateway
//! processes: exact request limits, leased slices (caps never exceeded, most
//! requests admitted without a Redis call, everything unused given back),
//! token quotas and budgets under concurrent streaming, concurrent streams, stream leases
//! of a crashed replica, and Redis going away and coming back under both fail
//! modes.
//!
//! Run: `e2e/with-services cargo test -p tenantgate-gateway --test services_limits`
//! (fails without `TENANTGATE_REDIS_URL`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tenantgate_crds::pricing::{Amounts, Rates, format_nanos};
use tenantgate_crds::v1alpha1::{Limits, Price};
use tenantgate_gateway::limits::{IDLE, RATE_SHARE, RateLimiter, RedisSettings, RedisStore, Reservation, SWEEP, Store};
use tenantgate_gateway::redis_client::RedisEndpoint;

/// Tests share one Redis; the one that kills it runs alone.
static REDIS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn redis_url() -> String {
    services_env("TENANTGATE_REDIS_URL")
}

/// Manifests of tenant `name` with `limits` (YAML lines under `limits:`) on the shared Redis.
fn manifests(upstream: &str, name: &str, limits: &str) -> String {
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: redis, namespace: tg-test }}\nstringData:\n  url: {}\n",
        redis_url()
    );
    let spec = format!("  storage:\n    redis: {{ urlSecretRef: {{ name: redis, key: url }} }}\n  limits:\n{limits}");
    tenant_yaml_with(upstream, name, &spec, &secret)
}

/// Removes every key of tenant `name`, so a rerun against the same Redis starts clean.
async fn clear_tenant(name: &str) {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut c = client.get_multiplexed_async_connection().await.expect("redis connection");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("tg:{{{name}}}:*")).query_async(&mut c).await.expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut c).await.expect("DEL");
    }
}

async fn two_gateways(upstream: &str, name: &str, limits: &str) -> (Gateway, Gateway) {
    clear_tenant(name).await;
    let m = manifests(upstream, name, limits);
    (Gateway::start(&m).await, Gateway::start(&m).await)
}

/// `n` gateway processes of tenant `name` with `limits` on the shared Redis.
async fn replicas(upstream: &str, name: &str, limits: &str, n: usize) -> Vec<Gateway> {
    clear_tenant(name).await;
    let m = manifests(upstream, name, limits);
    let mut gateways = Vec::new();
    for _ in 0..n {
        gateways.push(Gateway::start(&m).await);
    }
    gateways
}

/// Sends `body` from `workers` concurrent clients over `gateways` in turn
/// until `until` has passed; returns the statuses and the tokens the 200s reported.
async fn hammer(gateways: &[Gateway], body: &str, workers: usize, until: Instant) -> (Vec<u16>, u64) {
    let runs = (0..workers).map(|w| async move {
        let (mut statuses, mut tokens, mut i) = (Vec::new(), 0, w);
        while Instant::now() < until {
            let gw = &gateways[i % gateways.len()];
            i += 1;
            let r = gw.post_raw("/v1/chat/completions", body.to_owned(), Some(&gw.token)).await;
            statuses.push(r.status().as_u16());
            if r.status() == 200 {
                let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
                tokens += v["usage"]["total_tokens"].as_u64().expect("usage");
            }
        }
        (statuses, tokens)
    });
    let all = futures_util::future::join_all(runs).await;
    (all.iter().flat_map(|(s, _)| s.iter().copied()).collect(), all.iter().map(|(_, t)| t).sum())
}

/// The gateways' limit work: Redis calls by kind (`lease`: a request's own
/// call, `top_up`: a background one, `admit`: a stream slot, `give`: a
/// give-back), and `local`: requests admitted from slices held locally.
async fn limit_work(gateways: &[Gateway]) -> std::collections::HashMap<String, f64> {
    let mut work = std::collections::HashMap::new();
    for gw in gateways {
        for line in gw.metrics().await.lines() {
            let kind = if let Some(rest) = line.strip_prefix("tenantgate_ratelimit_redis_calls_total{call=\"") {
                rest.split('"').next().unwrap_or_default()
            } else if line.starts_with("tenantgate_ratelimit_local_admissions_total ") {
                "local"
            } else {
                continue;
            };
            let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            *work.entry(kind.to_owned()).or_default() += value;
        }
    }
    work
}

#[tokio::test]
async fn a_request_limit_is_never_exceeded_by_two_or_four_replicas_holding_slices() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    // 100 requests a second after a burst of 320: slices of up to 20 requests.
    let (burst, per_second) = (320u64, 100.0);
    let share = burst / RATE_SHARE;
    for n in [2, 4] {
        let name = format!("lim-slices-{n}");
        let limits = format!("    requestsPerMinute: 6000\n    burst: {burst}\n");
        let gateways = replicas(&upstream.url, &name, &limits, n).await;
        let body = chat_body("in-process", false).to_string();
        let started = Instant::now();
        let (statuses, _) = hammer(&gateways, &body, 16, started + Duration::from_millis(1500)).await;
        let elapsed = started.elapsed().as_secs_f64();
        let admitted = statuses.iter().filter(|&&s| s == 200).count() as f64;
        eprintln!("{n} replicas: {} requests, {admitted} admitted in {elapsed:.2}s", statuses.len());
        assert!(statuses.iter().all(|&s| s == 200 || s == 429), "{n} replicas: {statuses:?}");
        // What one shared bucket admits in that time: never more, whatever the slices.
        let cap = burst as f64 + per_second * elapsed + 1.0;
        assert!(admitted <= cap, "{n} replicas admitted {admitted}, the cap is {cap:.0} after {elapsed:.2}s");
        // At most one unused slice per replica (twice its aim) keeps the tenant below the cap.
        let floor = cap - (n as u64 * 2 * share) as f64 - per_second * 0.2;
        assert!(admitted >= floor, "{n} replicas admitted only {admitted} of {cap:.0} (floor {floor:.0})");
        assert!(statuses.len() as f64 > cap, "{n} replicas: the clients did not reach the cap");
    }
}

#[tokio::test]
async fn replicas_admit_from_slices_without_a_redis_call_and_give_back_what_they_did_not_use() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    for n in [2, 4] {
        let name = format!("lim-local-{n}");
        let limits = "    requestsPerMinute: 600000\n    tokensPerDay: 100000000\n";
        let gateways = replicas(&upstream.url, &name, limits, n).await;
        let body = chat_body("in-process", false).to_string();
        let (statuses, tokens) = hammer(&gateways, &body, 8, Instant::now() + Duration::from_millis(1500)).await;
        assert!(statuses.iter().all(|&s| s == 200), "{n} replicas: {statuses:?}");
        let work = limit_work(&gateways).await;
        let of = |kind: &str| work.get(kind).copied().unwrap_or(0.0);
        let requests = statuses.len() as f64;
        assert_eq!(of("lease") + of("local"), requests, "{n} replicas, every request one decision: {work:?}");
        let calls = of("lease") + of("top_up");
        eprintln!("{n} replicas: {requests} requests, limit work {work:?}");
        assert!(calls < requests / 2.0, "{n} replicas: {calls} Redis calls for {requests} requests: {work:?}");
        // Once idle, every replica gives back what it holds: Redis counts
        // exactly the tokens served, and the request bucket drains to nothing.
        tokio::time::sleep(IDLE + 2 * SWEEP).await;
        wait_used(&format!("tg:{{{name}}}:tpd"), tokens).await;
    }
}

#[tokio::test]
async fn a_replica_that_stops_gives_its_slices_back() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    let name = "lim-stop";
    let mut gateways = replicas(&upstream.url, name, "    tokensPerDay: 100000000\n", 1).await;
    let body = chat_body("in-process", false).to_string();
    let (statuses, tokens) = hammer(&gateways, &body, 4, Instant::now() + Duration::from_millis(800)).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let key = format!("tg:{{{name}}}:tpd");
    let held = hget(&key, "u").await.unwrap_or(0);
    assert!(held >= tokens, "Redis counts {held} tokens, {tokens} were served");
    assert!(gateways[0].terminate(), "graceful stop");
    // Given back during the stop, not later by a sweep.
    assert_eq!(hget(&key, "u").await, Some(tokens), "what the stopped replica held (Redis counted {held})");
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

fn chat_body(model: &str, stream: bool) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Asserts a limit refusal in OpenAI's shape and returns its message.
async fn assert_limited(r: reqwest::Response, limit_requests: Option<&str>) -> String {
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").expect("Retry-After").parse().expect("Retry-After seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    if let Some(limit) = limit_requests {
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some(limit));
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("0"));
        assert!(header(&r, "x-ratelimit-reset-requests").is_some_and(|v| v.ends_with('s')));
    }
    let body: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON error");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    body["error"]["message"].as_str().expect("message").to_string()
}

#[tokio::test]
async fn two_replicas_enforce_one_request_limit_exactly() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    // One request per 10 s after a burst of 10: the test takes far less than
    // 10 s, so exactly 10 pass, wherever they land.
    let (a, b) = two_gateways(&upstream.url, "lim-rpm", "    requestsPerMinute: 6\n    burst: 10\n").await;
    let body = chat_body("in-process", false).to_string();
    let mut remaining = Vec::new();
    let mut refused = 0;
    for r in burst_across(&a, &b, &body, 30).await {
        match r.status().as_u16() {
            200 => {
                assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("6"));
                remaining
                    .push(header(&r, "x-ratelimit-remaining-requests").expect("remaining").parse::<u32>().expect("n"));
            }
            429 => {
                let message = assert_limited(r, Some("6")).await;
                assert!(message.contains("requests per minute (tenant limit 6)"), "{message}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // Decisions are serialised in Redis: each admitted request saw a different count.
    remaining.sort_unstable();
    assert_eq!(remaining, (0..10).collect::<Vec<_>>(), "admitted requests and their remaining counts");
    assert_eq!(refused, 20);
}

#[tokio::test]
async fn user_and_tenant_limits_compose_across_replicas() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    let limits = "    requestsPerMinute: 6\n    burst: 10\n    perUser: { requestsPerMinute: 6, burst: 3 }\n";
    let (a, b) = two_gateways(&upstream.url, "lim-users", limits).await;
    let body = chat_body("in-process", false).to_string();
    let mut admitted = Vec::new();
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        let t = token(json!({"sub": user}));
        let mut n = 0;
        for i in 0..5 {
            let gw = if i % 2 == 0 { &a } else { &b };
            let r = gw.post_raw("/v1/chat/completions", body.clone(), Some(&t)).await;
            if r.status() == 200 {
                n += 1;
            } else {
                let message = assert_limited(r, Some("6")).await;
                assert!(message.contains("limit 6)"), "{message}");
            }
        }
        admitted.push(n);
    }
    // Three per user until the tenant's burst of 10 is spent.
    assert_eq!(admitted, [3, 3, 3, 1, 0]);
}

/// Streams chat requests from `workers` concurrent clients over both
/// gateways until each has been refused three times in a row; returns the
/// tokens the usage chunks reported and the refusal messages.
async fn stream_until_refused(gateways: [&Gateway; 2], workers: usize) -> (u64, Vec<String>) {
    let served = Arc::new(AtomicU64::new(0));
    let body = chat_body("chat", true).to_string();
    let runs = (0..workers).map(|w| {
        let served = served.clone();
        let body = body.clone();
        async move {
            let mut refusals = Vec::new();
            let mut in_a_row = 0;
            let mut i = w;
            while in_a_row < 3 {
                let gw = gateways[i % 2];
                i += 1;
                let r = gw.post_raw("/v1/chat/completions", body.clone(), Some(&gw.token)).await;
                if r.status() == 429 {
                    assert!(header(&r, "x-ratelimit-limit-tokens").is_some(), "token headers on a token refusal");
                    refusals.push(assert_limited(r, None).await);
                    in_a_row += 1;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    continue;
                }
                assert_eq!(r.status(), 200);
                in_a_row = 0;
                let text = r.text().await.expect("stream");
                let usage = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                    .find_map(|v| v["usage"]["total_tokens"].as_u64())
                    .expect("a usage chunk");
                served.fetch_add(usage, Ordering::Relaxed);
            }
            refusals
        }
    });
    let refusals = futures_util::future::join_all(runs).await.into_iter().flatten().collect();
    (served.load(Ordering::Relaxed), refusals)
}

async fn hget(key: &str, field: &str) -> Option<u64> {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut c = client.get_multiplexed_async_connection().await.expect("redis connection");
    redis::cmd("HGET").arg(key).arg(field).query_async(&mut c).await.expect("HGET")
}

#[tokio::test]
async fn daily_token_quota_holds_under_concurrent_streaming() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    let (a, b) = two_gateways(&upstream.url, "lim-tpd", "    tokensPerDay: 1500\n").await;
    let reservation = Reservation::of(
        &serde_json::from_value(chat_body("chat", true)).expect("request"),
        chat_body("chat", true).to_string().len(),
    )
    .total();
    let (mut served, refusals) = stream_until_refused([&a, &b], 12).await;
    // Each request reserved its prompt estimate plus max_tokens, which covers
    // what it really used: the quota holds exactly.
    assert!(served <= 1500, "served {served} tokens of a 1500 quota");
    assert!(refusals.iter().all(|m| m.contains("tokens per day (tenant limit 1500)")), "{refusals:?}");
    // Every reservation settles to the reported usage: Redis counts exactly what was served.
    wait_used("tg:{lim-tpd}:tpd", served).await;
    // With nothing in flight, one client uses up what is left: refused only
    // once less than one reservation remains.
    loop {
        let (used, refused) = stream_until_refused([&a, &b], 1).await;
        served += used;
        wait_used("tg:{lim-tpd}:tpd", served).await;
        if used == 0 {
            assert!(!refused.is_empty());
            break;
        }
    }
    assert!(served <= 1500, "served {served} tokens of a 1500 quota");
    assert!(served + reservation > 1500, "refused with {} of 1500 left (reservation {reservation})", 1500 - served);
}

/// Waits until Redis counts `served` units (tokens, nano-units) used in the current window of `key`.
async fn wait_used(key: &str, served: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let used = hget(key, "u").await.unwrap_or(0);
        if used == served {
            return;
        }
        assert!(Instant::now() < deadline, "Redis counts {used} units used in {key}, the clients were served {served}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn per_minute_token_quota_holds_under_concurrent_streaming() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    let (a, b) = two_gateways(&upstream.url, "lim-tpm", "    tokensPerMinute: 600\n").await;
    let started = Instant::now();
    let (served, refusals) = stream_until_refused([&a, &b], 12).await;
    let elapsed = started.elapsed().as_secs_f64();
    // The bucket holds one minute of tokens and refills 10 per second.
    let bound = 600.0 + 10.0 * elapsed;
    assert!((served as f64) <= bound, "served {served} tokens, bound {bound:.0} after {elapsed:.1}s");
    assert!(served >= 400, "served only {served}");
    assert!(refusals.iter().all(|m| m.contains("tokens per minute (tenant limit 600)")), "{refusals:?}");
}

#[tokio::test]
async fn concurrent_streams_are_limited_across_replicas_and_freed_on_disconnect() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    // Streams of ~10 events 300 ms apart: open for about 3 s.
    upstream.script("slow", json!([]), Some(json!({"chunk_interval_ms": 300}))).await;
    let (a, b) = two_gateways(&upstream.url, "lim-streams", "    maxConcurrentStreams: 3\n").await;
    let body = chat_body("slow", true).to_string();
    async fn open(gw: &Gateway, body: &str) -> reqwest::Response {
        gw.post_raw("/v1/chat/completions", body.to_owned(), Some(&gw.token)).await
    }
    let s1 = open(&a, &body).await;
    let s2 = open(&b, &body).await;
    let s3 = open(&a, &body).await;
    for s in [&s1, &s2, &s3] {
        assert_eq!(s.status(), 200);
    }
    let message = assert_limited(open(&b, &body).await, None).await;
    assert!(message.contains("streams open at once (tenant limit 3)"), "{message}");
    // Non-streaming requests need no slot.
    assert_eq!(b.post("/v1/chat/completions", &chat_body("in-process", false)).await.status(), 200);
    // The client of s1 goes away: its slot comes back within moments, on the other replica too.
    drop(s1);
    let deadline = Instant::now() + Duration::from_secs(2);
    let s4 = loop {
        let r = open(&b, &body).await;
        if r.status() == 200 {
            break r;
        }
        assert!(Instant::now() < deadline, "the slot of a closed stream was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A stream that runs to its end frees its slot as well.
    assert!(s2.text().await.expect("stream").contains("[DONE]"));
    let s5 = open(&a, &body).await;
    assert_eq!(s5.status(), 200);
    drop((s3, s4, s5));
}

fn stream_limits() -> Limits {
    Limits { max_concurrent_streams: Some(1), ..Default::default() }
}

#[tokio::test]
async fn stream_leases_of_a_crashed_replica_expire_and_live_ones_are_renewed() {
    let _shared = REDIS.read().await;
    clear_tenant("lim-lease").await;
    let settings = RedisSettings { lease: Duration::from_secs(1), ..Default::default() };
    let url = redis_url();
    // A replica that takes the only slot and crashes: its runtime (and lease renewal) stops, nothing is released.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let store = RedisStore::connect(&RedisEndpoint::new(url.clone(), None), settings).expect("store");
            let limiter = RateLimiter::new("lim-lease", Some(&stream_limits()), Store::Redis(store));
            let admission = limiter.admit_reservation("crashed", Reservation::default(), true).await.expect("slot");
            std::mem::forget(admission);
        });
    })
    .join()
    .expect("crashed replica");
    let live = RateLimiter::new(
        "lim-lease",
        Some(&stream_limits()),
        Store::Redis(RedisStore::connect(&RedisEndpoint::new(redis_url(), None), settings).expect("store")),
    );
    let refused = live.admit_reservation("u", Reservation::default(), true).await.expect_err("slot taken");
    assert_eq!(refused.as_reason(), "TooManyStreams");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let held = live.admit_reservation("u", Reservation::default(), true).await.expect("the crashed lease expired");
    // This replica is alive: it renews its lease, so the slot stays taken well past one lease.
    let other = RateLimiter::new(
        "lim-lease",
        Some(&stream_limits()),
        Store::Redis(RedisStore::connect(&RedisEndpoint::new(redis_url(), None), settings).expect("store")),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(other.admit_reservation("v", Reservation::default(), true).await.is_err(), "a live lease expired");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(2);
    while other.admit_reservation("v", Reservation::default(), true).await.is_err() {
        assert!(Instant::now() < deadline, "a released lease was not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const OUTAGE_LINE: &str = "rate limit store (Redis) is unreachable";

/// Brings Redis back even when the outage test fails, for the tests after it.
struct RestartRedisOnDrop;

impl Drop for RestartRedisOnDrop {
    fn drop(&mut self) {
        services("services_start_redis");
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| l.starts_with(name)).find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn redis_outage_fails_open_or_closed_and_recovers_without_restart() {
    let _exclusive = REDIS.write().await;
    let upstream = Upstream::start();
    clear_tenant("lim-open").await;
    clear_tenant("lim-closed").await;
    let open = Gateway::start_logged(
        &manifests(&upstream.url, "lim-open", "    requestsPerMinute: 6000\n    failMode: open\n"),
        &[],
    )
    .await;
    let closed = Gateway::start_logged(
        &manifests(&upstream.url, "lim-closed", "    requestsPerMinute: 6000\n    failMode: closed\n"),
        &[],
    )
    .await;
    let body = chat_body("in-process", false);
    for gw in [&open, &closed] {
        let r = gw.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("6000"));
    }

    // Slices held when Redis goes away still admit (they were taken before
    // it): let the replicas give them back first, so every decision below needs Redis.
    tokio::time::sleep(IDLE + 3 * SWEEP).await;
    services("services_stop_redis KILL");
    let _restart = RestartRedisOnDrop;
    for _ in 0..20 {
        let started = Instant::now();
        let r = open.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 200, "fail open lets requests through");
        assert!(header(&r, "x-ratelimit-limit-requests").is_none(), "no limit was checked");
        let r = closed.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 503, "fail closed refuses");
        assert!(header(&r, "retry-after").is_some());
        let e: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
        assert_eq!(e["error"]["code"], "rate_limit_store_unavailable", "{e}");
        assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("failMode is closed")), "{e}");
        assert!(started.elapsed() < Duration::from_millis(800), "decisions hang: {:?}", started.elapsed());
    }
    for gw in [&open, &closed] {
        let m = gw.metrics().await;
        assert_eq!(metric(&m, "tenantgate_ratelimit_backend_up"), Some(0.0), "{m}");
        assert!(metric(&m, "tenantgate_ratelimit_backend_errors_total").is_some_and(|n| n >= 1.0), "{m}");
        // Logs are flushed in batches by a thread: give it a moment on a busy machine.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !gw.log().contains(OUTAGE_LINE) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = gw.log();
        assert_eq!(log.matches(OUTAGE_LINE).count(), 1, "one log line per outage, not per request:\n{log}");
        assert!(!log.contains("LimitStoreUnavailable"), "refusals during an outage are not logged one by one:\n{log}");
    }

    services("services_start_redis");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = closed.post("/v1/chat/completions", &body).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(Instant::now() < deadline, "the gateway did not recover after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = open.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 200);
        if header(&r, "x-ratelimit-limit-requests") == Some("6000") {
            break;
        }
        assert!(Instant::now() < deadline, "limits were not enforced again after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for gw in [&open, &closed] {
        assert_eq!(metric(&gw.metrics().await, "tenantgate_ratelimit_backend_up"), Some(1.0));
    }
}

/// What the "chat" model's target charges (its price in the test fixture):
/// 2.5 per million input tokens (1.25 cached), 10 per million output tokens.
fn chat_rates() -> Rates {
    let price = Price {
        input_per_million: "2.5".into(),
        output_per_million: Some("10".into()),
        cached_input_per_million: Some("1.25".into()),
        per_request: None,
    };
    Amounts::parse(&price).expect("price").rates()
}

/// What a served answer cost at `rates`, from the usage it reported.
fn cost_of(usage: &Value, rates: &Rates) -> u64 {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let cached = n(&usage["prompt_tokens_details"]["cached_tokens"]);
    rates.cost_nanos(n(&usage["prompt_tokens"]), cached, n(&usage["completion_tokens"])) as u64
}

/// Sends chat requests of `body` as the concurrent users `users` over the
/// gateways in turn until each has been refused three times in a row;
/// returns the nano-units the served answers cost and the refusals' messages.
async fn spend_until_refused(gateways: &[&Gateway], body: &Value, users: std::ops::Range<usize>) -> (u64, Vec<String>) {
    spend_as_team(gateways, body, users, None).await
}

/// [`spend_until_refused`] by users whose tokens name `team` in their `team` claim.
async fn spend_as_team(
    gateways: &[&Gateway],
    body: &Value,
    users: std::ops::Range<usize>,
    team: Option<&str>,
) -> (u64, Vec<String>) {
    let rates = chat_rates();
    let stream = body["stream"] == true;
    let runs = users.map(|u| {
        let (body, rates) = (body.to_string(), rates);
        let user = token(json!({"sub": format!("spender-{u}"), "team": team}));
        async move {
            let (mut spent, mut refusals, mut in_a_row, mut i) = (0, Vec::new(), 0, u);
            while in_a_row < 3 {
                let gw = gateways[i % gateways.len()];
                i += 1;
                let r = gw.post_raw("/v1/chat/completions", body.clone(), Some(&user)).await;
                if r.status() == 402 {
                    refusals.push(assert_over_budget(r).await);
                    in_a_row += 1;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    continue;
                }
                assert_eq!(r.status(), 200);
                assert!(header(&r, "x-budget-remaining").is_some(), "budget headers on an answer");
                in_a_row = 0;
                let text = r.text().await.expect("answer");
                let usage = if stream {
                    text.lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                        .find_map(|v| v.get("usage").filter(|u| u.is_object()).cloned())
                        .expect("a usage chunk")
                } else {
                    serde_json::from_str::<Value>(&text).expect("JSON")["usage"].clone()
                };
                spent += cost_of(&usage, &rates);
            }
            (spent, refusals)
        }
    });
    let all = futures_util::future::join_all(runs).await;
    (all.iter().map(|(s, _)| s).sum(), all.into_iter().flat_map(|(_, r)| r).collect())
}

/// Asserts a budget refusal (402, `x-budget-*` headers, OpenAI's error shape) and returns its message.
async fn assert_over_budget(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 402);
    for name in ["x-budget-limit", "x-budget-remaining", "x-budget-reset", "x-budget-scope", "retry-after"] {
        assert!(header(&r, name).is_some(), "{name} on a budget refusal");
    }
    let body: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON error");
    assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    body["error"]["message"].as_str().expect("message").to_string()
}

#[tokio::test]
async fn a_budget_of_exactly_n_worst_cases_is_never_overspent_by_two_replicas() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    let (streamed, whole) = (chat_body("chat", true), chat_body("chat", false));
    let worst = |body: &Value| {
        let request = serde_json::from_value(body.clone()).expect("request");
        Reservation::of(&request, body.to_string().len()).priced(&chat_rates()).cost
    };
    // The budget allows exactly 40 streamed requests' worst case.
    let n = 40;
    let budget = n * worst(&streamed);
    let limits = format!("    budget: {{ amount: \"{}\", period: Month }}\n", format_nanos(budget as i64));
    let (a, b) = two_gateways(&upstream.url, "lim-budget", &limits).await;
    let key = "tg:{lim-budget}:budget";
    // Many users at once, streamed and whole answers, over both replicas.
    let (mut spent, mut refusals) = (0, Vec::new());
    for (body, users) in [(&streamed, 0..12), (&whole, 12..16)] {
        let (s, r) = spend_until_refused(&[&a, &b], body, users).await;
        spent += s;
        refusals.extend(r);
    }
    assert!(spent <= budget, "spent {spent} of a budget of {budget}");
    assert!(!refusals.is_empty());
    assert!(refusals.iter().all(|m| m.contains("The tenant budget of") && m.contains("USD per month")), "{refusals:?}");
    // Every reservation settles to the cost of its answer: Redis counts exactly what was spent.
    wait_used(key, spent).await;
    // With nothing in flight, one user spends what is left: refused only once
    // less than one request's worst case remains.
    loop {
        let (s, r) = spend_until_refused(&[&a, &b], &whole, 0..1).await;
        spent += s;
        wait_used(key, spent).await;
        if s == 0 {
            assert!(!r.is_empty());
            break;
        }
    }
    assert!(spent <= budget, "spent {spent} of a budget of {budget}");
    let left = budget - spent;
    assert!(left < worst(&whole), "refused with {left} of {budget} left (a worst case is {})", worst(&whole));
    println!(
        "budget {budget} nano-units ({n} worst cases): spent {spent} ({:.1}%), left {left} (under one worst case of {})",
        100.0 * spent as f64 / budget as f64,
        worst(&whole)
    );
}

#[tokio::test]
async fn a_users_budget_nests_in_the_tenants_across_replicas() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    let body = chat_body("chat", false);
    let request = serde_json::from_value(body.clone()).expect("request");
    let worst = Reservation::of(&request, body.to_string().len()).priced(&chat_rates()).cost;
    // Each user may spend three worst cases a day; the tenant five.
    let limits = format!(
        "    budget: {{ amount: \"{}\", period: Month }}\n    perUser:\n      budget: {{ amount: \"{}\", period: Day }}\n",
        format_nanos(5 * worst as i64),
        format_nanos(3 * worst as i64)
    );
    let (a, b) = two_gateways(&upstream.url, "lim-budget-user", &limits).await;
    let (first, refusals) = spend_until_refused(&[&a, &b], &body, 0..1).await;
    assert!(first <= 3 * worst);
    assert!(refusals.iter().all(|m| m.contains("The user budget of") && m.contains("per day (UTC)")), "{refusals:?}");
    // Another user spends the rest of the tenant's month, then the tenant's budget refuses.
    let (second, refusals) = spend_until_refused(&[&a, &b], &body, 1..2).await;
    assert!(second > 0, "the second user has a budget of their own");
    assert!(first + second <= 5 * worst, "spent {} of {}", first + second, 5 * worst);
    assert!(refusals.iter().any(|m| m.contains("The tenant budget of")), "{refusals:?}");
    wait_used("tg:{lim-budget-user}:budget", first + second).await;
    wait_used("tg:{lim-budget-user}:budget:u:spender-0", first).await;
    wait_used("tg:{lim-budget-user}:budget:u:spender-1", second).await;
    // The admin API reads the same counters from Redis.
    let admin = token(json!({"roles": ["tenant-admin"], "sub": "auditor"}));
    let (status, budgets) = b.get_json("/admin/v1/budgets?subject=spender-0", &admin).await;
    assert_eq!(status, 200, "{budgets}");
    let amounts: Vec<(&str, &str)> = budgets["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|b| (b["scope"].as_str().unwrap_or_default(), b["spent"].as_str().unwrap_or_default()))
        .collect();
    let (tenant, user) = (format_nanos((first + second) as i64), format_nanos(first as i64));
    assert_eq!(amounts, [("tenant", tenant.as_str()), ("user", user.as_str())], "{budgets}");
}

#[tokio::test]
async fn team_budgets_hold_across_replicas_for_listed_teams_and_the_default() {
    let _shared = REDIS.read().await;
    let upstream = Upstream::start();
    let body = chat_body("chat", false);
    let request = serde_json::from_value(body.clone()).expect("request");
    let worst = Reservation::of(&request, body.to_string().len()).priced(&chat_rates()).cost;
    let amount = |n: u64| format_nanos((n * worst) as i64);
    // Team ml may spend 7 worst cases in a fixed window of a day that began an hour ago; any
    // other team 2 a month; each user 3 a day; the tenant 40 a month.
    let start = chrono::Utc::now() - chrono::Duration::hours(1);
    let limits = format!(
        "    budget: {{ amount: \"{}\", period: Month }}\n    perUser:\n      budget: {{ amount: \"{}\", period: Day }}\n    perTeam:\n      budget: {{ amount: \"{}\", period: Month }}\n      teams:\n        - name: ml\n          budget: {{ amount: \"{}\", period: Fixed, fixedWindow: {{ start: \"{}\", length: 24h }} }}\n",
        amount(40),
        amount(3),
        amount(2),
        amount(7),
        start.format("%Y-%m-%dT%H:%M:%SZ"),
    );
    let (a, b) = {
        clear_tenant("lim-team").await;
        let m = manifests(&upstream.url, "lim-team", &limits);
        assert!(m.contains("      adminRoles: [tenant-admin]\n"), "the fixture's auth block moved");
        let m = m.replacen(
            "      adminRoles: [tenant-admin]\n",
            "      adminRoles: [tenant-admin]\n      teamClaim: team\n",
            1,
        );
        (Gateway::start(&m).await, Gateway::start(&m).await)
    };
    // Six members of ml at once over both replicas: the team's budget binds before theirs.
    let (mut ml, refusals) = spend_as_team(&[&a, &b], &body, 0..6, Some("ml")).await;
    assert!(ml <= 7 * worst, "team ml spent {ml} of {}", 7 * worst);
    assert!(
        refusals.iter().any(|m| m.contains("The team budget of") && m.contains("per window of 24h")),
        "{refusals:?}"
    );
    wait_used("tg:{lim-team}:budget:t:ml", ml).await;
    // With nothing in flight, one member spends what is left: refused only once less than
    // one worst case remains.
    loop {
        let (s, _) = spend_as_team(&[&a, &b], &body, 0..1, Some("ml")).await;
        ml += s;
        wait_used("tg:{lim-team}:budget:t:ml", ml).await;
        if s == 0 {
            break;
        }
    }
    assert!(ml <= 7 * worst && 7 * worst - ml < worst, "team ml spent {ml} of {}", 7 * worst);
    // Team search has no budget of its own: it takes the default of 2.
    let (search, refusals) = spend_as_team(&[&a, &b], &body, 10..12, Some("search")).await;
    assert!(search <= 2 * worst, "team search spent {search} of {}", 2 * worst);
    assert!(refusals.iter().any(|m| m.contains("The team budget of") && m.contains("per month")), "{refusals:?}");
    wait_used("tg:{lim-team}:budget:t:search", search).await;
    // Every team's spend counts toward the tenant's.
    wait_used("tg:{lim-team}:budget", ml + search).await;
    // The admin API lists the listed team's budget, and a team's on request.
    let admin = token(json!({"roles": ["tenant-admin"], "sub": "auditor"}));
    let (status, budgets) = a.get_json("/admin/v1/budgets", &admin).await;
    assert_eq!(status, 200, "{budgets}");
    let entry = |scope: &str, budgets: &Value| {
        budgets["data"].as_array().expect("data").iter().find(|b| b["scope"] == scope).cloned().unwrap_or_default()
    };
    let team = entry("team", &budgets);
    assert_eq!((team["team"].as_str(), team["period"].as_str()), (Some("ml"), Some("Fixed")), "{budgets}");
    assert_eq!(team["spent"].as_str(), Some(format_nanos(ml as i64).as_str()), "{budgets}");
    assert_eq!(team["window"].as_str(), Some(start.format("%Y-%m-%dT%H:%M:%SZ").to_string().as_str()), "{budgets}");
    let (_, budgets) = b.get_json("/admin/v1/budgets?team=search", &admin).await;
    assert_eq!(entry("team", &budgets)["spent"].as_str(), Some(format_nanos(search as i64).as_str()), "{budgets}");
    println!(
        "team ml: {ml} of {} ({:.1}%); team search (default): {search} of {}",
        7 * worst,
        100.0 * ml as f64 / (7 * worst) as f64,
        2 * worst
    );
}

#[tokio::test]
async fn an_api_keys_budget_is_leased_and_nested_in_its_users_and_teams() {
    use tenantgate_crds::config::DeclaredApiKey;
    use tenantgate_crds::v1alpha1::{Budget, BudgetPeriod, TeamLimits};
    use tenantgate_gateway::limits::{Account, Plan};
    let _shared = REDIS.read().await;
    clear_tenant("lim-key").await;
    let unit = 1_000_000_000u64;
    let limits = Limits {
        per_user: Some(tenantgate_crds::v1alpha1::UserLimits {
            budget: Some(Budget::new("100", BudgetPeriod::Month)),
            ..Default::default()
        }),
        per_team: Some(TeamLimits { budget: Some(Budget::new("1000", BudgetPeriod::Month)), ..Default::default() }),
        ..Default::default()
    };
    // 64 units: large enough for slices (a 64th each), so most admissions are local.
    let key = DeclaredApiKey {
        team: Some("ml".into()),
        ..DeclaredApiKey::with_budget("ci", "h", Some(Budget::new("64", BudgetPeriod::Month)))
    };
    let replica = || {
        let store =
            RedisStore::connect(&RedisEndpoint::new(redis_url(), None), RedisSettings::default()).expect("store");
        let plan = Plan::of("lim-key", Some(&limits), std::slice::from_ref(&key));
        RateLimiter::of(plan, Store::Redis(store))
    };
    let (a, b) = (replica(), replica());
    let ci = Account { subject: "apikey:ci", team: Some("ml"), api_key: Some("kubernetes:ci") };
    // Two replicas take 1-unit requests in turn until the key's budget refuses; a replica
    // may be refused while the other holds an unused slice, so then both give their
    // slices back and one of them takes the rest: exactly the key's 64, never more.
    let mut admitted = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let limiter = if i % 2 == 1 && refused.is_none() { &b } else { &a };
        match limiter.admit_reservation(ci, Reservation::default().costing(unit), false).await {
            Ok(admission) => admitted.push(admission),
            Err(e) if refused.is_none() => {
                assert!(admitted.len() <= 64);
                a.release(Duration::from_secs(2)).await;
                b.release(Duration::from_secs(2)).await;
                refused = Some(e);
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the key's budget refuses");
    assert_eq!(admitted.len(), 64, "exactly the key's budget");
    assert!(refused.to_string().contains("The API key budget of 64 "), "{refused}");
    let mut headers = axum::http::HeaderMap::new();
    refused.apply_headers(&mut headers);
    assert_eq!(headers["x-budget-scope"], "apiKey");
    // Half cost nothing in the end: their units come back to the key, its user and its team.
    for mut admission in admitted.drain(..32) {
        admission.record_cost(0);
    }
    drop(admitted);
    a.release(Duration::from_secs(2)).await;
    b.release(Duration::from_secs(2)).await;
    wait_used("tg:{lim-key}:budget:k:kubernetes:ci", 32 * unit).await;
    wait_used("tg:{lim-key}:budget:u:apikey:ci", 32 * unit).await;
    wait_used("tg:{lim-key}:budget:t:ml", 32 * unit).await;
    // The same subject without the key is held by its own 100 only.
    let plain = Account { api_key: None, ..ci };
    a.admit_reservation(plain, Reservation::default().costing(60 * unit), false).await.expect("the user has 68 left");
}
