//! The server-side tool loop of a chat request that asks for the tenant's
//! MCP tools (`tenantgate.mcp`, see `docs/mcp-tools-in-chat.md`).
//!
//! Each model turn is an ordinary turn of the chat path (admitted under the
//! limits, routed with retry and failover, one usage row and one `chat` audit
//! event); tool-calling turns run non-streaming, and the tool calls they make
//! run through the MCP hub ([`ChatTools::run_calls`]). The loop ends when the
//! model answers without tool calls, or after `maxSteps` tool-calling turns
//! with one last turn under `tool_choice: "none"`, which streams from the
//! provider when the client asked for a stream.

use std::time::Instant;

use axum::http::HeaderValue;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};

use super::chat::Turn;
use crate::error::AppError;
use crate::llm::Reply;
use crate::llm::sse::{DONE, data_event};
use crate::llm::types::{ChatRequest, Message};
use crate::mcp::chat::ChatTools;
use crate::policy::audit;
use crate::storage::ChatRecord;

/// Model turns made (tool-calling turns plus the answer).
pub const TURNS_HEADER: &str = "tenantgate-mcp-turns";
/// Tool-calling model turns made (at most `maxSteps`).
pub const STEPS_HEADER: &str = "tenantgate-mcp-steps";
/// Tool calls run.
pub const CALLS_HEADER: &str = "tenantgate-mcp-tool-calls";
/// `answered` (the model answered by itself) or `max_steps` (the step limit
/// was reached and the last turn ran with `tool_choice: "none"`).
pub const FINISH_HEADER: &str = "tenantgate-mcp-finish";

/// How the loop went, for the response headers.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    turns: u32,
    steps: u32,
    calls: usize,
    limit_reached: bool,
}

/// Runs the loop for `request` (policies applied; the request began at `started`) and answers the client.
/// `record` always holds the current turn's record: a finished tool-calling
/// turn is recorded (status 200) and replaced by the next turn's, so the
/// handler's final status lands on the last turn.
pub(super) async fn run(
    turn: &Turn<'_>,
    tools: ChatTools,
    mut request: ChatRequest,
    record: &mut ChatRecord,
    started: Instant,
) -> Result<Response, AppError> {
    let stream = request.stream;
    let stream_options = request.stream_options.take();
    let include_usage = stream_options.as_ref().is_some_and(|o| o.include_usage);
    if !tools.offered().is_empty() {
        request.tools = Some(tools.offered().to_vec());
    }
    request.stream = false;
    let mut progress = Progress::default();
    // The gateway's added latency of a turn: from the request for the first, from the turn's start after.
    let mut since = started;
    loop {
        progress.turns += 1;
        progress.limit_reached = progress.steps == tools.max_steps;
        if progress.limit_reached {
            request.tool_choice = Some(json!("none"));
            request.stream = stream;
            request.stream_options.clone_from(&stream_options);
        }
        let mut dispatched = match turn.dispatch(&request, record, since).await? {
            Ok(d) => d,
            Err(response) => return Ok(progress.headers(response)),
        };
        let calling = match &dispatched.reply {
            Reply::Complete { body, .. } if !progress.limit_reached => tool_calls(body),
            _ => None,
        };
        let Some(message) = calling else {
            let response = turn.respond(dispatched, record, stream, include_usage);
            return Ok(progress.headers(response));
        };
        if let Reply::Complete { usage, .. } = &dispatched.reply {
            turn.count(*usage, record, &mut dispatched.admission);
        }
        drop(dispatched);
        record.status(200, None);
        let calls = message.tool_calls.clone().unwrap_or_default();
        progress.steps += 1;
        progress.calls += calls.len();
        request.messages.push(message);
        let results = tools.run_calls(turn.state.tenant(), &turn.caller.0, turn.request_id, &calls).await;
        request.messages.extend(results);
        // Recorded now (dropped), with status 200: the next turn gets its own row.
        *record = next_record(turn);
        since = Instant::now();
    }
}

/// The record of a turn after the first: same request id, model and policy
/// decision (the prompt is recorded with the first turn only).
fn next_record(turn: &Turn<'_>) -> ChatRecord {
    let runtime = turn.state.runtime();
    let mut record = ChatRecord::start(
        &turn.state.storage().recorder,
        &runtime.config.tenant.name,
        &turn.caller.0,
        turn.request_id.map(str::to_owned),
        false,
    );
    record.model(&turn.model);
    record.policy(audit::decision(&turn.decision, None::<&()>));
    record
}

