//! System prompt segments: minijinja templates compiled once per config, and
//! their composition into the request's messages.
//!
//! Composition reads in stack order (global, tenant, user; priority inside a
//! layer). `prepend` places a segment before the caller's own system message
//! (after the segments prepended earlier), `append` after it, and `replace`
//! drops every unlocked segment so far and the caller's system message. A
//! global policy's `locked` segment is never dropped. The result is one system
//! message at the start of the conversation; the caller's leading system and
//! developer messages are merged into it.

use std::sync::Arc;

use minijinja::{Environment, UndefinedBehavior, Value, context};
use tenantgate_crds::config::{PolicyConfig, TenantIdentity};
use tenantgate_crds::issue::{ConfigIssue, Reason};
use tenantgate_crds::v1alpha1::PromptMode;

use crate::auth::Identity;
use crate::llm::types::{Content, Message, Role};

use super::error::PolicyError;
use super::policy_issue;

/// Every template of a config, by policy id.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    tenant: Value,
}

impl Templates {
    /// Compiles every template and renders it once with a sample scope, so a
    /// template that does not parse or names an unknown variable refuses the
    /// config instead of failing requests.
    pub fn compile(tenant: &TenantIdentity, policies: &[PolicyConfig]) -> Result<Self, ConfigIssue> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let tenant = context! {
            name => tenant.name.clone(),
            displayName => tenant.display_name.clone(),
            namespace => tenant.namespace.clone(),
        };
        for p in policies {
            if let Some(prompt) = &p.system_prompt {
                env.add_template_owned(p.id.clone(), prompt.template.clone()).map_err(|e| {
                    policy_issue(&p.id, "systemPrompt.template does not compile", Reason::InvalidTemplate, &e)
                })?;
            }
        }
        let templates = Self { env, tenant };
        let sample = Identity::with_roles("subject", &["role"]);
        for p in policies.iter().filter(|p| p.system_prompt.is_some()) {
            let scope = templates.scope(&sample, "model");
            templates.env.get_template(&p.id).and_then(|t| t.render(&scope)).map_err(|e| {
                policy_issue(&p.id, "systemPrompt.template does not render", Reason::InvalidTemplate, &e)
            })?;
        }
        Ok(templates)
    }

    /// The template scope of one request: `tenant`, `user`, `model`, `now` (RFC 3339, UTC).
    pub fn scope(&self, identity: &Identity, model: &str) -> Value {
        context! {
            tenant => self.tenant.clone(),
            user => context! {
                subject => identity.subject.clone(),
                roles => Value::from_iter(identity.roles.iter().cloned()),
            },
            model => model,
            now => rfc3339_now(),
        }
    }

    /// Renders the template of policy `id`.
    pub fn render(&self, id: &Arc<str>, scope: &Value) -> Result<String, PolicyError> {
        self.env.get_template(id).and_then(|t| t.render(scope)).map_err(|e| {
            tracing::error!(policy = %id, error = %e, "system prompt template failed to render");
            PolicyError::Render { policy: id.clone() }
        })
    }
}

/// One rendered segment.
#[derive(Debug)]
pub struct Segment {
    /// Text.
    pub text: String,
    /// How it combines.
    pub mode: PromptMode,
    /// A locked global segment.
    pub locked: bool,
}

