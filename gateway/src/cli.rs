//! Command line: `serve` (the default), `token`, `stdio-bridge`, `install-bridge`
//! and `database provision`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// The Tenantgate gateway.
#[derive(Debug, Parser)]
#[command(name = "tenantgate-gateway", version, about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the tenant (the default).
    Serve(Box<ServeArgs>),
    /// Mint a development token for a tenant of a manifests directory.
    Token(TokenArgs),
    /// Serve a stdio MCP server over streamable HTTP (an McpConnection's bridge Deployment).
    StdioBridge(StdioBridgeArgs),
    /// Copy this binary into a directory (the bridge's init container).
    InstallBridge(InstallBridgeArgs),
    /// Prepare a PostgreSQL database that tenants share (run by the platform team).
    #[command(subcommand)]
    Database(DatabaseCommand),
}

/// `database` subcommands.
#[derive(Debug, Subcommand)]
pub enum DatabaseCommand {
    /// Apply the migrations as the admin, then create the tenant's role (LOGIN, NOINHERIT),
    /// grant it the DML its gateway needs and bind it to the tenant, so row-level security
    /// holds it to the tenant's rows. Running it again changes nothing.
    Provision(ProvisionArgs),
}

/// `database provision`.
#[derive(Debug, Clone, Args)]
pub struct ProvisionArgs {
    /// File holding the admin's PostgreSQL URL: a role that owns the tables (or creates them
    /// now) and has CREATEROLE. Never printed.
    #[arg(long, env = "TENANTGATE_ADMIN_URL_FILE")]
    pub admin_url_file: PathBuf,
    /// PEM CA file to verify the server with (as `sslrootcert`; the URL's `sslmode` then
    /// defaults to `verify-full`).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// The Tenant (its `metadata.name`, the name its gateway serves).
    #[arg(long)]
    pub tenant: String,
    /// The tenant's role: lowercase letters, digits and underscores. Created when missing.
    #[arg(long)]
    pub role: String,
    /// File holding the role's password, set as a SCRAM-SHA-256 secret computed here (the
    /// password itself never reaches the server). Without it a new role has no password and
    /// an existing one keeps its own.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

/// `stdio-bridge`: spawn the command and serve it at `/mcp`.
#[derive(Debug, Clone, Args)]
pub struct StdioBridgeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Timeout of one request to the server, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u32,
    /// Largest JSON-RPC message accepted, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// File holding the token every `/mcp` request must bear (`Authorization:
    /// Bearer <token>`); read per request, so a rotated file takes effect at once.
    #[arg(long)]
    pub token_file: PathBuf,
    /// Log format.
    #[arg(long, env = "TENANTGATE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// The MCP server command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `install-bridge DIR`.
#[derive(Debug, Clone, Args)]
pub struct InstallBridgeArgs {
    /// Directory to copy the binary into (as `tenantgate-gateway`).
    pub dir: PathBuf,
}

/// How the server runs.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The GatewayConfig file the operator mounts.
    #[arg(long, env = "TENANTGATE_CONFIG", conflicts_with = "manifests")]
    pub config: Option<PathBuf>,
    /// With `--config`: the ConfigMap the file is mounted from, watched through the API
    /// server (key `config.yaml`, in the namespace of the client: the pod's own in a
    /// cluster, else the kubeconfig's), so that a change reaches the gateway in seconds
    /// rather than when the kubelet refreshes the volume (about a minute). The file
    /// stays the source until the API server has delivered the ConfigMap.
    #[arg(long, env = "TENANTGATE_CONFIG_CONFIGMAP", requires = "config")]
    pub config_configmap: Option<String>,
    /// Render the config from the CRD YAML under this directory instead (local mode).
    #[arg(long, env = "TENANTGATE_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Tenant to serve when the manifests hold several.
    #[arg(long, env = "TENANTGATE_TENANT")]
    pub tenant: Option<String>,
    /// Namespace whose PromptPolicies apply to every tenant (local mode).
    #[arg(long, env = "TENANTGATE_OPERATOR_NAMESPACE", default_value = "tenantgate-system")]
    pub operator_namespace: String,
    /// Where local mode writes the manifests' Secrets (mode 0600) and state (the SQLite
    /// database, the spill file). Default: `$XDG_STATE_HOME/tenantgate`, else `~/.local/state/tenantgate`.
    /// Workload identity tokens are read from `STATE_DIR/identity/<slug>/token`, which nothing
    /// writes in local mode: put a token there yourself (see docs/providers.md).
    #[arg(long, env = "TENANTGATE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where usage and audit records wait while the database is down (default: STATE_DIR/spill).
    #[arg(long, env = "TENANTGATE_SPILL_DIR", conflicts_with = "spill_root")]
    pub spill_dir: Option<PathBuf>,
    /// Instead of `--spill-dir`: a directory several gateways share (a volume every replica
    /// mounts). Each process spills into a directory of its own under it,
    /// `SPILL_ROOT/<spill name>.<unique id>`, and adopts the directories there that no running
    /// gateway holds (at start and every 30 s): replays their records into the database, then
    /// removes them.
    #[arg(long, env = "TENANTGATE_SPILL_ROOT")]
    pub spill_root: Option<PathBuf>,
    /// This process's name under `--spill-root` (default: the host name, in a pod the pod's name).
    #[arg(long, env = "TENANTGATE_SPILL_NAME", value_parser = spill_name, requires = "spill_root")]
    pub spill_name: Option<String>,
    /// Whether the spill outlives the pod. `durable` (a local directory, a PersistentVolumeClaim):
    /// records left in it at exit are replayed by the next start or by a gateway sharing
    /// `--spill-root`. `ephemeral` (an emptyDir): records left in it at exit are counted in
    /// `tenantgate_recorder_lost_total{reason="spill_ephemeral"}`.
    #[arg(long, env = "TENANTGATE_SPILL_DURABILITY", value_enum, default_value = "durable")]
    pub spill_durability: SpillDurability,
    /// After the HTTP drain, longest time the recorder takes to write its queue and replay its
    /// spill file into the database, in milliseconds; what is left stays in the spill file.
    #[arg(long, env = "TENANTGATE_SPILL_DRAIN_TIMEOUT_MS", default_value_t = 10000)]
    pub spill_drain_timeout_ms: u64,
    /// Where a one-line summary of the records left in the spill at exit is written (Kubernetes
    /// shows it in the pod's status); only when the file exists and is writable.
    #[arg(long, env = "TENANTGATE_TERMINATION_MESSAGE_PATH", default_value = "/dev/termination-log")]
    pub termination_message_path: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "TENANTGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Serve `/livez`, `/readyz` and `/metrics` on this address instead of `--listen`
    /// (in a cluster: a port no Ingress or HTTPRoute routes, open only to probes and
    /// scrapers). Unset: they are served on `--listen`.
    #[arg(long, env = "TENANTGATE_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,
    /// How often the config source is checked for changes, in milliseconds.
    #[arg(long, env = "TENANTGATE_CONFIG_POLL_MS", default_value_t = 1000)]
    pub config_poll_ms: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "TENANTGATE_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// The memory the budgets below are derived from (bytes, or `256Mi`, `1Gi`);
    /// default: the container's cgroup limit, if it has one.
    #[arg(long, env = "TENANTGATE_MEMORY_LIMIT", value_parser = crate::capacity::parse_memory)]
    pub memory_limit: Option<u64>,
    /// Client connections open at once; more wait in the kernel's accept queue.
    /// Default: 1/16 of the memory limit at 32 KiB each, else 2048. Past it, a quarter more
    /// are accepted to be answered 503 and closed; past those, they wait in the accept queue.
    #[arg(long, env = "TENANTGATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// API requests handled at once (until response headers); beyond it requests get 503 at once.
    /// Default: 1/4 of the memory limit at 64 KiB each, else 512.
    #[arg(long, env = "TENANTGATE_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Longest time a client may take to send a request's headers (and to stay
    /// idle on a keep-alive connection), in seconds.
    #[arg(long, env = "TENANTGATE_HEADER_READ_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Longest time to response headers, in seconds.
    #[arg(long, env = "TENANTGATE_REQUEST_TIMEOUT_SECS", default_value_t = 900)]
    pub request_timeout_secs: u64,
    /// After SIGTERM, time to stay up (not ready) so load balancers stop sending, in milliseconds.
    #[arg(long, env = "TENANTGATE_SHUTDOWN_DELAY_MS", default_value_t = 3000)]
    pub shutdown_delay_ms: u64,
    /// Longest time to drain in-flight requests and streams after that, in milliseconds.
    #[arg(long, env = "TENANTGATE_DRAIN_TIMEOUT_MS", default_value_t = 30000)]
    pub drain_timeout_ms: u64,
    /// Shortest interval between two JWKS refreshes, in seconds.
    #[arg(long, env = "TENANTGATE_JWKS_MIN_REFRESH_SECS", default_value_t = 30)]
    pub jwks_min_refresh_secs: u64,
    /// Log format.
    #[arg(long, env = "TENANTGATE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Largest JSON-RPC message `/mcp` accepts, in bytes.
    #[arg(long, env = "TENANTGATE_MCP_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub mcp_max_message_bytes: usize,
    /// Longest life of an MCP session, in seconds.
    #[arg(long, env = "TENANTGATE_MCP_SESSION_LIFETIME_SECS", default_value_t = 3600)]
    pub mcp_session_lifetime_secs: u64,
    /// Browser origins allowed on `/mcp` besides the gateway's own (comma-separated `scheme://host[:port]`).
    #[arg(long, env = "TENANTGATE_MCP_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub mcp_allowed_origins: Vec<String>,
}

