//! Tenants sharing one PostgreSQL database: each tenant's gateway connects as
//! a role of its own, bound to the tenant in `tenantgate_tenant_roles`, and
//! row-level security (migration 0004) holds that role to its tenant's rows.
//! [`provision`] is the platform team's step (run with the admin's
//! credentials); [`check_binding`] runs at every gateway start.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use super::{Db, StorageError};

/// What a provisioned role may do on each table, and nothing more. The audit
/// trail is append-only: no UPDATE or DELETE; an API key is only ever revoked.
const GRANTS: &[&str] = &[
    "GRANT SELECT, INSERT ON usage TO {role}",
    "GRANT SELECT, INSERT ON audit_events TO {role}",
    "GRANT SELECT, INSERT, UPDATE (revoked_at_ms, revoked_by) ON api_keys TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON mcp_user_tokens TO {role}",
    "GRANT SELECT, INSERT, DELETE ON mcp_oauth_states TO {role}",
    // Its own binding (row-level security hides the others'), and which
    // migrations are applied, so the gateway can start without running them.
    "GRANT SELECT ON tenantgate_tenant_roles TO {role}",
    "GRANT SELECT ON _sqlx_migrations TO {role}",
];

/// Iterations of PBKDF2 in the SCRAM secret (PostgreSQL's default).
const SCRAM_ITERATIONS: u32 = 4096;

/// Why provisioning failed. Never holds a password or a URL.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// No tenant named.
    #[error("--tenant must not be empty")]
    EmptyTenant,
    /// The role name is not one we quote safely everywhere.
    #[error(
        "--role {0:?}: use 1 to 63 lowercase letters, digits and underscores, starting with a letter or underscore"
    )]
    BadRoleName(String),
    /// The password file is empty.
    #[error("--password-file {0}: the file is empty")]
    EmptyPassword(String),
    /// The password file could not be read.
    #[error("--password-file {path}: {source}")]
    PasswordFile { path: String, source: std::io::Error },
    /// The role serves another tenant already.
    #[error("role {role} is bound to tenant {bound:?}, not {tenant:?}: give {tenant:?} a role of its own")]
    BoundElsewhere { role: String, bound: String, tenant: String },
    /// The role would not be held by the policies.
    #[error("role {role} {what}: row-level security cannot hold it to one tenant; give the tenant a role of its own")]
    Privileged { role: String, what: String },
    /// Opening or migrating the database failed.
    #[error(transparent)]
    Open(#[from] StorageError),
    /// A step was refused.
    #[error("{step} failed: {source}")]
    Step { step: String, source: sqlx::Error },
}

/// What [`provision`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The role was created now (else it existed).
    pub created_role: bool,
    /// The binding was written now (else it was there).
    pub bound_now: bool,
    /// A password was set.
    pub password_set: bool,
    /// The role may create objects in the schema (PostgreSQL before 15 grants
    /// CREATE on `public` to everyone): the platform team should revoke it.
    pub may_create_in_schema: bool,
    /// The schema holding the tables.
    pub schema: String,
}

/// A role name this step accepts: PostgreSQL's unquoted identifiers, lowercase
/// (so `"x"` and `x` mean the same role in every tool).
pub fn valid_role_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    first_ok && name.len() <= 63 && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Reads a password file (trailing newline removed).
pub fn read_password(path: &str) -> Result<String, ProvisionError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ProvisionError::PasswordFile { path: path.to_owned(), source })?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(ProvisionError::EmptyPassword(path.to_owned()));
    }
    Ok(password.to_owned())
}

/// Brings the schema up to date as the admin, then creates `role` (LOGIN,
/// NOINHERIT, a member of nothing) when missing, grants it the DML each table
/// needs and binds it to `tenant`. Idempotent; one transaction, serialised
/// with other provisioning runs. With a password the role's SCRAM secret is
/// set: it is computed here, so the password never reaches the server (or its
/// statement log).
pub async fn provision(
    admin: PgConnectOptions,
    tenant: &str,
    role: &str,
    password: Option<&str>,
) -> Result<Provisioned, ProvisionError> {
    if tenant.is_empty() {
        return Err(ProvisionError::EmptyTenant);
    }
    if !valid_role_name(role) {
        return Err(ProvisionError::BadRoleName(role.to_owned()));
    }
    let pool = super::postgres_pool(admin).await?;
    let result = provision_in(&pool, tenant, role, password).await;
    pool.close().await;
    result
}

