//! The per-tenant Tenantgate gateway: OpenAI-compatible chat for one tenant,
//! from its GatewayConfig, with JWT auth, routing, failover and metrics.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod egress;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod listener;
pub mod llm;
pub mod log_buffer;
pub mod mcp;
pub mod policy;
pub mod redis_client;
pub mod routing;
pub mod server;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod token;
