//! Names, labels and the field manager shared by everything the operator applies.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use tenantgate_crds::v1alpha1::Tenant;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "tenantgate-operator";
/// Label naming the tenant an object belongs to (also on the tenant namespace).
pub const TENANT_LABEL: &str = "tenantgate.dev/tenant";
/// `app.kubernetes.io/managed-by` value of everything the operator makes.
pub const MANAGED_BY: &str = "tenantgate-operator";
/// Label selector of everything the operator makes.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=tenantgate-operator";
/// Pod template annotation whose change rolls the gateway pods.
pub const CHECKSUM_ANNOTATION: &str = "tenantgate.dev/config-checksum";
/// Annotation carrying the GatewayConfig hash on the ConfigMap.
pub const CONFIG_HASH_ANNOTATION: &str = "tenantgate.dev/config-hash";
/// Name of the gateway Deployment, Service, ServiceAccount, HPA, PDB and NetworkPolicy.
pub const GATEWAY: &str = "gateway";
/// Name of the Role and RoleBinding that let the gateway write McpConnection status.
pub const GATEWAY_STATUS_WRITER: &str = "gateway-mcp-status";
/// Where the gateway container finds its API token, CA and namespace (the
/// path Kubernetes clients read in a pod).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Name of the ConfigMap holding the GatewayConfig.
pub const GATEWAY_CONFIG: &str = "gateway-config";
/// Key of the GatewayConfig in its ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Port the gateway serves on (HTTP API, probes and metrics).
pub const GATEWAY_PORT: i32 = 8080;
/// Writable directory of the gateway pod (an emptyDir): local SQLite data and the spill file.
pub const DATA_DIR: &str = "/var/lib/tenantgate";

/// Labels selecting one tenant's gateway pods (stable: part of the Deployment selector).
pub fn gateway_selector(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "tenantgate-gateway".into()),
        ("app.kubernetes.io/instance".into(), tenant.into()),
        ("app.kubernetes.io/component".into(), "gateway".into()),
    ])
}

/// The standard labels of an object made for `tenant`, with `component`.
pub fn labels(tenant: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "tenantgate-gateway".into()),
        ("app.kubernetes.io/instance".into(), tenant.into()),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/part-of".into(), "tenantgate".into()),
        ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        (TENANT_LABEL.into(), tenant.into()),
    ])
}

/// The controller owner reference to `tenant`: garbage collection deletes
/// what the operator made when the Tenant goes.
pub fn owner_reference(tenant: &Tenant) -> OwnerReference {
    OwnerReference {
        api_version: Tenant::api_version(&()).into_owned(),
        kind: Tenant::kind(&()).into_owned(),
        name: tenant.name_any(),
        uid: tenant.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}
