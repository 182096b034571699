//! Budget alerts and spend: every [`CHECK_EVERY`] the gateway reads its
//! budgets as they stand, the tenant's ([`RateLimiter::budgets`](super::RateLimiter::budgets))
//! and each listed team's and declared API key's ([`RateLimiter::own_budgets`](super::RateLimiter::own_budgets)),
//! sets the tenant's `tenantgate_budget_*` gauges, publishes the tenant's and
//! the keys' (at most every [`PUBLISH_EVERY`], when they changed) in the
//! `gateway-spend` ConfigMap the operator copies into the Tenant's and each
//! ApiKey's `status.budget` ([`tenantgate_crds::spend`]), and raises each
//! threshold of a budget's `alertAtPercent` once per window: a log line, a
//! counter, and, in a cluster, a Kubernetes Event in the tenant's namespace,
//! related to the Tenant. The tenant's Event regards the gateway Deployment
//! there (an Event of a namespace must regard an object of that namespace:
//! the cluster-scoped Tenant can only be its related object), an API key's
//! regards its ApiKey. A team has no object to regard (its name is free
//! text): its alerts are the log line and the counter.
//!
//! An Event's name is the object, the window and the threshold
//! (`acme.budget.2026-12.80` for tenant acme, `ci.apikey-budget.2026-12.80`
//! for ApiKey ci: the two middle parts keep a key named like its tenant
//! apart), so replicas that see the same crossing create it once between
//! them: the API server refuses the others' (409), which is not an error. Out
//! of a cluster (no `KUBERNETES_SERVICE_HOST`) there are no Events; the log
//! line and the counter remain.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use sha2::{Digest, Sha256};
use tenantgate_crds::config::DeclaredApiKey;
use tenantgate_crds::pricing::format_nanos;
use tenantgate_crds::spend;
use tenantgate_crds::v1alpha1::{BudgetStatus, Limits};

use super::{BudgetState, Scope, scope_name};
use crate::auth::declared_key_name;
use crate::config::RuntimeHandle;

/// How often the budgets are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Spend is published at most this often.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(30);

/// The ConfigMap the spend is published in (made, empty, by the operator).
pub const SPEND_MAP: &str = "gateway-spend";

/// The field manager of the gateway's writes.
const FIELD_MANAGER: &str = "tenantgate-gateway";

/// The controller named on the Events.
pub const REPORTING_CONTROLLER: &str = "tenantgate.dev/gateway";

/// Longest object name the API server takes.
const MAX_NAME: usize = 253;

/// The thresholds raised so far, and where their Events go.
pub struct Alerts {
    tenant: String,
    /// The gateway's namespace and where its Events go.
    events: Option<(String, Api<Event>)>,
    /// Where the spend is published.
    spend: Option<Api<ConfigMap>>,
    /// What was published last (without its time), and when.
    published: Mutex<Option<(Instant, BTreeMap<String, String>)>>,
    /// This replica's name on the Events.
    instance: String,
    /// The thresholds this replica raised.
    raised: Mutex<Raised>,
}

/// The thresholds raised, by budget (scope, id): in which window, and which.
type Raised = HashMap<(&'static str, String), (i64, BTreeSet<u8>)>;

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts").field("tenant", &self.tenant).field("events", &self.events.is_some()).finish()
    }
}

