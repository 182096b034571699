//! `tenantgate-operator run`: the controllers, behind leader election.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::core::GroupVersionKind;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates, watcher};

use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tenantgate_crds::render::tenant_namespace;
use tenantgate_crds::v1alpha1::{ApiKey, McpConnection, ModelPrice, PromptPolicy, Tenant};

use crate::caches::reflect;
use crate::context::{Context, ManagedCache, Stores};
use crate::kinds::{Cache, ManagedKind, managed_kinds};
use crate::labels::selector_of;
use crate::metrics::Metrics;
use crate::tenant::build::BuildSettings;

/// Settings of `run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// How stacks are built (the operator's namespace, the gateway image,
    /// DNS peer, tenant pods, Secret labels). Whether HTTPRoute and
    /// ServiceMonitor exist and where the API server listens are found in
    /// the cluster and replace what this says.
    pub settings: BuildSettings,
    /// Where probes and metrics are served.
    pub metrics_addr: SocketAddr,
    /// Client-side request rate limit.
    pub api_qps: u32,
    /// Client-side burst.
    pub api_burst: u32,
    /// Tenants reconciled at once.
    pub concurrency: u16,
    /// Take part in leader election (off: act as the only replica).
    pub leader_election: bool,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
}

/// Runs until SIGTERM/SIGINT, or until leadership is lost (then exits with an error, to be restarted).
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let config = kube::Config::infer().await.context("finding Kubernetes credentials (in-cluster or KUBECONFIG)")?;
    let client = crate::client::build(config, opts.api_qps, opts.api_burst, metrics.clone())?;
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(crate::server::serve(opts.metrics_addr, registry, ready.clone()));

    let mut leadership = None;
    if opts.leader_election {
        let manager = LeaseManagerBuilder::new(client.clone(), &opts.lease_name)
            .with_namespace(&opts.settings.operator_namespace)
            .with_identity(&opts.identity)
            .with_duration(10)
            .with_grace(3)
            .build()
            .await
            .context("setting up the leader Lease")?;
        let (mut rx, task) = manager.watch().await;
        tracing::info!(identity = %opts.identity, lease = %opts.lease_name, "waiting for leadership");
        ready.store(true, Ordering::Relaxed); // a standby is healthy
        while !*rx.borrow_and_update() {
            tokio::select! {
                changed = rx.changed() => changed.context("leader election stopped")?,
                () = shutdown_signal() => return Ok(()),
            }
        }
        tracing::info!(identity = %opts.identity, "became the leader");
        leadership = Some((rx, task));
    }
    metrics.leader.set(1);

    let lost = async {
        match &mut leadership {
            Some((rx, _)) => loop {
                if rx.changed().await.is_err() || !*rx.borrow() {
                    return;
                }
            },
            None => futures::future::pending().await,
        }
    };
    let controllers = run_controllers(client, &opts, metrics.clone(), ready.clone());
    tokio::select! {
        result = controllers => result?,
        () = lost => {
            metrics.leader.set(0);
            anyhow::bail!("lost the leader Lease; exiting so a fresh process can campaign again");
        }
        result = server => { result??; }
    }
    // Dropping the receiver makes the lease manager release the Lease, so a standby takes over at once.
    drop(leadership);
    Ok(())
}

/// Whether the cluster serves `kind` (an optional kind's CRD may be absent).
async fn installed(client: &Client, kind: &ManagedKind) -> bool {
    let r = &kind.resource;
    let gvk = GroupVersionKind::gvk(&r.group, &r.version, &r.kind);
    let found = kube::discovery::pinned_kind(client, &gvk).await.is_ok();
    if found {
        tracing::info!(group = %r.group, kind = %r.kind, "found {}: it will be managed", r.kind);
    }
    found
}

