//! Limits shared by every replica through Redis: one Lua script call (one
//! round trip, EVALSHA with the crate's NOSCRIPT fallback) per decision, on
//! Redis' clock, over one multiplexed connection that reconnects by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};

use super::decision::{Outcome, Verdict, verdict};
use super::gcra::Gcra;
use super::health::Health;
use super::plan::{Plan, ScopeLimits, UserKeys};
use crate::redis_client::{RedisConfigError, RedisEndpoint};

/// How the store talks to Redis.
#[derive(Clone, Copy, Debug)]
pub struct RedisSettings {
    /// Longest a decision waits for Redis before taking the fail mode.
    pub timeout: Duration,
    /// How long a stream slot outlives the replica holding it (it renews
    /// every third of this while the stream is open).
    pub lease: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self { timeout: Duration::from_millis(100), lease: Duration::from_secs(30) }
    }
}

/// Why Redis did not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Down, and this request was not the probe.
    #[error("the limit store is down")]
    Down,
    /// No answer in time.
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    /// Connection or script error.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// An answer of the wrong shape (a script of another version?).
    #[error("unexpected answer from the limit script: {0}")]
    Protocol(String),
}

/// The Redis limit store. Its `Debug` shows no URL: the URL may hold a password.
pub struct RedisStore {
    connection: ConnectionManager,
    admit: Script,
    settle: Script,
    renew: Script,
    /// Up/down state, metrics and the outage log line.
    pub health: Health,
    settings: RedisSettings,
    replica: String,
    next_lease: AtomicU64,
    /// Stream leases held by this replica: member -> sorted-set key.
    leases: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("replica", &self.replica).field("up", &self.health.is_up()).finish()
    }
}

fn bucket(g: Option<Gcra>) -> (f64, u64) {
    g.map_or((0.0, 0), |g| (g.interval_us, g.capacity))
}

fn tokens_args(inv: &mut ScriptInvocation<'_>, tenant: &ScopeLimits, user: Option<&ScopeLimits>) {
    for g in [tenant.tokens_per_minute, user.and_then(|u| u.tokens_per_minute)] {
        let (interval, capacity) = bucket(g);
        inv.arg(interval).arg(capacity);
    }
    inv.arg(tenant.tokens_per_day.unwrap_or(0)).arg(user.and_then(|u| u.tokens_per_day).unwrap_or(0));
}

impl RedisStore {
    /// A store for `endpoint`; connects lazily, so a gateway starts while Redis is down.
    pub fn connect(endpoint: &RedisEndpoint, settings: RedisSettings) -> Result<Arc<Self>, RedisConfigError> {
        let connection = endpoint.connection(Duration::from_millis(250).max(settings.timeout), settings.timeout)?;
        let store = Arc::new(Self {
            connection,
            admit: Script::new(include_str!("admit.lua")),
            settle: Script::new(include_str!("settle.lua")),
            renew: Script::new(include_str!("renew.lua")),
            health: Health::default(),
            settings,
            replica: format!("{:016x}", fastrand::u64(..)),
            next_lease: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
        });
        tokio::spawn(renew_leases(Arc::downgrade(&store), settings.lease / 3));
        Ok(store)
    }

    /// Makes the first connection now (waiting at most `within`) and records
    /// the outcome in [`Self::health`]: a failure starts an outage whose log
    /// line gives the cause, e.g. a TLS certificate the CA did not sign.
    pub async fn warm_up(&self, within: Duration) {
        match crate::redis_client::warm_up(self.connection.clone(), within).await {
            Ok(()) => self.health.record_ok(),
            Err(e) => self.health.record_error(&e),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn call<T: redis::FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        let result = match tokio::time::timeout(self.settings.timeout, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(self.settings.timeout)),
        };
        match &result {
            Ok(_) => self.health.record_ok(),
            Err(e) => self.health.record_error(e),
        }
        result
    }

