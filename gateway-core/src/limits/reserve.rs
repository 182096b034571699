//! How many tokens a request reserves before it is sent.
//!
//! The reservation is the prompt estimate plus the completion limit the
//! caller set (`max_completion_tokens`, else `max_tokens`), else
//! [`DEFAULT_COMPLETION_RESERVE`]. After the reply the reservation is
//! replaced by the usage the upstream reported. The tolerance of token
//! quotas is therefore what requests in flight use beyond their reservation:
//! nothing when the caller sets a completion limit and the prompt estimate is
//! not below the real prompt; otherwise the overrun of each request in flight,
//! which is charged when it settles so later requests wait for it.
//!
//! Under a budget the request also reserves its worst-case cost: the prompt
//! estimate and the completion limit at the highest rates among the model's
//! targets ([`Rates::worst`]), settled to what the target that answered
//! charges for the usage it reported.

use tenantgate_crds::pricing::Rates;

use crate::llm::types::ChatRequest;

/// Completion tokens reserved when the request sets no limit.
pub const DEFAULT_COMPLETION_RESERVE: u64 = 1024;

/// Bytes per token of the prompt estimate: about four for English text under
/// the GPT tokenizers; the estimate is taken over the whole JSON body, so
/// message framing and tool schemas count too and it errs on the high side.
pub const BYTES_PER_TOKEN: u64 = 4;

/// A request's token reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reservation {
    /// Estimated prompt tokens.
    pub prompt: u64,
    /// Completion tokens the request may use.
    pub completion: u64,
    /// The most it may cost, in nano-units (zero when not priced).
    pub cost: u64,
}

/// What a request takes from the token buckets and the budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Charge {
    /// Tokens.
    pub tokens: u64,
    /// Nano-units of the tenant's currency.
    pub nanos: u64,
}

impl Reservation {
    /// The reservation of `request`, whose JSON body is `body_len` bytes.
    pub fn of(request: &ChatRequest, body_len: usize) -> Self {
        let completion =
            request.max_completion_tokens.or(request.max_tokens).map_or(DEFAULT_COMPLETION_RESERVE, u64::from);
        Self { prompt: (body_len as u64).div_ceil(BYTES_PER_TOKEN), completion, cost: 0 }
    }

    /// A reservation of `prompt` and `completion` tokens.
    pub fn tokens(prompt: u64, completion: u64) -> Self {
        Self { prompt, completion, cost: 0 }
    }

    /// The same reservation costing `nanos` (a fixed price, e.g. an MCP tool call's).
    pub fn costing(self, nanos: u64) -> Self {
        Self { cost: nanos, ..self }
    }

    /// The same reservation with its worst-case cost at `worst` rates.
    pub fn priced(self, worst: &Rates) -> Self {
        Self { cost: cost(worst, self.prompt, 0, self.completion), ..self }
    }

    /// Tokens reserved.
    pub fn total(&self) -> u64 {
        self.prompt + self.completion
    }
}

/// What `prompt` input tokens (`cached` of them from a cache) and
/// `completion` output tokens cost at `rates`, in nano-units.
pub fn cost(rates: &Rates, prompt: u64, cached: u64, completion: u64) -> u64 {
    u64::try_from(rates.cost_nanos(prompt, cached, completion)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> ChatRequest {
        serde_json::from_str(json).expect("request")
    }

    #[test]
    fn reserves_the_prompt_estimate_plus_the_completion_limit() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":50}"#;
        let r = Reservation::of(&request(body), body.len());
        assert_eq!(r.prompt, (body.len() as u64).div_ceil(4));
        assert_eq!(r.completion, 50);
        let body = r#"{"model":"m","messages":[],"max_tokens":50,"max_completion_tokens":20}"#;
        assert_eq!(Reservation::of(&request(body), body.len()).completion, 20, "the newer field wins");
        let body = r#"{"model":"m","messages":[]}"#;
        assert_eq!(Reservation::of(&request(body), body.len()).completion, DEFAULT_COMPLETION_RESERVE);
    }
}
