//! Logs (JSON by default) and the Prometheus recorder.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::log_buffer::{FlushOnDrop, LogBuffer};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

/// Installs the log subscriber (`RUST_LOG` filters, default `info`), writing
/// to stderr in batches; keep the returned guard alive to flush them at exit.
pub fn init_logs(format: LogFormat) -> FlushOnDrop {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = LogBuffer::start();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
    guard
}

/// Latency buckets in seconds: fine-grained below a millisecond, where gateway overhead lives.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

/// Installs the global metrics recorder and returns its handle.
pub fn init_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("tenantgate_requests_total", "API requests by model and HTTP status");
    describe_counter!(
        "tenantgate_requests_shed_total",
        "API requests refused with 503 before handling, by the budget they ran into (in_flight, body_memory, connections)"
    );
    describe_gauge!(
        "tenantgate_capacity",
        "What the gateway holds at once, by resource (from its memory limit or flags)"
    );
    describe_histogram!("tenantgate_request_duration_seconds", Unit::Seconds, "Time to response headers");
    describe_histogram!(
        "tenantgate_added_latency_seconds",
        Unit::Seconds,
        "Time the gateway adds before response headers (total minus upstream time)"
    );
    describe_histogram!("tenantgate_upstream_latency_seconds", Unit::Seconds, "Upstream time to response headers");
    describe_counter!("tenantgate_upstream_requests_total", "Upstream attempts by target and outcome");
    describe_counter!("tenantgate_tokens_total", "Tokens by model and kind (prompt, completion)");
    describe_gauge!("tenantgate_circuit_breaker_state", "Breaker per target: 0 closed, 1 open, 2 half-open");
    describe_gauge!("tenantgate_streams_in_flight", "Streaming responses open now");
    describe_counter!("tenantgate_config_reloads_total", "Config reloads by result (applied, refused)");
    describe_gauge!("tenantgate_config_valid", "1 when the latest config content was accepted");
    describe_counter!("tenantgate_auth_failures_total", "Refused credentials by reason");
    describe_counter!(
        "tenantgate_mcp_status_apply_errors_total",
        "Failed writes of McpConnection status.driftedTools to the API server, by reason"
    );
}
