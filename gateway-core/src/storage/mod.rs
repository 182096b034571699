//! Usage, audit trail and API keys in PostgreSQL or SQLite (the local
//! default), with sqlx and migrations. Queries are runtime queries with binds
//! written once for both backends (see [`on_db`]); the recorder writes usage
//! and audit events off the request path.

mod adopt;
pub mod api_keys;
pub mod mcp_tokens;
pub mod queries;
mod recorder;
mod records;
mod spill;
pub mod tenant_roles;
mod write;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tenantgate_crds::config::{DatabaseConfig, StorageConfig};

pub use api_keys::{ApiKey, ApiKeyError, KeyRecord, NewApiKey, Pepper};
pub use queries::{
    AuditFilter, AuditPage, AuditRow, DayUsage, GroupBy, GroupUsage, UsageFilter, UsageReport, UsageTotals,
};
pub use recorder::{ChatRecord, Leftover, Price, Recorder, RecorderConfig, SpillPlace};
pub use records::{Api, AuditEvent, AuditKind, ChatEntry, PolicyDecision, Record, UsageRow, new_id, now_ms};

/// A database pool of either backend.
#[derive(Clone, Debug)]
pub enum Db {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// Runs one expression against whichever pool `db` holds: the expression is
/// written once and compiled for both backends.
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::storage::Db::Postgres($pool) => $body,
            $crate::storage::Db::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use on_db;

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL file could not be read.
    #[error("storage.database.postgresUrlFile {path}: {source}")]
    UrlFile { path: String, source: std::io::Error },
    /// The URL does not parse (the URL itself is not shown: it may hold a password).
    #[error("storage.database.postgresUrlFile {path}: not a valid PostgreSQL URL")]
    BadUrl { path: String },
    /// The SQLite directory could not be created.
    #[error("storage.database.sqlitePath {path}: {source}")]
    SqliteDir { path: String, source: std::io::Error },
    /// Connecting failed (TLS problems included: sqlx names them, e.g.
    /// `invalid peer certificate: UnknownIssuer`). `target` is host, port and
    /// database name, never the URL.
    #[error("connecting to the {backend} database {target} failed: {source}")]
    Connect { backend: &'static str, target: String, source: sqlx::Error },
    /// The TLS handshake failed: the server's certificate did not verify
    /// (wrong CA, another host name) or TLS was refused.
    #[error(
        "connecting to the {backend} database {target} failed: the TLS handshake failed: {source}; check the CA \
         (sslrootcert or storage.database.caSecretRef) and that the server's certificate names its host"
    )]
    Tls { backend: &'static str, target: String, source: sqlx::Error },
    /// A migration failed.
    #[error("migrating the {backend} database failed: {source}")]
    Migrate { backend: &'static str, source: sqlx::migrate::MigrateError },
    /// Migrations are pending and the role may not apply them (a tenant's
    /// role: the admin applies them). `pending` is ` (pending: 3, 4)`, or
    /// empty when the role could not read which.
    #[error(
        "the PostgreSQL role may not migrate the database{pending}: {source}; run \
         `tenantgate-gateway database provision` with the admin's URL (docs/storage.md)"
    )]
    MigrateDenied { pending: String, source: sqlx::migrate::MigrateError },
    /// The role's binding could not be read.
    #[error("reading which tenant the PostgreSQL role is bound to failed: {source}")]
    Binding { source: sqlx::Error },
    /// The role is bound to another tenant.
    #[error(
        "the PostgreSQL role {role} is bound to tenant {bound:?}, but this gateway serves {tenant:?}: \
         give it the URL of {tenant:?}'s own role"
    )]
    BoundElsewhere { role: String, bound: String, tenant: String },
    /// The role is bound to no tenant and does not own the tables: every row
    /// is hidden from it.
    #[error(
        "the PostgreSQL role {role} is bound to no tenant and does not own the tables, so row-level security \
         hides every row from it: run `tenantgate-gateway database provision --tenant {tenant} --role {role}` \
         with the admin's URL (docs/storage.md)"
    )]
    Unbound { role: String, tenant: String },
}

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// PostgreSQL connect options from `url` (read from `path`, named in errors),
/// with TLS as libpq reads it: the URL's `sslmode` (`disable`, `allow`,
/// `prefer` (the default), `require`, `verify-ca`, `verify-full`) and
/// `sslrootcert`. A `ca_file` (the Tenant's `storage.database.caSecretRef`)
/// is the `sslrootcert`, and a URL that names no `sslmode` then means
/// `verify-full`: a CA is given to be checked against.
pub fn postgres_options(url: &str, path: &str, ca_file: Option<&str>) -> Result<PgConnectOptions, StorageError> {
    let bad = || StorageError::BadUrl { path: path.to_owned() };
    let mut options = PgConnectOptions::from_str(url).map_err(|_| bad())?;
    if let Some(ca) = ca_file {
        let parsed = url::Url::parse(url).map_err(|_| bad())?;
        let names_mode = parsed.query_pairs().any(|(k, _)| k == "sslmode" || k == "ssl-mode");
        options = options.ssl_root_cert(ca);
        if !names_mode {
            options = options.ssl_mode(PgSslMode::VerifyFull);
        }
    }
    Ok(options)
}

