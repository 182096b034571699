//! What the translations of other client APIs into the chat request share:
//! reading the body as a JSON object, errors that name the field, and the
//! fields both APIs carry as chat does.

use serde_json::{Map, Value, json};

use super::types::{ChatRequest, RequestError};

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

/// Copies `stream` (a stream asks for the usage chunk: the books need it),
/// `temperature` and `top_p` into the chat request `out`.
pub(crate) fn common(obj: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), RequestError> {
    match obj.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            out.insert("stream".into(), json!(true));
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(_) => return Err(invalid("stream", "expected a boolean")),
    }
    for field in ["temperature", "top_p"] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(v) if v.is_number() => {
                out.insert(field.into(), v.clone());
            }
            Some(_) => return Err(invalid(field, "expected a number")),
        }
    }
    Ok(())
}

/// The chat request built in `out`.
pub(crate) fn chat_request(out: Map<String, Value>) -> Result<ChatRequest, RequestError> {
    serde_json::from_value(Value::Object(out)).map_err(|e| RequestError::new(None, format!("invalid request: {e}")))
}
