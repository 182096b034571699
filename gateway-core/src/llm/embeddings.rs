//! `POST /v1/embeddings`: OpenAI's request, checked as OpenAI checks it, and
//! the deterministic vectors the mock model answers with.
//!
//! OpenAI's limits, kept here so that a request the gateway passes is one
//! OpenAI would take: `input` is a string, an array of strings, an array of
//! token ids or an array of such arrays; no string is empty; at most 2,048
//! inputs; `encoding_format` is `float` or `base64`; `dimensions` is at least 1.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::types::{RequestError, Usage};

/// Inputs one request may carry.
pub const MAX_INPUTS: usize = 2048;

/// `POST /v1/embeddings` body.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct EmbeddingsRequest {
    /// The tenant model name. Not serialized: providers send the target's model name instead.
    #[serde(skip_serializing)]
    pub model: String,
    /// What to embed.
    pub input: Input,
    /// `float` (the default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    /// Length of the vectors, for models that can shorten theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// Every other field (`user`), passed through.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The `input` of an embeddings request.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Input {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One text as token ids.
    Tokens(Vec<u32>),
    /// Several texts as token ids.
    TokenArrays(Vec<Vec<u32>>),
}

/// How vectors are sent back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON arrays of numbers.
    #[default]
    Float,
    /// Little-endian float32 bytes, base64.
    Base64,
}

impl Input {
    /// Number of inputs (one for a single text or token array).
    pub fn len(&self) -> usize {
        match self {
            Self::Text(_) | Self::Tokens(_) => 1,
            Self::Texts(t) => t.len(),
            Self::TokenArrays(t) => t.len(),
        }
    }

    /// Whether there is nothing to embed.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Text(t) => t.is_empty(),
            Self::Tokens(t) => t.is_empty(),
            Self::Texts(t) => t.is_empty(),
            Self::TokenArrays(t) => t.is_empty(),
        }
    }

    /// The texts, to guard or rewrite; `None` for token ids.
    pub fn texts_mut(&mut self) -> Option<Vec<&mut String>> {
        match self {
            Self::Text(t) => Some(vec![t]),
            Self::Texts(t) => Some(t.iter_mut().collect()),
            Self::Tokens(_) | Self::TokenArrays(_) => None,
        }
    }

    /// The texts, joined by newlines (for the audit trail); `None` for token ids.
    pub fn joined_text(&self) -> Option<String> {
        match self {
            Self::Text(t) => Some(t.clone()),
            Self::Texts(t) => Some(t.join("\n")),
            Self::Tokens(_) | Self::TokenArrays(_) => None,
        }
    }

    /// Each input as bytes the mock hashes, and its token count by `count`.
    fn items(&self, count: impl Fn(&str) -> u64) -> Vec<(Vec<u8>, u64)> {
        let tokens = |ids: &[u32]| (ids.iter().flat_map(|i| i.to_le_bytes()).collect(), ids.len() as u64);
        match self {
            Self::Text(t) => vec![(t.as_bytes().to_vec(), count(t))],
            Self::Texts(t) => t.iter().map(|t| (t.as_bytes().to_vec(), count(t))).collect(),
            Self::Tokens(ids) => vec![tokens(ids)],
            Self::TokenArrays(arrays) => arrays.iter().map(|ids| tokens(ids)).collect(),
        }
    }

    /// Tokens to reserve against the limits before the upstream counts: one
    /// per 4 bytes of text (rounded up), or the token ids themselves.
    pub fn estimated_tokens(&self) -> u64 {
        let text = |t: &String| (t.len() as u64).div_ceil(4);
        match self {
            Self::Text(t) => text(t),
            Self::Texts(t) => t.iter().map(text).sum(),
            Self::Tokens(ids) => ids.len() as u64,
            Self::TokenArrays(arrays) => arrays.iter().map(|ids| ids.len() as u64).sum(),
        }
    }
}

impl EmbeddingsRequest {
    /// Parses a request body. On failure the error names the field at fault.
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let request: Self = serde_json::from_slice(body).map_err(|e| explain(body).unwrap_or_else(|| e.into()))?;
        request.check()?;
        Ok(request)
    }

    fn check(&self) -> Result<(), RequestError> {
        let invalid = |param: &str, message: String| Err(RequestError::new(param.to_string(), message));
        if self.model.is_empty() {
            return invalid("model", "model: must not be empty".into());
        }
        if self.input.is_empty() {
            return invalid("input", "input: must not be empty".into());
        }
        match &self.input {
            Input::Texts(t) if t.iter().any(String::is_empty) => {
                return invalid("input", "input: every string must be non-empty".into());
            }
            Input::TokenArrays(t) if t.iter().any(Vec::is_empty) => {
                return invalid("input", "input: every token array must be non-empty".into());
            }
            _ => {}
        }
        if self.input.len() > MAX_INPUTS {
            return invalid("input", format!("input: at most {MAX_INPUTS} inputs, got {}", self.input.len()));
        }
        if self.dimensions == Some(0) {
            return invalid("dimensions", "dimensions: must be at least 1".into());
        }
        Ok(())
    }
}

