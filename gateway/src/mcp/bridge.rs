//! `stdio-bridge`: serves one stdio MCP server over streamable HTTP, so a
//! stdio McpConnection can run in a cluster as its own Deployment. It is the
//! same aggregating server as `/mcp`, over a single connection with an empty
//! prefix (names and URIs pass unchanged), so the child is spawned, listed,
//! respawned with backoff when it exits, and proxied by rmcp.
//!
//! `install-bridge`: copies the running binary into a directory (an init
//! container puts it on a volume shared with the MCP server's image).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tenantgate_crds::config::{McpConnectionConfig, McpEndpointTransport, StdioProcess};
use tenantgate_crds::v1alpha1::McpTools;

use super::McpHub;
use super::server::AggregateServer;

/// Why a bridge subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// No command after `--`.
    #[error("stdio-bridge needs the MCP server command after `--`")]
    NoCommand,
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

/// Runs the bridge until the process is stopped. `/livez` answers 200 once the
/// child is connected (503 before), so the pod is ready only with its server up.
pub async fn stdio_bridge(
    listen: SocketAddr,
    command: &[String],
    timeout_seconds: u32,
    max_message_bytes: usize,
) -> Result<(), BridgeError> {
    let connection = bridge_connection(command, timeout_seconds)?;
    let hub = McpHub::new(Default::default(), None)?;
    hub.reconcile(std::slice::from_ref(&connection));
    let factory_hub = hub.clone();
    let service = StreamableHttpService::new(
        move || Ok(AggregateServer::new(factory_hub.clone(), super::call::Mode::Bridge)),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            // Reached by the gateway through its Service name; the bridge's NetworkPolicy (the operator's
            // `mcp-<connection>`) admits only its tenant's gateway pods. No token is checked yet.
            .disable_allowed_hosts()
            .with_max_request_body_bytes(max_message_bytes),
    );
    let health_hub = hub.clone();
    let app = Router::new()
        .route(
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
        )
        .nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(listen).await?;
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
