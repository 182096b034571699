//! TLS from the gateway to PostgreSQL and Redis, against real servers with
//! TLS on (a throwaway CA and a certificate for 127.0.0.1 made by
//! `TENANTGATE_SERVICES_TLS=1 e2e/services/up`): `sslmode=verify-full` with
//! `sslrootcert` and the Tenant's `caSecretRef` record usage over TLS
//! connections; the wrong CA stops the gateway with a clear error; `rediss://`
//! with the CA enforces limits across two gateways and keeps MCP sessions; the
//! wrong CA makes the limiter report its store down, saying why.
//!
//! Run: `e2e/with-services cargo test -p tenantgate-gateway --test services_tls`
//! (part of `make test-services`; `e2e/with-services` turns the servers' TLS
//! on unless `TENANTGATE_SERVICES_TLS=0`); fails without
//! `TENANTGATE_POSTGRES_TLS_URL`, `TENANTGATE_REDIS_TLS_URL` and `TENANTGATE_SERVICES_CA`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tenantgate_gateway::mcp::session_store::SharedSessions;
use tenantgate_gateway::redis_client::RedisEndpoint;

const OUTAGE_LINE: &str = "rate limit store (Redis) is unreachable";

fn ca_file() -> String {
    services_env("TENANTGATE_SERVICES_CA")
}

fn ca_pem() -> String {
    std::fs::read_to_string(ca_file()).expect("read the services CA")
}

/// The server's TLS URL, `...?sslmode=verify-full&sslrootcert=<CA>`.
fn postgres_tls_url() -> String {
    services_env("TENANTGATE_POSTGRES_TLS_URL")
}

/// The server's URL without any query (`postgres://user:pw@127.0.0.1:port`), and the query.
fn postgres_base() -> (String, String) {
    let url = postgres_tls_url();
    let (path, query) = url.split_once('?').expect("a query with sslmode");
    let (server, _db) = path.rsplit_once('/').expect("URL with a database");
    (server.to_owned(), query.to_owned())
}

/// A CA that signed nothing the servers present.
fn wrong_ca() -> PathBuf {
    let dir = temp_dir("wrong-ca");
    std::fs::create_dir_all(&dir).expect("dir");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=not the services CA"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.crt"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl could not make a CA");
    dir.join("ca.crt")
}

/// A PEM as a YAML block scalar under a Secret's `stringData` key.
fn pem_entry(key: &str, pem: &str) -> String {
    let body: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!("  {key}: |\n{body}")
}

/// A new empty database (created over TLS); its name.
async fn fresh_database(tag: &str) -> String {
    tenantgate_gateway::tls::ensure_crypto_provider();
    let admin = PgPool::connect(&postgres_tls_url()).await.expect("connect to PostgreSQL over TLS");
    let name = format!("tg_{tag}_{}", fastrand::u32(..));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.expect("create database");
    admin.close().await;
    name
}

/// The test tenant on database `db`, with `database` as its `storage.database`
/// block and `secret` as the `db` Secret's `stringData` lines.
fn manifests_with_database(upstream: &str, database: &str, secret: &str) -> String {
    let yaml = tenant_yaml_with_storage(upstream, None);
    assert!(yaml.contains("\nspec:\n  namespace: tg-test\n"), "the fixture's Tenant spec moved");
    let yaml = yaml.replacen(
        "\nspec:\n  namespace: tg-test\n",
        &format!("\nspec:\n  namespace: tg-test\n  storage:\n    database: {database}\n"),
        1,
    );
    format!(
        "{yaml}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: db, namespace: tg-test }}\nstringData:\n{secret}"
    )
}

/// Asserts the gateway's connections to `db` use TLS: `pg_stat_ssl` of every
/// other backend on it (the reader connects with `sslmode=disable`, so it is
/// told apart), and returns their number.
async fn tls_backends(reader: &PgPool, db: &str) -> i64 {
    let (ssl, plain): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE s.ssl), COUNT(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
    )
    .bind(db)
    .fetch_one(reader)
    .await
    .expect("pg_stat_ssl");
    assert_eq!(plain, 0, "the gateway has plain connections to {db}");
    let mine: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(reader)
        .await
        .expect("own pg_stat_ssl");
    assert!(!mine, "the reader was meant to be plain, to tell it apart");
    ssl
}

/// A plain-TCP pool on `db` for reading what the gateway wrote.
async fn plain_reader(db: &str) -> PgPool {
    let (server, _) = postgres_base();
    PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{server}/{db}?sslmode=disable"))
        .await
        .expect("plain connection for the reader")
}

