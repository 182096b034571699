//! Entry points for the cargo-fuzz targets in `fuzz/` (not an API: the
//! targets need a few crate-private steps of the request paths, and this is
//! the one place that exposes them); `tenantgate-gateway`'s `fuzzing`
//! re-exports them beside its HTTP side's.

use rmcp::model::Tool;

use tenantgate_crds::config::McpConnectionConfig;

use crate::mcp::Upstream;

/// An upstream of `config` that is never connected; the pin drifts it finds
/// are dropped (the gateway audits them).
pub fn upstream(config: McpConnectionConfig) -> Upstream {
    let (drifts, _) = tokio::sync::mpsc::unbounded_channel();
    let settings = crate::egress::ClientSettings {
        connect_timeout: std::time::Duration::from_secs(5),
        follow_redirects: false,
        max_idle_per_host: 0,
    };
    let client = crate::egress::client(&crate::egress::LocalUpstreams::default(), settings).expect("an HTTP client");
    let links = crate::mcp::upstream::HubLinks {
        user_tokens: None,
        client,
        drifts,
        drift_board: crate::mcp::drift_status::DriftBoard::default(),
        logs: Default::default(),
    };
    Upstream::new(config, links)
}

/// What an upstream's `tools/list` becomes in the catalog: the tools its
/// allow/deny globs permit, with its pins applied (as when it connects).
pub fn admit_tools(upstream: &Upstream, tools: &mut Vec<Tool>) {
    upstream.admit_tools(tools);
}
