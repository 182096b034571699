//! Probes and metrics.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::state::AppState;

/// What the probes and metrics listener (`--ops-listen`) serves from. It
/// listens from the process's first moments, before the server's state exists:
/// until [`Ops::started`], `/livez` answers, `/readyz` is 503 naming what
/// start-up waits for (a database that cannot be reached yet), and `/metrics`
/// has what was counted so far.
#[derive(Clone, Debug)]
pub struct Ops {
    metrics: PrometheusHandle,
    server: Arc<OnceLock<AppState>>,
    waiting_for: Arc<Mutex<Option<String>>>,
}

impl Ops {
    /// Probes and metrics of a server that is starting.
    pub fn new(metrics: PrometheusHandle) -> Self {
        Self { metrics, server: Arc::default(), waiting_for: Arc::default() }
    }

    /// Start-up waits for `what` (shown by `/readyz` until it is started).
    pub fn waiting_for(&self, what: String) {
        *self.waiting_for.lock().unwrap_or_else(PoisonError::into_inner) = Some(what);
    }

    /// The server has started: `/readyz` answers from its state from now on.
    pub fn started(&self, state: AppState) {
        let _ = self.server.set(state);
    }
}

/// `/readyz` of the ops listener: the server's, once it has started.
pub async fn ops_readyz(State(ops): State<Ops>) -> Response {
    if let Some(state) = ops.server.get() {
        return readyz(State(state.clone())).await;
    }
    let waiting = ops.waiting_for.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let problem = waiting.map_or_else(|| "starting".to_owned(), |what| format!("starting: waiting for {what}"));
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "problems": [problem]}))).into_response()
}

/// `/metrics` of the ops listener.
pub async fn ops_metrics(State(ops): State<Ops>) -> Response {
    prometheus_text(&ops.metrics)
}

/// Alive while the process serves HTTP.
pub async fn livez() -> &'static str {
    "ok\n"
}

/// Ready when a config is loaded, its token keys are available and the server is not draining.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let runtime = state.runtime();
    let mut problems = Vec::new();
    if state.is_shutting_down() {
        problems.push("shutting down");
    }
    if runtime.auth.as_ref().is_some_and(|a| !a.keys().is_loaded()) {
        problems.push("token keys are not loaded (identity provider unreachable?)");
    }
    let body = json!({"ready": problems.is_empty(), "configHash": runtime.config.config_hash, "problems": problems});
    let status = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    prometheus_text(state.metrics())
}

fn prometheus_text(metrics: &PrometheusHandle) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render()).into_response()
}
