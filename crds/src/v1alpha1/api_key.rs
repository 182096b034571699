//! `ApiKey`: a tenant's API key, declared as an object (GitOps) instead of
//! minted through the admin API.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::tenant::{Budget, BudgetStatus};

/// RFC 3339 date-time with a zone (`Z` or an offset), as `expiresAt` takes it.
pub(crate) const RFC3339_RULE: &str = "self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$')";

/// An API key of the tenant that owns the namespace. The operator generates its value
/// once into a Secret (key `apiKey`, owned by this object, named in
/// `status.secretName`), puts only its SHA-256 into the gateway config, and generates
/// a new key into a new Secret whenever `spec.rotation` changes. Deleting the object
/// revokes the key and deletes its Secrets.
// Several printcolumns repeat `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tenantgate.dev",
    doc = "An API key of the tenant that owns the namespace. The operator generates the key into the Secret named in status.secretName (key apiKey) and puts only its hash into the gateway config; changing spec.rotation generates a new key into a new Secret; deleting the object revokes it.",
    version = "v1alpha1",
    derive = "PartialEq",
    derive = "Default",
    kind = "ApiKey",
    plural = "apikeys",
    namespaced,
    shortname = "tgkey",
    category = "tenantgate",
    status = "ApiKeyStatus",
    printcolumn(
        name = "Tenant",
        type_ = "string",
        json_path = ".status.tenant",
        description = "Tenant this key belongs to"
    ),
    printcolumn(
        name = "Subject",
        type_ = "string",
        json_path = ".status.subject",
        description = "Who the key acts as"
    ),
    printcolumn(
        name = "Prefix",
        type_ = "string",
        json_path = ".status.prefix",
        description = "The key's public prefix: tg_<prefix>_..."
    ),
    printcolumn(name = "Expires", type_ = "string", json_path = ".spec.expiresAt"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Spent",
        type_ = "string",
        json_path = ".status.budget.spent",
        description = "What the key's budget has spent in its current window"
    ),
    printcolumn(
        name = "Budget",
        type_ = "string",
        json_path = ".status.budget.amount",
        description = "The key's budget per window, in status.budget.currency"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// Who the key acts as: the subject of its requests in usage, audit events, per-user
    /// limits and budgets, prompt policies and MCP tool access rules. Default
    /// `apikey:<metadata.name>`, which stays the same across rotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub subject: Option<String>,
    /// Roles the key grants (as a JWT's roles claim would). A role among the tenant's admin
    /// roles (`spec.auth.jwt.adminRoles`, `tenant-admin` without JWT settings) opens the admin API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub roles: Vec<String>,
    /// Tenant model names (globs: `*` and `?`) the key may use. Empty: every model. A request
    /// for another model is refused with 403 naming the model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub allowed_models: Vec<String>,
    /// When the key stops working, as an RFC 3339 time (e.g. `2027-01-31T00:00:00Z`). Absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(RFC3339_RULE).message("must be an RFC 3339 time with a zone, e.g. 2027-01-31T00:00:00Z"))]
    pub expires_at: Option<String>,
    /// Client addresses the key is accepted from, as CIDRs (`10.0.0.0/8`, `2001:db8::/32`;
    /// one address is `/32` or `/128`). Empty: any. The address is the peer the gateway
    /// sees (behind a proxy or load balancer that does not preserve client addresses,
    /// that proxy's address); `X-Forwarded-For` is not trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("each entry must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32 (one address: /32 or /128)"))]
    pub ip_allow_list: Vec<String>,
    /// The team the key's spend counts toward (team budgets, usage and spend by team),
    /// whatever its roles say. Absent: the team its roles name under
    /// `spec.limits.perTeam.rolePrefix`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub team: Option<String>,
    /// Spend cap of this key, in the tenant's currency. The key's spend also counts toward its
    /// subject's (`perUser`), its team's and the tenant's budgets: a request needs room in all.
    /// Spent so far shows in `status.budget` and the `Spent` column; `alertAtPercent` raises
    /// Events regarding this ApiKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Rotation trigger: any string (a date, a counter). Whenever it changes, the operator
    /// generates a new key into a new Secret (`<name>-<10 hex digits>`, named in
    /// `status.secretName`) and the old key stops working as soon as the gateways have
    /// the new config. Committing a new value to git rotates the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub rotation: Option<String>,
}

/// What the operator observed of an ApiKey. Never the key itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Tenant the key belongs to (the tenant owning its namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The subject the key acts as (`spec.subject` or its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The public prefix of the current key (`tg_<prefix>_...`): how to tell keys apart in
    /// the admin API's listing and in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The Secret (in this namespace) holding the current key under `apiKey`: the
    /// ApiKey's name until its first rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The key's budget (`spec.budget`) as its tenant's gateway last published it: at most every
    /// 30 s and only when it changed, never per request. `updatedAt` is when these figures
    /// were published. Absent while the key has no budget, and until the gateway first
    /// publishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
    /// Ready: the key's hash is in the tenant's gateway config.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The default subject of the ApiKey named `name`.
pub fn default_api_key_subject(name: &str) -> String {
    format!("apikey:{name}")
}

impl ApiKey {
    /// The subject the key acts as.
    pub fn subject(&self) -> String {
        use kube::ResourceExt;
        self.spec.subject.clone().unwrap_or_else(|| default_api_key_subject(&self.name_any()))
    }

    /// The Secret that holds (or is to hold) the key of the current `spec.rotation`.
    pub fn secret_name(&self) -> String {
        use kube::ResourceExt;
        crate::api_key::secret_name(&self.name_any(), self.spec.rotation.as_deref())
    }
}
