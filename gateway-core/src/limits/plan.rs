//! `GatewayConfig.limits` compiled into buckets and Redis key names.

use std::collections::HashMap;
use std::sync::Arc;

use tenantgate_crds::config::DeclaredApiKey;
use tenantgate_crds::v1alpha1::{Budget, FailMode, Limits};

use super::gcra::Gcra;
use super::period::Period;

/// A spend cap: nano-units of the tenant's currency per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetLimit {
    /// The cap, in nano-units.
    pub nanos: u64,
    /// The window it applies to.
    pub period: Period,
}

impl BudgetLimit {
    /// The cap of `budget`; an amount that does not parse (the config load
    /// refuses it first) caps at zero, never at unlimited.
    fn new(budget: &Budget) -> Self {
        let nanos = tenantgate_crds::pricing::budget_nanos(&budget.amount).unwrap_or(0);
        Self { nanos, period: Period::of(budget).unwrap_or(Period::Month) }
    }
}

/// The buckets of one scope (the tenant, or one user).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScopeLimits {
    /// Requests per minute with burst.
    pub requests: Option<Gcra>,
    /// Tokens per minute: a bucket holding one minute of tokens.
    pub tokens_per_minute: Option<Gcra>,
    /// Tokens per UTC day.
    pub tokens_per_day: Option<u64>,
    /// Spend per period.
    pub budget: Option<BudgetLimit>,
}

impl ScopeLimits {
    fn new(rpm: Option<u32>, burst: Option<u32>, tpm: Option<u64>, tpd: Option<u64>, budget: Option<&Budget>) -> Self {
        Self {
            requests: rpm.map(|r| Gcra::per_minute(u64::from(r), u64::from(burst.unwrap_or_else(|| default_burst(r))))),
            tokens_per_minute: tpm.map(|t| Gcra::per_minute(t, t)),
            tokens_per_day: tpd,
            budget: budget.map(BudgetLimit::new),
        }
    }

    /// Whether any token limit applies.
    pub fn counts_tokens(&self) -> bool {
        self.tokens_per_minute.is_some() || self.tokens_per_day.is_some()
    }

    fn is_empty(&self) -> bool {
        self.requests.is_none() && !self.counts_tokens() && self.budget.is_none()
    }
}

/// `burst` defaults to 10% of the rate (at least 1), as the Tenant CRD documents.
pub fn default_burst(rpm: u32) -> u32 {
    (rpm / 10).max(1)
}

/// Every limit of one config and where it lives in Redis.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Whole-tenant limits.
    pub tenant: ScopeLimits,
    /// Limits of each user, when `perUser` is set.
    pub user: Option<ScopeLimits>,
    /// Budgets of teams, when `perTeam` sets any.
    pub teams: Option<TeamBudgets>,
    /// Budgets of the declared API keys that have one, by key id (`kubernetes:<name>`).
    pub key_budgets: HashMap<Box<str>, Arc<BudgetKeys>>,
    /// Streams open at once for the tenant.
    pub max_streams: Option<u32>,
    /// What to do when Redis cannot be reached.
    pub fail_mode: FailMode,
    /// Redis keys of the tenant scope.
    pub keys: TenantKeys,
}

/// Redis key names of the tenant scope. Every key of a tenant carries the
/// hash tag `{tenant}`, so a Lua script touching them all is valid on a Redis
/// Cluster too (one slot per tenant).
#[derive(Clone, Debug, PartialEq)]
pub struct TenantKeys {
    /// `tg:{t}:` — the prefix of every key.
    pub prefix: String,
    /// Request GCRA TAT.
    pub requests: String,
    /// Token-per-minute GCRA TAT.
    pub tokens_per_minute: String,
    /// Token-per-day hash `{d: day, u: used}`.
    pub tokens_per_day: String,
    /// Budget hash `{d: window, u: nano-units spent}`.
    pub budget: String,
    /// Sorted set of stream leases, scored by expiry.
    pub streams: String,
}

/// The budgets of teams: the listed ones, and the default of the others.
#[derive(Clone, Debug, PartialEq)]
pub struct TeamBudgets {
    /// Teams with budgets of their own.
    pub named: HashMap<Box<str>, Arc<BudgetKeys>>,
    /// Every other team's budget.
    pub default: Option<BudgetLimit>,
}

/// A budget below the tenant's that is not a user's (a team's, an API key's):
/// its cap and its Redis key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetKeys {
    /// The team, or the key id.
    pub id: Box<str>,
    /// The cap.
    pub limit: BudgetLimit,
    /// Budget hash `{d: window, u: nano-units spent}`; the id comes last.
    pub budget: String,
}

