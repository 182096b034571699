//! `POST /v1/responses`: OpenAI's Responses API. A request is translated to
//! chat and served by the chat path (policies, limits, routing to any
//! provider, usage and audit); the answer, whole or streamed as the typed
//! `response.*` events, is translated back. See
//! `tenantgate_gateway_core::llm::responses`.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;

use super::body::read_body;
use super::chat::{recorded, serve, translated};
use crate::auth::Caller;
use crate::error::AppError;
use crate::llm::responses;
use crate::state::AppState;
use crate::storage::{Api, ChatRecord};

/// Serves one Responses request and records its usage row and audit event.
pub async fn responses(
    State(state): State<AppState>,
    caller: Caller,
    request_id: Option<axum::Extension<tower_http::request_id::RequestId>>,
    body: Body,
) -> Result<Response, AppError> {
    recorded(&state, &caller, request_id, Api::Responses, async |record, id| {
        answer(&state, &caller, body, record, id).await
    })
    .await
}

async fn answer(
    state: &AppState,
    caller: &Caller,
    body: Body,
    record: &mut ChatRecord,
    request_id: Option<&str>,
) -> Result<Response, AppError> {
    let started = Instant::now();
    let body = read_body(body, state.max_body_bytes()).await?;
    let (request, echo) = responses::parse(&body)?;
    let response = serve(state, caller, request, body.len(), record, request_id, started).await?;
    // The stream's translator (and its copy of the echo) is made only for a streamed answer.
    let stream = || {
        let mut events = responses::stream(echo.clone());
        move |b: &[u8]| events.push(b)
    };
    translated(response, |completion| responses::to_response(completion, &echo), stream).await
}
