//! The Anthropic Messages API behind the OpenAI interface, both directions.
//! The first byte picks what the rest is: `r` an OpenAI chat request
//! (translated to a Messages request), `m` a Messages answer (translated to a
//! `chat.completion`), `s` a Messages event stream (translated to
//! `chat.completion.chunk` events); other bytes pick by their value mod 3.
//!
//! Invariants: a translated request alternates user and assistant turns,
//! keeps every tool call, tool result and system text, and its assistant turns
//! translate back to the same text and tool calls; an answer keeps its text,
//! tool calls (arguments as JSON) and token counts; a stream's chunks are
//! well-formed SSE with JSON, carry exactly the text and tool-call arguments
//! of the upstream deltas, and end with `[DONE]` only after `message_stop`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tenantgate_gateway::llm::anthropic::{DEFAULT_MAX_TOKENS, StreamTranslator, from_message, to_messages};
use tenantgate_gateway::llm::sse::{DONE, Decoder};
use tenantgate_gateway::llm::types::{ChatRequest, Content, Role};

fn text_of(blocks: &[Value]) -> String {
    blocks.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect()
}

fn request(data: &[u8]) {
    let Ok(request) = ChatRequest::parse(data) else { return };
    let out = to_messages(&request, "claude-fuzz");
    assert_eq!(out["model"], "claude-fuzz");
    assert_eq!(out["max_tokens"], json!(request.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS)));
    let system: Vec<String> = request
        .messages
        .iter()
        .filter(|m| matches!(m.role, Role::System | Role::Developer))
        .filter_map(|m| m.content.as_ref().map(Content::text))
        .collect();
    if system.is_empty() {
        assert!(out.get("system").is_none());
    } else {
        assert_eq!(out["system"], json!(system.join("\n\n")));
    }
    let messages = out["messages"].as_array().expect("messages is an array");
    let mut tool_uses = 0;
    let mut tool_results = 0;
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().expect("a role");
        assert!(role == "user" || role == "assistant");
        if i > 0 {
            assert_ne!(messages[i - 1]["role"], m["role"], "two turns of one role in a row");
        }
        let blocks = m["content"].as_array().expect("content blocks");
        assert!(!blocks.is_empty(), "an empty turn");
        tool_uses += blocks.iter().filter(|b| b["type"] == "tool_use").count();
        tool_results += blocks.iter().filter(|b| b["type"] == "tool_result").count();
        if role == "assistant" {
            assistant_round_trip(blocks);
        }
    }
    let calls: usize = request
        .messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .flat_map(|m| m.tool_calls.iter().flatten())
        .count();
    assert_eq!(tool_uses, calls, "tool calls lost");
    let results = request.messages.iter().filter(|m| matches!(m.role, Role::Tool | Role::Function)).count();
    assert_eq!(tool_results, results, "tool results lost");
}

/// An assistant turn, answered back as a Messages answer, is the same turn in OpenAI terms.
fn assistant_round_trip(blocks: &[Value]) {
    let (completion, _) = from_message(&json!({"id": "msg_rt", "model": "claude-fuzz", "content": blocks}));
    let message = &completion["choices"][0]["message"];
    let text = text_of(blocks);
    let uses: Vec<&Value> = blocks.iter().filter(|b| b["type"] == "tool_use").collect();
    if !(text.is_empty() && !uses.is_empty()) {
        assert_eq!(message["content"], json!(text));
    }
    let calls = message["tool_calls"].as_array().map_or(&[][..], Vec::as_slice);
    assert_eq!(calls.len(), uses.len());
    for (call, block) in calls.iter().zip(uses) {
        assert_eq!(call["id"], block["id"]);
        assert_eq!(call["function"]["name"], block["name"]);
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().expect("arguments is a string"))
                .expect("arguments are JSON");
        assert_eq!(arguments, block["input"]);
    }
}

fn message(data: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Value>(data) else { return };
    let (completion, usage) = from_message(&message);
    assert_eq!(usage.total_tokens, usage.prompt_tokens.saturating_add(usage.completion_tokens));
    assert_eq!(completion["usage"]["total_tokens"], json!(usage.total_tokens));
    let blocks = message.get("content").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let choice = &completion["choices"][0];
    let finish = choice["finish_reason"].as_str().expect("a finish reason");
    assert!(["stop", "length", "tool_calls", "content_filter"].contains(&finish));
    let uses = blocks.iter().filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use")).count();
    let calls = choice["message"]["tool_calls"].as_array().map_or(0, Vec::len);
    assert_eq!(uses, calls);
    for call in choice["message"]["tool_calls"].as_array().into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().expect("arguments is a string");
        serde_json::from_str::<Value>(arguments).expect("arguments are JSON");
    }
}

fn stream(data: &[u8]) {
    let mut decoder = Decoder::default();
    decoder.push(data);
    let mut translator = StreamTranslator::new(true);
    let mut upstream_text = String::new();
    let mut upstream_args = String::new();
    let mut out = Vec::new();
    let mut stopped = false;
    while let Some(event) = decoder.next_event() {
        let before = out.len();
        if translator.translate(&event.data, &mut out).is_err() {
            break;
        }
        if stopped {
            assert_eq!(out.len(), before, "output after [DONE]");
            continue;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&event.data) {
            match (v["type"].as_str(), v["delta"]["type"].as_str()) {
                (Some("content_block_delta"), Some("text_delta")) => {
                    upstream_text.push_str(v["delta"]["text"].as_str().unwrap_or_default());
                }
                (Some("content_block_delta"), Some("input_json_delta")) => {
                    upstream_args.push_str(v["delta"]["partial_json"].as_str().unwrap_or_default());
                }
                (Some("message_stop"), _) => stopped = true,
                _ => {}
            }
        }
    }
    let (mut text, mut args) = (String::new(), String::new());
    for (i, chunk) in out.iter().enumerate() {
        if &chunk[..] == DONE {
            assert!(stopped, "[DONE] before message_stop");
            continue;
        }
        let json = chunk.strip_prefix(b"data: ").and_then(|c| c.strip_suffix(b"\n\n")).expect("one data event");
        assert!(!json.contains(&b'\n'), "a chunk broke its event: {i}");
        let v: Value = serde_json::from_slice(json).expect("a chunk is JSON");
        assert_eq!(v["object"], "chat.completion.chunk");
        let delta = &v["choices"][0]["delta"];
        text.push_str(delta["content"].as_str().unwrap_or_default());
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            args.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(text, upstream_text, "streamed text differs from the upstream's");
    assert_eq!(args, upstream_args, "streamed tool arguments differ from the upstream's");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode {
        b'r' => request(rest),
        b'm' => message(rest),
        b's' => stream(rest),
        other => match other % 3 {
            0 => request(rest),
            1 => message(rest),
            _ => stream(rest),
        },
    }
});
