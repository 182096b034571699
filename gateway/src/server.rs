//! Starting, serving and draining.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::cli::{ServeArgs, SpillDurability};
use crate::config::{Carried, ConfigSource, compile, load_initial, watch};
use crate::listener::CappedListener;
use crate::state::AppState;
use crate::storage::{RecorderConfig, SpillPlace};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Neither --config nor --manifests.
    #[error("set --config FILE (the mounted GatewayConfig) or --manifests DIR (local mode)")]
    NoConfig,
    /// The first config is invalid.
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// `--spill-root` without a usable name.
    #[error("--spill-root: {0}; set --spill-name")]
    SpillName(String),
    /// The database or the spill file.
    #[error("storage: {0}")]
    Storage(Box<dyn std::error::Error + Send + Sync>),
    /// Metrics recorder.
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// The upstream HTTP client could not be built.
    #[error("{0}")]
    Egress(#[from] crate::egress::EgressError),
    /// Listening or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The config source the arguments name, with `--config-configmap` watched through
/// the API server when a client can be made (else the file alone, with a warning).
pub async fn watched_source(args: &ServeArgs) -> Result<ConfigSource, StartError> {
    let source = source(args)?;
    let (ConfigSource::File(path), Some(name)) = (&source, &args.config_configmap) else { return Ok(source) };
    match crate::config::ApiCopy::infer(name, "config.yaml").await {
        Ok(copy) => {
            tracing::info!(configmap = copy.what(), "following the config through the API server as well as the file");
            Ok(ConfigSource::Watched { path: path.clone(), copy })
        }
        Err(error) => {
            tracing::warn!(%error, configmap = %name, "no Kubernetes client: following the config file alone");
            Ok(source)
        }
    }
}

/// The config source the arguments name.
pub fn source(args: &ServeArgs) -> Result<ConfigSource, StartError> {
    match (&args.config, &args.manifests) {
        (Some(file), _) => Ok(ConfigSource::File(file.clone())),
        (None, Some(dir)) => Ok(ConfigSource::Manifests {
            dir: dir.clone(),
            tenant: args.tenant.clone(),
            operator_namespace: args.operator_namespace.clone(),
            state_dir: state_dir(args),
        }),
        (None, None) => Err(StartError::NoConfig),
    }
}

/// `--state-dir`, else `$XDG_STATE_HOME/tenantgate` (`~/.local/state/tenantgate`):
/// local mode's SQLite database outlives the process and the machine's reboots.
fn state_dir(args: &ServeArgs) -> PathBuf {
    args.state_dir.clone().unwrap_or_else(|| {
        let xdg = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from);
        let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state"));
        xdg.or(home).unwrap_or_else(std::env::temp_dir).join("tenantgate")
    })
}

/// Where and how the recorder spills: under `--spill-root` in a directory
/// named after `--spill-name` (else the host name, a pod's name), else in
/// `--spill-dir` (else `STATE_DIR/spill`).
pub fn recorder_config(args: &ServeArgs) -> Result<RecorderConfig, StartError> {
    let spill = match &args.spill_root {
        Some(root) => {
            let name = match &args.spill_name {
                Some(name) => name.clone(),
                None => {
                    let host = hostname::get().map_err(|e| StartError::SpillName(format!("no host name: {e}")))?;
                    let host =
                        host.into_string().map_err(|_| StartError::SpillName("the host name is not UTF-8".into()))?;
                    crate::cli::spill_name(&host)
                        .map_err(|e| StartError::SpillName(format!("the host name {host:?} is not {e}")))?
                }
            };
            SpillPlace::Shared { root: root.clone(), name }
        }
        None => SpillPlace::Dir(args.spill_dir.clone().unwrap_or_else(|| state_dir(args).join("spill"))),
    };
    Ok(RecorderConfig { spill_durable: args.spill_durability == SpillDurability::Durable, ..RecorderConfig::at(spill) })
}

/// Writes `summary` to the termination message file when it exists and is
/// writable (Kubernetes shows it in the pod's status); never creates it.
fn write_termination_message(path: &std::path::Path, summary: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{summary}\n").as_bytes()));
    if let Err(error) = written {
        tracing::debug!(path = %path.display(), %error, "no termination message written");
    }
}

