//! `stdio-bridge`: serves one stdio MCP server over streamable HTTP, so a
//! stdio McpConnection can run in a cluster as its own Deployment. It is the
//! same aggregating server as `/mcp`, over a single connection with an empty
//! prefix (names and URIs pass unchanged), so the child is spawned, listed,
//! respawned with backoff when it exits, and proxied by rmcp. Only a caller
//! bearing the connection's token (the operator generates it; the tenant's
//! gateway sends it) is served; the NetworkPolicy admits only the gateway pods.
//!
//! `install-bridge`: copies the running binary into a directory (an init
//! container puts it on a volume shared with the MCP server's image).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tenantgate_crds::config::{McpConnectionConfig, McpEndpointTransport, StdioProcess};
use tenantgate_crds::v1alpha1::McpTools;

use super::McpHub;
use super::server::AggregateServer;
use crate::cli::StdioBridgeArgs;

/// Why a bridge subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// No command after `--`.
    #[error("stdio-bridge needs the MCP server command after `--`")]
    NoCommand,
    /// The token file cannot be read or is empty.
    #[error("--token-file {path}: {reason}")]
    Token {
        /// The file.
        path: String,
        /// Why it is unusable.
        reason: String,
    },
    /// Listening, serving or copying failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The upstream HTTP client could not be built.
    #[error("{0}")]
    Egress(#[from] crate::egress::EgressError),
}

/// The stdio connection the bridge serves.
pub fn bridge_connection(command: &[String], timeout_seconds: u32) -> Result<McpConnectionConfig, BridgeError> {
    let (program, args) = command.split_first().ok_or(BridgeError::NoCommand)?;
    Ok(McpConnectionConfig {
        name: "bridge".into(),
        transport: McpEndpointTransport::Stdio,
        url: None,
        stdio: Some(StdioProcess { command: program.clone(), args: args.to_vec(), env: Vec::new() }),
        auth: None,
        prefix: String::new(),
        tools: McpTools::default(),
        timeout_seconds,
    })
}

/// The token `/mcp` callers must bear: read at start, then re-read once a
/// second off the request path (see [`BridgeToken::refresh_every`]), so a
/// rotated Secret takes effect without a restart and no request waits on the
/// disk.
#[derive(Clone, Debug)]
pub struct BridgeToken {
    path: Arc<PathBuf>,
    current: Arc<ArcSwap<Vec<u8>>>,
}

impl BridgeToken {
    /// A token file that exists and is not empty now.
    pub fn open(path: &Path) -> Result<Self, BridgeError> {
        let token = read_token(path)?;
        Ok(Self { path: Arc::new(path.to_owned()), current: Arc::new(ArcSwap::from_pointee(token)) })
    }

    /// Reads the file again; whether the token changed. A file that cannot
    /// be read or is empty (a Secret volume mid-update) keeps the token in force.
    pub fn refresh(&self) -> Result<bool, BridgeError> {
        let token = read_token(&self.path)?;
        if **self.current.load() == token {
            return Ok(false);
        }
        self.current.store(Arc::new(token));
        Ok(true)
    }

    /// Refreshes every `interval`, on the blocking pool, logging each change
    /// of state (rotated, unreadable, readable again) once.
    pub async fn refresh_every(self, interval: Duration) {
        let mut failing = false;
        loop {
            tokio::time::sleep(interval).await;
            let token = self.clone();
            match tokio::task::spawn_blocking(move || token.refresh()).await {
                Ok(Ok(changed)) => {
                    if changed {
                        tracing::info!(path = %self.path.display(), "bridge token rotated");
                    } else if failing {
                        tracing::info!(path = %self.path.display(), "bridge token readable again");
                    }
                    failing = false;
                }
                Ok(Err(error)) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cannot re-read the bridge token; the one read before stays in force");
                }
                Ok(Err(_)) => {}
                Err(error) => tracing::error!(%error, "the bridge token refresh failed"),
            }
        }
    }

    /// Whether `authorization` is `Bearer <token>`, compared in constant time.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        use subtle::ConstantTimeEq;
        let presented = authorization.and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")).unwrap_or_default();
        bool::from(presented.ct_eq(self.current.load().as_slice()))
    }
}

fn read_token(path: &Path) -> Result<Vec<u8>, BridgeError> {
    let failed = |reason: String| BridgeError::Token { path: path.display().to_string(), reason };
    let text = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    let token = text.trim_ascii();
    if token.is_empty() {
        return Err(failed("the file is empty".into()));
    }
    Ok(token.to_vec())
}

/// How often the bridge re-reads its token file.
const TOKEN_REFRESH: Duration = Duration::from_secs(1);

