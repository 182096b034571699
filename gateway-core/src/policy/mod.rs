//! Prompt policies: the stack of PromptPolicies that apply to a request,
//! compiled once per config.
//!
//! For each chat request [`Policies::apply`] selects the policies whose
//! `match` fits the caller and model (in the config's composition order:
//! global, tenant, user, by priority), checks `allowedModels`, runs the input
//! guards on the caller's messages (strictest action wins across the stack),
//! composes the system prompt, enforces `maxInputTokens`, and returns a
//! [`PolicyDecision`] with the provenance hash of the stack. Output guards run
//! on the answer through [`PolicyDecision`] ([`output`]). Tool results pass the
//! same input guards through [`Policies::guard_tool_result`].

pub mod audit;
mod decision;
mod error;
pub mod glob;
mod guards;
pub mod injection;
pub mod output;
mod prompt;
pub mod redact;
pub mod tokens;

use std::borrow::Cow;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tenantgate_crds::config::{GatewayConfig, PolicyConfig};
use tenantgate_crds::issue::{ConfigIssue, Reason};
use tenantgate_crds::v1alpha1::{GuardAction, PolicyMatch, PromptMode};

pub use decision::{Finding, Guard, PolicyDecision, Stage};
pub use error::PolicyError;
pub use redact::redact_secrets;

use crate::auth::Identity;
use crate::llm::embeddings::EmbeddingsRequest;
use crate::llm::types::ChatRequest;
use guards::Stack;
use prompt::{Segment, Templates};

/// One compiled policy.
#[derive(Debug)]
struct Compiled {
    id: Arc<str>,
    match_: PolicyMatch,
    prompt: Option<(PromptMode, bool)>,
    injection: GuardAction,
    deny: Option<Arc<regex::RegexSet>>,
    redact: redact::Kinds,
    max_input_tokens: Option<u32>,
    scan_output: bool,
    allowed_models: Vec<String>,
    /// SHA-256 of the policy's canonical JSON.
    digest: [u8; 32],
}

/// The prompt policies of a config, compiled.
#[derive(Debug)]
pub struct Policies {
    list: Vec<Compiled>,
    templates: Templates,
    empty_hash: String,
}

impl Policies {
    /// Compiles the policies of `config`: templates (checked by a trial render),
    /// deny patterns and the injection rules. Errors name the policy.
    pub fn compile(config: &GatewayConfig) -> Result<Self, ConfigIssue> {
        let templates = Templates::compile(&config.tenant, &config.policies)?;
        if config.policies.iter().any(|p| p.guards.as_ref().is_some_and(|g| g.prompt_injection != GuardAction::Off))
            && !injection::warm_up()
        {
            return Err(ConfigIssue::new(Reason::Internal, "the prompt-injection rules do not compile"));
        }
        let list = config.policies.iter().map(compile_one).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { list, templates, empty_hash: decision::stack_hash(std::iter::empty()) })
    }

    /// Whether there are no policies at all.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn select<'a>(&'a self, identity: &Identity, model: Option<&str>) -> Vec<&'a Compiled> {
        self.list.iter().filter(|p| fits(&p.match_, identity, model)).collect()
    }

    /// Applies the stack to a chat request for tenant model `model` routed to
    /// upstream model `target_model` (which picks the tokenizer): may rewrite
    /// the messages (system prompt, redaction) or refuse the request.
    pub fn apply(
        &self,
        identity: &Identity,
        target_model: Option<&str>,
        request: &mut ChatRequest,
    ) -> Result<PolicyDecision, PolicyError> {
        let Some(applied) = self.select_allowed(identity, &request.model)? else { return Ok(self.unpoliced()) };
        let stack = Stack::new(&applied);
        let mut findings = Vec::new();
        stack.guard_messages(&mut request.messages, &mut findings)?;

        let mut segments = Vec::new();
        let mut scope = None;
        for p in applied.iter().filter(|p| p.prompt.is_some()) {
            let scope = scope.get_or_insert_with(|| self.templates.scope(identity, &request.model));
            let (mode, locked) = p.prompt.unwrap_or((PromptMode::Prepend, false));
            segments.push(Segment { text: self.templates.render(&p.id, scope)?, mode, locked });
        }
        prompt::compose(segments, &mut request.messages);

        if let Some((limit, policy)) = stack.max_input_tokens
            && let Some(tokens) = tokens::exceeds(request, target_model, limit)
        {
            return Err(PolicyError::TooManyTokens { policy: policy.clone(), tokens, limit });
        }
        Ok(decided(&applied, findings, stack.output_guard()))
    }

    /// Applies the stack to an embeddings request: `allowedModels`, the input
    /// guards on each text (redaction rewrites it), and `maxInputTokens` on all
    /// the texts together. System prompts do not apply (there is no
    /// conversation), and nothing comes back to scan. Token-id inputs cannot
    /// be read by the guards: a stack with input guards refuses them.
    pub fn apply_embeddings(
        &self,
        identity: &Identity,
        target_model: Option<&str>,
        request: &mut EmbeddingsRequest,
    ) -> Result<PolicyDecision, PolicyError> {
        let Some(applied) = self.select_allowed(identity, &request.model)? else { return Ok(self.unpoliced()) };
        let stack = Stack::new(&applied);
        let mut findings = Vec::new();
        match request.input.texts_mut() {
            Some(texts) => {
                let counter = tokens::Counter::for_model(target_model);
                let mut total = 0;
                for text in texts {
                    if let Cow::Owned(new) = stack.guard_text(text, true, Stage::Input, &mut findings)? {
                        *text = new;
                    }
                    if let Some((limit, policy)) = stack.max_input_tokens {
                        total += counter.count_text(text);
                        if total > u64::from(limit) {
                            return Err(PolicyError::TooManyTokens { policy: policy.clone(), tokens: total, limit });
                        }
                    }
                }
            }
            None => {
                if let Some(policy) = stack.guarding_policy() {
                    return Err(PolicyError::TokenInput { policy: policy.clone() });
                }
                let tokens = request.input.estimated_tokens();
                if let Some((limit, policy)) = stack.max_input_tokens
                    && tokens > u64::from(limit)
                {
                    return Err(PolicyError::TooManyTokens { policy: policy.clone(), tokens, limit });
                }
            }
        }
        Ok(decided(&applied, findings, None))
    }

    /// The decision when the config has no policies at all.
    fn unpoliced(&self) -> PolicyDecision {
        PolicyDecision { stack_hash: self.empty_hash.clone(), applied: Vec::new(), findings: Vec::new(), output: None }
    }

    /// The policies that apply to `identity` and `model`, unless one of them
    /// does not allow the model; `None` when the config has no policies at all.
    fn select_allowed(&self, identity: &Identity, model: &str) -> Result<Option<Vec<&Compiled>>, PolicyError> {
        if self.list.is_empty() {
            return Ok(None);
        }
        let applied = self.select(identity, Some(model));
        for p in &applied {
            if !p.allowed_models.is_empty() && !glob::any(&p.allowed_models, model) {
                return Err(PolicyError::ModelNotAllowed { policy: p.id.clone(), model: model.to_owned() });
            }
        }
        Ok(Some(applied))
    }

    /// Whether any policy applies to `identity` on a tool result (otherwise
    /// [`Self::guard_tool_result`] finds nothing and changes nothing).
    pub fn applies_to(&self, identity: &Identity) -> bool {
        self.list.iter().any(|p| fits(&p.match_, identity, None))
    }

    /// Runs the input guards of the policies that apply to `identity` on a
    /// tool result (untrusted text coming back from an MCP server): `block`
    /// refuses it, `redact` returns it redacted, `flag` only reports. With no
    /// model (a plain MCP call), model globs are not considered.
    pub fn guard_tool_result<'t>(
        &self,
        identity: &Identity,
        model: Option<&str>,
        text: &'t str,
    ) -> Result<(Cow<'t, str>, Vec<Finding>), PolicyError> {
        let applied = self.select(identity, model);
        let mut findings = Vec::new();
        let out = Stack::new(&applied).guard_text(text, true, Stage::ToolResult, &mut findings)?;
        Ok((out, findings))
    }
}

