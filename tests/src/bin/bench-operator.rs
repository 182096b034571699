//! `make bench-operator`: N tenants applied at once on the local control plane
//! (kwok nodes); how long until all are Ready, the operator's peak RSS, API
//! requests per tenant, and writes during a steady state. Prints one BENCH line.
//!
//! Environment: TENANTGATE_BENCH_TENANTS (500), TENANTGATE_BENCH_STEADY_SECONDS (60).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tenantgate_crds::v1alpha1::Tenant;
use tenantgate_tests::operator::OperatorProcess;
use tenantgate_tests::{admin_client, install_crds};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn tenant(i: usize) -> anyhow::Result<Tenant> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "tenantgate.dev/v1alpha1", "kind": "Tenant",
        "metadata": { "name": format!("bench-{i:04}"), "labels": { "tenantgate.dev/bench": "true" } },
        "spec": {
            "auth": { "jwt": { "issuer": "https://idp.example", "audiences": ["tenantgate"], "jwksUri": "https://idp.example/jwks.json" } },
            "providers": [{ "name": "mock", "type": "mock" }],
            "models": [{ "name": "chat", "targets": [{ "provider": "mock", "model": "m" }] }],
            "gateway": { "resources": { "requests": { "cpu": "1m", "memory": "1Mi" } } },
        }
    }))?)
}

fn ready(t: &Tenant) -> bool {
    t.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn reconciled(t: &Tenant) -> bool {
    t.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Reconciled" && c.status == "True"))
}

/// A memory figure of /proc/PID/status (`VmHWM` peak, `VmRSS` now) in MiB.
fn proc_status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User plus system CPU seconds the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = env_or("TENANTGATE_BENCH_TENANTS", 500);
    let steady: u64 = env_or("TENANTGATE_BENCH_STEADY_SECONDS", 60);
    let client = admin_client().await?;
    install_crds(&client).await?;
    let op = OperatorProcess::start(&client, "bench").await?;
    let tenants: Api<Tenant> = Api::all(client.clone());

    // Watch readiness from before the first create.
    let created: Arc<tokio::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let tenants = tenants.clone();
        let created = created.clone();
        tokio::spawn(async move {
            let mut ready_at: HashMap<String, f64> = HashMap::new();
            let mut reconciled_at: HashMap<String, f64> = HashMap::new();
            let stream =
                watcher(tenants, watcher::Config::default().labels("tenantgate.dev/bench=true")).applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(t)) = stream.try_next().await {
                if reconciled(&t)
                    && !reconciled_at.contains_key(&t.name_any())
                    && let Some(start) = created.lock().await.get(&t.name_any())
                {
                    reconciled_at.insert(t.name_any(), start.elapsed().as_secs_f64());
                }
                if ready(&t) && !ready_at.contains_key(&t.name_any()) {
                    if let Some(start) = created.lock().await.get(&t.name_any()) {
                        ready_at.insert(t.name_any(), start.elapsed().as_secs_f64());
                    }
                    if ready_at.len() == n {
                        break;
                    }
                }
            }
            (ready_at, reconciled_at)
        })
    };
    let requests_before = op.counter("tenantgate_operator_api_requests_total", "").await?;
    let started = Instant::now();
    eprintln!("creating {n} tenants");
    futures::stream::iter(0..n)
        .map(|i| {
            let tenants = tenants.clone();
            let created = created.clone();
            async move {
                let t = tenant(i)?;
                created.lock().await.insert(t.name_any(), Instant::now());
                tenants.create(&PostParams::default(), &t).await.with_context(|| format!("creating tenant {i}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    eprintln!("created {n} tenants in {:.1}s; waiting for Ready", started.elapsed().as_secs_f64());
    let (ready_at, reconciled_at) =
        tokio::time::timeout(Duration::from_secs(600), watch).await.context("tenants not all Ready within 600 s")??;
    let applied_all = reconciled_at.values().copied().fold(0.0, f64::max);
    eprintln!(
        "every tenant's stack was applied (Reconciled) {applied_all:.1}s after creation at the latest; the rest is the cluster's controllers, scheduler and kwok"
    );
    let all_ready = started.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = ready_at.values().copied().collect();
    latencies.sort_by(f64::total_cmp);
    let requests = op.counter("tenantgate_operator_api_requests_total", "").await? - requests_before;
    eprintln!("all {n} Ready after {all_ready:.1}s; measuring {steady}s of steady state");
    let writes_before = op.writes_except_leases().await?;
    tokio::time::sleep(Duration::from_secs(steady)).await;
    let steady_writes = op.writes_except_leases().await? - writes_before;
    let rss = proc_status_mib(op.pid(), "VmHWM:");
    eprintln!(
        "operator: peak RSS {rss:.1} MiB, RSS at rest {:.1} MiB, {:.1} CPU seconds; reconciles: {}",
        proc_status_mib(op.pid(), "VmRSS:"),
        cpu_seconds(op.pid()),
        op.counter("tenantgate_operator_reconciles_total", "").await?
    );
    println!(
        "BENCH operator tenants={n} all_ready_s={all_ready:.1} ready_p50_s={:.1} ready_p99_s={:.1} rss_mib={rss:.1} requests_per_tenant={:.1} steady_writes={steady_writes:.0}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        requests / n as f64,
    );
    Ok(())
}
