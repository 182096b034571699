//! The security suite: one table of hostile inputs, each with the outcome it
//! must get, run against the gateway as a process (and, for config-level
//! inputs, through the renderer every gateway and the operator use). Every
//! row is checked and reported on its own line; the test fails listing every
//! row that did not get its outcome. Last, everything the suite produced
//! (gateway log, /metrics, every error body, the rendered config) is searched
//! for the secrets it planted.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{Value, json};
use tenantgate_crds::manifests::ManifestSet;
use tenantgate_crds::render::{RenderMode, RenderOptions};

/// The upstream API key the tenant's Secret holds (planted: must never come back out).
const PLANTED_UPSTREAM_KEY: &str = "sk-planted-upstream-5a0d1e7c9b";
/// The request timeout the suite's gateway runs with (slow bodies are cut at it).
const REQUEST_TIMEOUT_SECS: u64 = 2;
/// The header read timeout the suite's gateway runs with (slow headers are cut at it).
const HEADER_READ_TIMEOUT_SECS: u64 = 2;

/// Who a request claims to be.
#[derive(Clone, Copy, Debug)]
enum Cred {
    /// No Authorization header.
    None,
    /// A valid token of the tenant.
    Valid,
    /// A valid token with the tenant's admin role.
    Admin,
    /// A valid token of another subject of the tenant (MCP session theft).
    OtherSubject,
    /// `alg: none`, no signature.
    AlgNone,
    /// HS256, keyed with the tenant's public JWKS (algorithm confusion).
    Hs256WithPublicKey,
    /// `exp` two minutes ago.
    Expired,
    /// `nbf` ten minutes ahead.
    NotYetValid,
    /// Another issuer.
    WrongIssuer,
    /// Another audience.
    WrongAudience,
    /// Another tenant's token: its own IdP key and issuer, the same `kid`.
    OtherTenant,
    /// An API key revoked through the admin API.
    RevokedApiKey,
    /// An API key past its expiry.
    ExpiredApiKey,
    /// A well-formed API key that was never issued.
    UnknownApiKey,
}

