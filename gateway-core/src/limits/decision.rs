//! One decision over every limit of a request, as both stores report it:
//! per-check outcomes in a fixed order, assembled here into a verdict, the
//! window shown in `x-ratelimit-*` headers, and the binding denial.

use std::time::Duration;

use super::period::Period;
use super::plan::{Plan, Who};

/// Which limit a check is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests per minute (with burst).
    Requests,
    /// Tokens per minute.
    TokensPerMinute,
    /// Tokens per UTC day.
    TokensPerDay,
    /// Spend per day or month (nano-units).
    Budget,
    /// Streams open at once.
    Streams,
}

/// Whose limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole tenant.
    Tenant,
    /// One user (subject or API key).
    User,
    /// One team.
    Team,
    /// One API key (its own budget).
    Key,
}

/// The checks of one decision, in the order of `lease.lua`'s KEYS and results.
pub const CHECKS: [(LimitKind, Scope); N] = [
    (LimitKind::Requests, Scope::Tenant),
    (LimitKind::Requests, Scope::User),
    (LimitKind::TokensPerMinute, Scope::Tenant),
    (LimitKind::TokensPerMinute, Scope::User),
    (LimitKind::TokensPerDay, Scope::Tenant),
    (LimitKind::TokensPerDay, Scope::User),
    (LimitKind::Budget, Scope::Tenant),
    (LimitKind::Budget, Scope::User),
    (LimitKind::Budget, Scope::Team),
    (LimitKind::Budget, Scope::Key),
    (LimitKind::Streams, Scope::Tenant),
];

/// How many checks a decision has.
pub const N: usize = 11;

/// The outcome of every check of a decision (`None`: not configured).
pub type Outcomes = [Option<Outcome>; N];

/// The outcome of one configured check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Whether this check admits the request.
    pub allowed: bool,
    /// When refused: microseconds until it would pass.
    pub retry_us: f64,
    /// Units left after this request (or now, when refused).
    pub remaining: u64,
    /// Microseconds until the limit is fully available again.
    pub reset_us: f64,
}

/// One limit as the `x-ratelimit-*` headers show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// The configured limit (per minute, or per day when only a daily quota applies).
    pub limit: u64,
    /// What could pass right now.
    pub remaining: u64,
    /// Until the limit is fully available again.
    pub reset: Duration,
}

/// The request, token and budget windows of a decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The tightest request limit.
    pub requests: Option<Window>,
    /// The tightest token limit (per minute or per day: the one with the least left).
    pub tokens: Option<Window>,
    /// The tightest budget (tenant, user, team or key: the one with the least left), in nano-units.
    pub budget: Option<Window>,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The limit that refused it (the one that frees up last, when several did).
    pub kind: LimitKind,
    /// Whose limit.
    pub scope: Scope,
    /// That limit's configured value.
    pub limit: u64,
    /// When to try again.
    pub retry_after: Duration,
    /// The window of a budget that refused.
    pub period: Option<Period>,
    /// What the refusing limit had left.
    pub remaining: u64,
    /// Headers to send.
    pub snapshot: Snapshot,
}

/// A decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted.
    Allowed {
        /// Headers to send.
        snapshot: Snapshot,
        /// Seconds since the Unix epoch by the store's clock: the windows
        /// (day, month) the reservation was taken in.
        at: i64,
    },
    /// Refused; nothing was taken.
    Denied(Denial),
}

fn micros(us: f64) -> Duration {
    Duration::from_micros(us.max(0.0).ceil() as u64)
}

/// The configured value of check `i` in `plan` for `who`.
pub fn limit_of(plan: &Plan, who: &Who, i: usize) -> Option<u64> {
    let scope = match CHECKS[i].1 {
        Scope::Tenant => Some(plan.tenant),
        Scope::User => plan.user,
        Scope::Team => return who.team.as_ref().map(|t| t.limit.nanos),
        Scope::Key => return who.key.as_ref().map(|k| k.limit.nanos),
    };
    match CHECKS[i].0 {
        LimitKind::Requests => scope?.requests.map(|g| (60e6 / g.interval_us).round() as u64),
        LimitKind::TokensPerMinute => scope?.tokens_per_minute.map(|g| g.capacity),
        LimitKind::TokensPerDay => scope?.tokens_per_day,
        LimitKind::Budget => scope?.budget.map(|b| b.nanos),
        LimitKind::Streams => plan.max_streams.map(u64::from),
    }
}