/// The decision of the `applied` stack: its provenance hash and ids, what the input guards found,
/// and the output guard.
fn decided(applied: &[&Compiled], findings: Vec<Finding>, output: Option<Arc<output::OutputGuard>>) -> PolicyDecision {
    PolicyDecision {
        stack_hash: decision::stack_hash(applied.iter().map(|p| (&*p.id, &p.digest))),
        applied: applied.iter().map(|p| p.id.clone()).collect(),
        findings,
        output,
    }
}

/// An issue with the policy of config id `namespace/name`. The GatewayConfig
/// names it by id, and so does the message: `policy ns/name: what: why`.
fn policy_issue(id: &str, what: &str, reason: Reason, why: &dyn std::fmt::Display) -> ConfigIssue {
    ConfigIssue::new(reason, format!("policy {id}: {what}: {why}"))
}

/// Whether a policy's match fits: every list that is set must match.
fn fits(m: &PolicyMatch, identity: &Identity, model: Option<&str>) -> bool {
    let models = model.is_none_or(|model| glob::any(&m.models, model));
    let roles = m.roles.is_empty() || m.roles.iter().any(|r| identity.roles.contains(r));
    let subjects = m.subjects.is_empty() || m.subjects.contains(&identity.subject);
    models && roles && subjects
}

fn compile_one(p: &PolicyConfig) -> Result<Compiled, ConfigIssue> {
    let guards = p.guards.clone().unwrap_or_default();
    let deny = if guards.deny_patterns.is_empty() {
        None
    } else {
        let set = regex::RegexSet::new(&guards.deny_patterns).map_err(|e| {
            policy_issue(&p.id, "guards.denyPatterns: invalid regular expression", Reason::InvalidPattern, &e)
        })?;
        Some(Arc::new(set))
    };
    let json = serde_json::to_vec(p).map_err(|e| ConfigIssue::new(Reason::Internal, e.to_string()))?;
    let digest: [u8; 32] = Sha256::digest(json).into();
    Ok(Compiled {
        id: p.id.as_str().into(),
        match_: p.match_.clone(),
        prompt: p
            .system_prompt
            .as_ref()
            .map(|s| (s.mode, s.locked && p.origin == tenantgate_crds::config::PolicyOrigin::Global)),
        injection: if p.guards.is_some() { guards.prompt_injection } else { GuardAction::Off },
        deny,
        redact: guards.redact.iter().copied().collect(),
        max_input_tokens: guards.max_input_tokens,
        scan_output: p.guards.is_some() && guards.scan_output,
        allowed_models: p.allowed_models.clone(),
        digest,
    })
}

#[cfg(test)]
pub(crate) mod tests;
