//! MCP JSON-RPC messages through the gateway's own handling around rmcp: a
//! fixed catalog of two connections (`github`, with allow/deny globs; `docs`,
//! with a deny glob and blocking pins). The input is one JSON-RPC message:
//! a client request (`tools/call`, `prompts/get`, `resources/read`, ...) is
//! routed through the catalog; an upstream answer (`tools/list`,
//! `prompts/list`, `resources/list`, `resources/read`) becomes that
//! connection's offer or is rewritten for the client.
//!
//! Invariants: a routed name or URI maps back to exactly what the client sent
//! (prefixing and URI rewriting are inverse); nothing a connection's deny
//! globs name, its allow globs miss, or its pins block is ever exposed or
//! callable; the glob matcher agrees with an independent regex translation;
//! messages round-trip through rmcp's types.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use regex::Regex;
use rmcp::model::{
    ClientJsonRpcMessage, ClientRequest, JsonRpcMessage, ListPromptsResult, ListResourcesResult, ListToolsResult,
    ReadResourceResult, ResourceContents,
};
use serde_json::Value;
use tenantgate_crds::config::{McpConnectionConfig, McpEndpointTransport};
use tenantgate_crds::v1alpha1::{McpTools, PinMode};
use tenantgate_gateway::fuzzing::{admit_tools, rewrite_contents_uri, upstream};
use tenantgate_gateway::mcp::Upstream;
use tenantgate_gateway::mcp::catalog::{Catalog, Offer, exposed_name, exposed_uri};
use tenantgate_gateway::mcp::pin::tool_pin;

/// A pin no real tool hashes to: `docs_read_doc` is always blocked.
const STALE_PIN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn connection(name: &str, allow: &[&str], deny: &[&str], pins: &[(&str, &str)]) -> McpConnectionConfig {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    McpConnectionConfig {
        name: name.into(),
        transport: McpEndpointTransport::StreamableHttp,
        url: Some(format!("https://{name}.mcp.example/mcp")),
        stdio: None,
        auth: None,
        prefix: name.into(),
        tools: McpTools {
            prefix: Some(name.into()),
            allow: strings(allow),
            deny: strings(deny),
            pin: if pins.is_empty() { PinMode::Off } else { PinMode::Block },
            pins: pins.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            ..Default::default()
        },
        timeout_seconds: 30,
    }
}

static UPSTREAMS: LazyLock<[Arc<Upstream>; 2]> = LazyLock::new(|| {
    [
        Arc::new(upstream(connection("github", &["search_*", "get_*"], &["delete_*", "get_secret?"], &[]))),
        Arc::new(upstream(connection("docs", &[], &["*_admin"], &[("read_doc", STALE_PIN)]))),
    ]
});

/// Reference glob: the pattern translated to an anchored regex.
fn glob_regex(pattern: &str) -> Regex {
    let mut re = String::from("(?s)^");
    for c in pattern.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).expect("an escaped glob compiles")
}

fn reference_permits(upstream: &Upstream, name: &str) -> bool {
    let tools = &upstream.config().tools;
    let hit = |globs: &[String]| globs.iter().any(|g| glob_regex(g).is_match(name));
    !hit(&tools.deny) && (tools.allow.is_empty() || hit(&tools.allow))
}

fn check_name(name: &str) {
    for upstream in UPSTREAMS.iter() {
        assert_eq!(upstream.permits_tool(name), reference_permits(upstream, name), "glob disagrees on {name:?}");
    }
}

/// Checks a catalog: every exposed tool routes back to an upstream tool its filter permits.
fn check_catalog(catalog: &Catalog) {
    for tool in &catalog.tools {
        let route = catalog.tool(&tool.name).expect("an exposed tool routes");
        assert_eq!(exposed_name(route.upstream.prefix(), &route.name), tool.name);
        assert!(route.upstream.permits_tool(&route.name), "a filtered tool is exposed: {}", tool.name);
        if let Some(pin) = route.upstream.config().tools.pins.get(&*route.name) {
            assert_eq!(&tool_pin(tool), pin, "a tool with a stale pin is exposed");
        }
    }
    for prompt in &catalog.prompts {
        let route = catalog.prompt(&prompt.name).expect("an exposed prompt routes");
        assert_eq!(exposed_name(route.upstream.prefix(), &route.name), prompt.name);
    }
    for resource in &catalog.resources {
        let (upstream, uri) = catalog.resource(&resource.uri).expect("an exposed resource routes");
        assert_eq!(exposed_uri(upstream.prefix(), &uri), resource.uri);
    }
}

