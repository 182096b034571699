//! The Tenantgate operator: turns each Tenant into an isolated gateway stack.
#![forbid(unsafe_code)]

pub mod api_server;
pub mod bindings;
pub mod caches;
pub mod client;
pub mod context;
pub mod diff;
pub mod kinds;
pub mod labels;
pub mod metrics;
pub mod probe;
pub mod render_cmd;
pub mod run;
pub mod server;
pub mod tenant;