impl Alerts {
    /// Alerts of tenant `tenant`, with Events created in namespace `namespace`
    /// through `client` (`None`: no Events).
    pub fn new(tenant: &str, events: Option<(&str, kube::Client)>) -> Self {
        let spend = events.as_ref().map(|(ns, client)| Api::namespaced(client.clone(), ns));
        let events = events.map(|(ns, client)| (ns.to_owned(), Api::namespaced(client, ns)));
        let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into());
        Self {
            tenant: tenant.into(),
            events,
            spend,
            published: Mutex::new(None),
            instance,
            raised: Mutex::new(HashMap::new()),
        }
    }

    /// In a cluster, alerts whose Events go to the gateway's namespace through
    /// its ServiceAccount; out of one, alerts without Events.
    pub fn in_cluster(tenant: &str) -> Self {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            return Self::new(tenant, None);
        }
        let client = kube::Config::incluster().map_err(|e| e.to_string()).and_then(|c| {
            let namespace = c.default_namespace.clone();
            kube::Client::try_from(c).map(|client| (namespace, client)).map_err(|e| e.to_string())
        });
        match client {
            Ok((namespace, client)) => Self::new(tenant, Some((&namespace, client))),
            Err(e) => {
                tracing::warn!(error = %e, "budget alerts cannot create Kubernetes Events");
                Self::new(tenant, None)
            }
        }
    }

    /// Raises the thresholds (percent) the budget `state` has crossed and
    /// this replica has not raised in its window, and sets the gauges of the
    /// tenant's; returns those it raised now. A user's budget does not alert.
    pub async fn check(&self, state: &BudgetState, thresholds: &[u8], currency: &str) -> Vec<u8> {
        match state.scope {
            Scope::User => return Vec::new(),
            Scope::Tenant => {
                metrics::gauge!("tenantgate_budget_limit_nanounits").set(state.limit as f64);
                metrics::gauge!("tenantgate_budget_spent_nanounits").set(state.spent as f64);
            }
            Scope::Team | Scope::Key => {}
        }
        let scope = scope_name(state.scope);
        let crossed: Vec<u8> = {
            let mut raised = self.raised.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (window, done) =
                raised.entry((scope, state.id.clone())).or_insert_with(|| (state.window, BTreeSet::new()));
            // Earlier windows' alerts are forgotten.
            if *window != state.window {
                *window = state.window;
                done.clear();
            }
            thresholds
                .iter()
                .copied()
                .filter(|&t| u128::from(state.spent) * 100 >= u128::from(t) * u128::from(state.limit))
                .filter(|&t| done.insert(t))
                .collect()
        };
        for &t in &crossed {
            let note = note(state, t, currency);
            let window = state.period.label(state.window);
            tracing::warn!(threshold = t, window = %window, scope, budget = %state.id, "{note}");
            metrics::counter!("tenantgate_budget_alerts_total", "scope" => scope, "threshold" => t.to_string())
                .increment(1);
            let Some((namespace, api)) = &self.events else { continue };
            let Some(event) = event(&self.tenant, namespace, &self.instance, state, t, note) else { continue };
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => {}
                // Another replica raised it first.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => tracing::warn!(error = %e, "the budget alert's Event was not created"),
            }
        }
        crossed
    }

    /// Forgets what was raised for the budgets not among `states` (a key or a
    /// team gone from the config).
    pub fn forget_others(&self, states: &[BudgetState]) {
        let current: HashSet<(&str, &str)> = states.iter().map(|s| (scope_name(s.scope), s.id.as_str())).collect();
        let mut raised = self.raised.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        raised.retain(|(scope, id), _| current.contains(&(*scope, id.as_str())));
    }
}

impl Alerts {
    /// Publishes the tenant's and the API keys' budgets among `states` in the
    /// `gateway-spend` ConfigMap, all in one apply (an apply drops the fields
    /// its manager applied before and leaves out now), when they changed and
    /// [`PUBLISH_EVERY`] has passed since the last time; whether it wrote. A
    /// replica that has published nothing and has nothing to publish writes
    /// nothing; one whose budgets all went publishes an empty map once.
    pub async fn publish(&self, states: &[BudgetState], currency: &str) -> bool {
        let Some(api) = &self.spend else { return false };
        let data = spend_data(states, currency);
        {
            let published = self.published.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*published {
                Some((at, last)) if last == &data || at.elapsed() < PUBLISH_EVERY => return false,
                None if data.is_empty() => return false,
                _ => {}
            }
        }
        let mut with_time = data.clone();
        if !data.is_empty() {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            with_time.insert("updatedAt".into(), now);
        }
        let patch = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": SPEND_MAP}, "data": with_time,
        });
        match api.patch(SPEND_MAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
            Ok(_) => {
                *self.published.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((Instant::now(), data));
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "the budgets' spend was not published");
                false
            }
        }
    }
}

/// Where the budget `state` stands, as a status shows it (without `updatedAt`).
fn budget_status(state: &BudgetState, currency: &str) -> BudgetStatus {
    BudgetStatus {
        amount: format_nanos(state.limit as i64),
        spent: format_nanos(state.spent as i64),
        currency: currency.into(),
        window: state.period.label(state.window),
        updated_at: None,
    }
}

