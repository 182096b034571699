//! Routing a request to its model's targets: retry with exponential backoff
//! and jitter (honouring Retry-After), failover in target order, and a
//! circuit breaker per target. Nothing is retried once a reply has started.

pub mod breaker;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
pub use tenantgate_crds::v1alpha1::ModelType;
use tenantgate_crds::v1alpha1::Routing;
use tokio::time::Instant;

pub use breaker::Breaker;

use crate::storage::Price;
use crate::traces::{self, FutureExt as _};

use crate::llm::embeddings::{EmbeddingsReply, EmbeddingsRequest};
use crate::llm::types::ChatRequest;
use crate::llm::{Call, Provider, Reply, UpstreamError};

/// Why no target answered.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// An upstream refused the request itself (4xx): passed on to the client.
    #[error("{message}")]
    Rejected {
        /// The upstream's status.
        status: StatusCode,
        /// Its message.
        message: String,
        /// Its error type.
        kind: String,
        /// The request field at fault.
        param: Option<String>,
        /// Its error code.
        code: Option<String>,
    },
    /// Every target answered 429.
    #[error("{message}")]
    RateLimited {
        /// For the client.
        message: String,
        /// When to try again.
        retry_after: Option<Duration>,
    },
    /// Every target is down or its breaker is open.
    #[error("{message}")]
    Unavailable {
        /// For the client.
        message: String,
        /// When a breaker lets a probe through.
        retry_after: Option<Duration>,
    },
    /// The upstreams did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// The upstreams failed (5xx, protocol or connection errors).
    #[error("{0}")]
    Failed(String),
}

/// One upstream model behind a tenant model.
#[derive(Debug)]
pub struct Target {
    /// The provider.
    pub provider: Arc<Provider>,
    /// Model name the provider knows.
    pub model: Arc<str>,
    /// `provider/model`, for logs and metrics.
    pub label: Arc<str>,
    /// This target's breaker (kept across config reloads).
    pub breaker: Arc<Breaker>,
    /// What it costs, when it has a price.
    pub price: Option<Price>,
}

/// A tenant model and its targets in failover order.
#[derive(Debug)]
pub struct ModelRoute {
    /// Tenant model name.
    pub name: Arc<str>,
    /// Chat or embedding: which API serves it.
    pub type_: ModelType,
    /// Targets in order.
    pub targets: Vec<Target>,
    /// The highest of each rate among the targets: what a budget reserves
    /// for a request (`None`: a target has no price).
    pub worst: Option<tenantgate_crds::pricing::Rates>,
}

/// Retry and timeout settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries of one target.
    pub max_retries: u32,
    /// First delay.
    pub initial_backoff: Duration,
    /// Largest delay; a longer Retry-After fails over instead.
    pub max_backoff: Duration,
    /// Until response headers.
    pub first_byte_timeout: Duration,
    /// Whole call.
    pub total_timeout: Duration,
}

impl From<&Routing> for RetryPolicy {
    fn from(r: &Routing) -> Self {
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        Self {
            max_retries: r.max_retries,
            initial_backoff: ms(r.initial_backoff_ms),
            max_backoff: ms(r.max_backoff_ms),
            first_byte_timeout: ms(r.first_byte_timeout_ms),
            total_timeout: ms(r.total_timeout_ms),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `attempt` (0-based): exponential with equal jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let mut delays = crate::backoff::Delays::new(self.initial_backoff, self.max_backoff);
        let base = delays.nth(attempt.min(16) as usize).unwrap_or(self.max_backoff);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// A reply (a chat [`Reply`], or another API's) and where it came from.
#[derive(Debug)]
pub struct Routed<'r, R = Reply> {
    /// The reply.
    pub reply: R,
    /// The target that answered.
    pub target: &'r Target,
    /// Time spent waiting on upstreams (all attempts, until headers).
    pub upstream_time: Duration,
}

/// Sends the chat `request` to the first target of `route` that answers.
pub async fn route<'r>(
    route: &'r ModelRoute,
    policy: &RetryPolicy,
    request: &ChatRequest,
) -> Result<Routed<'r>, RouteError> {
    route_with(route, policy, "chat", |target, timing| {
        let call = Call { request, model: &target.model, first_byte_timeout: timing.0, deadline: timing.1 };
        target.provider.call(call)
    })
    .await
}

/// Sends the embeddings `request` to the first target of `route` that answers.
pub async fn route_embeddings<'r>(
    route: &'r ModelRoute,
    policy: &RetryPolicy,
    request: &EmbeddingsRequest,
) -> Result<Routed<'r, EmbeddingsReply>, RouteError> {
    route_with(route, policy, "embeddings", |target, timing| {
        let call = Call { request, model: &target.model, first_byte_timeout: timing.0, deadline: timing.1 };
        target.provider.embed(call)
    })
    .await
}

