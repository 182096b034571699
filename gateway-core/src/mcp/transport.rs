//! rmcp client transports for an McpConnection: streamable HTTP (with the
//! upstream bearer token read from its Secret file on every request, so a
//! rotated token is used without a restart), legacy HTTP+SSE, and a child
//! process over stdio. The tenant's own token is never among the headers.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse,
};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use sse_stream::Sse;
use tenantgate_crds::config::{McpAuthConfig, McpConnectionConfig, McpEndpointTransport};

use super::oauth::ClientCredentials;
use super::user_oauth::{Grant, UserTokens};
use crate::llm::SecretFile;

/// Why an upstream could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection config lacks what its transport needs.
    #[error("{0}")]
    Config(String),
    /// Spawning the stdio process failed.
    #[error("spawning {command:?} failed: {error}")]
    Spawn {
        /// The program.
        command: String,
        /// Why.
        error: std::io::Error,
    },
    /// The MCP handshake failed.
    #[error("initialize failed: {0}")]
    Handshake(String),
    /// No answer within the connection's timeout.
    #[error("no answer within {0} s")]
    Timeout(u32),
}

impl ConnectError {
    /// Reason for logs and metrics.
    pub fn as_reason(&self) -> &'static str {
        match self {
            Self::Config(_) => "Config",
            Self::Spawn { .. } => "Spawn",
            Self::Handshake(_) => "Handshake",
            Self::Timeout(_) => "Timeout",
        }
    }
}

/// A transport ready for `ClientHandler::serve`.
pub enum Transport {
    /// Streamable HTTP, and the raw sender that shares its session (see [`RawSender`]).
    Http(StreamableHttpClientTransport<BearerClient>, RawSender),
    /// Legacy HTTP+SSE.
    Sse(super::sse::SseClientTransport),
    /// A child process.
    Stdio(TokioChildProcess),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http(..) => "Transport::Http",
            Self::Sse(_) => "Transport::Sse",
            Self::Stdio(_) => "Transport::Stdio",
        })
    }
}

/// A user's own upstream credentials (per-user OAuth).
#[derive(Clone, Debug)]
pub struct UserCredential {
    /// The tenant's store of users' tokens.
    pub tokens: Arc<UserTokens>,
    /// The connection (its grant settings).
    pub config: Arc<McpConnectionConfig>,
    /// The user.
    pub subject: String,
}

/// Builds the transport a connection config names. `user` gives the
/// credentials of a per-user OAuth connection (without it, such a
/// connection is reached anonymously).
pub async fn build(
    config: &McpConnectionConfig,
    client: &reqwest::Client,
    user: Option<UserCredential>,
) -> Result<Transport, ConnectError> {
    match config.transport {
        McpEndpointTransport::StreamableHttp | McpEndpointTransport::Sse => {
            let url = config.url.as_deref().ok_or_else(|| {
                ConnectError::Config(format!("mcp {}: url is required for HTTP transports", config.name))
            })?;
            let credentials = match &config.auth {
                None => UpstreamAuth::None,
                Some(McpAuthConfig::Bearer { token_file }) => {
                    UpstreamAuth::Bearer(Arc::new(SecretFile::new(token_file, "")))
                }
                Some(McpAuthConfig::Oauth2ClientCredentials {
                    token_url,
                    client_id,
                    client_secret_file,
                    scopes,
                    resource,
                }) => UpstreamAuth::OAuthClient(Arc::new(ClientCredentials::new(
                    client.clone(),
                    token_url,
                    client_id,
                    client_secret_file,
                    scopes,
                    resource,
                ))),
                Some(McpAuthConfig::Oauth2AuthorizationCode { .. }) => match user {
                    Some(user) => UpstreamAuth::User(Arc::new(user)),
                    None => UpstreamAuth::None,
                },
            };
            let wire = Arc::new(Wire::default());
            let http = BearerClient { inner: client.clone(), credentials, wire: Some(wire.clone()) };
            if config.transport == McpEndpointTransport::Sse {
                let mut sse = super::sse::SseClientTransport::new(http, url);
                sse.connect().await.map_err(|e| ConnectError::Handshake(e.to_string()))?;
                return Ok(Transport::Sse(sse));
            }
            let raw = RawSender { http: http.clone(), uri: url.into(), wire };
            let transport_config = StreamableHttpClientTransportConfig::with_uri(url);
            Ok(Transport::Http(StreamableHttpClientTransport::with_client(http, transport_config), raw))
        }
        McpEndpointTransport::Stdio => {
            let process = config
                .stdio
                .as_ref()
                .ok_or_else(|| ConnectError::Config(format!("mcp {}: stdio needs a command", config.name)))?;
            let mut command = tokio::process::Command::new(&process.command);
            command.args(&process.args).kill_on_drop(true);
            for var in &process.env {
                let value = match (&var.value, &var.file) {
                    (Some(v), _) => v.clone(),
                    (None, Some(file)) => std::fs::read_to_string(file)
                        .map_err(|e| ConnectError::Config(format!("env {}: reading {file}: {e}", var.name)))?
                        .trim_end()
                        .to_string(),
                    (None, None) => String::new(),
                };
                command.env(&var.name, value);
            }
            TokioChildProcess::builder(command)
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .map(|(process, _stderr)| Transport::Stdio(process))
                .map_err(|error| ConnectError::Spawn { command: process.command.clone(), error })
        }
    }
}

