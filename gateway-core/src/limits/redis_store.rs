//! Limits shared by every replica through Redis: one Lua script call (one
//! round trip, EVALSHA with the crate's NOSCRIPT fallback) per decision, on
//! Redis' clock, over one multiplexed connection that reconnects by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};

use super::decision::{N, Outcome, Outcomes, Verdict, verdict};
use super::health::Health;
use super::lease::{BUCKETS, Bucket, buckets, costs, grant, settlement, windows};
use super::plan::{Plan, Who};
use super::reserve::Charge;
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

/// What Redis granted of one bucket in a lease call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grant {
    /// Whether the bucket had what was needed.
    pub allowed: bool,
    /// Units granted (zero when refused).
    pub granted: u64,
    /// When refused: microseconds until the need would be granted.
    pub retry_us: f64,
    /// Units the shared bucket has left.
    pub remaining: u64,
    /// Microseconds until the shared bucket is full again.
    pub reset_us: f64,
}

/// Redis' answer to a lease call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeaseAnswer {
    /// Redis' clock, microseconds since the epoch.
    pub now_us: f64,
    /// The UTC day by Redis' clock.
    pub day: i64,
    /// Per bucket (`None`: not configured).
    pub grants: [Option<Grant>; BUCKETS],
    /// The stream slot (`None`: none wanted).
    pub slot: Option<Grant>,
}

impl LeaseAnswer {
    /// Seconds since the epoch by Redis' clock.
    pub fn at(&self) -> i64 {
        (self.now_us / 1e6).floor() as i64
    }

    /// The outcome of each check, in the order of [`super::decision::CHECKS`].
    pub fn outcomes(&self) -> Outcomes {
        let outcome = |g: &Grant| Outcome {
            allowed: g.allowed,
            retry_us: g.retry_us,
            remaining: g.remaining,
            reset_us: g.reset_us,
        };
        const _: () = assert!(N == BUCKETS + 1, "a check per bucket, then the stream slot");
        std::array::from_fn(|i| self.grants.get(i).copied().unwrap_or(self.slot).as_ref().map(outcome))
    }
}

/// The Redis limit store. Its `Debug` shows no URL: the URL may hold a password.
pub struct RedisStore {
    connection: ConnectionManager,
    renew: Script,
    lease: Script,
    give: Script,
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

impl RedisStore {
    /// A store for `endpoint`; connects lazily, so a gateway starts while Redis is down.
    pub fn connect(endpoint: &RedisEndpoint, settings: RedisSettings) -> Result<Arc<Self>, RedisConfigError> {
        let connection = endpoint.connection(Duration::from_millis(250).max(settings.timeout), settings.timeout)?;
        let store = Arc::new(Self {
            connection,
            renew: Script::new(include_str!("renew.lua")),
            lease: Script::new(include_str!("lease.lua")),
            give: Script::new(include_str!("give.lua")),
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

    /// One decision in Redis for a request costing one request and `charge`;
    /// `stream` takes a stream slot and returns its lease member.
    pub async fn admit(
        &self,
        plan: &Plan,
        who: &Who,
        charge: Charge,
        stream: bool,
    ) -> Result<(Verdict, Option<String>), StoreError> {
        if !self.health.should_try() {
            return Err(StoreError::Down);
        }
        let buckets = buckets(plan, who);
        let costs = costs(&buckets, charge).map(Option::unwrap_or_default);
        let max_streams = plan.max_streams.filter(|_| stream).unwrap_or(0);
        let member =
            (max_streams > 0).then(|| format!("{}:{}", self.replica, self.next_lease.fetch_add(1, Ordering::Relaxed)));
        let slot = member.as_deref().map(|m| (max_streams, m));
        let answer = self.lease(plan, who, &buckets, &costs, &costs, slot, "admit").await?;
        let v = verdict(plan, who, &answer.outcomes(), answer.at());
        let member = match (v, member) {
            (Verdict::Allowed { .. }, Some(m)) => {
                self.leases().insert(m.clone(), plan.keys.streams.clone());
                Some(m)
            }
            _ => None,
        };
        Ok((v, member))
    }

    /// Settles a reservation decided by [`Self::admit`] and frees its stream
    /// slot; errors are counted and logged by [`Health`].
    pub async fn settle(
        &self,
        plan: &Plan,
        who: &Who,
        reserved: Charge,
        actual: Charge,
        at: i64,
        lease: Option<String>,
    ) {
        if let Some(m) = &lease {
            self.leases().remove(m);
        }
        let buckets = buckets(plan, who);
        let amounts = settlement(&buckets, reserved, actual);
        if lease.is_none() && amounts.iter().all(|&a| a == 0) {
            return;
        }
        self.give(plan, who, &amounts, &windows(&buckets, at), lease.as_deref()).await;
    }

    /// The eleven keys of `lease.lua` and `give.lua`; a scope `who` does not
    /// count in names the tenant's key (its bucket is off, so it is not touched).
    fn bucket_keys(inv: &mut ScriptInvocation<'_>, plan: &Plan, who: &Who) {
        let k = &plan.keys;
        let (ur, ut, ud, ub) =
            who.user.as_ref().map_or((&k.requests, &k.tokens_per_minute, &k.tokens_per_day, &k.budget), |u| {
                (&u.requests, &u.tokens_per_minute, &u.tokens_per_day, &u.budget)
            });
        let team = who.team.as_ref().map_or(&k.budget, |t| &t.budget);
        let key = who.key.as_ref().map_or(&k.budget, |t| &t.budget);
        inv.key(&k.requests).key(ur).key(&k.tokens_per_minute).key(ut).key(&k.tokens_per_day).key(ud);
        inv.key(&k.budget).key(ub).key(team).key(key).key(&k.streams);
    }

    /// Takes `need` units of each configured bucket (or nothing at all), up
    /// to `want` when the bucket has them, and a stream slot `(max, member)`:
    /// see `lease.lua`. `call` labels it in the metrics.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn lease(
        &self,
        plan: &Plan,
        who: &Who,
        buckets: &[Option<Bucket>; BUCKETS],
        need: &[u64; BUCKETS],
        want: &[u64; BUCKETS],
        slot: Option<(u32, &str)>,
        call: &'static str,
    ) -> Result<LeaseAnswer, StoreError> {
        let mut inv = self.lease.prepare_invoke();
        Self::bucket_keys(&mut inv, plan, who);
        for (i, b) in buckets.iter().enumerate() {
            match b {
                Some(b @ Bucket { period: Some(p), .. }) => {
                    let (start, length) = p.fixed();
                    inv.arg(b.max).arg(p.code()).arg(need[i]).arg(want[i]).arg(start).arg(length)
                }
                Some(b) => inv.arg(b.a).arg(b.capacity).arg(need[i]).arg(want[i]).arg(0).arg(0),
                None => inv.arg(0).arg(0).arg(0).arg(0).arg(0).arg(0),
            };
        }
        let (max_streams, member) = slot.unwrap_or((0, ""));
        inv.arg(max_streams).arg(member).arg(self.settings.lease.as_millis() as u64);
        metrics::counter!("tenantgate_ratelimit_redis_calls_total", "call" => call).increment(1);
        let raw: Vec<i64> = self.call(&inv).await?;
        parse_lease(&raw)
    }

    /// Gives back (positive) or charges (negative) `amounts` of each bucket
    /// (the windowed amounts belong to `windows`) and frees stream slot
    /// `member`; whether Redis took them. Errors are counted by [`Health`].
    pub(super) async fn give(
        &self,
        plan: &Plan,
        who: &Who,
        amounts: &[i64; BUCKETS],
        windows: &[i64; BUCKETS],
        member: Option<&str>,
    ) -> bool {
        let mut inv = self.give.prepare_invoke();
        Self::bucket_keys(&mut inv, plan, who);
        for (i, b) in buckets(plan, who).iter().enumerate() {
            match b {
                Some(b @ Bucket { period: Some(_), .. }) => inv.arg(b.max).arg(amounts[i]).arg(windows[i]),
                Some(b) => inv.arg(b.a).arg(amounts[i]).arg(0),
                None => inv.arg(0).arg(0).arg(0),
            };
        }
        inv.arg(member.unwrap_or(""));
        metrics::counter!("tenantgate_ratelimit_redis_calls_total", "call" => "give").increment(1);
        match self.call::<i64>(&inv).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(error = %e, "giving rate limit units back failed");
                false
            }
        }
    }

