//! OpenTelemetry traces over OTLP, when the Tenant asks for them
//! (`spec.observability.tracing`): one SERVER span per API request (GenAI and
//! MCP semantic conventions) and a CLIENT span per upstream attempt, with the
//! W3C trace context continued from the client and passed on upstream.
//!
//! The spans are made with the OpenTelemetry API directly, not through
//! `tracing-opentelemetry`: the exporter is the tenant's (built from the config
//! and replaced when it changes, so it cannot be a layer installed once in the
//! process-wide subscriber), the attributes of a request span are known only
//! when its record is written, and the log subscriber stays as it is (a span
//! there made every log line carry its fields). Off, nothing is built: the
//! request path pays one thread-local look-up ([`Context::map_current`]) where
//! a span could start.
//!
//! The tracer rides in the request's [`Context`] ([`FutureExt::with_context`]),
//! so routing and the provider clients find it there without a handle.

mod span;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tenantgate_crds::config::TracingConfig;
use tenantgate_crds::v1alpha1::OtlpProtocol;

pub use opentelemetry::context::FutureExt;
pub use opentelemetry::{Context, KeyValue};
pub use span::{Attempt, RequestSpan, extract_parent, inject, responded, set_on_request};

/// The instrumentation scope of the gateway's spans.
const SCOPE: &str = "tenantgate-gateway";

/// Why a trace pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// The headers file could not be read or holds a line that is not `name: value`.
    #[error("tracing headers file: {0}")]
    Headers(String),
    /// The exporter refused its settings (the endpoint, most often).
    #[error("the OTLP exporter: {0}")]
    Exporter(String),
}

/// The tenant's trace pipeline: a tracer whose spans are batched and exported
/// over OTLP by the SDK's own thread (never on the request path).
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Traces {
    /// Builds the pipeline for `config`, the spans' resource naming the tenant.
    /// Must run inside a Tokio runtime (the gRPC channel's tasks live there).
    pub fn new(config: &TracingConfig, tenant: &str) -> Result<Self, TracesError> {
        let headers = match &config.headers_file {
            Some(path) => read_headers(path)?,
            None => HashMap::new(),
        };
        let timeout = Duration::from_secs(10);
        let exporter = match config.protocol {
            OtlpProtocol::Grpc => {
                let mut metadata = http::HeaderMap::new();
                for (name, value) in &headers {
                    // Both parsed already (parse_headers).
                    if let (Ok(name), Ok(value)) =
                        (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value))
                    {
                        metadata.insert(name, value);
                    }
                }
                let metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(metadata);
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(config.otlp_endpoint.clone())
                    .with_timeout(timeout)
                    .with_metadata(metadata)
                    .build()
            }
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(http_traces_url(&config.otlp_endpoint))
                .with_timeout(timeout)
                .with_headers(headers)
                .build(),
        }
        .map_err(|e| TracesError::Exporter(e.to_string()))?;
        let instance = hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        let resource = Resource::builder_empty()
            .with_service_name(SCOPE)
            .with_attributes([
                KeyValue::new("service.namespace", "tenantgate"),
                KeyValue::new("service.instance.id", instance),
                KeyValue::new("tenantgate.tenant", tenant.to_owned()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(SCOPE);
        Ok(Self { provider, tracer })
    }

    /// Exports what is still batched and stops the pipeline (blocking: at most the export timeout).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing the last spans failed");
        }
    }

    /// Exports what is batched now (blocking), for tests and shutdown.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing spans failed");
        }
    }
}

/// The pipeline of the config in force, shared by the runtime and the requests it serves.
pub type SharedTraces = Arc<Traces>;

/// The tracer, in the Context of a traced request: what child spans are made with.
#[derive(Clone, Debug)]
struct ActiveTracer(SdkTracer);

/// `http://host:4318` becomes `http://host:4318/v1/traces`; a URL with a path is used as it is
/// (the exporter takes the full URL, unlike `OTEL_EXPORTER_OTLP_ENDPOINT`).
fn http_traces_url(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(url) if url.path() == "/" || url.path().is_empty() => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_owned(),
    }
}

/// `name: value` lines (blank lines and `#` comments skipped).
fn read_headers(path: &str) -> Result<HashMap<String, String>, TracesError> {
    let text = std::fs::read_to_string(path).map_err(|e| TracesError::Headers(format!("reading {path}: {e}")))?;
    parse_headers(&text)
}

fn parse_headers(text: &str) -> Result<HashMap<String, String>, TracesError> {
    let mut headers = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            // Never the line itself: it may be a secret.
            return Err(TracesError::Headers(format!("line {} is not `name: value`", i + 1)));
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err() {
            return Err(TracesError::Headers(format!("line {} is not a valid header", i + 1)));
        }
        headers.insert(name, value.to_owned());
    }
    Ok(headers)
}

/// Whether the current task serves a traced request.
pub fn active() -> bool {
    Context::map_current(|cx| cx.get::<ActiveTracer>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_traces_path_unless_they_have_one() {
        assert_eq!(http_traces_url("http://otel:4318"), "http://otel:4318/v1/traces");
        assert_eq!(http_traces_url("http://otel:4318/"), "http://otel:4318/v1/traces");
        assert_eq!(http_traces_url("https://otlp.example.com/api/v1/traces"), "https://otlp.example.com/api/v1/traces");
    }

    #[test]
    fn headers_are_name_value_lines_and_errors_never_echo_them() {
        let headers =
            parse_headers("# a comment\nAuthorization: Bearer s3cret\n\nx-scope-orgid:  acme \n").expect("parsed");
        assert_eq!(headers.get("authorization").map(String::as_str), Some("Bearer s3cret"));
        assert_eq!(headers.get("x-scope-orgid").map(String::as_str), Some("acme"));
        let err = parse_headers("ok: 1\ns3cret-token-without-colon\n").expect_err("refused").to_string();
        assert!(err.contains("line 2") && !err.contains("s3cret"), "{err}");
        assert!(parse_headers("bad name: 1").is_err());
    }
}