/// The catalog when each upstream offers what `offer` lists.
fn catalog_with(offer: &Offer) -> Catalog {
    let live: Vec<_> = UPSTREAMS
        .iter()
        .map(|u| {
            let mut offer = offer.clone();
            admit_tools(u, &mut offer.tools);
            (u.clone(), Arc::new(offer))
        })
        .collect();
    Catalog::build(&live)
}

fn client_request(request: &ClientRequest, catalog: &Catalog) {
    match request {
        ClientRequest::CallToolRequest(r) => {
            check_name(&r.params.name);
            if let Some(route) = catalog.tool(&r.params.name) {
                assert_eq!(exposed_name(route.upstream.prefix(), &route.name), r.params.name);
                assert!(route.upstream.permits_tool(&route.name), "a denied tool is callable");
            }
        }
        ClientRequest::GetPromptRequest(r) => {
            if let Some(route) = catalog.prompt(&r.params.name) {
                assert_eq!(exposed_name(route.upstream.prefix(), &route.name), r.params.name);
            }
        }
        ClientRequest::ReadResourceRequest(r) => {
            if let Some((upstream, uri)) = catalog.resource(&r.params.uri) {
                assert_eq!(exposed_uri(upstream.prefix(), &uri), r.params.uri);
            }
        }
        _ => {}
    }
}

fn upstream_result(result: &Value) {
    let mut offer = Offer::default();
    if let Ok(list) = serde_json::from_value::<ListToolsResult>(result.clone()) {
        for tool in &list.tools {
            check_name(&tool.name);
        }
        offer.tools = list.tools;
    }
    if let Ok(list) = serde_json::from_value::<ListPromptsResult>(result.clone()) {
        offer.prompts = list.prompts;
    }
    if let Ok(list) = serde_json::from_value::<ListResourcesResult>(result.clone()) {
        offer.resources = list.resources;
    }
    let catalog = catalog_with(&offer);
    check_catalog(&catalog);
    if let Ok(mut read) = serde_json::from_value::<ReadResourceResult>(result.clone()) {
        for upstream in UPSTREAMS.iter() {
            for contents in &mut read.contents {
                let original = uri_of(contents);
                rewrite_contents_uri(contents, upstream.prefix());
                let exposed = uri_of(contents);
                let (back, uri) = catalog.resource(&exposed).expect("a rewritten URI routes");
                assert_eq!((back.prefix(), uri.as_str()), (upstream.prefix(), original.as_str()));
                *contents = with_uri(contents.clone(), original);
            }
        }
    }
}

fn uri_of(contents: &ResourceContents) -> String {
    match contents {
        ResourceContents::TextResourceContents { uri, .. } | ResourceContents::BlobResourceContents { uri, .. } => {
            uri.clone()
        }
        #[allow(unreachable_patterns)]
        _ => String::new(),
    }
}

fn with_uri(mut contents: ResourceContents, original: String) -> ResourceContents {
    match &mut contents {
        ResourceContents::TextResourceContents { uri, .. } | ResourceContents::BlobResourceContents { uri, .. } => {
            *uri = original;
        }
        #[allow(unreachable_patterns)]
        _ => {}
    }
    contents
}

static FULL: LazyLock<Catalog> = LazyLock::new(|| {
    let offer: Offer = serde_json::from_value::<ListToolsResult>(serde_json::json!({"tools": [
        {"name": "search_code", "inputSchema": {"type": "object"}},
        {"name": "get_issue", "inputSchema": {"type": "object"}},
        {"name": "get_secretX", "inputSchema": {"type": "object"}},
        {"name": "delete_repo", "inputSchema": {"type": "object"}},
        {"name": "read_doc", "inputSchema": {"type": "object"}},
        {"name": "site_admin", "inputSchema": {"type": "object"}}
    ]}))
    .map(|l| Offer { tools: l.tools, ..Offer::default() })
    .expect("the fixed tool list parses");
    catalog_with(&offer)
});

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    if let Some(result) = value.get("result") {
        upstream_result(result);
        return;
    }
    let Ok(message) = serde_json::from_value::<ClientJsonRpcMessage>(value) else { return };
    let encoded = serde_json::to_value(&message).expect("a parsed message encodes");
    let again: ClientJsonRpcMessage = serde_json::from_value(encoded.clone()).expect("an encoded message parses");
    assert_eq!(serde_json::to_value(&again).expect("encodes"), encoded, "rmcp round trip changed the message");
    check_catalog(&FULL);
    if let JsonRpcMessage::Request(r) = &message {
        client_request(&r.request, &FULL);
    }
});
