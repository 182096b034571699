//! Measures what prompt policies add to one chat request, without a server:
//! `cargo run --release -p tenantgate-gateway --example policy_overhead`.
//!
//! The stack: a locked global prompt, a tenant prompt, a tenant guard policy
//! (injection block, a deny pattern, redaction of every kind, a token limit)
//! and a user policy; the request: a system message and a ~1 KB user message
//! with no secrets (the common case) and one with secrets to redact.

use std::time::Instant;

use serde_json::json;
use tenantgate_crds::config::GatewayConfig;
use tenantgate_gateway::auth::Identity;
use tenantgate_gateway::llm::types::ChatRequest;
use tenantgate_gateway::policy::{Policies, injection, redact_secrets};

fn config() -> GatewayConfig {
    let policies = json!([
        {"id": "tenantgate-system/base", "origin": "global", "layer": "global", "priority": 1, "match": {"models": ["*"]},
         "systemPrompt": {"template": "You are {{ tenant.displayName }}'s assistant. Never reveal secrets.", "locked": true}},
        {"id": "tg-acme/persona", "origin": "tenant", "layer": "tenant", "priority": 1, "match": {"models": ["chat-*"]},
         "systemPrompt": {"template": "The user is {{ user.subject }}; today is {{ now[:10] }}.", "mode": "append"}},
        {"id": "tg-acme/guards", "origin": "tenant", "layer": "tenant", "priority": 2, "match": {"models": ["*"]},
         "guards": {"promptInjection": "block", "denyPatterns": ["(?i)project\\s+nightingale"], "redact": ["email", "creditCard", "apiKey"], "maxInputTokens": 8000}},
        {"id": "tg-acme/ops", "origin": "tenant", "layer": "user", "priority": 1, "match": {"models": ["*"], "roles": ["ops"]},
         "systemPrompt": {"template": "Ops mode.", "mode": "append"}},
    ]);
    serde_json::from_value(json!({
        "version": 1,
        "tenant": {"name": "acme", "displayName": "Acme Corp", "namespace": "tg-acme"},
        "auth": {"jwt": {"issuer": "i", "audiences": ["a"], "keys": {"jwksFile": "/x"}, "rolesClaim": "roles", "leewaySeconds": 0}, "adminRoles": [], "apiKeysEnabled": false},
        "providers": [], "models": [],
        "routing": {"maxRetries": 0, "initialBackoffMs": 1, "maxBackoffMs": 1, "connectTimeoutMs": 1, "firstByteTimeoutMs": 1, "totalTimeoutMs": 1, "circuitBreaker": {"failureThreshold": 1, "openSeconds": 1}},
        "mcp": [], "policies": policies,
        "storage": {"database": {"sqlitePath": "/tmp/x"}}, "audit": {}, "network": {"allowLocalUpstreams": true},
        "keys": {"tokenEncryptionKeyFile": "/k", "apiKeyPepperFile": "/p"},
    }))
    .expect("config")
}

fn measure(name: &str, n: usize, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples: Vec<u128> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos()
        })
        .collect();
    samples.sort_unstable();
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1000.0;
    println!("{name:<44} p50 {:>7.1} µs   p99 {:>7.1} µs", p(0.50), p(0.99));
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

fn main() {
    println!("RSS at start: {:.1} MiB", rss_mib());
    let policies = Policies::compile(&config()).expect("compiles");
    let who = Identity::with_roles("alice", &["dev"]);
    let text = "Our quarterly report covers revenue, churn and the support backlog. Could you summarise the \
        three most important changes since last quarter, suggest two follow-up questions for the finance team, \
        and point out anything that looks inconsistent? The numbers: revenue grew 12% to 4.1M, churn fell from \
        3.2% to 2.7%, the backlog rose to 340 tickets because of the migration to the new billing system. "
        .repeat(2);
    let secrets = format!(
        "{text} Reach me at jane.doe@acme.example or card 4111 1111 1111 1111, key sk-proj-abcdefghijklmnopqrstuvwx12."
    );
    let request = |t: &str| -> ChatRequest {
        serde_json::from_value(json!({"model": "chat-default", "messages": [
            {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": t}]}))
        .expect("request")
    };
    println!("user message: {} bytes", text.len());
    let clean = request(&text);
    let dirty = request(&secrets);
    measure("apply: 4 policies, clean 1 KB prompt", 20_000, || {
        let mut r = clean.clone();
        std::hint::black_box(policies.apply(&who, Some("gpt-4o-mini"), &mut r).expect("applies"));
    });
    measure("apply: 4 policies, prompt with 3 secrets", 20_000, || {
        let mut r = dirty.clone();
        std::hint::black_box(policies.apply(&who, Some("gpt-4o-mini"), &mut r).expect("applies"));
    });
    measure("clone of the request (baseline of the above)", 20_000, || {
        std::hint::black_box(clean.clone());
    });
    measure("injection::detect, 1 KB", 20_000, || {
        std::hint::black_box(injection::detect(&text));
    });
    measure("redact_secrets, 1 KB, nothing to redact", 20_000, || {
        std::hint::black_box(redact_secrets(&text));
    });
    println!("RSS with the injection and redaction rules compiled: {:.1} MiB", rss_mib());
    let long = request(&"word ".repeat(2000));
    let tight = Policies::compile(&{
        let mut c = config();
        if let Some(g) = c.policies[2].guards.as_mut() {
            g.max_input_tokens = Some(1500);
        }
        c
    })
    .expect("compiles");
    measure("apply: 10 KB prompt counted with o200k", 2_000, || {
        let mut r = long.clone();
        std::hint::black_box(tight.apply(&who, Some("gpt-4o-mini"), &mut r).is_err());
    });
    println!("RSS with the o200k tokenizer loaded: {:.1} MiB", rss_mib());
}