async fn provision_in(
    pool: &PgPool,
    tenant: &str,
    role: &str,
    password: Option<&str>,
) -> Result<Provisioned, ProvisionError> {
    let step = |what: &str| {
        let what = what.to_owned();
        move |source| ProvisionError::Step { step: what, source }
    };
    let mut tx = pool.begin().await.map_err(step("starting a transaction"))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tenantgate_tenant_roles'))")
        .execute(&mut *tx)
        .await
        .map_err(step("locking tenantgate_tenant_roles"))?;

    let bound: Option<String> = sqlx::query_scalar("SELECT tenant FROM tenantgate_tenant_roles WHERE role_name = $1")
        .bind(role)
        .fetch_optional(&mut *tx)
        .await
        .map_err(step("reading tenantgate_tenant_roles"))?;
    if let Some(bound) = bound.as_ref().filter(|b| *b != tenant) {
        return Err(ProvisionError::BoundElsewhere {
            role: role.to_owned(),
            bound: bound.clone(),
            tenant: tenant.to_owned(),
        });
    }

    // An existing role is taken over only when the policies can hold it: not
    // above row-level security, and unable to SET ROLE to a role that is
    // (or to another tenant's role). Memberships in other roles (such as a
    // cloud provider's IAM-login role) are left alone.
    let existing: Option<(bool, bool, bool, Option<String>)> = sqlx::query_as(
        "SELECT r.rolsuper, r.rolbypassrls, \
         pg_has_role(r.oid, (SELECT c.relowner FROM pg_class c WHERE c.oid = 'usage'::regclass), 'MEMBER'), \
         (SELECT string_agg(o.rolname, ', ' ORDER BY o.rolname) FROM pg_roles o \
          WHERE o.oid <> r.oid AND pg_has_role(r.oid, o.oid, 'MEMBER') \
          AND (o.rolsuper OR o.rolbypassrls OR o.rolname IN (SELECT role_name FROM tenantgate_tenant_roles))) \
         FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(role)
    .fetch_optional(&mut *tx)
    .await
    .map_err(step("looking up the role"))?;
    let quoted = quote_ident(role);
    let secret = password.map(scram_secret).transpose()?;
    match existing {
        Some((true, ..)) => return Err(privileged(role, "is a superuser".into())),
        Some((_, true, ..)) => return Err(privileged(role, "has BYPASSRLS".into())),
        Some((_, _, true, _)) => return Err(privileged(role, "owns the tables or is a member of their owner".into())),
        Some((.., Some(roles))) => return Err(privileged(role, format!("is a member of {roles}"))),
        Some(_) => {
            if let Some(secret) = &secret {
                let sql = format!("ALTER ROLE {quoted} PASSWORD {}", quote_literal(secret));
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(step(&format!("setting the password of role {role}")))?;
            }
        }
        None => {
            let mut sql = format!("CREATE ROLE {quoted} LOGIN NOINHERIT");
            if let Some(secret) = &secret {
                sql.push_str(" PASSWORD ");
                sql.push_str(&quote_literal(secret));
            }
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(step(&format!("creating role {role} (the admin needs CREATEROLE)")))?;
        }
    }

    let schema: String = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = 'usage'::regclass",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(step("finding the tables' schema"))?;
    let sequence: String = sqlx::query_scalar("SELECT pg_get_serial_sequence('audit_events', 'seq')")
        .fetch_one(&mut *tx)
        .await
        .map_err(step("finding the audit_events sequence"))?;
    let mut grants = vec![
        format!("GRANT USAGE ON SCHEMA {} TO {quoted}", quote_ident(&schema)),
        // The sequence name comes quoted from pg_get_serial_sequence.
        format!("GRANT USAGE ON SEQUENCE {sequence} TO {quoted}"),
    ];
    grants.extend(GRANTS.iter().map(|g| g.replace("{role}", &quoted)));
    for grant in grants {
        sqlx::query(sqlx::AssertSqlSafe(grant.clone()))
            .execute(&mut *tx)
            .await
            .map_err(step(&format!("{grant} (the admin must own the tables)")))?;
    }

    let bound_now = bound.is_none();
    if bound_now {
        sqlx::query("INSERT INTO tenantgate_tenant_roles (role_name, tenant) VALUES ($1, $2)")
            .bind(role)
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(step("binding the role to the tenant"))?;
    }
    let may_create_in_schema: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, $2, 'CREATE')")
        .bind(role)
        .bind(&schema)
        .fetch_one(&mut *tx)
        .await
        .map_err(step("checking the role's schema privileges"))?;
    tx.commit().await.map_err(step("committing"))?;
    Ok(Provisioned {
        created_role: existing.is_none(),
        bound_now,
        password_set: secret.is_some(),
        may_create_in_schema,
        schema,
    })
}

