//! What a tenant's gateway reports beyond its logs and metrics: OpenTelemetry traces.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Telemetry the gateway exports to the platform's own backends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Observability {
    /// OpenTelemetry traces of every gateway request, exported over OTLP. Absent: no traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// Where and how the gateway exports its traces: one span per API request (GenAI and MCP
/// semantic conventions: model, token usage, cost, tool) with a child span per upstream
/// attempt. A W3C `traceparent` from the client is continued, and passed on to providers
/// and MCP servers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// The OpenTelemetry Collector's (or any OTLP receiver's) URL, e.g.
    /// `http://otel-collector.observability.svc:4317` for gRPC or `...:4318` for HTTP (the
    /// gateway appends `/v1/traces` to a URL without a path). The gateway's NetworkPolicy
    /// lets it reach this host and port: an in-cluster Service's namespace, an IP address,
    /// or a public name outside private ranges.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("otlpEndpoint must be an http:// or https:// URL"))]
    pub otlp_endpoint: String,
    /// The OTLP transport: `grpc` or `http/protobuf` (the default, as in the OpenTelemetry SDKs).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The share of new traces exported, from 0 to 1 (default 1: all). A request whose
    /// client sent a `traceparent` follows the client's sampling decision instead.
    #[serde(default = "default_sample_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: f64,
    /// A Secret key holding headers sent with every export, one `name: value` per line
    /// (a backend's API key, `authorization: Bearer ...`). Read when the config loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<SecretKeyRef>,
}

fn default_sample_ratio() -> f64 {
    1.0
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}