async fn require_token(State(token): State<BridgeToken>, request: Request, next: Next) -> Response {
    if token.admits(request.headers().get(header::AUTHORIZATION)) {
        return next.run(request).await;
    }
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "this bridge requires its token").into_response()
}

/// Runs the bridge until the process is stopped. `/livez` answers 200 once the
/// child is connected (503 before), so the pod is ready only with its server up.
pub async fn stdio_bridge(args: &StdioBridgeArgs) -> Result<(), BridgeError> {
    let token = BridgeToken::open(&args.token_file)?;
    tokio::spawn(token.clone().refresh_every(TOKEN_REFRESH));
    let (command, max_message_bytes) = (&args.command, args.max_message_bytes);
    let connection = bridge_connection(command, args.timeout_secs)?;
    let hub = McpHub::new(Default::default(), None)?;
    hub.reconcile(std::slice::from_ref(&connection));
    let factory_hub = hub.clone();
    let service = StreamableHttpService::new(
        move || Ok(AggregateServer::new(factory_hub.clone(), super::call::Mode::Bridge)),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            // Reached by the gateway through its Service name; the bridge's NetworkPolicy (the operator's
            // `mcp-<connection>`) admits only its tenant's gateway pods, and every request bears the token.
            .disable_allowed_hosts()
            .with_max_request_body_bytes(max_message_bytes),
    );
    let health_hub = hub.clone();
    // The token guards `/mcp` (and anything unrouted); `/livez`, added after the layer, is the kubelet's.
    let app =
        Router::new().nest_service("/mcp", service).layer(middleware::from_fn_with_state(token, require_token)).route(
            "/livez",
            get(move || {
                let up = health_hub.is_connected("bridge");
                async move {
                    if up {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "MCP server not connected")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(address = %listener.local_addr()?, command = %command.join(" "), "stdio bridge listening");
    axum::serve(listener, app).await?;
    Ok(())
}

/// Copies the running binary to `dir/tenantgate-gateway` (mode 0755).
pub fn install_bridge(dir: &Path) -> Result<PathBuf, BridgeError> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(dir)?;
    let target = dir.join("tenantgate-gateway");
    let partial = dir.join(".tenantgate-gateway.partial");
    std::fs::copy(&exe, &partial)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_connection_keeps_names_and_needs_a_command() {
        let c = bridge_connection(&["npx".into(), "-y".into(), "server".into()], 30).expect("config");
        assert_eq!(c.prefix, "");
        assert_eq!(c.stdio.as_ref().map(|s| s.args.clone()), Some(vec!["-y".to_string(), "server".to_string()]));
        assert!(matches!(bridge_connection(&[], 30), Err(BridgeError::NoCommand)));
    }

    #[test]
    fn the_token_is_required_exactly_and_reread_when_rotated() {
        let dir = std::env::temp_dir().join(format!("tg-bridge-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "").expect("write");
        let refused = BridgeToken::open(&path).expect_err("an empty token is refused");
        assert!(refused.to_string().contains("token: the file is empty"), "{refused}");
        std::fs::write(&path, "s3cret\n").expect("write");
        let token = BridgeToken::open(&path).expect("token");
        let bearer = |v: &str| HeaderValue::from_str(v).expect("header");
        assert!(token.admits(Some(&bearer("Bearer s3cret"))));
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "bearer s3cret", "s3cret", "Bearer "] {
            assert!(!token.admits(Some(&bearer(wrong))), "{wrong}");
        }
        assert!(!token.admits(None));
        assert!(!token.refresh().expect("readable"), "unchanged");
        std::fs::write(&path, "rotated").expect("write");
        assert!(token.refresh().expect("readable"), "rotated");
        let clone = token.clone();
        assert!(!clone.admits(Some(&bearer("Bearer s3cret"))), "the old token is gone for every handle");
        assert!(clone.admits(Some(&bearer("Bearer rotated"))));
        for broken in [None, Some("")] {
            match broken {
                None => std::fs::remove_file(&path).expect("remove"),
                Some(text) => std::fs::write(&path, text).expect("write"),
            }
            let err = token.refresh().expect_err("unusable");
            assert!(!err.to_string().contains("rotated"), "the error never shows a token: {err}");
            assert!(token.admits(Some(&bearer("Bearer rotated"))), "the token read before stays in force");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn install_bridge_copies_an_executable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tg-install-bridge-{}", std::process::id()));
        let target = install_bridge(&dir).expect("install");
        let meta = std::fs::metadata(&target).expect("metadata");
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(meta.len(), std::fs::metadata(std::env::current_exe().expect("exe")).expect("exe meta").len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
