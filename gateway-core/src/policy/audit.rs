//! What the policies decided, in the shape the audit trail stores: the stack
//! hash (provenance), the applied policy ids, the guards that fired (never the
//! matched text), and the prompt only in redacted form.

use serde::Serialize;
use serde_json::Value;

use super::{Finding, PolicyDecision, PolicyError, redact_secrets};
use crate::storage::PolicyDecision as AuditedDecision;

/// A request the policies let through. `prompt` is what goes upstream, as
/// JSON (a chat request's messages, composed system prompt included; an
/// embeddings request's input), when the tenant records prompts.
pub fn decision(decision: &PolicyDecision, prompt: Option<&impl Serialize>) -> AuditedDecision {
    AuditedDecision {
        stack_hash: Some(decision.stack_hash.clone()),
        policy_ids: decision.applied.iter().map(ToString::to_string).collect(),
        findings: findings(&decision.findings),
        redacted_prompt: prompt
            .and_then(|p| serde_json::to_string(p).ok())
            .map(|text| redact_secrets(&text).into_owned()),
    }
}

/// A request a policy refused before it went upstream.
pub fn refusal(refused: &PolicyError) -> AuditedDecision {
    AuditedDecision {
        stack_hash: None,
        policy_ids: vec![refused.policy().to_string()],
        findings: vec![serde_json::json!({
            "policy": &**refused.policy(),
            "guard": refused.guard(),
            "action": "refused",
            "reason": refused.as_reason(),
        })],
        redacted_prompt: None,
    }
}

/// Findings as audit JSON.
pub fn findings(found: &[Finding]) -> Vec<Value> {
    found.iter().filter_map(|f| serde_json::to_value(f).ok()).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::Guard;

    #[test]
    fn a_refusal_names_the_policy_and_guard_but_no_text() {
        let refused = PolicyError::Blocked { policy: Arc::from("tg-a/guard"), guard: Guard::PromptInjection };
        let audited = refusal(&refused);
        assert_eq!(audited.policy_ids, ["tg-a/guard"]);
        let finding = audited.findings[0].to_string();
        assert!(finding.contains("tg-a/guard") && finding.contains("PolicyBlocked"), "{finding}");
        assert_eq!(audited.redacted_prompt, None);
    }
}
