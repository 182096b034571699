//! The legacy HTTP+SSE client transport (MCP 2024-11-05), which rmcp 3 no
//! longer ships, built on rmcp's `Transport` trait: a `GET` opens an event
//! stream whose first `endpoint` event names the URL to `POST` messages to;
//! server messages arrive as `message` events. rmcp does the JSON-RPC.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use rmcp::RoleClient;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;

use crate::llm::sse::{Event, events};

use super::transport::BearerClient;

/// Why the legacy SSE transport failed.
#[derive(Debug, thiserror::Error)]
pub enum SseTransportError {
    /// HTTP failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with an unexpected status.
    #[error("the server answered {0}")]
    Status(u16),
    /// The stream ended before the `endpoint` event, or it named a bad URL.
    #[error("{0}")]
    Endpoint(String),
    /// A message could not be encoded.
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A connected legacy SSE session.
pub struct SseClientTransport {
    http: BearerClient,
    url: String,
    endpoint: Option<Arc<str>>,
    events: Option<BoxStream<'static, Result<Event, reqwest::Error>>>,
}

impl std::fmt::Debug for SseClientTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseClientTransport").field("url", &self.url).field("endpoint", &self.endpoint).finish()
    }
}

impl SseClientTransport {
    /// A transport for the SSE endpoint `url`; it connects on [`Self::connect`].
    pub fn new(http: BearerClient, url: &str) -> Self {
        Self { http, url: url.to_string(), endpoint: None, events: None }
    }

    /// Opens the event stream and waits for the `endpoint` event.
    pub async fn connect(&mut self) -> Result<(), SseTransportError> {
        let mut request = self.http.http().get(&self.url).header(http::header::ACCEPT, "text/event-stream");
        if let Some(token) = self.http.token().await {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            return Err(SseTransportError::Status(response.status().as_u16()));
        }
        let mut events = events(response.bytes_stream()).boxed();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| SseTransportError::Endpoint(format!("event stream: {e}")))?;
            if event.event.as_deref() == Some("endpoint") {
                let data = event.data;
                let base = url::Url::parse(&self.url).map_err(|e| SseTransportError::Endpoint(e.to_string()))?;
                let endpoint = base
                    .join(data.trim())
                    .map_err(|e| SseTransportError::Endpoint(format!("endpoint event {data:?}: {e}")))?;
                self.endpoint = Some(endpoint.as_str().into());
                self.events = Some(events);
                return Ok(());
            }
        }
        Err(SseTransportError::Endpoint("the event stream ended before its endpoint event".into()))
    }
}

impl Transport<RoleClient> for SseClientTransport {
    type Error = SseTransportError;

    fn send(&mut self, item: ClientJsonRpcMessage) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let http = self.http.clone();
        let endpoint = self.endpoint.clone();
        async move {
            let endpoint = endpoint.ok_or_else(|| SseTransportError::Endpoint("not connected".into()))?;
            let body = serde_json::to_vec(&item)?;
            let mut request =
                http.http().post(endpoint.as_ref()).header(http::header::CONTENT_TYPE, "application/json").body(body);
            if let Some(token) = http.token().await {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            if !response.status().is_success() {
                return Err(SseTransportError::Status(response.status().as_u16()));
            }
            Ok(())
        }
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        let events = self.events.as_mut()?;
        while let Some(event) = events.next().await {
            let Ok(event) = event else { return None };
            if !matches!(event.event.as_deref(), None | Some("message")) {
                continue;
            }
            let data = event.data;
            if data.is_empty() {
                continue;
            }
            match serde_json::from_str::<ServerJsonRpcMessage>(&data) {
                Ok(message) => return Some(message),
                Err(e) => tracing::warn!(error = %e, "legacy SSE upstream sent a message that is not JSON-RPC"),
            }
        }
        None
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.events = None;
        Ok(())
    }
}
