//! The network fence around the gateway.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use tenantgate_crds::address::{HostClass, classify_url};
use tenantgate_crds::config::{AwsCredentialsConfig, JwtKeys, McpAuthConfig};
use tenantgate_crds::render::tenant_namespace;

use super::{BuildInput, meta};
use crate::labels::{GATEWAY, GATEWAY_OPS_PORT, GATEWAY_PORT, gateway_selector};

pub(super) fn port(protocol: &str, port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        ..NetworkPolicyPort::default()
    }
}

pub(super) fn match_labels(labels: BTreeMap<String, String>) -> Option<LabelSelector> {
    Some(LabelSelector { match_labels: Some(labels), ..LabelSelector::default() })
}

fn namespace_named(name: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: match_labels(BTreeMap::from([("kubernetes.io/metadata.name".into(), name.into())])),
        ..NetworkPolicyPeer::default()
    }
}

fn ip_block(cidr: String, except: Option<Vec<String>>) -> NetworkPolicyPeer {
    NetworkPolicyPeer { ip_block: Some(IPBlock { cidr, except }), ..NetworkPolicyPeer::default() }
}

/// `/32` or `/128`: exactly one address.
fn host_cidr(ip: std::net::IpAddr) -> String {
    if ip.is_ipv4() { format!("{ip}/32") } else { format!("{ip}/128") }
}

/// Where an upstream URL is, as NetworkPolicy can express it.
fn egress_for_url(url: &str) -> Option<NetworkPolicyEgressRule> {
    let parsed = url::Url::parse(url).ok()?;
    let ports = Some(vec![port("TCP", i32::from(parsed.port_or_known_default()?))]);
    let host = parsed.host_str()?.trim_end_matches('.');
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Some(NetworkPolicyEgressRule { to: Some(vec![ip_block(host_cidr(ip), None)]), ports });
    }
    // In-cluster Services: <svc>.<namespace>.svc[.cluster.local]
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() >= 3 && labels[2] == "svc" {
        return Some(NetworkPolicyEgressRule { to: Some(vec![namespace_named(labels[1])]), ports });
    }
    // A public name: the internet on that port, nothing inside private ranges.
    let private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"];
    Some(NetworkPolicyEgressRule {
        to: Some(vec![ip_block("0.0.0.0/0".into(), Some(private.map(String::from).to_vec()))]),
        ports,
    })
}

/// The gateway's way to the API server (it publishes McpConnection status, budget Events
/// and spend, and watches its gateway-config).
/// NetworkPolicy implementations match traffic after the Service's DNAT, so
/// the `kubernetes` Service's ClusterIP would match nothing: the rule names
/// its endpoints, the API servers' own addresses and port (a control plane
/// outside the pod network, as in most managed clusters, is only reachable
/// by ipBlock). One /32 (or /128) per address.
fn api_server_egress(endpoints: &[std::net::SocketAddr]) -> Vec<NetworkPolicyEgressRule> {
    let mut by_port: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for e in endpoints {
        by_port.entry(e.port()).or_default().insert(host_cidr(e.ip()));
    }
    by_port
        .into_iter()
        .map(|(p, cidrs)| NetworkPolicyEgressRule {
            to: Some(cidrs.into_iter().map(|cidr| ip_block(cidr, None)).collect()),
            ports: Some(vec![port("TCP", i32::from(p))]),
        })
        .collect()
}

/// Every URL the gateway calls out to: providers, MCP servers, the JWKS and OAuth token
/// endpoints, the OTLP collector.
fn upstream_urls(input: &BuildInput<'_>) -> BTreeSet<String> {
    let config = &input.rendered.config;
    let mut urls: BTreeSet<String> = BTreeSet::new();
    urls.extend(config.providers.iter().filter_map(|p| p.base_url.clone()));
    // Where providers' credentials are exchanged.
    for p in &config.providers {
        urls.extend(p.azure.as_ref().and_then(|a| a.entra_id.as_ref()).map(|e| e.token_url.clone()));
        if let Some(w) = &p.google_workload_identity {
            urls.extend([w.sts_url.clone(), w.iam_credentials_url.clone()]);
        }
        if let Some(AwsCredentialsConfig::WebIdentity { sts_url, .. }) =
            p.bedrock.as_ref().and_then(|b| b.credentials.as_ref())
        {
            urls.insert(sts_url.clone());
        }
    }
    urls.extend(config.mcp.iter().filter_map(|c| c.url.clone()));
    // The OpenTelemetry Collector the traces go to.
    urls.extend(config.tracing.as_ref().map(|t| t.otlp_endpoint.clone()));
    if let Some(JwtKeys::JwksUri(uri)) = config.auth.jwt.as_ref().map(|j| &j.keys) {
        urls.insert(uri.clone());
    }
    for c in &config.mcp {
        match &c.auth {
            Some(McpAuthConfig::Oauth2ClientCredentials { token_url, .. })
            | Some(McpAuthConfig::Oauth2AuthorizationCode { token_url, .. }) => {
                urls.insert(token_url.clone());
            }
            _ => {}
        }
    }
    urls
}