/// Whether the spill outlives the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SpillDurability {
    /// It does (a local directory, a PersistentVolumeClaim).
    Durable,
    /// It is deleted with the pod (an emptyDir).
    Ephemeral,
}

/// A spill name that is not one path component, or a hidden one.
#[derive(Debug, thiserror::Error)]
#[error("one path component, not starting with '.'")]
pub struct SpillNameError;

/// A name that is one path component and not a hidden one.
pub fn spill_name(name: &str) -> Result<String, SpillNameError> {
    match name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
        true => Err(SpillNameError),
        false => Ok(name.to_owned()),
    }
}

impl ServeArgs {
    /// The budgets of what the gateway holds at once: from `--memory-limit`,
    /// else the cgroup's limit, with the flags' overrides.
    pub fn capacity(&self) -> crate::capacity::Capacity {
        use crate::capacity::{Capacity, MemorySource, cgroup_memory_limit};
        let limit = match self.memory_limit {
            Some(bytes) => Some((bytes, MemorySource::Flag)),
            None => cgroup_memory_limit().map(|(bytes, file)| (bytes, MemorySource::Cgroup(file))),
        };
        Capacity::derive(limit, self.max_in_flight, self.max_connections)
    }

    /// Settings of the `/mcp` HTTP layer.
    pub fn mcp_settings(&self) -> crate::mcp::McpHttpSettings {
        crate::mcp::McpHttpSettings {
            max_message_bytes: self.mcp_max_message_bytes,
            session_lifetime: std::time::Duration::from_secs(self.mcp_session_lifetime_secs.max(1)),
            allowed_origins: self.mcp_allowed_origins.clone(),
            ..Default::default()
        }
    }
}

/// `token`: mint a JWT with a local signing key.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Manifests directory holding the Tenant (its issuer, first audience and MCP resource are used).
    #[arg(long, env = "TENANTGATE_MANIFESTS")]
    pub manifests: PathBuf,
    /// Tenant, when the manifests hold several.
    #[arg(long, env = "TENANTGATE_TENANT")]
    pub tenant: Option<String>,
    /// PEM private key (RSA, EC or Ed25519).
    #[arg(long)]
    pub key: PathBuf,
    /// Key id; default: the only key of the tenant's JWKS Secret.
    #[arg(long)]
    pub kid: Option<String>,
    /// Subject.
    #[arg(long, default_value = "dev@example.com")]
    pub subject: String,
    /// Roles (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Lifetime in seconds (negative: an already expired token, for tests).
    #[arg(long, default_value_t = 3600, allow_negative_numbers = true)]
    pub ttl_secs: i64,
    /// Audience instead of the tenant's first one and its MCP resource (for tests).
    #[arg(long)]
    pub audience: Option<String>,
    /// Issuer instead of the tenant's (for tests).
    #[arg(long)]
    pub issuer: Option<String>,
}
