//! `mcp-bench`: `tools/call` latency through the gateway's `/mcp` vs. the echo
//! server called directly, in the same run, with the same rmcp client.
//!
//! Load: `--concurrency` client sessions per target, each sending at a fixed
//! rate (the total `--rate` split evenly); a call is scheduled, not sent when
//! the previous one returns, and its latency runs from its scheduled time, so
//! a stall is charged to every call it delays (no coordinated omission).
//! Phases alternate direct / gateway to cancel drift. Each target is called by
//! session-based clients (`initialize`, then an `Mcp-Session-Id` on every
//! request: the 2025-11-25 revision) and by stateless ones (`server/discover`,
//! then self-contained requests: 2026-07-28), side by side. Then setup is timed
//! sequentially: a new session (initialize + initialized) and a discovery.
//!
//! `--target NAME=URL` (repeatable) adds a peer measured like the gateway's
//! session-based clients, at the same rate and concurrency, in the same
//! alternation, against the same direct baseline: a bare forwarder (the
//! floor), another MCP aggregator. `--target-tool NAME=TOOL` names the tool it
//! exposes (default `echo`, the echo server's own), `--target-token NAME=TOKEN`
//! a bearer token for it (default none). A target that cannot be reached or
//! fails calls is reported as `na` rather than failing the run.
//! Prints the figures as JSON on stderr and ends with one `BENCH mcp` line.

use std::time::{Duration, Instant};

use clap::Parser;
use rmcp::model::{CallToolRequestParams, ClientConfig, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// The echo server's MCP URL.
    #[arg(long)]
    direct: String,
    /// The gateway's MCP URL.
    #[arg(long)]
    gateway: String,
    /// Bearer token for the gateway.
    #[arg(long)]
    token: String,
    /// Exposed name of the echo tool at the gateway.
    #[arg(long, default_value = "echo_echo")]
    gateway_tool: String,
    /// Client sessions per target.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Total calls per second per phase; 0: half the gateway's closed-loop throughput.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds per phase (four phases: direct, gateway, direct, gateway).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// New sessions timed through the gateway.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Another target, `NAME=URL` (NAME: lowercase letters, digits, `_`),
    /// measured with session-based clients like the gateway. Repeatable.
    #[arg(long = "target", value_parser = name_value)]
    targets: Vec<(String, String)>,
    /// The tool a target exposes for the echo tool, `NAME=TOOL` (default `echo`).
    #[arg(long = "target-tool", value_parser = name_value)]
    target_tools: Vec<(String, String)>,
    /// A bearer token for a target, `NAME=TOKEN` (default: none).
    #[arg(long = "target-token", value_parser = name_value)]
    target_tokens: Vec<(String, String)>,
}

/// `NAME=VALUE`, NAME usable in a `BENCH` key.
fn name_value(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid || matches!(name, "direct" | "gateway" | "stateless") {
        return Err(format!(
            "{name:?} cannot name a target (lowercase letters, digits, _; not direct/gateway/stateless)"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// An extra target and what was measured through it.
struct Target {
    name: &'static str,
    url: String,
    tool: &'static str,
    token: Option<String>,
    /// None: it could not be reached.
    clients: Option<&'static [Client]>,
    max_per_s: f64,
    latencies: Latencies,
    errors: u64,
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

type Client = RunningService<RoleClient, ClientConfig>;

/// How a client starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// `initialize`: a session (2025-11-25).
    Session,
    /// `server/discover`, no session (2026-07-28).
    Stateless,
}

async fn connect(url: &str, token: Option<&str>, lifecycle: Lifecycle) -> Result<Client, Box<dyn std::error::Error>> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(t) = token {
        config = config.auth_header(t);
    }
    let transport = StreamableHttpClientTransport::from_config(config);
    Ok(match lifecycle {
        Lifecycle::Session => {
            // A 2025-11-25 client names its revision in `initialize` (rmcp's
            // default names 2026-07-28, which has no `initialize`).
            let mut config = ClientConfig::default();
            config.protocol_version = ProtocolVersion::V_2025_11_25;
            config.serve(transport).await?
        }
        Lifecycle::Stateless => {
            let discover = ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] };
            ClientConfig::default().serve_with_lifecycle(transport, discover).await?
        }
    })
}

/// `count` clients of `url`.
async fn clients(
    url: &str,
    token: Option<&str>,
    lifecycle: Lifecycle,
    count: usize,
) -> Result<&'static [Client], Box<dyn std::error::Error>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(connect(url, token, lifecycle).await?);
    }
    // The clients are moved into 'static tasks: share them.
    Ok(Box::leak(out.into_boxed_slice()))
}

/// Latencies of calls to the same target, sorted.
#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn add(&mut self, (lat, errors): (Vec<u64>, u64), total_errors: &mut u64) {
        self.0.extend(lat);
        *total_errors += errors;
    }

    fn sorted(mut self) -> Vec<u64> {
        self.0.sort_unstable();
        self.0
    }
}

