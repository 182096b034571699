//! Rate limits, quotas and budgets: requests per minute with burst (GCRA),
//! tokens per minute and per UTC day, and spend per UTC day or month (both
//! reserved up front, settled with the real usage), and streams open at once,
//! for the tenant and for each user. Shared by all replicas through Redis
//! when `storage.redisUrlFile` is set, in-process otherwise, with the same
//! semantics.
//!
//! A request calls [`RateLimiter::admit`] once and gets an [`Admission`];
//! dropping the admission settles its reservation and frees its stream slot,
//! so an early end or a client that goes away settles too. With Redis, most
//! requests are admitted from slices this replica leased ahead of need
//! ([`lease`]), without a round trip.

pub mod alerts;
mod decision;
mod gcra;
mod headers;
mod health;
mod lease;
mod local;
mod period;
mod plan;
mod redis_store;
mod reserve;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tenantgate_crds::config::GatewayConfig;
use tenantgate_crds::pricing::{Rates, format_nanos};
use tenantgate_crds::v1alpha1::{FailMode, Limits};

pub use decision::{Denial, LimitKind, Scope, Snapshot, Verdict, Window};
pub use gcra::{Check, Gcra};
pub use headers::go_duration;
pub use health::PROBE_INTERVAL;
pub use lease::{DAY_SHARE, HORIZON, IDLE, Leases, RATE_SHARE, SWEEP};
pub use local::LocalStore;
pub use period::Period;
pub use plan::{BudgetKeys, BudgetLimit, Plan, TeamBudgets, UserKeys, Who, default_burst};
pub use redis_store::{RedisSettings, RedisStore, StoreError};
pub use reserve::{BYTES_PER_TOKEN, Charge, DEFAULT_COMPLETION_RESERVE, Reservation};

use crate::llm::types::{ChatRequest, Usage};
use crate::redis_client::{RedisConfigError, RedisEndpoint};

/// Per-user (per-team) key names kept for this many recent subjects (teams).
const USER_KEY_CACHE: usize = 10_000;

/// Whom a request is charged to: its subject, and its team and API key when it has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account<'a> {
    /// The subject (`sub`, or the API key's subject).
    pub subject: &'a str,
    /// The team.
    pub team: Option<&'a str>,
    /// The API key's id (`kubernetes:<name>` for an ApiKey object).
    pub api_key: Option<&'a str>,
}

impl<'a> From<&'a str> for Account<'a> {
    /// A subject without a team or key.
    fn from(subject: &'a str) -> Self {
        Self { subject, team: None, api_key: None }
    }
}

impl<'a> From<&'a String> for Account<'a> {
    /// A subject without a team or key.
    fn from(subject: &'a String) -> Self {
        Self::from(subject.as_str())
    }
}

impl<'a> From<&'a crate::auth::Identity> for Account<'a> {
    fn from(id: &'a crate::auth::Identity) -> Self {
        Self { subject: &id.subject, team: id.team.as_deref(), api_key: id.api_key.as_deref() }
    }
}

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
    Exceeded(Box<Denial>),
    /// A budget has less left than the request may cost.
    #[error("{}", budget_message(.denial, .currency))]
    Budget {
        /// Which budget, and what it had left.
        denial: Box<Denial>,
        /// The tenant's currency.
        currency: Arc<str>,
    },
    /// The tenant has budgets and a target of the model has no price: its
    /// requests could not be charged.
    #[error(
        "model {model:?} cannot be used under this tenant's budgets: {unpriced}; ask the platform team to price it (a ModelPrice or the target's price) in {currency}"
    )]
    Unpriced {
        /// The model asked for.
        model: String,
        /// What is unpriced.
        unpriced: &'static str,
        /// The tenant's currency.
        currency: Arc<str>,
    },
    /// Redis is unreachable and `limits.failMode` is `closed`.
    #[error(
        "rate limits cannot be checked right now: the limit store is unreachable and this tenant's limits.failMode is closed; try again shortly"
    )]
    StoreUnavailable,
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Tenant => "tenant",
        Scope::User => "user",
        Scope::Team => "team",
        Scope::Key => "apiKey",
    }
}

