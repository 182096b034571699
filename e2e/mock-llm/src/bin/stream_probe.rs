//! `stream-probe`: opens streaming chat requests at a fixed rate (open loop)
//! so that about N are open at once, and reports time to first token and the
//! gaps between chunks, as JSON. Used by `make bench-gateway` against mock-llm
//! directly and through the gateway.
//!
//! Open loop, like vegeta: stream `i` is due at `start + i / rate` whether or
//! not earlier ones have finished, and its time to first token counts from
//! when it was due, so a slow server cannot hide its queue by slowing the
//! probe down (coordinated omission). The rate is `concurrency / D`, with `D`
//! the length of one stream measured first, so on average `concurrency`
//! streams are open; starts are spread evenly rather than fired together.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;

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
    /// Streams open at once, on average.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// How long streams are started and measured, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Streams started in the first seconds are not counted (connections are being opened).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
}

/// What one stream measured: time to first chunk from when it was due, and
/// the gaps between its chunks.
struct Stream {
    ttft_us: u64,
    gaps_us: Vec<u64>,
}

#[derive(Clone)]
struct Probe {
    client: reqwest::Client,
    url: Arc<str>,
    token: Option<Arc<str>>,
    body: Bytes,
    open: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
}

impl Probe {
    /// Runs one stream due at `due`; `Err` says why it failed.
    async fn stream(&self, due: Instant) -> Result<Stream, String> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_open.fetch_max(open, Ordering::Relaxed);
        let result = self.run(due).await;
        self.open.fetch_sub(1, Ordering::Relaxed);
        result
    }

    async fn run(&self, due: Instant) -> Result<Stream, String> {
        let mut request =
            self.client.post(&*self.url).header("content-type", "application/json").body(self.body.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let mut chunks = response.bytes_stream();
        let (mut ttft_us, mut gaps_us, mut last) = (None, Vec::with_capacity(20), None::<Instant>);
        while let Some(chunk) = chunks.next().await {
            chunk.map_err(|e| e.to_string())?;
            let now = Instant::now();
            match last {
                None => ttft_us = Some(now.duration_since(due).as_micros() as u64),
                Some(prev) => gaps_us.push(now.duration_since(prev).as_micros() as u64),
            }
            last = Some(now);
        }
        Ok(Stream { ttft_us: ttft_us.ok_or("the stream was empty")?, gaps_us })
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).build().expect("client");
    let body = json!({"model": args.model, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let probe = Probe {
        client,
        url: args.url.into(),
        token: args.token.map(Into::into),
        body: Bytes::from(body.to_string()),
        open: Arc::default(),
        max_open: Arc::default(),
    };

    // One stream's length sets the rate: the median of three, one after another.
    let mut lengths = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        if let Err(e) = probe.stream(started).await {
            eprintln!("stream-probe: the calibration stream failed: {e}");
            std::process::exit(1);
        }
        lengths.push(started.elapsed());
    }
    lengths.sort();
    let length = lengths[1];
    let interval = length / args.concurrency.max(1) as u32;
    probe.max_open.store(0, Ordering::Relaxed);

    let start = Instant::now();
    let from = start + Duration::from_secs(args.warmup_secs);
    let until = from + Duration::from_secs(args.duration_secs);
    let mut tasks = Vec::new();
    for i in 0u32.. {
        let due = start + interval * i;
        if due >= until {
            break;
        }
        tokio::time::sleep_until(due).await;
        let probe = probe.clone();
        tasks.push((due >= from, tokio::spawn(async move { probe.stream(due).await })));
    }

    let (mut ttft_us, mut gap_us, mut streams, mut errors, mut first_error) = (vec![], vec![], 0u64, 0u64, None);
    for (counted, task) in tasks {
        let outcome = task.await.unwrap_or_else(|e| Err(e.to_string()));
        if !counted {
            continue;
        }
        match outcome {
            Ok(s) => {
                streams += 1;
                ttft_us.push(s.ttft_us);
                gap_us.extend(s.gaps_us);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let pct = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        if v.is_empty() { 0 } else { v[((v.len() - 1) as f64 * p).round() as usize] }
    };
    let out = json!({
        "streams": streams, "errors": errors, "first_error": first_error,
        "rate_per_s": 1.0 / interval.as_secs_f64(), "stream_ms": length.as_millis() as u64,
        "max_open": probe.max_open.load(Ordering::Relaxed),
        "ttft_p50_us": pct(&mut ttft_us, 0.50), "ttft_p99_us": pct(&mut ttft_us, 0.99),
        "gap_p50_us": pct(&mut gap_us, 0.50), "gap_p99_us": pct(&mut gap_us, 0.99),
    });
    println!("{out}");
}
