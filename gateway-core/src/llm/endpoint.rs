//! One upstream HTTP endpoint: URL, fixed and configured headers, the API key
//! file, and the timeouts of one call.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use super::{Call, SecretFile, UpstreamError, error_body, status_error};
use crate::egress::Response;

/// What an API expects on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Wire {
    /// Appended to the base URL.
    pub path: &'static str,
    /// Header carrying the API key.
    pub key_header: &'static str,
    /// Put before the key in that header.
    pub key_prefix: &'static str,
    /// Headers sent with every request.
    pub fixed: &'static [(&'static str, &'static str)],
}

/// Why an endpoint cannot be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A configured header name is not an HTTP token.
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    /// A configured header value cannot be sent.
    #[error("invalid value for header {0:?}")]
    HeaderValue(String),
    /// The base URL does not parse.
    #[error("baseUrl {url:?} is not a URL: {source}")]
    BaseUrl {
        /// The configured base URL.
        url: String,
        /// The parser's complaint.
        source: url::ParseError,
    },
}

impl EndpointError {
    /// The provider field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Self::HeaderName(_) | Self::HeaderValue(_) => "headers",
            Self::BaseUrl { .. } => "baseUrl",
        }
    }
}

/// What authenticates a provider's requests.
#[derive(Debug)]
enum Credential {
    /// An API key from a Secret file, in the API's header.
    Key(HeaderName, SecretFile),
    /// OAuth access tokens as a bearer (Vertex AI, Azure OpenAI with Entra ID).
    Bearer(std::sync::Arc<super::access_token::AccessTokens>),
    /// A SigV4 signature of each request (Amazon Bedrock).
    Aws(super::aws_auth::AwsAuth),
}

/// Where and how a provider sends requests.
#[derive(Debug)]
pub struct Endpoint {
    url: reqwest::Url,
    api_key: Option<Credential>,
    headers: HeaderMap,
    client: crate::egress::HttpClient,
}

impl Endpoint {
    /// An endpoint of an API speaking `wire` at `base_url`, with the key in `api_key_file`.
    pub fn new(
        wire: &Wire,
        base_url: &str,
        api_key_file: Option<&str>,
        configured: &BTreeMap<String, String>,
        client: crate::egress::HttpClient,
    ) -> Result<Self, EndpointError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in wire.fixed {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        for (k, v) in configured {
            let name = HeaderName::try_from(k.as_str()).map_err(|_| EndpointError::HeaderName(k.clone()))?;
            let value = HeaderValue::try_from(v.as_str()).map_err(|_| EndpointError::HeaderValue(k.clone()))?;
            headers.insert(name, value);
        }
        let key_header = HeaderName::from_static(wire.key_header);
        let api_key = api_key_file.map(|file| Credential::Key(key_header, SecretFile::new(file, wire.key_prefix)));
        let url = format!("{}{}", base_url.trim_end_matches('/'), wire.path);
        let url =
            reqwest::Url::parse(&url).map_err(|source| EndpointError::BaseUrl { url: base_url.into(), source })?;
        Ok(Self { url, api_key, headers, client })
    }

    /// Authenticates with OAuth access tokens as a bearer instead of a key.
    pub fn with_access_tokens(mut self, tokens: super::access_token::AccessTokens) -> Self {
        self.api_key = Some(Credential::Bearer(std::sync::Arc::new(tokens)));
        self
    }

    /// Signs each request with SigV4 instead of sending a key.
    pub fn with_aws_auth(mut self, auth: super::aws_auth::AwsAuth) -> Self {
        self.api_key = Some(Credential::Aws(auth));
        self
    }

    /// The URL the endpoint was built with (base URL and the API's path).
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// POSTs `body` and waits for a success status within the first-byte timeout.
    pub async fn post<R>(&self, body: Vec<u8>, call: Call<'_, R>) -> Result<Response, UpstreamError> {
        self.post_to(self.url.clone(), body, call).await
    }

    /// [`Self::post`] to `url` (a URL of the same API, e.g. per deployment).
    pub async fn post_to<R>(
        &self,
        url: reqwest::Url,
        body: Vec<u8>,
        call: Call<'_, R>,
    ) -> Result<Response, UpstreamError> {
        let mut headers = self.headers.clone();
        match &self.api_key {
            None => {}
            Some(Credential::Key(name, key)) => {
                headers.insert(name, key.header()?);
            }
            Some(Credential::Bearer(tokens)) => {
                headers.insert(header::AUTHORIZATION, tokens.header(call.deadline).await?);
            }
            Some(Credential::Aws(auth)) => headers.extend(auth.sign(&url, &headers, &body, call.deadline).await?),
        }
        let first_byte = (tokio::time::Instant::now() + call.first_byte_timeout).min(call.deadline);
        let response = match tokio::time::timeout_at(first_byte, self.client.post(&url, headers, body)).await {
            Err(_) => return Err(UpstreamError::Timeout("first byte")),
            Ok(Err(e)) => return Err(UpstreamError::from_http(e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if !status.is_success() {
            if let (Some(Credential::Bearer(tokens)), StatusCode::UNAUTHORIZED) = (&self.api_key, status) {
                // Revoked or expired early: the next call exchanges a fresh token.
                tokens.forget().await;
            }
            let headers = response.headers().clone();
            let body = error_body(response, call.deadline).await;
            return Err(status_error(status, &headers, &body));
        }
        Ok(response)
    }
}

/// The whole body of a successful response, before the call's deadline.
pub async fn read_all(response: Response, deadline: tokio::time::Instant) -> Result<Bytes, UpstreamError> {
    use http_body_util::BodyExt;
    tokio::time::timeout_at(deadline, async { response.into_body().collect().await.map(|b| b.to_bytes()) })
        .await
        .map_err(|_| UpstreamError::Timeout("total"))?
        .map_err(|e| UpstreamError::Protocol(format!("reading the body failed: {e}")))
}