fn denial_message(d: &Denial) -> String {
    let what = match d.kind {
        LimitKind::Requests => "Rate limit reached for requests per minute",
        LimitKind::TokensPerMinute => "Rate limit reached for tokens per minute",
        LimitKind::TokensPerDay => "Quota reached for tokens per day",
        LimitKind::Budget => "Budget reached",
        LimitKind::Streams => "Too many streams open at once",
    };
    let scope = scope_name(d.scope);
    format!("{what} ({scope} limit {}). Please try again in {}.", d.limit, go_duration(d.retry_after))
}

fn budget_message(d: &Denial, currency: &str) -> String {
    let per = d.period.unwrap_or(Period::Month).describe();
    let (limit, left) = (format_nanos(d.limit as i64), format_nanos(d.remaining as i64));
    let whose = match d.scope {
        Scope::Tenant => "tenant",
        Scope::User => "user",
        Scope::Team => "team",
        Scope::Key => "API key",
    };
    format!(
        "The {whose} budget of {limit} {currency} per {per} has {left} {currency} left, less than this request may cost. It resets in {}.",
        go_duration(d.retry_after)
    )
}

impl LimitError {
    /// HTTP status: 429; 402 for a budget; 403 for a model that cannot be
    /// charged; 503 when the store is down and failing closed.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Exceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Budget { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::Unpriced { .. } => StatusCode::FORBIDDEN,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Reason for logs and metrics.
    pub fn as_reason(&self) -> &'static str {
        match self {
            Self::Exceeded(d) => match d.kind {
                LimitKind::Requests => "RateLimited",
                LimitKind::TokensPerMinute | LimitKind::TokensPerDay => "TokenQuotaExceeded",
                LimitKind::Budget => "BudgetExceeded",
                LimitKind::Streams => "TooManyStreams",
            },
            Self::Budget { .. } => "BudgetExceeded",
            Self::Unpriced { .. } => "ModelUnpriced",
            Self::StoreUnavailable => "LimitStoreUnavailable",
        }
    }

    /// When to try again (`None`: not by waiting).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Exceeded(d) | Self::Budget { denial: d, .. } => Some(d.retry_after),
            Self::Unpriced { .. } => None,
            Self::StoreUnavailable => Some(PROBE_INTERVAL),
        }
    }

    /// Adds the `x-ratelimit-*` and `x-budget-*` headers of the decision.
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        match self {
            Self::Exceeded(d) => headers::apply(&d.snapshot, headers),
            Self::Budget { denial, .. } => {
                headers::apply(&denial.snapshot, headers);
                headers::budget_scope(scope_name(denial.scope), headers);
            }
            Self::Unpriced { .. } | Self::StoreUnavailable => {}
        }
    }
}

#[derive(Debug)]
struct Enforced {
    plan: Arc<Plan>,
    /// The tenant's currency, for budget messages.
    currency: Arc<str>,
    store: Store,
    users: Option<quick_cache::sync::Cache<String, Arc<UserKeys>>>,
    /// Keys of teams under the default team budget (listed teams are in the plan).
    teams: Option<quick_cache::sync::Cache<String, Arc<BudgetKeys>>>,
    /// This replica's slices of the shared buckets (Redis only).
    leases: Option<Arc<Leases>>,
}

/// The limits of one config over a store.
#[derive(Debug)]
pub struct RateLimiter(Option<Enforced>);

impl RateLimiter {
    /// Enforces `limits` of tenant `tenant` in `store`.
    pub fn new(tenant: &str, limits: Option<&Limits>, store: Store) -> Self {
        Self::of(limits.and_then(|l| Plan::new(tenant, l)), store)
    }

    /// Enforces `plan` (`None`: nothing is limited) in `store`.
    pub fn of(plan: Option<Plan>, store: Store) -> Self {
        let Some(plan) = plan else { return Self::unlimited() };
        if let Store::Redis(r) = &store {
            r.health.set_fail_open(plan.fail_mode == FailMode::Open);
        }
        let users = plan.user.map(|_| quick_cache::sync::Cache::new(USER_KEY_CACHE));
        let teams = plan.teams.as_ref().and_then(|t| t.default).map(|_| quick_cache::sync::Cache::new(USER_KEY_CACHE));
        let plan = Arc::new(plan);
        let leases = match &store {
            Store::Redis(r) => Some(Leases::new(plan.clone(), r.clone())),
            Store::Local(_) => None,
        };
        Self(Some(Enforced { plan, store, users, teams, leases, currency: "".into() }))
    }