/// The `gateway-spend` data (without `updatedAt`) of the tenant's and the
/// API keys' budgets among `states`: the Tenant's `status.budget` and an
/// `apikey.<name>` entry per key. Teams' are not published: no object shows them.
pub fn spend_data(states: &[BudgetState], currency: &str) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    for state in states {
        match state.scope {
            Scope::Tenant => {
                let BudgetStatus { amount, spent, currency, window, .. } = budget_status(state, currency);
                data.extend([
                    ("amount".to_owned(), amount),
                    ("spent".to_owned(), spent),
                    ("currency".to_owned(), currency),
                    ("window".to_owned(), window),
                ]);
            }
            Scope::Key => {
                if let Some(key) = declared_key_name(&state.id).and_then(spend::api_key_entry_key) {
                    data.insert(key, spend::api_key_entry(&budget_status(state, currency)));
                }
            }
            Scope::User | Scope::Team => {}
        }
    }
    data
}

/// A window label as part of an object name: `2026-12-01t090000z` for a fixed window's start.
fn name_part(label: &str) -> String {
    label.chars().filter(|c| *c != ':').map(|c| c.to_ascii_lowercase()).collect()
}

/// `object` followed by `suffix`, as an object name: an `object` too long for
/// both is cut, and told apart from others cut alike by a digest of it (the
/// same on every replica, so they still create one Event between them).
fn event_name(object: &str, suffix: &str) -> String {
    if object.len() + suffix.len() <= MAX_NAME {
        return format!("{object}{suffix}");
    }
    let digest = hex::encode(&Sha256::digest(object.as_bytes())[..4]);
    let keep = MAX_NAME.saturating_sub(suffix.len() + digest.len() + 1);
    let cut = object.get(..keep).unwrap_or(object).trim_end_matches(['-', '.']);
    format!("{cut}-{digest}{suffix}")
}

/// What an alert says: `The tenant budget of 500 USD per month (UTC) is 80% spent: 401.5 USD
/// in 2026-12; it resets in 26h0m0s.`, `ApiKey ci's budget of 50 USD per ...`.
pub fn note(state: &BudgetState, threshold: u8, currency: &str) -> String {
    let whose = match state.scope {
        Scope::Tenant => "The tenant budget".to_owned(),
        Scope::Key => format!("ApiKey {}'s budget", declared_key_name(&state.id).unwrap_or(&state.id)),
        Scope::Team => format!("Team {}'s budget", state.id),
        Scope::User => format!("User {}'s budget", state.id),
    };
    let per = state.period.describe();
    format!(
        "{whose} of {} {currency} per {per} is {threshold}% spent: {} {currency} in {}; it resets in {}.",
        format_nanos(state.limit as i64),
        format_nanos(state.spent as i64),
        state.period.label(state.window),
        super::go_duration(state.resets_in)
    )
}

/// The Event, in the gateway's namespace `namespace`, of the budget `state` of
/// tenant `tenant` crossing `threshold` percent: the tenant's regards the
/// gateway Deployment, an API key's its ApiKey; `None` for a team's or a
/// user's (no object to regard).
pub fn event(
    tenant: &str,
    namespace: &str,
    instance: &str,
    state: &BudgetState,
    threshold: u8,
    note: String,
) -> Option<Event> {
    let window = name_part(&state.period.label(state.window));
    let (name, regarding) = match state.scope {
        Scope::Tenant => (
            format!("{tenant}.budget.{window}.{threshold}"),
            ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                namespace: Some(namespace.into()),
                name: Some("gateway".into()),
                ..ObjectReference::default()
            },
        ),
        Scope::Key => {
            let key = declared_key_name(&state.id)?;
            (
                event_name(key, &format!(".apikey-budget.{window}.{threshold}")),
                ObjectReference {
                    api_version: Some("tenantgate.dev/v1alpha1".into()),
                    kind: Some("ApiKey".into()),
                    namespace: Some(namespace.into()),
                    name: Some(key.into()),
                    ..ObjectReference::default()
                },
            )
        }
        Scope::Team | Scope::User => return None,
    };
    Some(Event {
        metadata: ObjectMeta { name: Some(name), ..ObjectMeta::default() },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        action: Some("Alert".into()),
        reason: Some("BudgetThreshold".into()),
        note: Some(note),
        type_: Some("Warning".into()),
        regarding: Some(regarding),
        related: Some(ObjectReference {
            api_version: Some("tenantgate.dev/v1alpha1".into()),
            kind: Some("Tenant".into()),
            name: Some(tenant.into()),
            ..ObjectReference::default()
        }),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(instance.chars().take(128).collect()),
        ..Event::default()
    })
}

