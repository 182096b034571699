//! OpenAI Chat Completions request types. Unknown fields are kept in `rest`
//! so provider features the gateway does not know pass through untouched.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/chat/completions` body.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ChatRequest {
    /// The tenant model name. Not serialized: providers send the target's model name instead.
    #[serde(skip_serializing)]
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Whether to answer with server-sent events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Streaming options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `none`, `auto`, `required` or `{"type":"function","function":{"name":..}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Legacy completion token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Completion token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequences: a string or an array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    /// Every other field, passed through.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
    /// Fields of an Anthropic Messages client that only Anthropic providers
    /// take (`top_k`, `metadata`, `service_tier`): sent to those, to no other.
    #[serde(skip)]
    pub anthropic: Map<String, Value>,
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct StreamOptions {
    /// Send a final chunk with token usage.
    #[serde(default)]
    pub include_usage: bool,
    /// Other options, passed through.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// Instructions (newer name).
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
    /// A legacy function result.
    Function,
}

/// One message of the conversation.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text or content parts; null for assistant messages with tool calls.
    #[serde(default)]
    pub content: Option<Content>,
    /// Tool calls made by the assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Other fields (`name`, `refusal`, ...), passed through.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl Message {
    /// A message of `role` with `content` and nothing else.
    pub fn new(role: Role, content: Option<Content>) -> Self {
        Self { role, content, tool_calls: None, tool_call_id: None, rest: Map::new() }
    }

    /// A tool result: `content` answers the call `call_id`.
    pub fn tool_result(call_id: impl Into<String>, content: String) -> Self {
        Self { tool_call_id: Some(call_id.into()), ..Self::new(Role::Tool, Some(Content::Text(content))) }
    }
}

/// Message content.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts (text, images, ...).
    Parts(Vec<Value>),
}

impl Content {
    /// The text of the content; parts other than text are skipped.
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => {
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
            }
        }
    }
}

/// A tool definition.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Tool {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDef,
}

impl Tool {
    /// A function tool.
    pub fn function(function: FunctionDef) -> Self {
        Self { kind: function_type(), function }
    }
}

/// A callable function.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FunctionDef {
    /// Name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Other fields (`strict`), passed through.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A call of a tool by the assistant.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ToolCall {
    /// Call id.
    pub id: String,
    /// `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// Function and arguments.
    pub function: FunctionCall,
}

impl ToolCall {
    /// A call of function `name` with `arguments` (a JSON string).
    pub fn function(id: impl Into<String>, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            kind: function_type(),
            function: FunctionCall { name: name.into(), arguments: arguments.into() },
        }
    }
}

fn function_type() -> String {
    "function".into()
}

/// The function of a [`ToolCall`].
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON string.
    pub arguments: String,
}

/// Token usage, in Chat Completions' fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Sum.
    pub total_tokens: u64,
    /// What the prompt tokens include; left out when no token came from a cache.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "PromptTokensDetails::is_empty")]
    pub prompt_tokens_details: PromptTokensDetails,
}

/// The prompt tokens' details (OpenAI's `prompt_tokens_details`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens read from the provider's prompt cache.
    #[serde(default, deserialize_with = "null_as_default")]
    pub cached_tokens: u64,
}

impl PromptTokensDetails {
    fn is_empty(&self) -> bool {
        self.cached_tokens == 0
    }
}

pub(crate) fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Usage {
    /// Usage from prompt and completion counts.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: PromptTokensDetails::default(),
        }
    }

    /// The same usage, `cached` of its prompt tokens read from a cache.
    #[must_use]
    pub fn with_cached(mut self, cached: u64) -> Self {
        self.prompt_tokens_details.cached_tokens = cached.min(self.prompt_tokens);
        self
    }

    /// Prompt tokens read from a cache.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.cached_tokens
    }
}

/// A chat request that cannot be served as sent (HTTP 400): the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// What is wrong, for the client.
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
}

impl RequestError {
    pub(crate) fn new(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self { message: message.into(), param: param.into() }
    }
}

impl ChatRequest {
    /// Parses a request body. On failure the error names the field at fault.
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        match serde_json::from_slice::<Self>(body) {
            Ok(request) => {
                request.check()?;
                Ok(request)
            }
            Err(e) => Err(explain(body).unwrap_or_else(|| RequestError::new(None, format!("invalid request: {e}")))),
        }
    }

    /// Whether the client asked for a usage chunk at the end of a stream.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    /// The completion token limit the client asked for.
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    fn check(&self) -> Result<(), RequestError> {
        if self.model.is_empty() {
            return Err(RequestError::new("model".to_string(), "model: must not be empty"));
        }
        if self.messages.is_empty() {
            return Err(RequestError::new("messages".to_string(), "messages: must contain at least one message"));
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(RequestError::new(
                "stream_options".to_string(),
                "stream_options: only allowed when stream is true",
            ));
        }
        Ok(())
    }
}

