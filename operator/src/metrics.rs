//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a reconcile outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of a reconcile error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's reason, as in status conditions.
    pub reason: &'static str,
}

/// Labels of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `read` (GET, list, watch) or `write` (POST, PUT, PATCH, DELETE).
    pub kind: &'static str,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
    /// Resource (with subresource), e.g. `deployments` or `tenants/status`.
    pub resource: String,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles by result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// Reconcile errors by reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Objects written (applied, created, deleted) by reconciles.
    pub objects_written: Counter,
    /// Objects the operator manages, as last counted.
    pub objects_managed: Gauge,
    /// Requests to the API server.
    pub api_requests: Family<RequestLabels, Counter>,
    /// Whether this replica holds the leader lease.
    pub leader: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            errors: Family::default(),
            objects_written: Counter::default(),
            objects_managed: Gauge::default(),
            api_requests: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("tenantgate_operator");
        r.register("reconciles", "Tenant reconciles by result", m.reconciles.clone());
        r.register("reconcile_duration_seconds", "Duration of Tenant reconciles", m.reconcile_duration.clone());
        r.register("reconcile_errors", "Reconcile errors by reason", m.errors.clone());
        r.register("objects_written", "Objects applied, created or deleted by reconciles", m.objects_written.clone());
        r.register("objects_managed", "Objects the operator manages", m.objects_managed.clone());
        r.register(
            "api_requests",
            "Requests to the Kubernetes API by kind (read/write) and method",
            m.api_requests.clone(),
        );
        r.register("leader", "1 while this replica holds the leader lease", m.leader.clone());
        m
    }
}
