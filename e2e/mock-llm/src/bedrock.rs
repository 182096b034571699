//! Amazon Bedrock's runtime and the STS call that gives a pod its role's
//! credentials, checking what AWS checks.
//!
//! - `POST /model/{model}/converse` and `/model/{model}/converse-stream`:
//!   the request must be signed with SigV4 for service `bedrock` and this
//!   server's region (`--bedrock-region`), by the access key of
//!   `--aws-access-key-id`/`--aws-secret-access-key` or by temporary
//!   credentials this server's STS issued (with their session token), dated
//!   within five minutes; the signature is computed again here with AWS's own
//!   `aws-sigv4` over the headers the request says it signed. A Bedrock API
//!   key (`--bedrock-api-key`) as a bearer token is accepted too. The body is
//!   checked as Converse checks it (roles, alternation, tool blocks need a
//!   `toolConfig`, no unknown fields). The stream is the binary event-stream
//!   framing (`application/vnd.amazon.eventstream`), one frame per event, with
//!   Bedrock's `p` padding field. Errors are AWS's: `{"message"}` and the
//!   type in `x-amzn-ErrorType`.
//! - `POST /` with `Action=AssumeRoleWithWebIdentity`: the token must be a JWT
//!   signed (RS256) by a key of `--aws-oidc-jwks`, for the audience
//!   `sts.amazonaws.com`, unexpired; the answer is STS's XML with temporary
//!   credentials for the role.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tenantgate_gateway::llm::mock::{OfferedTool, Plan, ToolMode, count_tokens, next_id};
use tenantgate_gateway::llm::types::Usage;

use crate::{Mock, ResetHandle, Step, byte_stream, misbehave, signing_key};

/// How far a request's date may be from now.
const SKEW: Duration = Duration::from_secs(300);
/// The audience STS wants in an EKS service account token.
const AUDIENCE: &str = "sts.amazonaws.com";

/// Temporary credentials STS issued: access key ID -> (secret, session token, expiry).
pub type Issued = HashMap<String, (String, String, SystemTime)>;

/// AWS's error answer.
fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut response = (status, axum::Json(json!({"message": message}))).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(kind) {
        response.headers_mut().insert("x-amzn-errortype", v);
    }
    response
}

fn denied(kind: &str, message: &str) -> Response {
    aws_error(StatusCode::FORBIDDEN, kind, message)
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
struct Authorization<'a> {
    key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut fields = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        fields.insert(k, v);
    }
    let mut scope = fields.get("Credential")?.split('/');
    let (key_id, date, region, service, terminator) =
        (scope.next()?, scope.next()?, scope.next()?, scope.next()?, scope.next()?);
    if terminator != "aws4_request" || scope.next().is_some() {
        return None;
    }
    Some(Authorization {
        key_id,
        date,
        region,
        service,
        signed_headers: fields.get("SignedHeaders")?.split(';').collect(),
        signature: fields.get("Signature")?,
    })
}

