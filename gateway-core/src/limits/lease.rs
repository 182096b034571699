//! Leased limits: each replica takes slices of the tenant's (and each
//! user's) buckets from Redis ahead of need and admits requests from them
//! without a round trip, so most requests never wait for Redis.
//!
//! A slice is taken from the shared bucket exactly like a request of that many
//! units (`lease.lua`), so what all replicas admit together never exceeds
//! what the one shared bucket would: a cap is never exceeded, it is only
//! approached more slowly while other replicas hold unused slices. The bounds:
//!
//! - A slice is at most [`RATE_SHARE`]⁻¹ of a per-minute bucket's capacity
//!   (its burst, or one minute of tokens) and [`DAY_SHARE`]⁻¹ of a daily
//!   quota, and aims at [`HORIZON`] of this replica's recent demand. Buckets
//!   too small for a slice of one unit (a burst under 16) are decided in Redis
//!   for every request, as before.
//! - Unused slices go back to Redis once the replica has not used them for
//!   [`IDLE`] (checked every [`SWEEP`]), and whatever a replica holds beyond
//!   twice its current aim goes back at the next sweep. So a request may be
//!   refused while up to one slice per other replica sits unused, for at most
//!   `IDLE + SWEEP` after those replicas stop using them.
//! - Token reservations settle into the slice they came from (unused tokens
//!   come back to it, overuse becomes a debt that the next sweep charges to
//!   Redis), except in buckets too small for slices, which settle in Redis at once.
//! - A replica that dies holding slices loses them: a per-minute bucket
//!   refills them within its normal refill time, a daily quota loses at most
//!   one slice per killed replica for the rest of the day. A replica that
//!   shuts down gives its slices back after its last request, and a limiter
//!   replaced by a config reload gives its slices back.
//!
//! Stream slots (`maxConcurrentStreams`) are not leased: a streaming request
//! that needs a slot is decided in Redis ([`RedisStore::admit`]: the same
//! script taking exactly its costs and the slot), and settles there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::decision::{N, Outcome, Outcomes, Scope, Verdict, verdict};
use super::period::Period;
use super::plan::{BudgetKeys, Plan, UserKeys, Who};
use super::redis_store::{Grant, LeaseAnswer, RedisStore, StoreError};
use super::reserve::Charge;

/// A slice aims to cover this much of the replica's recent demand.
pub const HORIZON: Duration = Duration::from_millis(200);
/// A slice unused for this long goes back to Redis.
pub const IDLE: Duration = Duration::from_millis(500);
/// How often slices are looked over: idle ones and excess given back, debts
/// charged, demand measured.
pub const SWEEP: Duration = Duration::from_millis(100);
/// The largest slice of a per-minute bucket is its capacity divided by this.
pub const RATE_SHARE: u64 = 16;
/// The largest slice of a daily quota or a budget is the quota divided by this.
pub const DAY_SHARE: u64 = 64;

/// Buckets in the order of `lease.lua`'s keys: requests, tokens per minute,
/// tokens per day and budget, each for the tenant then the user; then the
/// team's budget and the API key's.
pub(super) const BUCKETS: usize = 10;

/// Whose bucket each one is, and which balance of that scope's slice holds
/// it (0 requests, 1 tokens per minute, 2 tokens per day, 3 budget).
const PLACES: [(Scope, usize); BUCKETS] = [
    (Scope::Tenant, 0),
    (Scope::User, 0),
    (Scope::Tenant, 1),
    (Scope::User, 1),
    (Scope::Tenant, 2),
    (Scope::User, 2),
    (Scope::Tenant, 3),
    (Scope::User, 3),
    (Scope::Team, 3),
    (Scope::Key, 3),
];

/// The bucket balance `k` of `scope`'s slice holds (`None`: that scope has no such bucket).
pub(super) fn index(scope: Scope, k: usize) -> Option<usize> {
    PLACES.iter().position(|&p| p == (scope, k))
}

/// One configured bucket of a plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Bucket {
    /// GCRA interval in microseconds, or the windowed limit.
    pub a: f64,
    /// GCRA capacity (0 for a windowed limit).
    pub capacity: u64,
    /// The most a request can take (the capacity, or the windowed limit).
    pub max: u64,
    /// The largest slice (0: decided in Redis per request).
    pub share: u64,
    /// The window of a daily quota or a budget (`None`: a GCRA bucket).
    pub period: Option<Period>,
}

