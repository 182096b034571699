//! The guards of a policy stack, merged: the strictest injection action wins
//! (and names its policy), deny patterns and redaction kinds add up, the
//! smallest `maxInputTokens` wins.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;
use tenantgate_crds::v1alpha1::{GuardAction, RedactKind};

use super::decision::{Finding, Guard, Stage};
use super::error::PolicyError;
use super::output::OutputGuard;
use super::redact::{self, Kinds};
use super::{Compiled, injection};
use crate::llm::types::{Content, Message, Role};

const INJECTION_PLACEHOLDER: &str = "[REDACTED:promptInjection]";

/// The merged guards of the applied policies.
#[derive(Debug)]
pub(super) struct Stack<'a> {
    /// Strictest injection action and the first policy with it.
    injection: Option<(GuardAction, &'a Arc<str>)>,
    /// Policies with deny patterns.
    deny: Vec<&'a Compiled>,
    /// Kinds to redact, and the first policy asking for each (email, card, key).
    redact: Kinds,
    redact_owner: [Option<&'a Arc<str>>; 3],
    /// Smallest token limit and its policy.
    pub max_input_tokens: Option<(u32, &'a Arc<str>)>,
    output: Vec<&'a Compiled>,
}

fn kind_index(kind: RedactKind) -> usize {
    match kind {
        RedactKind::Email => 0,
        RedactKind::CreditCard => 1,
        RedactKind::ApiKey => 2,
    }
}

pub(super) const KINDS: [RedactKind; 3] = [RedactKind::Email, RedactKind::CreditCard, RedactKind::ApiKey];

/// The guard name of a redaction kind.
pub(super) fn redact_guard(kind: RedactKind) -> Guard {
    match kind {
        RedactKind::Email => Guard::RedactEmail,
        RedactKind::CreditCard => Guard::RedactCreditCard,
        RedactKind::ApiKey => Guard::RedactApiKey,
    }
}

impl<'a> Stack<'a> {
    pub fn new(applied: &[&'a Compiled]) -> Self {
        let mut s = Stack {
            injection: None,
            deny: Vec::new(),
            redact: Kinds::NONE,
            redact_owner: [None; 3],
            max_input_tokens: None,
            output: Vec::new(),
        };
        for p in applied {
            if p.injection > GuardAction::Off && s.injection.is_none_or(|(a, _)| p.injection > a) {
                s.injection = Some((p.injection, &p.id));
            }
            if p.deny.is_some() {
                s.deny.push(p);
            }
            for kind in KINDS.into_iter().filter(|k| p.redact.contains(*k)) {
                s.redact_owner[kind_index(kind)].get_or_insert(&p.id);
            }
            s.redact = s.redact.with(p.redact);
            if let Some(limit) = p.max_input_tokens
                && s.max_input_tokens.is_none_or(|(l, _)| limit < l)
            {
                s.max_input_tokens = Some((limit, &p.id));
            }
            if p.scan_output && (p.deny.is_some() || !p.redact.is_empty()) {
                s.output.push(p);
            }
        }
        s
    }

    /// The first policy with an input guard (injection, deny patterns or redaction), if any.
    pub fn guarding_policy(&self) -> Option<&'a Arc<str>> {
        self.injection
            .map(|(_, p)| p)
            .or_else(|| self.deny.first().map(|p| &p.id))
            .or_else(|| self.redact_owner.iter().flatten().next().copied())
    }

    /// The output guard of the stack, when one of its policies scans output.
    pub fn output_guard(&self) -> Option<Arc<OutputGuard>> {
        if self.output.is_empty() {
            return None;
        }
        let deny = self.output.iter().filter_map(|p| Some((p.id.clone(), p.deny.clone()?))).collect();
        let mut kinds = Kinds::NONE;
        let mut owners: [Option<Arc<str>>; 3] = [None, None, None];
        for p in &self.output {
            for kind in KINDS.into_iter().filter(|k| p.redact.contains(*k)) {
                owners[kind_index(kind)].get_or_insert_with(|| p.id.clone());
            }
            kinds = kinds.with(p.redact);
        }
        Some(Arc::new(OutputGuard::new(deny, kinds, owners)))
    }

    /// Runs the guards on every caller message, rewriting redacted text in place.
    /// Injection detection looks at user, tool and function messages (what the
    /// caller or a tool wrote); deny patterns and redaction at every message.
    pub fn guard_messages(&self, messages: &mut [Message], findings: &mut Vec<Finding>) -> Result<(), PolicyError> {
        if self.injection.is_none() && self.deny.is_empty() && self.redact.is_empty() {
            return Ok(());
        }
        for m in messages.iter_mut() {
            let untrusted = matches!(m.role, Role::User | Role::Tool | Role::Function);
            let stage = if matches!(m.role, Role::Tool | Role::Function) { Stage::ToolResult } else { Stage::Input };
            match &mut m.content {
                None => {}
                Some(Content::Text(text)) => {
                    if let Cow::Owned(new) = self.guard_text(text, untrusted, stage, findings)? {
                        *text = new;
                    }
                }
                Some(Content::Parts(parts)) => {
                    for part in parts.iter_mut() {
                        if let Some(Value::String(text)) = part.get_mut("text")
                            && let Cow::Owned(new) = self.guard_text(text, untrusted, stage, findings)?
                        {
                            *text = new;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the guards on one text.
    pub fn guard_text<'t>(
        &self,
        text: &'t str,
        untrusted: bool,
        stage: Stage,
        findings: &mut Vec<Finding>,
    ) -> Result<Cow<'t, str>, PolicyError> {
        for p in &self.deny {
            if p.deny.as_ref().is_some_and(|set| set.is_match(text)) {
                let finding =
                    Finding { policy: p.id.clone(), guard: Guard::DenyPatterns, action: GuardAction::Block, stage };
                finding.log();
                return Err(PolicyError::Blocked { policy: p.id.clone(), guard: Guard::DenyPatterns });
            }
        }
        let mut out = Cow::Borrowed(text);
        if untrusted
            && let Some((action, policy)) = self.injection
            && injection::detect(text).is_some()
        {
            let finding = Finding { policy: policy.clone(), guard: Guard::PromptInjection, action, stage };
            finding.log();
            match action {
                GuardAction::Block => {
                    return Err(PolicyError::Blocked { policy: policy.clone(), guard: Guard::PromptInjection });
                }
                GuardAction::Redact => out = Cow::Owned(injection::redact(text, INJECTION_PLACEHOLDER).into_owned()),
                GuardAction::Flag | GuardAction::Off => {}
            }
            findings.push(finding);
        }
        if !self.redact.is_empty() {
            let (redacted, found) = redact::redact(&out, self.redact);
            if let Cow::Owned(r) = redacted {
                for kind in KINDS.into_iter().filter(|k| found.contains(*k)) {
                    if let Some(policy) = self.redact_owner[kind_index(kind)] {
                        let finding = Finding {
                            policy: policy.clone(),
                            guard: redact_guard(kind),
                            action: GuardAction::Redact,
                            stage,
                        };
                        finding.log();
                        findings.push(finding);
                    }
                }
                out = Cow::Owned(r);
            }
        }
        Ok(out)
    }
}
