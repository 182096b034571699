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
/// Name of the ConfigMap the gateway publishes the tenant's budget spend in
/// (the operator makes it empty; the gateway writes its data, the operator copies it to status).
pub const GATEWAY_SPEND: &str = "gateway-spend";
/// Key of the GatewayConfig in its ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Port the gateway serves on (HTTP API, probes and metrics).
pub const GATEWAY_PORT: i32 = 8080;
/// The gateway's probes and metrics (`--ops-listen`): a port no Ingress or HTTPRoute routes.
pub const GATEWAY_OPS_PORT: i32 = 9090;
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

/// Why a `key=value` list was refused.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// Not `key=value`: a set-based selector or a bare word.
    #[error("{0:?} is not key=value (only equality selectors are accepted)")]
    NotAPair(String),
    /// The key is not a label key.
    #[error("{key:?} in {pair:?} is not a label key ([prefix/]name of [A-Za-z0-9-_.])")]
    Key {
        /// The key.
        key: String,
        /// The pair it is in.
        pair: String,
    },
    /// The value is not a label value.
    #[error("{value:?} in {pair:?} is not a label value (up to 63 of [A-Za-z0-9-_.])")]
    Value {
        /// The value.
        value: String,
        /// The pair it is in.
        pair: String,
    },
}

/// Parses `key=value[,key=value...]` (an equality-based label selector, as
/// the operator's flags take them) into labels. Refuses anything else with a
/// message naming what is wrong: set-based selectors (`in`, `!=`, `!key`)
/// cannot be turned into labels to set or to match in a NetworkPolicy.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, LabelError> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| LabelError::NotAPair(pair.to_owned()))?;
        let (key, value) = (key.trim(), value.trim().trim_start_matches('='));
        let valid_key = !key.is_empty()
            && key.len() <= 253
            && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            && key.rsplit('/').next().is_some_and(|name| !name.is_empty() && name.len() <= 63);
        if !valid_key {
            return Err(LabelError::Key { key: key.to_owned(), pair: pair.to_owned() });
        }
        let valid_value = value.len() <= 63 && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_value {
            return Err(LabelError::Value { value: value.to_owned(), pair: pair.to_owned() });
        }
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

/// `labels` as a label selector string (`a=b,c=d`), for a watch.
pub fn selector_of(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_flags_take_equality_pairs_and_refuse_the_rest_clearly() {
        let parsed = parse_labels("tenantgate.dev/watch=true, k8s-app=kube-dns").expect("parses");
        assert_eq!(selector_of(&parsed), "k8s-app=kube-dns,tenantgate.dev/watch=true");
        assert_eq!(parse_labels("a==b").expect("== is equality").get("a").map(String::as_str), Some("b"));
        assert!(parse_labels("").expect("empty").is_empty());
        for (bad, says) in [
            ("env in (a,b)", "not key=value"),
            ("a!=b", "not a label key"),
            ("a=b c", "not a label value"),
            ("=b", "not a label key"),
        ] {
            let error = parse_labels(bad).expect_err(bad).to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
