//! Settings of the `/mcp` endpoint, fixed at start-up.

use std::time::Duration;

/// Limits and policies of the `/mcp` HTTP layer.
#[derive(Debug, Clone)]
pub struct McpHttpSettings {
    /// Largest JSON-RPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Longest life of a session from its `initialize`.
    pub session_lifetime: Duration,
    /// A session idle this long is closed.
    pub session_idle: Duration,
    /// Browser origins allowed besides the gateway's own (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
}

impl Default for McpHttpSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            session_lifetime: Duration::from_secs(3600),
            session_idle: Duration::from_secs(600),
            allowed_origins: Vec::new(),
        }
    }
}
