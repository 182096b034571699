//! Counting the prompt tokens of a request for `maxInputTokens`.
//!
//! For OpenAI model families known from the target model name (`gpt-4o*`,
//! `gpt-4*`, `gpt-3.5*`, `o1*`/`o3*`/`o4*`, `gpt-5*`, ...) the count uses the
//! model's own BPE (tiktoken-rs, whose vocabularies ship inside the crate),
//! plus OpenAI's chat framing of 3 tokens per message and 3 for the reply.
//! For other models it is an estimate: one token per 4 bytes of UTF-8 text
//! (rounded up), with the same framing. Tool definitions are not counted.
//!
//! Every BPE token covers at least one byte, so a prompt of at most `limit`
//! bytes is within the limit without counting: the tokenizer runs only for
//! prompts near or above their limit.

use tiktoken_rs::CoreBPE;

use crate::llm::types::{ChatRequest, Message};

/// Framing tokens of one message.
const PER_MESSAGE: u64 = 3;
/// Tokens priming the reply.
const PER_REPLY: u64 = 3;

/// How tokens are counted for a model.
#[derive(Clone, Copy)]
pub enum Counter {
    /// The model's own BPE.
    Bpe(&'static CoreBPE),
    /// About 4 bytes per token.
    Estimate,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bpe(_) => "Bpe",
            Self::Estimate => "Estimate",
        })
    }
}

impl Counter {
    /// The counter for an upstream model name; `None` or an unknown family estimates.
    pub fn for_model(model: Option<&str>) -> Self {
        // Provider prefixes such as `openai/gpt-4o` name the same family.
        let name = model.map(|m| m.rsplit('/').next().unwrap_or(m));
        match name.and_then(tiktoken_rs::tokenizer::get_tokenizer) {
            Some(t) => tiktoken_rs::bpe_for_tokenizer(t).map_or(Self::Estimate, Self::Bpe),
            None => Self::Estimate,
        }
    }

    /// Tokens of one text.
    pub fn count_text(&self, text: &str) -> u64 {
        match self {
            Self::Bpe(bpe) => bpe.encode_ordinary(text).len() as u64,
            Self::Estimate => (text.len() as u64).div_ceil(4),
        }
    }
}

/// Whether the prompt of `request` exceeds `limit` tokens for upstream model
/// `model`; the count when it does. The tokenizer is loaded (once per process)
/// only when a prompt is longer in bytes than the limit.
pub fn exceeds(request: &ChatRequest, model: Option<&str>, limit: u32) -> Option<u64> {
    let limit = u64::from(limit);
    let framing = PER_MESSAGE * request.messages.len() as u64 + PER_REPLY;
    let bytes: u64 = request.messages.iter().map(|m| text_bytes(m) as u64).sum();
    if bytes + framing <= limit {
        return None;
    }
    count_exceeds(request, Counter::for_model(model), limit, framing)
}

/// The prompt tokens of `request` for upstream model `model`, counted as
/// `maxInputTokens` counts them (`/v1/messages/count_tokens`).
pub fn count(request: &ChatRequest, model: Option<&str>) -> u64 {
    let framing = PER_MESSAGE * request.messages.len() as u64 + PER_REPLY;
    count_until(request, Counter::for_model(model), u64::MAX, framing)
}

fn count_exceeds(request: &ChatRequest, counter: Counter, limit: u64, framing: u64) -> Option<u64> {
    let total = count_until(request, counter, limit, framing);
    (total > limit).then_some(total)
}

/// The prompt's tokens, counted until they pass `limit`.
fn count_until(request: &ChatRequest, counter: Counter, limit: u64, framing: u64) -> u64 {
    let mut total = framing;
    for message in &request.messages {
        if let Some(content) = &message.content {
            total += match content {
                crate::llm::types::Content::Text(t) => counter.count_text(t),
                parts => counter.count_text(&parts.text()),
            };
        }
        if total > limit {
            return total;
        }
    }
    total
}

fn text_bytes(m: &Message) -> usize {
    match &m.content {
        Some(crate::llm::types::Content::Text(t)) => t.len(),
        Some(c) => c.text().len(),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> ChatRequest {
        serde_json::from_value(serde_json::json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
            .expect("request")
    }

    #[test]
    fn known_families_use_their_bpe() {
        let c = Counter::for_model(Some("gpt-4o-mini"));
        assert!(matches!(c, Counter::Bpe(_)));
        assert_eq!(c.count_text("hello world"), 2);
        assert!(matches!(Counter::for_model(Some("gpt-3.5-turbo")), Counter::Bpe(_)));
        assert!(matches!(Counter::for_model(Some("llama-3-70b")), Counter::Estimate));
        assert!(matches!(Counter::for_model(None), Counter::Estimate));
    }

    #[test]
    fn limits_apply_to_the_counted_prompt() {
        let text = "hello world ".repeat(50); // 101 tokens for o200k (the last space is one), 600 bytes
        let gpt = Some("gpt-4o");
        assert_eq!(exceeds(&request(&text), gpt, 1000), None, "under the byte bound: not counted");
        assert_eq!(exceeds(&request(&text), gpt, 200), None);
        assert_eq!(exceeds(&request(&text), gpt, 50), Some(101 + 6));
        assert_eq!(exceeds(&request(&text), Some("llama-3"), 100), Some(150 + 6));
    }
}
