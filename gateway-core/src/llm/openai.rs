//! Any OpenAI-compatible Chat Completions API (OpenAI, Azure, vLLM, Ollama):
//! the request goes up with the target's model name, the answer comes back as is.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::embeddings::{EmbeddingsReply, EmbeddingsRequest};
use super::endpoint::{Wire, read_all};
use super::sse::EventBoundary;
use super::types::Usage;
use super::{Call, Endpoint, Reply, UpstreamError};

/// An OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAi {
    endpoint: Endpoint,
    /// Boxed: most providers never embed, and [`super::Provider`]'s variants stay alike in size.
    embeddings: Box<Endpoint>,
}

/// A client's request with the target's model name.
#[derive(Serialize)]
struct Outgoing<'a, R> {
    model: &'a str,
    #[serde(flatten)]
    request: &'a R,
}

#[derive(Deserialize)]
struct EmbeddingsUsage {
    #[serde(default)]
    usage: Option<PromptUsage>,
}

#[derive(Deserialize)]
struct PromptUsage {
    prompt_tokens: u64,
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

    /// The Embeddings API.
    pub const EMBEDDINGS_WIRE: Wire = Wire { path: "/embeddings", ..Self::WIRE };

    /// A provider at `endpoint` (e.g. `https://api.openai.com/v1` with [`Self::WIRE`]) and
    /// `embeddings` (the same base URL with [`Self::EMBEDDINGS_WIRE`]).
    pub fn new(endpoint: Endpoint, embeddings: Endpoint) -> Self {
        Self { endpoint, embeddings: Box::new(embeddings) }
    }

    /// Sends one embeddings request; the answer comes back as is.
    pub async fn embed(&self, call: Call<'_, EmbeddingsRequest>) -> Result<EmbeddingsReply, UpstreamError> {
        embed(&self.embeddings, None, call).await
    }

    /// Sends one request.
    pub async fn call(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        chat(&self.endpoint, None, call).await
    }
}

/// Sends a chat request through `endpoint` (to `url` instead of its own when
/// given) with the target's model name; the answer comes back as is.
pub(super) async fn chat(
    endpoint: &Endpoint,
    url: Option<reqwest::Url>,
    call: Call<'_>,
) -> Result<Reply, UpstreamError> {
    let body = serde_json::to_vec(&Outgoing { model: call.model, request: call.request })
        .map_err(|e| UpstreamError::Protocol(format!("cannot encode the request: {e}")))?;
    let response = endpoint.post_to(url.unwrap_or_else(|| endpoint.url().clone()), body, call).await?;
    if call.request.stream {
        return Ok(Reply::Stream(passthrough(response, call.deadline)));
    }
    let body = read_all(response, call.deadline).await?;
    let usage = serde_json::from_slice::<UsageOnly>(&body)
        .map_err(|e| UpstreamError::Protocol(format!("the body is not a chat completion: {e}")))?
        .usage;
    Ok(Reply::Complete { body, usage })
}

/// Sends an embeddings request through `endpoint` (to `url` when given); the answer comes back as is.
pub(super) async fn embed(
    endpoint: &Endpoint,
    url: Option<reqwest::Url>,
    call: Call<'_, EmbeddingsRequest>,
) -> Result<EmbeddingsReply, UpstreamError> {
    let body = serde_json::to_vec(&Outgoing { model: call.model, request: call.request })
        .map_err(|e| UpstreamError::Protocol(format!("cannot encode the request: {e}")))?;
    let response = endpoint.post_to(url.unwrap_or_else(|| endpoint.url().clone()), body, call).await?;
    let body = read_all(response, call.deadline).await?;
    let usage = serde_json::from_slice::<EmbeddingsUsage>(&body)
        .map_err(|e| UpstreamError::Protocol(format!("the body is not an embeddings list: {e}")))?
        .usage
        .map(|u| Usage::new(u.prompt_tokens, 0));
    Ok(EmbeddingsReply { body, usage })
}

/// Hands the upstream SSE bytes on, cut at event boundaries so an error event
/// never lands inside a half-sent event.
fn passthrough(response: crate::egress::Response, deadline: tokio::time::Instant) -> super::EventStream {
    let state = (http_body_util::BodyDataStream::new(response.into_body()), EventBoundary::default(), false);
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
                    let e = UpstreamError::Connect(format!("the stream broke: {e}"));
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