    /// Names budgets in `currency` (the tenant's).
    pub fn with_currency(mut self, currency: &str) -> Self {
        if let Some(e) = &mut self.0 {
            e.currency = currency.into();
        }
        self
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

    /// Admits one chat request of `subject` (body of `body_len` bytes) to a
    /// model whose targets' worst rates are `worst` (`None`: a target has no
    /// price), or says which limit refuses it.
    pub async fn admit(
        &self,
        account: impl Into<Account<'_>>,
        request: &ChatRequest,
        body_len: usize,
        worst: Option<&Rates>,
    ) -> Result<Admission, LimitError> {
        if self.0.is_none() {
            return Ok(Admission::default());
        }
        let account = account.into();
        let reservation = self.price(account, Reservation::of(request, body_len), worst, &request.model)?;
        self.admit_reservation(account, reservation, request.stream).await
    }

    /// `reservation` with its worst-case cost at `worst` when a budget applies
    /// to `account`'s requests; refused when one does and a target of `model`
    /// has no price. (A budget on one API key or team does not stop the
    /// tenant's other callers from using unpriced models.)
    pub fn price<'a>(
        &self,
        account: impl Into<Account<'a>>,
        reservation: Reservation,
        worst: Option<&Rates>,
        model: &str,
    ) -> Result<Reservation, LimitError> {
        let account = account.into();
        let Some(e) = self.0.as_ref().filter(|e| e.charges(account)) else { return Ok(reservation) };
        match worst {
            Some(rates) => Ok(reservation.priced(rates)),
            None => Err(LimitError::Unpriced {
                model: model.to_owned(),
                unpriced: "one of its targets has no price",
                currency: e.currency.clone(),
            }),
        }
    }

    /// Admits a request reserving `reservation` tokens, and a stream slot when `stream`.
    pub async fn admit_reservation(
        &self,
        account: impl Into<Account<'_>>,
        reservation: Reservation,
        stream: bool,
    ) -> Result<Admission, LimitError> {
        let Some(e) = &self.0 else { return Ok(Admission::default()) };
        let account = account.into();
        let plan = &e.plan;
        let counts_tokens = plan.counts_tokens();
        let counts_cost = plan.counts_cost();
        let charge = Charge {
            tokens: if counts_tokens { reservation.total() } else { 0 },
            nanos: if counts_cost { reservation.cost } else { 0 },
        };
        let who = e.who(account);
        let (verdict, lease) = match &e.store {
            Store::Local(local) => {
                let stream = stream && plan.max_streams.is_some();
                let v = local.admit(plan, &who, charge, stream);
                (Ok(v), stream.then_some(Lease::Local))
            }
            // A stream that needs a slot is decided in Redis (slots are not leased).
            Store::Redis(redis) if stream && plan.max_streams.is_some() => {
                match redis.admit(plan, &who, charge, stream).await {
                    Ok((v, member)) => (Ok(v), member.map(Lease::Redis)),
                    Err(err) => (Err(err), None),
                }
            }
            Store::Redis(_) => match &e.leases {
                Some(leases) => (leases.admit(&who, charge).await, None),
                None => unreachable!("a Redis store always has leases"),
            },
        };
        let leased = match (&lease, &e.leases) {
            (None, Some(leases)) => Some(leases.clone()),
            _ => None,
        };
        match verdict {
            Ok(Verdict::Allowed { snapshot, at }) => {
                let pending = (counts_tokens || counts_cost || lease.is_some()).then(|| Pending {
                    store: e.store.clone(),
                    leased,
                    plan: e.plan.clone(),
                    who,
                    reservation,
                    counts_tokens,
                    counts_cost,
                    at,
                    lease,
                    usage: None,
                    events: None,
                    rates: None,
                });
                Ok(Admission { snapshot, pending })
            }
            Ok(Verdict::Denied(denial)) => {
                let error = match denial.kind {
                    LimitKind::Budget => LimitError::Budget { denial: Box::new(denial), currency: e.currency.clone() },
                    _ => LimitError::Exceeded(Box::new(denial)),
                };
                metrics::counter!("tenantgate_ratelimit_denied_total", "reason" => error.as_reason()).increment(1);
                Err(error)
            }
            // Counted and logged once per outage by the store's health.
            Err(_) => match plan.fail_mode {
                FailMode::Open => Ok(Admission::default()),
                FailMode::Closed => Err(LimitError::StoreUnavailable),
            },
        }
    }
}

