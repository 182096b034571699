//! The per-tenant Tenantgate gateway: OpenAI-compatible chat for one tenant,
//! from its GatewayConfig, with JWT auth, routing, failover and metrics.
//!
//! This crate is the HTTP layer (handlers, the one error mapping, the server
//! state, serving and draining) and the binary; the domain lives in
//! `tenantgate-gateway-core` and is re-exported here under its module names.
#![forbid(unsafe_code)]

pub use tenantgate_gateway_core::{
    auth, backoff, config, egress, limits, llm, policy, redis_client, routing, storage, tls, traces,
};

pub mod admission;
pub mod api;
pub mod capacity;
pub mod cli;
pub mod database;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod listener;
pub mod log_buffer;
pub mod mcp;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod token;
