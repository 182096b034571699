//! Types shared by the three resources.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Rule text shared by every field that must be a DNS label (RFC 1123).
pub(crate) const DNS_LABEL_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";
/// The message that goes with [`DNS_LABEL_RULE`].
pub(crate) const DNS_LABEL_MESSAGE: &str =
    "must be a DNS label: lower-case letters, digits and '-', starting and ending with a letter or digit";
/// A key in a Secret in the tenant's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the tenant's namespace.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("must be a valid Secret name (DNS subdomain)"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("must be a valid Secret key: letters, digits, '-', '_' and '.'"))]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

impl SecretKeyRef {
    /// Builds a reference to `key` in the Secret `name`.
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Self {
        Self { name: name.into(), key: key.into() }
    }
}

/// Condition types and reasons written by the operator.
pub mod conditions {
    /// The object is fully reconciled and serving.
    pub const READY: &str = "Ready";
    /// The last reconcile applied every object without error.
    pub const RECONCILED: &str = "Reconciled";
    /// The gateway Deployment has the minimum number of available replicas.
    pub const GATEWAY_AVAILABLE: &str = "GatewayAvailable";
    /// Serving, but with a problem a human should look at.
    pub const DEGRADED: &str = "Degraded";
    /// McpConnection / PromptPolicy: the object was accepted into a tenant's config.
    pub const ACCEPTED: &str = "Accepted";
}