/// Composes `segments` with the caller's leading system messages into one
/// system message at the start of `messages`. Does nothing without segments.
pub fn compose(segments: Vec<Segment>, messages: &mut Vec<Message>) {
    if segments.is_empty() {
        return;
    }
    let leading = messages.iter().take_while(|m| matches!(m.role, Role::System | Role::Developer)).count();
    let caller: Vec<String> =
        messages.drain(..leading).filter_map(|m| m.content.map(|c| c.text())).filter(|t| !t.is_empty()).collect();
    let mut before: Vec<(String, bool)> = Vec::new();
    let mut after: Vec<(String, bool)> = Vec::new();
    let mut keep_caller = true;
    for s in segments {
        match s.mode {
            PromptMode::Prepend => before.push((s.text, s.locked)),
            PromptMode::Append => after.push((s.text, s.locked)),
            PromptMode::Replace => {
                before.retain(|(_, locked)| *locked);
                after.retain(|(_, locked)| *locked);
                keep_caller = false;
                before.push((s.text, s.locked));
            }
        }
    }
    let caller = if keep_caller { caller } else { Vec::new() };
    let parts: Vec<String> = before
        .into_iter()
        .map(|(t, _)| t)
        .chain(caller)
        .chain(after.into_iter().map(|(t, _)| t))
        .filter(|t| !t.trim().is_empty())
        .collect();
    messages.insert(0, Message::new(Role::System, Some(Content::Text(parts.join("\n\n")))));
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(v: serde_json::Value) -> Vec<Message> {
        serde_json::from_value(v).expect("messages")
    }

    fn system(messages: &[Message]) -> String {
        assert_eq!(messages[0].role, Role::System);
        messages[0].content.as_ref().map(Content::text).unwrap_or_default()
    }

    fn policy(id: &str, template: &str) -> PolicyConfig {
        serde_json::from_value(serde_json::json!({"id": id, "origin": "tenant", "layer": "tenant", "priority": 1,
            "match": {"models": ["*"]}, "systemPrompt": {"template": template}}))
        .expect("policy")
    }

    fn seg(text: &str, mode: PromptMode, locked: bool) -> Segment {
        Segment { text: text.into(), mode, locked }
    }

    #[test]
    fn prepend_and_append_read_in_stack_order_around_the_caller() {
        let mut m =
            msgs(serde_json::json!([{"role": "system", "content": "CALLER"}, {"role": "user", "content": "hi"}]));
        compose(
            vec![
                seg("GLOBAL", PromptMode::Prepend, false),
                seg("TENANT", PromptMode::Prepend, false),
                seg("FOOTER", PromptMode::Append, false),
            ],
            &mut m,
        );
        assert_eq!(system(&m), "GLOBAL\n\nTENANT\n\nCALLER\n\nFOOTER");
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].role, Role::User);
    }

    #[test]
    fn replace_keeps_locked_segments_only() {
        let mut m =
            msgs(serde_json::json!([{"role": "developer", "content": "CALLER"}, {"role": "user", "content": "hi"}]));
        compose(
            vec![
                seg("LOCKED", PromptMode::Prepend, true),
                seg("UNLOCKED", PromptMode::Prepend, false),
                seg("TAIL", PromptMode::Append, false),
                seg("REPLACEMENT", PromptMode::Replace, false),
                seg("USER", PromptMode::Append, false),
            ],
            &mut m,
        );
        assert_eq!(system(&m), "LOCKED\n\nREPLACEMENT\n\nUSER");
    }

    #[test]
    fn no_segments_leave_the_messages_alone() {
        let mut m = msgs(serde_json::json!([{"role": "user", "content": "hi"}]));
        compose(Vec::new(), &mut m);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn templates_see_tenant_user_model_and_now() {
        let tenant =
            TenantIdentity { name: "acme".into(), display_name: "Acme Corp".into(), namespace: "tg-acme".into() };
        let policy = policy(
            "tg-acme/base",
            "{{ tenant.displayName }}/{{ tenant.name }} {{ user.subject }} {{ user.roles | join(',') }} {{ model }} {{ now[:4] }}",
        );
        let t = Templates::compile(&tenant, std::slice::from_ref(&policy)).expect("compiles");
        let who = Identity::with_roles("alice", &["dev", "ops"]);
        let out = t.render(&Arc::from("tg-acme/base"), &t.scope(&who, "chat")).expect("renders");
        assert!(out.starts_with("Acme Corp/acme alice dev,ops chat 20"), "{out}");
    }

    #[test]
    fn bad_templates_refuse_the_config() {
        let tenant = TenantIdentity { name: "a".into(), display_name: "A".into(), namespace: "n".into() };
        for template in ["{{ user.subject ", "{{ user.email }}", "{{ nothing }}"] {
            let policy = policy("n/p", template);
            let err = Templates::compile(&tenant, &[policy]).expect_err(template);
            let err = err.to_string();
            assert!(err.contains("policy n/p: systemPrompt.template"), "{err}");
        }
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