    /// One decision; `stream` takes a slot and returns its lease member.
    pub async fn admit(
        &self,
        plan: &Plan,
        user: Option<&UserKeys>,
        cost: u64,
        stream: bool,
    ) -> Result<(Verdict, Option<String>), StoreError> {
        if !self.health.should_try() {
            return Err(StoreError::Down);
        }
        let k = &plan.keys;
        let user_limits = plan.user.as_ref().filter(|_| user.is_some());
        let (ur, ut, ud) = user.map_or((&k.requests, &k.tokens_per_minute, &k.tokens_per_day), |u| {
            (&u.requests, &u.tokens_per_minute, &u.tokens_per_day)
        });
        let max_streams = plan.max_streams.filter(|_| stream).unwrap_or(0);
        let member =
            (max_streams > 0).then(|| format!("{}:{}", self.replica, self.next_lease.fetch_add(1, Ordering::Relaxed)));
        let mut inv = self.admit.prepare_invoke();
        inv.key(&k.requests).key(ur).key(&k.tokens_per_minute).key(ut).key(&k.tokens_per_day).key(ud).key(&k.streams);
        for g in [plan.tenant.requests, user_limits.and_then(|u| u.requests)] {
            let (interval, capacity) = bucket(g);
            inv.arg(interval).arg(capacity);
        }
        tokens_args(&mut inv, &plan.tenant, user_limits);
        inv.arg(cost).arg(max_streams).arg(member.as_deref().unwrap_or("")).arg(self.settings.lease.as_millis() as u64);
        let raw: Vec<i64> = self.call(&inv).await?;
        let (day, outcomes) = parse(&raw)?;
        let v = verdict(plan, &outcomes, day);
        let member = match (v, member) {
            (Verdict::Allowed { .. }, Some(m)) => {
                self.leases().insert(m.clone(), k.streams.clone());
                Some(m)
            }
            _ => None,
        };
        Ok((v, member))
    }

    /// Settles a reservation and frees a lease; errors are counted and logged by [`Health`].
    pub async fn settle(
        &self,
        plan: &Plan,
        user: Option<&UserKeys>,
        reserved: u64,
        actual: u64,
        day: i64,
        lease: Option<String>,
    ) {
        if let Some(m) = &lease {
            self.leases().remove(m);
        }
        if lease.is_none() && (reserved == actual || !plan.counts_tokens()) {
            return;
        }
        let k = &plan.keys;
        let user_limits = plan.user.as_ref().filter(|_| user.is_some());
        let (ut, ud) =
            user.map_or((&k.tokens_per_minute, &k.tokens_per_day), |u| (&u.tokens_per_minute, &u.tokens_per_day));
        let mut inv = self.settle.prepare_invoke();
        inv.key(&k.tokens_per_minute).key(ut).key(&k.tokens_per_day).key(ud).key(&k.streams);
        tokens_args(&mut inv, &plan.tenant, user_limits);
        inv.arg(reserved).arg(actual).arg(day).arg(lease.as_deref().unwrap_or(""));
        if let Err(e) = self.call::<i64>(&inv).await {
            tracing::debug!(error = %e, "settling a rate limit reservation failed");
        }
    }

    /// Stream leases this replica holds.
    pub fn held_leases(&self) -> usize {
        self.leases().len()
    }

    async fn renew_once(&self) {
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        for (member, key) in self.leases().iter() {
            by_key.entry(key.clone()).or_default().push(member.clone());
        }
        for (key, members) in by_key {
            let mut inv = self.renew.prepare_invoke();
            inv.key(key).arg(self.settings.lease.as_millis() as u64);
            for m in members {
                inv.arg(m);
            }
            if let Err(e) = self.call::<i64>(&inv).await {
                tracing::debug!(error = %e, "renewing stream leases failed");
            }
        }
    }
}

/// Keeps this replica's stream leases alive while the store exists.
async fn renew_leases(store: Weak<RedisStore>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        if store.held_leases() > 0 {
            store.renew_once().await;
        }
    }
}

fn parse(raw: &[i64]) -> Result<(i64, [Option<Outcome>; 7]), StoreError> {
    if raw.len() != 1 + 4 * 7 {
        return Err(StoreError::Protocol(format!("{} numbers instead of 29", raw.len())));
    }
    let mut outcomes = [None; 7];
    for (i, o) in outcomes.iter_mut().enumerate() {
        let r = &raw[1 + 4 * i..5 + 4 * i];
        if r[0] >= 0 {
            *o = Some(Outcome {
                allowed: r[0] == 1,
                retry_us: r[1] as f64,
                remaining: r[2].max(0) as u64,
                reset_us: r[3] as f64,
            });
        }
    }
    Ok((raw[0], outcomes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_script_answer() {
        let mut raw = vec![20_000];
        raw.extend([1, 0, 4, 1_000_000]);
        raw.extend([0, 250_000, 0, 500_000]);
        for _ in 2..7 {
            raw.extend([-1, 0, 0, 0]);
        }
        let (day, o) = parse(&raw).expect("parse");
        assert_eq!(day, 20_000);
        assert_eq!(o[0].map(|o| (o.allowed, o.remaining)), Some((true, 4)));
        assert_eq!(o[1].map(|o| (o.allowed, o.retry_us)), Some((false, 250_000.0)));
        assert!(o[2..].iter().all(Option::is_none));
        assert!(parse(&raw[..5]).is_err());
    }

    #[test]
    fn the_url_is_not_echoed_in_errors() {
        let e = match RedisStore::connect(&RedisEndpoint::new("redis://:hunter2@[::1", None), RedisSettings::default())
        {
            Err(e) => e,
            Ok(_) => panic!("a broken URL was accepted"),
        };
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