/// Assembles the outcomes of the configured checks (`None`: not configured).
pub fn verdict(plan: &Plan, who: &Who, outcomes: &Outcomes, at: i64) -> Verdict {
    let window = |slots: &[usize]| {
        slots
            .iter()
            .filter_map(|&i| Some((limit_of(plan, who, i)?, outcomes[i]?)))
            .min_by_key(|(_, o)| o.remaining)
            .map(|(limit, o)| Window { limit, remaining: o.remaining, reset: micros(o.reset_us) })
    };
    let snapshot = Snapshot { requests: window(&[0, 1]), tokens: window(&[2, 3, 4, 5]), budget: window(&[6, 7, 8, 9]) };
    let worst = (0..CHECKS.len())
        .filter_map(|i| outcomes[i].filter(|o| !o.allowed).map(|o| (i, o)))
        .max_by(|(_, a), (_, b)| a.retry_us.total_cmp(&b.retry_us));
    match worst {
        None => Verdict::Allowed { snapshot, at },
        Some((i, o)) => Verdict::Denied(Denial {
            kind: CHECKS[i].0,
            scope: CHECKS[i].1,
            limit: limit_of(plan, who, i).unwrap_or(0),
            retry_after: micros(o.retry_us),
            period: budget_period(plan, who, i),
            remaining: o.remaining,
            snapshot,
        }),
    }
}

/// The period of check `i` when it is a budget.
pub fn budget_period(plan: &Plan, who: &Who, i: usize) -> Option<Period> {
    let scope = match CHECKS[i] {
        (LimitKind::Budget, Scope::Tenant) => Some(plan.tenant),
        (LimitKind::Budget, Scope::User) => plan.user,
        (LimitKind::Budget, Scope::Team) => return who.team.as_ref().map(|t| t.limit.period),
        (LimitKind::Budget, Scope::Key) => return who.key.as_ref().map(|k| k.limit.period),
        _ => None,
    };
    scope?.budget.map(|b| b.period)
}

#[cfg(test)]
mod tests {
    use tenantgate_crds::v1alpha1::{Budget, BudgetPeriod, Limits, UserLimits};

    use super::*;

    fn plan() -> Plan {
        Plan::new(
            "t",
            &Limits {
                requests_per_minute: Some(600),
                tokens_per_minute: Some(10_000),
                per_user: Some(UserLimits { requests_per_minute: Some(60), ..Default::default() }),
                ..Default::default()
            },
        )
        .expect("plan")
    }

    fn ok(remaining: u64) -> Option<Outcome> {
        Some(Outcome { allowed: true, retry_us: 0.0, remaining, reset_us: 1e6 })
    }

    #[test]
    fn headers_show_the_tightest_scope() {
        let v = verdict(
            &plan(),
            &Who::default(),
            &[ok(50), ok(3), ok(9_000), None, None, None, None, None, None, None, None],
            7,
        );
        let Verdict::Allowed { snapshot, at } = v else { panic!("{v:?}") };
        assert_eq!(at, 7);
        assert_eq!(snapshot.requests, Some(Window { limit: 60, remaining: 3, reset: Duration::from_secs(1) }));
        assert_eq!(snapshot.tokens.map(|w| (w.limit, w.remaining)), Some((10_000, 9_000)));
    }

    #[test]
    fn the_denial_that_frees_up_last_is_reported() {
        let deny = |retry_us| Some(Outcome { allowed: false, retry_us, remaining: 0, reset_us: retry_us });
        let v = verdict(
            &plan(),
            &Who::default(),
            &[deny(100_000.0), deny(2_500_000.0), ok(1), None, None, None, None, None, None, None, None],
            0,
        );
        let Verdict::Denied(d) = v else { panic!("{v:?}") };
        assert_eq!((d.kind, d.scope, d.limit), (LimitKind::Requests, Scope::User, 60));
        assert_eq!(d.retry_after, Duration::from_millis(2500));
    }

    #[test]
    fn a_budget_denial_names_its_period_and_what_was_left() {
        let p = Plan::new(
            "t",
            &Limits {
                requests_per_minute: Some(600),
                per_user: Some(UserLimits { budget: Some(Budget::new("1", BudgetPeriod::Day)), ..Default::default() }),
                ..Default::default()
            },
        )
        .expect("plan");
        let refused = Some(Outcome { allowed: false, retry_us: 3_600e6, remaining: 40, reset_us: 3_600e6 });
        let v =
            verdict(&p, &Who::default(), &[ok(10), None, None, None, None, None, None, refused, None, None, None], 0);
        let Verdict::Denied(d) = v else { panic!("{v:?}") };
        assert_eq!((d.kind, d.scope, d.limit, d.remaining), (LimitKind::Budget, Scope::User, 1_000_000_000, 40));
        assert_eq!(d.period, Some(Period::Day));
        assert_eq!(d.snapshot.budget.map(|w| w.remaining), Some(40));
    }
}
