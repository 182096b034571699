//! Any OpenAI-compatible Chat Completions API (OpenAI, Azure, vLLM, Ollama):
//! the request goes up with the target's model name, the answer comes back as is.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::endpoint::{Wire, read_all};
use super::sse::EventBoundary;
use super::types::{ChatRequest, Usage};
use super::{Call, Endpoint, Reply, UpstreamError};

/// An OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAi {
    endpoint: Endpoint,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    model: &'a str,
    #[serde(flatten)]
    request: &'a ChatRequest,
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Usage>,
}

impl OpenAi {
    /// The Chat Completions API.
    pub const WIRE: Wire =
        Wire { path: "/chat/completions", key_header: "authorization", key_prefix: "Bearer ", fixed: &[] };

    /// A provider at `endpoint` (e.g. `https://api.openai.com/v1` with [`Self::WIRE`]).
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// Sends one request.
    pub async fn call(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        let body = serde_json::to_vec(&Outgoing { model: call.model, request: call.request })
            .map_err(|e| UpstreamError::Protocol(format!("cannot encode the request: {e}")))?;
        let response = self.endpoint.post(body, call).await?;
        if call.request.stream {
            return Ok(Reply::Stream(passthrough(response, call.deadline)));
        }
        let body = read_all(response, call.deadline).await?;
        let usage = serde_json::from_slice::<UsageOnly>(&body)
            .map_err(|e| UpstreamError::Protocol(format!("the body is not a chat completion: {e}")))?
            .usage;
        Ok(Reply::Complete { body, usage })
    }
}

/// Hands the upstream SSE bytes on, cut at event boundaries so an error event
/// never lands inside a half-sent event.
fn passthrough(response: reqwest::Response, deadline: tokio::time::Instant) -> super::EventStream {
    let state = (response.bytes_stream(), EventBoundary::default(), false);
    let stream = futures_util::stream::unfold(state, move |(mut upstream, mut boundary, done)| async move {
        if done {
            return None;
        }
        loop {
            let next = match tokio::time::timeout_at(deadline, upstream.next()).await {
                Err(_) => return Some((Err(UpstreamError::Timeout("total")), (upstream, boundary, true))),
                Ok(next) => next,
            };
            match next {
                None if boundary.has_partial() => {
                    let e = UpstreamError::Protocol("the stream ended inside an event".into());
                    return Some((Err(e), (upstream, boundary, true)));
                }
                None => return None,
                Some(Err(e)) => {
                    let e = UpstreamError::Connect(format!("the stream broke: {}", super::short(&e)));
                    return Some((Err(e), (upstream, boundary, true)));
                }
                Some(Ok(chunk)) => {
                    if let Some(whole) = boundary.push(chunk) {
                        return Some((Ok(whole), (upstream, boundary, false)));
                    }
                }
            }
        }
    });
    Box::pin(stream)
}
