//! `tools.allow` / `tools.deny` of an McpConnection: globs over upstream tool
//! names (`*` any run, `?` one character). Deny wins; an empty allow list
//! allows everything. Applied when listing and, because a filtered tool is
//! never in the catalog, to calls too.

use tenantgate_crds::v1alpha1::McpTools;

/// A connection's compiled tool filter.
#[derive(Debug, Clone, Default)]
pub struct ToolFilter {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl ToolFilter {
    /// The filter of a connection's `tools`.
    pub fn new(tools: &McpTools) -> Self {
        Self { allow: tools.allow.clone(), deny: tools.deny.clone() }
    }

    /// Whether the upstream tool `name` may be exposed and called.
    pub fn permits(&self, name: &str) -> bool {
        if self.deny.iter().any(|g| glob(g, name)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|g| glob(g, name))
    }
}

/// Shell-style wildcards (`*`, `?`), the same as prompt policies' model globs.
use crate::policy::glob::matches as glob;

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> ToolFilter {
        ToolFilter {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn globs_match_like_shells() {
        assert!(glob("search_*", "search_code"));
        assert!(glob("*", ""));
        assert!(glob("get_?", "get_x"));
        assert!(!glob("get_?", "get_xy"));
        assert!(glob("*_delete*", "repo_delete_all"));
        assert!(!glob("search_*", "research_x"));
        assert!(glob("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn deny_wins_and_empty_allow_allows_all() {
        let f = filter(&[], &["delete_*"]);
        assert!(f.permits("search"));
        assert!(!f.permits("delete_repo"));
        let f = filter(&["search_*", "get_*"], &["get_secret"]);
        assert!(f.permits("get_issue"));
        assert!(!f.permits("get_secret"));
        assert!(!f.permits("create_issue"));
    }
}