/// The buckets of `plan` for `who` (`None`: not configured, or a bucket of a
/// scope the request does not count in).
pub(super) fn buckets(plan: &Plan, who: &Who) -> [Option<Bucket>; BUCKETS] {
    let user = plan.user.filter(|_| who.user.is_some());
    let gcra = |g: Option<super::gcra::Gcra>| {
        g.map(|g| Bucket {
            a: g.interval_us,
            capacity: g.capacity,
            max: g.capacity,
            share: g.capacity / RATE_SHARE,
            period: None,
        })
    };
    let window = |limit: Option<u64>, period: Period| {
        limit.map(|l| Bucket { a: l as f64, capacity: 0, max: l, share: l / DAY_SHARE, period: Some(period) })
    };
    let budget = |s: Option<super::plan::ScopeLimits>| {
        let b = s.and_then(|s| s.budget)?;
        window(Some(b.nanos), b.period)
    };
    let own = |k: &Option<Arc<BudgetKeys>>| k.as_ref().and_then(|k| window(Some(k.limit.nanos), k.limit.period));
    [
        gcra(plan.tenant.requests),
        gcra(user.and_then(|u| u.requests)),
        gcra(plan.tenant.tokens_per_minute),
        gcra(user.and_then(|u| u.tokens_per_minute)),
        window(plan.tenant.tokens_per_day, Period::Day),
        window(user.and_then(|u| u.tokens_per_day), Period::Day),
        budget(Some(plan.tenant)),
        budget(user),
        own(&who.team),
        own(&who.key),
    ]
}

/// What bucket `i` counts of a charge: requests, tokens or nano-units.
fn units(i: usize, charge: Charge) -> u64 {
    match i {
        0 | 1 => 1,
        2..6 => charge.tokens,
        _ => charge.nanos,
    }
}

/// What one request takes from each configured bucket.
pub(super) fn costs(buckets: &[Option<Bucket>; BUCKETS], charge: Charge) -> [Option<u64>; BUCKETS] {
    std::array::from_fn(|i| buckets[i].map(|b| units(i, charge).min(b.max)))
}

/// What settling a reservation of `reserved` that used `actual` gives back to
/// each token and budget bucket (negative: charges).
pub(super) fn settlement(buckets: &[Option<Bucket>; BUCKETS], reserved: Charge, actual: Charge) -> [i64; BUCKETS] {
    std::array::from_fn(|i| match buckets[i] {
        Some(b) if i >= 2 => units(i, reserved).min(b.max) as i64 - units(i, actual) as i64,
        _ => 0,
    })
}

/// The window each bucket's units were taken in at second `at` (0 for GCRA buckets).
pub(super) fn windows(buckets: &[Option<Bucket>; BUCKETS], at: i64) -> [i64; BUCKETS] {
    std::array::from_fn(|i| buckets[i].and_then(|b| b.period).map_or(0, |p| p.window(at)))
}

/// This replica's slice of one bucket.
#[derive(Clone, Copy, Debug, Default)]
struct Balance {
    /// Granted and not used yet; negative: used beyond reservations, owed to Redis.
    held: i64,
    /// What the shared bucket had left after this replica's last grant.
    shared_left: u64,
    /// When the shared bucket is full again, as of the last grant.
    reset_at: Option<Instant>,
    /// Units used here since the last sweep.
    used: u64,
    /// Recent demand here, units per second.
    rate: f64,
}

impl Balance {
    /// The slice to aim for: [`HORIZON`] of recent demand, at most `share`.
    fn aim(&self, share: u64) -> u64 {
        ((self.rate * HORIZON.as_secs_f64()).ceil() as u64).min(share)
    }
}

/// Whose slices: the tenant's, or one user's, team's or key's (with its Redis keys).
#[derive(Clone, Debug)]
enum Owner {
    Tenant,
    User(Arc<UserKeys>),
    Team(Arc<BudgetKeys>),
    Key(Arc<BudgetKeys>),
}

impl Owner {
    fn scope(&self) -> Scope {
        match self {
            Self::Tenant => Scope::Tenant,
            Self::User(_) => Scope::User,
            Self::Team(_) => Scope::Team,
            Self::Key(_) => Scope::Key,
        }
    }

