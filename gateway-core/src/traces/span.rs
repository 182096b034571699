//! The spans of a traced request, and the W3C trace context in and out.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::{ActiveTracer, Traces};

impl Traces {
    /// Starts the SERVER span of a request named `name` with `attributes`,
    /// continuing the trace of a W3C `traceparent` in `headers`, and returns the
    /// Context to serve the request in. The span ends when the last clone of that
    /// Context drops: the request's, or its record's (a stream's outlives the handler).
    pub fn start_request(&self, name: String, headers: &HeaderMap, attributes: Vec<KeyValue>) -> Context {
        let parent = extract_parent(headers);
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span).with_value(ActiveTracer(self.tracer.clone()))
    }
}

/// Puts the response's status on a request's span (`cx`, from
/// [`Traces::start_request`]); a 5xx marks it failed.
pub fn responded(cx: &Context, status: u16) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
    if status >= 500 {
        span.set_status(Status::error(format!("HTTP {status}")));
    }
}

/// The span of the traced request the current task serves, held by what
/// outlives the handler (its record): the span ends when the last holder drops it.
#[derive(Debug)]
pub struct RequestSpan(Context);

impl RequestSpan {
    /// The current request's span, when the request is traced.
    pub fn current() -> Option<Self> {
        Context::map_current(|cx| cx.get::<ActiveTracer>().is_some().then(|| Self(cx.clone())))
    }

    /// The request's Context, to carry where the task changes (rmcp serves `/mcp` calls on a
    /// session task of its own: the request's extensions take it there).
    pub fn context(&self) -> Context {
        self.0.clone()
    }

    /// Sets `attributes` on the span.
    pub fn set(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        self.0.span().set_attributes(attributes);
    }

    /// Names the span (a model request's name is known once its model is).
    pub fn rename(&self, name: String) {
        self.0.span().update_name(name);
    }

    /// Marks the span failed, with `error.type` (an error reason, no client data).
    pub fn failed(&self, error_type: &str) {
        let span = self.0.span();
        span.set_attribute(KeyValue::new("error.type", error_type.to_owned()));
        span.set_status(Status::error(error_type.to_owned()));
    }
}

/// Sets `attributes` on the current request's span, when it is traced (from
/// domain code that learns something about the request: the target that
/// answered, the MCP tool called).
pub fn set_on_request(attributes: impl FnOnce() -> Vec<KeyValue>) {
    Context::map_current(|cx| {
        if cx.get::<ActiveTracer>().is_some() {
            cx.span().set_attributes(attributes());
        }
    });
}

/// One upstream attempt's CLIENT span, a child of the request's span.
#[derive(Debug)]
pub struct Attempt(Context);

impl Attempt {
    /// Starts the span of attempt `attempt` (0 the first) of `operation` on
    /// `target` (`provider/model`) of `provider` (a `gen_ai.provider.name`), when
    /// the current request is traced. Run the call in [`Self::context`].
    pub fn start(
        operation: &'static str,
        provider: &'static str,
        model: &str,
        target: &str,
        attempt: u32,
    ) -> Option<Self> {
        Self::client(|| {
            (
                format!("{operation} {model}"),
                vec![
                    KeyValue::new("gen_ai.operation.name", operation),
                    KeyValue::new("gen_ai.provider.name", provider),
                    KeyValue::new("gen_ai.system", provider),
                    KeyValue::new("gen_ai.request.model", model.to_owned()),
                    KeyValue::new("tenantgate.target", target.to_owned()),
                    KeyValue::new("tenantgate.attempt", i64::from(attempt)),
                ],
            )
        })
    }

    /// Starts the span of a call of MCP `method` (`tools/call`) for `tool` on
    /// the tenant's connection `connection`, when the current request is traced.
    pub fn start_mcp(method: &'static str, tool: &str, connection: &str) -> Option<Self> {
        Self::client(|| {
            (
                format!("{method} {tool}"),
                vec![
                    KeyValue::new("mcp.method.name", method),
                    KeyValue::new("gen_ai.operation.name", "execute_tool"),
                    KeyValue::new("gen_ai.tool.name", tool.to_owned()),
                    KeyValue::new("tenantgate.mcp_connection", connection.to_owned()),
                ],
            )
        })
    }

    /// A CLIENT span named and described by `span` under the current one, when the request is traced.
    fn client(span: impl FnOnce() -> (String, Vec<KeyValue>)) -> Option<Self> {
        Context::map_current(|cx| {
            let ActiveTracer(tracer) = cx.get::<ActiveTracer>()?;
            let (name, attributes) = span();
            let span = tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .with_attributes(attributes)
                .start_with_context(tracer, cx);
            Some(Self(cx.with_span(span)))
        })
    }

    /// The Context the attempt's call runs in (its `traceparent` names this span).
    pub fn context(&self) -> Context {
        self.0.clone()
    }

    /// The W3C `traceparent` naming this span, for a carrier other than HTTP headers
    /// (an MCP request's `_meta`, SEP-414).
    pub fn traceparent(&self) -> Option<String> {
        let mut headers = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&self.0, &mut HeaderInjector(&mut headers));
        headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    /// The attempt was answered.
    pub fn answered(self) {
        let span = self.0.span();
        span.set_attribute(KeyValue::new("http.response.status_code", 200_i64));
        span.set_status(Status::Ok);
        span.end();
    }

    /// The attempt failed: the upstream's status when it answered one, the
    /// error's type (a metric label) and its message.
    pub fn failed(self, status: Option<u16>, error_type: &'static str, message: String) {
        let span = self.0.span();
        if let Some(status) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        }
        span.set_attribute(KeyValue::new("error.type", error_type));
        span.set_status(Status::error(message));
        span.end();
    }

    /// The breaker kept the attempt from being made.
    pub fn skipped(self, reason: &'static str) {
        let span = self.0.span();
        span.set_attribute(KeyValue::new("error.type", reason));
        span.set_status(Status::error(reason));
        span.end();
    }
}

/// The trace a client's W3C `traceparent` (and `tracestate`) in `headers`
/// names, as the parent of the request's span; an empty Context without one.
pub fn extract_parent(headers: &HeaderMap) -> Context {
    if !headers.contains_key("traceparent") {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Adds `traceparent` (and `tracestate`) for the current span to an upstream
/// request's `headers`, when the request is traced.
pub fn inject(headers: &mut HeaderMap) {
    Context::map_current(|cx| {
        if cx.get::<ActiveTracer>().is_some() {
            TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
        }
    });
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    #[test]
    fn a_client_traceparent_is_the_parent_and_nothing_is_injected_untraced() {
        let mut headers = HeaderMap::new();
        headers
            .insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let parent = extract_parent(&headers);
        let span = parent.span();
        let sc = span.span_context();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(sc.is_remote() && sc.is_sampled());
        assert!(!extract_parent(&HeaderMap::new()).has_active_span());

        let mut out = HeaderMap::new();
        inject(&mut out);
        assert!(out.is_empty(), "no traceparent outside a traced request: {out:?}");
    }
}