/// The `alertAtPercent` of the budget `state` under the tenant's `limits` and declared API `keys`.
fn thresholds<'a>(limits: Option<&'a Limits>, keys: &'a [DeclaredApiKey], state: &BudgetState) -> &'a [u8] {
    let budget = match state.scope {
        Scope::Tenant => limits.and_then(|l| l.budget.as_ref()),
        Scope::Team => limits
            .and_then(|l| l.per_team.as_ref())
            .and_then(|t| t.teams.iter().find(|t| t.name == state.id))
            .map(|t| &t.budget),
        Scope::Key => {
            let name = declared_key_name(&state.id);
            keys.iter().find(|k| Some(k.name.as_str()) == name).and_then(|k| k.budget.as_ref())
        }
        Scope::User => None,
    };
    budget.map_or(&[], |b| &b.alert_at_percent)
}

/// Checks the budgets every [`CHECK_EVERY`] under the config in force, forever.
pub async fn watch(handle: RuntimeHandle, alerts: Alerts) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let runtime = handle.runtime();
        let limiter = &runtime.limiter;
        // All of them or none: publishing some would drop the others' entries.
        let states = match (limiter.budgets(None).await, limiter.own_budgets().await) {
            (Ok(mut states), Ok(own)) => {
                states.retain(|s| s.scope == Scope::Tenant);
                states.extend(own);
                states
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "the budgets could not be read");
                continue;
            }
        };
        let (limits, keys) = (runtime.config.limits.as_ref(), &runtime.config.auth.declared_api_keys);
        for state in &states {
            alerts.check(state, thresholds(limits, keys, state), limiter.currency()).await;
        }
        alerts.forget_others(&states);
        alerts.publish(&states, limiter.currency()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::period::Period;
    use super::*;

    fn state(spent: u64, window: i64) -> BudgetState {
        BudgetState {
            scope: Scope::Tenant,
            id: String::new(),
            limit: 500_000_000_000,
            spent,
            period: Period::Month,
            window,
            resets_in: Duration::from_secs(3_600),
        }
    }

    /// The budget of 50 of the ApiKey `name`, `spent` of it spent.
    fn key(name: &str, spent: u64, window: i64) -> BudgetState {
        BudgetState {
            scope: Scope::Key,
            id: crate::auth::declared_key_id(name),
            limit: 50_000_000_000,
            ..state(spent, window)
        }
    }

    const DECEMBER: i64 = 2026 * 12 + 11;

    #[tokio::test]
    async fn each_threshold_is_raised_once_per_window() {
        let alerts = Alerts::new("acme", None);
        let month = DECEMBER;
        assert!(alerts.check(&state(100_000_000_000, month), &[80, 95, 100], "USD").await.is_empty());
        assert_eq!(alerts.check(&state(480_000_000_000, month), &[80, 95, 100], "USD").await, [80, 95]);
        assert!(alerts.check(&state(490_000_000_000, month), &[80, 95, 100], "USD").await.is_empty(), "raised already");
        assert_eq!(alerts.check(&state(500_000_000_000, month), &[80, 95, 100], "USD").await, [100]);
        // A new month starts over.
        assert_eq!(alerts.check(&state(400_000_000_000, month + 1), &[80, 95, 100], "USD").await, [80]);
    }

    #[tokio::test]
    async fn each_key_raises_its_thresholds_once_per_window_apart_from_the_others() {
        let alerts = Alerts::new("acme", None);
        let t = [80, 100];
        assert_eq!(alerts.check(&state(400_000_000_000, DECEMBER), &t, "USD").await, [80]);
        // The tenant's 80% raised does not stand for a key's, nor one key's for another's.
        assert_eq!(alerts.check(&key("ci", 40_000_000_000, DECEMBER), &t, "USD").await, [80]);
        assert_eq!(alerts.check(&key("ops", 50_000_000_000, DECEMBER), &t, "USD").await, [80, 100]);
        assert!(alerts.check(&key("ci", 45_000_000_000, DECEMBER), &t, "USD").await.is_empty(), "raised already");
        let team = BudgetState { scope: Scope::Team, id: "search".into(), ..key("x", 40_000_000_000, DECEMBER) };
        assert_eq!(alerts.check(&team, &t, "USD").await, [80], "a team alerts too");
        let user = BudgetState { scope: Scope::User, id: "alice".into(), ..team.clone() };
        assert!(alerts.check(&user, &t, "USD").await.is_empty(), "users do not alert");
        // A key's new window starts over for that key only.
        assert_eq!(alerts.check(&key("ci", 40_000_000_000, DECEMBER + 1), &t, "USD").await, [80]);
        assert!(alerts.check(&key("ops", 50_000_000_000, DECEMBER), &t, "USD").await.is_empty());
        // A key gone from the config and back (a new ApiKey of the same name) alerts again.
        alerts.forget_others(&[key("ci", 40_000_000_000, DECEMBER + 1)]);
        assert!(alerts.check(&key("ci", 40_000_000_000, DECEMBER + 1), &t, "USD").await.is_empty(), "kept");
        assert_eq!(alerts.check(&key("ops", 50_000_000_000, DECEMBER), &t, "USD").await, [80, 100]);
    }

    #[test]
    fn the_published_spend_is_what_the_tenant_and_api_key_statuses_read() {
        let team = BudgetState { scope: Scope::Team, id: "search".into(), ..key("x", 1, DECEMBER) };
        let states = [state(401_500_000_000, DECEMBER), key("ci", 12_500_000_000, DECEMBER), team];
        let mut data = spend_data(&states, "USD");
        data.insert("updatedAt".into(), "2026-12-06T12:00:00Z".into());
        let status = BudgetStatus::from_data(&data).expect("status");
        assert_eq!((status.amount.as_str(), status.spent.as_str()), ("500", "401.5"));
        assert_eq!((status.currency.as_str(), status.window.as_str()), ("USD", "2026-12"));
        assert_eq!(status.updated_at.as_deref(), Some("2026-12-06T12:00:00Z"));
        let keys = spend::api_key_budgets(&data);
        let ci = keys.get("ci").expect("the key's entry");
        assert_eq!((ci.amount.as_str(), ci.spent.as_str(), ci.window.as_str()), ("50", "12.5", "2026-12"));
        assert_eq!(ci.updated_at.as_deref(), Some("2026-12-06T12:00:00Z"));
        assert_eq!(keys.len(), 1);
        assert_eq!(data.len(), 6, "the tenant's four fields, the key's entry and the time; no team: {data:?}");
        // Key budgets alone are published without the tenant's fields.
        let keys_only = spend_data(&states[1..], "USD");
        assert_eq!(keys_only.keys().collect::<Vec<_>>(), ["apikey.ci"]);
        assert_eq!(BudgetStatus::from_data(&keys_only), None);
    }

    #[tokio::test]
    async fn nothing_to_publish_out_of_a_cluster_or_with_no_budget() {
        let alerts = Alerts::new("acme", None);
        assert!(!alerts.publish(&[key("ci", 1, DECEMBER)], "USD").await, "no API server");
        assert!(spend_data(&[], "USD").is_empty());
    }

    #[test]
    fn the_event_names_the_tenant_window_and_threshold_and_says_what_was_spent() {
        let s = state(401_500_000_000, DECEMBER);
        let e = event("acme", "tg-acme", "gw-0", &s, 80, note(&s, 80, "USD")).expect("an Event");
        assert_eq!(e.metadata.name.as_deref(), Some("acme.budget.2026-12.80"));
        assert_eq!(e.reason.as_deref(), Some("BudgetThreshold"));
        let regarding = e.regarding.as_ref().expect("regarding");
        assert_eq!((regarding.kind.as_deref(), regarding.namespace.as_deref()), (Some("Deployment"), Some("tg-acme")));
        assert_eq!(e.related.as_ref().and_then(|r| r.kind.as_deref()), Some("Tenant"));
        assert_eq!(
            e.note.as_deref(),
            Some(
                "The tenant budget of 500 USD per month (UTC) is 80% spent: 401.5 USD in 2026-12; it resets in 1h0m0s."
            )
        );
    }

    #[test]
    fn a_key_event_regards_its_api_key_and_is_not_the_tenants() {
        let s = key("acme", 40_000_000_000, DECEMBER);
        let e = event("acme", "tg-acme", "gw-0", &s, 80, note(&s, 80, "USD")).expect("an Event");
        // A key named like its tenant: an Event of its own, not refused as the tenant's (409).
        assert_eq!(e.metadata.name.as_deref(), Some("acme.apikey-budget.2026-12.80"));
        let regarding = e.regarding.as_ref().expect("regarding");
        assert_eq!(
            (
                regarding.api_version.as_deref(),
                regarding.kind.as_deref(),
                regarding.namespace.as_deref(),
                regarding.name.as_deref()
            ),
            (Some("tenantgate.dev/v1alpha1"), Some("ApiKey"), Some("tg-acme"), Some("acme"))
        );
        let related = e.related.as_ref().expect("related");
        assert_eq!((related.kind.as_deref(), related.name.as_deref()), (Some("Tenant"), Some("acme")));
        assert_eq!((e.reason.as_deref(), e.type_.as_deref()), (Some("BudgetThreshold"), Some("Warning")));
        assert_eq!(
            e.note.as_deref(),
            Some(
                "ApiKey acme's budget of 50 USD per month (UTC) is 80% spent: 40 USD in 2026-12; it resets in 1h0m0s."
            )
        );
        let fixed = BudgetState { period: Period::Fixed { start: 0, length: 7 * 86_400 }, window: 1_796_115_600, ..s };
        let e = event("acme", "tg-acme", "gw-0", &fixed, 100, String::new()).expect("an Event");
        assert_eq!(e.metadata.name.as_deref(), Some("acme.apikey-budget.2026-12-01t090000z.100"));
        // A team's name is free text and regards no object: no Event.
        let team = BudgetState { scope: Scope::Team, id: "Search Team".into(), ..s };
        assert!(event("acme", "tg-acme", "gw-0", &team, 80, note(&team, 80, "USD")).is_none());
        assert!(note(&team, 80, "USD").starts_with("Team Search Team's budget of 50 USD"));
    }

    #[test]
    fn an_event_name_too_long_is_cut_the_same_way_on_every_replica() {
        let long = |tail: &str| format!("{}{tail}", "k".repeat(240));
        let suffix = ".apikey-budget.2026-12-01t090000z.100";
        let (a, b) = (event_name(&long("-a"), suffix), event_name(&long("-b"), suffix));
        assert!(a.len() <= MAX_NAME && a.ends_with(suffix), "{a}");
        assert_ne!(a, b, "names cut alike are told apart");
        assert_eq!(a, event_name(&long("-a"), suffix), "the same on every replica");
        assert_eq!(event_name("ci", suffix), format!("ci{suffix}"));
    }

    #[test]
    fn each_budget_alerts_at_its_own_thresholds() {
        let limits: Limits = serde_json::from_value(serde_json::json!({
            "budget": {"amount": "500", "alertAtPercent": [50]},
            "perTeam": {"teams": [{"name": "search", "budget": {"amount": "10", "alertAtPercent": [90]}}]},
        }))
        .expect("limits");
        let keys: Vec<DeclaredApiKey> = serde_json::from_value(serde_json::json!([
            {"name": "ci", "prefix": "p", "hash": "h", "subject": "s", "budget": {"amount": "5", "alertAtPercent": [70, 99]}},
            {"name": "free", "prefix": "q", "hash": "i", "subject": "t"},
        ]))
        .expect("keys");
        let team = |id: &str| BudgetState { scope: Scope::Team, id: id.into(), ..state(0, DECEMBER) };
        assert_eq!(thresholds(Some(&limits), &keys, &state(0, DECEMBER)), [50]);
        assert_eq!(thresholds(Some(&limits), &keys, &team("search")), [90]);
        assert!(thresholds(Some(&limits), &keys, &team("other")).is_empty());
        assert_eq!(thresholds(Some(&limits), &keys, &key("ci", 0, DECEMBER)), [70, 99]);
        assert!(thresholds(None, &keys, &key("free", 0, DECEMBER)).is_empty());
        assert!(thresholds(None, &keys, &state(0, DECEMBER)).is_empty());
    }
}
