//! Redaction of sensitive data: e-mail addresses, payment card numbers
//! (Luhn-checked, with space or dash separators) and API keys or tokens.
//!
//! One compiled alternation finds every kind in a single pass; a text without
//! any match is returned borrowed, so the common case allocates nothing.
//!
//! Key formats recognised (`apiKey`):
//! - OpenAI/Anthropic style `sk-...` (`sk-proj-`, `sk-ant-`), 20+ characters after the prefix
//! - AWS access key ids `AKIA`/`ASIA` + 16 upper-case characters
//! - GitHub tokens `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`
//! - Slack tokens `xox[abprs]-...`, Google API keys `AIza...`
//! - JWT-shaped tokens (`eyJ...` `.` `eyJ...` `.` signature)
//! - `Bearer <token>` (the token is replaced, the word stays)
//! - generic `key=value` / `key: value` where the key names a secret (`api_key`, `token`, `secret`,
//!   `password`, `client_secret`, `access_key`, ...) and the value is 16+ characters of high entropy
//!   (at least 3 bits per character): only the value is replaced.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use tenantgate_crds::v1alpha1::RedactKind;

/// A set of [`RedactKind`]s, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Kinds(u8);

impl Kinds {
    /// Every kind.
    pub const ALL: Kinds = Kinds(0b111);
    /// No kind.
    pub const NONE: Kinds = Kinds(0);

    /// The set of one kind.
    pub fn of(kind: RedactKind) -> Self {
        Kinds(match kind {
            RedactKind::Email => 1,
            RedactKind::CreditCard => 2,
            RedactKind::ApiKey => 4,
        })
    }

    /// Union.
    pub fn with(self, other: Kinds) -> Self {
        Kinds(self.0 | other.0)
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: RedactKind) -> bool {
        self.0 & Self::of(kind).0 != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<RedactKind> for Kinds {
    fn from_iter<I: IntoIterator<Item = RedactKind>>(iter: I) -> Self {
        iter.into_iter().fold(Kinds::NONE, |acc, k| acc.with(Kinds::of(k)))
    }
}

/// What replaces a redacted span of `kind`.
pub fn placeholder(kind: RedactKind) -> &'static str {
    match kind {
        RedactKind::Email => "[REDACTED:email]",
        RedactKind::CreditCard => "[REDACTED:creditCard]",
        RedactKind::ApiKey => "[REDACTED:apiKey]",
    }
}

// Group names tell which alternative matched. Cards: 13 to 19 digits, single
// spaces or dashes between them; the Luhn check runs on the digits after the match.
const PATTERN: &str = concat!(
    r"(?P<email>\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b)",
    r"|(?P<card>\b\d(?:[ -]?\d){12,18}\b)",
    r"|(?P<key>\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}",
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"|\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}",
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}",
    r"|\bAIza[0-9A-Za-z_-]{35}",
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
    r"|(?P<bearer>(?i:\bbearer)\s+)(?P<btoken>[A-Za-z0-9._~+/-]{16,}=*)",
    r"|(?P<gkey>(?i:\b[a-z0-9_-]*(?:api[_-]?key|apikey|secret|token|passwd|password|access[_-]?key|private[_-]?key|auth)[a-z0-9_-]*)",
    r#"["']?\s*[:=]\s*["']?)(?P<gval>[A-Za-z0-9_./+=~-]{16,})"#,
);

// ASCII classes and word boundaries keep the whole pattern on the fast DFA engines.
static REDACTOR: LazyLock<Option<Regex>> =
    LazyLock::new(|| regex::RegexBuilder::new(PATTERN).unicode(false).build().ok());

fn redactor() -> Option<&'static Regex> {
    REDACTOR.as_ref()
}

/// Replaces every e-mail address, card number and API key or token in `text`.
///
/// Other modules call this before anything reaches a log line or the database.
/// Returns the text borrowed when there is nothing to redact.
pub fn redact_secrets(text: &str) -> Cow<'_, str> {
    redact(text, Kinds::ALL).0
}

/// Replaces the spans of the `kinds` in `text`; also says which kinds were found.
pub fn redact(text: &str, kinds: Kinds) -> (Cow<'_, str>, Kinds) {
    if kinds.is_empty() || text.len() < 6 {
        return (Cow::Borrowed(text), Kinds::NONE);
    }
    let Some(re) = redactor() else { return (Cow::Borrowed(text), Kinds::NONE) };
    if !re.is_match(text) {
        return (Cow::Borrowed(text), Kinds::NONE);
    }
    let mut found = Kinds::NONE;
    let mut out: Option<String> = None;
    let mut last = 0;
    for caps in re.captures_iter(text) {
        let Some((start, replacement, kind)) = replacement_for(&caps, kinds) else { continue };
        let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buf.push_str(&text[last..start]);
        buf.push_str(replacement);
        last = caps.get(0).map_or(start, |m| m.end());
        found = found.with(Kinds::of(kind));
    }
    match out {
        Some(mut buf) => {
            buf.push_str(&text[last..]);
            (Cow::Owned(buf), found)
        }
        None => (Cow::Borrowed(text), Kinds::NONE),
    }
}

