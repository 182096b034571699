//! `/mcp`'s HTTP side over the hub of `tenantgate-gateway-core`'s `mcp`
//! (re-exported here, so `mcp::McpHub`, `mcp::call` and the rest keep their
//! paths):
//!
//! - [`server::AggregateServer`] is the rmcp `ServerHandler` of one client session.
//! - [`http`] mounts rmcp's tower service behind auth, Origin and session checks,
//!   with the `tools/call` pass-through in front of it (`fast_path`).
//! - [`authorize`]: the redirect endpoints of per-user OAuth.
//! - [`resource`]: `/mcp` as an OAuth protected resource (its metadata and 401 challenge).
//! - [`bridge`] is the `stdio-bridge` / `install-bridge` subcommands.

pub use tenantgate_gateway_core::mcp::*;

pub mod authorize;
pub mod bridge;
mod fast_path;
pub mod http;
pub mod resource;
pub mod server;

pub use http::router;