/// The way to the cluster DNS (the peers the operator is told: `dns.*` in the chart).
pub(super) fn dns_egress(input: &BuildInput<'_>) -> NetworkPolicyEgressRule {
    let dns = &input.settings.dns;
    let mut dns_peers = vec![NetworkPolicyPeer {
        namespace_selector: match_labels(dns.namespace_labels.clone()),
        pod_selector: match_labels(dns.pod_labels.clone()),
        ..NetworkPolicyPeer::default()
    }];
    dns_peers.extend(dns.cidrs.iter().map(|cidr| ip_block(cidr.clone(), None)));
    NetworkPolicyEgressRule { to: Some(dns_peers), ports: Some(vec![port("UDP", 53), port("TCP", 53)]) }
}

/// Default deny; ingress only from allowed peers, the operator's namespace and
/// metrics scrapers; egress only to DNS, the API server and what the config names.
pub fn build_network_policy(input: &BuildInput<'_>) -> NetworkPolicy {
    let spec = &input.tenant.spec;
    // The API port: the peers the Tenant allows and the operator's namespace. The probes and
    // metrics port: the operator's namespace and metrics scrapers only (the kubelet's probes
    // come from the node, which NetworkPolicy implementations let through).
    let operator = namespace_named(&input.settings.operator_namespace);
    let mut from = spec.network.allow_ingress_from.clone();
    from.push(operator.clone());
    let scrapers = vec![
        operator,
        NetworkPolicyPeer {
            namespace_selector: match_labels(input.settings.metrics_namespace_labels.clone()),
            ..NetworkPolicyPeer::default()
        },
    ];

    let mut egress = vec![dns_egress(input)];
    egress.extend(api_server_egress(&input.settings.api_server));
    let mut seen: Vec<NetworkPolicyEgressRule> = Vec::new();
    for url in &upstream_urls(input) {
        if matches!(classify_url(url), Ok(HostClass::Local(_))) {
            continue; // only reachable with allowLocalUpstreams, and never across pods
        }
        if let Some(rule) = egress_for_url(url)
            && !seen.contains(&rule)
        {
            seen.push(rule.clone());
            egress.push(rule);
        }
    }
    // Storage URLs live in Secrets the operator does not read: the way out to each
    // server is what the Tenant declares, by default the tenant's own namespace.
    for (storage, default_port) in [(&spec.storage.redis, 6379), (&spec.storage.database, 5432)] {
        let Some(storage) = storage else { continue };
        let (to, p) = match &storage.egress {
            Some(e) => (e.to.clone(), e.port.unwrap_or(default_port)),
            None => (vec![namespace_named(&tenant_namespace(input.tenant))], default_port),
        };
        egress.push(NetworkPolicyEgressRule { to: Some(to), ports: Some(vec![port("TCP", i32::from(p))]) });
    }
    if !spec.network.allow_egress_to.is_empty() {
        egress.push(NetworkPolicyEgressRule { to: Some(spec.network.allow_egress_to.clone()), ports: None });
    }
    NetworkPolicy {
        metadata: meta(input, GATEWAY, "gateway"),
        spec: Some(NetworkPolicySpec {
            pod_selector: match_labels(gateway_selector(&input.tenant.name_any())),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule { from: Some(from), ports: Some(vec![port("TCP", GATEWAY_PORT)]) },
                NetworkPolicyIngressRule { from: Some(scrapers), ports: Some(vec![port("TCP", GATEWAY_OPS_PORT)]) },
            ]),
            egress: Some(egress),
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::DnsPeer;
    use super::super::test_support::*;
    use super::*;

    fn policy(s: &TenantStack) -> NetworkPolicy {
        s.get::<NetworkPolicy>(GATEWAY).expect("network policy")
    }

    #[test]
    fn the_network_policy_lets_the_gateway_reach_the_api_server_endpoints() {
        let t = tenant("");
        let r = rendered(&t, &[]);
        let settings = BuildSettings {
            api_server: vec!["10.0.0.5:6443".parse().expect("addr"), "10.0.0.6:6443".parse().expect("addr")],
            ..BuildSettings::default()
        };
        let egress = build_network_policy(&input(&t, &r, &settings)).spec.and_then(|s| s.egress).unwrap_or_default();
        let rule = serde_json::to_value(
            egress
                .iter()
                .find(|r| r.ports.iter().flatten().any(|p| p.port == Some(IntOrString::Int(6443))))
                .expect("a rule for the API server's port"),
        )
        .expect("json");
        assert_eq!(
            rule["to"],
            json!([{"ipBlock": {"cidr": "10.0.0.5/32"}}, {"ipBlock": {"cidr": "10.0.0.6/32"}}]),
            "{rule}"
        );
        // Without known endpoints (render, no cluster) no such rule.
        let without = stack_of(&t, &[], &BTreeMap::new());
        assert!(!serde_json::to_string(&policy(&without).spec).expect("json").contains("6443"));
    }

    #[test]
    fn a_bedrock_web_identity_reaches_its_sts_endpoint() {
        let mut t = tenant("");
        t.spec.providers.push(
            serde_json::from_value(json!({"name": "bedrock", "type": "bedrock", "bedrock": {"region": "eu-west-3",
                "webIdentity": {"roleArn": "arn:aws:iam::123456789012:role/r", "stsUrl": "http://sts.aws-proxy.svc:8443"}}}))
            .expect("provider"),
        );
        let r = rendered(&t, &[]);
        let egress = build_network_policy(&input(&t, &r, &BuildSettings::default())).spec.and_then(|s| s.egress);
        let ports: Vec<_> =
            egress.iter().flatten().flat_map(|r| r.ports.iter().flatten()).filter_map(|p| p.port.clone()).collect();
        assert!(ports.contains(&IntOrString::Int(8443)), "STS's port: {ports:?}");
        assert!(ports.contains(&IntOrString::Int(443)), "the Bedrock runtime's (the default baseUrl): {ports:?}");
    }

    #[test]
    fn traces_open_the_way_to_the_collector_and_nothing_without_them() {
        let ports = |t: &tenantgate_crds::v1alpha1::Tenant| -> Vec<serde_json::Value> {
            let r = rendered(t, &[]);
            let egress = build_network_policy(&input(t, &r, &BuildSettings::default())).spec.and_then(|s| s.egress);
            egress.iter().flatten().map(|rule| serde_json::to_value(rule).expect("json")).collect()
        };
        let without = ports(&tenant(""));
        assert!(!without.iter().any(|r| r.to_string().contains("4317")), "no collector without traces: {without:?}");
        let mut t = tenant("");
        t.spec.observability = Some(
            serde_json::from_value(json!({"tracing": {"otlpEndpoint": "http://otel-collector.observability.svc:4317", "protocol": "grpc"}}))
                .expect("observability"),
        );
        let rules = ports(&t);
        let collector = rules
            .iter()
            .find(|r| r["ports"] == json!([{"port": 4317, "protocol": "TCP"}]))
            .unwrap_or_else(|| panic!("a rule for the collector's port: {rules:?}"));
        assert_eq!(
            collector["to"],
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}])
        );
    }

    #[test]
    fn the_network_policy_allows_exactly_what_the_config_needs() {
        let s = stack_of(
            &tenant("  network: {allowIngressFrom: [{namespaceSelector: {matchLabels: {team: web}}}]}\n"),
            &[],
            &BTreeMap::new(),
        );
        let policy = policy(&s);
        let spec = policy.spec.as_ref().expect("spec");
        assert_eq!(spec.policy_types.clone().unwrap_or_default(), ["Ingress", "Egress"]);
        // The API port: the allowed peers and the operator; the probes and metrics port: the
        // operator and metrics scrapers, never the peers that call the API.
        let ingress = serde_json::to_value(&spec.ingress).expect("json");
        assert_eq!(ingress[0]["ports"], json!([{"port": 8080, "protocol": "TCP"}]));
        let api = ingress[0]["from"].to_string();
        assert!(api.contains("\"team\":\"web\"") && api.contains("tenantgate-system"), "{api}");
        assert!(!api.contains("tenantgate.dev/metrics-scraper"), "scrapers do not call the API: {api}");
        assert_eq!(ingress[1]["ports"], json!([{"port": 9090, "protocol": "TCP"}]));
        let ops = ingress[1]["from"].to_string();
        assert!(ops.contains("tenantgate.dev/metrics-scraper") && ops.contains("tenantgate-system"), "{ops}");
        assert!(!ops.contains("\"team\":\"web\""), "API callers do not reach the metrics: {ops}");
        assert_eq!(ingress.as_array().map(Vec::len), Some(2));
        let egress = serde_json::to_value(&spec.egress).expect("json");
        let text = egress.to_string();
        assert!(text.contains("\"port\":53"), "DNS");
        assert!(
            text.contains("\"port\":443") && text.contains("0.0.0.0/0") && text.contains("10.0.0.0/8"),
            "public provider on 443, not private ranges: {text}"
        );
        assert!(
            text.contains("\"kubernetes.io/metadata.name\":\"models\"") && text.contains("\"port\":8000"),
            "in-cluster provider: {text}"
        );
        assert!(!text.contains("6379") && !text.contains("5432"), "no storage ports without storage");
    }

    #[test]
    fn the_dns_peer_is_what_the_operator_is_told() {
        let dns_rule = |settings: &BuildSettings| {
            let egress = policy(&stack_with(&tenant(""), settings)).spec.and_then(|s| s.egress).unwrap_or_default();
            let rule = egress.iter().find(|r| r.ports.iter().flatten().any(|p| p.port == Some(IntOrString::Int(53))));
            serde_json::to_value(rule.expect("a DNS rule")).expect("json")["to"].clone()
        };
        assert_eq!(
            dns_rule(&BuildSettings::default()),
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}])
        );
        let node_local = BuildSettings {
            dns: DnsPeer {
                namespace_labels: BTreeMap::from([("kubernetes.io/metadata.name".into(), "dns".into())]),
                pod_labels: BTreeMap::from([("app".into(), "coredns".into())]),
                cidrs: vec!["169.254.20.10/32".into()],
            },
            ..BuildSettings::default()
        };
        assert_eq!(
            dns_rule(&node_local),
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns"}},
                    "podSelector": {"matchLabels": {"app": "coredns"}}},
                   {"ipBlock": {"cidr": "169.254.20.10/32"}}])
        );
    }

    /// The egress rules of a tenant with `storage` (YAML under spec) for the ports given.
    fn rules_for_ports(storage: &str, ports: &[i32]) -> Vec<serde_json::Value> {
        let s = stack_of(&tenant(&format!("  storage:\n{storage}")), &[], &BTreeMap::new());
        let egress = serde_json::to_value(policy(&s).spec.and_then(|s| s.egress)).expect("json");
        let all = egress.as_array().cloned().unwrap_or_default();
        all.into_iter()
            .filter(|r| ports.iter().any(|p| r["ports"] == json!([{"port": p, "protocol": "TCP"}])))
            .collect()
    }

    #[test]
    fn storage_egress_is_what_the_tenant_declares_never_the_whole_network() {
        // Undeclared: the tenant's own namespace, on the standard ports.
        let own = json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tg-acme"}}}]);
        let both =
            "    redis: {urlSecretRef: {name: redis, key: url}}\n    database: {urlSecretRef: {name: db, key: url}}\n";
        let rules = rules_for_ports(both, &[6379, 5432]);
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert!(rules.iter().all(|r| r["to"] == own), "{rules:?}");
        // Declared: exactly those peers on that port, and nothing on the standard one.
        let declared = "    database:\n      urlSecretRef: {name: db, key: url}\n      egress: {to: [{ipBlock: {cidr: 10.1.2.3/32}}], port: 6432}\n";
        let rules = rules_for_ports(declared, &[6432]);
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0]["to"], json!([{"ipBlock": {"cidr": "10.1.2.3/32"}}]));
        assert!(rules_for_ports(declared, &[5432]).is_empty());
    }
}