    /// A request counting in this scope alone (besides the tenant).
    fn who(&self) -> Who {
        match self {
            Self::Tenant => Who::default(),
            Self::User(u) => Who { user: Some(u.clone()), ..Who::default() },
            Self::Team(t) => Who { team: Some(t.clone()), ..Who::default() },
            Self::Key(k) => Who { key: Some(k.clone()), ..Who::default() },
        }
    }
}

/// The slices of one scope: requests, tokens per minute, tokens per day,
/// budget (a team or a key has only a budget).
#[derive(Debug)]
struct Slice {
    balances: [Balance; 4],
    /// The windows (by Redis' clock) the daily and budget balances belong to.
    windows: [i64; 2],
    last_used: Instant,
    /// A background top-up is on its way.
    topping_up: bool,
    owner: Owner,
}

impl Slice {
    /// `owner`'s slices, their windows taken from the bucket windows `w`.
    fn new(owner: Owner, w: &[i64; BUCKETS]) -> Self {
        let scope = owner.scope();
        let windows = [2, 3].map(|k| index(scope, k).map_or(0, |i| w[i]));
        Self { balances: [Balance::default(); 4], windows, last_used: Instant::now(), topping_up: false, owner }
    }

    /// The window balance `k` (2: tokens per day, 3: budget) belongs to.
    fn window(&self, k: usize) -> i64 {
        self.windows[k - 2]
    }
}

/// Redis' clock as last seen: its time at a local instant.
#[derive(Clone, Copy, Debug)]
struct Clock {
    at: Instant,
    redis_us: f64,
}

impl Clock {
    /// The second Redis will be at `ahead` from `now`.
    fn at(&self, now: Instant, ahead: Duration) -> i64 {
        let us = self.redis_us + (now.saturating_duration_since(self.at) + ahead).as_micros() as f64;
        (us / 1e6).floor() as i64
    }
}

#[derive(Debug)]
struct State {
    tenant: Slice,
    users: HashMap<Box<str>, Slice>,
    teams: HashMap<Box<str>, Slice>,
    keys: HashMap<Box<str>, Slice>,
    clock: Option<Clock>,
    last_sweep: Instant,
}

/// The slice of `id` in `map`, made (with the bucket windows `w`) when new.
fn slice_of<'a>(
    map: &'a mut HashMap<Box<str>, Slice>,
    id: &str,
    owner: impl FnOnce() -> Owner,
    w: &[i64; BUCKETS],
) -> &'a mut Slice {
    if !map.contains_key(id) {
        map.insert(id.into(), Slice::new(owner(), w));
    }
    map.get_mut(id).expect("just inserted")
}

impl State {
    /// The scopes of a request: the tenant's slice and those of `who` (new
    /// ones in the bucket windows `w`).
    fn scopes(&mut self, who: &Who, w: &[i64; BUCKETS]) -> Scopes<'_> {
        let user = who.user.as_ref().map(|u| slice_of(&mut self.users, &u.subject, || Owner::User(u.clone()), w));
        let team = who.team.as_ref().map(|t| slice_of(&mut self.teams, &t.id, || Owner::Team(t.clone()), w));
        let key = who.key.as_ref().map(|k| slice_of(&mut self.keys, &k.id, || Owner::Key(k.clone()), w));
        Scopes { tenant: &mut self.tenant, user, team, key }
    }
}

/// The slices of a request's scopes.
struct Scopes<'a> {
    tenant: &'a mut Slice,
    user: Option<&'a mut Slice>,
    team: Option<&'a mut Slice>,
    key: Option<&'a mut Slice>,
}

impl Scopes<'_> {
    /// The slice bucket `i` is kept in (`None`: a bucket of a scope the
    /// request does not count in) and the index of its balance there.
    fn of(&mut self, i: usize) -> Option<(&mut Slice, usize)> {
        let (scope, k) = PLACES[i];
        let slice = match scope {
            Scope::Tenant => Some(&mut *self.tenant),
            Scope::User => self.user.as_deref_mut(),
            Scope::Team => self.team.as_deref_mut(),
            Scope::Key => self.key.as_deref_mut(),
        };
        slice.map(|s| (s, k))
    }

    /// Every slice of the request.
    fn all(&mut self) -> impl Iterator<Item = &mut Slice> {
        std::iter::once(&mut *self.tenant)
            .chain(self.user.as_deref_mut())
            .chain(self.team.as_deref_mut())
            .chain(self.key.as_deref_mut())
    }

    /// Adds `sign` times `amounts` to the balances held.
    fn add(&mut self, amounts: &[u64; BUCKETS], sign: i64) {
        for (i, &a) in amounts.iter().enumerate() {
            if let Some((slice, k)) = self.of(i) {
                slice.balances[k].held += sign * a as i64;
            }
        }
    }
}