/// Checks the request's credentials as Bedrock does; `Some` is the refusal.
fn authenticate(mock: &Mock, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Some(denied("MissingAuthenticationTokenException", "Missing Authentication Token"));
    };
    if let Some(key) = value.strip_prefix("Bearer ") {
        return match &mock.args.bedrock_api_key {
            Some(expected) if expected == key => None,
            _ => Some(denied(
                "UnrecognizedClientException",
                "Invalid API Key format: Must start with pre-defined prefix",
            )),
        };
    }
    let Some(auth) = parse_authorization(value) else {
        return Some(denied(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
        ));
    };
    if auth.service != "bedrock" {
        return Some(denied("InvalidSignatureException", "Credential should be scoped to correct service: 'bedrock'."));
    }
    if auth.region != mock.args.bedrock_region {
        let message = format!(
            "Credential should be scoped to a valid region, not '{}'. Expected '{}'.",
            auth.region, mock.args.bedrock_region
        );
        return Some(denied("InvalidSignatureException", &message));
    }
    let amz_date = headers.get("x-amz-date").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Ok(at) = chrono::NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ") else {
        return Some(denied(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    let at = SystemTime::from(at.and_utc());
    let now = SystemTime::now();
    if at.duration_since(now).unwrap_or_default() > SKEW || now.duration_since(at).unwrap_or_default() > SKEW {
        let message = format!("Signature expired: {amz_date} is now earlier or later than 5 minutes from now.");
        return Some(denied("InvalidSignatureException", &message));
    }
    if !amz_date.starts_with(auth.date) || !auth.signed_headers.contains(&"host") {
        return Some(denied(
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP, or host is not signed.",
        ));
    }
    let token = headers.get("x-amz-security-token").and_then(|v| v.to_str().ok());
    let (secret, session) = if Some(auth.key_id) == mock.args.aws_access_key_id.as_deref() {
        (mock.args.aws_secret_access_key.clone().unwrap_or_default(), None)
    } else {
        let issued = mock.aws.lock().ok().and_then(|i| i.get(auth.key_id).cloned());
        let Some((secret, session, expires)) = issued else {
            return Some(denied(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ));
        };
        if token != Some(session.as_str()) {
            return Some(denied(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ));
        }
        if expires < now {
            return Some(denied("ExpiredTokenException", "The security token included in the request is expired"));
        }
        (secret, Some(session))
    };
    // Sign the request again, over exactly the headers it names (the signer adds
    // the date and the session token itself), at the time it claims.
    let identity: Identity = Credentials::new(auth.key_id, secret, session, None, "mock-llm").into();
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    let Ok(params) = v4::SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(auth.service)
        .time(at)
        .settings(settings)
        .build()
    else {
        return Some(aws_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerException", "signing params"));
    };
    let params = params.into();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let url = format!("http://{host}{}", uri.path_and_query().map_or("/", |p| p.as_str()));
    let signed = headers.iter().filter(|(name, _)| {
        let name = name.as_str();
        auth.signed_headers.contains(&name) && name != "x-amz-date" && name != "x-amz-security-token"
    });
    let signed = signed.filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
    let expected = SignableRequest::new("POST", url, signed, SignableBody::Bytes(body))
        .ok()
        .and_then(|request| sign(request, &params).ok())
        .map(|output| output.signature().to_owned());
    if expected.as_deref() != Some(auth.signature) {
        return Some(denied(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    None
}

/// Converse's request fields; any other is refused, as Bedrock does.
const FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
];

fn validation(message: &str) -> Response {
    aws_error(StatusCode::BAD_REQUEST, "ValidationException", message)
}

/// What Converse checks of a request before the model sees it.
fn check_request(request: &Value) -> Option<Response> {
    let Some(object) = request.as_object() else { return Some(validation("Malformed input request")) };
    if let Some(extra) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Some(validation(&format!("Malformed input request: extraneous key [{extra}] is not permitted")));
    }
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    if messages.is_empty() {
        return Some(validation("The model returned the following errors: messages: at least one message is required"));
    }
    let mut tool_blocks = false;
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if !matches!(role, "user" | "assistant") {
            return Some(validation(&format!(
                "1 validation error detected: Value '{role}' at 'messages.{}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]",
                i + 1
            )));
        }
        if i == 0 && role != "user" {
            return Some(validation(
                "A conversation must start with a user message. Try again with a conversation that starts with a user message.",
            ));
        }
        if i > 0 && messages[i - 1]["role"] == role {
            return Some(validation(
                "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.",
            ));
        }
        let content = m["content"].as_array().cloned().unwrap_or_default();
        if content.is_empty() {
            return Some(validation(&format!(
                "The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again."
            )));
        }
        tool_blocks |= content.iter().any(|b| b.get("toolUse").is_some() || b.get("toolResult").is_some());
    }
    if tool_blocks && request.get("toolConfig").is_none() {
        return Some(validation(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        ));
    }
    if request["inferenceConfig"]["maxTokens"].as_i64().is_some_and(|m| m < 1) {
        return Some(validation(
            "1 validation error detected: Value at 'inferenceConfig.maxTokens' failed to satisfy constraint: Member must have value greater than or equal to 1",
        ));
    }
    None
}

/// One event-stream frame of a ConverseStream event, with Bedrock's padding
/// field `p`: a stretch of the alphabet that varies the frame's length.
fn frame(event: &str, mut payload: Value) -> Bytes {
    const LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let n = payload.to_string().len() % 40 + 3;
    payload["p"] = json!(LETTERS[..n]);
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(":event-type", HeaderValue::String(event.to_owned().into())))
        .add_header(Header::new(":content-type", HeaderValue::String("application/json".into())))
        .add_header(Header::new(":message-type", HeaderValue::String("event".into())));
    let mut out = Vec::new();
    // A message of a few hundred bytes always fits a frame.
    let _ = aws_smithy_eventstream::frame::write_message_to(&message, &mut out);
    Bytes::from(out)
}

/// A scripted error status in AWS's words.
fn scripted_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, message) = match status.as_u16() {
        429 => ("ThrottlingException", "Too many requests, please wait before trying again."),
        503 => ("ServiceUnavailableException", "Bedrock is unable to process your request."),
        400 => ("ValidationException", "mock-llm scripted 400"),
        403 => ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
        404 => ("ResourceNotFoundException", "The provided model identifier is invalid."),
        424 => ("ModelErrorException", "The model produced an invalid response."),
        _ => ("InternalServerException", "The server encountered an internal error while processing the request."),
    };
    aws_error(status, kind, message)
}

