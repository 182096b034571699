//! In-process limits for a gateway without Redis (one replica): the same
//! checks as `lease.lua`, under one short `std` mutex that is never held
//! across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::decision::{N, Outcome, Outcomes, Scope, Verdict, verdict};
use super::gcra::{Check, Gcra};
use super::lease::index;
use super::period::Period;
use super::plan::{Plan, ScopeLimits, Who};
use super::reserve::Charge;

/// Users (teams, keys) kept before idle ones are swept out.
const SWEEP_FLOOR: usize = 1024;

/// Limit state in this process.
#[derive(Debug)]
pub struct LocalStore {
    state: Mutex<State>,
    streams: AtomicU32,
    started: Instant,
    started_wall_us: f64,
}

#[derive(Debug, Default)]
struct State {
    tenant: Buckets,
    users: Scoped,
    teams: Scoped,
    keys: Scoped,
}

impl State {
    /// The buckets of the users, teams or keys.
    fn scoped(&mut self, scope: Scope) -> Option<&mut Scoped> {
        match scope {
            Scope::Tenant => None,
            Scope::User => Some(&mut self.users),
            Scope::Team => Some(&mut self.teams),
            Scope::Key => Some(&mut self.keys),
        }
    }

    /// The buckets of `id` in `scope` as they stand (default: nothing used).
    fn get(&mut self, scope: Scope, id: &str) -> Buckets {
        match self.scoped(scope) {
            None => self.tenant,
            Some(s) => s.map.get(id).copied().unwrap_or_default(),
        }
    }
}

/// The buckets of each user (team, key), by subject (team, key id).
#[derive(Debug, Default)]
struct Scoped {
    map: HashMap<Box<str>, Buckets>,
    sweep_at: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct Buckets {
    requests: f64,
    tokens_per_minute: f64,
    day: i64,
    used_today: u64,
    /// The budget's window (day or month number, a fixed window's start) and
    /// the nano-units spent in it.
    budget_window: i64,
    spent: u64,
    /// When that window ends (microseconds since the epoch).
    budget_until: f64,
}

impl Buckets {
    /// Whether nothing is held: spend in a budget window that is not over
    /// is kept, since forgetting it would reset the budget.
    fn is_idle(&self, now: f64, day: i64) -> bool {
        self.requests <= now
            && self.tokens_per_minute <= now
            && (self.day != day || self.used_today == 0)
            && (self.spent == 0 || self.budget_until <= now)
    }
}

/// A pending write of one scope, applied when every check passed.
#[derive(Clone, Copy, Debug, Default)]
struct Write {
    requests: Option<f64>,
    tokens_per_minute: Option<f64>,
    used_today: Option<u64>,
    /// The window, what is spent in it, when it ends.
    spent: Option<(i64, u64, f64)>,
}

impl Default for LocalStore {
    fn default() -> Self {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_micros() as f64);
        Self { state: Mutex::default(), streams: AtomicU32::new(0), started: Instant::now(), started_wall_us: wall }
    }
}

fn gcra_outcome(g: &Gcra, tat: f64, now: f64, cost: u64) -> (Outcome, Option<f64>) {
    match g.check(tat, now, cost) {
        Check::Allow { tat, remaining, reset_us } => {
            (Outcome { allowed: true, retry_us: 0.0, remaining, reset_us }, Some(tat))
        }
        Check::Deny { retry_us, remaining, reset_us } => {
            (Outcome { allowed: false, retry_us, remaining, reset_us }, None)
        }
    }
}

/// The daily quota check, as `lease.lua` does it.
/// A windowed limit (a daily quota, a budget) of `limit` units of which
/// `used` are used in the current window, asked for `cost` at `now`.
fn window_outcome(limit: u64, used: u64, period: Period, now: f64, cost: u64) -> (Outcome, Option<u64>) {
    let cost = cost.min(limit);
    let reset_us = period.reset_us(now);
    if used + cost > limit {
        (Outcome { allowed: false, retry_us: reset_us, remaining: limit.saturating_sub(used), reset_us }, None)
    } else {
        (Outcome { allowed: true, retry_us: 0.0, remaining: limit - used - cost, reset_us }, Some(used + cost))
    }
}