impl StorageError {
    /// Whether trying again may succeed with nobody changing anything: the
    /// database could not be reached (down, restarting, cut off). A refused
    /// login, a TLS failure, a bad URL or a migration error are not.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Connect { source: sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut, .. } => true,
            // 57P03 cannot_connect_now: the server is starting up or shutting down.
            Self::Connect { source: sqlx::Error::Database(e), .. } => e.code().as_deref() == Some("57P03"),
            _ => false,
        }
    }
}

/// Delays between attempts to reach the database at start: doubling from
/// 250 ms up to 10 s, so a gateway is ready within seconds of its database.
const START_RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(10));

impl Db {
    /// [`Db::open`], trying again for as long as the database cannot be
    /// reached ([`StorageError::is_unreachable`]); `waiting` is told each
    /// failure and the delay before the next attempt.
    pub async fn open_when_reachable(
        config: &DatabaseConfig,
        ca_file: Option<&str>,
        mut waiting: impl FnMut(&StorageError, Duration),
    ) -> Result<Self, StorageError> {
        let mut delays = crate::backoff::Delays::new(START_RETRY.0, START_RETRY.1);
        loop {
            match Self::open(config, ca_file).await {
                Err(error) if error.is_unreachable() => {
                    let delay = crate::backoff::spread(delays.next().unwrap_or(START_RETRY.1));
                    waiting(&error, delay);
                    tokio::time::sleep(delay).await;
                }
                opened => return opened,
            }
        }
    }

    /// Opens the configured database (with the PostgreSQL CA file, if any) and
    /// brings its schema up to date.
    pub async fn open(config: &DatabaseConfig, ca_file: Option<&str>) -> Result<Self, StorageError> {
        match config {
            DatabaseConfig::PostgresUrlFile(path) => {
                let url = std::fs::read_to_string(path)
                    .map_err(|source| StorageError::UrlFile { path: path.clone(), source })?;
                Self::postgres(postgres_options(url.trim(), path, ca_file)?).await
            }
            DatabaseConfig::SqlitePath(path) => Self::sqlite(Path::new(path)).await,
        }
    }

    /// PostgreSQL with these options.
    pub async fn postgres(options: PgConnectOptions) -> Result<Self, StorageError> {
        postgres_pool(options).await.map(Self::Postgres)
    }

    /// SQLite at `path` (created with its directory when missing), in WAL mode.
    pub async fn sqlite(path: &Path) -> Result<Self, StorageError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StorageError::SqliteDir { path: path.display().to_string(), source })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await
            .map_err(|source| StorageError::Connect {
                backend: "SQLite",
                target: path.display().to_string(),
                source,
            })?;
        SQLITE_MIGRATIONS.run(&pool).await.map_err(|source| StorageError::Migrate { backend: "SQLite", source })?;
        Ok(Self::Sqlite(pool))
    }

    /// `PostgreSQL` or `SQLite`, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "PostgreSQL",
            Self::Sqlite(_) => "SQLite",
        }
    }
}

/// A PostgreSQL pool with these options, its schema brought up to date.
pub async fn postgres_pool(options: PgConnectOptions) -> Result<PgPool, StorageError> {
    // A commit the recorder was told about must survive a server crash:
    // it is not spilled or replayed again. With the server's
    // `synchronous_commit = off` the last commits before a crash are lost.
    crate::tls::ensure_crypto_provider();
    let options = options.options([("synchronous_commit", "on")]);
    let target = format!(
        "{:?} at {}:{} (sslmode {})",
        options.get_database().unwrap_or("postgres"),
        options.get_host(),
        options.get_port(),
        ssl_mode_name(options.get_ssl_mode())
    );
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
        .map_err(|source| match is_tls_failure(&source) {
            true => StorageError::Tls { backend: "PostgreSQL", target, source },
            false => StorageError::Connect { backend: "PostgreSQL", target, source },
        })?;
    migrate_postgres(&pool).await?;
    Ok(pool)
}

