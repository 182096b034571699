//! Upstream LLM providers behind one interface: every provider answers in
//! OpenAI's Chat Completions format, as a whole body or as SSE events.

pub mod access_token;
pub mod anthropic;
pub mod aws_auth;
pub mod azure;
pub mod bedrock;
pub mod embeddings;
mod endpoint;
pub mod entra;
pub mod gemini;
pub mod google_auth;
pub mod google_federation;
pub mod inbound;
pub mod messages;
pub mod mock;
pub mod openai;
mod outbound;
pub mod responses;
mod secret;
pub mod sse;
pub mod types;

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use embeddings::{EmbeddingsReply, EmbeddingsRequest};
pub use endpoint::{Endpoint, EndpointError, Wire};
pub use secret::SecretFile;
use types::{ChatRequest, Usage};

/// SSE bytes in OpenAI's chunk format, cut at event boundaries.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// What one upstream call needs: a chat request, or another API's (`R`).
#[derive(Debug)]
pub struct Call<'a, R = ChatRequest> {
    /// The client's request.
    pub request: &'a R,
    /// The model name the provider knows.
    pub model: &'a str,
    /// Until the response headers arrive.
    pub first_byte_timeout: Duration,
    /// End of the whole call, streaming included.
    pub deadline: tokio::time::Instant,
}

impl<R> Clone for Call<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Call<'_, R> {}

/// A provider's answer.
pub enum Reply {
    /// A whole `chat.completion` body.
    Complete {
        /// JSON body.
        body: Bytes,
        /// Token usage, when reported.
        usage: Option<Usage>,
    },
    /// `chat.completion.chunk` events ending with `data: [DONE]`.
    Stream(EventStream),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Complete { body, usage } => {
                f.debug_struct("Complete").field("len", &body.len()).field("usage", usage).finish()
            }
            Self::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// Why an upstream call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No connection.
    #[error("connection to the provider failed: {0}")]
    Connect(String),
    /// Out of time.
    #[error("the provider did not answer before the {0} timeout")]
    Timeout(&'static str),
    /// The provider answered with an error status.
    #[error("the provider answered HTTP {}: {message}", status.as_u16())]
    Status {
        /// Upstream status.
        status: StatusCode,
        /// Delay the provider asked for.
        retry_after: Option<Duration>,
        /// The provider's message.
        message: String,
        /// The provider's error type, when it has one.
        kind: Option<String>,
        /// The field at fault, when named.
        param: Option<String>,
        /// The provider's error code.
        code: Option<String>,
    },
    /// The provider's answer made no sense.
    #[error("the provider's answer was invalid: {0}")]
    Protocol(String),
    /// The provider's credentials could not be read, or its token endpoint refused them.
    #[error("the gateway has no usable credentials for the provider (the gateway log says why)")]
    Credentials,
}

impl UpstreamError {
    /// Worth trying the same target again: connection errors, timeouts, 408, 429 and 5xx.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(_) => true,
            Self::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            Self::Protocol(_) | Self::Credentials => false,
        }
    }

    /// The client's own fault (a 4xx other than auth, 404, 408 and 429): no other target would answer better.
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::Status { status, .. } if status.is_client_error()
            && !matches!(status.as_u16(), 401 | 403 | 404 | 408 | 429))
    }

    /// Counts against the target's circuit breaker.
    pub fn is_target_failure(&self) -> bool {
        !self.is_client_error()
    }

    /// Short label for metrics.
    pub fn as_label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect_error",
            Self::Timeout(_) => "timeout",
            Self::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            Self::Status { status, .. } if status.is_server_error() => "server_error",
            Self::Status { .. } => "client_error",
            Self::Protocol(_) => "protocol_error",
            Self::Credentials => "credentials",
        }
    }

    /// From the providers' client's error before response headers.
    pub(crate) fn from_http(e: crate::egress::SendError) -> Self {
        use crate::egress::SendError;
        match e {
            SendError::ConnectTimeout => Self::Timeout("connect"),
            SendError::Connect(message) => Self::Connect(message),
            SendError::Request(message) => Self::Connect(format!("request failed: {message}")),
        }
    }

    /// From a reqwest error before response headers (token endpoints).
    pub(crate) fn from_send(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            Self::Timeout("connect")
        } else if e.is_connect() {
            Self::Connect(short(e))
        } else {
            Self::Connect(format!("request failed: {}", short(e)))
        }
    }
}

/// A reqwest error without the URL (which could carry credentials in userinfo).
fn short(e: &reqwest::Error) -> String {
    let mut e = e.without_url_ref().to_string();
    e.truncate(200);
    e
}

trait WithoutUrl {
    fn without_url_ref(&self) -> &dyn std::error::Error;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> &dyn std::error::Error {
        std::error::Error::source(self).unwrap_or(self)
    }
}

/// Parses `Retry-After` (seconds or an HTTP date) and `retry-after-ms`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<f64>().ok()) {
        return (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorFields,
}

/// AWS's error body (`{"message": ...}`, the type in `x-amzn-errortype`).
#[derive(Deserialize)]
struct AwsError {
    #[serde(alias = "Message")]
    message: String,
}

#[derive(Deserialize)]
struct ErrorFields {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default, deserialize_with = "lenient_code")]
    code: Option<String>,
}

