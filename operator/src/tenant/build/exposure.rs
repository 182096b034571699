//! The gateway outside the cluster: an Ingress, or a Gateway API HTTPRoute.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::{BuildInput, meta};
use crate::labels::{GATEWAY, GATEWAY_PORT};

/// The part of the Gateway API's HTTPRoute (`gateway.networking.k8s.io/v1`)
/// the operator sets. k8s-openapi has no Gateway API types, and a generated
/// crate of the whole API is a lot for one object: these few fields are
/// typed here; fields the API server adds are ignored on read.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    root = "HttpRoute",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteSpec {
    /// The Gateways (listeners) the route attaches to.
    pub parent_refs: Vec<ParentReference>,
    /// Host names the route answers.
    pub hostnames: Vec<String>,
    /// Where requests go.
    pub rules: Vec<HttpRouteRule>,
}

/// A Gateway (listener) an HTTPRoute attaches to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ParentReference {
    /// API group of the parent (`gateway.networking.k8s.io`).
    pub group: String,
    /// Kind of the parent (`Gateway`).
    pub kind: String,
    /// Name of the Gateway.
    pub name: String,
    /// Namespace of the Gateway.
    pub namespace: String,
    /// Listener of the Gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// One rule of an HTTPRoute: every request to its backends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteRule {
    /// The Services requests go to.
    pub backend_refs: Vec<BackendRef>,
}

/// A Service port an HTTPRoute sends requests to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendRef {
    /// Service name.
    pub name: String,
    /// Service port.
    pub port: i32,
}

fn exposure_annotations(input: &BuildInput<'_>) -> BTreeMap<String, String> {
    let Some(exposure) = &input.tenant.spec.exposure else { return BTreeMap::new() };
    let mut annotations = exposure.annotations.clone();
    if let Some(issuer) = exposure.tls.as_ref().and_then(|t| t.cert_manager_issuer.as_ref()) {
        let key = if issuer.kind == "Issuer" { "cert-manager.io/issuer" } else { "cert-manager.io/cluster-issuer" };
        annotations.insert(key.into(), issuer.name.clone());
    }
    annotations
}

fn tls_secret_name(input: &BuildInput<'_>) -> Option<String> {
    let tls = input.tenant.spec.exposure.as_ref()?.tls.as_ref()?;
    Some(tls.secret_name.clone().unwrap_or_else(|| format!("{}-tls", input.tenant.name_any())))
}

/// An Ingress when exposure is set without a gatewayRef.
pub fn build_ingress(input: &BuildInput<'_>) -> Option<Ingress> {
    let exposure = input.tenant.spec.exposure.as_ref()?;
    if exposure.gateway_ref.is_some() {
        return None;
    }
    let mut metadata = meta(input, GATEWAY, "exposure");
    metadata.annotations = Some(exposure_annotations(input));
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: GATEWAY.into(),
            port: Some(ServiceBackendPort { name: Some("http".into()), ..ServiceBackendPort::default() }),
        }),
        ..IngressBackend::default()
    };
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            rules: Some(vec![IngressRule {
                host: Some(exposure.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath { path: Some("/".into()), path_type: "Prefix".into(), backend }],
                }),
            }]),
            ingress_class_name: exposure.ingress_class_name.clone(),
            tls: tls_secret_name(input)
                .map(|secret| vec![IngressTLS { hosts: Some(vec![exposure.host.clone()]), secret_name: Some(secret) }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

/// An HTTPRoute when exposure names a Gateway and the Gateway API is installed.
pub fn build_http_route(input: &BuildInput<'_>) -> Option<HttpRoute> {
    let exposure = input.tenant.spec.exposure.as_ref()?;
    let gateway = exposure.gateway_ref.as_ref()?;
    if !input.settings.gateway_api {
        return None;
    }
    let mut metadata = meta(input, GATEWAY, "exposure");
    metadata.annotations = Some(exposure_annotations(input));
    Some(HttpRoute {
        metadata,
        spec: HttpRouteSpec {
            parent_refs: vec![ParentReference {
                group: "gateway.networking.k8s.io".into(),
                kind: "Gateway".into(),
                name: gateway.name.clone(),
                namespace: gateway.namespace.clone(),
                section_name: gateway.section_name.clone(),
            }],
            hostnames: vec![exposure.host.clone()],
            rules: vec![HttpRouteRule { backend_refs: vec![BackendRef { name: GATEWAY.into(), port: GATEWAY_PORT }] }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::endpoint;
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn exposure_yields_an_ingress_or_a_route_where_the_gateway_api_exists() {
        let ingress = stack_of(
            &tenant(
                "  exposure: {host: acme.example.com, tls: {certManagerIssuer: {name: le}}, ingressClassName: nginx}\n",
            ),
            &[],
            &BTreeMap::new(),
        );
        let i = ingress.get::<Ingress>(GATEWAY).expect("ingress");
        assert_eq!(i.annotations().get("cert-manager.io/cluster-issuer").map(String::as_str), Some("le"));
        let tls = i.spec.as_ref().and_then(|s| s.tls.clone()).expect("tls");
        assert_eq!(tls[0].secret_name.as_deref(), Some("acme-tls"));
        assert_eq!(
            endpoint(&tenant("  exposure: {host: acme.example.com, tls: {secretName: x}}\n")),
            "https://acme.example.com"
        );

        let t = tenant("  exposure: {host: acme.example.com, gatewayRef: {name: public, namespace: gw}}\n");
        let mut settings = BuildSettings::default();
        let without = stack_with(&t, &settings);
        assert!(
            without.all::<HttpRoute>().is_empty() && without.all::<Ingress>().is_empty(),
            "no HTTPRoute where the Gateway API is not installed"
        );
        settings.gateway_api = true;
        let route = stack_with(&t, &settings).get::<HttpRoute>(GATEWAY).expect("route");
        assert_eq!(route.spec.parent_refs[0].name, "public");
    }
}