/// Sends a chat and waits until its usage row is in `db`; then checks the connections.
async fn chat_is_recorded_over_tls(gw: &Gateway, db: &str) {
    let (status, body) = gw.chat("in-process").await;
    assert_eq!(status, 200, "{body}");
    let reader = plain_reader(db).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage").fetch_one(&reader).await.expect("usage");
        if rows == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no usage row after 20 s ({rows})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tls = tls_backends(&reader, db).await;
    assert!(tls >= 1, "pg_stat_ssl shows no TLS connection of the gateway to {db}");
    reader.close().await;
}

#[tokio::test]
async fn postgres_verify_full_with_sslrootcert_records_usage_over_tls() {
    let upstream = Upstream::start();
    let db = fresh_database("tls_url").await;
    let (server, query) = postgres_base();
    assert!(query.contains("sslmode=verify-full") && query.contains("sslrootcert="), "{query}");
    let url = format!("{server}/{db}?{query}");
    let manifests = manifests_with_database(
        &upstream.url,
        "{ urlSecretRef: { name: db, key: url } }",
        &format!("  url: '{url}'\n"),
    );
    let gw = Gateway::start(&manifests).await;
    chat_is_recorded_over_tls(&gw, &db).await;
}

#[tokio::test]
async fn postgres_ca_secret_ref_means_verify_full() {
    let upstream = Upstream::start();
    let db = fresh_database("tls_ref").await;
    let (server, _) = postgres_base();
    // No sslmode in the URL: the CA from the Secret makes it verify-full.
    let secret = format!("  url: '{server}/{db}'\n{}", pem_entry("ca.crt", &ca_pem()));
    let database = "{ urlSecretRef: { name: db, key: url }, caSecretRef: { name: db, key: ca.crt } }";
    let gw = Gateway::start(&manifests_with_database(&upstream.url, database, &secret)).await;
    chat_is_recorded_over_tls(&gw, &db).await;

    // The same Secret with another CA: the server's certificate does not verify, the gateway does not start.
    let wrong = std::fs::read_to_string(wrong_ca()).expect("wrong CA");
    let secret = format!("  url: '{server}/{db}'\n{}", pem_entry("ca.crt", &wrong));
    let (ok, log) = Gateway::run_to_exit(&manifests_with_database(&upstream.url, database, &secret));
    assert!(!ok, "the gateway started with a CA that did not sign the server's certificate");
    assert_refusal_is_clear(&log, &db);
}

#[tokio::test]
async fn postgres_with_the_wrong_ca_refuses_to_start_with_a_clear_error() {
    let upstream = Upstream::start();
    let db = fresh_database("tls_wrong").await;
    let (server, _) = postgres_base();
    let url = format!("{server}/{db}?sslmode=verify-full&sslrootcert={}", wrong_ca().display());
    let manifests = manifests_with_database(
        &upstream.url,
        "{ urlSecretRef: { name: db, key: url } }",
        &format!("  url: '{url}'\n"),
    );
    let (ok, log) = Gateway::run_to_exit(&manifests);
    assert!(!ok, "the gateway started with a CA that did not sign the server's certificate");
    assert_refusal_is_clear(&log, &db);
}

/// The error names the database and the TLS problem, and shows no URL or password.
fn assert_refusal_is_clear(log: &str, db: &str) {
    let line = log
        .lines()
        .find(|l| l.contains("connecting to the PostgreSQL database"))
        .unwrap_or_else(|| panic!("no connection error in the log:\n{log}"));
    assert!(line.contains(db), "the database is not named: {line}");
    assert!(line.contains("verify-full"), "the sslmode is not named: {line}");
    assert!(
        line.contains("TLS handshake failed") && line.contains("UnknownIssuer"),
        "the TLS problem is not named: {line}"
    );
    assert!(!log.contains("postgres://") && !log.contains(":tenantgate@"), "the URL or password leaked:\n{log}");
}

/// Manifests of tenant `name` on the TLS Redis, trusting `ca` through `caSecretRef`.
fn redis_manifests(upstream: &str, name: &str, limits: &str, ca: &str) -> String {
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: redis, namespace: tg-test }}\nstringData:\n  url: {}\n{}",
        services_env("TENANTGATE_REDIS_TLS_URL"),
        pem_entry("ca.crt", ca)
    );
    let spec = format!(
        "  storage:\n    redis: {{ urlSecretRef: {{ name: redis, key: url }}, caSecretRef: {{ name: redis, key: ca.crt }} }}\n  limits:\n{limits}"
    );
    tenant_yaml_with(upstream, name, &spec, &secret)
}

