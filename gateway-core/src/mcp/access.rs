//! `tools.access` / `tools.accessDefault` of an McpConnection: which callers
//! may list and call which of its tools. A tool (by upstream name) matched by
//! some rule's globs is open to the roles and subjects of those rules only; a
//! tool no rule matches follows `accessDefault`. Unlike allow/deny, this
//! depends on the caller, so it is applied per request: to `/mcp`'s
//! `tools/list` and `tools/call` and to the tools a chat request offers.

use tenantgate_crds::v1alpha1::{AccessDefault, McpTools, ToolAccessRule};

use crate::auth::Identity;
use crate::policy::glob::matches as glob;

/// A connection's tool access rules.
#[derive(Debug, Clone, Default)]
pub struct ToolAccess {
    rules: Vec<ToolAccessRule>,
    default: AccessDefault,
}

impl ToolAccess {
    /// The rules of a connection's `tools`.
    pub fn new(tools: &McpTools) -> Self {
        Self { rules: tools.access.clone(), default: tools.access_default }
    }

    /// Whether `caller` may list and call the upstream tool `tool`.
    pub fn permits(&self, tool: &str, caller: &Identity) -> bool {
        let mut governed = false;
        for rule in self.rules.iter().filter(|r| r.tools.iter().any(|g| glob(g, tool))) {
            if rule.subjects.contains(&caller.subject) || rule.roles.iter().any(|r| caller.roles.contains(r)) {
                return true;
            }
            governed = true;
        }
        !governed && self.default == AccessDefault::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::who;

    fn access(default: AccessDefault) -> ToolAccess {
        let rule = |tools: &[&str], roles: &[&str], subjects: &[&str]| ToolAccessRule {
            tools: tools.iter().map(|s| s.to_string()).collect(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
        };
        ToolAccess {
            rules: vec![rule(&["get_*", "search"], &["developer"], &["alice@x"]), rule(&["get_secret"], &["ops"], &[])],
            default,
        }
    }

    #[test]
    fn matched_tools_are_open_to_the_rules_roles_and_subjects_only() {
        let a = access(AccessDefault::Allow);
        let (dev, alice, ops, other) =
            (who("bob", &["developer"]), who("alice@x", &[]), who("carol", &["ops"]), who("mallory", &["dev"]));
        assert!(a.permits("get_issue", &dev) && a.permits("search", &alice));
        assert!(!a.permits("get_issue", &ops) && !a.permits("search", &other));
        // Two rules match get_secret: either grants it.
        assert!(a.permits("get_secret", &ops) && a.permits("get_secret", &dev));
        assert!(!a.permits("get_secret", &other));
        // A role that merely resembles one does not count.
        assert!(!a.permits("get_issue", &who("x", &["developers"])));
    }

    #[test]
    fn unmatched_tools_follow_the_default() {
        let nobody = who("mallory", &[]);
        assert!(access(AccessDefault::Allow).permits("create_issue", &nobody));
        assert!(!access(AccessDefault::Deny).permits("create_issue", &nobody));
        assert!(!access(AccessDefault::Deny).permits("create_issue", &who("bob", &["developer"])));
        assert!(access(AccessDefault::Deny).permits("get_issue", &who("bob", &["developer"])));
        assert!(ToolAccess::default().permits("anything", &nobody));
    }
}
