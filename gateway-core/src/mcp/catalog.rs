//! The aggregated view of every live upstream: tools and prompts exposed as
//! `<prefix>_<name>`, resources as `<prefix>+<uri>`, and the indexes that
//! route a call back to its upstream. Rebuilt whenever an upstream connects,
//! drops or announces a list change; read lock-free by every request.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, VacantEntry};
use std::sync::Arc;

use rmcp::model::{Prompt, Resource, ResourceTemplate, Tool};

use super::upstream::Upstream;

/// What one live upstream offers, already filtered by its allow/deny globs.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// Tools the connection may expose (upstream names).
    pub tools: Vec<Tool>,
    /// Prompts (upstream names).
    pub prompts: Vec<Prompt>,
    /// Resources (upstream URIs).
    pub resources: Vec<Resource>,
    /// Resource templates (upstream URI templates).
    pub templates: Vec<ResourceTemplate>,
}

/// Where an exposed name leads.
#[derive(Debug, Clone)]
pub struct Route {
    /// The upstream that serves it.
    pub upstream: Arc<Upstream>,
    /// Its name (or URI) at the upstream.
    pub name: Arc<str>,
}

/// The aggregated lists and their routes.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Exposed tools, in connection order.
    pub tools: Vec<Tool>,
    /// Exposed prompts.
    pub prompts: Vec<Prompt>,
    /// Exposed resources (rewritten URIs).
    pub resources: Vec<Resource>,
    /// Exposed resource templates (rewritten URI templates).
    pub templates: Vec<ResourceTemplate>,
    tool_routes: HashMap<String, Route>,
    prompt_routes: HashMap<String, Route>,
    /// Prefix -> upstream, for resource URIs.
    prefixes: HashMap<String, Arc<Upstream>>,
}

/// The exposed name of an upstream tool or prompt (an empty prefix keeps the name: the stdio bridge).
pub fn exposed_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}_{name}") }
}

/// The exposed URI of an upstream resource: `<prefix>+<uri>`, itself a valid URI
/// (the prefix is a DNS label, so the first `+` ends it).
pub fn exposed_uri(prefix: &str, uri: &str) -> String {
    if prefix.is_empty() { uri.to_string() } else { format!("{prefix}+{uri}") }
}

impl Catalog {
    /// Builds the catalog from the live upstreams, in connection order, the
    /// unprefixed connection (if any) last: a name it shares with a prefixed
    /// connection's (`gh_search` beside connection `gh`'s `search`) stays the
    /// prefixed one's, and the unprefixed one's is left out, with a warning.
    pub fn build(live: &[(Arc<Upstream>, Arc<Offer>)]) -> Self {
        let mut c = Catalog::default();
        let (unprefixed, prefixed): (Vec<_>, Vec<_>) = live.iter().partition(|(u, _)| u.prefix().is_empty());
        for (upstream, offer) in prefixed.into_iter().chain(unprefixed) {
            let prefix = upstream.prefix();
            c.prefixes.insert(prefix.to_string(), upstream.clone());
            for tool in &offer.tools {
                let name = exposed_name(prefix, &tool.name);
                let Some(slot) = vacant(&mut c.tool_routes, name, upstream, "tool") else { continue };
                let mut exposed = tool.clone();
                exposed.name = slot.key().clone().into();
                slot.insert(Route { upstream: upstream.clone(), name: tool.name.as_ref().into() });
                c.tools.push(exposed);
            }
            for prompt in &offer.prompts {
                let name = exposed_name(prefix, &prompt.name);
                let Some(slot) = vacant(&mut c.prompt_routes, name, upstream, "prompt") else { continue };
                let mut exposed = prompt.clone();
                exposed.name = slot.key().clone();
                slot.insert(Route { upstream: upstream.clone(), name: prompt.name.as_str().into() });
                c.prompts.push(exposed);
            }
            for resource in &offer.resources {
                let mut exposed = resource.clone();
                exposed.uri = exposed_uri(prefix, &resource.uri);
                c.resources.push(exposed);
            }
            for template in &offer.templates {
                let mut exposed = template.clone();
                exposed.uri_template = exposed_uri(prefix, &template.uri_template);
                c.templates.push(exposed);
            }
        }
        c
    }

    /// The exposed tools `caller` may use (their connection's `tools.access`).
    pub fn tools_for(&self, caller: &crate::auth::Identity) -> Vec<Tool> {
        self.tools
            .iter()
            .filter(|t| self.tool(&t.name).is_some_and(|route| route.upstream.grants_tool(&route.name, caller)))
            .cloned()
            .collect()
    }

    /// Whether `caller` can see the connection `name`: it may use one of its
    /// tools, or the connection offers none (its prompts and resources are open to all).
    pub fn shows_connection(&self, name: &str, caller: &crate::auth::Identity) -> bool {
        let mut tools = self.tool_routes.values().filter(|r| r.upstream.name() == name).peekable();
        tools.peek().is_none() || tools.any(|r| r.upstream.grants_tool(&r.name, caller))
    }

    /// The upstream tool behind an exposed name; `None` for unknown and for
    /// filtered-out tools alike (they are never in the catalog).
    pub fn tool(&self, name: &str) -> Option<&Route> {
        self.tool_routes.get(name)
    }

