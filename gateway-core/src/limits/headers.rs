//! The `x-ratelimit-*` headers OpenAI sends, from a decision's snapshot.

use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::decision::{Snapshot, Window};

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

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
        apply(&Snapshot { requests: Some(w), tokens: None }, &mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "3");
        assert_eq!(h["x-ratelimit-reset-requests"], "2.5s");
        assert!(!h.contains_key("x-ratelimit-limit-tokens"));
    }
}