impl From<serde_json::Error> for RequestError {
    fn from(e: serde_json::Error) -> Self {
        RequestError::new(None, format!("invalid request: {e}"))
    }
}

/// Names the field of a body that did not parse.
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
    let field = |name: &str, message: &str| Some(RequestError::new(name.to_string(), format!("{name}: {message}")));
    match obj.get("model") {
        None => return field("model", "missing required field"),
        Some(Value::String(_)) => {}
        Some(_) => return field("model", "expected a string"),
    }
    match obj.get("input") {
        None => return field("input", "missing required field"),
        Some(v) if serde_json::from_value::<Input>(v.clone()).is_err() => {
            return field(
                "input",
                "expected a string, an array of strings, an array of token ids or an array of arrays of token ids",
            );
        }
        Some(_) => {}
    }
    match obj.get("encoding_format") {
        Some(v) if !v.is_null() && serde_json::from_value::<EncodingFormat>(v.clone()).is_err() => {
            return field("encoding_format", "must be \"float\" or \"base64\"");
        }
        _ => {}
    }
    match obj.get("dimensions") {
        Some(v) if !v.is_null() && v.as_u64().is_none_or(|d| d > u64::from(u32::MAX)) => {
            field("dimensions", "expected a positive integer")
        }
        _ => None,
    }
}

/// A successful embeddings answer: the body as the provider sent it, and its usage.
#[derive(Debug)]
pub struct EmbeddingsReply {
    /// The `list` of embeddings, as JSON.
    pub body: Bytes,
    /// Token usage, when reported.
    pub usage: Option<Usage>,
}

/// The vectors of an embedding model, as OpenAI documents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Length without `dimensions`, and the most `dimensions` may ask for.
    pub dimensions: u32,
    /// Whether `dimensions` may shorten them (not for `text-embedding-ada-002`).
    pub shortens: bool,
}

impl Shape {
    /// OpenAI's models by name (a `provider/` prefix is ignored); any other
    /// model is the mock's own: 256 floats that `dimensions` may change.
    pub fn of(model: &str) -> Self {
        match model.rsplit('/').next().unwrap_or(model) {
            "text-embedding-3-small" => Self { dimensions: 1536, shortens: true },
            "text-embedding-3-large" => Self { dimensions: 3072, shortens: true },
            "text-embedding-ada-002" => Self { dimensions: 1536, shortens: false },
            _ => Self { dimensions: 256, shortens: true },
        }
    }
}

/// The mock model's answer: per input, a unit vector of `dimensions` floats
/// (or the model's [`Shape`]) made from the SHA-256 of the input (the same
/// input, the same vector), and usage counted by `count` per text (token ids
/// count one each). The in-process mock and `e2e/mock-llm` both answer with it.
pub fn mock_answer(request: &EmbeddingsRequest, model: &str, count: impl Fn(&str) -> u64) -> (Value, Usage) {
    let dimensions = request.dimensions.unwrap_or(Shape::of(model).dimensions) as usize;
    let format = request.encoding_format.unwrap_or_default();
    let mut prompt = 0;
    let data: Vec<Value> = request
        .input
        .items(count)
        .into_iter()
        .enumerate()
        .map(|(index, (bytes, tokens))| {
            prompt += tokens;
            let vector = mock_vector(&bytes, dimensions);
            let embedding = match format {
                EncodingFormat::Float => json!(vector),
                EncodingFormat::Base64 => {
                    let raw: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(raw))
                }
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let usage = Usage::new(prompt, 0);
    let body = json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt}});
    (body, usage)
}

