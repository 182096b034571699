//! `GET /v1/models` and `GET /v1/models/{model}`: the tenant's model names.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::Caller;
use crate::error::AppError;
use crate::state::AppState;

/// The list, prebuilt when the config was compiled; for an API key that names its
/// models (`allowedModels`), only those.
pub async fn list(State(state): State<AppState>, caller: Caller) -> Response {
    let runtime = state.runtime();
    let body = if caller.0.allowed_models.is_empty() {
        runtime.models_body.clone()
    } else {
        let config = &runtime.config;
        let data: Vec<_> = config
            .models
            .iter()
            .filter(|m| caller.0.may_use_model(&m.name))
            .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": config.tenant.name}))
            .collect();
        json!({"object": "list", "data": data}).to_string().into()
    };
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// One model.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(model): Path<String>,
) -> Result<Response, AppError> {
    let runtime = state.runtime();
    if !runtime.models.contains_key(&model) {
        return Err(AppError::ModelNotFound(model));
    }
    if !caller.0.may_use_model(&model) {
        return Err(AppError::ModelNotAllowed(model));
    }
    let body = json!({"id": model, "object": "model", "created": 0, "owned_by": runtime.config.tenant.name});
    Ok(axum::Json(body).into_response())
}