/// Finds the field a body that failed to parse is wrong in. Only runs on the
/// error path, so the fast path stays one typed parse.
fn explain(body: &[u8]) -> Option<RequestError> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some(RequestError::new(None, format!("We could not parse the JSON body of your request: {e}")));
        }
    };
    let Value::Object(obj) = value else {
        return Some(RequestError::new(None, "the request body must be a JSON object"));
    };
    let at = Path::root();
    let checks: [FieldCheck; 11] = [
        |o, p| required::<String>(o, p, "model"),
        |o, p| required::<Vec<Value>>(o, p, "messages"),
        |o, p| optional::<bool>(o, p, "stream"),
        |o, p| optional::<StreamOptions>(o, p, "stream_options"),
        |o, p| optional::<Vec<Tool>>(o, p, "tools"),
        |o, p| optional::<u32>(o, p, "max_tokens"),
        |o, p| optional::<u32>(o, p, "max_completion_tokens"),
        |o, p| optional::<f64>(o, p, "temperature"),
        |o, p| optional::<f64>(o, p, "top_p"),
        |o, p| optional::<Value>(o, p, "stop"),
        |o, p| optional::<Value>(o, p, "tool_choice"),
    ];
    for check in checks {
        if let Err(e) = check(&obj, &at) {
            return Some(e);
        }
    }
    let messages = obj.get("messages").and_then(Value::as_array)?;
    for (i, m) in messages.iter().enumerate() {
        let at = Path(format!("messages[{i}]"));
        let Value::Object(m) = m else {
            return Some(RequestError::new(at.0.clone(), format!("{}: expected an object", at.0)));
        };
        let result = required::<Role>(m, &at, "role")
            .and_then(|()| optional::<Content>(m, &at, "content"))
            .and_then(|()| optional::<Vec<ToolCall>>(m, &at, "tool_calls"))
            .and_then(|()| optional::<String>(m, &at, "tool_call_id"));
        if let Err(e) = result {
            return Some(e);
        }
    }
    None
}

type FieldCheck = fn(&Map<String, Value>, &Path) -> Result<(), RequestError>;

struct Path(String);

impl Path {
    fn root() -> Self {
        Self(String::new())
    }

    fn field(&self, key: &str) -> String {
        if self.0.is_empty() { key.to_string() } else { format!("{}.{key}", self.0) }
    }
}

fn required<T: DeserializeOwned>(obj: &Map<String, Value>, at: &Path, key: &str) -> Result<(), RequestError> {
    match obj.get(key) {
        None => Err(RequestError::new(at.field(key), format!("{}: missing required field", at.field(key)))),
        Some(_) => optional::<T>(obj, at, key),
    }
}

fn optional<T: DeserializeOwned>(obj: &Map<String, Value>, at: &Path, key: &str) -> Result<(), RequestError> {
    let Some(value) = obj.get(key) else { return Ok(()) };
    if value.is_null() {
        return Ok(());
    }
    let result: Result<T, _> = serde_path_to_error::deserialize(value);
    result.map(drop).map_err(|e| {
        let inner = e.path().to_string();
        let field = if inner == "." { at.field(key) } else { join_path(&at.field(key), &inner) };
        let message = match e.into_inner().to_string() {
            m if m.contains("untagged enum Content") => "expected a string or an array of content parts".into(),
            m => m,
        };
        RequestError::new(field.clone(), format!("{field}: {message}"))
    })
}

fn join_path(base: &str, inner: &str) -> String {
    if inner.starts_with('[') { format!("{base}{inner}") } else { format!("{base}.{inner}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> (Option<String>, String) {
        match ChatRequest::parse(body.as_bytes()) {
            Err(RequestError { message, param }) => (param, message),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn unknown_fields_pass_through() {
        let r = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"hi","x_msg":1}],"seed":7,"response_format":{"type":"json_object"}}"#,
        )
        .expect("parses");
        let out = serde_json::to_value(&r).expect("serializes");
        assert_eq!(out["seed"], 7);
        assert_eq!(out["response_format"]["type"], "json_object");
        assert_eq!(out["messages"][0]["x_msg"], 1);
        assert!(out.get("stream").is_none());
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err(r#"{"messages":[]}"#).0.as_deref(), Some("model"));
        assert_eq!(err(r#"{"model":5,"messages":[]}"#).0.as_deref(), Some("model"));
        let (param, message) = err(r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":7}]}"#);
        assert_eq!(param.as_deref(), Some("messages[1].role"));
        assert!(message.starts_with("messages[1].role: "), "{message}");
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#).0.as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(err(r#"{"model":"m","messages":[],"max_tokens":"x"}"#).0.as_deref(), Some("max_tokens"));
        let (param, message) = err(r#"{"model":"m","messages":[{"role":"user"}],"tools":[{"type":"function"}]}"#);
        assert_eq!(param.as_deref(), Some("tools[0]"));
        assert!(message.contains("missing field `function`"), "{message}");
        assert_eq!(err(r#"{"model":"m","messages":[]}"#).0.as_deref(), Some("messages"));
        let (param, message) = err(r#"{"model":"m","#);
        assert_eq!(param, None);
        assert!(message.contains("parse the JSON"), "{message}");
    }
}