/// `POST /model/{model}/{converse|converse-stream}`.
pub async fn converse(
    State(mock): State<Mock>,
    ConnectInfo(conn): ConnectInfo<ResetHandle>,
    Path((model, operation)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let stream = match operation.as_str() {
        "converse" => false,
        "converse-stream" => true,
        _ => return aws_error(StatusCode::NOT_FOUND, "UnknownOperationException", "Unknown operation"),
    };
    if let Some(refused) = authenticate(&mock, &uri, &headers, &body) {
        return refused;
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return aws_error(StatusCode::BAD_REQUEST, "SerializationException", "Malformed input request"),
    };
    if let Some(refused) = check_request(&request) {
        return refused;
    }
    let mut step = mock.next_step(&model, &headers, Some(request.clone()));
    if let Some(status) = step.status.take() {
        if let Some(response) =
            misbehave(&Step { status: None, ..step.clone() }, mock.args.latency_ms, &conn, stream).await
        {
            return response;
        }
        return scripted_error(status);
    }
    if let Some(response) = misbehave(&step, mock.args.latency_ms, &conn, stream).await {
        return response;
    }
    let mut plan = plan(&mock, &request, &step);
    plan.usage = plan.usage.with_cached(step.cached_tokens.unwrap_or(0));
    let stop_reason = match plan.finish_reason {
        "tool_calls" => "tool_use",
        "length" => "max_tokens",
        _ => "end_turn",
    };
    // Converse's inputTokens leave out the cache reads.
    let cached = plan.usage.cached_tokens();
    let usage = json!({"inputTokens": plan.usage.prompt_tokens - cached, "outputTokens": plan.usage.completion_tokens,
        "totalTokens": plan.usage.total_tokens, "cacheReadInputTokens": cached, "cacheWriteInputTokens": 0});
    let tool_use = plan
        .tool_call
        .as_ref()
        .map(|(id, name, arguments)| (id.replace("call_", "tooluse_"), name.clone(), arguments.clone()));
    if !stream {
        let mut content: Vec<Value> = plan.text().map(|t| json!({"text": t})).into_iter().collect();
        if let Some((id, name, arguments)) = &tool_use {
            let input: Value = serde_json::from_str(arguments).unwrap_or_default();
            content.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
        }
        return axum::Json(json!({"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop_reason, "usage": usage, "metrics": {"latencyMs": 1}}))
        .into_response();
    }
    let mut frames = vec![frame("messageStart", json!({"role": "assistant"}))];
    let mut index = 0;
    if let Some(words) = &plan.content {
        for w in words {
            frames.push(frame("contentBlockDelta", json!({"contentBlockIndex": index, "delta": {"text": w}})));
        }
        frames.push(frame("contentBlockStop", json!({"contentBlockIndex": index})));
        index += 1;
    }
    if let Some((id, name, arguments)) = &tool_use {
        frames.push(frame(
            "contentBlockStart",
            json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
        ));
        frames.push(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": arguments}}}),
        ));
        frames.push(frame("contentBlockStop", json!({"contentBlockIndex": index})));
    }
    frames.push(frame("messageStop", json!({"stopReason": stop_reason})));
    frames.push(frame("metadata", json!({"usage": usage, "metrics": {"latencyMs": 1}})));
    let interval = Duration::from_millis(step.chunk_interval_ms.unwrap_or(mock.args.chunk_interval_ms));
    byte_stream(frames, interval, step.fail_after_chunks, "application/vnd.amazon.eventstream")
}

/// The mock model's answer to a Converse request (or the step's script).
fn plan(mock: &Mock, request: &Value, step: &Step) -> Plan {
    if let Some(reply) = &step.reply {
        let words = reply.split(' ').enumerate().map(|(i, w)| if i == 0 { w.to_owned() } else { format!(" {w}") });
        let usage = Usage::new(1, 1);
        return Plan { content: Some(words.map(Into::into).collect()), tool_call: None, usage, finish_reason: "stop" };
    }
    if let Some(name) = &step.tool_call {
        let arguments = step.tool_arguments.as_ref().map_or_else(|| "{}".to_owned(), Value::to_string);
        let tool_call = Some(("call_scripted".to_owned(), name.clone(), arguments));
        return Plan { content: None, tool_call, usage: Usage::new(1, 1), finish_reason: "tool_calls" };
    }
    let tools: Vec<OfferedTool<'_>> = request["toolConfig"]["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let spec = t.get("toolSpec")?;
            Some(OfferedTool {
                name: spec.get("name")?.as_str()?,
                schema: spec.get("inputSchema").and_then(|s| s.get("json")),
            })
        })
        .collect();
    let choice = &request["toolConfig"]["toolChoice"];
    let mode = if choice.get("any").is_some() {
        ToolMode::Required
    } else {
        choice["tool"]["name"].as_str().map_or(ToolMode::Auto, ToolMode::Named)
    };
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or_default();
    let results: Vec<String> = last["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("toolResult"))
        .flat_map(|r| r["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["text"].as_str().map(str::to_owned))
        .collect();
    let tool_results = last["content"].as_array().is_some_and(|c| c.iter().any(|b| b.get("toolResult").is_some()));
    let user_spoke_last = last["role"] == "user" && !tool_results;
    let results = tool_results.then(|| results.join("\n"));
    let text_tokens = |blocks: &Value| -> u64 {
        blocks.as_array().into_iter().flatten().map(|b| b["text"].as_str().map_or(0, count_tokens)).sum()
    };
    let prompt = text_tokens(&request["system"]) + messages.iter().map(|m| 4 + text_tokens(&m["content"])).sum::<u64>();
    let max_tokens = request["inferenceConfig"]["maxTokens"].as_u64().map(|m| m as u32);
    Plan::new(&tools, mode, user_spoke_last, results.as_deref(), prompt, max_tokens, mock.args.tokens)
}

/// What a web identity token claims.
#[derive(Debug, Deserialize)]
struct WebIdentityClaims {
    sub: String,
}

/// STS's XML error.
fn sts_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        next_id("")
    );
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

/// `POST /` `Action=AssumeRoleWithWebIdentity` (STS's query API).
pub async fn sts(State(mock): State<Mock>, axum::Form(form): axum::Form<HashMap<String, String>>) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if get("Action") != "AssumeRoleWithWebIdentity" || get("Version") != "2011-06-15" {
        return sts_error(StatusCode::BAD_REQUEST, "InvalidAction", "Could not find operation for this request");
    }
    let role = get("RoleArn");
    let role_ok = role.starts_with("arn:aws:iam::") && role.contains(":role/") && role.len() >= 20;
    let session = get("RoleSessionName");
    let session_ok = (2..=64).contains(&session.len())
        && session.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
    if !role_ok || !session_ok {
        return sts_error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "1 validation error detected: RoleArn or RoleSessionName failed to satisfy constraint",
        );
    }
    let token = get("WebIdentityToken");
    let key = signing_key(mock.args.aws_oidc_jwks.as_deref(), token);
    let Some(key) = key else {
        return sts_error(
            StatusCode::BAD_REQUEST,
            "InvalidIdentityToken",
            "No OpenIDConnect provider found in your account for this token",
        );
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    let claims = match jsonwebtoken::decode::<WebIdentityClaims>(token, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
            return sts_error(StatusCode::BAD_REQUEST, "ExpiredTokenException", "Token expired");
        }
        Err(_) => {
            return sts_error(StatusCode::BAD_REQUEST, "InvalidIdentityToken", "Incorrect token audience or signature");
        }
    };
    let seconds = get("DurationSeconds").parse::<u64>().unwrap_or(3600).clamp(900, 43_200);
    let expires = SystemTime::now() + Duration::from_secs(seconds);
    let key_id = format!("ASIA{}", next_id("").to_uppercase());
    let secret = next_id("mock-secret-");
    let session_token = next_id("mock-session-");
    if let Ok(mut issued) = mock.aws.lock() {
        issued.insert(key_id.clone(), (secret.clone(), session_token.clone(), expires));
    }
    if let Ok(mut s) = mock.scripts.lock() {
        *s.counts.entry("aws-sts".into()).or_default() += 1;
    }
    let expiration = chrono::DateTime::<chrono::Utc>::from(expires).format("%Y-%m-%dT%H:%M:%SZ");
    let body = format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>{sub}</SubjectFromWebIdentityToken>
    <Audience>{AUDIENCE}</Audience>
    <AssumedRoleUser><Arn>{role}/{session}</Arn><AssumedRoleId>AROAMOCK:{session}</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>{session_token}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>{key_id}</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>{id}</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>",
        sub = claims.sub,
        id = next_id(""),
    );
    ([(header::CONTENT_TYPE, "text/xml")], body).into_response()
}