/// The scopes below the tenant that one request counts in: its user, its
/// team and its API key, each when a limit applies to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Who {
    /// The user's keys, when `perUser` limits apply.
    pub user: Option<Arc<UserKeys>>,
    /// The team's budget, when the caller has a team with a budget.
    pub team: Option<Arc<BudgetKeys>>,
    /// The API key's budget, when the caller presented a key with one.
    pub key: Option<Arc<BudgetKeys>>,
}

/// Redis key names of one user; the subject comes last so no subject can
/// produce another subject's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserKeys {
    /// The subject (`sub`, or `apikey:<prefix>`).
    pub subject: Box<str>,
    /// Request GCRA TAT.
    pub requests: String,
    /// Token-per-minute GCRA TAT.
    pub tokens_per_minute: String,
    /// Token-per-day hash.
    pub tokens_per_day: String,
    /// Budget hash.
    pub budget: String,
}

impl Plan {
    /// The plan of `limits` for tenant `tenant`; `None` when nothing is limited.
    pub fn new(tenant: &str, limits: &Limits) -> Option<Self> {
        Self::of(tenant, Some(limits), &[])
    }

    /// The plan of `limits` and the budgets of the declared API `keys` for
    /// tenant `tenant`; `None` when nothing is limited.
    pub fn of(tenant: &str, limits: Option<&Limits>, keys: &[DeclaredApiKey]) -> Option<Self> {
        let default = Limits::default();
        let limits = limits.unwrap_or(&default);
        let prefix = format!("tg:{{{tenant}}}:");
        let budget_keys = |kind: &str, id: &str, budget: &Budget| {
            Arc::new(BudgetKeys {
                id: id.into(),
                limit: BudgetLimit::new(budget),
                budget: format!("{prefix}budget:{kind}:{id}"),
            })
        };
        let teams = limits.per_team.as_ref().map(|t| TeamBudgets {
            named: t.teams.iter().map(|n| (n.name.as_str().into(), budget_keys("t", &n.name, &n.budget))).collect(),
            default: t.budget.as_ref().map(BudgetLimit::new),
        });
        let teams = teams.filter(|t| !t.named.is_empty() || t.default.is_some());
        let key_budgets: HashMap<Box<str>, Arc<BudgetKeys>> = keys
            .iter()
            .filter_map(|k| {
                let id = crate::auth::declared_key_id(&k.name);
                k.budget.as_ref().map(|b| (id.as_str().into(), budget_keys("k", &id, b)))
            })
            .collect();
        let scope = ScopeLimits::new(
            limits.requests_per_minute,
            limits.burst,
            limits.tokens_per_minute,
            limits.tokens_per_day,
            limits.budget.as_ref(),
        );
        let user = limits
            .per_user
            .as_ref()
            .map(|u| {
                ScopeLimits::new(
                    u.requests_per_minute,
                    u.burst,
                    u.tokens_per_minute,
                    u.tokens_per_day,
                    u.budget.as_ref(),
                )
            })
            .filter(|u| !u.is_empty());
        if scope.is_empty()
            && user.is_none()
            && teams.is_none()
            && key_budgets.is_empty()
            && limits.max_concurrent_streams.is_none()
        {
            return None;
        }
        let keys = TenantKeys {
            requests: format!("{prefix}rpm"),
            tokens_per_minute: format!("{prefix}tpm"),
            tokens_per_day: format!("{prefix}tpd"),
            budget: format!("{prefix}budget"),
            streams: format!("{prefix}streams"),
            prefix,
        };
        Some(Self {
            tenant: scope,
            user,
            teams,
            key_budgets,
            max_streams: limits.max_concurrent_streams,
            fail_mode: limits.fail_mode,
            keys,
        })
    }

    /// Key names of `subject`.
    pub fn user_keys(&self, subject: &str) -> UserKeys {
        let p = &self.keys.prefix;
        UserKeys {
            subject: subject.into(),
            requests: format!("{p}rpm:u:{subject}"),
            tokens_per_minute: format!("{p}tpm:u:{subject}"),
            tokens_per_day: format!("{p}tpd:u:{subject}"),
            budget: format!("{p}budget:u:{subject}"),
        }
    }

    /// Whether any token limit applies (then requests reserve tokens).
    pub fn counts_tokens(&self) -> bool {
        self.tenant.counts_tokens() || self.user.is_some_and(|u| u.counts_tokens())
    }

    /// The budget of `team` (`None`: it has none).
    pub fn team_keys(&self, team: &str) -> Option<Arc<BudgetKeys>> {
        let teams = self.teams.as_ref()?;
        if let Some(keys) = teams.named.get(team) {
            return Some(keys.clone());
        }
        let limit = teams.default?;
        Some(Arc::new(BudgetKeys { id: team.into(), limit, budget: format!("{}budget:t:{team}", self.keys.prefix) }))
    }