fn privileged(role: &str, what: String) -> ProvisionError {
    ProvisionError::Privileged { role: role.to_owned(), what }
}

/// `"name"`, with inner quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with inner quotes doubled (`standard_conforming_strings` is on
/// in every supported PostgreSQL: backslashes are plain characters).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn scram_secret(password: &str) -> Result<String, ProvisionError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| ProvisionError::Step {
        step: "drawing a salt".into(),
        source: sqlx::Error::Protocol(format!("no randomness available: {e}")),
    })?;
    Ok(scram_sha256_secret(password, &salt, SCRAM_ITERATIONS))
}

/// The SCRAM-SHA-256 secret PostgreSQL stores for `password` (RFC 5803's
/// format, as `psql`'s `\password` sends it). The password is used as its
/// bytes: the same as SASLprep for the printable ASCII passwords generators make.
pub fn scram_sha256_secret(password: &str, salt: &[u8], iterations: u32) -> String {
    let salted = pbkdf2_sha256(password.as_bytes(), salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("SCRAM-SHA-256${iterations}:{}${}:{}", b64.encode(salt), b64.encode(stored_key), b64.encode(server_key))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 of one block (32 bytes: SCRAM's key length).
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha256(password, &u);
        out.iter_mut().zip(u).for_each(|(o, b)| *o ^= b);
    }
    out
}

/// Who the gateway's database role is, as the policies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Bound to this tenant: it sees that tenant's rows only.
    Tenant(String),
    /// Bound to none, with the tables' owner's privileges (or a superuser or
    /// BYPASSRLS role): it sees every row, a single-role install.
    Unbound,
    /// Bound to none and not the owner: it sees no rows and may write none.
    Unprivileged,
}

/// The binding of the role the gateway connects as, and that role's name.
pub async fn binding(pool: &PgPool) -> Result<(String, Binding), sqlx::Error> {
    let (role, tenant, owner, bypass): (String, Option<String>, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, tenantgate_current_tenant(), tenantgate_unbound_owner('usage'), \
         (SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user)",
    )
    .fetch_one(pool)
    .await?;
    let binding = match tenant {
        Some(t) => Binding::Tenant(t),
        None if owner || bypass => Binding::Unbound,
        None => Binding::Unprivileged,
    };
    Ok((role, binding))
}

/// Refuses a PostgreSQL role bound to another tenant than `tenant`, or one
/// that would see no rows at all. SQLite has no roles.
pub async fn check_binding(db: &Db, tenant: &str) -> Result<(), StorageError> {
    let Db::Postgres(pool) = db else { return Ok(()) };
    let (role, binding) = binding(pool).await.map_err(|source| StorageError::Binding { source })?;
    match binding {
        Binding::Tenant(bound) if bound == tenant => {
            tracing::info!(role = %role, "database role bound to this tenant: row-level security holds it to its rows");
            Ok(())
        }
        Binding::Tenant(bound) => Err(StorageError::BoundElsewhere { role, bound, tenant: tenant.to_owned() }),
        Binding::Unbound => Ok(()),
        Binding::Unprivileged => Err(StorageError::Unbound { role, tenant: tenant.to_owned() }),
    }
}

/// Whether a PostgreSQL error is "permission denied" / "must be owner".
pub(super) fn is_insufficient_privilege(error: &sqlx::Error) -> bool {
    error.as_database_error().and_then(|e| e.code()).is_some_and(|c| c == "42501")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scram_secret_matches_an_independent_implementation() {
        // Python: hashlib.pbkdf2_hmac and hmac, salt bytes 0..16.
        let salt: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            scram_sha256_secret("correct horse", &salt, 4096),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$yERwYmHlx0VrpoYfOn54hMTjBUKWnmK42IDjnWgQWkk=:\
             RQZr9F8QCYmmp35tAVzp0VB/kDwY283N+s24jDDliG4="
        );
    }

    #[test]
    fn role_names_are_plain_lowercase_identifiers() {
        for ok in ["tenantgate_acme", "_x", "a1", &"a".repeat(63)] {
            assert!(valid_role_name(ok), "{ok}");
        }
        for bad in ["", "Acme", "1a", "a-b", "a\"b", "a b", "a;drop", &"a".repeat(64)] {
            assert!(!valid_role_name(bad), "{bad}");
        }
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn a_role_bound_elsewhere_names_both_tenants() {
        let e = ProvisionError::BoundElsewhere { role: "tg_a".into(), bound: "a".into(), tenant: "b".into() };
        assert_eq!(e.to_string(), "role tg_a is bound to tenant \"a\", not \"b\": give \"b\" a role of its own");
    }
}
