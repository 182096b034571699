//! `GET /v1/models` and `GET /v1/models/{model}`: the tenant's model names.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::Caller;
use crate::error::AppError;
use crate::state::AppState;

/// The list, prebuilt when the config was compiled.
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Response {
    let body = state.runtime().models_body.clone();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// One model.
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    Path(model): Path<String>,
) -> Result<Response, AppError> {
    let runtime = state.runtime();
    if !runtime.models.contains_key(&model) {
        return Err(AppError::ModelNotFound(model));
    }
    let body = json!({"id": model, "object": "model", "created": 0, "owned_by": runtime.config.tenant.name});
    Ok(axum::Json(body).into_response())
}
