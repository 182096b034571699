//! Usage, audit and API keys on a real PostgreSQL (started by
//! `e2e/with-services`, which exports TENANTGATE_POSTGRES_URL and lets a test
//! kill and restart the server). Each test gets a database of its own.
//!
//!   e2e/with-services cargo test -p tenantgate-gateway --test services_storage -- --nocapture

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, free_port, fresh_database, repo_root, temp_dir, tenant_yaml_with_storage, token};
use serde_json::{Value, json};
use sqlx::PgPool;

/// The outage test kills the server every test here uses: they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs an e2e/lib/common.sh function (the services of this run).
fn services(command: &str) {
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!("source e2e/lib/common.sh && {command}"))
        .current_dir(repo_root())
        .status()
        .expect("bash");
    assert!(status.success(), "{command} failed");
}

fn admin_token() -> String {
    token(json!({"sub": "admin", "roles": ["tenant-admin"]}))
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// Tokens a chat answer reported: from the body, or the stream's usage chunk.
fn reported_tokens(text: &str) -> (u64, u64) {
    let usage = |v: &Value| (v["usage"]["prompt_tokens"].as_u64(), v["usage"]["completion_tokens"].as_u64());
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let (p, c) = usage(&v);
        return (p.expect("prompt_tokens"), c.expect("completion_tokens"));
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| match usage(&v) {
            (Some(p), Some(c)) => Some((p, c)),
            _ => None,
        })
        .expect("a usage chunk in the stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_postgres_under_load_loses_and_duplicates_nothing() {
    let _turn = SERIAL.lock().await;
    const TOTAL: usize = 10_000;
    const CONCURRENCY: usize = 32;
    let url = fresh_database("outage").await;
    let dir = temp_dir("svc-outage");
    let gw = Arc::new(Gateway::start_in(&dir, &tenant_yaml_with_storage("http://127.0.0.1:9", Some(&url)), &[]).await);

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (gw, next, done) = (gw.clone(), next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let (mut prompt, mut completion, mut ok) = (0u64, 0u64, 0usize);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= TOTAL {
                    return (ok, prompt, completion);
                }
                // Every tenth request streams.
                let body = if n % 10 == 0 {
                    json!({"model": "in-process", "stream": true, "stream_options": {"include_usage": true},
                           "messages": [{"role": "user", "content": format!("request {n}")}]})
                } else {
                    json!({"model": "in-process", "messages": [{"role": "user", "content": format!("request {n}")}]})
                };
                let r = gw.post("/v1/chat/completions", &body).await;
                let status = r.status().as_u16();
                let text = r.text().await.expect("body");
                assert_eq!(status, 200, "request {n}: {text}");
                let (p, c) = reported_tokens(&text);
                prompt += p;
                completion += c;
                ok += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // The outage: PostgreSQL killed (SIGKILL) a fifth of the way in, back 3 s later.
    while done.load(Ordering::Relaxed) < TOTAL / 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = started.elapsed();
    let killed_after = done.load(Ordering::Relaxed);
    services("services_stop_postgres KILL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart = Instant::now();
    services("services_start_postgres");
    let restarted_at = started.elapsed();
    let answered_during_outage = done.load(Ordering::Relaxed) - killed_after;
    eprintln!(
        "PostgreSQL killed at {killed_at:?} after {killed_after} responses, restarted at {restarted_at:?} \
         (start took {:?}); {answered_during_outage} responses while it was down",
        restart.elapsed()
    );

    let (mut ok, mut prompt, mut completion) = (0, 0, 0);
    for w in workers {
        let (o, p, c) = w.await.expect("worker");
        ok += o;
        prompt += p;
        completion += c;
    }
    let load_time = started.elapsed();
    assert_eq!(ok, TOTAL);
    assert!(answered_during_outage > 0, "no request was answered while PostgreSQL was down");

    // Everything arrives: replayed from the spill file, nothing twice.
    let pool = PgPool::connect(&url).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = count(&pool, "SELECT COUNT(*) FROM usage").await;
        let events = count(&pool, "SELECT COUNT(*) FROM audit_events WHERE kind = 'chat'").await;
        if rows >= TOTAL as i64 && events >= TOTAL as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {rows} usage rows and {events} chat audit events after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = count(&pool, "SELECT COUNT(*) FROM usage").await;
    // Duplicates counted in one statement each, so a late write cannot fall between two counts.
    let twice_rows = count(&pool, "SELECT COUNT(*) - COUNT(DISTINCT id) FROM usage").await;
    let events = count(&pool, "SELECT COUNT(*) FROM audit_events WHERE kind = 'chat'").await;
    let twice_events = count(&pool, "SELECT COUNT(*) - COUNT(DISTINCT id) FROM audit_events").await;
    let all_events = count(&pool, "SELECT COUNT(*) FROM audit_events").await;
    let linked = count(
        &pool,
        "SELECT COUNT(*) FROM audit_events a JOIN usage u ON u.id = a.details::jsonb->>'usageId' WHERE a.kind = 'chat'",
    )
    .await;
    let metrics = gw.metrics().await;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (spilled, replayed, errors) = (
        metric("tenantgate_recorder_spilled_total"),
        metric("tenantgate_recorder_replayed_total"),
        metric("tenantgate_recorder_write_errors_total"),
    );
    eprintln!(
        "{TOTAL} requests in {load_time:?} ({:.0}/s); all rows in the database {:?} after the start; \
         usage rows {rows} ({twice_rows} written twice), chat audit events {events} ({twice_events} events \
         written twice, linked to their usage row {linked}); spilled {spilled}, replayed {replayed}, \
         write errors {errors}",
        TOTAL as f64 / load_time.as_secs_f64(),
        settled,
    );
    assert_eq!(rows, TOTAL as i64, "usage rows");
    assert_eq!(twice_rows, 0, "usage rows written twice");
    assert_eq!(events, TOTAL as i64, "chat audit events");
    assert_eq!(twice_events, 0, "audit events written twice");
    assert_eq!(linked, TOTAL as i64, "every chat audit event names its usage row");
    assert!(spilled > 0.0 && errors > 0.0, "the outage never reached the recorder (spilled {spilled})");
    assert_eq!(replayed, spilled, "every spilled record was replayed");

    // The admin API's totals are what the clients were told.
    let admin = admin_token();
    let (status, report) = gw.get_json("/admin/v1/usage?subject=tester&model=in-process", &admin).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["totals"]["requests"], TOTAL);
    assert_eq!(report["totals"]["promptTokens"], prompt);
    assert_eq!(report["totals"]["completionTokens"], completion);
    assert_eq!(report["totals"]["errors"], 0);
    let per_day: u64 =
        report["days"].as_array().expect("days").iter().map(|d| d["requests"].as_u64().expect("n")).sum();
    assert_eq!(per_day, TOTAL as u64);
    // And so is the cost: in-process's price (1 and 2 per million, 0.0005 a request) in
    // nano-units is a whole number per request, so the sum is exact.
    let nanos = |tokens_in: u64, tokens_out: u64| tokens_in * 1_000 + tokens_out * 2_000 + TOTAL as u64 * 500_000;
    let expected = tenantgate_crds::pricing::format_nanos(nanos(prompt, completion) as i64);
    assert_eq!(report["totals"]["cost"], expected, "{report}");
    let (status, by_subject) = gw.get_json("/admin/v1/usage?groupBy=subject&model=in-process", &admin).await;
    assert_eq!(status, 200, "{by_subject}");
    assert_eq!(by_subject["groups"][0]["key"], "tester", "{by_subject}");
    assert_eq!(by_subject["groups"][0]["cost"], expected, "{by_subject}");
    let (_, none) = gw.get_json("/admin/v1/usage?subject=nobody", &admin).await;
    assert_eq!(none["totals"]["requests"], 0);
    let (status, bad) = gw.get_json("/admin/v1/usage?from=yesterday", &admin).await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"]["message"].as_str().expect("message").contains("from"), "{bad}");

    // Audit pagination walks every event exactly once, in a stable order.
    let walk_started = Instant::now();
    let mut seen = HashSet::new();
    let mut chat = 0;
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/v1/audit?limit=1000&cursor={c}"),
            None => "/admin/v1/audit?limit=1000".to_string(),
        };
        let (status, page) = gw.get_json(&path, &admin).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for e in page["data"].as_array().expect("data") {
            assert!(seen.insert(e["id"].as_str().expect("id").to_owned()), "event {} seen twice", e["id"]);
            chat += usize::from(e["kind"] == "chat");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    eprintln!("audit walk: {} events in {pages} pages, {:?}", seen.len(), walk_started.elapsed());
    assert_eq!(chat, TOTAL);
    assert!(seen.len() as i64 >= all_events, "the walk missed events");

    let mut gw = Arc::try_unwrap(gw).ok().expect("no other handle");
    assert!(gw.interrupt(), "the gateway did not stop cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn audit_events_refuse_update_delete_and_truncate() {
    let _turn = SERIAL.lock().await;
    let url = fresh_database("appendonly").await;
    let dir = temp_dir("svc-appendonly");
    let gw = Gateway::start_in(&dir, &tenant_yaml_with_storage("http://127.0.0.1:9", Some(&url)), &[]).await;
    assert_eq!(gw.chat("in-process").await.0, 200);
    let pool = PgPool::connect(&url).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&pool, "SELECT COUNT(*) FROM audit_events").await == 0 {
        assert!(Instant::now() < deadline, "no audit event written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for sql in ["UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events", "TRUNCATE audit_events"] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql).to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM audit_events WHERE actor = 'mallory'").await, 0);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn api_keys_are_shown_once_stored_hashed_and_revoked_across_replicas() {
    let _turn = SERIAL.lock().await;
    let url = fresh_database("apikeys").await;
    let (dir_a, dir_b) = (temp_dir("svc-keys-a"), temp_dir("svc-keys-b"));
    let yaml = tenant_yaml_with_storage("http://127.0.0.1:9", Some(&url));
    let a = Gateway::start_in(&dir_a, &yaml, &[]).await;
    // A second replica: same database, same pepper (the gateway-keys Secret).
    std::fs::create_dir_all(dir_b.join("state/secrets")).expect("dir");
    let copy = Command::new("cp")
        .arg("-a")
        .arg(dir_a.join("state/secrets/gateway-keys"))
        .arg(dir_b.join("state/secrets/"))
        .status()
        .expect("cp");
    assert!(copy.success());
    let b = Gateway::start_in(&dir_b, &yaml, &[]).await;
    let admin = admin_token();

    // A non-admin gets 403 on every admin endpoint, and the attempt is audited.
    for path in ["/admin/v1/usage", "/admin/v1/audit", "/admin/v1/api-keys"] {
        let (status, body) = a.get_json(path, &a.token).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["type"], "permission_error");
    }

    let created = a
        .post_raw(
            "/admin/v1/api-keys",
            json!({"name": "ci", "roles": ["dev"], "expiresInSeconds": 3600}).to_string(),
            Some(&admin),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let created: Value = serde_json::from_str(&created.text().await.expect("body")).expect("JSON");
    let key = created["key"].as_str().expect("the key is shown at creation").to_owned();
    let prefix = created["prefix"].as_str().expect("prefix").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with(&format!("tg_{prefix}_")), "{key}");

    // Never again: not in the list, not in the table (only a hash and the prefix).
    let (_, list) = a.get_json("/admin/v1/api-keys", &admin).await;
    assert!(!list.to_string().contains(&key[key.len() - 20..]), "the list shows the secret");
    assert_eq!(list["data"][0]["prefix"], prefix.as_str());
    assert_eq!(list["data"][0]["state"], "active");
    let pool = PgPool::connect(&url).await.expect("connect");
    let (hash, stored_prefix): (String, String) = sqlx::query_as("SELECT hash, prefix FROM api_keys WHERE id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(stored_prefix, prefix);
    assert_eq!(hash.len(), 64);
    let dump: String =
        sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM api_keys t").fetch_one(&pool).await.expect("dump");
    assert!(!dump.contains(&key[prefix.len() + 4..]), "the secret is stored");

    // The key authenticates chat on both replicas, as apikey:<prefix> with its roles.
    assert_eq!(a.chat_as(&key, "in-process").await.0, 200);
    assert_eq!(b.chat_as(&key, "in-process").await.0, 200);
    let (status, body) = a.get_json("/admin/v1/usage", &key).await;
    assert_eq!(status, 403, "a key without an admin role is not an admin: {body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, report) = a.get_json(&format!("/admin/v1/usage?subject=apikey:{prefix}"), &admin).await;
        if report["totals"]["requests"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "usage of the key not recorded: {report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // In PostgreSQL too, each row names the key by its id: spend per key, and one key's.
    let (status, by_key) = a.get_json("/admin/v1/usage?groupBy=apiKey", &admin).await;
    assert_eq!(status, 200, "{by_key}");
    let group = by_key["groups"].as_array().and_then(|g| g.iter().find(|g| g["key"] == id.as_str())).cloned();
    assert_eq!(group.map(|g| g["requests"].clone()), Some(json!(2)), "{by_key}");
    let (_, one) = a.get_json(&format!("/admin/v1/usage?apiKey={id}"), &admin).await;
    assert_eq!(one["totals"]["requests"], 2, "{one}");

    // Revoked on A: refused on A at once, on B within seconds.
    let revoked_at = Instant::now();
    let r =
        a.client.delete(format!("{}/admin/v1/api-keys/{id}", a.url)).bearer_auth(&admin).send().await.expect("delete");
    assert_eq!(r.status().as_u16(), 200);
    let (status, body) = a.chat_as(&key, "in-process").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("revoked"), "{body}");
    loop {
        let (status, _) = b.chat_as(&key, "in-process").await;
        if status == 401 {
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "replica B still accepts the revoked key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("revocation effective on the other replica after {:?}", revoked_at.elapsed());
    let r =
        a.client.delete(format!("{}/admin/v1/api-keys/nope", a.url)).bearer_auth(&admin).send().await.expect("delete");
    assert_eq!(r.status().as_u16(), 404);

    // Unknown and expired keys: 401 with a message saying which.
    let (status, body) = a.chat_as("tg_0123456789ab_not-a-real-secret", "in-process").await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"].as_str().expect("message").contains("unknown"), "{body}");
    let short = a
        .post_raw("/admin/v1/api-keys", json!({"name": "short", "expiresInSeconds": 1}).to_string(), Some(&admin))
        .await;
    let short: Value = serde_json::from_str(&short.text().await.expect("body")).expect("JSON");
    let short_key = short["key"].as_str().expect("key");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = a.chat_as(short_key, "in-process").await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"].as_str().expect("message").contains("expired"), "{body}");

    // Every admin action is in the audit trail, the refused ones too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let actions: Vec<(String, String, Option<i32>)> =
            sqlx::query_as("SELECT actor, action, status FROM audit_events WHERE kind = 'admin' ORDER BY seq")
                .fetch_all(&pool)
                .await
                .expect("select");
        let has = |actor: &str, action: &str, status: i32| {
            actions.iter().any(|(a, b, s)| a == actor && b == action && *s == Some(status))
        };
        if has("tester", "usage.read", 403)
            && has("admin", "apiKeys.create", 201)
            && has("admin", "apiKeys.revoke", 200)
            && has("admin", "apiKeys.revoke", 404)
            && has(&format!("apikey:{prefix}"), "usage.read", 403)
        {
            break;
        }
        assert!(Instant::now() < deadline, "admin actions missing from the audit trail: {actions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
}

/// A TCP proxy in front of PostgreSQL that a test cuts: the gateway behind it
/// loses its database (open connections dropped, new ones refused) while the
/// server, which the other tests use, keeps running.
struct DbProxy {
    /// The database URL through the proxy.
    url: String,
    cut: tokio::sync::watch::Sender<bool>,
}

impl DbProxy {
    async fn start(url: &str) -> Self {
        Self::start_on(url, 0).await
    }

    /// The proxy on `port` of 127.0.0.1 (0: a free one).
    async fn start_on(url: &str, port: u16) -> Self {
        let mut proxied = url::Url::parse(url).expect("database URL");
        let target = format!("{}:{}", proxied.host_str().expect("host"), proxied.port().unwrap_or(5432));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        proxied.set_port(Some(listener.local_addr().expect("address").port())).expect("port");
        let (cut, mut cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = cut_rx.wait_for(|c| *c) => return,
                    accepted = listener.accept() => accepted.expect("accept"),
                };
                let (target, mut cut_rx) = (target.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Self { url: proxied.to_string(), cut }
    }

    fn cut(&self) {
        let _ = self.cut.send(true);
    }
}

/// Cuts the gateway's database, has it answer `n` chat requests (their
/// records go to the spill file), then stops it with SIGTERM: its drain gives
/// up on the database after `--spill-drain-timeout-ms`, so it stops well
/// within the generous bound checked here.
async fn answer_then_stop_without_database(gw: &mut Gateway, proxy: &DbProxy, n: usize) {
    proxy.cut();
    for i in 0..n {
        let (status, body) = gw.chat("in-process").await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let stopping = Instant::now();
    assert!(gw.terminate(), "the gateway did not stop cleanly:\n{}", gw.log());
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(20), "the drain is bounded, yet the gateway took {took:?} to stop");
}

/// Records in a spill directory not yet replayed (lines after the saved offset).
fn spill_backlog(dir: &Path) -> usize {
    let text = std::fs::read(dir.join("records.jsonl")).expect("spill file");
    let offset = std::fs::read_to_string(dir.join("records.offset")).ok().and_then(|s| s.trim().parse().ok());
    text[offset.unwrap_or(0)..].iter().filter(|&&b| b == b'\n').count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_sharing_the_spill_volume_replays_the_spill_of_one_that_is_gone() {
    let _turn = SERIAL.lock().await;
    const N: usize = 25;
    let url = fresh_database("adopt").await;
    let proxy = DbProxy::start(&url).await;
    let root = temp_dir("svc-spill-root");
    let root_arg = root.to_str().expect("UTF-8 path");
    let mut a = Gateway::start_logged_at(
        &tenant_yaml_with_storage("http://127.0.0.1:9", Some(&proxy.url)),
        &["--spill-root", root_arg, "--spill-name", "gateway-a", "--spill-drain-timeout-ms", "1000"],
        "info",
    )
    .await;
    answer_then_stop_without_database(&mut a, &proxy, N).await;
    let log = a.log();
    assert!(log.contains("stopping with records in the spill file"), "{log}");
    assert!(!log.contains("lost with the pod"), "a durable spill loses nothing:\n{log}");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("spill root")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("gateway-a.")))
        .collect();
    assert_eq!(dirs.len(), 1, "A spilled into a directory of its own: {dirs:?}");
    assert!(spill_backlog(&dirs[0]) >= N, "A's answered requests wait in its spill");
    let pool = PgPool::connect(&url).await.expect("connect");
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM usage").await, 0, "nothing reached the database through the cut");

    // B, on the same volume and reaching the database, adopts A's spill at start.
    let mut b = Gateway::start_logged_at(
        &tenant_yaml_with_storage("http://127.0.0.1:9", Some(&url)),
        &["--spill-root", root_arg, "--spill-name", "gateway-b"],
        "info",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while dirs[0].exists() || count(&pool, "SELECT COUNT(*) FROM usage").await < N as i64 {
        assert!(Instant::now() < deadline, "B did not adopt A's spill within 30 s:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM usage").await, N as i64, "the requests A answered, once each");
    assert_eq!(count(&pool, "SELECT COUNT(DISTINCT id) FROM usage").await, N as i64);
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM audit_events WHERE kind = 'chat'").await, N as i64);
    let metrics = b.metrics().await;
    let adopted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tenantgate_recorder_adopted_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(adopted >= N as f64, "tenantgate_recorder_adopted_total {adopted}:\n{metrics}");
    assert!(b.interrupt(), "gateway B did not stop cleanly");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_an_ephemeral_spill_keeps_at_exit_are_counted_lost() {
    let _turn = SERIAL.lock().await;
    const N: usize = 10;
    let url = fresh_database("ephemeral").await;
    let proxy = DbProxy::start(&url).await;
    let dir = temp_dir("svc-spill-ephemeral");
    std::fs::create_dir_all(&dir).expect("dir");
    let termination_log = dir.join("termination-log");
    std::fs::write(&termination_log, "").expect("termination log");
    let spill = dir.join("spill");
    let mut gw = Gateway::start_logged_at(
        &tenant_yaml_with_storage("http://127.0.0.1:9", Some(&proxy.url)),
        &[
            "--spill-dir",
            spill.to_str().expect("UTF-8 path"),
            "--spill-durability",
            "ephemeral",
            "--spill-drain-timeout-ms",
            "1500",
            "--termination-message-path",
            termination_log.to_str().expect("UTF-8 path"),
        ],
        "info",
    )
    .await;
    answer_then_stop_without_database(&mut gw, &proxy, N).await;
    // What was left, from the spill file itself; the count logged and
    // written to the termination message (the counter's increment) is that.
    let left = spill_backlog(&spill);
    assert!(left >= N, "only {left} records left for {N} answered requests");
    let log = gw.log();
    let line =
        log.lines().find(|l| l.contains("lost with the pod")).unwrap_or_else(|| panic!("no loss logged:\n{log}"));
    let logged: Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!((logged["level"].as_str(), logged["records"].as_u64()), (Some("ERROR"), Some(left as u64)), "{line}");
    assert_eq!(logged["reason"], "spill_ephemeral", "{line}");
    let message = std::fs::read_to_string(&termination_log).expect("termination log");
    assert!(message.starts_with(&format!("{left} usage/audit records lost")), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A gateway whose database cannot be reached at start does not exit: alive
/// on its ops port, not ready and saying why, it tries again with backoff and
/// is ready within seconds of the database; what it answers then is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_waits_alive_and_unready_for_a_database_it_cannot_reach_at_start() {
    let _turn = SERIAL.lock().await;
    let url = fresh_database("wait").await;
    // The database's address through a port nothing listens on yet.
    let port = free_port();
    let mut unreachable = url::Url::parse(&url).expect("database URL");
    unreachable.set_port(Some(port)).expect("port");
    let ops_port = free_port();
    let ops = format!("http://127.0.0.1:{ops_port}");
    let ops_listen = format!("127.0.0.1:{ops_port}");
    let mut gw = Gateway::spawn_logged_at(
        &tenant_yaml_with_storage("http://127.0.0.1:9", Some(unreachable.as_str())),
        &["--ops-listen", &ops_listen],
        "info",
    )
    .await;
    let client = reqwest::Client::new();
    let readyz = || async { client.get(format!("{ops}/readyz")).send().await.ok() };
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        assert!(gw.is_running(), "the gateway exited instead of waiting for its database:\n{}", gw.log());
        if let Some(r) = readyz().await {
            let status = r.status().as_u16();
            let body = r.text().await.expect("body");
            if body.contains("waiting for the database") {
                assert_eq!(status, 503, "{body}");
                break body;
            }
        }
        assert!(Instant::now() < deadline, "/readyz never said what start-up waits for:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(waiting.contains(&format!("127.0.0.1:{port}")), "names the database's address: {waiting}");
    let password = url::Url::parse(&url).expect("URL").password().map(str::to_owned).unwrap_or_default();
    assert!(password.is_empty() || !waiting.contains(&format!(":{password}@")), "no credentials shown: {waiting}");
    let live = client.get(format!("{ops}/livez")).send().await.expect("livez");
    assert_eq!(live.status().as_u16(), 200, "alive while it waits");
    assert!(client.get(format!("{}/v1/models", gw.url)).send().await.is_err(), "the API port opens only once started");

    // The database comes back at that address.
    let _proxy = DbProxy::start_on(&url, port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz().await.is_none_or(|r| !r.status().is_success()) {
        assert!(gw.is_running(), "the gateway exited:\n{}", gw.log());
        assert!(Instant::now() < deadline, "not ready 30 s after its database came back:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = gw.chat("in-process").await;
    assert_eq!(status, 200, "{body}");
    let pool = PgPool::connect(&url).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&pool, "SELECT COUNT(*) FROM usage").await < 1 {
        assert!(Instant::now() < deadline, "the answered request was not recorded:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = gw.log();
    assert!(log.contains("the database cannot be reached; waiting for it"), "{log}");
    assert!(gw.interrupt(), "the gateway did not stop cleanly");
}
