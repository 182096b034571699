//! The Kubernetes client: rate limited on the client side (a token bucket
//! awaited in `poll_ready`, as tower expects) so a burst of tenants never
//! floods the API server, and counting every request by kind (the write count
//! is how tests prove a steady state makes no writes).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{Method, Request};
use kube::client::ClientBuilder;
use kube::{Client, Config};
use tower::{Layer, Service};

use crate::metrics::{Metrics, RequestLabels};

/// Builds the operator's client from `config`, limited to `qps` requests per
/// second with bursts of `burst`.
pub fn build(config: Config, qps: u32, burst: u32, metrics: Arc<Metrics>) -> Result<Client, kube::Error> {
    let quota = Quota::per_second(NonZeroU32::new(qps.max(1)).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN));
    let layer = ApiRequestLayer { limiter: Arc::new(RateLimiter::direct(quota)), metrics };
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

#[derive(Clone)]
struct ApiRequestLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for ApiRequestLayer {
    type Service = ApiRequestService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiRequestService {
            inner,
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
            waiting: None,
            permit: false,
        }
    }
}

struct ApiRequestService<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    metrics: Arc<Metrics>,
    /// Waiting for a token of the rate limiter.
    waiting: Option<BoxFuture<'static, ()>>,
    /// A token was taken for the next call.
    permit: bool,
}

impl<S, B> Service<Request<B>> for ApiRequestService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.permit {
            let limiter = self.limiter.clone();
            let waiting = self.waiting.get_or_insert_with(|| Box::pin(async move { limiter.until_ready().await }));
            futures::ready!(waiting.as_mut().poll(cx));
            self.waiting = None;
            self.permit = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.permit = false;
        let kind = match *request.method() {
            Method::GET | Method::HEAD | Method::OPTIONS => "read",
            _ => "write",
        };
        let path = request.uri().path();
        let labels = RequestLabels {
            kind,
            verb: verb_of(request.method(), path, request.uri().query()),
            resource: resource_of(path),
        };
        self.metrics.api_requests.get_or_create(&labels).inc();
        self.inner.call(request)
    }
}

/// The Kubernetes verb of a request, as RBAC names it.
fn verb_of(method: &Method, path: &str, query: Option<&str>) -> &'static str {
    let named = resource_of(path).contains('/') || {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let rest = match segments.as_slice() {
            ["api", _, rest @ ..] => rest,
            ["apis", _, _, rest @ ..] => rest,
            _ => &[][..],
        };
        match rest {
            ["namespaces", _, rest @ ..] if !rest.is_empty() => rest.len() >= 2,
            other => other.len() >= 2,
        }
    };
    match *method {
        Method::GET if query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1")) => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    }
}

/// The resource a request path names: `/apis/apps/v1/namespaces/x/deployments/gw`
/// is `deployments`; a subresource is kept (`tenants/status`).
fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        ["api" | "apis", ..] => return "discovery".into(),
        _ => return "other".into(),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    match rest {
        [resource, _name, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => (*resource).to_string(),
        [] => "discovery".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn resources_are_named_from_paths() {
        assert_eq!(super::resource_of("/apis/apps/v1/namespaces/tg-a/deployments/gateway"), "deployments");
        assert_eq!(super::resource_of("/apis/tenantgate.dev/v1alpha1/tenants/acme/status"), "tenants/status");
        assert_eq!(super::resource_of("/api/v1/namespaces/tg-a"), "namespaces");
        assert_eq!(super::resource_of("/api/v1/namespaces"), "namespaces");
        assert_eq!(super::resource_of("/apis/coordination.k8s.io/v1/namespaces/tenantgate-system/leases/op"), "leases");
        assert_eq!(super::resource_of("/version"), "other");
        assert_eq!(super::resource_of("/apis/gateway.networking.k8s.io/v1"), "discovery");
    }

    #[test]
    fn verbs_are_named_as_rbac_names_them() {
        use http::Method;
        let v = |m: Method, p: &str, q: Option<&str>| super::verb_of(&m, p, q);
        assert_eq!(v(Method::GET, "/apis/apps/v1/deployments", Some("watch=true&labelSelector=x")), "watch");
        assert_eq!(v(Method::GET, "/apis/apps/v1/deployments", Some("limit=500")), "list");
        assert_eq!(v(Method::GET, "/apis/coordination.k8s.io/v1/namespaces/ns/leases/op", None), "get");
        assert_eq!(v(Method::PATCH, "/apis/tenantgate.dev/v1alpha1/tenants/acme/status", None), "patch");
        assert_eq!(v(Method::POST, "/api/v1/namespaces/tg-a/secrets", None), "create");
        assert_eq!(v(Method::DELETE, "/apis/apps/v1/namespaces/tg-a/deployments/x", None), "delete");
        assert_eq!(v(Method::PATCH, "/api/v1/namespaces/tg-a", None), "patch");
    }
}