/// The upstream credentials of a connection (never the tenant's own token).
#[derive(Clone, Debug)]
enum UpstreamAuth {
    None,
    /// A static token in a Secret file, re-read at most once a second.
    Bearer(Arc<SecretFile>),
    /// OAuth 2.0 client credentials, cached and refreshed.
    OAuthClient(Arc<ClientCredentials>),
    /// One user's OAuth token (authorization code), refreshed from the store.
    User(Arc<UserCredential>),
}

/// reqwest with the connection's bearer token applied per request, so a
/// rotated Secret or a refreshed OAuth token needs no reconnect.
#[derive(Clone, Debug)]
pub struct BearerClient {
    inner: reqwest::Client,
    credentials: UpstreamAuth,
    /// Where the session rmcp's client posts on is recorded (streamable HTTP).
    wire: Option<Arc<Wire>>,
}

impl BearerClient {
    /// A client without upstream credentials.
    pub fn anonymous(inner: reqwest::Client) -> Self {
        Self { inner, credentials: UpstreamAuth::None, wire: None }
    }

    fn saw(&self, session_id: Option<&Arc<str>>, headers: &HashMap<HeaderName, HeaderValue>) {
        if let (Some(wire), Some(session)) = (&self.wire, session_id) {
            wire.saw(session, headers);
        }
    }

    /// The `Authorization: Bearer` token to send, if the connection has one.
    pub async fn token(&self) -> Option<String> {
        match &self.credentials {
            UpstreamAuth::None => None,
            UpstreamAuth::Bearer(secret) => secret.header().ok().and_then(|v| v.to_str().ok().map(str::to_string)),
            UpstreamAuth::OAuthClient(grant) => match grant.token().await {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "no OAuth token for an MCP upstream");
                    None
                }
            },
            UpstreamAuth::User(user) => {
                let grant = Grant::of(&user.config).ok()?;
                match user.tokens.access_token(grant, &user.subject).await {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(connection = %user.config.name, reason = e.as_reason(), error = %e, "no user OAuth token for an MCP upstream");
                        None
                    }
                }
            }
        }
    }

    /// The plain reqwest client.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner
    }
}

type HttpResult<T> = Result<T, StreamableHttpError<reqwest::Error>>;