/// Amounts to give back (positive) or charge (negative) per bucket.
type Amounts = [i64; BUCKETS];

/// A give-back to send: whose keys, the amounts, the windows of the windowed amounts.
struct Give {
    who: Who,
    amounts: Amounts,
    windows: [i64; BUCKETS],
}

/// The slices this replica holds for one plan over one Redis store.
pub struct Leases {
    plan: Arc<Plan>,
    redis: Arc<RedisStore>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").field("redis", &self.redis).finish_non_exhaustive()
    }
}

/// What the slices here could do for a request.
enum Local {
    /// They covered it.
    Admitted(Verdict),
    /// They did not: ask Redis.
    Ask(Ask),
}

/// Why a request cannot be admitted from the slices here: what to ask Redis for.
struct Ask {
    need: [u64; BUCKETS],
    want: [u64; BUCKETS],
    /// What the request already took from the slices here (the rest is `need`).
    taken: [u64; BUCKETS],
}

impl Leases {
    /// Slices of `plan`'s buckets from `redis`; a task sweeps them while they live.
    pub fn new(plan: Arc<Plan>, redis: Arc<RedisStore>) -> Arc<Self> {
        let now = Instant::now();
        let leases = Arc::new(Self {
            plan,
            redis,
            state: Mutex::new(State {
                tenant: Slice::new(Owner::Tenant, &[0; BUCKETS]),
                users: HashMap::new(),
                teams: HashMap::new(),
                keys: HashMap::new(),
                clock: None,
                last_sweep: now,
            }),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep_while_alive(Arc::downgrade(&leases)));
        }
        leases
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a request taking one request and `charge`, from the slices
    /// held here when they cover it, else with one call to Redis that takes
    /// what is missing plus a new slice.
    pub async fn admit(self: &Arc<Self>, who: &Who, charge: Charge) -> Result<Verdict, StoreError> {
        let buckets = buckets(&self.plan, who);
        let costs = costs(&buckets, charge);
        let ask = match self.take_local(&buckets, &costs, who) {
            Local::Admitted(verdict) => return Ok(verdict),
            Local::Ask(ask) => ask,
        };
        if !self.redis.health.should_try() {
            self.untake(who, &ask.taken);
            return Err(StoreError::Down);
        }
        let answer = self.redis.lease(&self.plan, who, &buckets, &ask.need, &ask.want, None, "lease");
        match answer.await {
            Ok(answer) => Ok(self.apply(&buckets, &ask, who, &answer)),
            Err(e) => {
                self.untake(who, &ask.taken);
                Err(e)
            }
        }
    }

    /// Puts back what a request took from the slices here when it was not admitted.
    fn untake(&self, who: &Who, taken: &[u64; BUCKETS]) {
        let mut state = self.state();
        state.scopes(who, &[0; BUCKETS]).add(taken, 1);
    }

    /// Takes `costs` from the slices here, or says what to ask Redis for.
    fn take_local(
        self: &Arc<Self>,
        buckets: &[Option<Bucket>; BUCKETS],
        costs: &[Option<u64>; BUCKETS],
        who: &Who,
    ) -> Local {
        let now = Instant::now();
        let mut state = self.state();
        let at = state.clock.map(|c| c.at(now, Duration::ZERO));
        // The windowed slices are used only while Redis' window (a second from now) is theirs.
        let safe = state.clock.map(|c| windows(buckets, c.at(now, Duration::from_secs(1))));
        let mut scopes = state.scopes(who, &windows(buckets, at.unwrap_or(0)));
        let mut covered = at.is_some();
        let mut ask = Ask { need: [0; BUCKETS], want: [0; BUCKETS], taken: [0; BUCKETS] };
        for i in 0..BUCKETS {
            let (Some(b), Some(cost)) = (buckets[i], costs[i]) else { continue };
            let Some((slice, k)) = scopes.of(i) else { continue };
            let usable = k < 2 || safe.is_some_and(|w| w[i] == slice.window(k));
            let held = if usable { slice.balances[k].held.max(0) as u64 } else { 0 };
            if held < cost {
                covered = false;
            }
            ask.taken[i] = held.min(cost);
            ask.need[i] = cost - ask.taken[i];
            ask.want[i] = ask.need[i] + if slice.topping_up { 0 } else { slice.balances[k].aim(b.share) };
        }
        if !covered {
            // Take what the slices here have now, so that concurrent requests
            // cannot spend it too while this one asks Redis for the rest.
            scopes.add(&ask.taken, -1);
            return Local::Ask(ask);
        }
        let mut outcomes: Outcomes = [None; N];
        let mut low = false;
        for i in 0..BUCKETS {
            let (Some(b), Some(cost)) = (buckets[i], costs[i]) else { continue };
            let Some((slice, k)) = scopes.of(i) else { continue };
            slice.last_used = now;
            let balance = &mut slice.balances[k];
            balance.held -= cost as i64;
            balance.used += cost;
            low |= !slice.topping_up && b.share > 0 && (balance.held.max(0) as u64) < balance.aim(b.share) / 2;
            outcomes[i] = Some(outcome(balance, now));
        }
        let verdict = verdict(&self.plan, who, &outcomes, at.unwrap_or_default());
        drop(state);
        metrics::counter!("tenantgate_ratelimit_local_admissions_total").increment(1);
        if low {
            self.top_up(who.clone());
        }
        Local::Admitted(verdict)
    }

    /// Applies Redis' answer to a request's ask: its grants go into the
    /// slices, the request's costs come out of them.
    fn apply(&self, buckets: &[Option<Bucket>; BUCKETS], ask: &Ask, who: &Who, answer: &LeaseAnswer) -> Verdict {
        let now = Instant::now();
        let mut state = self.state();
        state.clock = Some(Clock { at: now, redis_us: answer.now_us });
        let at = (answer.now_us / 1e6).floor() as i64;
        let current = windows(buckets, at);
        let mut scopes = state.scopes(who, &current);
        for i in 4..BUCKETS {
            let Some((slice, k)) = buckets[i].and_then(|_| scopes.of(i)) else { continue };
            if slice.window(k) != current[i] {
                // Yesterday's daily slice (last month's budget slice) is worth nothing now.
                slice.balances[k].held = 0;
                slice.windows[k - 2] = current[i];
            }
        }
        let allowed = answer.grants.iter().flatten().all(|g| g.allowed);
        let mut outcomes: Outcomes = [None; N];
        for i in 0..BUCKETS {
            let (Some(_), Some(grant)) = (buckets[i], answer.grants[i]) else { continue };
            let Some((slice, k)) = scopes.of(i) else { continue };
            if allowed {
                let balance = &mut slice.balances[k];
                balance.held += grant.granted as i64 - ask.need[i] as i64;
                balance.used += ask.need[i] + ask.taken[i];
                balance.shared_left = grant.remaining;
                balance.reset_at = Some(now + Duration::from_micros(grant.reset_us.max(0.0) as u64));
                slice.last_used = now;
                outcomes[i] = Some(outcome(balance, now));
            } else {
                // Refused: what it took here goes back.
                slice.balances[k].held += ask.taken[i] as i64;
                let held = slice.balances[k].held.max(0) as u64;
                outcomes[i] = Some(Outcome {
                    allowed: grant.allowed,
                    retry_us: grant.retry_us,
                    remaining: grant.remaining + held,
                    reset_us: grant.reset_us,
                });
            }
        }
        verdict(&self.plan, who, &outcomes, at)
    }

    /// Tops up, in the background, the slices of the tenant and `who` that
    /// run below half their aim.
    fn top_up(self: &Arc<Self>, who: Who) {
        if !self.redis.health.is_up() {
            return;
        }
        let buckets = buckets(&self.plan, &who);
        let mut want = [0; BUCKETS];
        {
            let mut state = self.state();
            let mut scopes = state.scopes(&who, &[0; BUCKETS]);
            for (i, b) in buckets.iter().enumerate() {
                let Some(b) = b else { continue };
                let Some((slice, k)) = scopes.of(i) else { continue };
                let balance = &slice.balances[k];
                want[i] = balance.aim(b.share).saturating_sub(balance.held.max(0) as u64);
            }
            if want.iter().all(|&w| w == 0) {
                return;
            }
            scopes.all().for_each(|s| s.topping_up = true);
        }
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.redis.lease(&this.plan, &who, &buckets, &[0; BUCKETS], &want, None, "top_up").await;
            if let Ok(answer) = &result {
                this.apply(&buckets, &Ask { need: [0; BUCKETS], want, taken: [0; BUCKETS] }, &who, answer);
            }
            let mut state = this.state();
            state.scopes(&who, &[0; BUCKETS]).all().for_each(|s| s.topping_up = false);
        });
    }

    /// Settles a reservation of `reserved` that used `actual`, taken at second `at`.
    pub fn settle(self: &Arc<Self>, who: &Who, reserved: Charge, actual: Charge, at: i64) {
        let buckets = buckets(&self.plan, who);
        let taken_in = windows(&buckets, at);
        let mut now_amounts = [0i64; BUCKETS];
        {
            let mut state = self.state();
            let mut scopes = state.scopes(who, &taken_in);
            let deltas = settlement(&buckets, reserved, actual);
            for (i, b) in buckets.iter().enumerate().skip(2) {
                let Some(b) = b else { continue };
                let delta = deltas[i];
                let Some((slice, k)) = scopes.of(i) else { continue };
                if k >= 2 && slice.window(k) != taken_in[i] {
                    continue; // that window is over
                }
                if b.share == 0 {
                    now_amounts[i] = delta;
                } else {
                    slice.balances[k].held += delta;
                }
            }
        }
        if now_amounts.iter().any(|&a| a != 0) {
            self.send(vec![Give { who: who.clone(), amounts: now_amounts, windows: taken_in }]);
        }
    }

    /// Measures demand and collects what goes back to Redis: slices idle for
    /// [`IDLE`], everything beyond twice the aim, debts; `all` takes everything.
    fn collect(&self, all: bool) -> Vec<Give> {
        let now = Instant::now();
        let mut state = self.state();
        let elapsed = now.saturating_duration_since(state.last_sweep).as_secs_f64().max(1e-3);
        state.last_sweep = now;
        let plan = &self.plan;
        let mut gives = Vec::new();
        let mut sweep = |slice: &mut Slice| {
            let idle = all || now.saturating_duration_since(slice.last_used) >= IDLE;
            let (scope, who) = (slice.owner.scope(), slice.owner.who());
            let b = buckets(plan, &who);
            let (mut amounts, mut windows) = ([0i64; BUCKETS], [0i64; BUCKETS]);
            for (k, balance) in slice.balances.iter_mut().enumerate() {
                balance.rate = 0.5 * balance.rate + 0.5 * balance.used as f64 / elapsed;
                balance.used = 0;
                if idle {
                    balance.rate = 0.0;
                }
                let Some(i) = index(scope, k) else { continue };
                let Some(bucket) = b[i] else { continue };
                let keep = if idle { 0 } else { 2 * balance.aim(bucket.share) as i64 };
                if balance.held < 0 || balance.held > keep {
                    let give = if balance.held < 0 { balance.held } else { balance.held - keep };
                    balance.held -= give;
                    amounts[i] = give;
                }
                if k >= 2 {
                    windows[i] = slice.windows[k - 2];
                }
            }
            if amounts.iter().any(|&a| a != 0) {
                gives.push(Give { who, amounts, windows });
            }
            // An idle slice holds nothing any more: it is forgotten.
            idle && !slice.topping_up
        };
        sweep(&mut state.tenant);
        let state = &mut *state;
        for map in [&mut state.users, &mut state.teams, &mut state.keys] {
            map.retain(|_, slice| !sweep(slice));
        }
        gives
    }

    /// Sends give-backs and charges in the background.
    fn send(&self, gives: Vec<Give>) {
        if gives.is_empty() {
            return;
        }
        let (redis, plan) = (self.redis.clone(), self.plan.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let lost = give_all(redis, plan, gives).await;
                    if !lost.is_empty() {
                        tracing::debug!(
                            gives = lost.len(),
                            "rate limit give-backs lost; the buckets refill by themselves"
                        );
                    }
                });
            }
            Err(_) => {
                tracing::warn!("no runtime to give rate limit slices back on; they come back as the buckets refill")
            }
        }
    }

    /// Units this replica holds of the tenant's requests, tokens per minute, tokens per day and budget.
    pub fn held(&self) -> [i64; 4] {
        self.state().tenant.balances.map(|b| b.held)
    }

    /// Gives every slice back now (a replica shutting down), waiting for Redis.
    pub async fn release(&self) {
        let gives = self.collect(true);
        let lost = give_all(self.redis.clone(), self.plan.clone(), gives).await;
        if !lost.is_empty() {
            tracing::warn!(gives = lost.len(), "rate limit slices not given back: Redis did not answer");
        }
    }
}

