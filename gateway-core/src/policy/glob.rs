//! Model-name globs of `match.models` and `allowedModels`: `*` matches any
//! run of characters, `?` one character, everything else itself.

/// Whether `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (mut p, mut n) = (pattern, name);
    // The pattern after the last `*`, and the rest of the name it was tried at.
    let mut star: Option<(&str, &str)> = None;
    while let Some(c) = n.chars().next() {
        let mut rest = p.chars();
        match rest.next() {
            // A `*` in the pattern is always a wildcard, even against a `*` in the name.
            Some('*') => {
                p = rest.as_str();
                star = Some((p, n));
            }
            Some(x) if x == '?' || x == c => {
                p = rest.as_str();
                n = &n[c.len_utf8()..];
            }
            _ => match star {
                Some((after, tried)) => {
                    // `tried` is never empty here: it ends with `n`.
                    let skip = tried.chars().next().map_or(0, char::len_utf8);
                    p = after;
                    n = &tried[skip..];
                    star = Some((after, n));
                }
                None => return false,
            },
        }
    }
    p.chars().all(|c| c == '*')
}

/// Whether `name` matches one of `patterns`.
pub fn any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches(p, name))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_and_question_marks() {
        assert!(matches("*", "anything"));
        // Found by fuzzing (fuzz/corpus/chat_request): a `*` in the name made
        // `*` skip the policy, as if the pattern were literal.
        assert!(matches("*", "*hat-default"));
        assert!(matches("chat-*", "chat-*x"));
        assert!(matches("*-default", "*-default"));
        // Characters, not bytes.
        assert!(matches("caf?", "café"));
        assert!(matches("*é*", "naïve café au lait"));
        assert!(!matches("caf?", "cafés"));
        assert!(matches("*", ""));
        assert!(matches("chat-*", "chat-default"));
        assert!(!matches("chat-*", "chatty"));
        assert!(matches("gpt-4?-mini", "gpt-4o-mini"));
        assert!(matches("*-mini", "gpt-4o-mini"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }
}
