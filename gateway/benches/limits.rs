//! Decision latency of the rate limiter against a real Redis, and in process.
//!
//! `e2e/with-services cargo bench -p tenantgate-gateway --bench limits`
//! (`TENANTGATE_BENCH_SECONDS`, default 10). Open loop at 1,000 decisions/s
//! over 100 users, every limit kind configured (tenant and user requests,
//! tokens per minute and per day), one in ten a stream taking a slot; each
//! admission settles with a usage other than its reservation, so settlements
//! (one more script call, off the request path) run alongside. Prints p50,
//! p99 and p99.9 of `admit` as the request path sees it, for those limits
//! alone and with a tenant budget and per-user budgets on top (each request
//! reserving a worst-case cost and settling to less), and with team and
//! API-key budgets nested under those (ten teams, each request through one
//! of ten keys with a budget of its own), A/B in one run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenantgate_crds::config::DeclaredApiKey;
use tenantgate_crds::v1alpha1::{Budget, BudgetPeriod, Limits, TeamLimits, UserLimits};
use tenantgate_gateway::limits::{
    Account, LocalStore, Plan, RateLimiter, RedisSettings, RedisStore, Reservation, Store,
};
use tenantgate_gateway::redis_client::RedisEndpoint;

fn limits() -> Limits {
    Limits {
        requests_per_minute: Some(1_000_000),
        burst: Some(100_000),
        tokens_per_minute: Some(1_000_000_000),
        tokens_per_day: Some(1_000_000_000_000),
        max_concurrent_streams: Some(100_000),
        per_user: Some(UserLimits {
            requests_per_minute: Some(1_000_000),
            tokens_per_minute: Some(1_000_000_000),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// [`limits`] with a tenant budget per month and a budget per user and day, both far from spent.
fn limits_with_budgets() -> Limits {
    let mut l = limits();
    l.budget = Some(Budget::new("9000000", BudgetPeriod::Month));
    if let Some(u) = &mut l.per_user {
        u.budget = Some(Budget::new("100000", BudgetPeriod::Day));
    }
    l
}

/// [`limits_with_budgets`] with a budget for every team and ten API keys with budgets of their own.
fn plan_with_nested_budgets(tenant: &str) -> Option<Plan> {
    let mut l = limits_with_budgets();
    l.per_team = Some(TeamLimits { budget: Some(Budget::new("1000000", BudgetPeriod::Month)), ..Default::default() });
    let keys: Vec<DeclaredApiKey> = (0..10)
        .map(|i| {
            let budget = Budget::fixed("100000", "2026-01-01T00:00:00Z", "168h");
            DeclaredApiKey::with_budget(&format!("key-{i}"), &format!("h{i}"), Some(budget))
        })
        .collect();
    Plan::of(tenant, Some(&l), &keys)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn run(name: &str, limiter: Arc<RateLimiter>, seconds: u64) {
    // A worst case of 0.0025 (200 output tokens at 10 per million plus the prompt), settling to 0.001.
    let priced = limiter.plan().is_some_and(|p| p.counts_cost());
    let reservation = Reservation::tokens(40, 200).costing(if priced { 2_500_000 } else { 0 });
    let nested = limiter.plan().is_some_and(|p| p.teams.is_some());
    let subjects: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
    let teams: Vec<String> = (0..10).map(|i| format!("team-{i}")).collect();
    let keys: Vec<String> = (0..10).map(|i| format!("kubernetes:key-{i}")).collect();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(seconds as usize * 1000)));
    let errors = Arc::new(Mutex::new(0u64));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for i in 0..seconds * 1000 {
        tick.tick().await;
        let (limiter, latencies, errors) = (limiter.clone(), latencies.clone(), errors.clone());
        let subject = subjects[i as usize % subjects.len()].clone();
        let (team, key) = match nested {
            true => (Some(teams[i as usize % 10].clone()), Some(keys[i as usize / 10 % 10].clone())),
            false => (None, None),
        };
        tasks.push(tokio::spawn(async move {
            let account = Account { subject: &subject, team: team.as_deref(), api_key: key.as_deref() };
            let started = Instant::now();
            let result = limiter.admit_reservation(account, reservation, i % 10 == 0).await;
            let took = started.elapsed();
            latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(took);
            match result {
                Ok(mut admission) if priced => admission.record_cost(1_000_000),
                Ok(mut admission) => admission.record_tokens(40, 0, 80),
                Err(_) => *errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += 1,
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = std::mem::take(&mut *latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    l.sort_unstable();
    println!(
        "{name}: {} decisions at 1000/s: p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}  refused/failed {}",
        l.len(),
        percentile(&l, 0.50),
        percentile(&l, 0.99),
        percentile(&l, 0.999),
        l.last().copied().unwrap_or_default(),
        errors.lock().map(|e| *e).unwrap_or(0),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = std::env::var("TENANTGATE_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let local = RateLimiter::new("bench-local", Some(&limits()), Store::Local(Arc::new(LocalStore::default())));
    run("in-process", Arc::new(local), seconds).await;
    let local =
        RateLimiter::new("bench-local-b", Some(&limits_with_budgets()), Store::Local(Arc::new(LocalStore::default())));
    run("in-process + budgets", Arc::new(local), seconds).await;
    let local =
        RateLimiter::of(plan_with_nested_budgets("bench-local-n"), Store::Local(Arc::new(LocalStore::default())));
    run("in-process + budgets + team and key budgets", Arc::new(local), seconds).await;
    let Ok(url) = std::env::var("TENANTGATE_REDIS_URL") else {
        eprintln!("TENANTGATE_REDIS_URL is not set: run under e2e/with-services for the Redis figures");
        std::process::exit(1);
    };
    let store =
        RedisStore::connect(&RedisEndpoint::new(url.clone(), None), RedisSettings::default()).expect("Redis store");
    let redis = Arc::new(RateLimiter::new("bench-redis", Some(&limits()), Store::Redis(store.clone())));
    // Warm up: connect and load the scripts.
    for _ in 0..100 {
        let _ = redis.admit_reservation("warmup", Reservation::default(), false).await;
    }
    run("redis", redis, seconds).await;
    let budgets = RateLimiter::new("bench-redis-b", Some(&limits_with_budgets()), Store::Redis(store.clone()));
    run("redis + budgets", Arc::new(budgets), seconds).await;
    let nested = RateLimiter::of(plan_with_nested_budgets("bench-redis-n"), Store::Redis(store));
    run("redis + budgets + team and key budgets", Arc::new(nested), seconds).await;
}
