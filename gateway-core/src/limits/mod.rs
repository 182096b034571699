//! Rate limits and quotas: requests per minute with burst (GCRA), tokens per
//! minute and per UTC day (reserved up front, settled with the real usage),
//! and streams open at once, for the tenant and for each user. Shared by all
//! replicas through Redis when `storage.redisUrlFile` is set, in-process
//! otherwise, with the same semantics.
//!
//! A request calls [`RateLimiter::admit`] once and gets an [`Admission`];
//! dropping the admission settles its reservation and frees its stream slot,
//! so an early end or a client that goes away settles too. With Redis, most
//! requests are admitted from slices this replica leased ahead of need
//! ([`lease`]), without a round trip.

mod decision;
mod gcra;
mod headers;
mod health;
mod lease;
mod local;
mod plan;
mod redis_store;
mod reserve;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tenantgate_crds::config::GatewayConfig;
use tenantgate_crds::v1alpha1::{FailMode, Limits};

pub use decision::{Denial, LimitKind, Scope, Snapshot, Verdict, Window};
pub use gcra::{Check, Gcra};
pub use headers::go_duration;
pub use health::PROBE_INTERVAL;
pub use lease::{DAY_SHARE, HORIZON, IDLE, Leases, RATE_SHARE, SWEEP};
pub use local::LocalStore;
pub use plan::{Plan, UserKeys, default_burst};
pub use redis_store::{RedisSettings, RedisStore, StoreError};
pub use reserve::{BYTES_PER_TOKEN, DEFAULT_COMPLETION_RESERVE, Reservation};

use crate::llm::types::ChatRequest;
use crate::redis_client::{RedisConfigError, RedisEndpoint};

/// Per-user key names kept for this many recent subjects.
const USER_KEY_CACHE: usize = 10_000;

/// Where limit state lives.
#[derive(Clone, Debug)]
pub enum Store {
    /// This process (one replica).
    Local(Arc<LocalStore>),
    /// Redis, shared by every replica.
    Redis(Arc<RedisStore>),
}

/// Why a request was refused by the limits.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// A limit is reached.
    #[error("{}", denial_message(.0))]
    Exceeded(Denial),
    /// Redis is unreachable and `limits.failMode` is `closed`.
    #[error(
        "rate limits cannot be checked right now: the limit store is unreachable and this tenant's limits.failMode is closed; try again shortly"
    )]
    StoreUnavailable,
}

fn denial_message(d: &Denial) -> String {
    let scope = match d.scope {
        Scope::Tenant => "tenant",
        Scope::User => "user",
    };
    let what = match d.kind {
        LimitKind::Requests => "Rate limit reached for requests per minute",
        LimitKind::TokensPerMinute => "Rate limit reached for tokens per minute",
        LimitKind::TokensPerDay => "Quota reached for tokens per day",
        LimitKind::Streams => "Too many streams open at once",
    };
    format!("{what} ({scope} limit {}). Please try again in {}.", d.limit, go_duration(d.retry_after))
}

impl LimitError {
    /// HTTP status: 429, or 503 when the store is down and failing closed.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Exceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Reason for logs and metrics.
    pub fn as_reason(&self) -> &'static str {
        match self {
            Self::Exceeded(d) => match d.kind {
                LimitKind::Requests => "RateLimited",
                LimitKind::TokensPerMinute | LimitKind::TokensPerDay => "TokenQuotaExceeded",
                LimitKind::Streams => "TooManyStreams",
            },
            Self::StoreUnavailable => "LimitStoreUnavailable",
        }
    }

    /// When to try again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Exceeded(d) => d.retry_after,
            Self::StoreUnavailable => PROBE_INTERVAL,
        }
    }

    /// Adds the `x-ratelimit-*` headers of the decision.
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        if let Self::Exceeded(d) = self {
            headers::apply(&d.snapshot, headers);
        }
    }
}

#[derive(Debug)]
struct Enforced {
    plan: Arc<Plan>,
    store: Store,
    users: Option<quick_cache::sync::Cache<String, Arc<UserKeys>>>,
    /// This replica's slices of the shared buckets (Redis only).
    leases: Option<Arc<Leases>>,
}

/// The limits of one config over a store.
#[derive(Debug)]
pub struct RateLimiter(Option<Enforced>);