/// Sends `gives` one after another; returns those Redis did not take.
async fn give_all(redis: Arc<RedisStore>, plan: Arc<Plan>, gives: Vec<Give>) -> Vec<Give> {
    let mut failed = Vec::new();
    for g in gives {
        if !redis.give(&plan, &g.who, &g.amounts, &g.windows, None).await {
            failed.push(g);
        }
    }
    failed
}

impl Drop for Leases {
    fn drop(&mut self) {
        let gives = self.collect(true);
        self.send(gives);
    }
}

/// The outcome a local admission reports for headers: what the shared bucket
/// had left at the last grant plus what this replica still holds.
fn outcome(balance: &Balance, now: Instant) -> Outcome {
    Outcome {
        allowed: true,
        retry_us: 0.0,
        remaining: balance.shared_left + balance.held.max(0) as u64,
        reset_us: balance.reset_at.map_or(0.0, |r| r.saturating_duration_since(now).as_micros() as f64),
    }
}

/// Sweeps `leases` every [`SWEEP`] until they are dropped.
async fn sweep_while_alive(leases: Weak<Leases>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(leases) = leases.upgrade() else { return };
        let mut gives = leases.collect(false);
        if !gives.is_empty() && leases.redis.health.is_up() {
            gives = give_all(leases.redis.clone(), leases.plan.clone(), gives).await;
        }
        // Redis is down or did not take them: keep them here for a later sweep.
        leases.restore(gives);
    }
}