impl Enforced {
    /// Whether any budget applies to `account`'s requests.
    fn charges(&self, account: Account<'_>) -> bool {
        let plan = &self.plan;
        let team =
            plan.teams.as_ref().zip(account.team).is_some_and(|(t, n)| t.default.is_some() || t.named.contains_key(n));
        let key = account.api_key.is_some_and(|k| plan.key_budgets.contains_key(k));
        plan.tenant.budget.is_some() || plan.user.is_some_and(|u| u.budget.is_some()) || team || key
    }

    /// The scopes below the tenant that `account`'s requests count in.
    fn who(&self, account: Account<'_>) -> Who {
        let plan = &self.plan;
        let user = self.users.as_ref().map(|cache| {
            cache.get(account.subject).unwrap_or_else(|| {
                let keys = Arc::new(plan.user_keys(account.subject));
                cache.insert(account.subject.to_owned(), keys.clone());
                keys
            })
        });
        let team = account.team.and_then(|team| match plan.teams.as_ref()?.named.get(team) {
            Some(keys) => Some(keys.clone()),
            None => {
                let cache = self.teams.as_ref()?;
                Some(cache.get(team).unwrap_or_else(|| {
                    let keys = plan.team_keys(team).expect("a default team budget (it has a cache)");
                    cache.insert(team.to_owned(), keys.clone());
                    keys
                }))
            }
        });
        let key = account.api_key.and_then(|k| plan.key_budgets.get(k).cloned());
        Who { user, team, key }
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
    who: Who,
    reservation: Reservation,
    counts_tokens: bool,
    counts_cost: bool,
    /// When it was admitted (seconds since the epoch, by the store's clock).
    at: i64,
    lease: Option<Lease>,
    /// What the reply used, when it said.
    usage: Option<Charge>,
    events: Option<u64>,
    /// The rates of the target that answered.
    rates: Option<Rates>,
}

impl Pending {
    fn reserved(&self) -> Charge {
        Charge {
            tokens: if self.counts_tokens { self.reservation.total() } else { 0 },
            nanos: if self.counts_cost { self.reservation.cost } else { 0 },
        }
    }

    /// What to charge: the reported usage (at the answering target's price);
    /// for a stream without one, the prompt estimate plus one token per event
    /// received; otherwise the reservation.
    fn actual(&self) -> Charge {
        let r = &self.reservation;
        let actual = match (self.usage, self.events) {
            (Some(usage), _) => usage,
            (None, Some(events)) => {
                let completion = events.min(r.completion);
                let nanos = self.rates.map_or(r.cost, |rates| reserve::cost(&rates, r.prompt, 0, completion));
                Charge { tokens: r.prompt + completion, nanos }
            }
            (None, None) => Charge { tokens: r.total(), nanos: r.cost },
        };
        Charge {
            tokens: if self.counts_tokens { actual.tokens } else { 0 },
            nanos: if self.counts_cost { actual.nanos } else { 0 },
        }
    }

