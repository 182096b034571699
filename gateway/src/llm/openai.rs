//! Any OpenAI-compatible Chat Completions API (OpenAI, Azure, vLLM, Ollama):
//! the request goes up with the target's model name, the answer comes back as is.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::sse::EventBoundary;
use super::types::{ChatRequest, Usage};
use super::{Call, Reply, SecretFile, UpstreamError, error_body, status_error};

/// An OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAi {
    url: String,
    api_key: Option<SecretFile>,
    headers: HeaderMap,
    client: reqwest::Client,
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
        extra_headers: &std::collections::BTreeMap<String, String>,
        client: reqwest::Client,
    ) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in extra_headers {
            let name = HeaderName::try_from(k.as_str()).map_err(|_| format!("invalid header name {k:?}"))?;
            let value = HeaderValue::try_from(v.as_str()).map_err(|_| format!("invalid value for header {k:?}"))?;
            headers.insert(name, value);
        }
        Ok(Self {
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key: api_key_file.map(|f| SecretFile::new(f, "Bearer ")),
            headers,
            client,
        })
    }

    /// Sends one request.
    pub async fn call(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        let body = serde_json::to_vec(&Outgoing { model: call.model, request: call.request })
            .map_err(|e| UpstreamError::Protocol(format!("cannot encode the request: {e}")))?;
        let mut builder = self.client.post(&self.url).headers(self.headers.clone()).body(body);
        if let Some(key) = &self.api_key {
            builder = builder.header(header::AUTHORIZATION, key.header()?);
        }
        let response = send(builder, call).await?;
        if call.request.stream {
            Ok(Reply::Stream(passthrough(response, call.deadline)))
        } else {
            let body = tokio::time::timeout_at(call.deadline, response.bytes())
                .await
                .map_err(|_| UpstreamError::Timeout("total"))?
                .map_err(|e| UpstreamError::Protocol(format!("reading the body failed: {e}")))?;
            let usage = serde_json::from_slice::<UsageOnly>(&body)
                .map_err(|e| UpstreamError::Protocol(format!("the body is not a chat completion: {e}")))?
                .usage;
            Ok(Reply::Complete { body, usage })
        }
    }
}

/// Sends a request and waits for a success status within the first-byte timeout.
pub(crate) async fn send(builder: reqwest::RequestBuilder, call: Call<'_>) -> Result<reqwest::Response, UpstreamError> {
    let first_byte = (tokio::time::Instant::now() + call.first_byte_timeout).min(call.deadline);
    let response = match tokio::time::timeout_at(first_byte, builder.send()).await {
        Err(_) => return Err(UpstreamError::Timeout("first byte")),
        Ok(Err(e)) => return Err(UpstreamError::from_send(&e)),
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    if !status.is_success() {
        let headers = response.headers().clone();
        let body = error_body(response, call.deadline).await;
        return Err(status_error(status, &headers, &body));
    }
    Ok(response)
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
