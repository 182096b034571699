//! `tenantgate-operator run`: the controllers, behind leader election.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates, watcher};

use kube::{Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tenantgate_crds::render::tenant_namespace;
use tenantgate_crds::v1alpha1::{McpConnection, PromptPolicy, Tenant};

use crate::context::{Context, Stores};
use crate::labels::MANAGED_SELECTOR;
use crate::metrics::Metrics;
use crate::tenant::build::BuildSettings;

/// Settings of `run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Namespace the operator runs in.
    pub operator_namespace: String,
    /// Gateway image for tenants.
    pub gateway_image: String,
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
    /// Labels of namespaces allowed to scrape gateway metrics.
    pub metrics_namespace_labels: BTreeMap<String, String>,
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
            .with_namespace(&opts.operator_namespace)
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

fn watch_managed<K>(
    api: Api<K>,
    store_writer: reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watcher(api, watcher::Config::default().labels(MANAGED_SELECTOR))
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(store_writer)
        .touched_objects()
}

/// managedFields are the largest part of most objects and nothing here reads them.
fn strip_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

async fn discover(client: &Client, group: &str, version: &str, kind: &str) -> Option<ApiResource> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    match kube::discovery::pinned_kind(client, &gvk).await {
        Ok((resource, _)) => {
            tracing::info!(%group, %kind, "found {kind}: it will be managed");
            Some(resource)
        }
        Err(_) => None,
    }
}

