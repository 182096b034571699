//! What the policy stack did to one request: the policies applied, the hash of
//! the stack (provenance for the audit trail) and the guard findings.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tenantgate_crds::v1alpha1::GuardAction;

use super::output::OutputGuard;

/// A guard of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Guard {
    /// The prompt-injection detector.
    PromptInjection,
    /// `denyPatterns`.
    DenyPatterns,
    /// `redact`: e-mail addresses.
    RedactEmail,
    /// `redact`: card numbers.
    RedactCreditCard,
    /// `redact`: API keys and tokens.
    RedactApiKey,
    /// `maxInputTokens`.
    MaxInputTokens,
    /// `allowedModels`.
    AllowedModels,
}

impl Guard {
    /// The name used in errors, logs and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PromptInjection => "promptInjection",
            Self::DenyPatterns => "denyPatterns",
            Self::RedactEmail => "redact.email",
            Self::RedactCreditCard => "redact.creditCard",
            Self::RedactApiKey => "redact.apiKey",
            Self::MaxInputTokens => "maxInputTokens",
            Self::AllowedModels => "allowedModels",
        }
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a guard looked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// The caller's messages.
    Input,
    /// A tool result (MCP).
    ToolResult,
    /// The model's answer.
    Output,
}

/// One guard that fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Policy id (`namespace/name`).
    #[serde(serialize_with = "as_str")]
    pub policy: Arc<str>,
    /// Guard.
    pub guard: Guard,
    /// What it did.
    pub action: GuardAction,
    /// Where.
    pub stage: Stage,
}

fn as_str<S: serde::Serializer>(value: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value)
}

impl Finding {
    /// Logs a finding: policy id and guard only, never the matched text.
    pub fn log(&self) {
        tracing::info!(policy = %self.policy, guard = self.guard.as_str(), action = ?self.action, stage = ?self.stage, "prompt policy guard fired");
        metrics::counter!("tenantgate_policy_findings_total", "guard" => self.guard.as_str(), "action" => action_label(self.action))
            .increment(1);
    }
}

fn action_label(action: GuardAction) -> &'static str {
    match action {
        GuardAction::Off => "off",
        GuardAction::Flag => "flag",
        GuardAction::Redact => "redact",
        GuardAction::Block => "block",
    }
}

/// The policy decision of one request; set on the response's extensions.
#[derive(Clone, Debug)]
pub struct PolicyDecision {
    /// SHA-256 (hex) of the ids and contents of the applied policies, in order.
    pub stack_hash: String,
    /// Ids of the applied policies, in composition order.
    pub applied: Vec<Arc<str>>,
    /// Input guards that fired; output guards are in [`Self::output_findings`].
    pub findings: Vec<Finding>,
    /// Guards for the model's answer; `None` when no applied policy scans output.
    pub(crate) output: Option<Arc<OutputGuard>>,
}

impl PolicyDecision {
    /// Whether the answer must pass output guards.
    pub fn scans_output(&self) -> bool {
        self.output.is_some()
    }
}

/// The provenance hash of a stack: SHA-256 over each policy's id and content digest.
pub fn stack_hash<'a>(policies: impl Iterator<Item = (&'a str, &'a [u8; 32])>) -> String {
    let mut h = Sha256::new();
    for (id, digest) in policies {
        h.update(id.as_bytes());
        h.update([0]);
        h.update(digest);
    }
    hex::encode(h.finalize())
}