impl RateLimiter {
    /// Enforces `limits` of tenant `tenant` in `store`.
    pub fn new(tenant: &str, limits: Option<&Limits>, store: Store) -> Self {
        let Some(plan) = limits.and_then(|l| Plan::new(tenant, l)) else { return Self::unlimited() };
        if let Store::Redis(r) = &store {
            r.health.set_fail_open(plan.fail_mode == FailMode::Open);
        }
        let users = plan.user.map(|_| quick_cache::sync::Cache::new(USER_KEY_CACHE));
        let plan = Arc::new(plan);
        let leases = match &store {
            Store::Redis(r) => Some(Leases::new(plan.clone(), r.clone())),
            Store::Local(_) => None,
        };
        Self(Some(Enforced { plan, store, users, leases }))
    }

    /// No limits.
    pub fn unlimited() -> Self {
        Self(None)
    }

    /// Gives this replica's slices of the shared buckets back to Redis (at
    /// shutdown, after the last request), waiting at most `within`.
    pub async fn release(&self, within: Duration) {
        if let Some(leases) = self.0.as_ref().and_then(|e| e.leases.as_ref())
            && tokio::time::timeout(within, leases.release()).await.is_err()
        {
            tracing::warn!("rate limit slices not given back in time; they come back as the buckets refill");
        }
    }

    /// The compiled limits, if any.
    pub fn plan(&self) -> Option<&Plan> {
        self.0.as_ref().map(|e| &*e.plan)
    }

    /// Admits one chat request of `subject` (body of `body_len` bytes) or says which limit refuses it.
    pub async fn admit(&self, subject: &str, request: &ChatRequest, body_len: usize) -> Result<Admission, LimitError> {
        if self.0.is_none() {
            return Ok(Admission::default());
        }
        self.admit_reservation(subject, Reservation::of(request, body_len), request.stream).await
    }

    /// Admits a request reserving `reservation` tokens, and a stream slot when `stream`.
    pub async fn admit_reservation(
        &self,
        subject: &str,
        reservation: Reservation,
        stream: bool,
    ) -> Result<Admission, LimitError> {
        let Some(e) = &self.0 else { return Ok(Admission::default()) };
        let plan = &e.plan;
        let counts_tokens = plan.counts_tokens();
        let cost = if counts_tokens { reservation.total() } else { 0 };
        let user = e.users.as_ref().map(|cache| {
            cache.get(subject).unwrap_or_else(|| {
                let keys = Arc::new(plan.user_keys(subject));
                cache.insert(subject.to_owned(), keys.clone());
                keys
            })
        });
        let (verdict, lease) = match &e.store {
            Store::Local(local) => {
                let stream = stream && plan.max_streams.is_some();
                let v = local.admit(plan, user.as_ref().map(|u| &*u.subject), cost, stream);
                (Ok(v), stream.then_some(Lease::Local))
            }
            // A stream that needs a slot is decided in Redis (slots are not leased).
            Store::Redis(redis) if stream && plan.max_streams.is_some() => {
                match redis.admit(plan, user.as_deref(), cost, stream).await {
                    Ok((v, member)) => (Ok(v), member.map(Lease::Redis)),
                    Err(err) => (Err(err), None),
                }
            }
            Store::Redis(_) => match &e.leases {
                Some(leases) => (leases.admit(user.as_ref(), cost).await, None),
                None => unreachable!("a Redis store always has leases"),
            },
        };
        let leased = match (&lease, &e.leases) {
            (None, Some(leases)) => Some(leases.clone()),
            _ => None,
        };
        match verdict {
            Ok(Verdict::Allowed { snapshot, day }) => {
                let pending = (counts_tokens || lease.is_some()).then(|| Pending {
                    store: e.store.clone(),
                    leased,
                    plan: e.plan.clone(),
                    user,
                    reservation,
                    counts_tokens,
                    day,
                    lease,
                    usage: None,
                    events: None,
                });
                Ok(Admission { snapshot, pending })
            }
            Ok(Verdict::Denied(denial)) => {
                metrics::counter!("tenantgate_ratelimit_denied_total", "reason" => LimitError::Exceeded(denial).as_reason())
                    .increment(1);
                Err(LimitError::Exceeded(denial))
            }
            // Counted and logged once per outage by the store's health.
            Err(_) => match plan.fail_mode {
                FailMode::Open => Ok(Admission::default()),
                FailMode::Closed => Err(LimitError::StoreUnavailable),
            },
        }
    }
}

#[derive(Debug)]
enum Lease {
    Local,
    Redis(String),
}