fn summary(sorted: &[u64]) -> serde_json::Value {
    json!({"p50": pct(sorted, 0.5), "p90": pct(sorted, 0.9), "p99": pct(sorted, 0.99), "max": sorted.last()})
}

/// Times `count` sequential starts of a `lifecycle` client of `url`, sorted.
async fn setups(
    url: &str,
    token: Option<&str>,
    lifecycle: Lifecycle,
    count: usize,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let c = connect(url, token, lifecycle).await?;
        out.push(t.elapsed().as_micros() as u64);
        let _ = c.cancel().await;
    }
    out.sort_unstable();
    Ok(out)
}

fn params(tool: &str) -> CallToolRequestParams {
    let mut args = serde_json::Map::new();
    args.insert("text".into(), json!("ping"));
    CallToolRequestParams::new(tool.to_string()).with_arguments(args)
}

async fn call(client: &Client, tool: &str) -> Result<(), String> {
    let r = client.call_tool(params(tool)).await.map_err(|e| e.to_string())?;
    if r.is_error == Some(true) { Err(format!("tool error: {:?}", r.content)) } else { Ok(()) }
}

/// Closed loop for `secs`: calls per second over all sessions.
async fn throughput(clients: &'static [Client], tool: &'static str, secs: f64) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let counts = futures_join(clients.iter().map(|c| async move {
        let mut n = 0u64;
        while Instant::now() < end {
            if call(c, tool).await.is_ok() {
                n += 1;
            }
        }
        n
    }))
    .await;
    counts.iter().sum::<u64>() as f64 / secs
}

/// Fixed-rate phase: latencies in microseconds from each call's scheduled time.
async fn phase(clients: &'static [Client], tool: &'static str, rate: u64, secs: u64) -> (Vec<u64>, u64) {
    phase_of("", clients, tool, rate, secs).await
}

/// [`phase`], naming `label` in its first error.
async fn phase_of(
    label: &'static str,
    clients: &'static [Client],
    tool: &'static str,
    rate: u64,
    secs: u64,
) -> (Vec<u64>, u64) {
    let per_session = Duration::from_secs_f64(clients.len() as f64 / rate as f64);
    let calls = (rate * secs) as usize / clients.len();
    let results = futures_join(clients.iter().enumerate().map(|(i, c)| async move {
        // Stagger the sessions across one interval.
        let start = Instant::now() + per_session.mul_f64(i as f64 / clients.len() as f64);
        let mut lat = Vec::with_capacity(calls);
        let mut errors = 0;
        for k in 0..calls {
            let scheduled = start + per_session * k as u32;
            tokio::time::sleep_until(scheduled.into()).await;
            if let Err(e) = call(c, tool).await {
                if errors == 0 {
                    eprintln!("call to {label}{tool} failed: {e}");
                }
                errors += 1;
            }
            lat.push(scheduled.elapsed().as_micros() as u64);
        }
        (lat, errors)
    }))
    .await;
    let errors = results.iter().map(|r| r.1).sum();
    (results.into_iter().flat_map(|r| r.0).collect(), errors)
}