    /// What budget `key` counts spent (and reserved, slices included) in window `window`.
    pub async fn spent(&self, key: &str, window: i64) -> Result<u64, StoreError> {
        let mut connection = self.connection.clone();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key).arg("d").arg("u");
        let query = cmd.query_async::<(Option<i64>, Option<u64>)>(&mut connection);
        let (w, u) = match tokio::time::timeout(self.settings.timeout, query).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(StoreError::Redis(e)),
            Err(_) => return Err(StoreError::Timeout(self.settings.timeout)),
        };
        Ok(if w == Some(window) { u.unwrap_or(0) } else { 0 })
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

fn parse_lease(raw: &[i64]) -> Result<LeaseAnswer, StoreError> {
    let want = 2 + 5 * (BUCKETS + 1);
    if raw.len() != want {
        return Err(StoreError::Protocol(format!("{} numbers instead of {want}", raw.len())));
    }
    let group = |i: usize| {
        let r = &raw[2 + 5 * i..7 + 5 * i];
        grant(r[0], r[1], r[2], r[3], r[4])
    };
    Ok(LeaseAnswer { now_us: raw[0] as f64, day: raw[1], grants: std::array::from_fn(group), slot: group(BUCKETS) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_script_answer() {
        let mut raw = vec![1_700_000_000_000_000, 20_000];
        raw.extend([1, 5, 0, 4, 1_000_000]);
        raw.extend([0, 0, 250_000, 0, 500_000]);
        for _ in 2..=BUCKETS {
            raw.extend([-1, 0, 0, 0, 0]);
        }
        let a = parse_lease(&raw).expect("parse");
        assert_eq!((a.day, a.at()), (20_000, 1_700_000_000));
        assert_eq!(a.grants[0].map(|g| (g.allowed, g.granted, g.remaining)), Some((true, 5, 4)));
        assert_eq!(a.grants[1].map(|g| (g.allowed, g.retry_us)), Some((false, 250_000.0)));
        assert!(a.grants[2..].iter().all(Option::is_none) && a.slot.is_none());
        let o = a.outcomes();
        assert_eq!(o[1].map(|o| o.allowed), Some(false));
        assert!(parse_lease(&raw[..7]).is_err());
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