/// What is sent.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// `POST /v1/chat/completions` with this JSON body.
    Chat(Cred, &'static str),
    /// `GET path`.
    Get(Cred, &'static str),
    /// `DELETE path`.
    Delete(Cred, &'static str),
    /// A request written byte for byte over TCP.
    Raw(RawRequest),
    /// `POST /mcp` with `initialize`, an `Origin`, and a session id of someone.
    Mcp { cred: Cred, origin: Option<&'static str>, session: Session },
    /// The suite's manifests with `from` replaced by `to`, rendered; with
    /// `allow_local` false the tenant drops `allowLocalUpstreams` (and its own
    /// loopback providers move to remote names, out of the row's way).
    Render { from: &'static str, to: &'static str, allow_local: bool },
    /// A prompt-injection attack of the labelled corpus, in this carrier.
    Injection(Carrier),
}

#[derive(Clone, Copy, Debug)]
enum RawRequest {
    /// A 600 KiB header.
    HugeHeader,
    /// 200 headers.
    ManyHeaders,
    /// A 9 MiB body (the limit is 8 MiB).
    HugeBody,
    /// A body that trickles in one byte every 300 ms.
    SlowBody,
    /// Headers that trickle in one byte every 300 ms.
    SlowHeaders,
    /// A request line with a CR/LF-laden path.
    CrlfInPath,
}

/// Writes `bytes` one every 300 ms until the server answers or closes, or
/// the suite's timeouts are well past.
fn trickle(stream: &mut TcpStream, bytes: &[u8], started: Instant) -> std::io::Result<()> {
    for &b in bytes {
        if started.elapsed() > Duration::from_secs(REQUEST_TIMEOUT_SECS.max(HEADER_READ_TIMEOUT_SECS) + 4) {
            break;
        }
        if stream.write_all(&[b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        stream.set_nonblocking(true)?;
        let mut peek = [0u8; 1];
        let answered_or_closed = stream.peek(&mut peek).is_ok();
        stream.set_nonblocking(false)?;
        if answered_or_closed {
            break;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Session {
    None,
    /// The session a valid token opened, presented by [`Cred::OtherSubject`] or anyone.
    Theirs,
    /// A made-up id.
    Forged,
}

/// Where an attack rides in a chat request.
#[derive(Clone, Copy, Debug)]
enum Carrier {
    UserText,
    ContentParts,
    ToolResult,
}

/// What must happen.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// This HTTP status, with this text in the error message ("" for any).
    Status(u16, &'static str),
    /// The connection is refused or closed without a 2xx.
    NotServed,
    /// The render is refused naming this text.
    Refused(&'static str),
    /// The render succeeds.
    Rendered,
}

struct Case {
    name: &'static str,
    probe: Probe,
    expect: Expect,
}

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;

const CASES: &[Case] = &[
    // Tokens.
    Case { name: "valid token (control)", probe: Probe::Chat(Cred::Valid, CHAT), expect: Expect::Status(200, "") },
    Case {
        name: "no credentials",
        probe: Probe::Chat(Cred::None, CHAT),
        expect: Expect::Status(401, "missing bearer token"),
    },
    Case {
        name: "JWT alg=none",
        probe: Probe::Chat(Cred::AlgNone, CHAT),
        expect: Expect::Status(401, "algorithm is not allowed"),
    },
    Case {
        name: "JWT HS256 signed with the RSA public key",
        probe: Probe::Chat(Cred::Hs256WithPublicKey, CHAT),
        expect: Expect::Status(401, "algorithm is not allowed"),
    },
    Case { name: "JWT expired", probe: Probe::Chat(Cred::Expired, CHAT), expect: Expect::Status(401, "expired") },
    Case {
        name: "JWT not yet valid",
        probe: Probe::Chat(Cred::NotYetValid, CHAT),
        expect: Expect::Status(401, "not valid yet"),
    },
    Case {
        name: "JWT wrong issuer",
        probe: Probe::Chat(Cred::WrongIssuer, CHAT),
        expect: Expect::Status(401, "wrong issuer"),
    },
    Case {
        name: "JWT wrong audience",
        probe: Probe::Chat(Cred::WrongAudience, CHAT),
        expect: Expect::Status(401, "wrong audience"),
    },
    Case {
        name: "another tenant's token",
        probe: Probe::Chat(Cred::OtherTenant, CHAT),
        expect: Expect::Status(401, "signature does not verify"),
    },
    Case {
        name: "revoked API key",
        probe: Probe::Chat(Cred::RevokedApiKey, CHAT),
        expect: Expect::Status(401, "revoked"),
    },
    Case {
        name: "expired API key",
        probe: Probe::Chat(Cred::ExpiredApiKey, CHAT),
        expect: Expect::Status(401, "expired"),
    },
    Case {
        name: "unknown API key",
        probe: Probe::Chat(Cred::UnknownApiKey, CHAT),
        expect: Expect::Status(401, "unknown key"),
    },
    Case {
        name: "admin API with a non-admin token",
        probe: Probe::Get(Cred::Valid, "/admin/v1/audit"),
        expect: Expect::Status(403, ""),
    },
    // Sizes and time.
    Case { name: "oversized header (600 KiB)", probe: Probe::Raw(RawRequest::HugeHeader), expect: Expect::NotServed },
    Case { name: "200 headers", probe: Probe::Raw(RawRequest::ManyHeaders), expect: Expect::NotServed },
    Case { name: "oversized body (9 MiB)", probe: Probe::Raw(RawRequest::HugeBody), expect: Expect::Status(413, "") },
    Case {
        name: "slow body (slowloris) cut at the request timeout",
        probe: Probe::Raw(RawRequest::SlowBody),
        expect: Expect::Status(504, ""),
    },
    Case {
        name: "slow headers (slowloris) cut at the header read timeout",
        probe: Probe::Raw(RawRequest::SlowHeaders),
        expect: Expect::NotServed,
    },
    // Traversal and injection in strings that reach a URL or a header.
    Case {
        name: "model name with path traversal",
        probe: Probe::Chat(
            Cred::Valid,
            r#"{"model":"../../admin/v1/audit","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        expect: Expect::Status(404, "../../admin/v1/audit"),
    },
    Case {
        name: "model name with CR/LF",
        probe: Probe::Chat(
            Cred::Valid,
            r#"{"model":"chat\r\nX-Injected: 1","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        expect: Expect::Status(404, ""),
    },
    Case {
        name: "encoded traversal in /v1/models/{model}",
        probe: Probe::Get(Cred::Valid, "/v1/models/..%2F..%2Fv1%2Fmodels"),
        expect: Expect::Status(404, ""),
    },
    Case {
        name: "encoded traversal in an API key id",
        probe: Probe::Delete(Cred::Admin, "/admin/v1/api-keys/..%2F..%2Fusage"),
        expect: Expect::Status(404, ""),
    },
    Case { name: "CR/LF in the request path", probe: Probe::Raw(RawRequest::CrlfInPath), expect: Expect::NotServed },
    Case {
        name: "provider header value with CR/LF",
        probe: Probe::Render {
            from: "      apiKeySecretRef: { name: upstream-key, key: apiKey }\n    - name: claude",
            to: "      apiKeySecretRef: { name: upstream-key, key: apiKey }\n      headers: { X-Team: \"a\\r\\nX-Injected: 1\" }\n    - name: claude",
            allow_local: true,
        },
        expect: Expect::Refused("spec.providers[0].headers.X-Team: must not contain control characters"),
    },
    Case {
        name: "provider name with path traversal",
        probe: Probe::Render { from: "    - name: local\n", to: "    - name: ../local\n", allow_local: true },
        expect: Expect::Refused("spec.providers[3].name"),
    },
    Case {
        name: "McpConnection name with CR/LF",
        probe: Probe::Render {
            from: "metadata: { name: tools, namespace: tg-test }",
            to: "metadata: { name: \"tools\\r\\nx\", namespace: tg-test }",
            allow_local: true,
        },
        expect: Expect::Refused("metadata.name"),
    },
    Case {
        name: "McpConnection tool prefix with path traversal",
        probe: Probe::Render {
            from: "  tools: { prefix: tools }",
            to: "  tools: { prefix: \"../x\" }",
            allow_local: true,
        },
        expect: Expect::Refused("prefix"),
    },
    // SSRF: link-local, metadata and loopback upstreams need the tenant's explicit allow.
    Case {
        name: "the fixture's 127.0.0.1 providers without the explicit allow",
        probe: Probe::Render {
            from: "  network:\n    allowLocalUpstreams: true\n",
            to: "  network:\n    allowLocalUpstreams: false\n",
            allow_local: true,
        },
        expect: Expect::Refused("points at a loopback address; set spec.network.allowLocalUpstreams"),
    },
    Case {
        name: "provider baseUrl 169.254.169.254",
        probe: Probe::Render {
            from: "      baseUrl: ${DEAD}/v1",
            to: "      baseUrl: http://169.254.169.254/latest/v1",
            allow_local: false,
        },
        expect: Expect::Refused("link-local"),
    },
    Case {
        name: "provider baseUrl [fe80::1]",
        probe: Probe::Render {
            from: "      baseUrl: ${DEAD}/v1",
            to: "      baseUrl: http://[fe80::1]/v1",
            allow_local: false,
        },
        expect: Expect::Refused("link-local"),
    },
    Case {
        name: "provider baseUrl metadata.google.internal",
        probe: Probe::Render {
            from: "      baseUrl: ${DEAD}/v1",
            to: "      baseUrl: http://metadata.google.internal/v1",
            allow_local: false,
        },
        expect: Expect::Refused("cloud metadata"),
    },
    Case {
        name: "McpConnection url 169.254.169.254",
        probe: Probe::Render {
            from: "  url: http://127.0.0.1:9/mcp",
            to: "  url: http://169.254.169.254/mcp",
            allow_local: false,
        },
        expect: Expect::Refused("spec.url"),
    },
    Case {
        name: "McpConnection url [fe80::a9fe:a9fe]",
        probe: Probe::Render {
            from: "  url: http://127.0.0.1:9/mcp",
            to: "  url: http://[fe80::a9fe:a9fe]/mcp",
            allow_local: false,
        },
        expect: Expect::Refused("link-local"),
    },
    Case {
        name: "McpConnection url on loopback",
        probe: Probe::Render {
            from: "  url: http://127.0.0.1:9/mcp",
            to: "  url: http://127.0.0.1:9/mcp",
            allow_local: false,
        },
        expect: Expect::Refused("loopback"),
    },
    Case {
        name: "McpConnection url with credentials",
        probe: Probe::Render {
            from: "  url: http://127.0.0.1:9/mcp",
            to: "  url: http://user:pass@mcp.example/mcp",
            allow_local: true,
        },
        expect: Expect::Refused("credentials"),
    },
    Case {
        name: "loopback allowed explicitly (control)",
        probe: Probe::Render {
            from: "  url: http://127.0.0.1:9/mcp",
            to: "  url: http://127.0.0.1:9/mcp",
            allow_local: true,
        },
        expect: Expect::Rendered,
    },
    // MCP transport.
    Case {
        name: "MCP initialize (control)",
        probe: Probe::Mcp { cred: Cred::Valid, origin: None, session: Session::None },
        expect: Expect::Status(200, ""),
    },
    Case {
        name: "MCP with a foreign Origin",
        probe: Probe::Mcp { cred: Cred::Valid, origin: Some("https://evil.example"), session: Session::None },
        expect: Expect::Status(403, "Origin https://evil.example is not allowed"),
    },
    Case {
        name: "MCP with Origin null",
        probe: Probe::Mcp { cred: Cred::Valid, origin: Some("null"), session: Session::None },
        expect: Expect::Status(403, "not allowed"),
    },
    Case {
        name: "MCP without credentials",
        probe: Probe::Mcp { cred: Cred::None, origin: None, session: Session::None },
        expect: Expect::Status(401, "missing bearer token"),
    },
    Case {
        name: "MCP with an expired token",
        probe: Probe::Mcp { cred: Cred::Expired, origin: None, session: Session::None },
        expect: Expect::Status(401, "expired"),
    },
    Case {
        name: "MCP with another subject's session id",
        probe: Probe::Mcp { cred: Cred::OtherSubject, origin: None, session: Session::Theirs },
        expect: Expect::Status(404, "unknown MCP session"),
    },
    Case {
        name: "MCP with a forged session id",
        probe: Probe::Mcp { cred: Cred::Valid, origin: None, session: Session::Forged },
        expect: Expect::Status(404, "unknown MCP session"),
    },
    // Prompt-guard bypass attempts: every attack of the labelled corpus the
    // detector catches must be caught whichever message carries it.
    Case {
        name: "injection corpus as user text",
        probe: Probe::Injection(Carrier::UserText),
        expect: Expect::Status(400, ""),
    },
    Case {
        name: "injection corpus in content parts",
        probe: Probe::Injection(Carrier::ContentParts),
        expect: Expect::Status(400, ""),
    },
    Case {
        name: "injection corpus in a tool result",
        probe: Probe::Injection(Carrier::ToolResult),
        expect: Expect::Status(400, ""),
    },
];

/// What the suite's probes need and what they produced.
struct Suite {
    upstream: Upstream,
    gw: Gateway,
    admin: String,
    revoked_key: String,
    expired_key: String,
    mcp_session: String,
    /// Every response body the probes got, for the final secrets search.
    bodies: Vec<String>,
    /// Planted secrets: the upstream key, the API keys, the tokens used.
    planted: Vec<String>,
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims() -> Value {
    json!({"iss": "https://issuer.test", "aud": "tenantgate", "sub": "tester", "exp": now() + 600, "roles": ["dev"]})
}

fn hs256(key: &[u8], claims: &Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("quickstart-dev".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key)).expect("HS256")
}

impl Suite {
    fn credential(&self, cred: Cred) -> Option<String> {
        Some(match cred {
            Cred::None => return None,
            Cred::Valid => token(json!({})),
            Cred::Admin => self.admin.clone(),
            Cred::OtherSubject => token(json!({"sub": "mallory"})),
            Cred::AlgNone => format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims())),
            Cred::Hs256WithPublicKey => hs256(quickstart_jwks().as_bytes(), &claims()),
            Cred::Expired => token(json!({"exp": now() - 120})),
            Cred::NotYetValid => token(json!({"nbf": now() + 600})),
            Cred::WrongIssuer => token(json!({"iss": "https://evil.test"})),
            Cred::WrongAudience => token(json!({"aud": "someone-else"})),
            Cred::OtherTenant => sign(
                json!({"iss": "https://issuer.test", "sub": "their-user"}),
                "gateway/tests/fixtures/foreign-signing-key.pem",
                Some("quickstart-dev"),
            ),
            Cred::RevokedApiKey => self.revoked_key.clone(),
            Cred::ExpiredApiKey => self.expired_key.clone(),
            Cred::UnknownApiKey => "tg_0123456789ab_not-a-real-secret-at-all".into(),
        })
    }

    async fn run(&mut self, case: &Case) -> Result<(), String> {
        match (case.probe, case.expect) {
            (Probe::Chat(cred, body), Expect::Status(status, text)) => {
                let token = self.credential(cred);
                let r = self.gw.post_raw("/v1/chat/completions", body, token.as_deref()).await;
                self.check_response(r, status, text).await
            }
            (Probe::Get(cred, path) | Probe::Delete(cred, path), Expect::Status(status, text)) => {
                let method =
                    if matches!(case.probe, Probe::Get(..)) { reqwest::Method::GET } else { reqwest::Method::DELETE };
                let mut r = self.gw.client.request(method, format!("{}{path}", self.gw.url));
                if let Some(t) = self.credential(cred) {
                    r = r.bearer_auth(t);
                }
                let r = r.send().await.map_err(|e| e.to_string())?;
                self.check_response(r, status, text).await
            }
            (Probe::Raw(raw), expect) => self.raw(raw, expect),
            (Probe::Mcp { cred, origin, session }, Expect::Status(status, text)) => {
                let mut r = self
                    .gw
                    .client
                    .post(format!("{}/mcp", self.gw.url))
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .body(INITIALIZE);
                if let Some(t) = self.credential(cred) {
                    r = r.bearer_auth(t);
                }
                if let Some(o) = origin {
                    r = r.header("origin", o);
                }
                match session {
                    Session::None => {}
                    Session::Theirs => r = r.header("mcp-session-id", &self.mcp_session),
                    Session::Forged => r = r.header("mcp-session-id", "00000000-0000-4000-8000-000000000000"),
                }
                let r = r.send().await.map_err(|e| e.to_string())?;
                self.check_response(r, status, text).await
            }
            (Probe::Render { from, to, allow_local }, expect) => {
                render_case(&self.upstream.url, from, to, allow_local, expect)
            }
            (Probe::Injection(carrier), Expect::Status(status, _)) => self.injection(carrier, status).await,
            (probe, expect) => Err(format!("the table pairs {probe:?} with {expect:?}, which the suite cannot check")),
        }
    }

    async fn check_response(&mut self, r: reqwest::Response, status: u16, text: &str) -> Result<(), String> {
        let got = r.status().as_u16();
        if r.headers().contains_key("x-injected") {
            return Err("a response header was injected".into());
        }
        let body = r.text().await.map_err(|e| e.to_string())?;
        self.bodies.push(body.clone());
        if got != status {
            return Err(format!("status {got}, expected {status}: {body}"));
        }
        if !text.is_empty() && !body.contains(text) {
            return Err(format!("the body does not say {text:?}: {body}"));
        }
        if got >= 400 && !body.trim_start().starts_with('{') {
            return Err(format!("the error body is not JSON: {body}"));
        }
        Ok(())
    }

    fn raw(&mut self, raw: RawRequest, expect: Expect) -> Result<(), String> {
        let host = self.gw.url.trim_start_matches("http://").to_string();
        let token = token(json!({}));
        let mut stream = TcpStream::connect(&host).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(REQUEST_TIMEOUT_SECS + 8))).map_err(|e| e.to_string())?;
        let head = |extra: &str, length: usize| {
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
            )
        };
        let started = Instant::now();
        // Writes may fail once the server answers and closes: that is an answer too.
        let _ = match raw {
            RawRequest::HugeHeader => stream.write_all(head(&format!("X-Big: {}\r\n", "a".repeat(600 * 1024)), 0).as_bytes()),
            RawRequest::ManyHeaders => {
                let extra: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
                stream.write_all(head(&extra, 0).as_bytes())
            }
            RawRequest::HugeBody => {
                let size = 9 * 1024 * 1024;
                stream.write_all(head("", size).as_bytes()).and_then(|()| stream.write_all(&vec![b' '; size]))
            }
            RawRequest::SlowBody => {
                stream.write_all(head("", CHAT.len()).as_bytes()).and_then(|()| trickle(&mut stream, CHAT.as_bytes(), started))
            }
            RawRequest::SlowHeaders => trickle(&mut stream, head("", CHAT.len()).as_bytes(), started),
            RawRequest::CrlfInPath => stream.write_all(
                format!("GET /v1/models/chat\r\nX-Injected: 1\r\n HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
            ),
        };
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response).into_owned();
        let status: u16 = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        self.bodies.push(text.clone());
        let first_line = text.lines().next().unwrap_or("(connection closed)").to_string();
        match expect {
            Expect::NotServed if (200..300).contains(&status) => Err(format!("served: {first_line}")),
            Expect::NotServed if text.to_ascii_lowercase().contains("x-injected") => Err("header injected".into()),
            Expect::NotServed
                if matches!(raw, RawRequest::SlowHeaders)
                    && started.elapsed() > Duration::from_secs(HEADER_READ_TIMEOUT_SECS + 3) =>
            {
                Err(format!("the slow headers were cut only after {:?}", started.elapsed()))
            }
            Expect::NotServed => Ok(()),
            Expect::Status(want, _) if status != want => Err(format!("got {first_line:?}, expected {want}")),
            Expect::Status(504, _) if started.elapsed() > Duration::from_secs(REQUEST_TIMEOUT_SECS + 3) => {
                Err(format!("the slow body was cut only after {:?}", started.elapsed()))
            }
            Expect::Status(..) => Ok(()),
            other => Err(format!("a raw request cannot expect {other:?}")),
        }
    }

    async fn injection(&mut self, carrier: Carrier, status: u16) -> Result<(), String> {
        use tenantgate_gateway::policy::injection;
        let attacks = std::fs::read_to_string(repo_root().join("gateway/tests/data/injection_attacks.jsonl"))
            .map_err(|e| e.to_string())?;
        let mut bypassed = Vec::new();
        let mut sent = 0;
        for line in attacks.lines().filter(|l| !l.trim().is_empty()) {
            let sample: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            let text = sample["text"].as_str().unwrap_or_default();
            // Only the attacks the detector catches on their own: the HTTP path must not lose any.
            if injection::detect(text).is_none() {
                continue;
            }
            let messages = match carrier {
                Carrier::UserText => json!([{"role": "user", "content": text}]),
                Carrier::ContentParts => {
                    json!([{"role": "user", "content": [{"type": "text", "text": "Summarise this:"}, {"type": "text", "text": text}]}])
                }
                Carrier::ToolResult => json!([
                    {"role": "user", "content": "read the page"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "fetch", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": text}
                ]),
            };
            let body = json!({"model": "guarded", "messages": messages}).to_string();
            let r = self.gw.post_raw("/v1/chat/completions", body, Some(&self.gw.token)).await;
            sent += 1;
            if r.status().as_u16() != status {
                bypassed.push(format!("{} ({})", sample["family"], r.status()));
            }
        }
        if sent < 50 {
            return Err(format!("only {sent} corpus attacks were sent"));
        }
        if bypassed.is_empty() {
            Ok(())
        } else {
            Err(format!("{} of {sent} got through: {bypassed:?}", bypassed.len()))
        }
    }
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"security-suite","version":"1"}}}"#;

/// The suite's tenant: the test fixture plus an MCP connection (for the render rows).
fn manifests(upstream: &str) -> String {
    let yaml =
        tenant_yaml_with_storage(upstream, None).replace("apiKey: key-one", &format!("apiKey: {PLANTED_UPSTREAM_KEY}"));
    assert!(yaml.contains(PLANTED_UPSTREAM_KEY), "the fixture's upstream key moved");
    format!(
        "{yaml}\n---\napiVersion: tenantgate.dev/v1alpha1\nkind: McpConnection\nmetadata: {{ name: tools, namespace: tg-test }}\nspec:\n  transport: streamableHttp\n  url: http://127.0.0.1:9/mcp\n  tools: {{ prefix: tools }}\n"
    )
}

/// Renders the suite's manifests with one edit, as `gateway --manifests` does.
fn render_case(upstream: &str, from: &str, to: &str, allow_local: bool, expect: Expect) -> Result<(), String> {
    let base = manifests(upstream);
    let template = std::fs::read_to_string(repo_root().join("gateway/tests/fixtures/tenant.yaml.tmpl"))
        .map_err(|e| e.to_string())?;
    // Rows name lines of the template (`${DEAD}`): map them onto the rendered text.
    let dead_line = template.lines().find(|l| l.contains("${DEAD}")).unwrap_or_default();
    let from = if from.contains("${DEAD}") {
        base.lines()
            .find(|l| l.starts_with("      baseUrl: http://127.0.0.1:") && !l.contains(upstream))
            .map(str::to_owned)
    } else {
        Some(from.to_string())
    };
    let Some(from) = from else { return Err(format!("no line for {dead_line:?}")) };
    if !base.contains(&from) {
        return Err(format!("the manifests have no {from:?} to replace"));
    }
    let mut edited = base.replacen(&from, to, 1);
    if !allow_local {
        edited = edited.replace("    allowLocalUpstreams: true\n", "    allowLocalUpstreams: false\n");
        // Every provider at the mock (its /v1, Azure's root, Gemini's /v1beta, Vertex's project path).
        edited = edited.replace(&format!("baseUrl: {upstream}"), "baseUrl: https://api.openai.example");
        // And the token endpoints of the Entra ID and workload identity providers.
        edited = edited
            .lines()
            .map(|l| {
                let token_url = ["authorityHost:", "stsUrl:", "iamCredentialsUrl:"].iter().any(|k| l.contains(k));
                if token_url { l.replace(upstream, "https://login.example") } else { l.to_owned() }
            })
            .fold(String::new(), |text, l| text + &l + "\n");
        if let Some(dead) =
            base.lines().find(|l| l.starts_with("      baseUrl: http://127.0.0.1:") && !l.contains(upstream))
            && edited.contains(dead)
        {
            edited = edited.replace(dead, "      baseUrl: https://dead.example/v1");
        }
    }
    let mut set = ManifestSet::default();
    let rendered = set.add_yaml("security.yaml", &edited).map_err(|e| e.to_string()).and_then(|()| {
        let tenant = set.tenant("test").ok_or("no tenant")?.clone();
        let options = RenderOptions { mode: RenderMode::Local, ..RenderOptions::default() };
        set.render(&tenant, "tenantgate-system", &options).map_err(|e| e.to_string())
    });
    match (rendered, expect) {
        (Err(message), Expect::Refused(text)) if message.contains(text) => Ok(()),
        (Err(message), Expect::Refused(text)) => Err(format!("refused, but without {text:?}: {message}")),
        // An McpConnection that cannot be used is left out of the config, with why.
        (Ok(r), Expect::Refused(text)) if r.skipped.iter().any(|s| s.to_string().contains(text)) => Ok(()),
        (Ok(r), Expect::Refused(_)) => Err(format!("rendered (skipped: {:?})", r.skipped)),
        (Ok(r), Expect::Rendered) if r.skipped.is_empty() => Ok(()),
        (Ok(r), Expect::Rendered) => Err(format!("skipped: {:?}", r.skipped)),
        (Err(message), Expect::Rendered) => Err(format!("refused: {message}")),
        (_, other) => Err(format!("a render cannot expect {other:?}")),
    }
}

async fn setup() -> Suite {
    let upstream = Upstream::start();
    let gw = Gateway::start_logged_at(
        &manifests(&upstream.url),
        &[
            "--request-timeout-secs",
            &REQUEST_TIMEOUT_SECS.to_string(),
            "--header-read-timeout-secs",
            &HEADER_READ_TIMEOUT_SECS.to_string(),
        ],
        "info",
    )
    .await;
    let admin = token(json!({"sub": "admin", "roles": ["tenant-admin"]}));
    let create = |body: Value| {
        let gw = &gw;
        let admin = admin.clone();
        async move {
            let r = gw.post_raw("/admin/v1/api-keys", body.to_string(), Some(&admin)).await;
            assert_eq!(r.status().as_u16(), 201, "creating an API key");
            serde_json::from_str::<Value>(&r.text().await.expect("body")).expect("JSON")
        }
    };
    let revoked = create(json!({"name": "revoked"})).await;
    let r = gw
        .client
        .delete(format!("{}/admin/v1/api-keys/{}", gw.url, revoked["id"].as_str().expect("id")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status().as_u16(), 200, "revoking an API key");
    let expired = create(json!({"name": "short", "expiresInSeconds": 1})).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A session opened by `tester` (the default token's subject).
    let r = gw
        .client
        .post(format!("{}/mcp", gw.url))
        .bearer_auth(&gw.token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(INITIALIZE)
        .send()
        .await
        .expect("initialize");
    let mcp_session =
        r.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).expect("an MCP session id").to_string();
    let key = |v: &Value| v["key"].as_str().expect("key").to_string();
    let (revoked_key, expired_key) = (key(&revoked), key(&expired));
    let planted = vec![
        PLANTED_UPSTREAM_KEY.to_string(),
        revoked_key.clone(),
        expired_key.clone(),
        gw.token.clone(),
        admin.clone(),
    ];
    Suite { upstream, gw, admin, revoked_key, expired_key, mcp_session, bodies: Vec::new(), planted }
}

#[tokio::test]
async fn hostile_inputs_get_their_expected_outcome() {
    let mut suite = setup().await;
    let mut failures = Vec::new();
    for case in CASES {
        let result = suite.run(case).await;
        match &result {
            Ok(()) => eprintln!("ok    {}", case.name),
            Err(why) => eprintln!("FAIL  {}: {why}", case.name),
        }
        if let Err(why) = result {
            failures.push(format!("{}: {why}", case.name));
        }
    }
    // The gateway is still up and serving after all of it.
    let (status, _) = suite.gw.chat("chat").await;
    assert_eq!(status, 200, "the gateway stopped serving");

    // Nothing the suite planted comes back out: log, metrics, error bodies, the rendered config.
    let metrics = suite.gw.metrics().await;
    let log = suite.gw.log();
    let mut set = ManifestSet::default();
    set.add_yaml("security.yaml", &manifests(&suite.upstream.url)).expect("manifests");
    let tenant = set.tenant("test").expect("tenant").clone();
    let config = set
        .render(&tenant, "tenantgate-system", &RenderOptions::default())
        .expect("renders")
        .config
        .to_yaml()
        .expect("yaml");
    assert!(log.contains("request"), "the gateway log is empty: the secrets search would prove nothing");
    for secret in &suite.planted {
        for (place, text) in [("gateway log", &log), ("/metrics", &metrics), ("rendered config", &config)]
            .into_iter()
            .chain(suite.bodies.iter().map(|b| ("an error body", b)))
        {
            if text.contains(secret.as_str()) {
                failures.push(format!("a planted secret ({}...) is in {place}", &secret[..8]));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

/// A host name (not `localhost`) that this machine resolves to a loopback
/// address: what a DNS-rebinding attacker's name does.
fn loopback_alias() -> String {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    hosts
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: std::net::IpAddr = words.next()?.parse().ok()?;
            ip.is_loopback().then(|| words.find(|w| !w.contains("localhost") && !w.contains("loopback")))?
        })
        .next()
        .map(str::to_owned)
        .expect("/etc/hosts names no loopback alias besides localhost (this test needs one, e.g. the host name)")
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_when_connecting() {
    let upstream = Upstream::start();
    let alias = loopback_alias();
    let port = upstream.url.rsplit(':').next().expect("port");
    let rebinding = format!("http://{alias}:{port}");
    let yaml = tenant_yaml(&rebinding);
    // The fixture's closed-port provider would be refused when rendering: give it a remote name.
    let dead = yaml.lines().find(|l| l.starts_with("      baseUrl: http://127.0.0.1:")).expect("dead line").to_string();
    let yaml = yaml.replace(&dead, "      baseUrl: https://dead.example/v1");
    let refused = yaml.replace("    allowLocalUpstreams: true\n", "    allowLocalUpstreams: false\n");
    assert_ne!(refused, yaml, "the fixture's allowLocalUpstreams moved");

    // The name looks remote when rendering; it resolves to 127.0.0.1 when connecting: refused.
    let gw = Gateway::start_logged(&refused, &[]).await;
    let (status, body) = gw.chat("chat").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(upstream.count("primary").await, 0, "the request reached the loopback upstream");
    gw.log_with("upstream name resolves to a local address; connection refused").await;
    drop(gw);

    // With the tenant's explicit allow, the same name is used.
    let gw = Gateway::start(&yaml).await;
    let (status, body) = gw.chat("chat").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.count("primary").await, 1);
}