/// The checks of one scope's limits (requests, tokens per minute, tokens per
/// day, budget) and what to write when the request is admitted.
fn check_scope(s: &ScopeLimits, b: &Buckets, now: f64, at: i64, charge: Charge) -> ([Option<Outcome>; 4], Write) {
    let (day, cost) = (Period::Day.window(at), charge.tokens);
    let mut w = Write::default();
    let mut out = [None; 4];
    if let Some(g) = &s.requests {
        let (o, tat) = gcra_outcome(g, b.requests, now, 1);
        out[0] = Some(o);
        w.requests = tat;
    }
    if let Some(g) = &s.tokens_per_minute {
        let (o, tat) = gcra_outcome(g, b.tokens_per_minute, now, cost);
        out[1] = Some(o);
        w.tokens_per_minute = tat;
    }
    if let Some(limit) = s.tokens_per_day {
        let used = if b.day == day { b.used_today } else { 0 };
        let (o, used) = window_outcome(limit, used, Period::Day, now, cost);
        out[2] = Some(o);
        w.used_today = used;
    }
    if let Some(budget) = s.budget {
        let window = budget.period.window(at);
        let spent = if b.budget_window == window { b.spent } else { 0 };
        let (o, spent) = window_outcome(budget.nanos, spent, budget.period, now, charge.nanos);
        out[3] = Some(o);
        w.spent = spent.map(|s| (window, s, now + o.reset_us));
    }
    (out, w)
}

