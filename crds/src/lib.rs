//! The Tenantgate API: the custom resources a platform team writes, the
//! [`GatewayConfig`](config::GatewayConfig) contract between operator and
//! gateway, and the one pure function that renders the second from the first.
//!
//! This crate does no I/O (but for the directory walk of [`files`], behind
//! its feature, which both local modes share), so the operator (in-cluster) and the gateway
//! (`--manifests DIR`) render exactly the same config from the same objects.
#![forbid(unsafe_code)]

pub mod address;
pub mod api_key;
pub mod config;
pub mod crd;
#[cfg(feature = "files")]
pub mod files;
pub mod issue;
pub mod manifests;
pub mod pricing;
pub mod reference;
pub mod render;
pub mod spend;
pub mod template;
pub mod v1alpha1;
