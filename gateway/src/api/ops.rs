//! Probes and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

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
    if !runtime.auth.keys().is_loaded() {
        problems.push("token keys are not loaded (identity provider unreachable?)");
    }
    let body = json!({"ready": problems.is_empty(), "configHash": runtime.config.config_hash, "problems": problems});
    let status = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics().render())
        .into_response()
}
