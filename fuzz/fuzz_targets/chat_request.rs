//! `POST /v1/chat/completions` bodies: parsing (with the error path that names
//! the field at fault) and the prompt-policy normalisation of the quickstart
//! tenant (system prompt composition, redaction, injection guard, token limit).
//!
//! Invariants: a parsed request, forwarded as the gateway forwards it,
//! re-parses to the same request; an error names a field of the body; a
//! normalised request is still valid, starts with the one composed system
//! message, keeps every other message in order, and normalising is idempotent
//! on the messages a client wrote.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tenantgate_fuzz::{quickstart_config, same_json};
use tenantgate_gateway::auth::Identity;
use tenantgate_gateway::llm::types::{ChatRequest, RequestError, Role};
use tenantgate_gateway::policy::Policies;

static POLICIES: LazyLock<Policies> =
    LazyLock::new(|| Policies::compile(&quickstart_config()).expect("the quickstart policies compile"));

fn identity() -> Identity {
    Identity { expires_at: u64::MAX, ..Identity::with_roles("alice@example.com", &["dev"]) }
}

/// The body the gateway sends on (the target's model name put back).
fn forwarded(request: &ChatRequest) -> Value {
    let mut v = serde_json::to_value(request).expect("a parsed request serializes");
    v["model"] = Value::String(request.model.clone());
    v
}

fuzz_target!(|data: &[u8]| {
    let request = match ChatRequest::parse(data) {
        Ok(r) => r,
        // A `RequestError` is always a 400 (`AppError::BadRequest`).
        Err(RequestError { message, param }) => {
            assert!(!message.is_empty());
            if let Some(param) = param {
                assert!(message.starts_with(&param), "the message {message:?} names its field {param:?}");
            }
            return;
        }
    };
    let body = forwarded(&request);
    let again = ChatRequest::parse(&serde_json::to_vec(&body).expect("encodes")).expect("a forwarded body parses");
    assert!(same_json(&forwarded(&again), &body), "round trip changed the request");

    let mut normalised = request.clone();
    let Ok(_decision) = POLICIES.apply(&identity(), Some("mock-1"), &mut normalised) else { return };
    let leading = request.messages.iter().take_while(|m| matches!(m.role, Role::System | Role::Developer)).count();
    assert_eq!(normalised.messages.len(), request.messages.len() - leading + 1);
    let system = normalised.messages[0].content.as_ref().map(|c| c.text()).unwrap_or_default();
    assert_eq!(normalised.messages[0].role, Role::System);
    assert!(system.starts_with("You are Quickstart's assistant."), "{system:?}");
    for (before, after) in request.messages[leading..].iter().zip(&normalised.messages[1..]) {
        assert_eq!(before.role, after.role, "normalising reordered the messages");
    }
    let body = serde_json::to_vec(&forwarded(&normalised)).expect("encodes");
    ChatRequest::parse(&body).expect("a normalised request parses");

    let mut twice = normalised.clone();
    if POLICIES.apply(&identity(), Some("mock-1"), &mut twice).is_ok() {
        let text = |r: &ChatRequest| -> Vec<Option<String>> {
            r.messages[1..].iter().map(|m| m.content.as_ref().map(|c| c.text())).collect()
        };
        assert_eq!(text(&normalised), text(&twice), "redaction is not idempotent");
    }
});
