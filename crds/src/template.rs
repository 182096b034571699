//! Prompt templates are minijinja; a template that does not parse refuses the
//! config (and names the policy), never a request.

/// Checks that `source` parses as a minijinja template.
pub fn check(source: &str) -> Result<(), String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.template_from_str(source).map(|_| ()).map_err(|e| format!("template does not parse: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn syntax_errors_are_reported() {
        assert!(super::check("Hello {{ user.subject }}").is_ok());
        let err = super::check("Hello {{ user.subject ").unwrap_err();
        assert!(err.contains("template does not parse"), "{err}");
    }
}
