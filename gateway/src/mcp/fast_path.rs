//! Which `/mcp` sessions the `tools/call` pass-through
//! ([`tenantgate_gateway_core::mcp::passthrough`]) may serve, and the HTTP
//! side of serving them.
//!
//! A session qualifies when its client initialized it here at a revision
//! before 2026-07-28 declaring none of sampling, elicitation and roots (the
//! upstream cannot ask it anything in the middle of a call, and the shared
//! 2025-11-25 upstream session is the one the full path would use too).
//! Sessions restored from another replica, and every other request, take the
//! full rmcp path. rmcp closes a session its service has not heard from for
//! the session idle time: at least every half of it a call takes the full
//! path, which keeps the session alive while it is used.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use rmcp::model::ProtocolVersion;
use serde::Deserialize;
use tenantgate_gateway_core::mcp::passthrough::Passthrough;

/// Sessions the pass-through may serve, and when the full path last served each.
#[derive(Debug)]
pub(super) struct FastSessions {
    map: Mutex<HashMap<Box<str>, Instant>>,
    /// rmcp's idle time for a session.
    idle: Duration,
}

impl FastSessions {
    pub(super) fn new(idle: Duration) -> Self {
        Self { map: Mutex::new(HashMap::new()), idle }
    }

    /// A session whose `initialize` qualified it.
    pub(super) fn admit(&self, id: &str) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // rmcp has closed the ones idle this long.
        map.retain(|_, seen| now - *seen < self.idle);
        map.insert(id.into(), now);
    }

    /// The full path served a request of session `id`.
    pub(super) fn saw_full(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(seen) = map.get_mut(id) {
            *seen = Instant::now();
        }
    }

    /// Whether session `id` qualified (its calls may be in flight on the pass-through).
    pub(super) fn knows(&self, id: &str) -> bool {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(id)
    }

    /// Whether the pass-through may serve session `id` now.
    pub(super) fn fits(&self, id: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(id).is_some_and(|seen| seen.elapsed() < self.idle / 2)
    }

    pub(super) fn remove(&self, id: &str) {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }
}

/// Whether a request's headers let the pass-through answer it as rmcp would:
/// a JSON body, an `Accept` of both JSON and event streams, and no
/// `MCP-Protocol-Version` or one of a revision before 2026-07-28.
pub(super) fn headers_fit(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let json = text(header::CONTENT_TYPE)
        .is_some_and(|c| c.split(';').next().is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json")));
    let accept = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    let (mut accepts_json, mut accepts_sse) = (false, false);
    for essence in accept.map(|a| a.split(';').next().unwrap_or_default().trim()) {
        accepts_json |= essence.eq_ignore_ascii_case("application/json");
        accepts_sse |= essence.eq_ignore_ascii_case("text/event-stream");
    }
    let version = text(header::HeaderName::from_static("mcp-protocol-version")).is_none_or(legacy_version);
    json && accepts_json && accepts_sse && version
}

/// A known revision before 2026-07-28.
fn legacy_version(version: &str) -> bool {
    version < ProtocolVersion::V_2026_07_28.as_str()
        && ProtocolVersion::KNOWN_VERSIONS.iter().any(|v| v.as_str() == version)
}

#[derive(Deserialize)]
struct Initialize<'a> {
    #[serde(borrow)]
    method: &'a str,
    #[serde(borrow)]
    params: InitializeParams<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InitializeParams<'a> {
    #[serde(borrow)]
    protocol_version: &'a str,
    #[serde(default)]
    capabilities: Capabilities,
}

#[derive(Deserialize, Default)]
struct Capabilities {
    sampling: Option<serde::de::IgnoredAny>,
    elicitation: Option<serde::de::IgnoredAny>,
    roots: Option<serde::de::IgnoredAny>,
}

/// Whether `body` is an `initialize` that qualifies its session.
pub(super) fn qualifies(body: &[u8]) -> bool {
    let Ok(init) = serde_json::from_slice::<Initialize<'_>>(body) else { return false };
    let c = &init.params.capabilities;
    init.method == "initialize"
        && legacy_version(init.params.protocol_version)
        && c.sampling.is_none()
        && c.elicitation.is_none()
        && c.roots.is_none()
}

/// The body, read whole within `limit`; over it, rmcp's own answer (413).
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        (StatusCode::PAYLOAD_TOO_LARGE, format!("Payload Too Large: request body exceeds {limit} bytes"))
            .into_response()
    })
}

/// The HTTP response of a pass-through answer (`None`: the full path serves it).
pub(super) fn response(answer: Passthrough) -> Option<Response> {
    let (content_type, body) = match answer {
        Passthrough::Fallback => {
            metrics::counter!("tenantgate_mcp_passthrough_total", "path" => "full").increment(1);
            return None;
        }
        Passthrough::Json(bytes) => ("application/json", Body::from(bytes)),
        Passthrough::Sse(events) => ("text/event-stream", Body::from_stream(events.map(Ok::<_, std::io::Error>))),
    };
    metrics::counter!("tenantgate_mcp_passthrough_total", "path" => "passthrough").increment(1);
    Some(
        (StatusCode::OK, [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_qualify_by_revision_and_capabilities() {
        let init = |version: &str, caps: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{caps},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
            )
        };
        assert!(qualifies(init("2025-06-18", "{}").as_bytes()));
        assert!(qualifies(init("2025-11-25", r#"{"experimental":{}}"#).as_bytes()));
        assert!(!qualifies(init("2025-11-25", r#"{"elicitation":{}}"#).as_bytes()));
        assert!(!qualifies(init("2025-06-18", r#"{"sampling":{}}"#).as_bytes()));
        assert!(!qualifies(init("2025-06-18", r#"{"roots":{"listChanged":true}}"#).as_bytes()));
        assert!(!qualifies(init("2026-07-28", "{}").as_bytes()));
        assert!(!qualifies(init("1999-01-01", "{}").as_bytes()));
        assert!(!qualifies(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#));
    }

    #[test]
    fn headers_fit_only_what_rmcp_would_take_the_same_way() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        let ok = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")];
        assert!(headers_fit(&headers(&ok)));
        assert!(headers_fit(&headers(&[ok[0], ok[1], ("mcp-protocol-version", "2025-06-18")])));
        assert!(!headers_fit(&headers(&[ok[0], ok[1], ("mcp-protocol-version", "2026-07-28")])));
        assert!(!headers_fit(&headers(&[ok[0], ("accept", "application/json")])));
        assert!(!headers_fit(&headers(&[("content-type", "text/plain"), ok[1]])));
    }

    #[test]
    fn a_session_is_served_until_the_full_path_must_see_it_again() {
        let sessions = FastSessions::new(Duration::from_millis(60));
        sessions.admit("a");
        assert!(sessions.fits("a") && !sessions.fits("b"));
        std::thread::sleep(Duration::from_millis(35));
        assert!(!sessions.fits("a"), "past half the idle time the full path takes it");
        sessions.saw_full("a");
        assert!(sessions.fits("a"));
        sessions.remove("a");
        assert!(!sessions.fits("a"));
    }
}