/// A unit vector of `dimensions` floats in [-1, 1] before scaling, from SHA-256 in counter mode.
fn mock_vector(input: &[u8], dimensions: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(dimensions);
    let mut block = 0u32;
    while out.len() < dimensions {
        let digest = Sha256::new().chain_update(input).chain_update(block.to_le_bytes()).finalize();
        for pair in digest.chunks_exact(2) {
            if out.len() == dimensions {
                break;
            }
            let n = u16::from_le_bytes([pair[0], pair[1]]);
            out.push(f32::from(n) / 32767.5 - 1.0);
        }
        block += 1;
    }
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        out.iter_mut().for_each(|x| *x /= norm);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<EmbeddingsRequest, RequestError> {
        EmbeddingsRequest::parse(body.as_bytes())
    }

    #[test]
    fn every_input_shape_parses() {
        assert!(matches!(parse(r#"{"model":"e","input":"hi"}"#).expect("text").input, Input::Text(_)));
        assert!(
            matches!(parse(r#"{"model":"e","input":["a","b"]}"#).expect("texts").input, Input::Texts(t) if t.len() == 2)
        );
        assert!(matches!(parse(r#"{"model":"e","input":[1,2,3]}"#).expect("tokens").input, Input::Tokens(_)));
        assert!(matches!(parse(r#"{"model":"e","input":[[1],[2,3]]}"#).expect("arrays").input, Input::TokenArrays(_)));
        let r = parse(r#"{"model":"e","input":"hi","encoding_format":"base64","dimensions":8,"user":"u1"}"#)
            .expect("all fields");
        assert_eq!(r.encoding_format, Some(EncodingFormat::Base64));
        assert_eq!(r.rest.get("user"), Some(&json!("u1")), "unknown fields pass through");
    }

    #[test]
    fn bad_requests_name_the_field() {
        for (body, param, words) in [
            (r#"{"input":"hi"}"#, "model", "missing"),
            (r#"{"model":"e"}"#, "input", "missing"),
            (r#"{"model":"e","input":""}"#, "input", "must not be empty"),
            (r#"{"model":"e","input":[]}"#, "input", "must not be empty"),
            (r#"{"model":"e","input":["a",""]}"#, "input", "non-empty"),
            (r#"{"model":"e","input":[[1],[]]}"#, "input", "non-empty"),
            (r#"{"model":"e","input":{"text":"a"}}"#, "input", "array of strings"),
            (r#"{"model":"e","input":"a","encoding_format":"int8"}"#, "encoding_format", "\"float\" or \"base64\""),
            (r#"{"model":"e","input":"a","dimensions":0}"#, "dimensions", "at least 1"),
            (r#"{"model":"e","input":"a","dimensions":-3}"#, "dimensions", "positive integer"),
        ] {
            let e = parse(body).expect_err(body);
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
            assert!(e.message.contains(words), "{body}: {e}");
        }
        let many = serde_json::to_string(&json!({"model": "e", "input": vec!["x"; MAX_INPUTS + 1]})).expect("json");
        assert!(parse(&many).expect_err("too many").message.contains("at most 2048 inputs"));
    }

    #[test]
    fn the_upstream_gets_the_target_model_and_every_field() {
        let r = parse(r#"{"model":"tenant-name","input":["a"],"dimensions":4,"user":"u"}"#).expect("parse");
        let sent = serde_json::to_value(&r).expect("serialize");
        assert_eq!(sent, json!({"input": ["a"], "dimensions": 4, "user": "u"}), "the tenant model name stays here");
    }

    #[test]
    fn mock_vectors_are_deterministic_unit_vectors_in_either_encoding() {
        let float = parse(r#"{"model":"e","input":["same","other","same"],"dimensions":12}"#).expect("parse");
        let (body, usage) = mock_answer(&float, "m", |t| t.split_whitespace().count() as u64);
        assert_eq!(usage, Usage::new(3, 0));
        let vectors: Vec<Vec<f64>> =
            (0..3).map(|i| serde_json::from_value(body["data"][i]["embedding"].clone()).expect("floats")).collect();
        assert_eq!(vectors[0].len(), 12);
        assert_eq!(vectors[0], vectors[2], "the same input, the same vector");
        assert_ne!(vectors[0], vectors[1]);
        let norm: f64 = vectors[1].iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");

        let b64 = parse(r#"{"model":"e","input":"same","dimensions":12,"encoding_format":"base64"}"#).expect("parse");
        let (body, _) = mock_answer(&b64, "m", |_| 1);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body["data"][0]["embedding"].as_str().expect("a base64 string"))
            .expect("base64");
        let decoded: Vec<f64> =
            raw.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
        assert_eq!(decoded, vectors[0], "base64 carries the same float32 values");
    }

    #[test]
    fn vectors_have_the_model_length_unless_shortened() {
        let r = parse(r#"{"model":"e","input":"a"}"#).expect("parse");
        let length = |model| mock_answer(&r, model, |_| 1).0["data"][0]["embedding"].as_array().map(Vec::len);
        assert_eq!(length("text-embedding-3-small"), Some(1536));
        assert_eq!(length("openai/text-embedding-3-large"), Some(3072));
        assert_eq!(length("mock-embed"), Some(256));
        assert!(!Shape::of("text-embedding-ada-002").shortens);
    }

    #[test]
    fn token_ids_count_one_each_and_reserve_as_sent() {
        let r = parse(r#"{"model":"e","input":[[1,2,3],[4]]}"#).expect("parse");
        assert_eq!(r.input.estimated_tokens(), 4);
        assert_eq!(mock_answer(&r, "m", |_| 99).1.prompt_tokens, 4);
        let r = parse(r#"{"model":"e","input":["abcde","abc"]}"#).expect("parse");
        assert_eq!(r.input.estimated_tokens(), 3, "5 bytes: 2 tokens, 3 bytes: 1");
    }
}
