//! `bare-forward`: the least a forwarding proxy can do on this machine, for
//! `make bench-gateway` and `make bench-mcp` to print beside the gateway as a
//! floor. It forwards each request's body to one upstream and the answer back,
//! with nothing else: no auth, limits, policies, usage, metrics or logs.
//!
//! `--stack hyper`: hyper's server and client connections, a plain pool of
//! kept-alive upstream connections. `--stack axum-reqwest`: an axum handler
//! calling reqwest, the libraries the gateway is built on.
//!
//! `--passthrough` (hyper only), the floor of `make bench-mcp`: any method,
//! path and query, every end-to-end header both ways (`mcp-session-id`,
//! `accept`, `mcp-protocol-version`, `authorization`, ...), and the response
//! streamed as it arrives (an SSE answer or a long-lived GET stream), which is
//! what MCP's streamable HTTP needs from a proxy. Still nothing is parsed: the
//! request body is read whole and sent on, the response body is never looked at.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Stack {
    Hyper,
    AxumReqwest,
}

/// Bare forwarding proxy.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// Upstream `host:port`.
    #[arg(long)]
    upstream: String,
    /// Which libraries forward.
    #[arg(long, value_enum)]
    stack: Stack,
    /// Forward any method, path, query and headers, and stream responses
    /// (MCP streamable HTTP); `--stack hyper` only.
    #[arg(long)]
    passthrough: bool,
}

type Pool = Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>;

async fn connection(pool: &Pool, upstream: &str) -> std::io::Result<SendRequest<Full<Bytes>>> {
    loop {
        let Some(mut sender) = pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop() else { break };
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn forward(request: Request<Incoming>, pool: Pool, upstream: Arc<str>) -> Result<Response<Full<Bytes>>, String> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let mut sender = connection(&pool, &upstream).await.map_err(|e| e.to_string())?;
    let outgoing = Request::post(parts.uri.path())
        .header("host", &*upstream)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let (head, body) = sender.send_request(outgoing).await.map_err(|e| e.to_string())?.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(sender);
    Ok(Response::from_parts(head, Full::new(body)))
}

/// Headers of one connection rather than of the message (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// An upstream response body streamed to the client; its connection goes back
/// to the pool once the body has ended (dropped before that, it is closed).
struct Pooled {
    body: Incoming,
    sender: Option<SendRequest<Full<Bytes>>>,
    pool: Pool,
    ended: bool,
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Ok(_))) => self.ended = self.body.is_end_stream(),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if (self.ended || self.body.is_end_stream())
            && let Some(sender) = self.sender.take()
        {
            self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(sender);
        }
    }
}

/// `--passthrough`: the request as it came (method, path and query, headers but
/// the hop-by-hop ones), the response streamed back with its status and headers.
async fn pass_through(request: Request<Incoming>, pool: Pool, upstream: Arc<str>) -> Result<Response<Pooled>, String> {
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let mut sender = connection(&pool, &upstream).await.map_err(|e| e.to_string())?;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(HOST, HeaderValue::from_str(&upstream).map_err(|e| e.to_string())?);
    parts.uri = parts.uri.path_and_query().map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
    let (mut head, body) =
        sender.send_request(Request::from_parts(parts, Full::new(body))).await.map_err(|e| e.to_string())?.into_parts();
    strip_hop_by_hop(&mut head.headers);
    Ok(Response::from_parts(head, Pooled { body, sender: Some(sender), pool, ended: false }))
}

async fn serve_hyper(listener: tokio::net::TcpListener, upstream: Arc<str>, passthrough: bool) {
    let pool = Pool::default();
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let (pool, upstream) = (pool.clone(), upstream.clone());
        let io = TokioIo::new(stream);
        let http1 = hyper::server::conn::http1::Builder::new();
        tokio::spawn(async move {
            if passthrough {
                let service = hyper::service::service_fn(move |r| pass_through(r, pool.clone(), upstream.clone()));
                let _ = http1.serve_connection(io, service).await;
            } else {
                let service = hyper::service::service_fn(move |r| forward(r, pool.clone(), upstream.clone()));
                let _ = http1.serve_connection(io, service).await;
            }
        });
    }
}

async fn serve_axum(listener: tokio::net::TcpListener, upstream: Arc<str>) {
    use axum::extract::State;
    use axum::http::{StatusCode, Uri};
    let client = reqwest::Client::builder().tcp_nodelay(true).build().expect("client");
    let handler = |State((client, upstream)): State<(reqwest::Client, Arc<str>)>, uri: Uri, body: Bytes| async move {
        let sent = client
            .post(format!("http://{upstream}{}", uri.path()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) => {
                let status = r.status();
                (status, [("content-type", "application/json")], r.bytes().await.unwrap_or_default())
            }
            Err(_) => (StatusCode::BAD_GATEWAY, [("content-type", "application/json")], Bytes::new()),
        }
    };
    let app = axum::Router::new().fallback(handler).with_state((client, upstream));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("serve");
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.passthrough && !matches!(args.stack, Stack::Hyper) {
        eprintln!("--passthrough needs --stack hyper");
        std::process::exit(2);
    }
    let listener = tokio::net::TcpListener::bind(&args.listen).await.expect("bind");
    let upstream: Arc<str> = args.upstream.into();
    match args.stack {
        Stack::Hyper => serve_hyper(listener, upstream, args.passthrough).await,
        Stack::AxumReqwest => serve_axum(listener, upstream).await,
    }
}
