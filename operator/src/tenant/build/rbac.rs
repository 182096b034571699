//! The gateway's identity and the one thing it may do against the API server.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Resource;
use tenantgate_crds::render::tenant_namespace;
use tenantgate_crds::v1alpha1::McpConnection;

use super::{BuildInput, meta};
use crate::labels::{GATEWAY, GATEWAY_CONFIG, GATEWAY_SPEND, GATEWAY_STATUS_WRITER};

/// The gateway's ServiceAccount. No token is automounted: the gateway
/// container alone gets one, through its own projected volume.
pub fn build_service_account(input: &BuildInput<'_>) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(input, GATEWAY, "gateway"),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// What the gateway may do against the API server: get and patch the status
/// of the McpConnections of its own namespace, to publish
/// `status.driftedTools` (it alone sees the upstream tools), create Events
/// there and patch the `gateway-spend` ConfigMap (budget alerts and spend: it
/// alone sees what is spent), and watch its `gateway-config` ConfigMap (a change
/// reaches it in seconds, not when the kubelet refreshes the volume: an ApiKey
/// deleted is refused at once). Scoped by namespace, not by name, for
/// McpConnections and Events: resourceNames cannot name objects created later.
pub fn build_role(input: &BuildInput<'_>) -> Role {
    Role {
        metadata: meta(input, GATEWAY_STATUS_WRITER, "gateway"),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![McpConnection::group(&()).into_owned()]),
                resources: Some(vec![format!("{}/status", McpConnection::plural(&()))]),
                verbs: vec!["get".into(), "patch".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec!["events.k8s.io".into()]),
                resources: Some(vec!["events".into()]),
                verbs: vec!["create".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![GATEWAY_SPEND.into()]),
                verbs: vec!["patch".into()],
                ..PolicyRule::default()
            },
            // A list or watch with the field selector metadata.name=gateway-config matches resourceNames.
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![GATEWAY_CONFIG.into()]),
                verbs: vec!["list".into(), "watch".into()],
                ..PolicyRule::default()
            },
        ]),
    }
}

/// Binds [`build_role`] to the gateway's ServiceAccount.
pub fn build_role_binding(input: &BuildInput<'_>) -> RoleBinding {
    RoleBinding {
        metadata: meta(input, GATEWAY_STATUS_WRITER, "gateway"),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: GATEWAY_STATUS_WRITER.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: GATEWAY.into(),
            namespace: Some(tenant_namespace(input.tenant)),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn the_gateway_may_patch_mcp_connection_status_its_spend_watch_its_config_and_create_events_in_its_namespace_only()
    {
        let role = built::<Role>(GATEWAY_STATUS_WRITER);
        assert_eq!(role.metadata.namespace.as_deref(), Some("tg-acme"));
        let rules = role.rules.clone().unwrap_or_default();
        assert_eq!(rules.len(), 4, "{rules:?}");
        assert_eq!(rules[0].api_groups.clone().unwrap_or_default(), ["tenantgate.dev"]);
        assert_eq!(rules[0].resources.clone().unwrap_or_default(), ["mcpconnections/status"]);
        assert_eq!(rules[0].verbs, ["get", "patch"]);
        assert_eq!(rules[1].api_groups.clone().unwrap_or_default(), ["events.k8s.io"]);
        assert_eq!(rules[1].resources.clone().unwrap_or_default(), ["events"]);
        assert_eq!(rules[1].verbs, ["create"], "budget alerts: create only, never read or change others' Events");
        assert_eq!(rules[2].resources.clone().unwrap_or_default(), ["configmaps"]);
        assert_eq!(rules[2].resource_names.clone().unwrap_or_default(), [GATEWAY_SPEND], "that one ConfigMap only");
        assert_eq!(rules[2].verbs, ["patch"]);
        assert_eq!(rules[3].resources.clone().unwrap_or_default(), ["configmaps"]);
        assert_eq!(rules[3].resource_names.clone().unwrap_or_default(), [GATEWAY_CONFIG], "its config only");
        assert_eq!(rules[3].verbs, ["list", "watch"], "read, never written");
        let binding = &built::<RoleBinding>(GATEWAY_STATUS_WRITER);
        assert_eq!(binding.metadata.namespace.as_deref(), Some("tg-acme"));
        assert_eq!((binding.role_ref.kind.as_str(), binding.role_ref.name.as_str()), ("Role", GATEWAY_STATUS_WRITER));
        let subjects = binding.subjects.clone().unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (subjects[0].kind.as_str(), subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
            ("ServiceAccount", GATEWAY, Some("tg-acme"))
        );
        for m in [&role.metadata, &binding.metadata] {
            assert_eq!(m.owner_references.as_ref().map(|o| o[0].name.as_str()), Some("acme"), "garbage-collected");
        }
    }
}