/// The assistant message of a completion when it calls tools.
fn tool_calls(body: &[u8]) -> Option<Message> {
    #[derive(serde::Deserialize)]
    struct Completion {
        choices: Vec<Choice>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        message: Message,
    }
    let completion: Completion = serde_json::from_slice(body).ok()?;
    let message = completion.choices.into_iter().next()?.message;
    message.tool_calls.as_ref().is_some_and(|c| !c.is_empty()).then_some(message)
}

impl Progress {
    fn headers(self, mut response: Response) -> Response {
        let h = response.headers_mut();
        h.insert(TURNS_HEADER, HeaderValue::from(self.turns));
        h.insert(STEPS_HEADER, HeaderValue::from(self.steps));
        h.insert(CALLS_HEADER, HeaderValue::from(self.calls));
        let finish = if self.limit_reached { "max_steps" } else { "answered" };
        h.insert(FINISH_HEADER, HeaderValue::from_static(finish));
        response
    }
}

/// A whole `chat.completion` as the `chat.completion.chunk` events a stream
/// of it would have carried (role, content, finish reason, usage when asked
/// for, `[DONE]`): the tool loop's answer to a client that asked for a stream
/// when the answer came from a non-streaming turn.
pub(super) fn completion_events(body: &[u8], include_usage: bool) -> Bytes {
    let Ok(completion) = serde_json::from_slice::<Value>(body) else {
        let error = AppError::BadGateway("the provider's answer was not a chat completion".into());
        return data_event(&error.to_json());
    };
    let chunk = |choices: Value| {
        let mut v = json!({
            "id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"], "choices": choices,
        });
        if let Some(fp) = completion.get("system_fingerprint") {
            v["system_fingerprint"] = fp.clone();
        }
        v
    };
    let mut out = BytesMut::new();
    let mut push = |v: Value| out.extend_from_slice(&data_event(v.to_string().as_bytes()));
    for (i, choice) in completion["choices"].as_array().into_iter().flatten().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(i));
        let message = &choice["message"];
        push(chunk(json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])));
        if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            push(chunk(json!([{"index": index, "delta": {"content": text}, "finish_reason": null}])));
        }
        if let Some(refusal) = message.get("refusal").filter(|r| !r.is_null()) {
            push(chunk(json!([{"index": index, "delta": {"refusal": refusal}, "finish_reason": null}])));
        }
        push(chunk(json!([{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}])));
    }
    if include_usage && let Some(usage) = completion.get("usage") {
        let mut v = chunk(json!([]));
        v["usage"] = usage.clone();
        push(v);
    }
    out.extend_from_slice(DONE);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::sse::Decoder;

    #[test]
    fn a_completion_streams_as_its_chunks() {
        let body = json!({"id": "c1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "echo: hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
        let events = completion_events(body.to_string().as_bytes(), true);
        let mut d = Decoder::default();
        d.push(&events);
        let mut data = Vec::new();
        while let Some(e) = d.next_event() {
            data.push(e.data);
        }
        assert_eq!(data.len(), 5, "{data:?}");
        let parsed: Vec<Value> = data[..4].iter().map(|d| serde_json::from_str(d).expect("chunk")).collect();
        assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(parsed[1]["choices"][0]["delta"]["content"], "echo: hi");
        assert_eq!(parsed[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(parsed[3]["usage"]["total_tokens"], 5);
        assert!(parsed.iter().all(|c| c["id"] == "c1" && c["object"] == "chat.completion.chunk"));
        assert_eq!(data[4], "[DONE]");
        let without = completion_events(body.to_string().as_bytes(), false);
        assert!(!std::str::from_utf8(&without).expect("utf8").contains("usage"));
    }

    #[test]
    fn only_completions_with_tool_calls_continue_the_loop() {
        let calling = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "echo_echo", "arguments": "{\"text\":\"x\"}"}}]}}]});
        let message = tool_calls(calling.to_string().as_bytes()).expect("tool calls");
        assert_eq!(message.tool_calls.expect("calls")[0].function.name, "echo_echo");
        let answer = json!({"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi", "tool_calls": []}}]});
        assert!(tool_calls(answer.to_string().as_bytes()).is_none());
        assert!(tool_calls(b"not json").is_none());
    }
}