    /// The upstream prompt behind an exposed name.
    pub fn prompt(&self, name: &str) -> Option<&Route> {
        self.prompt_routes.get(name)
    }

    /// Whether the connection `name` is live in this catalog (connected and
    /// listed, with or without tools).
    pub fn has_connection(&self, name: &str) -> bool {
        self.prefixes.values().any(|u| u.name() == name)
    }

    /// The upstream and its own URI for an exposed resource URI: the connection
    /// whose prefix starts it (`<prefix>+`), else the unprefixed connection.
    pub fn resource(&self, uri: &str) -> Option<(Arc<Upstream>, String)> {
        let prefixed = uri
            .split_once('+')
            .filter(|(prefix, _)| !prefix.is_empty())
            .and_then(|(prefix, rest)| Some((self.prefixes.get(prefix)?.clone(), rest.to_string())));
        prefixed.or_else(|| Some((self.prefixes.get("")?.clone(), uri.to_string())))
    }
}

/// The free slot for an exposed name, or `None` (with a warning) when an
/// earlier connection's name takes it.
fn vacant<'a>(
    routes: &'a mut HashMap<String, Route>,
    name: String,
    upstream: &Upstream,
    kind: &str,
) -> Option<VacantEntry<'a, String, Route>> {
    match routes.entry(name) {
        Entry::Vacant(slot) => Some(slot),
        Entry::Occupied(taken) => {
            tracing::warn!(
                connection = upstream.name(),
                name = taken.key().as_str(),
                taken_by = taken.get().upstream.name(),
                "{kind} left out: another connection's {kind} has the same exposed name"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uris_round_trip() {
        assert_eq!(exposed_name("gh", "search"), "gh_search");
        assert_eq!(exposed_name("", "search"), "search");
        let uri = exposed_uri("docs", "git+https://example.com/x?y=1");
        assert_eq!(uri, "docs+git+https://example.com/x?y=1");
        let (prefix, rest) = uri.split_once('+').expect("plus");
        assert_eq!((prefix, rest), ("docs", "git+https://example.com/x?y=1"));
    }

    fn upstream(name: &str, tools: serde_json::Value) -> Arc<Upstream> {
        with_prefix(name, name, tools)
    }

    fn with_prefix(name: &str, prefix: &str, tools: serde_json::Value) -> Arc<Upstream> {
        let config = serde_json::from_value(serde_json::json!({"name": name, "transport": "streamableHttp",
            "url": "http://127.0.0.1:1/mcp", "prefix": prefix, "tools": tools, "timeoutSeconds": 5}))
        .expect("connection config");
        Arc::new(crate::fuzzing::upstream(config))
    }

    #[test]
    fn an_unprefixed_connection_keeps_its_names_and_yields_those_a_prefixed_one_takes() {
        let bare = with_prefix("bare", "", serde_json::json!({}));
        let gh = upstream("gh", serde_json::json!({}));
        // The unprefixed connection comes first by name, yet the prefixed one keeps gh_search.
        let catalog = Catalog::build(&[(bare, offer(&["gh_search", "lookup"])), (gh, offer(&["search"]))]);
        let names: Vec<_> = catalog.tools.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, ["gh_search", "lookup"]);
        let route = |name: &str| catalog.tool(name).map(|r| (r.upstream.name().to_string(), r.name.to_string()));
        assert_eq!(route("gh_search"), Some(("gh".into(), "search".into())));
        assert_eq!(route("lookup"), Some(("bare".into(), "lookup".into())));
        let resource = |uri: &str| catalog.resource(uri).map(|(u, uri)| (u.name().to_string(), uri));
        assert_eq!(resource("gh+file:///a"), Some(("gh".into(), "file:///a".into())));
        assert_eq!(resource("test://static-text"), Some(("bare".into(), "test://static-text".into())));
        assert_eq!(resource("git+https://x/y"), Some(("bare".into(), "git+https://x/y".into())), "no connection git");
        let prefixed_only = Catalog::build(&[(upstream("gh", serde_json::json!({})), offer(&[]))]);
        assert!(prefixed_only.resource("test://static-text").is_none());
    }

    fn offer(tools: &[&str]) -> Arc<Offer> {
        let tool = |name: &&str| Tool::new(name.to_string(), "", Arc::new(serde_json::Map::new()));
        Arc::new(Offer { tools: tools.iter().map(tool).collect(), ..Offer::default() })
    }

    #[test]
    fn a_connection_shows_to_callers_who_may_use_one_of_its_tools_or_when_it_has_none() {
        let ops_only = serde_json::json!({"access": [{"tools": ["*"], "roles": ["ops"]}]});
        let catalog = Catalog::build(&[
            (upstream("open", serde_json::json!({})), offer(&["search"])),
            (upstream("ops", ops_only.clone()), offer(&["restart", "drain"])),
            (upstream("prompts", ops_only), offer(&[])),
        ]);
        let who = |roles: &[&str]| crate::auth::Identity::with_roles("alice", roles);
        let (dev, ops) = (who(&["dev"]), who(&["ops"]));
        assert!(catalog.shows_connection("open", &dev) && catalog.shows_connection("open", &ops));
        assert!(!catalog.shows_connection("ops", &dev), "every tool is for ops");
        assert!(catalog.shows_connection("ops", &ops));
        assert!(catalog.shows_connection("prompts", &dev), "no tools: its prompts and resources are open to all");
    }
}