    fn finish(self) {
        let (reserved, actual) = (self.reserved(), self.actual());
        if let Some(leases) = &self.leased {
            if reserved != actual {
                leases.settle(&self.who, reserved, actual, self.at);
            }
            return;
        }
        match (&self.store, self.lease) {
            (Store::Local(local), lease) => {
                local.settle(&self.plan, &self.who, reserved, actual, self.at, lease.is_some());
            }
            (Store::Redis(redis), lease) => {
                let member = match lease {
                    Some(Lease::Redis(m)) => Some(m),
                    _ => None,
                };
                let (redis, plan, who, at) = (redis.clone(), self.plan, self.who, self.at);
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move { redis.settle(&plan, &who, reserved, actual, at, member).await });
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

    /// Adds the `x-ratelimit-*` and `x-budget-*` headers.
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        headers::apply(&self.snapshot, headers);
    }

    /// The target that answered charges `rates` (`None`: no price).
    pub fn answered_at(&mut self, rates: Option<&Rates>) {
        if let Some(p) = &mut self.pending {
            p.rates = rates.copied();
        }
    }

    /// The upstream reported `usage`: charged at the answering target's rates.
    pub fn record_usage(&mut self, usage: &Usage) {
        let cached = usage.prompt_tokens_details.cached_tokens;
        self.record_tokens(usage.prompt_tokens, cached, usage.completion_tokens);
    }

    /// The upstream reported `prompt` input tokens (`cached` of them from a
    /// cache) and `completion` output tokens.
    pub fn record_tokens(&mut self, prompt: u64, cached: u64, completion: u64) {
        if let Some(p) = &mut self.pending {
            let nanos = p.rates.map_or(p.reservation.cost, |r| reserve::cost(&r, prompt, cached, completion));
            p.usage = Some(Charge { tokens: prompt + completion, nanos });
        }
    }

    /// The request cost `nanos` (a fixed price: an MCP tool call's).
    pub fn record_cost(&mut self, nanos: u64) {
        if let Some(p) = &mut self.pending {
            p.usage = Some(Charge { tokens: 0, nanos });
        }
    }

    /// No target answered: nothing is charged.
    pub fn record_failure(&mut self) {
        if let Some(p) = &mut self.pending {
            p.usage = Some(Charge::default());
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

/// A budget as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetState {
    /// The tenant's, a user's, a team's or an API key's.
    pub scope: Scope,
    /// The user's subject, the team, or the key id (empty for the tenant).
    pub id: String,
    /// The cap, in nano-units.
    pub limit: u64,
    /// Spent in the current window, reservations in flight (and, with Redis,
    /// slices the replicas hold) included: what no request can take any more.
    pub spent: u64,
    /// The window kind.
    pub period: Period,
    /// The current window (day or month number).
    pub window: i64,
    /// Until the window ends.
    pub resets_in: Duration,
}

impl RateLimiter {
    /// The tenant's budget and, for `account`, its user's, team's and key's,
    /// as they stand now.
    pub async fn budgets(&self, account: Option<Account<'_>>) -> Result<Vec<BudgetState>, StoreError> {
        let Some(e) = &self.0 else { return Ok(Vec::new()) };
        let plan = &e.plan;
        let mut scopes = Vec::new();
        scopes.extend(plan.tenant.budget.map(|b| (Scope::Tenant, String::new(), b, plan.keys.budget.clone())));
        if let Some(account) = account {
            let who = e.who(account);
            if let (Some(u), Some(b)) = (&who.user, plan.user.and_then(|u| u.budget)) {
                scopes.push((Scope::User, u.subject.to_string(), b, u.budget.clone()));
            }
            scopes.extend(who.team.map(|t| (Scope::Team, t.id.to_string(), t.limit, t.budget.clone())));
            scopes.extend(who.key.map(|k| (Scope::Key, k.id.to_string(), k.limit, k.budget.clone())));
        }
        e.states(scopes).await
    }

    /// The budgets of every declared API key that has one, and of every
    /// listed team, as they stand now (what the gateway publishes).
    pub async fn own_budgets(&self) -> Result<Vec<BudgetState>, StoreError> {
        let Some(e) = &self.0 else { return Ok(Vec::new()) };
        let plan = &e.plan;
        let teams = plan.teams.iter().flat_map(|t| t.named.values()).map(|t| (Scope::Team, t));
        let keys = plan.key_budgets.values().map(|k| (Scope::Key, k));
        let scopes = teams.chain(keys).map(|(s, k)| (s, k.id.to_string(), k.limit, k.budget.clone())).collect();
        e.states(scopes).await
    }

    /// The tenant's currency.
    pub fn currency(&self) -> &str {
        self.0.as_ref().map_or("", |e| &e.currency)
    }
}

impl Enforced {
    /// How each of `scopes` (scope, id, cap, Redis key) stands now.
    async fn states(&self, scopes: Vec<(Scope, String, BudgetLimit, String)>) -> Result<Vec<BudgetState>, StoreError> {
        let now_us =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_micros() as f64);
        let at = (now_us / 1e6).floor() as i64;
        let mut out = Vec::with_capacity(scopes.len());
        for (scope, id, b, key) in scopes {
            let window = b.period.window(at);
            let spent = match &self.store {
                Store::Local(local) => local.spent(scope, &id, window),
                Store::Redis(redis) => redis.spent(&key, window).await?,
            };
            let resets_in = Duration::from_micros(b.period.reset_us(now_us).max(0.0) as u64);
            out.push(BudgetState { scope, id, limit: b.nanos, spent, period: b.period, window, resets_in });
        }
        Ok(out)
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
        let keys = &config.auth.declared_api_keys;
        let Some(plan) = Plan::of(&config.tenant.name, config.limits.as_ref(), keys) else {
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
        let currency = config.pricing.as_ref().map_or("", |p| &p.currency);
        let limiter = RateLimiter::of(Some(plan), store.clone()).with_currency(currency);
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
        Reservation::tokens(prompt, completion)
    }

    #[tokio::test]
    async fn dropping_an_admission_settles_with_the_recorded_usage() {
        let (l, _) = limiter(Limits { tokens_per_minute: Some(1_000), ..Default::default() });
        let mut a = l.admit_reservation("u", res(100, 800), false).await.expect("admitted");
        assert_eq!(a.snapshot().tokens.map(|w| w.remaining), Some(100));
        assert!(l.admit_reservation("u", res(100, 100), false).await.is_err());
        a.record_tokens(150, 0, 0);
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
    async fn a_callers_team_comes_from_its_identity_and_its_budget_refuses_by_name() {
        use tenantgate_crds::v1alpha1::{Budget, TeamLimits};
        let limits = Limits {
            per_team: Some(TeamLimits {
                role_prefix: Some("team:".into()),
                budget: Some(Budget::fixed("1", "2026-01-01T00:00:00Z", "168h")),
                teams: Vec::new(),
            }),
            ..Default::default()
        };
        let l =
            RateLimiter::new("t", Some(&limits), Store::Local(Arc::new(LocalStore::default()))).with_currency("EUR");
        let alice =
            Arc::new(crate::auth::Identity::with_roles("alice", &["team:ml"])).with_team_from_roles(Some("team:"));
        let bob = Arc::new(crate::auth::Identity::with_roles("bob", &["team:ml"])).with_team_from_roles(Some("team:"));
        let loner = crate::auth::Identity::with_roles("carol", &[]);
        let cost = |nanos| Reservation::default().costing(nanos);
        let _a = l.admit_reservation(&*alice, cost(600_000_000), false).await.expect("ml has 1");
        let e = l.admit_reservation(&*bob, cost(600_000_000), false).await.expect_err("ml has 0.4 left");
        assert_eq!(e.status(), StatusCode::PAYMENT_REQUIRED);
        let message = e.to_string();
        assert!(message.starts_with("The team budget of 1 EUR per window of 168h has 0.4 EUR left"), "{message}");
        let mut h = HeaderMap::new();
        e.apply_headers(&mut h);
        assert_eq!(h["x-budget-scope"], "team");
        assert_eq!(h["x-budget-remaining"], "0.4");
        // A caller without a team is not held by any team's budget.
        l.admit_reservation(&loner, cost(900_000_000), false).await.expect("no team, no team budget");
        let budgets = l.budgets(Some((&*alice).into())).await.expect("budgets");
        let team: Vec<_> =
            budgets.iter().filter(|b| b.scope == Scope::Team).map(|b| (b.id.as_str(), b.spent)).collect();
        assert_eq!(team, [("ml", 600_000_000)]);
    }

    #[test]
    fn only_callers_under_a_budget_need_priced_models() {
        use tenantgate_crds::config::DeclaredApiKey;
        use tenantgate_crds::v1alpha1::Budget;
        let key = DeclaredApiKey::with_budget(
            "ci",
            "h",
            Some(Budget::new("5", tenantgate_crds::v1alpha1::BudgetPeriod::Day)),
        );
        let plan = Plan::of("t", None, &[key]);
        let l = RateLimiter::of(plan, Store::Local(Arc::new(LocalStore::default())));
        let with_key = Account { subject: "apikey:ci", team: None, api_key: Some("kubernetes:ci") };
        let e = l.price(with_key, res(10, 10), None, "free-model").expect_err("the key's requests must be charged");
        assert_eq!((e.status(), e.as_reason()), (StatusCode::FORBIDDEN, "ModelUnpriced"));
        assert!(l.price("alice", res(10, 10), None, "free-model").is_ok(), "alice is under no budget");
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