/// Where the replaced span starts, what replaces it and its kind; `None` when
/// the match is of a kind not asked for or fails its check (Luhn, entropy).
fn replacement_for(caps: &Captures<'_>, kinds: Kinds) -> Option<(usize, &'static str, RedactKind)> {
    if let Some(m) = caps.name("email") {
        return kinds
            .contains(RedactKind::Email)
            .then(|| (m.start(), placeholder(RedactKind::Email), RedactKind::Email));
    }
    if let Some(m) = caps.name("card") {
        let ok = kinds.contains(RedactKind::CreditCard) && luhn_valid(m.as_str());
        return ok.then(|| (m.start(), placeholder(RedactKind::CreditCard), RedactKind::CreditCard));
    }
    if !kinds.contains(RedactKind::ApiKey) {
        return None;
    }
    if let Some(m) = caps.name("key") {
        return Some((m.start(), placeholder(RedactKind::ApiKey), RedactKind::ApiKey));
    }
    if let Some(m) = caps.name("btoken") {
        return Some((m.start(), placeholder(RedactKind::ApiKey), RedactKind::ApiKey));
    }
    let value = caps.name("gval")?;
    high_entropy(value.as_str()).then(|| (value.start(), placeholder(RedactKind::ApiKey), RedactKind::ApiKey))
}

/// The Luhn checksum of the digits of `number` (separators skipped), for 13 to 19 digits.
pub fn luhn_valid(number: &str) -> bool {
    let mut sum = 0u32;
    let mut count = 0usize;
    for (i, d) in number.bytes().rev().filter(u8::is_ascii_digit).map(|b| u32::from(b - b'0')).enumerate() {
        let v = if i % 2 == 1 {
            let doubled = d * 2;
            if doubled > 9 { doubled - 9 } else { doubled }
        } else {
            d
        };
        sum += v;
        count += 1;
    }
    (13..=19).contains(&count) && sum.is_multiple_of(10)
}

/// Shannon entropy of at least 3 bits per character and more than one
/// character class: random keys pass, words and `aaaa...` do not.
fn high_entropy(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut counts = [0u16; 128];
    for &b in bytes {
        counts[usize::from(b & 0x7f)] += 1;
    }
    let n = bytes.len() as f64;
    let entropy: f64 = counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum();
    let classes = [
        bytes.iter().any(u8::is_ascii_lowercase),
        bytes.iter().any(u8::is_ascii_uppercase),
        bytes.iter().any(u8::is_ascii_digit),
    ]
    .iter()
    .filter(|&&x| x)
    .count();
    entropy >= 3.0 && classes >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_valid_numbers_with_separators() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(luhn_valid("5500-0000-0000-0004"));
        assert!(luhn_valid("378282246310005"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid("1234"));
    }

    #[test]
    fn redacts_each_kind() {
        let text = "mail bob.smith+x@example.co.uk, card 4111 1111 1111 1111, key sk-proj-abcdefghijklmnopqrstuvwx12";
        let out = redact_secrets(text);
        assert_eq!(out, "mail [REDACTED:email], card [REDACTED:creditCard], key [REDACTED:apiKey]");
        for secret in [
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "xoxb-1234567890-abcdefghij",
        ] {
            let text = format!("here: {secret} ok");
            assert_eq!(redact_secrets(&text), "here: [REDACTED:apiKey] ok", "{secret}");
        }
        assert_eq!(
            redact_secrets("Authorization: Bearer abc.DEF-123_456789xyz"),
            "Authorization: Bearer [REDACTED:apiKey]"
        );
        assert_eq!(redact_secrets("api_key=Zx9Qm2Lr7Tt4Vb8Nc1Wd"), "api_key=[REDACTED:apiKey]");
        assert_eq!(
            redact_secrets(r#"{"client_secret": "Zx9Qm2Lr7Tt4Vb8Nc1Wd"}"#),
            r#"{"client_secret": "[REDACTED:apiKey]"}"#
        );
    }

    #[test]
    fn leaves_look_alikes_alone() {
        for text in [
            "order 4111 1111 1111 1112 shipped", // fails Luhn
            "call 555-1234 tomorrow",
            "the password field is mandatory_for_everyone",
            "token=aaaaaaaaaaaaaaaaaaaaaa",
            "see RFC 3339 and ISO 8601",
        ] {
            assert!(matches!(redact_secrets(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn only_the_asked_kinds_are_redacted() {
        let text = "a@b.example and 4111111111111111";
        let (out, found) = redact(text, Kinds::of(RedactKind::CreditCard));
        assert_eq!(out, "a@b.example and [REDACTED:creditCard]");
        assert_eq!(found, Kinds::of(RedactKind::CreditCard));
    }

    #[test]
    fn the_pattern_compiles_and_handles_non_ascii_text() {
        assert!(redactor().is_some());
        // ASCII matching: a non-ASCII local part keeps its leading non-ASCII letters, the address is gone.
        assert_eq!(
            redact_secrets("Grüße an jürgen@example.de, Karte 4111 1111 1111 1111"),
            "Grüße an jü[REDACTED:email], Karte [REDACTED:creditCard]"
        );
    }
}