impl Leases {
    /// Puts back give-backs that could not be sent.
    fn restore(&self, gives: Vec<Give>) {
        let mut state = self.state();
        for g in gives {
            let mut scopes = state.scopes(&g.who, &g.windows);
            for (i, amount) in g.amounts.iter().enumerate() {
                if let Some((slice, k)) = scopes.of(i)
                    && *amount != 0
                    && (k < 2 || slice.window(k) == g.windows[i])
                {
                    slice.balances[k].held += amount;
                }
            }
        }
    }
}

/// What Redis granted for one bucket.
pub(super) fn grant(state: i64, granted: i64, retry_us: i64, remaining: i64, reset_us: i64) -> Option<Grant> {
    (state >= 0).then(|| Grant {
        allowed: state == 1,
        granted: granted.max(0) as u64,
        retry_us: retry_us as f64,
        remaining: remaining.max(0) as u64,
        reset_us: reset_us as f64,
    })
}

#[cfg(test)]
mod tests {
    use tenantgate_crds::v1alpha1::{Budget, BudgetPeriod, Limits, UserLimits};

    use super::*;

    fn tokens(tokens: u64) -> Charge {
        Charge { tokens, nanos: 0 }
    }

    fn plan(limits: Limits) -> Plan {
        Plan::new("t", &limits).expect("plan")
    }

