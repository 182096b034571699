//! In-process limits for a gateway without Redis (one replica): the same
//! checks as `lease.lua`, under one short `std` mutex that is never held
//! across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::decision::{Outcome, Verdict, until_midnight_us, verdict};
use super::gcra::{Check, Gcra};
use super::plan::{Plan, ScopeLimits};

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
}

impl Buckets {
    fn is_idle(&self, now: f64, day: i64) -> bool {
        self.requests <= now && self.tokens_per_minute <= now && (self.day != day || self.used_today == 0)
    }
}

/// A pending write of one scope, applied when every check passed.
#[derive(Clone, Copy, Debug, Default)]
struct Write {
    requests: Option<f64>,
    tokens_per_minute: Option<f64>,
    used_today: Option<u64>,
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
fn day_outcome(limit: u64, b: &Buckets, day: i64, now: f64, cost: u64) -> (Outcome, Option<u64>) {
    let cost = cost.min(limit);
    let used = if b.day == day { b.used_today } else { 0 };
    let reset_us = until_midnight_us(now);
    if used + cost > limit {
        (Outcome { allowed: false, retry_us: reset_us, remaining: limit.saturating_sub(used), reset_us }, None)
    } else {
        (Outcome { allowed: true, retry_us: 0.0, remaining: limit - used - cost, reset_us }, Some(used + cost))
    }
}

fn check_scope(s: &ScopeLimits, b: &Buckets, now: f64, day: i64, cost: u64, out: &mut [Option<Outcome>]) -> Write {
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
        let (o, used) = day_outcome(limit, b, day, now, cost);
        out[4] = Some(o);
        w.used_today = used;
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
}

fn settle_scope(s: &ScopeLimits, b: &mut Buckets, now: f64, reserved: u64, actual: u64, day: i64) {
    if let Some(g) = &s.tokens_per_minute {
        b.tokens_per_minute = g.settle(b.tokens_per_minute, now, reserved, actual);
    }
    if let Some(limit) = s.tokens_per_day
        && b.day == day
    {
        b.used_today = (b.used_today + actual).saturating_sub(reserved.min(limit));
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
    pub fn admit(&self, plan: &Plan, subject: Option<&str>, cost: u64, stream: bool) -> Verdict {
        let now = self.now();
        let day = (now / 86_400e6).floor() as i64;
        let mut outcomes = [None; 7];
        let mut state = self.lock();
        let tenant_write = check_scope(&plan.tenant, &state.tenant, now, day, cost, &mut outcomes[0..]);
        // The user's checks land in the odd slots: write them to a scratch array first.
        let mut user_out = [None; 5];
        let user = plan.user.as_ref().zip(subject);
        let user_write = user.map(|(limits, subject)| {
            let b = state.users.get(subject).copied().unwrap_or_default();
            check_scope(limits, &b, now, day, cost, &mut user_out)
        });
        outcomes[1] = user_out[0];
        outcomes[3] = user_out[2];
        outcomes[5] = user_out[4];
        if let Some(max) = plan.max_streams.filter(|_| stream) {
            let open = self.streams.load(Ordering::Acquire);
            outcomes[6] = Some(Outcome {
                allowed: open < max,
                retry_us: 1e6,
                remaining: u64::from(max.saturating_sub(open + 1)),
                reset_us: 0.0,
            });
        }
        let v = verdict(plan, &outcomes, day);
        if matches!(v, Verdict::Allowed { .. }) {
            apply(&mut state.tenant, tenant_write, day);
            if let (Some((_, subject)), Some(w)) = (user, user_write) {
                match state.users.get_mut(subject) {
                    Some(b) => apply(b, w, day),
                    None => {
                        let mut b = Buckets::default();
                        apply(&mut b, w, day);
                        state.users.insert(subject.into(), b);
                        sweep(&mut state, now, day);
                    }
                }
            }
            if outcomes[6].is_some() {
                self.streams.fetch_add(1, Ordering::AcqRel);
            }
        }
        v
    }

    /// Replaces a reservation of `reserved` tokens made on `day` by the
    /// `actual` usage, and frees the stream slot when `stream`.
    pub fn settle(&self, plan: &Plan, subject: Option<&str>, reserved: u64, actual: u64, day: i64, stream: bool) {
        if stream {
            // Saturating: a slot taken under an older config is released exactly once too.
            let _ = self.streams.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
        }
        if reserved == actual || !plan.counts_tokens() {
            return;
        }
        let now = self.now();
        let mut state = self.lock();
        settle_scope(&plan.tenant, &mut state.tenant, now, reserved, actual, day);
        if let (Some(limits), Some(subject)) = (&plan.user, subject)
            && let Some(b) = state.users.get_mut(subject)
        {
            settle_scope(limits, b, now, reserved, actual, day);
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> u32 {
        self.streams.load(Ordering::Acquire)
    }
}

/// Drops idle users once the map has doubled since the last sweep.
fn sweep(state: &mut State, now: f64, day: i64) {
    if state.users.len() < state.sweep_at.max(SWEEP_FLOOR) {
        return;
    }
    state.users.retain(|_, b| !b.is_idle(now, day));
    state.sweep_at = state.users.len() * 2;
}

#[cfg(test)]
mod tests {
    use tenantgate_crds::v1alpha1::{Limits, UserLimits};

    use super::*;
    use crate::limits::decision::{LimitKind, Scope};

    fn plan(limits: Limits) -> Plan {
        Plan::new("t", &limits).expect("plan")
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
        assert_eq!(denied(store.admit(&p, Some("a"), 0, false)), None);
        assert_eq!(denied(store.admit(&p, Some("a"), 0, false)), None);
        assert_eq!(denied(store.admit(&p, Some("a"), 0, false)), Some((LimitKind::Requests, Scope::User)));
        // Another user still has room, until the tenant burst of 5 is spent.
        assert_eq!(denied(store.admit(&p, Some("b"), 0, false)), None);
        assert_eq!(denied(store.admit(&p, Some("b"), 0, false)), None);
        assert_eq!(denied(store.admit(&p, Some("c"), 0, false)), None);
        assert_eq!(denied(store.admit(&p, Some("d"), 0, false)), Some((LimitKind::Requests, Scope::Tenant)));
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
        assert_eq!(denied(store.admit(&p, None, 80, false)), None);
        // 80 + 30 > 100: refused, and the request did not count against the burst.
        assert_eq!(denied(store.admit(&p, None, 30, false)), Some((LimitKind::TokensPerDay, Scope::Tenant)));
        for _ in 0..9 {
            assert_eq!(denied(store.admit(&p, None, 0, false)), None);
        }
        assert_eq!(denied(store.admit(&p, None, 0, false)), Some((LimitKind::Requests, Scope::Tenant)));
    }

    #[test]
    fn reservations_settle_to_real_usage() {
        let p = plan(Limits {
            tokens_per_minute: Some(1_000),
            per_user: Some(UserLimits { tokens_per_day: Some(500), ..Default::default() }),
            ..Default::default()
        });
        let store = LocalStore::default();
        let Verdict::Allowed { day, snapshot } = store.admit(&p, Some("a"), 400, false) else { panic!() };
        assert_eq!(snapshot.tokens.map(|w| w.remaining), Some(100), "the user's day quota is tighter");
        assert!(denied(store.admit(&p, Some("a"), 400, false)).is_some());
        store.settle(&p, Some("a"), 400, 50, day, false);
        // 450 of the user's day left, 950 of the tenant's minute.
        assert_eq!(denied(store.admit(&p, Some("a"), 450, false)), None);
        assert_eq!(denied(store.admit(&p, Some("a"), 1, false)), Some((LimitKind::TokensPerDay, Scope::User)));
        // Overuse is charged to the minute bucket: 450 reserved, 900 used.
        store.settle(&p, Some("a"), 450, 900, day, false);
        assert_eq!(denied(store.admit(&p, Some("b"), 100, false)), Some((LimitKind::TokensPerMinute, Scope::Tenant)));
    }

    #[test]
    fn stream_slots_are_taken_and_given_back() {
        let p = plan(Limits { max_concurrent_streams: Some(2), ..Default::default() });
        let store = LocalStore::default();
        assert_eq!(denied(store.admit(&p, None, 0, true)), None);
        assert_eq!(denied(store.admit(&p, None, 0, true)), None);
        assert_eq!(denied(store.admit(&p, None, 0, true)), Some((LimitKind::Streams, Scope::Tenant)));
        // Non-streaming requests do not need a slot.
        assert_eq!(denied(store.admit(&p, None, 0, false)), None);
        store.settle(&p, None, 0, 0, 0, true);
        assert_eq!(store.open_streams(), 1);
        assert_eq!(denied(store.admit(&p, None, 0, true)), None);
    }

    #[test]
    fn idle_users_are_swept() {
        let p = plan(Limits {
            per_user: Some(UserLimits { requests_per_minute: Some(6_000_000), burst: Some(1), ..Default::default() }),
            ..Default::default()
        });
        let store = LocalStore::default();
        for i in 0..3 * SWEEP_FLOOR {
            store.admit(&p, Some(&format!("u{i}")), 0, false);
        }
        // Each user's bucket refills in 10 µs, so most were idle at each sweep.
        assert!(store.lock().users.len() < 2 * SWEEP_FLOOR, "{}", store.lock().users.len());
    }
}
