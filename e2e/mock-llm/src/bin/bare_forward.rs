//! `bare-forward`: the least a forwarding proxy can do on this machine, for
//! `make bench-gateway` to print beside the gateway as a floor. It forwards
//! each request's body to one upstream and the answer back, with nothing
//! else: no auth, limits, policies, usage, metrics or logs.
//!
//! `--stack hyper`: hyper's server and client connections, a plain pool of
//! kept-alive upstream connections. `--stack axum-reqwest`: an axum handler
//! calling reqwest, the libraries the gateway is built on.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
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

async fn serve_hyper(listener: tokio::net::TcpListener, upstream: Arc<str>) {
    let pool = Pool::default();
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let (pool, upstream) = (pool.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |r| forward(r, pool.clone(), upstream.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
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
    let listener = tokio::net::TcpListener::bind(&args.listen).await.expect("bind");
    let upstream: Arc<str> = args.upstream.into();
    match args.stack {
        Stack::Hyper => serve_hyper(listener, upstream).await,
        Stack::AxumReqwest => serve_axum(listener, upstream).await,
    }
}