fn lenient_code<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.map(|v| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }))
}

/// An error status with the message of an OpenAI- or Anthropic-shaped body.
pub(crate) fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body).ok().map(|e| e.error).or_else(|| {
        // `ValidationException:http://internal.amazon.com/coral/...`: the part before the colon.
        let kind =
            headers.get("x-amzn-errortype").and_then(|v| v.to_str().ok()).map(|t| t.split(':').next().unwrap_or(t));
        let aws = serde_json::from_slice::<AwsError>(body).ok()?;
        Some(ErrorFields { message: Some(aws.message), kind: kind.map(str::to_owned), param: None, code: None })
    });
    let message = parsed.as_ref().and_then(|e| e.message.clone()).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
        if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text }
    });
    UpstreamError::Status {
        status,
        retry_after: retry_after(headers),
        message,
        kind: parsed.as_ref().and_then(|e| e.kind.clone()),
        param: parsed.as_ref().and_then(|e| e.param.clone()),
        code: parsed.and_then(|e| e.code),
    }
}

/// An upstream LLM API.
#[derive(Debug)]
pub enum Provider {
    /// Any OpenAI-compatible API.
    OpenAi(openai::OpenAi),
    /// Anthropic's Messages API.
    Anthropic(anthropic::Anthropic),
    /// Azure OpenAI deployments.
    Azure(azure::AzureOpenAi),
    /// Google's Gemini API.
    Gemini(gemini::Gemini),
    /// Gemini on Vertex AI (the same API, with a service account's tokens).
    Vertex(gemini::Gemini),
    /// Amazon Bedrock's Converse API.
    Bedrock(bedrock::Bedrock),
    /// In-process and deterministic.
    Mock(mock::Mock),
}

impl Provider {
    /// Sends one request.
    pub async fn call(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        match self {
            Self::OpenAi(p) => p.call(call).await,
            Self::Anthropic(p) => p.call(call).await,
            Self::Azure(p) => p.call(call).await,
            Self::Gemini(p) | Self::Vertex(p) => p.call(call).await,
            Self::Bedrock(p) => p.call(call).await,
            Self::Mock(p) => p.call(call).await,
        }
    }

    /// Sends one embeddings request.
    pub async fn embed(&self, call: Call<'_, EmbeddingsRequest>) -> Result<EmbeddingsReply, UpstreamError> {
        match self {
            Self::OpenAi(p) => p.embed(call).await,
            Self::Azure(p) => p.embed(call).await,
            Self::Mock(p) => p.embed(call).await,
            // Refused when the config is compiled; a request cannot get here.
            Self::Anthropic(_) | Self::Gemini(_) | Self::Vertex(_) | Self::Bedrock(_) => {
                Err(UpstreamError::Protocol(format!("no embeddings through a {} provider", self.kind())))
            }
        }
    }

    /// Whether the provider has an embeddings API.
    pub fn embeds(&self) -> bool {
        !matches!(self, Self::Anthropic(_) | Self::Gemini(_) | Self::Vertex(_) | Self::Bedrock(_))
    }

    /// Provider kind, for metrics.
    /// The provider as OpenTelemetry's GenAI conventions name it (`gen_ai.provider.name`).
    pub fn semconv_name(&self) -> &'static str {
        match self {
            Self::OpenAi(_) => "openai",
            Self::Anthropic(_) => "anthropic",
            Self::Azure(_) => "azure.ai.openai",
            Self::Gemini(_) => "gcp.gemini",
            Self::Vertex(_) => "gcp.vertex_ai",
            Self::Bedrock(_) => "aws.bedrock",
            Self::Mock(_) => "tenantgate.mock",
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::OpenAi(_) => "openai",
            Self::Anthropic(_) => "anthropic",
            Self::Azure(_) => "azureOpenai",
            Self::Gemini(_) => "gemini",
            Self::Vertex(_) => "vertex",
            Self::Bedrock(_) => "bedrock",
            Self::Mock(_) => "mock",
        }
    }
}

/// Reads at most `limit` bytes of an error body before the deadline.
pub(crate) async fn error_body(response: crate::egress::Response, deadline: tokio::time::Instant) -> Bytes {
    use http_body_util::BodyExt;
    const LIMIT: usize = 64 * 1024;
    let mut body = response.into_body();
    let read = async {
        let mut buf = bytes::BytesMut::new();
        while buf.len() < LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        buf.extend_from_slice(data);
                    }
                }
                Some(Err(_)) => return Bytes::new(),
                None => break,
            }
        }
        buf.truncate(LIMIT);
        buf.freeze()
    };
    tokio::time::timeout_at(deadline, read).await.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_dates_and_ms() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "3".parse().expect("value"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", "250".parse().expect("value"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(5));
        h.insert(header::RETRY_AFTER, past.parse().expect("value"));
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }

    #[test]
    fn classification() {
        let s = |code: u16| UpstreamError::Status {
            status: StatusCode::from_u16(code).expect("status"),
            retry_after: None,
            message: String::new(),
            kind: None,
            param: None,
            code: None,
        };
        assert!(s(503).retryable() && s(429).retryable() && !s(400).retryable());
        assert!(s(400).is_client_error() && !s(401).is_client_error() && !s(429).is_client_error());
        assert!(UpstreamError::Connect("x".into()).retryable());
    }
}
