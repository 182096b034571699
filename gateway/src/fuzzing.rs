//! Entry points for the cargo-fuzz targets in `fuzz/` (not an API: the
//! targets need a few crate-private steps of the request paths, and this is
//! the one place that exposes them): the domain's from
//! `tenantgate-gateway-core`, and the `/mcp` HTTP side's.

use rmcp::model::ResourceContents;

pub use tenantgate_gateway_core::fuzzing::*;

/// Gives the contents of a `resources/read` answer their exposed URI, as the
/// `/mcp` server does before answering the client.
pub fn rewrite_contents_uri(contents: &mut ResourceContents, prefix: &str) {
    crate::mcp::server::rewrite_contents_uri(contents, prefix);
}

/// Whether the `/mcp` endpoint admits a request with these headers' `Origin`.
pub fn origin_allowed(headers: &http::HeaderMap, allowed: &[String]) -> bool {
    crate::mcp::http::check_origin(headers, allowed).is_ok()
}