#[derive(Debug)]
struct Pending {
    store: Store,
    /// Settles into this replica's slices (admitted from them).
    leased: Option<Arc<Leases>>,
    plan: Arc<Plan>,
    user: Option<Arc<UserKeys>>,
    reservation: Reservation,
    counts_tokens: bool,
    day: i64,
    lease: Option<Lease>,
    usage: Option<u64>,
    events: Option<u64>,
}

impl Pending {
    fn reserved(&self) -> u64 {
        if self.counts_tokens { self.reservation.total() } else { 0 }
    }

    /// The tokens to charge: the reported usage; for a stream without one,
    /// the prompt estimate plus one token per event received; otherwise the
    /// reservation.
    fn actual(&self) -> u64 {
        if !self.counts_tokens {
            return 0;
        }
        match (self.usage, self.events) {
            (Some(total), _) => total,
            (None, Some(events)) => self.reservation.prompt + events.min(self.reservation.completion),
            (None, None) => self.reservation.total(),
        }
    }

    fn finish(self) {
        let (reserved, actual) = (self.reserved(), self.actual());
        if let Some(leases) = &self.leased {
            if reserved != actual {
                leases.settle(self.user.as_ref(), reserved, actual, self.day);
            }
            return;
        }
        let subject = self.user.as_ref().map(|u| &*u.subject);
        match (&self.store, self.lease) {
            (Store::Local(local), lease) => {
                local.settle(&self.plan, subject, reserved, actual, self.day, lease.is_some());
            }
            (Store::Redis(redis), lease) => {
                let member = match lease {
                    Some(Lease::Redis(m)) => Some(m),
                    _ => None,
                };
                let (redis, plan, user, day) = (redis.clone(), self.plan, self.user, self.day);
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(
                            async move { redis.settle(&plan, user.as_deref(), reserved, actual, day, member).await },
                        );
                    }
                    Err(_) => tracing::warn!("no runtime to settle a rate limit reservation on; its lease will expire"),
                }
            }
        }
    }
}

/// What a request was admitted with. Record the usage on it; dropping it
/// settles the reservation and frees the stream slot.
#[derive(Debug, Default)]
pub struct Admission {
    snapshot: Snapshot,
    pending: Option<Pending>,
}

impl Admission {
    /// The decision's limits, for headers.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Adds the `x-ratelimit-*` headers.
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        headers::apply(&self.snapshot, headers);
    }

    /// The upstream reported `total` tokens (prompt plus completion).
    pub fn record_usage(&mut self, total: u64) {
        if let Some(p) = &mut self.pending {
            p.usage = Some(total);
        }
    }

    /// `n` streamed events reached the client (counted when no usage arrives).
    pub fn record_events(&mut self, n: u64) {
        if let Some(p) = &mut self.pending {
            p.events = Some(p.events.unwrap_or(0) + n);
        }
    }

    /// Marks this admission as a stream that has started (no events yet).
    pub fn record_stream_start(&mut self) {
        if let Some(p) = &mut self.pending {
            p.events.get_or_insert(0);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.finish();
        }
    }
}

/// The limit store carried across config reloads: the Redis connection is
/// kept while the URL stays the same, the in-process state while there is none.
#[derive(Default)]
pub struct LimitStores {
    /// SHA-256 of the Redis URL and CA (never the URL: it may hold a password), and the store.
    current: Mutex<Option<(Option<[u8; 32]>, Store)>>,
    settings: RedisSettings,
}

impl std::fmt::Debug for LimitStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitStores").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Longest a new Redis store waits for its first connection before the limiter serves.
const WARM_UP: Duration = Duration::from_secs(1);

impl LimitStores {
    /// Stores connecting to Redis with `settings`.
    pub fn new(settings: RedisSettings) -> Self {
        Self { current: Mutex::new(None), settings }
    }

