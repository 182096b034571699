//! What is recorded: one usage row per chat request and audit events. Each
//! record carries an id made where it happens (a UUIDv7), so a batch written
//! twice (a replay after an outage, a timeout that did commit) lands once.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One chat request, as counted for usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Unique id made at the source.
    pub id: String,
    /// When the request started, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Tenant name.
    pub tenant: String,
    /// The caller (`sub` of the token, or `apikey:<prefix>`).
    pub subject: String,
    /// Tenant model asked for.
    pub model: String,
    /// `provider/model` that answered, when one did.
    pub target: Option<String>,
    /// Prompt tokens the upstream reported.
    pub prompt_tokens: i64,
    /// Completion tokens the upstream reported.
    pub completion_tokens: i64,
    /// Of the prompt tokens, those the provider read from its prompt cache.
    #[serde(default)]
    pub cached_tokens: i64,
    /// What the request cost, in nano-units (1e-9) of the tenant's currency; absent when no
    /// target answered or the one that did has no price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_nanos: Option<i64>,
    /// Version of the price the cost was computed with (`TargetPrice::version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_version: Option<String>,
    /// Until the last byte, in milliseconds.
    pub latency_ms: i64,
    /// HTTP status sent.
    pub status: i32,
    /// Why it failed (an `AppError` reason, `ClientClosed`, ...).
    pub reason: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// The API key the request was made with, by its admin API id (`kubernetes:<name>` for
    /// an ApiKey object); `None` for a JWT. Absent in spill files of older gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The caller's team; `None`: none. Absent in spill files of older gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// Who did what, kept forever (the table refuses updates and deletes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unique id made at the source.
    pub id: String,
    /// When, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Tenant name.
    pub tenant: String,
    /// Who: a subject, `apikey:<prefix>`, or `system` for the gateway itself.
    pub actor: String,
    /// What kind of event.
    pub kind: AuditKind,
    /// The action, e.g. `chat.completions`, `apiKeys.create`, `config.reload`.
    pub action: String,
    /// What it acted on (a model, a key id, a config hash).
    pub resource: Option<String>,
    /// HTTP status, for requests.
    pub status: Option<i32>,
    /// Why it failed.
    pub reason: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// Policy decision: hash of the policy stack the request ran under.
    pub policy_hash: Option<String>,
    /// Policy decision: ids of the applied policies, in order.
    pub policy_ids: Vec<String>,
    /// Policy decision: what the guards found (already free of the matched text).
    pub findings: Vec<Value>,
    /// The prompt, only when the tenant records prompts, and only redacted text.
    pub prompt: Option<String>,
    /// Anything else, as a JSON object.
    pub details: Value,
}

/// Kinds of audit events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuditKind {
    /// A chat completion.
    Chat,
    /// A tool call (MCP).
    ToolCall,
    /// An admin API action.
    Admin,
    /// A config change.
    ConfigChange,
    /// An MCP tool's definition no longer matches its pin (`tools.pin`).
    ToolPinDrift,
}

impl AuditKind {
    /// The name stored in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::ToolCall => "toolCall",
            Self::Admin => "admin",
            Self::ConfigChange => "configChange",
            Self::ToolPinDrift => "toolPinDrift",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Chat, Self::ToolCall, Self::Admin, Self::ConfigChange, Self::ToolPinDrift]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl AuditEvent {
    /// An event of `kind` by `actor`, now, with a fresh id; the rest empty.
    pub fn new(tenant: &str, actor: &str, kind: AuditKind, action: &str) -> Self {
        Self {
            id: new_id(),
            ts_ms: now_ms(),
            tenant: tenant.to_owned(),
            actor: actor.to_owned(),
            kind,
            action: action.to_owned(),
            resource: None,
            status: None,
            reason: None,
            request_id: None,
            policy_hash: None,
            policy_ids: Vec::new(),
            findings: Vec::new(),
            prompt: None,
            details: Value::Object(serde_json::Map::new()),
        }
    }

    /// A config swap from one config hash to another.
    pub fn config_change(tenant: &str, old_hash: &str, new_hash: &str) -> Self {
        let mut event = Self::new(tenant, "system", AuditKind::ConfigChange, "config.reload");
        event.resource = Some(new_hash.to_owned());
        event.details = serde_json::json!({"oldHash": old_hash, "newHash": new_hash});
        event
    }
}

