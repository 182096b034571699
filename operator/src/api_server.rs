//! Where the API server really listens, for the gateways' NetworkPolicy
//! egress (they publish McpConnection status): the endpoints of the
//! `kubernetes` Service in `default`, which the API servers keep up to date
//! themselves. Its ClusterIP would not do: NetworkPolicy is matched after the
//! Service's DNAT, against these addresses. The operator watches that one
//! EndpointSlice and re-renders every tenant when its addresses change.

use std::net::{IpAddr, SocketAddr};

use futures::{Stream, TryStreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

/// Namespace and name of the EndpointSlice the API servers maintain for the
/// `kubernetes` Service (the chart grants `get`, `list` and `watch` on
/// exactly this object).
pub const NAMESPACE: &str = "default";
/// See [`NAMESPACE`].
pub const NAME: &str = "kubernetes";

/// Watches the one EndpointSlice into a store; the stream yields it each time
/// its addresses change (the first time included), not on other updates.
pub fn watch(
    client: Client,
) -> (Store<EndpointSlice>, impl Stream<Item = Result<EndpointSlice, watcher::Error>> + Send + 'static) {
    let api: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
    let (store, stream) =
        crate::caches::reflect(api, watcher::Config::default().fields(&format!("metadata.name={NAME}")));
    (store, changes(stream))
}

/// The slices of `stream` whose addresses differ from the one before.
pub fn changes<S>(stream: S) -> impl Stream<Item = Result<EndpointSlice, watcher::Error>> + Send + 'static
where
    S: Stream<Item = Result<EndpointSlice, watcher::Error>> + Send + 'static,
{
    let mut last: Option<Vec<SocketAddr>> = None;
    stream.try_filter(move |slice| {
        let now = addresses(slice);
        let changed = last.as_ref() != Some(&now);
        if changed {
            if now.is_empty() {
                tracing::warn!("EndpointSlice {NAMESPACE}/{NAME} has no ready address: gateway NetworkPolicies allow no API server egress until it has");
            } else {
                tracing::info!(endpoints = ?now, "API server endpoints: gateways may reach them to publish McpConnection status; re-rendering every tenant");
            }
            last = Some(now);
        }
        futures::future::ready(changed)
    })
}

/// The API server endpoints as last seen (empty when the slice is missing:
/// then the gateways' NetworkPolicy has no rule for them).
pub fn current(store: &Store<EndpointSlice>) -> Vec<SocketAddr> {
    store.get(&ObjectRef::new(NAME).within(NAMESPACE)).map(|s| addresses(&s)).unwrap_or_default()
}

/// Every (address, port) of the slice's endpoints that are not known to be
/// not ready, sorted.
pub fn addresses(slice: &EndpointSlice) -> Vec<SocketAddr> {
    let ports: Vec<u16> =
        slice.ports.iter().flatten().filter_map(|p| p.port.and_then(|p| u16::try_from(p).ok())).collect();
    let mut out: Vec<SocketAddr> = slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()))
        .flat_map(|ip| ports.iter().map(move |&port| SocketAddr::new(ip, port)))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn slice(addresses: &[&str], resource_version: &str) -> EndpointSlice {
        let endpoints: Vec<serde_json::Value> =
            addresses.iter().map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}})).collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default", "resourceVersion": resource_version},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
        }))
        .expect("slice")
    }

    #[test]
    fn every_ready_address_on_every_port() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.6"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.5"]},
                {"addresses": ["10.0.0.7"], "conditions": {"ready": false}},
            ],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
        }))
        .expect("slice");
        let found: Vec<String> = addresses(&slice).iter().map(ToString::to_string).collect();
        assert_eq!(found, ["10.0.0.5:6443", "10.0.0.6:6443"]);
    }

    #[tokio::test]
    async fn only_a_change_of_addresses_re_renders_the_tenants() {
        let updates = vec![
            Ok(slice(&["10.0.0.5"], "1")),
            Ok(slice(&["10.0.0.5"], "2")), // a write that changes no address
            Ok(slice(&["10.0.0.5", "10.0.0.6"], "3")),
            Ok(slice(&["10.0.0.6", "10.0.0.5"], "4")), // the same set, reordered
            Ok(slice(&["10.0.0.9"], "5")),
        ];
        let passed: Vec<String> = changes(futures::stream::iter(updates))
            .map(|s| s.expect("slice").metadata.resource_version.unwrap_or_default())
            .collect()
            .await;
        assert_eq!(passed, ["1", "3", "5"]);
    }
}