/// Calls `send(target, (first-byte timeout, deadline))` on the targets of
/// `route` in order, with retries, backoff and breakers, until one answers.
/// In a traced request each attempt is a span of `operation` (a
/// `gen_ai.operation.name`), and the call runs in its Context (so the
/// provider's request carries its `traceparent`).
async fn route_with<'r, R, F, Fut>(
    route: &'r ModelRoute,
    policy: &RetryPolicy,
    operation: &'static str,
    mut send: F,
) -> Result<Routed<'r, R>, RouteError>
where
    F: FnMut(&'r Target, (Duration, Instant)) -> Fut,
    Fut: Future<Output = Result<R, UpstreamError>>,
{
    let deadline = Instant::now() + policy.total_timeout;
    let mut last_error: Option<UpstreamError> = None;
    let mut upstream_time = Duration::ZERO;
    let mut soonest_probe: Option<Duration> = None;
    'targets: for target in &route.targets {
        let provider = target.provider.kind();
        for attempt in 0..=policy.max_retries {
            let span = traces::Attempt::start(
                operation,
                target.provider.semconv_name(),
                &target.model,
                &target.label,
                attempt,
            );
            let Some(permit) = target.breaker.try_acquire() else {
                if let Some(span) = span {
                    span.skipped("breaker_open");
                }
                let wait = target.breaker.retry_in();
                soonest_probe = Some(soonest_probe.map_or(wait, |s| s.min(wait)));
                metrics::counter!("tenantgate_upstream_requests_total", "target" => target.label.to_string(), "outcome" => "breaker_open").increment(1);
                continue 'targets;
            };
            let started = Instant::now();
            let call = send(target, (policy.first_byte_timeout, deadline));
            let result = match &span {
                Some(span) => call.with_context(span.context()).await,
                None => call.await,
            };
            let elapsed = started.elapsed();
            upstream_time += elapsed;
            metrics::histogram!("tenantgate_upstream_latency_seconds", "provider" => provider)
                .record(elapsed.as_secs_f64());
            match result {
                Ok(reply) => {
                    permit.success();
                    if let Some(span) = span {
                        span.answered();
                        traces::set_on_request(|| answered_by(operation, target));
                    }
                    metrics::counter!("tenantgate_upstream_requests_total", "target" => target.label.to_string(), "outcome" => "ok").increment(1);
                    return Ok(Routed { reply, target, upstream_time });
                }
                Err(e) => {
                    if let Some(span) = span {
                        let status = match &e {
                            UpstreamError::Status { status, .. } => Some(status.as_u16()),
                            _ => None,
                        };
                        span.failed(status, e.as_label(), e.to_string());
                    }
                    metrics::counter!("tenantgate_upstream_requests_total", "target" => target.label.to_string(), "outcome" => e.as_label()).increment(1);
                    tracing::info!(target_name = %target.label, attempt, error = %e, "upstream attempt failed");
                    if e.is_client_error() {
                        // The request itself is wrong: no target would take it.
                        permit.success();
                        return Err(rejected(e));
                    }
                    permit.failure();
                    let retry = e.retryable() && attempt < policy.max_retries && !target.breaker.is_open();
                    let delay = match &e {
                        UpstreamError::Status { retry_after: Some(after), .. } if *after > policy.max_backoff => None,
                        UpstreamError::Status { retry_after: Some(after), .. } => Some(*after),
                        _ => Some(policy.backoff(attempt)),
                    };
                    last_error = Some(e);
                    match delay {
                        Some(delay) if retry && Instant::now() + delay < deadline => {
                            tokio::time::sleep(delay).await;
                        }
                        _ => continue 'targets,
                    }
                }
            }
        }
    }
    Err(exhausted(&route.name, last_error, soonest_probe))
}

/// What the request's span says of the target that answered.
fn answered_by(operation: &'static str, target: &Target) -> Vec<opentelemetry::KeyValue> {
    use opentelemetry::KeyValue;
    let provider = target.provider.semconv_name();
    vec![
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("gen_ai.provider.name", provider),
        KeyValue::new("gen_ai.system", provider),
        KeyValue::new("gen_ai.response.model", target.model.to_string()),
        KeyValue::new("tenantgate.target", target.label.to_string()),
    ]
}

fn rejected(e: UpstreamError) -> RouteError {
    match e {
        UpstreamError::Status { status, message, kind, param, code, .. } => RouteError::Rejected {
            status,
            message,
            kind: kind.unwrap_or_else(|| "invalid_request_error".into()),
            param,
            code,
        },
        other => RouteError::Failed(other.to_string()),
    }
}

fn exhausted(model: &str, last: Option<UpstreamError>, soonest_probe: Option<Duration>) -> RouteError {
    match last {
        None => RouteError::Unavailable {
            message: format!("every target of model {model} is unavailable (circuit open); try again later"),
            retry_after: soonest_probe.or(Some(Duration::from_secs(1))),
        },
        Some(UpstreamError::Status { status: StatusCode::TOO_MANY_REQUESTS, retry_after, .. }) => {
            RouteError::RateLimited {
                message: format!("the providers of model {model} are rate limiting requests; try again later"),
                retry_after: retry_after.or(Some(Duration::from_secs(1))),
            }
        }
        Some(e @ UpstreamError::Timeout(_)) => RouteError::Timeout(format!("model {model}: {e}")),
        Some(UpstreamError::Status { status, .. }) if matches!(status.as_u16(), 401 | 403) => {
            RouteError::Failed(format!("model {model}: the provider refused the gateway's credentials"))
        }
        Some(e) => RouteError::Failed(format!("model {model}: every target failed; last error: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            first_byte_timeout: Duration::from_secs(1),
            total_timeout: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d0 = p.backoff(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100), "{d0:?}");
            let d1 = p.backoff(1);
            assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200), "{d1:?}");
            assert!(p.backoff(10) <= Duration::from_millis(300));
        }
    }
}
