//! Where the API server really listens, for the gateways' NetworkPolicy
//! egress (they publish McpConnection status): the endpoints of the
//! `kubernetes` Service in `default`, which the API servers keep up to date
//! themselves. Its ClusterIP would not do: NetworkPolicy is matched after the
//! Service's DNAT, against these addresses.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;

/// Namespace and name of the EndpointSlice the API servers maintain for the
/// `kubernetes` Service (the chart grants `get` on exactly this object).
pub const NAMESPACE: &str = "default";
/// See [`NAMESPACE`].
pub const NAME: &str = "kubernetes";

/// The API server endpoints, read once at start; empty (with a warning) when
/// they cannot be read, and then the gateways' NetworkPolicy has no rule for
/// them. A control plane that moves to new addresses needs an operator restart.
pub async fn endpoints(client: &Client) -> Vec<SocketAddr> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    match api.get_opt(NAME).await {
        Ok(Some(slice)) => {
            let found = addresses(&slice);
            tracing::info!(endpoints = ?found, "API server endpoints: gateways may reach them to publish McpConnection status");
            found
        }
        Ok(None) => {
            tracing::warn!(
                "no EndpointSlice {NAMESPACE}/{NAME}: gateway NetworkPolicies allow no API server egress, so where NetworkPolicy is enforced gateways cannot publish McpConnection status.driftedTools"
            );
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading EndpointSlice {NAMESPACE}/{NAME}: gateway NetworkPolicies allow no API server egress");
            Vec::new()
        }
    }
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
    use super::*;

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
}
