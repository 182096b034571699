//! In-process limits for a gateway without Redis (one replica): the same
//! checks as `lease.lua`, under one short `std` mutex that is never held
//! across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::decision::{N, Outcome, Outcomes, Verdict, verdict};
use super::gcra::{Check, Gcra};
use super::period::Period;
use super::plan::{Plan, ScopeLimits};
use super::reserve::Charge;

/// Users kept before idle ones are swept out.
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
    users: HashMap<Box<str>, Buckets>,
    sweep_at: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct Buckets {
    requests: f64,
    tokens_per_minute: f64,
    day: i64,
    used_today: u64,
    /// The budget's window (day or month number) and the nano-units spent in it.
    budget_window: i64,
    spent: u64,
}

impl Buckets {
    /// Whether nothing is held: a user with spend in the current budget
    /// window (`budget_window`) is kept, since forgetting it would reset the budget.
    fn is_idle(&self, now: f64, day: i64, budget_window: i64) -> bool {
        self.requests <= now
            && self.tokens_per_minute <= now
            && (self.day != day || self.used_today == 0)
            && (self.budget_window != budget_window || self.spent == 0)
    }
}

/// A pending write of one scope, applied when every check passed.
#[derive(Clone, Copy, Debug, Default)]
struct Write {
    requests: Option<f64>,
    tokens_per_minute: Option<f64>,
    used_today: Option<u64>,
    spent: Option<(i64, u64)>,
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

fn check_scope(s: &ScopeLimits, b: &Buckets, now: f64, at: i64, charge: Charge, out: &mut [Option<Outcome>]) -> Write {
    let (day, cost) = (Period::Day.window(at), charge.tokens);
    let mut w = Write::default();
    if let Some(g) = &s.requests {
        let (o, tat) = gcra_outcome(g, b.requests, now, 1);
        out[0] = Some(o);
        w.requests = tat;
    }
    if let Some(g) = &s.tokens_per_minute {
        let (o, tat) = gcra_outcome(g, b.tokens_per_minute, now, cost);
        out[2] = Some(o);
        w.tokens_per_minute = tat;
    }
    if let Some(limit) = s.tokens_per_day {
        let used = if b.day == day { b.used_today } else { 0 };
        let (o, used) = window_outcome(limit, used, Period::Day, now, cost);
        out[4] = Some(o);
        w.used_today = used;
    }
    if let Some(budget) = s.budget {
        let window = budget.period.window(at);
        let spent = if b.budget_window == window { b.spent } else { 0 };
        let (o, spent) = window_outcome(budget.nanos, spent, budget.period, now, charge.nanos);
        out[6] = Some(o);
        w.spent = spent.map(|s| (window, s));
    }
    w
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
    if let Some((window, spent)) = w.spent {
        b.budget_window = window;
        b.spent = spent;
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
    pub fn admit(&self, plan: &Plan, subject: Option<&str>, charge: Charge, stream: bool) -> Verdict {
        let now = self.now();
        let at = (now / 1e6).floor() as i64;
        let day = Period::Day.window(at);
        let mut outcomes: Outcomes = [None; N];
        let mut state = self.lock();
        let tenant_write = check_scope(&plan.tenant, &state.tenant, now, at, charge, &mut outcomes[0..]);
        // The user's checks land in the odd slots: write them to a scratch array first.
        let mut user_out = [None; 7];
        let user = plan.user.as_ref().zip(subject);
        let user_write = user.map(|(limits, subject)| {
            let b = state.users.get(subject).copied().unwrap_or_default();
            check_scope(limits, &b, now, at, charge, &mut user_out)
        });
        for i in [0, 2, 4, 6] {
            outcomes[i + 1] = user_out[i];
        }
        if let Some(max) = plan.max_streams.filter(|_| stream) {
            let open = self.streams.load(Ordering::Acquire);
            outcomes[8] = Some(Outcome {
                allowed: open < max,
                retry_us: 1e6,
                remaining: u64::from(max.saturating_sub(open + 1)),
                reset_us: 0.0,
            });
        }
        let v = verdict(plan, &outcomes, at);
        if matches!(v, Verdict::Allowed { .. }) {
            apply(&mut state.tenant, tenant_write, day);
            if let (Some((_, subject)), Some(w)) = (user, user_write) {
                match state.users.get_mut(subject) {
                    Some(b) => apply(b, w, day),
                    None => {
                        let mut b = Buckets::default();
                        apply(&mut b, w, day);
                        state.users.insert(subject.into(), b);
                        let window = plan.user.and_then(|u| u.budget).map_or(0, |b| b.period.window(at));
                        sweep(&mut state, now, day, window);
                    }
                }
            }
            if outcomes[8].is_some() {
                self.streams.fetch_add(1, Ordering::AcqRel);
            }
        }
        v
    }

    /// Replaces a reservation of `reserved` tokens and nano-units made at
    /// second `at` by the `actual` usage, and frees the stream slot when `stream`.
    pub fn settle(&self, plan: &Plan, subject: Option<&str>, reserved: Charge, actual: Charge, at: i64, stream: bool) {
        if stream {
            // Saturating: a slot taken under an older config is released exactly once too.
            let _ = self.streams.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
        }
        if reserved == actual || !(plan.counts_tokens() || plan.counts_cost()) {
            return;
        }
        let now = self.now();
        let mut state = self.lock();
        settle_scope(&plan.tenant, &mut state.tenant, now, reserved, actual, at);
        if let (Some(limits), Some(subject)) = (&plan.user, subject)
            && let Some(b) = state.users.get_mut(subject)
        {
            settle_scope(limits, b, now, reserved, actual, at);
        }
    }

    /// Nano-units spent (and reserved) in budget window `window` by the
    /// tenant, or by `subject`.
    pub fn spent(&self, subject: Option<&str>, window: i64) -> u64 {
        let state = self.lock();
        let b = match subject {
            None => Some(&state.tenant),
            Some(s) => state.users.get(s),
        };
        b.filter(|b| b.budget_window == window).map_or(0, |b| b.spent)
    }

    /// Streams open now.
    pub fn open_streams(&self) -> u32 {
        self.streams.load(Ordering::Acquire)
    }
}

/// Drops idle users once the map has doubled since the last sweep.
fn sweep(state: &mut State, now: f64, day: i64, budget_window: i64) {
    if state.users.len() < state.sweep_at.max(SWEEP_FLOOR) {
        return;
    }
    state.users.retain(|_, b| !b.is_idle(now, day, budget_window));
    state.sweep_at = state.users.len() * 2;
}

#[cfg(test)]
mod tests {
    use tenantgate_crds::v1alpha1::{Budget, BudgetPeriod, Limits, UserLimits};

    use super::*;
    use crate::limits::decision::{LimitKind, Scope};

    fn plan(limits: Limits) -> Plan {
        Plan::new("t", &limits).expect("plan")
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
        assert_eq!(denied(store.admit(&p, Some("a"), t(0), false)), None);
        assert_eq!(denied(store.admit(&p, Some("a"), t(0), false)), None);
        assert_eq!(denied(store.admit(&p, Some("a"), t(0), false)), Some((LimitKind::Requests, Scope::User)));
        // Another user still has room, until the tenant burst of 5 is spent.
        assert_eq!(denied(store.admit(&p, Some("b"), t(0), false)), None);
        assert_eq!(denied(store.admit(&p, Some("b"), t(0), false)), None);
        assert_eq!(denied(store.admit(&p, Some("c"), t(0), false)), None);
        assert_eq!(denied(store.admit(&p, Some("d"), t(0), false)), Some((LimitKind::Requests, Scope::Tenant)));
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
        assert_eq!(denied(store.admit(&p, None, t(80), false)), None);
        // 80 + 30 > 100: refused, and the request did not count against the burst.
        assert_eq!(denied(store.admit(&p, None, t(30), false)), Some((LimitKind::TokensPerDay, Scope::Tenant)));
        for _ in 0..9 {
            assert_eq!(denied(store.admit(&p, None, t(0), false)), None);
        }
        assert_eq!(denied(store.admit(&p, None, t(0), false)), Some((LimitKind::Requests, Scope::Tenant)));
    }

    #[test]
    fn reservations_settle_to_real_usage() {
        let p = plan(Limits {
            tokens_per_minute: Some(1_000),
            per_user: Some(UserLimits { tokens_per_day: Some(500), ..Default::default() }),
            ..Default::default()
        });
        let store = LocalStore::default();
        let Verdict::Allowed { at, snapshot } = store.admit(&p, Some("a"), t(400), false) else { panic!() };
        assert_eq!(snapshot.tokens.map(|w| w.remaining), Some(100), "the user's day quota is tighter");
        assert!(denied(store.admit(&p, Some("a"), t(400), false)).is_some());
        store.settle(&p, Some("a"), t(400), t(50), at, false);
        // 450 of the user's day left, 950 of the tenant's minute.
        assert_eq!(denied(store.admit(&p, Some("a"), t(450), false)), None);
        assert_eq!(denied(store.admit(&p, Some("a"), t(1), false)), Some((LimitKind::TokensPerDay, Scope::User)));
        // Overuse is charged to the minute bucket: 450 reserved, 900 used.
        store.settle(&p, Some("a"), t(450), t(900), at, false);
        assert_eq!(
            denied(store.admit(&p, Some("b"), t(100), false)),
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
        let Verdict::Allowed { at, snapshot } = store.admit(&p, Some("a"), usd(300_000_000), false) else { panic!() };
        assert_eq!(snapshot.budget.map(|w| w.remaining), Some(100_000_000), "the user's day budget is tighter");
        // 0.3 reserved: another 0.3 is refused by the user's budget, with its window's reset.
        let Verdict::Denied(d) = store.admit(&p, Some("a"), usd(300_000_000), false) else { panic!() };
        assert_eq!(
            (d.kind, d.scope, d.remaining, d.period),
            (LimitKind::Budget, Scope::User, 100_000_000, Some(Period::Day))
        );
        assert!(d.retry_after <= std::time::Duration::from_secs(86_400));
        // It cost 0.05: 0.35 is left to the user.
        store.settle(&p, Some("a"), usd(300_000_000), usd(50_000_000), at, false);
        assert_eq!(denied(store.admit(&p, Some("a"), usd(350_000_000), false)), None);
        assert_eq!(denied(store.admit(&p, Some("a"), usd(1), false)), Some((LimitKind::Budget, Scope::User)));
        // Users b and c spend toward the tenant's month: 0.05 + 0.35 + 0.4 + 0.2 = 1.
        assert_eq!(denied(store.admit(&p, Some("b"), usd(400_000_000), false)), None);
        assert_eq!(denied(store.admit(&p, Some("c"), usd(200_000_000), false)), None);
        assert_eq!(denied(store.admit(&p, Some("c"), usd(1), false)), Some((LimitKind::Budget, Scope::Tenant)));
        // A request that used more than it reserved is charged in full.
        store.settle(&p, Some("c"), usd(200_000_000), usd(250_000_000), at, false);
        assert_eq!(store.lock().tenant.spent, 1_050_000_000);
    }

    #[test]
    fn a_user_with_spend_in_the_current_window_is_not_swept() {
        let b = Buckets { spent: 1, budget_window: 5, ..Default::default() };
        assert!(!b.is_idle(f64::MAX, 0, 5));
        assert!(b.is_idle(f64::MAX, 0, 6), "last window's spend is over");
        assert!(Buckets::default().is_idle(0.0, 0, 5));
    }

    #[test]
    fn stream_slots_are_taken_and_given_back() {
        let p = plan(Limits { max_concurrent_streams: Some(2), ..Default::default() });
        let store = LocalStore::default();
        assert_eq!(denied(store.admit(&p, None, t(0), true)), None);
        assert_eq!(denied(store.admit(&p, None, t(0), true)), None);
        assert_eq!(denied(store.admit(&p, None, t(0), true)), Some((LimitKind::Streams, Scope::Tenant)));
        // Non-streaming requests do not need a slot.
        assert_eq!(denied(store.admit(&p, None, t(0), false)), None);
        store.settle(&p, None, t(0), t(0), 0, true);
        assert_eq!(store.open_streams(), 1);
        assert_eq!(denied(store.admit(&p, None, t(0), true)), None);
    }

    #[test]
    fn idle_users_are_swept() {
        let p = plan(Limits {
            per_user: Some(UserLimits { requests_per_minute: Some(6_000_000), burst: Some(1), ..Default::default() }),
            ..Default::default()
        });
        let store = LocalStore::default();
        for i in 0..3 * SWEEP_FLOOR {
            store.admit(&p, Some(&format!("u{i}")), t(0), false);
        }
        // Each user's bucket refills in 10 µs, so most were idle at each sweep.
        assert!(store.lock().users.len() < 2 * SWEEP_FLOOR, "{}", store.lock().users.len());
    }
}
