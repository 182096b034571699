//! `POST /v1/embeddings`: like chat, authenticated, policed, limited, routed
//! with failover, metered and audited; the answer passes through as the
//! provider sent it.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::ModelLabel;
use super::body::read_body;
use super::chat::recorded;
use crate::auth::Caller;
use crate::error::AppError;
use crate::limits::Reservation;
use crate::llm::embeddings::EmbeddingsRequest;
use crate::policy::audit;
use crate::routing::{self, ModelType};
use crate::state::AppState;
use crate::storage::{Api, ChatRecord};

/// Authenticates, parses, routes and answers one embeddings request, and
/// records its usage row and audit event (whatever the outcome).
pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    request_id: Option<axum::Extension<tower_http::request_id::RequestId>>,
    body: Body,
) -> Result<Response, AppError> {
    recorded(&state, &caller, request_id, Api::Embeddings, async |record, _id| {
        embed(&state, &caller, body, record).await
    })
    .await
}

async fn embed(state: &AppState, caller: &Caller, body: Body, record: &mut ChatRecord) -> Result<Response, AppError> {
    let started = Instant::now();
    let body = read_body(body, state.max_body_bytes()).await?;
    let mut request = EmbeddingsRequest::parse(&body)?;
    record.model(&request.model);
    let runtime = state.runtime();
    let route = super::model_route(&runtime, &caller.0, &request.model, ModelType::Embedding)?;
    let target_model = route.targets.first().map(|t| &*t.model);
    let decision = match runtime.policies.apply_embeddings(&caller.0, target_model, &mut request) {
        Ok(decision) => decision,
        Err(refused) => {
            record.policy(audit::refusal(&refused));
            return Err(AppError::InputPolicy(refused));
        }
    };
    record.policy(audit::decision(&decision, runtime.config.audit.record_prompts.then_some(&request.input)));
    let reservation = Reservation::tokens(request.input.estimated_tokens(), 0);
    let reservation = runtime.limiter.price(&*caller.0, reservation, route.worst.as_ref(), &request.model)?;
    let mut admission = runtime.limiter.admit_reservation(&*caller.0, reservation, false).await?;
    let label = ModelLabel(route.name.clone());
    let routed = match routing::route_embeddings(route, &runtime.retry, &request).await {
        Ok(routed) => routed,
        Err(e) => {
            admission.record_failure();
            let mut response = AppError::from(e).into_response();
            response.extensions_mut().insert(label);
            return Ok(response);
        }
    };
    record.target(&routed.target.label, routed.target.price.as_ref());
    admission.answered_at(routed.target.price.as_ref().map(|p| &p.rates));
    let added = started.elapsed().saturating_sub(routed.upstream_time);
    metrics::histogram!("tenantgate_added_latency_seconds").record(added.as_secs_f64());
    if let Some(usage) = routed.reply.usage {
        record.tokens(&usage);
        admission.record_usage(&usage);
        metrics::counter!("tenantgate_tokens_total", "model" => route.name.to_string(), "kind" => "prompt")
            .increment(usage.prompt_tokens);
    }
    let mut response =
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], routed.reply.body).into_response();
    admission.apply_headers(response.headers_mut());
    response.extensions_mut().insert(label);
    Ok(response)
}