/// Applies the pending migrations. A database whose migrations are all
/// applied is left alone: a tenant's role (which may not run DDL) reads that
/// and starts; when some are pending and the role may not apply them, the
/// error says who can.
async fn migrate_postgres(pool: &PgPool) -> Result<(), StorageError> {
    let pending = match pending_migrations(pool).await {
        Ok(pending) if pending.is_empty() => return Ok(()),
        Ok(pending) => Some(pending),
        // Unreadable (e.g. no privilege on it yet): the migrator says what is wrong.
        Err(_) => None,
    };
    PG_MIGRATIONS.run(pool).await.map_err(|source| match &source {
        sqlx::migrate::MigrateError::Execute(e) | sqlx::migrate::MigrateError::ExecuteMigration(e, _)
            if tenant_roles::is_insufficient_privilege(e) =>
        {
            let pending = pending
                .map(|p| format!(" (pending: {})", p.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")))
                .unwrap_or_default();
            StorageError::MigrateDenied { pending, source }
        }
        _ => StorageError::Migrate { backend: "PostgreSQL", source },
    })
}

/// The versions of [`PG_MIGRATIONS`] the database has not applied (or
/// applied from other text: the migrator refuses those), and any it applied
/// that this build does not know (the migrator refuses those too).
async fn pending_migrations(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    let applied: Vec<(i64, Vec<u8>)> = match exists {
        true => {
            sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(pool)
                .await?
        }
        false => Vec::new(),
    };
    let ours: Vec<_> = PG_MIGRATIONS.iter().filter(|m| m.migration_type.is_up_migration()).collect();
    let mut pending: Vec<i64> = ours
        .iter()
        .filter(|m| !applied.iter().any(|(v, sum)| *v == m.version && sum.as_slice() == &*m.checksum))
        .map(|m| m.version)
        .collect();
    pending.extend(applied.iter().map(|(v, _)| *v).filter(|v| !ours.iter().any(|m| m.version == *v)));
    Ok(pending)
}

/// Whether connecting failed in the TLS handshake (sqlx reports rustls'
/// errors as I/O errors carrying them).
fn is_tls_failure(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(e) => e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()),
        _ => false,
    }
}

/// libpq's name of an `sslmode`.
fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Everything storage: the database, the recorder writing to it, and the
/// API-key pepper.
#[derive(Debug)]
pub struct Storage {
    /// The database.
    pub db: Db,
    /// The batched, asynchronous writer of usage and audit events.
    pub recorder: Recorder,
    /// The API-key pepper, when its file could be read.
    pub pepper: Option<Pepper>,
    /// API-key lookups with their short cache.
    pub api_keys: crate::auth::api_key::ApiKeyVerifier,
}

impl Storage {
    /// Opens the database for `tenant` (refusing a PostgreSQL role bound to
    /// another tenant), waiting while it cannot be reached (each failed
    /// attempt told to `waiting`), and starts the recorder.
    pub async fn start(
        config: &StorageConfig,
        tenant: &str,
        pepper_file: &str,
        recorder: RecorderConfig,
        waiting: impl FnMut(&StorageError, Duration),
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let db = Db::open_when_reachable(&config.database, config.database_ca_file.as_deref(), waiting).await?;
        tenant_roles::check_binding(&db, tenant).await?;
        tracing::info!(backend = db.backend(), "database ready");
        let recorder = Recorder::start(db.clone(), recorder)?;
        let pepper = match Pepper::from_file(Path::new(pepper_file)) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "API-key pepper not loaded: API keys cannot be created or used");
                None
            }
        };
        Ok(Self { db, recorder, pepper, api_keys: Default::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_come_from_the_url_like_libpq() {
        let o = postgres_options("postgres://u:pw@db/x", "f", None).expect("parses");
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Prefer), "libpq's default");
        let o = postgres_options("postgres://u:pw@db/x?sslmode=verify-ca&sslrootcert=/ca.pem", "f", None).expect("ok");
        assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyCa));
        let o = postgres_options("postgres://u:pw@db/x?sslmode=disable", "f", None).expect("parses");
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Disable));
    }

    #[test]
    fn a_ca_file_means_verify_full_unless_the_url_says_otherwise() {
        let o = postgres_options("postgres://u:pw@db/x", "f", Some("/ca.pem")).expect("parses");
        assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyFull));
        let o = postgres_options("postgres://u:pw@db/x?sslmode=require", "f", Some("/ca.pem")).expect("parses");
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Require));
    }

    #[test]
    fn only_a_database_that_cannot_be_reached_is_waited_for() {
        let connect = |source| StorageError::Connect { backend: "PostgreSQL", target: "t".into(), source };
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(connect(sqlx::Error::Io(refused)).is_unreachable());
        assert!(connect(sqlx::Error::PoolTimedOut).is_unreachable());
        assert!(!connect(sqlx::Error::Configuration("bad".into())).is_unreachable(), "a bad setting stays bad");
        assert!(!connect(sqlx::Error::Protocol("password authentication failed".into())).is_unreachable());
        let tls = StorageError::Tls { backend: "PostgreSQL", target: "t".into(), source: sqlx::Error::PoolTimedOut };
        assert!(!tls.is_unreachable(), "a certificate that does not verify is not waited out");
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(!StorageError::SqliteDir { path: "p".into(), source: io }.is_unreachable());
    }

    #[test]
    fn a_bad_url_is_named_by_its_file_not_echoed() {
        let e = postgres_options("postgres://u:hunter2@db/x?sslmode=sometimes", "/s/db/url", None).expect_err("bad");
        let text = e.to_string();
        assert!(text.contains("/s/db/url") && !text.contains("hunter2"), "{text}");
    }
}
