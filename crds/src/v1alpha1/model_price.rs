//! `ModelPrice`: what an upstream model costs, for every tenant of the cluster.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::tenant::ProviderType;

/// The price of one upstream model, cluster-wide: it replaces the entry of the
/// shipped default list for the same provider type and model, and a tenant's
/// own `targets[].price` replaces both.
// Several printcolumns repeat `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tenantgate.dev",
    doc = "The price of an upstream model for every tenant of the cluster. It replaces the shipped default price of the same provider type and model; a Tenant's spec.models[].targets[].price replaces both.",
    version = "v1alpha1",
    derive = "PartialEq",
    kind = "ModelPrice",
    plural = "modelprices",
    shortname = "mp",
    category = "tenantgate",
    status = "ModelPriceStatus",
    printcolumn(
        name = "Provider",
        type_ = "string",
        json_path = ".spec.provider",
        description = "Provider type the price applies to"
    ),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model", description = "Upstream model name"),
    printcolumn(name = "Currency", type_ = "string", json_path = ".spec.currency"),
    printcolumn(
        name = "Input",
        type_ = "string",
        json_path = ".spec.price.inputPerMillion",
        description = "Per million input tokens"
    ),
    printcolumn(
        name = "Output",
        type_ = "string",
        json_path = ".spec.price.outputPerMillion",
        description = "Per million output tokens"
    ),
    printcolumn(
        name = "Cached",
        type_ = "string",
        json_path = ".spec.price.cachedInputPerMillion",
        priority = 1,
        description = "Per million input tokens read from the provider's cache"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.version",
        priority = 1,
        description = "The price version usage rows priced with it carry"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ModelPriceSpec {
    /// Provider type the price applies to (a Tenant's providers of this type).
    pub provider: ProviderType,
    /// Model name as sent to the provider (a target's `model`), matched exactly.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// ISO 4217 code of the price's currency; it applies to tenants that count in this currency.
    #[serde(default = "default_currency")]
    #[schemars(length(min = 3, max = 3))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z]{3}$')").message("must be an ISO 4217 currency code: three capital letters, e.g. USD"))]
    pub currency: String,
    /// The price.
    pub price: Price,
}

/// What the operator found of a ModelPrice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPriceStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The price version: the content hash of the currency and amounts that every usage row
    /// priced with this price carries in its `priceVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The default currency of tenants and prices.
pub fn default_currency() -> String {
    "USD".into()
}

/// CEL rule text of a non-negative decimal with at most 9 digits on each side of the point.
pub(crate) const DECIMAL_RULE: &str = "self.matches('^(0|[1-9][0-9]{0,8})([.][0-9]{1,9})?$')";
/// Message of [`DECIMAL_RULE`].
pub(crate) const DECIMAL_MESSAGE: &str = "must be a non-negative decimal number written as a string, e.g. \"0.15\" (at most 9 digits before and after the point)";

/// What a model costs, in decimal strings of the currency's units (never floating point).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Price {
    /// Per million input (prompt) tokens, e.g. `"0.15"`.
    #[schemars(length(min = 1, max = 19))]
    #[x_kube(validation = Rule::new(DECIMAL_RULE).message(DECIMAL_MESSAGE))]
    pub input_per_million: String,
    /// Per million output (completion) tokens, reasoning tokens included. Absent: `"0"` (embeddings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 19))]
    #[x_kube(validation = Rule::new(DECIMAL_RULE).message(DECIMAL_MESSAGE))]
    pub output_per_million: Option<String>,
    /// Per million input tokens read from the provider's prompt cache. Absent: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 19))]
    #[x_kube(validation = Rule::new(DECIMAL_RULE).message(DECIMAL_MESSAGE))]
    pub cached_input_per_million: Option<String>,
    /// A fixed amount per answered request, on top of the tokens. Absent: `"0"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 19))]
    #[x_kube(validation = Rule::new(DECIMAL_RULE).message(DECIMAL_MESSAGE))]
    pub per_request: Option<String>,
}