    /// The limiter of `config`, over the carried store when its Redis URL did not change.
    pub async fn limiter(&self, config: &GatewayConfig) -> Result<RateLimiter, RedisConfigError> {
        let Some(limits) = config.limits.as_ref().filter(|l| Plan::new(&config.tenant.name, l).is_some()) else {
            return Ok(RateLimiter::unlimited());
        };
        let endpoint = RedisEndpoint::from_config(&config.storage)?;
        let fingerprint = endpoint.as_ref().map(RedisEndpoint::fingerprint);
        let (store, fresh) = {
            let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match current.as_ref() {
                Some((f, store)) if *f == fingerprint => (store.clone(), false),
                _ => {
                    let store = match &endpoint {
                        None => Store::Local(Arc::new(LocalStore::default())),
                        Some(endpoint) => Store::Redis(RedisStore::connect(endpoint, self.settings)?),
                    };
                    *current = Some((fingerprint, store.clone()));
                    (store, true)
                }
            }
        };
        let limiter = RateLimiter::new(&config.tenant.name, Some(limits), store.clone());
        // A new Redis connection is made before the limiter serves (after the
        // fail mode is known, for the log line): its TLS handshake must not
        // eat the first decisions' time budget.
        if let (true, Store::Redis(redis)) = (fresh, &store) {
            redis.warm_up(WARM_UP).await;
        }
        Ok(limiter)
    }
}

#[cfg(test)]
mod tests {
    use tenantgate_crds::v1alpha1::UserLimits;

    use super::*;

    fn limiter(limits: Limits) -> (RateLimiter, Arc<LocalStore>) {
        let local = Arc::new(LocalStore::default());
        (RateLimiter::new("t", Some(&limits), Store::Local(local.clone())), local)
    }

    fn res(prompt: u64, completion: u64) -> Reservation {
        Reservation { prompt, completion }
    }

    #[tokio::test]
    async fn dropping_an_admission_settles_with_the_recorded_usage() {
        let (l, _) = limiter(Limits { tokens_per_minute: Some(1_000), ..Default::default() });
        let mut a = l.admit_reservation("u", res(100, 800), false).await.expect("admitted");
        assert_eq!(a.snapshot().tokens.map(|w| w.remaining), Some(100));
        assert!(l.admit_reservation("u", res(100, 100), false).await.is_err());
        a.record_usage(150);
        drop(a);
        // 850 came back.
        let b = l.admit_reservation("u", res(100, 700), false).await.expect("admitted after settling");
        assert_eq!(b.snapshot().tokens.map(|w| w.remaining), Some(50));
    }

    #[tokio::test]
    async fn a_stream_cut_early_settles_with_what_it_sent() {
        let (l, _) = limiter(Limits { tokens_per_day: Some(1_000), ..Default::default() });
        let mut a = l.admit_reservation("u", res(10, 500), true).await.expect("admitted");
        a.record_stream_start();
        a.record_events(2);
        a.record_events(3);
        drop(a);
        let b = l.admit_reservation("u", res(0, 1), false).await.expect("admitted");
        // 10 prompt + 5 events charged, 1 reserved now.
        assert_eq!(b.snapshot().tokens.map(|w| w.remaining), Some(1_000 - 15 - 1));
    }

    #[tokio::test]
    async fn stream_slots_free_when_the_admission_drops() {
        let (l, local) = limiter(Limits { max_concurrent_streams: Some(1), ..Default::default() });
        let a = l.admit_reservation("u", res(0, 0), true).await.expect("first stream");
        let e = l.admit_reservation("u", res(0, 0), true).await.expect_err("second stream");
        assert_eq!(e.as_reason(), "TooManyStreams");
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        drop(a);
        assert_eq!(local.open_streams(), 0);
        let _b = l.admit_reservation("u", res(0, 0), true).await.expect("slot is free again");
    }

    #[tokio::test]
    async fn denials_name_the_limit_and_carry_headers() {
        let (l, _) = limiter(Limits {
            per_user: Some(UserLimits { requests_per_minute: Some(60), burst: Some(1), ..Default::default() }),
            ..Default::default()
        });
        let _a = l.admit_reservation("alice", res(0, 0), false).await.expect("first");
        let e = l.admit_reservation("alice", res(0, 0), false).await.expect_err("second");
        let message = e.to_string();
        assert!(
            message.starts_with("Rate limit reached for requests per minute (user limit 60). Please try again in "),
            "{message}"
        );
        let mut h = HeaderMap::new();
        e.apply_headers(&mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        // Another user is not affected.
        l.admit_reservation("bob", res(0, 0), false).await.expect("bob");
    }

    #[tokio::test]
    async fn a_config_without_limits_admits_everything_for_free() {
        let l = RateLimiter::unlimited();
        for _ in 0..1000 {
            let a = l.admit_reservation("u", res(1_000_000, 0), true).await.expect("unlimited");
            assert_eq!(a.snapshot(), &Snapshot::default());
        }
    }
}