/// One item of the recorder's queue and of the spill file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Record {
    /// A usage row.
    Usage(UsageRow),
    /// An audit event.
    Audit(AuditEvent),
    /// A chat request: its usage row and its audit event, made by the writer
    /// (one queue item, and little work on the response path).
    Chat(Box<ChatEntry>),
}

/// A finished chat request, as the request path hands it over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEntry {
    /// Its usage row.
    pub usage: UsageRow,
    /// Id of its audit event (made at the source, like every id).
    pub audit_id: String,
    /// What the policies decided (the prompt only when the tenant records prompts).
    pub policy: PolicyDecision,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// The client API it came in on (absent in records spilled before there was more than one).
    #[serde(default)]
    pub api: Api,
}

/// The client API of a model request, the action of its audit event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Api {
    /// `POST /v1/chat/completions`.
    #[default]
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/messages` (Anthropic's Messages API).
    Messages,
    /// `POST /v1/responses` (OpenAI's Responses API).
    Responses,
}

impl Api {
    /// The audit event's action.
    pub fn action(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat.completions",
            Self::Embeddings => "embeddings",
            Self::Messages => "messages",
            Self::Responses => "responses",
        }
    }
}

impl ChatEntry {
    /// The audit event of the request.
    pub fn audit_event(&self) -> AuditEvent {
        let u = &self.usage;
        let mut audit = AuditEvent::new(&u.tenant, &u.subject, AuditKind::Chat, self.api.action());
        audit.id.clone_from(&self.audit_id);
        audit.ts_ms = u.ts_ms;
        audit.resource = Some(u.model.clone());
        audit.status = Some(u.status);
        audit.reason.clone_from(&u.reason);
        audit.request_id.clone_from(&u.request_id);
        audit.policy_hash.clone_from(&self.policy.stack_hash);
        audit.policy_ids.clone_from(&self.policy.policy_ids);
        audit.findings.clone_from(&self.policy.findings);
        audit.prompt.clone_from(&self.policy.redacted_prompt);
        audit.details = serde_json::json!({
            "usageId": u.id,
            "target": u.target,
            "stream": self.stream,
            "promptTokens": u.prompt_tokens,
            "completionTokens": u.completion_tokens,
            "cachedTokens": u.cached_tokens,
            "cost": u.cost_nanos.map(tenantgate_crds::pricing::format_nanos),
            "priceVersion": u.price_version,
            "latencyMs": u.latency_ms,
        });
        audit
    }
}

/// What the policy layer decided for a request, for its audit event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDecision {
    /// Hash of the policy stack applied.
    pub stack_hash: Option<String>,
    /// Ids of the applied policies, in order.
    pub policy_ids: Vec<String>,
    /// Guard findings (no matched text in them).
    pub findings: Vec<Value>,
    /// The redacted prompt, when the tenant records prompts.
    pub redacted_prompt: Option<String>,
}

/// A time-ordered unique id (UUIDv7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_spilled_before_embeddings_reads_as_chat_and_each_api_names_its_action() {
        let mut entry = ChatEntry {
            usage: UsageRow {
                id: new_id(),
                ts_ms: 1,
                tenant: "t".into(),
                subject: "s".into(),
                model: "m".into(),
                target: None,
                prompt_tokens: 3,
                completion_tokens: 0,
                cached_tokens: 0,
                cost_nanos: None,
                price_version: None,
                latency_ms: 1,
                status: 200,
                reason: None,
                request_id: None,
                api_key: None,
                team: None,
            },
            audit_id: new_id(),
            policy: PolicyDecision::default(),
            stream: false,
            api: Api::Embeddings,
        };
        assert_eq!(entry.audit_event().action, "embeddings");
        let mut old = serde_json::to_value(&entry).expect("json");
        old.as_object_mut().expect("object").remove("api");
        entry = serde_json::from_value(old).expect("an old spill record still reads");
        assert_eq!(entry.api, Api::ChatCompletions);
        assert_eq!(entry.audit_event().action, "chat.completions");
    }
}