/// The scopes `who` counts in, with their ids and limits (the tenant's first).
fn scopes<'a>(plan: &Plan, who: &'a Who) -> [Option<(Scope, &'a str, ScopeLimits)>; 4] {
    let own = |l: super::plan::BudgetLimit| ScopeLimits { budget: Some(l), ..ScopeLimits::default() };
    [
        Some((Scope::Tenant, "", plan.tenant)),
        who.user.as_ref().zip(plan.user).map(|(u, l)| (Scope::User, &*u.subject, l)),
        who.team.as_ref().map(|t| (Scope::Team, &*t.id, own(t.limit))),
        who.key.as_ref().map(|k| (Scope::Key, &*k.id, own(k.limit))),
    ]
}

fn apply(b: &mut Buckets, w: Write, day: i64) {
    if let Some(t) = w.requests {
        b.requests = t;
    }
    if let Some(t) = w.tokens_per_minute {
        b.tokens_per_minute = t;
    }
    if let Some(u) = w.used_today {
        b.day = day;
        b.used_today = u;
    }
    if let Some((window, spent, until)) = w.spent {
        b.budget_window = window;
        b.spent = spent;
        b.budget_until = until;
    }
}

fn settle_scope(s: &ScopeLimits, b: &mut Buckets, now: f64, reserved: Charge, actual: Charge, at: i64) {
    if let Some(g) = &s.tokens_per_minute {
        b.tokens_per_minute = g.settle(b.tokens_per_minute, now, reserved.tokens, actual.tokens);
    }
    if let Some(limit) = s.tokens_per_day
        && b.day == Period::Day.window(at)
    {
        b.used_today = (b.used_today + actual.tokens).saturating_sub(reserved.tokens.min(limit));
    }
    if let Some(budget) = s.budget
        && b.budget_window == budget.period.window(at)
    {
        b.spent = (b.spent + actual.nanos).saturating_sub(reserved.nanos.min(budget.nanos));
    }
}

impl LocalStore {
    /// Microseconds since the epoch, advancing monotonically.
    fn now(&self) -> f64 {
        self.started_wall_us + self.started.elapsed().as_micros() as f64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks every limit of `plan` for one request of `subject` reserving
    /// `cost` tokens (and a stream slot when `stream`); takes all or nothing.
    pub fn admit(&self, plan: &Plan, who: &Who, charge: Charge, stream: bool) -> Verdict {
        let now = self.now();
        let at = (now / 1e6).floor() as i64;
        let day = Period::Day.window(at);
        let mut outcomes: Outcomes = [None; N];
        let mut state = self.lock();
        let scopes = scopes(plan, who);
        let mut writes = [None; 4];
        for (j, (scope, id, limits)) in scopes.iter().enumerate().filter_map(|(j, s)| Some((j, s.as_ref()?))) {
            let (out, write) = check_scope(limits, &state.get(*scope, id), now, at, charge);
            for (k, o) in out.into_iter().enumerate() {
                if let Some(i) = index(*scope, k) {
                    outcomes[i] = o;
                }
            }
            writes[j] = Some(write);
        }
        let slot = N - 1;
        if let Some(max) = plan.max_streams.filter(|_| stream) {
            let open = self.streams.load(Ordering::Acquire);
            outcomes[slot] = Some(Outcome {
                allowed: open < max,
                retry_us: 1e6,
                remaining: u64::from(max.saturating_sub(open + 1)),
                reset_us: 0.0,
            });
        }
        let v = verdict(plan, who, &outcomes, at);
        if matches!(v, Verdict::Allowed { .. }) {
            for (s, w) in scopes.iter().zip(writes) {
                let (Some((scope, id, _)), Some(w)) = (s, w) else { continue };
                match state.scoped(*scope) {
                    None => apply(&mut state.tenant, w, day),
                    Some(scoped) => match scoped.map.get_mut(*id) {
                        Some(b) => apply(b, w, day),
                        None => {
                            let mut b = Buckets::default();
                            apply(&mut b, w, day);
                            scoped.map.insert((*id).into(), b);
                            sweep(scoped, now, day);
                        }
                    },
                }
            }
            if outcomes[slot].is_some() {
                self.streams.fetch_add(1, Ordering::AcqRel);
            }
        }
        v
    }

    /// Replaces a reservation of `reserved` tokens and nano-units made at
    /// second `at` by the `actual` usage, and frees the stream slot when `stream`.
    pub fn settle(&self, plan: &Plan, who: &Who, reserved: Charge, actual: Charge, at: i64, stream: bool) {
        if stream {
            // Saturating: a slot taken under an older config is released exactly once too.
            let _ = self.streams.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
        }
        if reserved == actual || !(plan.counts_tokens() || plan.counts_cost()) {
            return;
        }
        let now = self.now();
        let mut state = self.lock();
        for (scope, id, limits) in scopes(plan, who).iter().flatten() {
            let b = match state.scoped(*scope) {
                None => Some(&mut state.tenant),
                Some(scoped) => scoped.map.get_mut(*id),
            };
            if let Some(b) = b {
                settle_scope(limits, b, now, reserved, actual, at);
            }
        }
    }

    /// Nano-units spent (and reserved) in budget window `window` by `id` of
    /// `scope` (the tenant: any id).
    pub fn spent(&self, scope: Scope, id: &str, window: i64) -> u64 {
        let b = self.lock().get(scope, id);
        if b.budget_window == window { b.spent } else { 0 }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> u32 {
        self.streams.load(Ordering::Acquire)
    }
}

/// Drops idle users (teams, keys) once the map has doubled since the last sweep.
fn sweep(scoped: &mut Scoped, now: f64, day: i64) {
    if scoped.map.len() < scoped.sweep_at.max(SWEEP_FLOOR) {
        return;
    }
    scoped.map.retain(|_, b| !b.is_idle(now, day));
    scoped.sweep_at = scoped.map.len() * 2;
}

#[cfg(test)]
mod tests {
    use tenantgate_crds::v1alpha1::{Budget, BudgetPeriod, Limits, UserLimits};

    use super::*;
    use crate::limits::decision::{LimitKind, Scope};

    fn plan(limits: Limits) -> Plan {
        Plan::new("t", &limits).expect("plan")
    }

    fn u(p: &Plan, subject: &str) -> Who {
        Who { user: Some(std::sync::Arc::new(p.user_keys(subject))), ..Who::default() }
    }

    fn t(tokens: u64) -> Charge {
        Charge { tokens, nanos: 0 }
    }

    fn usd(nanos: u64) -> Charge {
        Charge { tokens: 0, nanos }
    }

    fn denied(v: Verdict) -> Option<(LimitKind, Scope)> {
        match v {
            Verdict::Denied(d) => Some((d.kind, d.scope)),
            Verdict::Allowed { .. } => None,
        }
    }

    #[test]
    fn tenant_and_user_request_limits() {
        let p = plan(Limits {
            requests_per_minute: Some(60),
            burst: Some(5),
            per_user: Some(UserLimits { requests_per_minute: Some(60), burst: Some(2), ..Default::default() }),
            ..Default::default()
        });
        let store = LocalStore::default();
        assert_eq!(denied(store.admit(&p, &u(&p, "a"), t(0), false)), None);
        assert_eq!(denied(store.admit(&p, &u(&p, "a"), t(0), false)), None);
        assert_eq!(denied(store.admit(&p, &u(&p, "a"), t(0), false)), Some((LimitKind::Requests, Scope::User)));
        // Another user still has room, until the tenant burst of 5 is spent.
        assert_eq!(denied(store.admit(&p, &u(&p, "b"), t(0), false)), None);
        assert_eq!(denied(store.admit(&p, &u(&p, "b"), t(0), false)), None);
        assert_eq!(denied(store.admit(&p, &u(&p, "c"), t(0), false)), None);
        assert_eq!(denied(store.admit(&p, &u(&p, "d"), t(0), false)), Some((LimitKind::Requests, Scope::Tenant)));
    }

    #[test]
    fn a_refused_request_takes_nothing() {
        let p = plan(Limits {
            requests_per_minute: Some(60),
            burst: Some(10),
            tokens_per_day: Some(100),
            ..Default::default()
        });
        let store = LocalStore::default();
        assert_eq!(denied(store.admit(&p, &Who::default(), t(80), false)), None);
        // 80 + 30 > 100: refused, and the request did not count against the burst.
        assert_eq!(
            denied(store.admit(&p, &Who::default(), t(30), false)),
            Some((LimitKind::TokensPerDay, Scope::Tenant))
        );
        for _ in 0..9 {
            assert_eq!(denied(store.admit(&p, &Who::default(), t(0), false)), None);
        }
        assert_eq!(denied(store.admit(&p, &Who::default(), t(0), false)), Some((LimitKind::Requests, Scope::Tenant)));
    }

    #[test]
    fn reservations_settle_to_real_usage() {
        let p = plan(Limits {
            tokens_per_minute: Some(1_000),
            per_user: Some(UserLimits { tokens_per_day: Some(500), ..Default::default() }),
            ..Default::default()
        });
        let store = LocalStore::default();
        let Verdict::Allowed { at, snapshot } = store.admit(&p, &u(&p, "a"), t(400), false) else { panic!() };
        assert_eq!(snapshot.tokens.map(|w| w.remaining), Some(100), "the user's day quota is tighter");
        assert!(denied(store.admit(&p, &u(&p, "a"), t(400), false)).is_some());
        store.settle(&p, &u(&p, "a"), t(400), t(50), at, false);
        // 450 of the user's day left, 950 of the tenant's minute.
        assert_eq!(denied(store.admit(&p, &u(&p, "a"), t(450), false)), None);
        assert_eq!(denied(store.admit(&p, &u(&p, "a"), t(1), false)), Some((LimitKind::TokensPerDay, Scope::User)));
        // Overuse is charged to the minute bucket: 450 reserved, 900 used.
        store.settle(&p, &u(&p, "a"), t(450), t(900), at, false);
        assert_eq!(
            denied(store.admit(&p, &u(&p, "b"), t(100), false)),
            Some((LimitKind::TokensPerMinute, Scope::Tenant))
        );
    }

    #[test]
    fn budgets_reserve_the_worst_case_and_settle_to_the_cost() {
        let p = plan(Limits {
            budget: Some(Budget::new("1", BudgetPeriod::Month)),
            per_user: Some(UserLimits { budget: Some(Budget::new("0.4", BudgetPeriod::Day)), ..Default::default() }),
            ..Default::default()
        });
        let store = LocalStore::default();
        let Verdict::Allowed { at, snapshot } = store.admit(&p, &u(&p, "a"), usd(300_000_000), false) else { panic!() };
        assert_eq!(snapshot.budget.map(|w| w.remaining), Some(100_000_000), "the user's day budget is tighter");
        // 0.3 reserved: another 0.3 is refused by the user's budget, with its window's reset.
        let Verdict::Denied(d) = store.admit(&p, &u(&p, "a"), usd(300_000_000), false) else { panic!() };
        assert_eq!(
            (d.kind, d.scope, d.remaining, d.period),
            (LimitKind::Budget, Scope::User, 100_000_000, Some(Period::Day))
        );
        assert!(d.retry_after <= std::time::Duration::from_secs(86_400));
        // It cost 0.05: 0.35 is left to the user.
        store.settle(&p, &u(&p, "a"), usd(300_000_000), usd(50_000_000), at, false);
        assert_eq!(denied(store.admit(&p, &u(&p, "a"), usd(350_000_000), false)), None);
        assert_eq!(denied(store.admit(&p, &u(&p, "a"), usd(1), false)), Some((LimitKind::Budget, Scope::User)));
        // Users b and c spend toward the tenant's month: 0.05 + 0.35 + 0.4 + 0.2 = 1.
        assert_eq!(denied(store.admit(&p, &u(&p, "b"), usd(400_000_000), false)), None);
        assert_eq!(denied(store.admit(&p, &u(&p, "c"), usd(200_000_000), false)), None);
        assert_eq!(denied(store.admit(&p, &u(&p, "c"), usd(1), false)), Some((LimitKind::Budget, Scope::Tenant)));
        // A request that used more than it reserved is charged in full.
        store.settle(&p, &u(&p, "c"), usd(200_000_000), usd(250_000_000), at, false);
        assert_eq!(store.lock().tenant.spent, 1_050_000_000);
    }

    #[test]
    fn a_keys_spend_counts_toward_its_user_team_and_tenant_and_each_can_refuse() {
        use tenantgate_crds::config::DeclaredApiKey;
        use tenantgate_crds::v1alpha1::{TeamBudget, TeamLimits};
        let limits = Limits {
            budget: Some(Budget::new("10", BudgetPeriod::Month)),
            per_user: Some(UserLimits { budget: Some(Budget::new("4", BudgetPeriod::Month)), ..Default::default() }),
            per_team: Some(TeamLimits {
                role_prefix: None,
                budget: Some(Budget::new("6", BudgetPeriod::Month)),
                teams: vec![TeamBudget { name: "ml".into(), budget: Budget::new("5", BudgetPeriod::Month) }],
            }),
            ..Default::default()
        };
        let key = |name: &str, amount: &str| DeclaredApiKey {
            team: Some("ml".into()),
            ..DeclaredApiKey::with_budget(name, name, Some(Budget::new(amount, BudgetPeriod::Month)))
        };
        let p = Plan::of("t", Some(&limits), &[key("ci", "1"), key("bot", "3")]).expect("plan");
        let who = |subject: &str, team: &str, key: Option<&str>| Who {
            user: Some(std::sync::Arc::new(p.user_keys(subject))),
            team: p.team_keys(team),
            key: key.and_then(|k| p.key_budgets.get(k).cloned()),
        };
        let unit = 1_000_000_000;
        let store = LocalStore::default();
        let ci = who("alice", "ml", Some("kubernetes:ci"));
        // The key's own budget of 1 refuses first, naming the key.
        assert_eq!(denied(store.admit(&p, &ci, usd(unit), false)), None);
        let Verdict::Denied(d) = store.admit(&p, &ci, usd(1), false) else { panic!("over the key's budget") };
        assert_eq!((d.kind, d.scope, d.limit, d.remaining), (LimitKind::Budget, Scope::Key, unit, 0));
        // Alice without the key has 3 of her 4 left; her spend through the key counted.
        let alice = who("alice", "ml", None);
        assert_eq!(denied(store.admit(&p, &alice, usd(3 * unit + 1), false)), Some((LimitKind::Budget, Scope::User)));
        assert_eq!(denied(store.admit(&p, &alice, usd(3 * unit), false)), None);
        // Team ml (5) has 1 left: bob's key (3 of its own) is refused by the team.
        let bob = who("bob", "ml", Some("kubernetes:bot"));
        assert_eq!(denied(store.admit(&p, &bob, usd(2 * unit), false)), Some((LimitKind::Budget, Scope::Team)));
        assert_eq!(denied(store.admit(&p, &bob, usd(unit), false)), None);
        // Team search takes the default of 6, but the tenant's 10 has 5 left, all for carol.
        let carol = who("carol", "search", None);
        assert_eq!(carol.team.as_ref().map(|t| t.limit.nanos), Some(6 * unit));
        assert_eq!(denied(store.admit(&p, &carol, usd(5 * unit), false)), None);
        let dave = who("dave", "search", None);
        assert_eq!(denied(store.admit(&p, &dave, usd(1), false)), Some((LimitKind::Budget, Scope::Tenant)));
        // Settling gives back to every scope: the key's request cost nothing in the end.
        store.settle(&p, &ci, usd(unit), usd(0), at_now(&store), false);
        assert_eq!(
            denied(store.admit(&p, &ci, usd(unit), false)),
            None,
            "the key, alice, ml and the tenant had it back"
        );
        assert_eq!(store.spent(Scope::Team, "ml", Period::Month.window(at_now(&store))), 5 * unit);
        assert_eq!(store.spent(Scope::Key, "kubernetes:ci", Period::Month.window(at_now(&store))), unit);
    }

    fn at_now(store: &LocalStore) -> i64 {
        (store.now() / 1e6).floor() as i64
    }

    #[test]
    fn a_fixed_window_budget_counts_in_its_window() {
        let start = (LocalStore::default().now() / 1e6) as i64 - 10;
        let stamp = |s: i64| {
            let d = s.div_euclid(86_400);
            let r = s.rem_euclid(86_400);
            format!("{}T{:02}:{:02}:{:02}Z", Period::Day.label(d), r / 3600, r / 60 % 60, r % 60)
        };
        let p = plan(Limits { budget: Some(Budget::fixed("2", &stamp(start), "1h")), ..Default::default() });
        let store = LocalStore::default();
        let Verdict::Allowed { snapshot, .. } = store.admit(&p, &Who::default(), usd(1_500_000_000), false) else {
            panic!("admitted")
        };
        let window = snapshot.budget.expect("a budget window");
        assert_eq!(window.remaining, 500_000_000);
        assert!(window.reset <= std::time::Duration::from_secs(3_600 - 10), "{:?}", window.reset);
        let Verdict::Denied(d) = store.admit(&p, &Who::default(), usd(1_000_000_000), false) else { panic!("refused") };
        assert_eq!(d.period, Some(Period::Fixed { start, length: 3_600 }));
        assert_eq!(store.spent(Scope::Tenant, "", start), 1_500_000_000, "a fixed window is numbered by its start");
    }

    #[test]
    fn a_user_with_spend_in_the_current_window_is_not_swept() {
        let b = Buckets { spent: 1, budget_window: 5, budget_until: 1e6, ..Default::default() };
        assert!(!b.is_idle(0.0, 0));
        assert!(b.is_idle(1e6, 0), "the window's spend is over when it ends");
        assert!(Buckets::default().is_idle(0.0, 0));
    }

    #[test]
    fn stream_slots_are_taken_and_given_back() {
        let p = plan(Limits { max_concurrent_streams: Some(2), ..Default::default() });
        let store = LocalStore::default();
        assert_eq!(denied(store.admit(&p, &Who::default(), t(0), true)), None);
        assert_eq!(denied(store.admit(&p, &Who::default(), t(0), true)), None);
        assert_eq!(denied(store.admit(&p, &Who::default(), t(0), true)), Some((LimitKind::Streams, Scope::Tenant)));
        // Non-streaming requests do not need a slot.
        assert_eq!(denied(store.admit(&p, &Who::default(), t(0), false)), None);
        store.settle(&p, &Who::default(), t(0), t(0), 0, true);
        assert_eq!(store.open_streams(), 1);
        assert_eq!(denied(store.admit(&p, &Who::default(), t(0), true)), None);
    }

    #[test]
    fn idle_users_are_swept() {
        let p = plan(Limits {
            per_user: Some(UserLimits { requests_per_minute: Some(6_000_000), burst: Some(1), ..Default::default() }),
            ..Default::default()
        });
        let store = LocalStore::default();
        for i in 0..3 * SWEEP_FLOOR {
            store.admit(&p, &u(&p, &format!("u{i}")), t(0), false);
        }
        // Each user's bucket refills in 10 µs, so most were idle at each sweep.
        assert!(store.lock().users.map.len() < 2 * SWEEP_FLOOR, "{}", store.lock().users.map.len());
    }
}
