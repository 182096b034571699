//! Tenants sharing one PostgreSQL database, held apart by the database itself:
//! `tenantgate-gateway database provision` gives each tenant a role bound to
//! it, both gateways write through their own role, and tenant A's role then
//! asks for tenant B's rows in raw SQL and gets none.
//!
//!   e2e/with-services cargo test -p tenantgate-gateway --test services_rls

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::{Gateway, fresh_database, temp_dir, tenant_yaml_with_storage, token};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tenantgate_gateway::storage::mcp_tokens::{self, PendingState, StoredToken};
use tenantgate_gateway::storage::tenant_roles::scram_sha256_secret;
use tenantgate_gateway::storage::{Db, now_ms};

/// Every table that carries a tenant.
const TENANT_TABLES: [&str; 5] = ["usage", "audit_events", "api_keys", "mcp_user_tokens", "mcp_oauth_states"];

/// `url` with another user and password.
fn as_role(url: &str, role: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (_, host) = rest.split_once('@').expect("user in the URL");
    format!("{scheme}://{role}:{password}@{host}")
}

/// A role name no other run of this test on the same server has.
fn role_name(tag: &str) -> String {
    format!("tg_rls_{tag}_{}", fastrand::u32(..))
}

/// Runs `database provision`; whether it succeeded, and stdout then stderr.
fn provision(dir: &Path, admin_url: &str, tenant: &str, role: &str, password: Option<&str>) -> (bool, String) {
    std::fs::create_dir_all(dir).expect("dir");
    let url_file = dir.join("admin-url");
    std::fs::write(&url_file, admin_url).expect("write URL");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantgate-gateway"));
    cmd.args(["database", "provision", "--tenant", tenant, "--role", role]).arg("--admin-url-file").arg(&url_file);
    if let Some(password) = password {
        let file = dir.join(format!("{role}-password"));
        std::fs::write(&file, format!("{password}\n")).expect("write password");
        cmd.arg("--password-file").arg(file);
    }
    let out = cmd.output().expect("run provision");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A fresh database with one role provisioned for tenant `rls-a`: the
/// admin's URL, a scratch directory and the role.
async fn provisioned(tag: &str) -> (String, PathBuf, String) {
    let admin_url = fresh_database(&format!("rls{tag}")).await;
    let dir = temp_dir(&format!("svc-rls-{tag}"));
    let role = role_name(tag);
    let (ok, out) = provision(&dir, &admin_url, "rls-a", &role, None);
    assert!(ok, "{out}");
    (admin_url, dir, role)
}

/// The gateway's manifests for tenant `name` on the database at `url`.
fn tenant_yaml(name: &str, url: &str) -> String {
    let yaml = tenant_yaml_with_storage("http://127.0.0.1:9", Some(url));
    assert!(yaml.contains("metadata: { name: test }"), "the fixture's Tenant name moved");
    yaml.replacen("metadata: { name: test }", &format!("metadata: {{ name: {name} }}"), 1)
}

async fn count(pool: &PgPool, sql: String) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone())).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Writes usage, audit events and an API key through the gateway of
/// `tenant`, and an MCP token and pending state through its storage.
async fn write_rows(gw: &Gateway, db: &Db, tenant: &str) {
    assert_eq!(gw.chat("in-process").await.0, 200, "{tenant}: chat");
    let admin = token(json!({"sub": "admin", "roles": ["tenant-admin"]}));
    let r = gw.post_raw("/admin/v1/api-keys", json!({"name": "ci"}).to_string(), Some(&admin)).await;
    assert_eq!(r.status().as_u16(), 201, "{tenant}: create an API key");
    let now = now_ms();
    let row = StoredToken {
        connection: "gh".into(),
        subject: "alice".into(),
        sealed: format!("sealed-{tenant}"),
        has_refresh_token: false,
        scope: None,
        expires_at_ms: None,
        created_at_ms: now,
        updated_at_ms: now,
    };
    mcp_tokens::upsert_token(db, tenant, &row).await.expect("upsert a token");
    let pending = PendingState {
        connection: "gh".into(),
        subject: "alice".into(),
        sealed_verifier: "v".into(),
        redirect_uri: "http://127.0.0.1:9/cb".into(),
        expires_at_ms: now + 600_000,
    };
    mcp_tokens::put_state(db, tenant, &format!("state-{tenant}"), &pending).await.expect("put a state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_role_gets_none_of_another_tenants_rows() {
    let admin_url = fresh_database("rls").await;
    let dir = temp_dir("svc-rls");
    let (role_a, role_b) = (role_name("a"), role_name("b"));
    let (ok, out) = provision(&dir, &admin_url, "rls-a", &role_a, Some("pw-a"));
    assert!(ok, "provisioning A: {out}");
    assert!(out.contains("created") && !out.contains("pw-a"), "{out}");
    let (ok, out) = provision(&dir, &admin_url, "rls-b", &role_b, None);
    assert!(ok, "provisioning B: {out}");

    // The secret PostgreSQL stores is the one made from the password (not a
    // hash of the secret taken for a password): the superuser reads it.
    let superuser = PgPool::connect(&as_role(&admin_url, "postgres", "unused")).await.expect("connect as postgres");
    let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(&role_a)
        .fetch_one(&superuser)
        .await
        .expect("rolpassword");
    let salt = stored.split(['$', ':']).nth(2).expect("salt");
    let salt = base64_decode(salt);
    assert_eq!(stored, scram_sha256_secret("pw-a", &salt, 4096));
    let (inherit, login): (bool, bool) =
        sqlx::query_as("SELECT rolinherit, rolcanlogin FROM pg_roles WHERE rolname = $1")
            .bind(&role_a)
            .fetch_one(&superuser)
            .await
            .expect("role");
    assert_eq!((inherit, login), (false, true), "LOGIN NOINHERIT");
    superuser.close().await;

    // Provisioning again changes nothing; another tenant cannot take the role.
    let owner = PgPool::connect(&admin_url).await.expect("connect as the owner");
    let bindings = "SELECT string_agg(role_name || '=' || tenant, ',' ORDER BY tenant) FROM tenantgate_tenant_roles";
    let before: String = sqlx::query_scalar(bindings).fetch_one(&owner).await.expect("bindings");
    let (ok, out) = provision(&dir, &admin_url, "rls-a", &role_a, None);
    assert!(ok && out.contains("exists") && out.contains("already bound"), "{out}");
    let (ok, out) = provision(&dir, &admin_url, "rls-b", &role_a, None);
    assert!(!ok && out.contains(&format!("role {role_a} is bound to tenant \"rls-a\", not \"rls-b\"")), "{out}");
    let after: String = sqlx::query_scalar(bindings).fetch_one(&owner).await.expect("bindings");
    assert_eq!(before, after);
    // The owner itself is never bound: the policies could not hold it.
    let (ok, out) = provision(&dir, &admin_url, "rls-a", "tenantgate", None);
    assert!(!ok && out.contains("owner"), "{out}");

    // Each tenant's gateway runs as its own role (which may not run DDL: the
    // migrations are applied) and writes through it.
    let url_a = as_role(&admin_url, &role_a, "pw-a");
    let url_b = as_role(&admin_url, &role_b, "unused");
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    let gw_a = Gateway::start_in(&dir_a, &tenant_yaml("rls-a", &url_a), &[]).await;
    let gw_b = Gateway::start_in(&dir_b, &tenant_yaml("rls-b", &url_b), &[]).await;
    let db_a = Db::postgres(PgConnectOptions::from_str(&url_a).expect("URL")).await.expect("A's storage");
    let db_b = Db::postgres(PgConnectOptions::from_str(&url_b).expect("URL")).await.expect("B's storage");
    write_rows(&gw_a, &db_a, "rls-a").await;
    write_rows(&gw_b, &db_b, "rls-b").await;

    // The owner (a single-role install) sees both tenants' rows.
    let deadline = Instant::now() + Duration::from_secs(10);
    for tenant in ["rls-a", "rls-b"] {
        for table in TENANT_TABLES {
            while count(&owner, format!("SELECT COUNT(*) FROM {table} WHERE tenant = '{tenant}'")).await == 0 {
                assert!(Instant::now() < deadline, "no {table} row of {tenant} written");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // A's role, in raw SQL: none of B's rows, with or without WHERE.
    let a = PgPool::connect(&url_a).await.expect("connect as A");
    for table in TENANT_TABLES {
        assert_eq!(count(&a, format!("SELECT COUNT(*) FROM {table} WHERE tenant = 'rls-b'")).await, 0, "{table}");
        assert_eq!(count(&a, format!("SELECT COUNT(*) FROM {table} WHERE tenant <> 'rls-a'")).await, 0, "{table}");
        assert!(count(&a, format!("SELECT COUNT(*) FROM {table}")).await > 0, "{table}: A sees its own rows");
    }
    let dump: String =
        sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM mcp_user_tokens t").fetch_one(&a).await.expect("dump");
    assert!(dump.contains("sealed-rls-a") && !dump.contains("sealed-rls-b"), "{dump}");
    let bound: i64 = count(&a, "SELECT COUNT(*) FROM tenantgate_tenant_roles".into()).await;
    assert_eq!(bound, 1, "A reads its own binding only");

    // Writing as B is refused; changing B's rows touches none.
    let insert = format!(
        "INSERT INTO usage (id, ts_ms, tenant, subject, model, prompt_tokens, completion_tokens, latency_ms, status) \
         VALUES ('forged-{}', 0, 'rls-b', 'mallory', 'm', 0, 0, 0, 200)",
        fastrand::u32(..)
    );
    let err = sqlx::query(sqlx::AssertSqlSafe(insert.clone())).execute(&a).await.expect_err("insert as B");
    assert!(err.to_string().contains("row-level security"), "{err}");
    let err = sqlx::query(
        "INSERT INTO mcp_user_tokens (tenant, connection, subject, sealed, has_refresh_token, created_at_ms, \
         updated_at_ms) VALUES ('rls-b', 'gh', 'alice', 'forged', false, 0, 0) \
         ON CONFLICT (tenant, connection, subject) DO UPDATE SET sealed = 'forged'",
    )
    .execute(&a)
    .await
    .expect_err("upsert B's token");
    assert!(err.to_string().contains("row-level security"), "{err}");
    for sql in [
        "UPDATE api_keys SET revoked_at_ms = 1, revoked_by = 'mallory' WHERE tenant = 'rls-b'",
        "DELETE FROM mcp_user_tokens WHERE tenant = 'rls-b'",
        "DELETE FROM mcp_oauth_states WHERE tenant = 'rls-b'",
    ] {
        let done = sqlx::query(sql).execute(&a).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(done.rows_affected(), 0, "{sql}");
    }
    // Moving A's own row to B is refused too.
    let err = sqlx::query("UPDATE mcp_user_tokens SET tenant = 'rls-b'").execute(&a).await.expect_err("move");
    assert!(err.to_string().contains("row-level security"), "{err}");

    // Nothing a session can SET or create changes whose rows it sees.
    let mut conn = a.acquire().await.expect("connection");
    for sql in [format!("SET ROLE {role_b}"), format!("SET SESSION AUTHORIZATION {role_b}")] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&mut *conn).await.expect_err(&sql);
        assert!(err.to_string().contains("permission denied"), "{sql}: {err}");
    }
    for sql in [
        "SET tenantgate.tenant = 'rls-b'",
        "SET app.tenant = 'rls-b'",
        "SET role = DEFAULT",
        // Temporary tables come first in the search path: this one shadows
        // the binding table wherever a name is looked up at run time.
        "CREATE TEMP TABLE tenantgate_tenant_roles (role_name name, tenant text)",
        "INSERT INTO tenantgate_tenant_roles VALUES (current_user, 'rls-b')",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let current: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut *conn).await.expect("user");
    assert_eq!(current, role_a, "the session is still A's role");
    let of_b = |table: &str| format!("SELECT COUNT(*) FROM {table} WHERE tenant = 'rls-b'");
    for table in TENANT_TABLES {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(of_b(table))).fetch_one(&mut *conn).await.expect("count");
        assert_eq!(n, 0, "{table}");
    }
    // Without row security a query the policies would filter fails instead.
    sqlx::query("SET row_security = off").execute(&mut *conn).await.expect("set row_security");
    for table in TENANT_TABLES {
        let n: Result<i64, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(of_b(table))).fetch_one(&mut *conn).await;
        let err = n.expect_err(table).to_string();
        assert!(err.contains("row-level security"), "{table}: {err}");
    }
    for sql in [
        "ALTER TABLE usage DISABLE ROW LEVEL SECURITY",
        "DROP POLICY tenant_rows ON usage",
        "INSERT INTO public.tenantgate_tenant_roles VALUES ('someone', 'rls-b')",
    ] {
        assert!(sqlx::query(sql).execute(&mut *conn).await.is_err(), "{sql} was allowed");
    }
    drop(conn);
    a.close().await;

    // The owner still sees and keeps every row: nothing was forged.
    assert_eq!(count(&owner, "SELECT COUNT(*) FROM usage WHERE subject = 'mallory'".into()).await, 0);
    assert_eq!(count(&owner, "SELECT COUNT(*) FROM api_keys WHERE revoked_by = 'mallory'".into()).await, 0);
    assert_eq!(count(&owner, "SELECT COUNT(*) FROM mcp_user_tokens WHERE sealed = 'sealed-rls-b'".into()).await, 1);
    owner.close().await;
    drop((gw_a, gw_b));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_a_role_bound_to_another_tenant_or_to_none() {
    let (admin_url, dir, role) = provisioned("start").await;

    let (clean, log) = Gateway::run_to_exit(&tenant_yaml("rls-b", &as_role(&admin_url, &role, "unused")));
    assert!(!clean, "the gateway started for another tenant's role");
    assert!(log.contains(&format!("role {role} is bound to tenant")) && log.contains("rls-a"), "{log}");

    // A role nobody bound sees no rows: refused with the step that fixes it.
    let stray = role_name("stray");
    let owner = PgPool::connect(&admin_url).await.expect("connect as the owner");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {stray} LOGIN"))).execute(&owner).await.expect("role");
    sqlx::query(sqlx::AssertSqlSafe(format!("GRANT SELECT ON _sqlx_migrations, tenantgate_tenant_roles TO {stray}")))
        .execute(&owner)
        .await
        .expect("grant");
    // Nor is a role that could SET ROLE to another tenant's role taken over.
    let member = role_name("member");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {member} LOGIN NOINHERIT IN ROLE {role}")))
        .execute(&owner)
        .await
        .expect("member role");
    let (ok, out) = provision(&dir, &admin_url, "rls-c", &member, None);
    assert!(!ok && out.contains(&format!("role {member} is a member of {role}")), "{out}");
    owner.close().await;
    let (clean, log) = Gateway::run_to_exit(&tenant_yaml("rls-b", &as_role(&admin_url, &stray, "unused")));
    assert!(!clean, "the gateway started with a role bound to no tenant");
    assert!(log.contains("bound to no tenant") && log.contains("database provision"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_role_says_to_provision_when_migrations_are_pending() {
    let (admin_url, dir, role) = provisioned("pending").await;
    // As if this build brought a migration the admin has not applied yet.
    let owner = PgPool::connect(&admin_url).await.expect("connect as the owner");
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 4").execute(&owner).await.expect("forget 4");
    owner.close().await;
    let (clean, log) = Gateway::run_to_exit(&tenant_yaml("rls-a", &as_role(&admin_url, &role, "unused")));
    assert!(!clean, "the gateway started without its migrations");
    assert!(
        log.contains("may not migrate") && log.contains("(pending: 4)") && log.contains("database provision"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}