    fn with_user(p: &Plan) -> Who {
        Who { user: Some(Arc::new(p.user_keys("u"))), ..Who::default() }
    }

    #[test]
    fn small_buckets_get_no_slices_and_large_ones_a_share() {
        let p = plan(Limits {
            requests_per_minute: Some(6),
            burst: Some(10),
            tokens_per_minute: Some(160_000),
            tokens_per_day: Some(6_400),
            per_user: Some(UserLimits { requests_per_minute: Some(6_000), burst: Some(320), ..Default::default() }),
            ..Default::default()
        });
        let b = buckets(&p, &with_user(&p));
        assert_eq!(b[0].map(|b| b.share), Some(0), "a burst of 10 is decided per request");
        assert_eq!(b[1].map(|b| b.share), Some(20));
        assert_eq!(b[2].map(|b| b.share), Some(10_000));
        assert_eq!(b[4].map(|b| (b.share, b.max)), Some((100, 6_400)));
        assert_eq!(b[3], None);
        assert_eq!(buckets(&p, &Who::default())[1], None, "no user, no user buckets");
    }

    #[test]
    fn costs_are_capped_at_what_a_bucket_can_ever_hold() {
        let p = plan(Limits { requests_per_minute: Some(600), tokens_per_minute: Some(1_000), ..Default::default() });
        let b = buckets(&p, &Who::default());
        assert_eq!(costs(&b, tokens(5_000)), [Some(1), None, Some(1_000), None, None, None, None, None, None, None]);
    }