/// Serves until SIGTERM or SIGINT, then drains.
pub async fn run(args: ServeArgs) -> Result<(), StartError> {
    let source = watched_source(&args).await?;
    let metrics = crate::telemetry::init_metrics().map_err(StartError::Metrics)?;
    // Probes and metrics on a port of their own, from the start: the kubelet
    // sees the process alive (and not ready) while start-up waits for the
    // database, and, later, sees /readyz fail during the drain while the last
    // metrics can still be scraped.
    let ops = crate::api::ops::Ops::new(metrics.clone());
    let (ops_stop, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let ops_server = match args.ops_listen {
        Some(address) => {
            let ops_listener = TcpListener::bind(address).await?;
            tracing::info!(address = %ops_listener.local_addr()?, "probes and metrics listening");
            let ops_app = crate::api::ops_router(ops.clone());
            // Only the kubelet and scrapers call it: a few connections, the API's header timeout.
            let ops_listener = CappedListener::new(ops_listener, OPS_MAX_CONNECTIONS);
            let header_read_timeout = Duration::from_secs(args.header_read_timeout_secs);
            Some(tokio::spawn(async move {
                let stopped = async move {
                    let _ = ops_stopped.await;
                };
                serve_connections(ops_listener, ops_app, header_read_timeout, stopped).await;
            }))
        }
        None => None,
    };
    let capacity = args.capacity();
    log_capacity(&capacity);
    let (config, fingerprint) = load_initial(&source).await.map_err(StartError::Config)?;
    // Storage opens before the config compiles: the MCP hub that compiling
    // reconciles takes the store of users' upstream OAuth tokens when built.
    let recorder = RecorderConfig { queue_capacity: capacity.recorder_queue, ..recorder_config(&args)? };
    let waiting = |error: &crate::storage::StorageError, delay: Duration| {
        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "the database cannot be reached; waiting for it");
        ops.waiting_for(format!("the database ({error})"));
    };
    let storage = crate::storage::Storage::start(
        &config.storage,
        &config.tenant.name,
        &config.keys.api_key_pepper_file,
        recorder,
        waiting,
    )
    .await
    .map_err(StartError::Storage)?;
    let storage = Arc::new(storage);
    let vault = crate::mcp::user_oauth::Vault {
        db: storage.db.clone(),
        tenant: config.tenant.name.clone(),
        key_file: PathBuf::from(&config.keys.token_encryption_key_file),
    };
    let mcp = crate::mcp::McpHub::new(args.mcp_settings(), Some(vault))?;
    let carried = Carried::new(Duration::from_secs(args.jwks_min_refresh_secs), mcp);
    let runtime =
        compile(config, &carried).await.map_err(|issue| StartError::Config(crate::config::ConfigError::from(issue)))?;
    tracing::info!(
        tenant = %runtime.config.tenant.name,
        config_hash = %runtime.config.config_hash,
        models = runtime.models.len(),
        "config loaded"
    );
    metrics::gauge!("tenantgate_config_valid").set(1.0);
    let admission = crate::admission::Admission::new(&capacity);
    let state = AppState::new(runtime, carried, metrics, args.max_body_bytes, admission, storage.clone());
    if let Some(drifts) = state.carried().mcp().take_drift_feed() {
        tokio::spawn(crate::mcp::pin::audit_drifts(drifts, state.tenant().clone()));
    }
    crate::mcp::drift_status::start(state.carried().mcp().drift_board());
    let alerts = crate::limits::alerts::Alerts::in_cluster(&state.runtime().config.tenant.name);
    tokio::spawn(crate::limits::alerts::watch(state.tenant().clone(), alerts));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let interval = Duration::from_millis(args.config_poll_ms.max(50));
    tokio::spawn(watch(state.tenant().clone(), source, fingerprint, interval, stop_rx));

    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    let app =
        crate::api::router(state.clone(), Duration::from_secs(args.request_timeout_secs), args.ops_listen.is_none());
    ops.started(state.clone());

    let draining = Arc::new(tokio::sync::Notify::new());
    let signal_state = state.clone();
    let notify = draining.clone();
    let delay = Duration::from_millis(args.shutdown_delay_ms);
    let shutdown = async move {
        let delay = match wait_for_signal().await {
            Signal::Term => delay,
            // Ctrl-C at a terminal: nobody routes to us, no need to wait.
            Signal::Int => Duration::ZERO,
        };
        signal_state.begin_shutdown();
        tracing::info!(delay_ms = delay.as_millis() as u64, "shutting down: not ready, then draining");
        tokio::time::sleep(delay).await;
        let _ = stop_tx.send(true);
        notify.notify_one();
    };
    let listener = CappedListener::new(listener, capacity.max_connections).shedding();
    let server = serve_connections(listener, app, Duration::from_secs(args.header_read_timeout_secs), shutdown);
    let drain_timeout = Duration::from_millis(args.drain_timeout_ms);
    tokio::select! {
        () = server => {}
        () = async { draining.notified().await; tokio::time::sleep(drain_timeout).await } => {
            tracing::warn!(open_streams = state.open_streams(), "drain deadline reached; closing what is left");
        }
    }
    // Every request has finished (or was cut): give back the rate limit
    // slices this replica holds, so the other replicas can use them.
    state.runtime().limiter.release(Duration::from_secs(1)).await;
    // Write what the requests recorded and
    // replay the spill, for a bounded time. What is left is counted (lost,
    // on a spill that is not durable) while /metrics is still served.
    let leftover = storage.recorder.close(Duration::from_millis(args.spill_drain_timeout_ms)).await;
    if let Some(summary) = leftover.summary() {
        write_termination_message(&args.termination_message_path, &summary);
    }
    // The spans of the last requests (their records are written now).
    let traced = state.clone();
    let _ = tokio::task::spawn_blocking(move || traced.carried().shutdown_traces()).await;
    let _ = ops_stop.send(());
    if let Some(ops_server) = ops_server {
        let _ = ops_server.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Connections the probes and metrics listener (`--ops-listen`) holds open at once.
const OPS_MAX_CONNECTIONS: usize = 64;

/// Logs the budgets once at start and publishes them as `tenantgate_capacity{resource}`.
fn log_capacity(capacity: &crate::capacity::Capacity) {
    use crate::capacity::MemorySource;
    let (memory_limit_mib, from) = match &capacity.memory_limit {
        Some((bytes, MemorySource::Flag)) => (Some(bytes >> 20), "--memory-limit".to_string()),
        Some((bytes, MemorySource::Cgroup(file))) => (Some(bytes >> 20), file.display().to_string()),
        None => (None, "none: fixed defaults".to_string()),
    };
    tracing::info!(
        memory_limit_mib,
        from = %from,
        max_in_flight = capacity.max_in_flight,
        max_connections = capacity.max_connections,
        body_budget_mib = capacity.body_budget.map(|b| b >> 20),
        recorder_queue = capacity.recorder_queue,
        "capacity"
    );
    for (resource, value) in [
        ("in_flight", Some(capacity.max_in_flight)),
        ("connections", Some(capacity.max_connections)),
        ("body_bytes", capacity.body_budget),
        ("recorder_queue", Some(capacity.recorder_queue)),
    ] {
        if let Some(value) = value {
            metrics::gauge!("tenantgate_capacity", "resource" => resource).set(value as f64);
        }
    }
}

/// How long a connection accepted past the cap may take to send its request's headers.
const SHED_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest buffer an HTTP/1 connection reads into (headers included: larger
/// headers get 431); hyper's default is about 400 KiB.
const H1_MAX_BUF: usize = 64 * 1024;
/// HTTP/2: streams a connection may have open (each is a request in flight
/// too), and the flow-control windows that bound what a client may send
/// ahead of the handler reading it.
const H2_MAX_STREAMS: u32 = 128;
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// Serves HTTP/1.1 and HTTP/2 on `listener` until `shutdown` resolves, then
/// stops accepting and waits for the open connections to finish their
/// requests. A client gets `header_read_timeout` to send a request's headers
/// (a slowloris sending them byte by byte is cut; so is a keep-alive
/// connection idle that long); slow bodies are cut by the request timeout.
async fn serve_connections(
    mut listener: CappedListener,
    app: axum::Router,
    header_read_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use axum::response::IntoResponse as _;
    use axum::serve::Listener as _;
    use http_body_util::BodyExt as _;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;

    use crate::admission::Shed;
    use crate::error::AppError;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout).max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(header_read_timeout)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(H2_MAX_HEADER_LIST);
    // A connection accepted past the cap: HTTP/1.1, each request answered 503 at once, then closed.
    let mut shed_builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    shed_builder.http1().timer(TokioTimer::new()).header_read_timeout(SHED_HEADER_READ_TIMEOUT).keep_alive(false);
    // Told to every connection at shutdown; it is closed once they all ended.
    let (stop, stopped) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let io = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (io, peer) = io;
        if let Some(cap) = io.shed() {
            let refuse = hyper::service::service_fn(move |_| async move {
                Ok::<_, std::convert::Infallible>(AppError::Overloaded(Shed::Connections(cap)).into_response())
            });
            let connection = shed_builder.serve_connection(TokioIo::new(io), refuse).into_owned();
            tokio::spawn(drive(connection, auto::Connection::graceful_shutdown, stopped.clone(), None));
            continue;
        }
        let activity = io.activity();
        let app = app.clone();
        let tracked = activity.clone();
        let service = hyper::service::service_fn(move |request| {
            // Busy until the response body ends: a connection is idle (and may
            // be closed for a new one at the cap) only between requests.
            let busy = tracked.as_ref().map(|a| a.begin());
            // The peer address: what an ApiKey's ipAllowList is checked against.
            let mut request = request;
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let call = tower::ServiceExt::oneshot(app.clone(), request);
            async move {
                let response = call.await?;
                Ok::<_, std::convert::Infallible>(match busy {
                    None => response,
                    Some(busy) => response.map(|body| {
                        axum::body::Body::new(body.map_frame(move |f| {
                            let _ = &busy;
                            f
                        }))
                    }),
                })
            }
        });
        let connection = builder.serve_connection(TokioIo::new(io), service).into_owned();
        tokio::spawn(drive(connection, auto::Connection::graceful_shutdown, stopped.clone(), activity));
    }
    drop(listener);
    drop(stopped);
    let _ = stop.send(());
    stop.closed().await;
}

/// Drives one connection to its end; it closes gracefully (`close`: its
/// requests in progress finish) when the server stops or the listener
/// evicts it as idle.
async fn drive<C, E>(
    connection: C,
    close: impl Fn(std::pin::Pin<&mut C>),
    mut stop: tokio::sync::watch::Receiver<()>,
    activity: Option<Arc<crate::listener::Activity>>,
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut connection = std::pin::pin!(connection);
    let evicted = async {
        match &activity {
            Some(a) => a.evicted().await,
            None => std::future::pending().await,
        }
    };
    let mut evicted = std::pin::pin!(evicted);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = stop.changed(), if !closing => {
                closing = true;
                close(connection.as_mut());
            }
            () = &mut evicted, if !closing => {
                closing = true;
                close(connection.as_mut());
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

enum Signal {
    Term,
    Int,
}

async fn wait_for_signal() -> Signal {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => Signal::Term,
            _ = int.recv() => Signal::Int,
        },
        _ => {
            // Without signal handlers the process still stops on a plain kill.
            std::future::pending::<()>().await;
            Signal::Term
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn serve_args(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        Cli::try_parse_from([&["tenantgate-gateway", "--manifests", "m"], args].concat()).map(|cli| cli.serve)
    }

    #[test]
    fn the_spill_is_a_directory_of_its_own_or_a_name_under_a_shared_root() {
        let args = serve_args(&["--state-dir", "/s"]).expect("parses");
        let config = recorder_config(&args).expect("config");
        assert_eq!(config.spill, SpillPlace::Dir("/s/spill".into()));
        assert!(config.spill_durable, "a local state directory is durable");

        let args = serve_args(&["--spill-root", "/data/spill", "--spill-name", "gateway-7f9c-x2x4z"]).expect("parses");
        let config = recorder_config(&args).expect("config");
        let root = PathBuf::from("/data/spill");
        assert_eq!(config.spill, SpillPlace::Shared { root: root.clone(), name: "gateway-7f9c-x2x4z".into() });

        let args = serve_args(&["--spill-root", "/data/spill", "--spill-durability", "ephemeral"]).expect("parses");
        let config = recorder_config(&args).expect("config");
        assert!(matches!(&config.spill, SpillPlace::Shared { root: r, name } if *r == root && !name.is_empty()));
        assert!(!config.spill_durable);
    }

    #[test]
    fn spill_flags_that_cannot_work_are_refused() {
        assert!(serve_args(&["--spill-dir", "/a", "--spill-root", "/b"]).is_err(), "one or the other");
        assert!(serve_args(&["--spill-name", "a"]).is_err(), "a name means nothing without a root");
        for name in ["", ".hidden", "a/b"] {
            assert!(serve_args(&["--spill-root", "/r", "--spill-name", name]).is_err(), "{name:?} accepted");
        }
    }
}
