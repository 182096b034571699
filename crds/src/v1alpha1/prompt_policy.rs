//! `PromptPolicy`: system prompts, guards and model allow-lists.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Desired state of a prompt policy: which requests it matches and what it does to them.
// Several printcolumns repeat `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tenantgate.dev",
    doc = "A prompt policy. In a tenant's namespace it applies to that tenant; in the operator's namespace it applies to every tenant (the global layer). Policies compose global, then tenant, then user (those whose match names roles or subjects), in ascending priority inside a layer.",
    version = "v1alpha1",
    derive = "PartialEq",
    kind = "PromptPolicy",
    plural = "promptpolicies",
    namespaced,
    shortname = "pp",
    category = "tenantgate",
    status = "PromptPolicyStatus",
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Tenant",
        type_ = "string",
        json_path = ".status.tenant",
        description = "Tenant this policy applies to, or * for global policies"
    ),
    printcolumn(name = "Accepted", type_ = "string", json_path = ".status.conditions[?(@.type==\"Accepted\")].status"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.systemPrompt) || has(self.guards) || (has(self.allowedModels) && size(self.allowedModels) > 0)").message("a policy must set systemPrompt, guards or allowedModels"))]
#[serde(rename_all = "camelCase")]
pub struct PromptPolicySpec {
    /// Order inside a layer: lower first, so a higher priority's `replace` wins.
    #[serde(default = "default_priority")]
    #[schemars(range(min = -1000000, max = 1000000))]
    pub priority: i32,
    /// Requests the policy applies to. A match naming roles or subjects makes it a user-level policy.
    #[serde(default, rename = "match")]
    pub match_: PolicyMatch,
    /// A system prompt segment composed into every matching request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<SystemPrompt>,
    /// Checks run on prompts, tool results and model output. The strictest of all matching policies wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<Guards>,
    /// Globs of model names matching requests may use. Empty: no restriction from this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_models: Vec<String>,
}

fn default_priority() -> i32 {
    100
}

/// Which requests a policy applies to. Every list that is set must match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    /// Globs of model names.
    #[serde(default = "default_match_models")]
    #[schemars(length(max = 64))]
    pub models: Vec<String>,
    /// The caller must have one of these roles. Non-empty makes this a user-level policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub roles: Vec<String>,
    /// The caller's subject must be one of these. Non-empty makes this a user-level policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub subjects: Vec<String>,
}

impl Default for PolicyMatch {
    fn default() -> Self {
        Self { models: default_match_models(), roles: Vec::new(), subjects: Vec::new() }
    }
}

fn default_match_models() -> Vec<String> {
    vec!["*".into()]
}

/// A system prompt segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemPrompt {
    /// A minijinja template with `tenant`, `user`, `model` and `now` in scope.
    #[schemars(length(min = 1, max = 65536))]
    pub template: String,
    /// How the segment combines with the prompt composed so far.
    #[serde(default)]
    pub mode: PromptMode,
    /// Global policies only: no tenant or user policy may replace or drop this segment.
    #[serde(default)]
    pub locked: bool,
}

/// How a system prompt segment combines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PromptMode {
    /// Before the segments composed so far (and the caller's own system message).
    #[default]
    Prepend,
    /// After them.
    Append,
    /// Instead of every unlocked segment so far and the caller's system message.
    Replace,
}

/// Checks on prompts, tool results and model output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Guards {
    /// What a detected prompt-injection attempt does.
    #[serde(default)]
    pub prompt_injection: GuardAction,
    /// Regular expressions (RE2 syntax) whose match blocks the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(inner(length(min = 1, max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(p, ''.matches(p) || !''.matches(p))").message("every pattern must be a valid regular expression"))]
    pub deny_patterns: Vec<String>,
    /// Kinds of sensitive data replaced before anything reaches a model, a log or the database.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub redact: Vec<RedactKind>,
    /// Largest prompt accepted, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_input_tokens: Option<u32>,
    /// Also apply denyPatterns and redaction to model output, streaming included.
    #[serde(default = "default_true")]
    pub scan_output: bool,
}

fn default_true() -> bool {
    true
}

/// What a guard does when it fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GuardAction {
    /// Do nothing.
    #[default]
    Off,
    /// Record it in the audit trail only.
    Flag,
    /// Remove the offending text and go on.
    Redact,
    /// Refuse the request with 400 naming the policy.
    Block,
}

/// Kinds of sensitive data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RedactKind {
    /// E-mail addresses.
    Email,
    /// Payment card numbers (Luhn-checked).
    CreditCard,
    /// API keys and bearer tokens of well-known formats.
    ApiKey,
}

/// What the operator observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptPolicyStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Tenant this policy applies to, or `*` for a global policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