async fn run_controllers(
    client: Client,
    opts: &RunOptions,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut kinds = Vec::new();
    for kind in managed_kinds() {
        if !kind.optional || installed(&client, &kind).await {
            kinds.push(kind);
        }
    }
    let has = |kind: &str| kinds.iter().any(|k| k.resource.kind == kind);
    let settings = BuildSettings {
        gateway_api: has("HTTPRoute"),
        service_monitors: has("ServiceMonitor"),
        // Read from the watched EndpointSlice at each reconcile.
        api_server: Vec::new(),
        ..opts.settings.clone()
    };
    let secret_selector =
        (!settings.secret_watch_labels.is_empty()).then(|| selector_of(&settings.secret_watch_labels));
    if let Some(selector) = &secret_selector {
        tracing::info!(selector = %selector, "watching only Secrets labelled {selector}: referenced Secrets without the label are reported missing");
    }

    let all = watcher::Config::default;
    let (tenants, tenant_stream) = reflect(Api::<Tenant>::all(client.clone()), all());
    let (mcp, mcp_stream) = reflect(Api::<McpConnection>::all(client.clone()), all());
    let (policies, policy_stream) = reflect(Api::<PromptPolicy>::all(client.clone()), all());
    let (model_prices, price_stream) = reflect(Api::<ModelPrice>::all(client.clone()), all());
    let (api_keys, api_key_stream) = reflect(Api::<ApiKey>::all(client.clone()), all());
    let (api_server, api_server_stream) = crate::api_server::watch(client.clone());
    let mut managed = Vec::new();
    let mut triggers = Vec::new();
    for kind in kinds {
        let (cache, stream) = (kind.start)(client.clone(), kind.selector(secret_selector.as_deref()));
        triggers.push((kind.clone(), stream));
        managed.push(ManagedCache { kind, cache });
    }
    let stores = Stores {
        tenants: tenants.clone(),
        mcp_connections: mcp,
        prompt_policies: policies,
        model_prices,
        api_keys,
        api_server,
        managed,
    };
    let reporter = Reporter { controller: "tenantgate-operator".into(), instance: Some(opts.identity.clone()) };
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        stores,
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        failures: Default::default(),
    });

    // Only spec changes (a new generation) start a reconcile: the operator's
    // own status writes would otherwise each come back as one more.
    let tenant_stream = tenant_stream.predicate_filter(predicates::generation, PredicateConfig::default());
    let by_namespace = {
        let tenants = tenants.clone();
        move |ns: Option<String>| -> Vec<ObjectRef<Tenant>> {
            let Some(ns) = ns else { return Vec::new() };
            tenants.state().iter().filter(|t| tenant_namespace(t) == ns).map(|t| ObjectRef::from_obj(&**t)).collect()
        }
    };
    let all_tenants = {
        let tenants = tenants.clone();
        move || -> Vec<ObjectRef<Tenant>> { tenants.state().iter().map(|t| ObjectRef::from_obj(&**t)).collect() }
    };
    let operator_ns = opts.settings.operator_namespace.clone();

    let mut controller = Controller::for_stream(tenant_stream, tenants.clone())
        // A reconcile's own writes come back as a burst of watch events; the
        // debounce folds them into one reconcile instead of one each.
        .with_config(ControllerConfig::default().concurrency(opts.concurrency).debounce(Duration::from_millis(500)))
        .watches_stream(mcp_stream, {
            let f = by_namespace.clone();
            move |c: McpConnection| f(c.namespace())
        })
        .watches_stream(policy_stream, {
            let f = by_namespace.clone();
            let all = all_tenants.clone();
            let operator_ns = operator_ns.clone();
            move |p: PromptPolicy| if p.namespace().as_deref() == Some(&operator_ns) { all() } else { f(p.namespace()) }
        })
        // A new, changed (rotated) or deleted (revoked) ApiKey: its tenant's config.
        .watches_stream(api_key_stream, {
            let f = by_namespace.clone();
            move |k: ApiKey| f(k.namespace())
        })
        // A price may apply to any tenant.
        .watches_stream(price_stream.predicate_filter(predicates::generation, PredicateConfig::default()), {
            let all = all_tenants.clone();
            move |_: ModelPrice| all()
        })
        // Every gateway's NetworkPolicy names the API server's addresses.
        .watches_stream(api_server_stream, {
            let all = all_tenants.clone();
            move |_: EndpointSlice| all()
        });
    // The table's kinds: an owned object reconciles its Tenant; a change to
    // a kind cached for every object (a Secret, a namespace) reconciles the
    // tenants of its namespace.
    for (kind, stream) in triggers {
        controller = match kind.cache {
            Cache::Owned => controller.owns_stream_with(stream, kind.resource.clone()),
            Cache::AllMetadata => {
                let f = by_namespace.clone();
                let namespaced = kind.namespaced;
                controller.watches_stream_with(
                    stream,
                    move |o: DynamicObject| f(if namespaced { o.namespace() } else { Some(o.name_any()) }),
                    kind.resource.clone(),
                )
            }
        };
    }

    let sweep = tokio::spawn(crate::bindings::sweep_unbound(ctx.clone(), Duration::from_secs(5)));
    let readiness = {
        let ctx = ctx.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            if ctx.stores.wait_ready().await {
                tracing::info!("caches synced");
                if crate::api_server::current(&ctx.stores.api_server).is_empty() {
                    tracing::warn!(
                        "no ready address in EndpointSlice {}/{}: gateway NetworkPolicies allow no API server egress, so where NetworkPolicy is enforced gateways cannot publish McpConnection status.driftedTools",
                        crate::api_server::NAMESPACE,
                        crate::api_server::NAME
                    );
                }
                ready.store(true, Ordering::Relaxed);
            }
        })
    };
    let managed_count = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(15));
            loop {
                tick.tick().await;
                let n: usize =
                    ctx.stores.managed.iter().filter(|m| m.kind.cache == Cache::Owned).map(|m| m.cache.count()).sum();
                ctx.metrics.objects_managed.set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        })
    };

    controller
        .graceful_shutdown_on(shutdown_signal())
        .run(crate::tenant::reconcile, crate::tenant::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    sweep.abort();
    readiness.abort();
    managed_count.abort();
    tracing::info!("controllers stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
