//! Usage, audit trail and API keys in PostgreSQL or SQLite (the local
//! default), with sqlx and migrations. Queries are runtime queries with binds
//! written once for both backends (see [`on_db`]); the recorder writes usage
//! and audit events off the request path.

pub mod api_keys;
pub mod mcp_tokens;
pub mod queries;
mod recorder;
mod records;
mod spill;
mod write;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tenantgate_crds::config::DatabaseConfig;

pub use api_keys::{ApiKey, ApiKeyError, KeyRecord, NewApiKey, Pepper};
pub use queries::{AuditFilter, AuditPage, AuditRow, DayUsage, UsageFilter, UsageReport, UsageTotals};
pub use recorder::{ChatRecord, Recorder, RecorderConfig};
pub use records::{AuditEvent, AuditKind, ChatEntry, PolicyDecision, Record, UsageRow, new_id, now_ms};

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
    /// Connecting failed.
    #[error("connecting to the {backend} database failed: {source}")]
    Connect { backend: &'static str, source: sqlx::Error },
    /// A migration failed.
    #[error("migrating the {backend} database failed: {source}")]
    Migrate { backend: &'static str, source: sqlx::migrate::MigrateError },
}

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Db {
    /// Opens the configured database and brings its schema up to date.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StorageError> {
        match config {
            DatabaseConfig::PostgresUrlFile(path) => {
                let url = std::fs::read_to_string(path)
                    .map_err(|source| StorageError::UrlFile { path: path.clone(), source })?;
                let options =
                    PgConnectOptions::from_str(url.trim()).map_err(|_| StorageError::BadUrl { path: path.clone() })?;
                Self::postgres(options).await
            }
            DatabaseConfig::SqlitePath(path) => Self::sqlite(Path::new(path)).await,
        }
    }

    /// PostgreSQL with these options.
    pub async fn postgres(options: PgConnectOptions) -> Result<Self, StorageError> {
        // A commit the recorder was told about must survive a server crash:
        // it is not spilled or replayed again. With the server's
        // `synchronous_commit = off` the last commits before a crash are lost.
        let options = options.options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await
            .map_err(|source| StorageError::Connect { backend: "PostgreSQL", source })?;
        PG_MIGRATIONS.run(&pool).await.map_err(|source| StorageError::Migrate { backend: "PostgreSQL", source })?;
        Ok(Self::Postgres(pool))
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
            .map_err(|source| StorageError::Connect { backend: "SQLite", source })?;
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
    /// Opens the database and starts the recorder, spilling into `spill_dir`.
    pub async fn start(
        config: &DatabaseConfig,
        pepper_file: &str,
        spill_dir: PathBuf,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let db = Db::open(config).await?;
        tracing::info!(backend = db.backend(), "database ready");
        let recorder = Recorder::start(db.clone(), RecorderConfig::new(spill_dir))?;
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
