//! Budget alerts and spend: every [`CHECK_EVERY`] the gateway reads the
//! tenant's budget as it stands ([`RateLimiter::budgets`](super::RateLimiter::budgets)),
//! sets the `tenantgate_budget_*` gauges, publishes it (at most every
//! [`PUBLISH_EVERY`], when it changed) in the `gateway-spend` ConfigMap the
//! operator copies into the Tenant's `status.budget`, and raises each threshold of
//! `limits.budget.alertAtPercent` once per window: a log line, a counter,
//! and, in a cluster, a Kubernetes Event in the tenant's namespace, regarding
//! the gateway Deployment there and related to the Tenant (an Event of a
//! namespace must regard an object of that namespace: the cluster-scoped
//! Tenant can only be its related object).
//!
//! The Event's name is the tenant, the window and the threshold
//! (`acme.budget.2026-12.80`), so replicas that see the same crossing create
//! it once between them: the API server refuses the others' (409), which is
//! not an error. Out of a cluster (no `KUBERNETES_SERVICE_HOST`) there are no
//! Events; the log line and the counter remain.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tenantgate_crds::pricing::format_nanos;

use super::{BudgetState, Scope};
use crate::config::RuntimeHandle;

/// How often the tenant's budget is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Spend is published at most this often.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(30);

/// The ConfigMap the spend is published in (made, empty, by the operator).
pub const SPEND_MAP: &str = "gateway-spend";

/// The field manager of the gateway's writes.
const FIELD_MANAGER: &str = "tenantgate-gateway";

/// The controller named on the Events.
pub const REPORTING_CONTROLLER: &str = "tenantgate.dev/gateway";

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
    /// (window, threshold) pairs already raised by this replica.
    raised: Mutex<HashSet<(i64, u8)>>,
}

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
            raised: Mutex::new(HashSet::new()),
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

    /// Sets the gauges of the tenant's budget `state` and raises the
    /// thresholds (percent) it has crossed and this replica has not raised in
    /// its window; returns those it raised now.
    pub async fn check(&self, state: &BudgetState, thresholds: &[u8], currency: &str) -> Vec<u8> {
        if state.scope != Scope::Tenant {
            return Vec::new();
        }
        metrics::gauge!("tenantgate_budget_limit_nanounits").set(state.limit as f64);
        metrics::gauge!("tenantgate_budget_spent_nanounits").set(state.spent as f64);
        let crossed: Vec<u8> = {
            let mut raised = self.raised.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Earlier windows' alerts are forgotten.
            raised.retain(|(w, _)| *w == state.window);
            thresholds
                .iter()
                .copied()
                .filter(|&t| u128::from(state.spent) * 100 >= u128::from(t) * u128::from(state.limit))
                .filter(|&t| raised.insert((state.window, t)))
                .collect()
        };
        for &t in &crossed {
            let note = note(state, t, currency);
            tracing::warn!(threshold = t, window = %state.period.label(state.window), "{note}");
            metrics::counter!("tenantgate_budget_alerts_total", "threshold" => t.to_string()).increment(1);
            if let Some((namespace, api)) = &self.events {
                let event = event(&self.tenant, namespace, &self.instance, state, t, note);
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => {}
                    // Another replica raised it first.
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => tracing::warn!(error = %e, "the budget alert's Event was not created"),
                }
            }
        }
        crossed
    }
}

impl Alerts {
    /// Publishes the tenant's budget `state` in the `gateway-spend` ConfigMap
    /// when it changed and [`PUBLISH_EVERY`] has passed since the last time;
    /// whether it wrote.
    pub async fn publish(&self, state: &BudgetState, currency: &str) -> bool {
        let Some(api) = &self.spend else { return false };
        let data = spend_data(state, currency);
        {
            let published = self.published.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, last)) = &*published
                && (last == &data || at.elapsed() < PUBLISH_EVERY)
            {
                return false;
            }
        }
        let mut with_time = data.clone();
        with_time.insert("updatedAt".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
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
                tracing::debug!(error = %e, "the tenant's spend was not published");
                false
            }
        }
    }
}

/// The `gateway-spend` data of `state` (the Tenant's `status.budget`, without `updatedAt`).
pub fn spend_data(state: &BudgetState, currency: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("amount".into(), format_nanos(state.limit as i64)),
        ("spent".into(), format_nanos(state.spent as i64)),
        ("currency".into(), currency.into()),
        ("window".into(), state.period.label(state.window)),
    ])
}