async fn futures_join<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let token = Some(args.token.as_str());
    let n = args.concurrency;
    let direct = clients(&args.direct, None, Lifecycle::Session, n).await?;
    let via = clients(&args.gateway, token, Lifecycle::Session, n).await?;
    let direct_stateless = clients(&args.direct, None, Lifecycle::Stateless, n).await?;
    let via_stateless = clients(&args.gateway, token, Lifecycle::Stateless, n).await?;
    let gw_tool: &'static str = Box::leak(args.gateway_tool.clone().into_boxed_str());
    let lookup = |pairs: &[(String, String)], name: &str| pairs.iter().rev().find(|p| p.0 == name).map(|p| p.1.clone());
    let mut targets = Vec::new();
    for (name, url) in &args.targets {
        if targets.iter().any(|t: &Target| t.name == name) {
            return Err(format!("target {name} is named twice").into());
        }
        targets.push(Target {
            name: leak(name),
            url: url.clone(),
            tool: leak(&lookup(&args.target_tools, name).unwrap_or_else(|| "echo".into())),
            token: lookup(&args.target_tokens, name),
            clients: None,
            max_per_s: 0.0,
            latencies: Latencies::default(),
            errors: 0,
        });
    }
    for t in &mut targets {
        match clients(&t.url, t.token.as_deref(), Lifecycle::Session, n).await {
            Ok(c) => t.clients = Some(c),
            Err(e) => eprintln!("target {}: cannot start a session at {}: {e}; its figures are na", t.name, t.url),
        }
    }

    // Warm-up, then the rate.
    throughput(direct, "echo", 1.0).await;
    throughput(via_stateless, gw_tool, 1.0).await;
    let gw_max = throughput(via, gw_tool, 2.0).await;
    let direct_max = throughput(direct, "echo", 2.0).await;
    for t in &mut targets {
        if let Some(c) = t.clients {
            throughput(c, t.tool, 1.0).await;
            t.max_per_s = throughput(c, t.tool, 2.0).await;
        }
    }
    let rate = if args.rate > 0 { args.rate } else { ((gw_max * 0.5) as u64).max(100) };
    let peers: String = targets.iter().map(|t| format!(", {} {:.0}/s", t.name, t.max_per_s)).collect();
    eprintln!("closed-loop throughput: gateway {gw_max:.0}/s, direct {direct_max:.0}/s{peers}; fixed rate {rate}/s");
    for t in targets.iter().filter(|t| t.clients.is_some() && t.max_per_s < rate as f64) {
        eprintln!(
            "target {}: its closed-loop throughput ({:.0}/s) is below the fixed rate ({rate}/s): its latency at that rate is mostly queueing",
            t.name, t.max_per_s
        );
    }

    let (mut d, mut g, mut ds, mut gs) = Default::default();
    let mut errors = 0;
    for _ in 0..2 {
        Latencies::add(&mut d, phase(direct, "echo", rate, args.seconds).await, &mut errors);
        Latencies::add(&mut g, phase(via, gw_tool, rate, args.seconds).await, &mut errors);
        for t in &mut targets {
            if let Some(c) = t.clients {
                let label = leak(&format!("{}: ", t.name));
                t.latencies.add(phase_of(label, c, t.tool, rate, args.seconds).await, &mut t.errors);
            }
        }
        Latencies::add(&mut ds, phase(direct_stateless, "echo", rate, args.seconds).await, &mut errors);
        Latencies::add(&mut gs, phase(via_stateless, gw_tool, rate, args.seconds).await, &mut errors);
    }
    let (d, g, ds, gs) = (d.sorted(), g.sorted(), ds.sorted(), gs.sorted());
    let targets: Vec<(Target, Option<Vec<u64>>)> = targets
        .into_iter()
        .map(|mut t| {
            let lat = std::mem::take(&mut t.latencies).sorted();
            let measured = t.clients.is_some() && t.errors == 0 && !lat.is_empty();
            if t.clients.is_some() && t.errors > 0 {
                eprintln!("target {}: {} of {} calls failed; its figures are na", t.name, t.errors, lat.len());
            }
            (t, measured.then_some(lat))
        })
        .collect();

    let setup = setups(&args.gateway, token, Lifecycle::Session, args.sessions).await?;
    let direct_setup = setups(&args.direct, None, Lifecycle::Session, args.sessions).await?;
    let discover = setups(&args.gateway, token, Lifecycle::Stateless, args.sessions).await?;
    let direct_discover = setups(&args.direct, None, Lifecycle::Stateless, args.sessions).await?;

    let added = |via: &[u64], direct: &[u64], p: f64| pct(via, p) as i64 - pct(direct, p) as i64;
    let report = json!({
        "rate_per_s": rate,
        "concurrency": args.concurrency,
        "calls": {"direct": d.len() + ds.len(), "gateway": g.len() + gs.len(), "errors": errors},
        "closed_loop_max_per_s": {"direct": direct_max.round(), "gateway": gw_max.round()},
        "session": {"direct_us": summary(&d), "gateway_us": summary(&g)},
        "stateless": {"direct_us": summary(&ds), "gateway_us": summary(&gs)},
        "session_setup_us": {"gateway_p50": pct(&setup, 0.5), "gateway_p99": pct(&setup, 0.99),
                             "direct_p50": pct(&direct_setup, 0.5), "direct_p99": pct(&direct_setup, 0.99)},
        "discover_us": {"gateway_p50": pct(&discover, 0.5), "gateway_p99": pct(&discover, 0.99),
                        "direct_p50": pct(&direct_discover, 0.5), "direct_p99": pct(&direct_discover, 0.99)},
        "targets": targets.iter().map(|(t, lat)| (t.name.to_string(), json!({
            "url": t.url,
            "tool": t.tool,
            "reached": t.clients.is_some(),
            "closed_loop_max_per_s": t.max_per_s.round(),
            "errors": t.errors,
            "session_us": lat.as_deref().map(summary),
            "added_p50_us": lat.as_deref().map(|l| added(l, &d, 0.50)),
            "added_p99_us": lat.as_deref().map(|l| added(l, &d, 0.99)),
        }))).collect::<serde_json::Map<_, _>>(),
    });
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    if errors > 0 {
        return Err(format!("{errors} calls failed: the figures would be meaningless").into());
    }
    let peers: String = targets
        .iter()
        .map(|(t, lat)| {
            let fig = |p| lat.as_deref().map_or_else(|| "na".to_string(), |l| added(l, &d, p).to_string());
            format!(" {0}_added_p50_us={1} {0}_added_p99_us={2}", t.name, fig(0.50), fig(0.99))
        })
        .collect();
    println!(
        "BENCH mcp added_p50_us={} added_p99_us={} stateless_added_p50_us={} stateless_added_p99_us={} session_p99_us={} discover_p99_us={}{peers}",
        added(&g, &d, 0.50),
        added(&g, &d, 0.99),
        added(&gs, &ds, 0.50),
        added(&gs, &ds, 0.99),
        pct(&setup, 0.99),
        pct(&discover, 0.99),
    );
    Ok(())
}
