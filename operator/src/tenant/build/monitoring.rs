//! Prometheus Operator scraping of the gateway.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::{BuildInput, meta};
use crate::labels::{GATEWAY, gateway_selector};

/// The part of the Prometheus Operator's ServiceMonitor
/// (`monitoring.coreos.com/v1`) the operator sets. k8s-openapi has no
/// Prometheus Operator types, so these few fields are typed here; fields
/// others add are ignored on read.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "ServiceMonitor",
    root = "ServiceMonitor",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceMonitorSpec {
    /// The Services to scrape.
    pub selector: LabelSelector,
    /// How to scrape them.
    pub endpoints: Vec<Endpoint>,
}

/// One scraped port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Endpoint {
    /// Service port name.
    pub port: String,
    /// HTTP path of the metrics.
    pub path: String,
    /// Scrape interval.
    pub interval: String,
}

/// A ServiceMonitor when the Prometheus Operator is installed.
pub fn build_service_monitor(input: &BuildInput<'_>) -> Option<ServiceMonitor> {
    if !input.settings.service_monitors {
        return None;
    }
    Some(ServiceMonitor {
        metadata: meta(input, GATEWAY, "gateway"),
        spec: ServiceMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(gateway_selector(&input.tenant.name_any())),
                ..LabelSelector::default()
            },
            endpoints: vec![Endpoint { port: "metrics".into(), path: "/metrics".into(), interval: "30s".into() }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn a_service_monitor_only_where_the_prometheus_operator_is() {
        assert!(plain_stack().all::<ServiceMonitor>().is_empty());
        let t = tenant("");
        let r = rendered(&t, &[]);
        let settings = BuildSettings { service_monitors: true, ..BuildSettings::default() };
        let monitor = build_service_monitor(&input(&t, &r, &settings)).expect("monitor");
        assert_eq!(monitor.spec.selector.match_labels, Some(gateway_selector("acme")));
        assert_eq!(monitor.spec.endpoints[0].path, "/metrics");
        assert_eq!(monitor.spec.endpoints[0].port, "metrics", "the Service's probes and metrics port");
    }
}
