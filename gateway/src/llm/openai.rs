//! Any OpenAI-compatible Chat Completions API (OpenAI, Azure, vLLM, Ollama):
//! the request goes up with the target's model name, the answer comes back as is.

use axum::http::header;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::endpoint::read_all;
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
    /// A provider at `base_url` (e.g. `https://api.openai.com/v1`).
    pub fn new(
        base_url: &str,
        api_key_file: Option<&str>,
        headers: &std::collections::BTreeMap<String, String>,
        client: reqwest::Client,
    ) -> Result<Self, String> {
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let key = api_key_file.map(|f| (f, header::AUTHORIZATION, "Bearer "));
        Ok(Self { endpoint: Endpoint::new(url, key, &[], headers, client)? })
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