/// Removes every key of tenant `name` (over TLS), so a rerun starts clean.
async fn clear_tenant(name: &str) {
    let endpoint = RedisEndpoint::new(services_env("TENANTGATE_REDIS_TLS_URL"), Some(ca_pem().into_bytes()));
    let client = endpoint.client().expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("redis connection over TLS");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("tg:{{{name}}}:*")).query_async(&mut c).await.expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut c).await.expect("DEL");
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn rediss_with_the_ca_enforces_limits_across_two_gateways() {
    let upstream = Upstream::start();
    clear_tenant("tls-rpm").await;
    let m = redis_manifests(&upstream.url, "tls-rpm", "    requestsPerMinute: 6\n    burst: 10\n", &ca_pem());
    let (a, b) = (Gateway::start(&m).await, Gateway::start(&m).await);
    let body =
        json!({"model": "in-process", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}).to_string();
    let mut remaining = Vec::new();
    let mut refused = 0;
    for r in burst_across(&a, &b, &body, 30).await {
        match r.status().as_u16() {
            200 => remaining.push(header(&r, "x-ratelimit-remaining-requests").expect("remaining").to_owned()),
            429 => refused += 1,
            other => panic!("unexpected status {other}: {}", r.text().await.unwrap_or_default()),
        }
    }
    let mut remaining: Vec<u32> = remaining.iter().map(|r| r.parse().expect("a number")).collect();
    remaining.sort_unstable();
    // Decisions serialised in the one Redis: each admitted request saw a different count.
    assert_eq!(remaining, (0..10).collect::<Vec<_>>(), "admitted requests and their remaining counts");
    assert_eq!(refused, 20);
    for gw in [&a, &b] {
        let m = gw.metrics().await;
        assert!(m.lines().any(|l| l == "tenantgate_ratelimit_backend_up 1"), "{m}");
    }
}

#[tokio::test]
async fn rediss_with_the_wrong_ca_reports_the_store_down_and_says_why() {
    let upstream = Upstream::start();
    let wrong = std::fs::read_to_string(wrong_ca()).expect("wrong CA");
    let m = redis_manifests(&upstream.url, "tls-wrong", "    requestsPerMinute: 6000\n    failMode: closed\n", &wrong);
    let gw = Gateway::start_logged(&m, &[]).await;
    let r = gw
        .post("/v1/chat/completions", &json!({"model": "in-process", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 503, "failMode closed refuses while the store cannot be reached");
    let e: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
    assert_eq!(e["error"]["code"], "rate_limit_store_unavailable", "{e}");
    let m = gw.metrics().await;
    assert!(m.lines().any(|l| l == "tenantgate_ratelimit_backend_up 0"), "{m}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !gw.log().contains(OUTAGE_LINE) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = gw.log();
    let line = log.lines().find(|l| l.contains(OUTAGE_LINE)).unwrap_or_else(|| panic!("no outage line:\n{log}"));
    assert!(line.contains("UnknownIssuer") || line.contains("certificate"), "the log does not say why: {line}");
}

#[tokio::test]
async fn mcp_sessions_use_the_same_tls_connection_code() {
    let ca = Path::new(&ca_file()).to_path_buf();
    let endpoint = RedisEndpoint::new(services_env("TENANTGATE_REDIS_TLS_URL"), Some(std::fs::read(&ca).expect("CA")));
    let sessions = SharedSessions::connect(&endpoint, "tls-mcp", Duration::from_secs(60)).expect("session store");
    let id = format!("s-{}", fastrand::u64(..));
    sessions.bind(&id, "alice").await.expect("bind over TLS");
    assert_eq!(sessions.subject(&id).await.expect("read over TLS").as_deref(), Some("alice"));
    sessions.remove(&id).await.expect("remove");
    assert_eq!(sessions.subject(&id).await.expect("read"), None);

    let wrong =
        RedisEndpoint::new(services_env("TENANTGATE_REDIS_TLS_URL"), Some(std::fs::read(wrong_ca()).expect("CA")));
    let sessions = SharedSessions::connect(&wrong, "tls-mcp", Duration::from_secs(60)).expect("session store");
    sessions.bind(&id, "alice").await.expect_err("a server the CA did not sign is refused");
}