    /// Whether any budget applies (then requests reserve their worst-case cost).
    pub fn counts_cost(&self) -> bool {
        self.tenant.budget.is_some()
            || self.user.is_some_and(|u| u.budget.is_some())
            || self.teams.is_some()
            || !self.key_budgets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use tenantgate_crds::v1alpha1::{BudgetPeriod, UserLimits};

    use super::*;

    #[test]
    fn compiles_rates_bursts_and_keys() {
        let limits = Limits {
            requests_per_minute: Some(600),
            tokens_per_day: Some(1000),
            max_concurrent_streams: Some(3),
            per_user: Some(UserLimits { requests_per_minute: Some(60), burst: Some(5), ..Default::default() }),
            ..Default::default()
        };
        let plan = Plan::new("acme", &limits).expect("limits");
        let rpm = plan.tenant.requests.expect("rpm");
        assert_eq!(rpm.capacity, 60, "burst defaults to 10%");
        assert!((rpm.interval_us - 100_000.0).abs() < 1e-6);
        assert_eq!(plan.user.and_then(|u| u.requests).map(|g| g.capacity), Some(5));
        assert_eq!(plan.keys.requests, "tg:{acme}:rpm");
        assert_eq!(plan.user_keys("alice").requests, "tg:{acme}:rpm:u:alice");
        assert!(plan.counts_tokens());
        assert!(!plan.counts_cost());
    }

    #[test]
    fn budgets_compile_to_nano_units_and_keys_of_their_own() {
        let limits = Limits {
            budget: Some(Budget::new("250", BudgetPeriod::Month)),
            per_user: Some(UserLimits { budget: Some(Budget::new("0.75", BudgetPeriod::Day)), ..Default::default() }),
            ..Default::default()
        };
        let plan = Plan::new("acme", &limits).expect("a budget alone is a limit");
        assert_eq!(plan.tenant.budget, Some(BudgetLimit { nanos: 250_000_000_000, period: Period::Month }));
        assert_eq!(plan.user.and_then(|u| u.budget), Some(BudgetLimit { nanos: 750_000_000, period: Period::Day }));
        assert!(plan.counts_cost() && !plan.counts_tokens());
        assert_eq!(plan.keys.budget, "tg:{acme}:budget");
        assert_eq!(plan.user_keys("alice").budget, "tg:{acme}:budget:u:alice");
        let bad = Limits { budget: Some(Budget::new("lots", BudgetPeriod::Day)), ..Default::default() };
        assert_eq!(Plan::new("t", &bad).and_then(|p| p.tenant.budget).map(|b| b.nanos), Some(0), "never unlimited");
    }

    #[test]
    fn team_and_key_budgets_have_caps_and_keys_of_their_own() {
        use tenantgate_crds::v1alpha1::{TeamBudget, TeamLimits};
        let limits = Limits {
            per_team: Some(TeamLimits {
                role_prefix: None,
                budget: Some(Budget::new("10", BudgetPeriod::Month)),
                teams: vec![TeamBudget { name: "ml".into(), budget: Budget::new("100", BudgetPeriod::Day) }],
            }),
            ..Default::default()
        };
        let key = DeclaredApiKey::with_budget("ci", "h", Some(Budget::fixed("5", "2026-12-01T00:00:00Z", "24h")));
        let plan = Plan::of("acme", Some(&limits), &[key]).expect("team and key budgets are limits");
        assert!(plan.counts_cost());
        let ml = plan.team_keys("ml").expect("listed");
        assert_eq!(
            (ml.limit.nanos, ml.limit.period, &*ml.budget),
            (100_000_000_000, Period::Day, "tg:{acme}:budget:t:ml")
        );
        let other = plan.team_keys("search").expect("the default");
        assert_eq!((other.limit.nanos, &*other.budget), (10_000_000_000, "tg:{acme}:budget:t:search"));
        let ci = plan.key_budgets.get("kubernetes:ci").expect("the key's budget");
        assert_eq!(ci.budget, "tg:{acme}:budget:k:kubernetes:ci");
        assert_eq!(ci.limit.period, Period::Fixed { start: 1_796_083_200, length: 86_400 });
        let only_listed = Limits {
            per_team: Some(TeamLimits { budget: None, ..limits.per_team.clone().expect("set") }),
            ..Default::default()
        };
        assert_eq!(Plan::new("acme", &only_listed).and_then(|p| p.team_keys("search")), None, "no default budget");
    }

    #[test]
    fn no_limits_compile_to_nothing() {
        assert_eq!(Plan::new("t", &Limits::default()), None);
        let only_empty_user = Limits { per_user: Some(UserLimits::default()), ..Default::default() };
        assert_eq!(Plan::new("t", &only_empty_user), None);
    }
}