/// A window label as part of an object name: `2026-12-01t090000z` for a fixed window's start.
fn name_part(label: &str) -> String {
    label.chars().filter(|c| *c != ':').map(|c| c.to_ascii_lowercase()).collect()
}

/// What an alert says: `The tenant budget of 500 USD per month (UTC) is 80% spent: 401.5 USD in 2026-12; it resets in 26h0m0s.`
pub fn note(state: &BudgetState, threshold: u8, currency: &str) -> String {
    let per = state.period.describe();
    format!(
        "The tenant budget of {} {currency} per {per} is {threshold}% spent: {} {currency} in {}; it resets in {}.",
        format_nanos(state.limit as i64),
        format_nanos(state.spent as i64),
        state.period.label(state.window),
        super::go_duration(state.resets_in)
    )
}

/// The Event, in the gateway's namespace `namespace`, of tenant `tenant`'s budget crossing `threshold` percent.
pub fn event(tenant: &str, namespace: &str, instance: &str, state: &BudgetState, threshold: u8, note: String) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{tenant}.budget.{}.{threshold}", name_part(&state.period.label(state.window)))),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        action: Some("Alert".into()),
        reason: Some("BudgetThreshold".into()),
        note: Some(note),
        type_: Some("Warning".into()),
        regarding: Some(ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            namespace: Some(namespace.into()),
            name: Some("gateway".into()),
            ..ObjectReference::default()
        }),
        related: Some(ObjectReference {
            api_version: Some("tenantgate.dev/v1alpha1".into()),
            kind: Some("Tenant".into()),
            name: Some(tenant.into()),
            ..ObjectReference::default()
        }),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(instance.chars().take(128).collect()),
        ..Event::default()
    }
}

/// Checks the tenant's budget every [`CHECK_EVERY`] under the config in force, forever.
pub async fn watch(handle: RuntimeHandle, alerts: Alerts) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let runtime = handle.runtime();
        let Some(budget) = runtime.config.limits.as_ref().and_then(|l| l.budget.as_ref()) else { continue };
        match runtime.limiter.budgets(None).await {
            Ok(states) => {
                for state in states.iter().filter(|s| s.scope == Scope::Tenant) {
                    alerts.check(state, &budget.alert_at_percent, runtime.limiter.currency()).await;
                    alerts.publish(state, runtime.limiter.currency()).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "the tenant's budget could not be read"),
        }
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

    #[tokio::test]
    async fn each_threshold_is_raised_once_per_window() {
        let alerts = Alerts::new("acme", None);
        let month = 2026 * 12 + 11;
        assert!(alerts.check(&state(100_000_000_000, month), &[80, 95, 100], "USD").await.is_empty());
        assert_eq!(alerts.check(&state(480_000_000_000, month), &[80, 95, 100], "USD").await, [80, 95]);
        assert!(alerts.check(&state(490_000_000_000, month), &[80, 95, 100], "USD").await.is_empty(), "raised already");
        assert_eq!(alerts.check(&state(500_000_000_000, month), &[80, 95, 100], "USD").await, [100]);
        // A new month starts over.
        assert_eq!(alerts.check(&state(400_000_000_000, month + 1), &[80, 95, 100], "USD").await, [80]);
    }

    #[test]
    fn the_published_spend_is_what_the_tenant_status_reads() {
        let mut data = spend_data(&state(401_500_000_000, 2026 * 12 + 11), "USD");
        data.insert("updatedAt".into(), "2026-12-06T12:00:00Z".into());
        let status = tenantgate_crds::v1alpha1::BudgetStatus::from_data(&data).expect("status");
        assert_eq!((status.amount.as_str(), status.spent.as_str()), ("500", "401.5"));
        assert_eq!((status.currency.as_str(), status.window.as_str()), ("USD", "2026-12"));
        assert_eq!(status.updated_at.as_deref(), Some("2026-12-06T12:00:00Z"));
    }

    #[test]
    fn the_event_names_the_tenant_window_and_threshold_and_says_what_was_spent() {
        let s = state(401_500_000_000, 2026 * 12 + 11);
        let e = event("acme", "tg-acme", "gw-0", &s, 80, note(&s, 80, "USD"));
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
}