async fn run_controllers(
    client: Client,
    opts: &RunOptions,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let http_route = discover(&client, "gateway.networking.k8s.io", "v1", "HTTPRoute").await;
    let service_monitor = discover(&client, "monitoring.coreos.com", "v1", "ServiceMonitor").await;
    let settings = BuildSettings {
        operator_namespace: opts.operator_namespace.clone(),
        gateway_image: opts.gateway_image.clone(),
        metrics_namespace_labels: opts.metrics_namespace_labels.clone(),
        gateway_api: http_route.is_some(),
        service_monitors: service_monitor.is_some(),
        api_server: crate::api_server::endpoints(&client).await,
    };

    let (tenants, tenants_w) = reflector::store::<Tenant>();
    let (mcp, mcp_w) = reflector::store::<McpConnection>();
    let (policies, policies_w) = reflector::store::<PromptPolicy>();
    let (secrets, secrets_w) = reflector::store::<PartialObjectMeta<Secret>>();
    let (namespaces, namespaces_w) = reflector::store::<PartialObjectMeta<Namespace>>();
    let (deployments, deployments_w) = reflector::store::<Deployment>();
    let (services, services_w) = reflector::store::<Service>();
    let (config_maps, config_maps_w) = reflector::store::<ConfigMap>();
    let (service_accounts, service_accounts_w) = reflector::store::<ServiceAccount>();
    let (hpas, hpas_w) = reflector::store::<HorizontalPodAutoscaler>();
    let (pdbs, pdbs_w) = reflector::store::<PodDisruptionBudget>();
    let (network_policies, network_policies_w) = reflector::store::<NetworkPolicy>();
    let (ingresses, ingresses_w) = reflector::store::<Ingress>();
    let (roles, roles_w) = reflector::store::<Role>();
    let (role_bindings, role_bindings_w) = reflector::store::<RoleBinding>();

    let dynamic_store = |resource: &Option<ApiResource>| {
        resource.as_ref().map(|ar| {
            let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
            let reader = writer.as_reader();
            let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
            let stream =
                watcher(api, watcher::Config::default().labels(MANAGED_SELECTOR)).default_backoff().reflect(writer);
            ((ar.clone(), reader), stream)
        })
    };
    let (http_routes, http_route_stream) = dynamic_store(&http_route).unzip();
    let (service_monitors, service_monitor_stream) = dynamic_store(&service_monitor).unzip();

    let stores = Stores {
        tenants: tenants.clone(),
        mcp_connections: mcp.clone(),
        prompt_policies: policies.clone(),
        secrets: secrets.clone(),
        namespaces: namespaces.clone(),
        deployments,
        services,
        config_maps,
        service_accounts,
        roles,
        role_bindings,
        hpas,
        pdbs,
        network_policies,
        ingresses,
        http_routes,
        service_monitors,
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
    let tenant_stream = watcher(Api::<Tenant>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(tenants_w)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
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
    let operator_ns = opts.operator_namespace.clone();

    let mcp_stream = watcher(Api::<McpConnection>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(mcp_w)
        .touched_objects();
    let policy_stream = watcher(Api::<PromptPolicy>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(policies_w)
        .touched_objects();
    let secret_stream = watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(secrets_w)
        .touched_objects();
    let namespace_stream =
        watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(namespaces_w)
            .touched_objects();

    let mut controller = Controller::for_stream(tenant_stream, tenants.clone())
        // A reconcile's own writes come back as a burst of watch events; the
        // debounce folds them into one reconcile instead of one each.
        .with_config(ControllerConfig::default().concurrency(opts.concurrency).debounce(Duration::from_millis(500)))
        .owns_stream(watch_managed(Api::<Deployment>::all(client.clone()), deployments_w))
        .owns_stream(watch_managed(Api::<Service>::all(client.clone()), services_w))
        .owns_stream(watch_managed(Api::<ConfigMap>::all(client.clone()), config_maps_w))
        .owns_stream(watch_managed(Api::<ServiceAccount>::all(client.clone()), service_accounts_w))
        .owns_stream(watch_managed(Api::<HorizontalPodAutoscaler>::all(client.clone()), hpas_w))
        .owns_stream(watch_managed(Api::<PodDisruptionBudget>::all(client.clone()), pdbs_w))
        .owns_stream(watch_managed(Api::<NetworkPolicy>::all(client.clone()), network_policies_w))
        .owns_stream(watch_managed(Api::<Ingress>::all(client.clone()), ingresses_w))
        .owns_stream(watch_managed(Api::<Role>::all(client.clone()), roles_w))
        .owns_stream(watch_managed(Api::<RoleBinding>::all(client.clone()), role_bindings_w))
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
        .watches_stream(secret_stream, {
            let f = by_namespace.clone();
            move |s: PartialObjectMeta<Secret>| f(s.namespace())
        })
        .watches_stream(namespace_stream, {
            let f = by_namespace.clone();
            move |ns: PartialObjectMeta<Namespace>| f(Some(ns.name_any()))
        });
    if let Some(stream) = http_route_stream {
        controller = controller.owns_stream_with(
            stream.touched_objects(),
            http_route.clone().unwrap_or_else(|| ApiResource::erase::<Deployment>(&())),
        );
    }
    if let Some(stream) = service_monitor_stream {
        controller = controller.owns_stream_with(
            stream.touched_objects(),
            service_monitor.clone().unwrap_or_else(|| ApiResource::erase::<Deployment>(&())),
        );
    }

    let sweep = tokio::spawn(crate::bindings::sweep_unbound(ctx.clone(), Duration::from_secs(5)));
    let readiness = {
        let (tenants, mcp, policies, secrets, namespaces) =
            (tenants.clone(), mcp.clone(), policies.clone(), secrets.clone(), namespaces.clone());
        let ready = ready.clone();
        tokio::spawn(async move {
            let synced = futures::future::join5(
                tenants.wait_until_ready(),
                mcp.wait_until_ready(),
                policies.wait_until_ready(),
                secrets.wait_until_ready(),
                namespaces.wait_until_ready(),
            )
            .await;
            if let (Ok(()), Ok(()), Ok(()), Ok(()), Ok(())) = synced {
                tracing::info!("caches synced");
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
                let s = &ctx.stores;
                let n = s.deployments.state().len()
                    + s.services.state().len()
                    + s.config_maps.state().len()
                    + s.service_accounts.state().len()
                    + s.hpas.state().len()
                    + s.pdbs.state().len()
                    + s.network_policies.state().len()
                    + s.ingresses.state().len()
                    + s.roles.state().len()
                    + s.role_bindings.state().len();
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