    #[test]
    fn the_aim_follows_demand_up_to_the_share() {
        let mut balance = Balance { rate: 1_000.0, ..Default::default() };
        assert_eq!(balance.aim(500), 200, "200 ms of 1,000/s");
        assert_eq!(balance.aim(50), 50, "capped at the share");
        balance.rate = 0.0;
        assert_eq!(balance.aim(50), 0);
    }

    #[tokio::test]
    async fn a_request_that_must_ask_redis_first_takes_what_the_slices_have() {
        let endpoint = crate::redis_client::RedisEndpoint::new("redis://127.0.0.1:1/0", None);
        let redis = RedisStore::connect(&endpoint, super::super::RedisSettings::default()).expect("store");
        let p =
            plan(Limits { requests_per_minute: Some(6_000), tokens_per_minute: Some(160_000), ..Default::default() });
        let leases = Leases::new(Arc::new(p), redis);
        {
            let mut state = leases.state();
            state.clock = Some(Clock { at: Instant::now(), redis_us: 1.7e15 });
            state.tenant.balances[0].held = 1;
            state.tenant.balances[1].held = 10;
        }
        let b = buckets(&leases.plan, &Who::default());
        // One request covered here: admitted locally.
        assert!(matches!(leases.take_local(&b, &costs(&b, tokens(10)), &Who::default()), Local::Admitted(_)));
        assert_eq!(leases.held()[..2], [0, 0]);
        leases.state().tenant.balances[0].held = 1;
        // The next one is short of tokens: it takes the one request unit now and asks for the tokens.
        let Local::Ask(ask) = leases.take_local(&b, &costs(&b, tokens(50)), &Who::default()) else {
            panic!("not covered")
        };
        assert_eq!((ask.taken[0], ask.need[0]), (1, 0));
        assert_eq!((ask.taken[2], ask.need[2]), (0, 50));
        // Meanwhile a concurrent request finds nothing left to spend twice.
        assert!(matches!(leases.take_local(&b, &costs(&b, tokens(0)), &Who::default()), Local::Ask(_)));
        // Refused (or Redis down): the unit goes back.
        leases.untake(&Who::default(), &ask.taken);
        assert_eq!(leases.held()[0], 1);
    }

    #[test]
    fn the_daily_slice_is_used_only_well_inside_its_day() {
        let at = Instant::now();
        let day = 20_000i64;
        let clock = Clock { at, redis_us: (day as f64 + 1.0) * 86_400e6 - 500_000.0 };
        assert_eq!(Period::Day.window(clock.at(at, Duration::ZERO)), day);
        assert_eq!(Period::Day.window(clock.at(at, Duration::from_secs(1))), day + 1, "half a second before midnight");
    }

    #[test]
    fn budgets_are_buckets_of_nano_units_in_their_own_windows() {
        let p = plan(Limits {
            tokens_per_day: Some(6_400),
            budget: Some(Budget::new("64", BudgetPeriod::Month)),
            per_user: Some(UserLimits { budget: Some(Budget::new("1", BudgetPeriod::Day)), ..Default::default() }),
            ..Default::default()
        });
        let b = buckets(&p, &with_user(&p));
        assert_eq!(
            b[6].map(|b| (b.max, b.share, b.period)),
            Some((64_000_000_000, 1_000_000_000, Some(Period::Month)))
        );
        assert_eq!(b[7].map(|b| (b.max, b.period)), Some((1_000_000_000, Some(Period::Day))));
        let charge = Charge { tokens: 700, nanos: 2_000_000_000 };
        assert_eq!(
            costs(&b, charge),
            [None, None, None, None, Some(700), None, Some(2_000_000_000), Some(1_000_000_000), None, None],
            "a cost above a budget is capped at the budget (and refused by it)"
        );
        let back = settlement(&b, charge, Charge { tokens: 100, nanos: 300_000_000 });
        assert_eq!(back[4], 600);
        assert_eq!(back[6], 1_700_000_000);
        assert_eq!(back[7], 700_000_000, "the user's bucket gives back what it took, less the cost");
        // 2026-12-06 00:00 UTC: day 20,793 and month 2026-12.
        let w = windows(&b, 1_796_515_200);
        assert_eq!((w[4], w[6], w[7], w[0]), (20_793, 2026 * 12 + 11, 20_793, 0));
    }
}
