//! The domain of the per-tenant Tenantgate gateway: auth, limits, prompt
//! policies, LLM providers, routing, the MCP hub and upstreams, storage and
//! the config. Nothing here knows the HTTP server or its state
//! (`tenantgate-gateway` holds the handlers, `AppError` and `AppState`); each
//! module has its own error type and gets narrow handles built at start-up
//! ([`config::RuntimeHandle`]).
#![forbid(unsafe_code)]

pub mod auth;
pub mod backoff;
pub mod config;
pub mod egress;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod llm;
pub mod mcp;
pub mod policy;
pub mod redis_client;
pub mod routing;
pub mod storage;
pub mod tls;
pub mod traces;
