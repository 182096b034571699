//! The `x-ratelimit-*` headers OpenAI sends, and the `x-budget-*` headers
//! of budgets (amounts in the tenant's currency), from a decision's snapshot.

use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tenantgate_crds::pricing::format_nanos;

use super::decision::{Snapshot, Window};

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
const LIMIT_BUDGET: HeaderName = HeaderName::from_static("x-budget-limit");
const REMAINING_BUDGET: HeaderName = HeaderName::from_static("x-budget-remaining");
const RESET_BUDGET: HeaderName = HeaderName::from_static("x-budget-reset");
const SCOPE_BUDGET: HeaderName = HeaderName::from_static("x-budget-scope");

/// Sets the headers of every window the snapshot has.
pub fn apply(snapshot: &Snapshot, headers: &mut HeaderMap) {
    let mut set = |w: &Option<Window>, names: [HeaderName; 3]| {
        if let Some(w) = w {
            let [limit, remaining, reset] = names;
            headers.insert(limit, HeaderValue::from(w.limit));
            headers.insert(remaining, HeaderValue::from(w.remaining));
            if let Ok(v) = HeaderValue::from_str(&go_duration(w.reset)) {
                headers.insert(reset, v);
            }
        }
    };
    set(&snapshot.requests, [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS]);
    set(&snapshot.tokens, [LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS]);
    if let Some(w) = &snapshot.budget {
        let amount = |nanos: u64| HeaderValue::try_from(format_nanos(nanos as i64)).ok();
        for (name, value) in [(LIMIT_BUDGET, amount(w.limit)), (REMAINING_BUDGET, amount(w.remaining))] {
            if let Some(v) = value {
                headers.insert(name, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&go_duration(w.reset)) {
            headers.insert(RESET_BUDGET, v);
        }
    }
}

/// Names the budget that refused (`tenant` or `user`).
pub fn budget_scope(scope: &'static str, headers: &mut HeaderMap) {
    headers.insert(SCOPE_BUDGET, HeaderValue::from_static(scope));
}

/// A duration as OpenAI writes resets (Go's format): `20ms`, `1.5s`, `6m0s`,
/// `2h3m4s`; rounded up to the millisecond, so a wait is never understated.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_micros().div_ceil(1000) as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::with_capacity(12);
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let _ = write!(out, "{s}");
    if frac > 0 {
        let digits = format!("{frac:03}");
        let _ = write!(out, ".{}", digits.trim_end_matches('0'));
    }
    out.push('s');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openai_resets() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::ZERO), "0ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_micros(999_001)), "1s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(7_384_250)), "2h3m4.25s");
    }

    #[test]
    fn sets_request_and_token_headers() {
        let mut h = HeaderMap::new();
        let w = Window { limit: 60, remaining: 3, reset: Duration::from_millis(2500) };
        apply(&Snapshot { requests: Some(w), ..Default::default() }, &mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "3");
        assert_eq!(h["x-ratelimit-reset-requests"], "2.5s");
        assert!(!h.contains_key("x-ratelimit-limit-tokens"));
        assert!(!h.contains_key("x-budget-limit"));
    }

    #[test]
    fn budget_headers_are_amounts_of_the_currency() {
        let mut h = HeaderMap::new();
        let w = Window { limit: 25_000_000_000, remaining: 1_250_000, reset: Duration::from_secs(3_600) };
        apply(&Snapshot { budget: Some(w), ..Default::default() }, &mut h);
        assert_eq!(h["x-budget-limit"], "25");
        assert_eq!(h["x-budget-remaining"], "0.00125");
        assert_eq!(h["x-budget-reset"], "1h0m0s");
    }
}
