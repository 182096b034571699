//! `mcp-bench`: `tools/call` latency through the gateway's `/mcp` vs. the echo
//! server called directly, in the same run, with the same rmcp client.
//!
//! Load: `--concurrency` client sessions per target, each sending at a fixed
//! rate (the total `--rate` split evenly); a call is scheduled, not sent when
//! the previous one returns, and its latency runs from its scheduled time, so
//! a stall is charged to every call it delays (no coordinated omission).
//! Phases alternate direct / gateway to cancel drift. Then new-session setup
//! (initialize + initialized) is timed sequentially through the gateway.
//! Prints the figures as JSON on stderr and ends with one `BENCH mcp` line.

use std::time::{Duration, Instant};

use clap::Parser;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::RunningService;
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
}

type Client = RunningService<RoleClient, ClientConfig>;

async fn connect(url: &str, token: Option<&str>) -> Result<Client, Box<dyn std::error::Error>> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(t) = token {
        config = config.auth_header(t);
    }
    let transport = StreamableHttpClientTransport::from_config(config);
    Ok(ClientConfig::default().serve(transport).await?)
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
                    eprintln!("call to {tool} failed: {e}");
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
    let mut direct = Vec::new();
    let mut via = Vec::new();
    for _ in 0..args.concurrency {
        direct.push(connect(&args.direct, None).await?);
        via.push(connect(&args.gateway, Some(&args.token)).await?);
    }
    // The clients are moved into 'static tasks: share them.
    let direct: &'static [Client] = Box::leak(direct.into_boxed_slice());
    let via: &'static [Client] = Box::leak(via.into_boxed_slice());
    let gw_tool: &'static str = Box::leak(args.gateway_tool.clone().into_boxed_str());

    // Warm-up, then the rate.
    throughput(direct, "echo", 1.0).await;
    let gw_max = throughput(via, gw_tool, 2.0).await;
    let direct_max = throughput(direct, "echo", 2.0).await;
    let rate = if args.rate > 0 { args.rate } else { ((gw_max * 0.5) as u64).max(100) };
    eprintln!("closed-loop throughput: gateway {gw_max:.0}/s, direct {direct_max:.0}/s; fixed rate {rate}/s");

    let (mut d, mut g) = (Vec::new(), Vec::new());
    let mut errors = 0;
    for _ in 0..2 {
        let (lat, e) = phase(direct, "echo", rate, args.seconds).await;
        d.extend(lat);
        errors += e;
        let (lat, e) = phase(via, gw_tool, rate, args.seconds).await;
        g.extend(lat);
        errors += e;
    }
    d.sort_unstable();
    g.sort_unstable();

    let mut setup = Vec::with_capacity(args.sessions);
    let mut direct_setup = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions {
        let t = Instant::now();
        let c = connect(&args.gateway, Some(&args.token)).await?;
        setup.push(t.elapsed().as_micros() as u64);
        let _ = c.cancel().await;
        let t = Instant::now();
        let c = connect(&args.direct, None).await?;
        direct_setup.push(t.elapsed().as_micros() as u64);
        let _ = c.cancel().await;
    }
    setup.sort_unstable();
    direct_setup.sort_unstable();

    let added_p50 = pct(&g, 0.50) as i64 - pct(&d, 0.50) as i64;
    let added_p99 = pct(&g, 0.99) as i64 - pct(&d, 0.99) as i64;
    let report = json!({
        "rate_per_s": rate,
        "concurrency": args.concurrency,
        "calls": {"direct": d.len(), "gateway": g.len(), "errors": errors},
        "closed_loop_max_per_s": {"direct": direct_max.round(), "gateway": gw_max.round()},
        "direct_us": {"p50": pct(&d, 0.5), "p90": pct(&d, 0.9), "p99": pct(&d, 0.99), "max": d.last()},
        "gateway_us": {"p50": pct(&g, 0.5), "p90": pct(&g, 0.9), "p99": pct(&g, 0.99), "max": g.last()},
        "session_setup_us": {"gateway_p50": pct(&setup, 0.5), "gateway_p99": pct(&setup, 0.99),
                             "direct_p50": pct(&direct_setup, 0.5), "direct_p99": pct(&direct_setup, 0.99)},
    });
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    if errors > 0 {
        return Err(format!("{errors} calls failed: the figures would be meaningless").into());
    }
    println!("BENCH mcp added_p50_us={added_p50} added_p99_us={added_p99} session_p99_us={}", pct(&setup, 0.99));
    Ok(())
}
