//! Prompt templates are minijinja; a template that does not parse refuses the
//! config (and names the policy), never a request.

/// Why a template was refused.
#[derive(Debug, thiserror::Error)]
#[error("template does not parse: {0}")]
pub struct TemplateError(#[from] minijinja::Error);

/// Checks that `source` parses as a minijinja template.
pub fn check(source: &str) -> Result<(), TemplateError> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.template_from_str(source).map(|_| ()).map_err(TemplateError)
}

#[cfg(test)]
mod tests {
    #[test]
    fn syntax_errors_are_reported() {
        assert!(super::check("Hello {{ user.subject }}").is_ok());
        let err = super::check("Hello {{ user.subject ").unwrap_err().to_string();
        assert!(err.contains("template does not parse"), "{err}");
    }
}
