//! `POST /v1/messages` and `/v1/messages/count_tokens`: Anthropic's Messages
//! API. A request is translated to chat and served by the chat path (policies,
//! limits, routing to any provider, usage and audit); the answer, whole or
//! streamed, is translated back. Errors take Anthropic's shape
//! ([`anthropic_errors`]). See `tenantgate_gateway_core::llm::messages`.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::body::read_body;
use super::chat::{recorded, serve, translated};
use crate::auth::Caller;
use crate::error::AppError;
use crate::llm::messages;
use crate::policy::tokens;
use crate::routing::ModelType;
use crate::state::AppState;
use crate::storage::Api;

/// Anthropic's clients send it; the API refuses requests without it.
fn require_version(headers: &HeaderMap) -> Result<(), AppError> {
    match headers.get("anthropic-version") {
        Some(_) => Ok(()),
        None => Err(AppError::bad_request(
            "anthropic-version".to_string(),
            "anthropic-version: header is required (e.g. 2023-06-01)",
        )),
    }
}

/// Serves one Messages request and records its usage row and audit event.
pub async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    request_id: Option<axum::Extension<tower_http::request_id::RequestId>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    recorded(&state, &caller, request_id, Api::Messages, async |record, id| {
        answer(&state, &caller, &headers, body, record, id).await
    })
    .await
}

async fn answer(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
    record: &mut crate::storage::ChatRecord,
    request_id: Option<&str>,
) -> Result<Response, AppError> {
    let started = Instant::now();
    require_version(headers)?;
    let body = read_body(body, state.max_body_bytes()).await?;
    let request = messages::parse(&body, false)?;
    let model = request.model.clone();
    let response = serve(state, caller, request, body.len(), record, request_id, started).await?;
    // The stream's translator is made only for a streamed answer.
    let stream = || {
        let mut events = messages::stream(&model);
        move |b: &[u8]| events.push(b)
    };
    translated(response, |completion| messages::to_message(completion, &model), stream).await
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the gateway
/// counts them for `maxInputTokens` (the target model's tokenizer for
/// OpenAI model families, 4 bytes a token otherwise), after the prompt
/// policies (a system prompt they add counts; a request they refuse is refused).
pub async fn count_tokens(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    require_version(&headers)?;
    let body = read_body(body, state.max_body_bytes()).await?;
    let mut request = messages::parse(&body, true)?;
    let runtime = state.runtime();
    let route = super::model_route(&runtime, &caller.0, &request.model, ModelType::Chat)?;
    let target_model = route.targets.first().map(|t| &*t.model);
    runtime.policies.apply(&caller.0, target_model, &mut request)?;
    Ok(Json(json!({"input_tokens": tokens::count(&request, target_model)})).into_response())
}

/// Gives every error answer of the Messages routes Anthropic's shape
/// (`{"type": "error", "error": {"type", "message"}}`), authentication and
/// limits included.
pub async fn anthropic_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(messages::to_error(status.as_u16(), &bytes)))
}
