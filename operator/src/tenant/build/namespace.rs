//! The tenant namespace.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use tenantgate_crds::render::tenant_namespace;

use super::BuildInput;
use crate::labels::{labels, owner_reference};

/// The tenant namespace: Pod Security `restricted` enforced.
pub fn build_namespace(input: &BuildInput<'_>) -> Namespace {
    let mut labels = labels(&input.tenant.name_any(), "namespace");
    labels.insert("pod-security.kubernetes.io/enforce".into(), "restricted".into());
    labels.insert("pod-security.kubernetes.io/enforce-version".into(), "latest".into());
    labels.insert("pod-security.kubernetes.io/warn".into(), "restricted".into());
    Namespace {
        metadata: ObjectMeta {
            name: Some(tenant_namespace(input.tenant)),
            labels: Some(labels),
            owner_references: Some(vec![owner_reference(input.tenant)]),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn the_namespace_enforces_pod_security_restricted() {
        let ns = built::<Namespace>("tg-acme");
        let ns_labels = ns.metadata.labels.as_ref().expect("labels");
        assert_eq!(ns_labels.get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));
    }
}
