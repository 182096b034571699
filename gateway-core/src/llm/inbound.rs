//! What the translations of other client APIs into the chat request share:
//! reading the body as a JSON object, errors that name the field, the fields
//! both APIs carry as chat does, and reading the whole chat answer back.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::types::{ChatRequest, RequestError, StreamOptions, Usage, null_as_default};

/// A 400 for `param`: `param: message`.
pub(crate) fn invalid(param: impl Into<String>, message: impl std::fmt::Display) -> RequestError {
    let param = param.into();
    RequestError::new(param.clone(), format!("{param}: {message}"))
}

/// The body as a JSON object.
pub(crate) fn object(body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(RequestError::new(None, "the request body must be a JSON object")),
        Err(e) => Err(RequestError::new(None, format!("We could not parse the JSON body of your request: {e}"))),
    }
}

/// `model`, a non-empty string (`missing`: the message when it is absent).
pub(crate) fn model(obj: &Map<String, Value>, missing: &str) -> Result<String, RequestError> {
    match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        Some(_) => Err(invalid("model", "expected a non-empty string")),
        None => Err(invalid("model", missing)),
    }
}

/// The chat request for `model` with what every client API carries as chat
/// does: `stream` (a stream asks for the usage chunk: the books need it),
/// `temperature` and `top_p`.
pub(crate) fn chat_request(model: String, obj: &Map<String, Value>) -> Result<ChatRequest, RequestError> {
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(invalid("stream", "expected a boolean")),
    };
    let number = |field: &str| match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(invalid(field, "expected a number")),
    };
    Ok(ChatRequest {
        model,
        stream,
        stream_options: stream.then(|| StreamOptions { include_usage: true, rest: Map::new() }),
        temperature: number("temperature")?,
        top_p: number("top_p")?,
        ..ChatRequest::default()
    })
}

/// A positive token limit in `field`.
pub(crate) fn token_limit(value: &Value, field: &str) -> Result<u32, RequestError> {
    value
        .as_u64()
        .filter(|n| *n >= 1)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| invalid(field, "expected an integer of at least 1"))
}

/// A whole `chat.completion` as the translations back to another client API
/// read it, borrowing its strings from the answer's bytes where it can.
#[derive(Debug, Default, Deserialize)]
pub struct Completion<'a> {
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    /// The answer's usage (none reported: zero).
    #[serde(default, deserialize_with = "null_as_default")]
    pub usage: Usage,
}

#[derive(Debug, Default, Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    message: Answer<'a>,
    #[serde(borrow, default)]
    finish_reason: Option<Text<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<AnsweredCall<'a>>>,
}

/// A string of the answer, borrowed unless it holds escapes.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A tool call of the answer.
#[derive(Debug, Deserialize)]
pub struct AnsweredCall<'a> {
    /// The call id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    function: AnsweredFunction<'a>,
}

#[derive(Debug, Deserialize)]
struct AnsweredFunction<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
}

impl AnsweredCall<'_> {
    /// The function called.
    pub fn name(&self) -> &str {
        &self.function.name
    }

    /// The arguments, a JSON object as a string (`{}` when the answer has none).
    pub fn arguments(&self) -> &str {
        self.function.arguments.as_ref().map_or("{}", |a| &a.0)
    }
}

impl<'a> Completion<'a> {
    /// Reads a whole `chat.completion`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    fn first(&self) -> Option<&Choice<'a>> {
        self.choices.first()
    }

    /// The first choice's text, if it has any.
    pub fn text(&self) -> Option<&str> {
        self.first().and_then(|c| c.message.content.as_ref()).map(|t| &*t.0).filter(|t| !t.is_empty())
    }

    /// The first choice's tool calls.
    pub fn tool_calls(&self) -> &[AnsweredCall<'a>] {
        self.first().and_then(|c| c.message.tool_calls.as_deref()).unwrap_or_default()
    }

    /// The first choice's finish reason.
    pub fn finish_reason(&self) -> Option<&str> {
        self.first().and_then(|c| c.finish_reason.as_ref()).map(|r| &*r.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_is_read_borrowing_what_it_can() {
        let bytes = br#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\"",
            "tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}},
            {"id":"call_2","type":"function","function":{"name":"g"}}]},"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let c = Completion::parse(bytes).expect("a completion");
        assert_eq!(c.text(), Some("Hi \"there\""));
        let calls: Vec<(&str, &str, &str)> = c.tool_calls().iter().map(|t| (&*t.id, t.name(), t.arguments())).collect();
        assert_eq!(calls, [("call_1", "f", "{\"a\":1}"), ("call_2", "g", "{}")]);
        assert!(matches!(c.tool_calls()[0].id, Cow::Borrowed(_)), "no copy of a plain string");
        assert!(matches!(c.first().and_then(|c| c.finish_reason.as_ref()), Some(Text(Cow::Borrowed(_)))));
        assert_eq!((c.finish_reason(), c.usage.total_tokens), (Some("tool_calls"), 5));
    }

    #[test]
    fn nulls_and_absences_read_as_nothing() {
        let c = Completion::parse(
            br#"{"choices":[{"message":{"content":null,"tool_calls":null},"finish_reason":null}],"usage":null}"#,
        )
        .expect("a completion");
        assert_eq!((c.text(), c.tool_calls().len(), c.finish_reason(), c.usage), (None, 0, None, Usage::default()));
        let empty = Completion::parse(b"{}").expect("a completion");
        assert_eq!((empty.text(), empty.tool_calls().len()), (None, 0));
        assert!(Completion::parse(br#"{"choices":"x"}"#).is_err());
    }
}