/// The headers of a POST, with the W3C `traceparent` of a `tools/call` whose `_meta` names one
/// (a traced request's: [`super::call`] puts it there), so an upstream that reads only HTTP
/// headers joins the trace too.
fn with_traceparent(
    message: &ClientJsonRpcMessage,
    mut headers: HashMap<HeaderName, HeaderValue>,
) -> HashMap<HeaderName, HeaderValue> {
    if let rmcp::model::JsonRpcMessage::Request(request) = message
        && let rmcp::model::ClientRequest::CallToolRequest(call) = &request.request
        && let Some(traceparent) = call.params.meta.as_ref().and_then(|m| m.get_traceparent())
        && let Ok(value) = HeaderValue::from_str(traceparent)
    {
        headers.insert(HeaderName::from_static("traceparent"), value);
    }
    headers
}

impl StreamableHttpClient for BearerClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<StreamableHttpPostResponse> {
        self.saw(session_id.as_ref(), &custom_headers);
        let custom_headers = with_traceparent(&message, custom_headers);
        self.inner.post_message(uri, message, session_id, self.token().await, custom_headers).await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> HttpResult<StreamableHttpPostResponse> {
        self.saw(session_id.as_ref(), &custom_headers);
        let custom_headers = with_traceparent(&message, custom_headers);
        self.inner
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                self.token().await,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<()> {
        self.inner.delete_session(uri, session_id, self.token().await, custom_headers).await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<BoxStream<'static, Result<Sse, SseError>>> {
        self.inner.get_stream(uri, session_id, last_event_id, self.token().await, custom_headers).await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> HttpResult<BoxStream<'static, Result<Sse, SseError>>> {
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                self.token().await,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

/// The upstream session rmcp's client last posted on: its id and protocol
/// version header. rmcp keeps the session inside its worker; the wire is
/// read from the requests it makes, so a session it re-initializes is seen
/// on its next request.
#[derive(Debug, Default)]
pub struct Wire(arc_swap::ArcSwapOption<Posted>);

/// One session's coordinates, as rmcp's client sends them.
#[derive(Debug)]
struct Posted {
    session: Arc<str>,
    version: Option<HeaderValue>,
}

const PROTOCOL_VERSION_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");

impl Wire {
    fn saw(&self, session: &Arc<str>, headers: &HashMap<HeaderName, HeaderValue>) {
        let version = headers.get(&PROTOCOL_VERSION_HEADER);
        let current = self.0.load();
        if current.as_ref().is_some_and(|p| p.session == *session && p.version.as_ref() == version) {
            return;
        }
        self.0.store(Some(Arc::new(Posted { session: session.clone(), version: version.cloned() })));
    }
}

/// Posts raw JSON-RPC messages on the session of a streamable-HTTP upstream
/// that rmcp's client opened (same URL, session id, protocol version and
/// credentials): the pass-through of `tools/call` (see `super::passthrough`).
#[derive(Clone, Debug)]
pub struct RawSender {
    http: BearerClient,
    uri: Arc<str>,
    wire: Arc<Wire>,
}

impl RawSender {
    /// Whether rmcp's client has posted on a session yet.
    pub fn ready(&self) -> bool {
        self.wire.0.load().is_some()
    }

    /// Posts `body` (one JSON-RPC message) on the session; the upstream's
    /// HTTP answer as it comes (JSON or an event stream).
    pub async fn post(&self, body: Vec<u8>) -> Result<reqwest::Response, String> {
        let posted = self.wire.0.load_full().ok_or("no upstream session yet")?;
        let mut request = self
            .http
            .inner
            .post(&*self.uri)
            .header(http::header::ACCEPT, "text/event-stream, application/json")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("mcp-session-id", &*posted.session);
        if let Some(version) = &posted.version {
            request = request.header(PROTOCOL_VERSION_HEADER, version.clone());
        }
        if let Some(token) = self.http.token().await {
            request = request.bearer_auth(token);
        }
        if crate::traces::active() {
            let mut trace = http::HeaderMap::new();
            crate::traces::inject(&mut trace);
            request = request.headers(trace);
        }
        request.body(body).send().await.map_err(|e| e.to_string())
    }
}
