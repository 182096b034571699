//! `stream-probe`: keeps N streaming chat requests open for a while and
//! reports time to first token and the gaps between chunks, as JSON.
//! Used by `make bench-gateway` against mock-llm directly and through the gateway.

use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;

/// Streaming latency probe.
#[derive(Debug, Parser)]
struct Args {
    /// Chat completions URL.
    #[arg(long)]
    url: String,
    /// Bearer token.
    #[arg(long)]
    token: Option<String>,
    /// Model name.
    #[arg(long)]
    model: String,
    /// Streams open at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// How long to keep them coming, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Streams before this many seconds are not counted (connections are being opened).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
}

#[derive(Default)]
struct Samples {
    ttft_us: Vec<u64>,
    gap_us: Vec<u64>,
    streams: u64,
    errors: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().expect("client");
    let body =
        json!({"model": args.model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let from = Instant::now() + Duration::from_secs(args.warmup_secs);
    let until = from + Duration::from_secs(args.duration_secs);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, body, url, token) = (client.clone(), body.clone(), args.url.clone(), args.token.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            while Instant::now() < until {
                let mut req = client.post(&url).header("content-type", "application/json").body(body.clone());
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let started = Instant::now();
                let Ok(response) = req.send().await else {
                    s.errors += 1;
                    continue;
                };
                if !response.status().is_success() {
                    s.errors += 1;
                    continue;
                }
                let counted = started >= from;
                let mut stream = response.bytes_stream();
                let mut last: Option<Instant> = None;
                let mut ok = true;
                while let Some(chunk) = stream.next().await {
                    if chunk.is_err() {
                        ok = false;
                        break;
                    }
                    let now = Instant::now();
                    if counted {
                        match last {
                            None => s.ttft_us.push(now.duration_since(started).as_micros() as u64),
                            Some(prev) => s.gap_us.push(now.duration_since(prev).as_micros() as u64),
                        }
                    }
                    last = Some(now);
                }
                match (counted, ok) {
                    (false, _) => {}
                    (true, true) => s.streams += 1,
                    (true, false) => s.errors += 1,
                }
            }
            s
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.ttft_us.extend(s.ttft_us);
            all.gap_us.extend(s.gap_us);
            all.streams += s.streams;
            all.errors += s.errors;
        }
    }
    let pct = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        if v.is_empty() { 0 } else { v[((v.len() - 1) as f64 * p).round() as usize] }
    };
    let out = json!({
        "streams": all.streams, "errors": all.errors,
        "ttft_p50_us": pct(&mut all.ttft_us, 0.50), "ttft_p99_us": pct(&mut all.ttft_us, 0.99),
        "gap_p50_us": pct(&mut all.gap_us, 0.50), "gap_p99_us": pct(&mut all.gap_us, 0.99),
    });
    println!("{out}");
}
