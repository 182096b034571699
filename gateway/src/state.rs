//! Shared state of the server: the config in force (swapped atomically) and
//! what outlives a config.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::admission::Admission;
use crate::config::{Carried, Runtime, RuntimeHandle};
use crate::storage::Storage;

/// Handler state: cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    tenant: RuntimeHandle,
    metrics: PrometheusHandle,
    max_body_bytes: usize,
    shutting_down: AtomicBool,
    streams: AtomicUsize,
    admission: Admission,
}

impl AppState {
    /// State around a first runtime.
    pub fn new(
        runtime: Runtime,
        carried: Carried,
        metrics: PrometheusHandle,
        max_body_bytes: usize,
        admission: Admission,
        storage: Arc<Storage>,
    ) -> Self {
        Self(Arc::new(Inner {
            tenant: RuntimeHandle::new(runtime, carried, storage),
            metrics,
            max_body_bytes,
            shutting_down: AtomicBool::new(false),
            streams: AtomicUsize::new(0),
            admission,
        }))
    }

    /// The narrow handle the domain modules get: runtime, carried state, storage.
    pub fn tenant(&self) -> &RuntimeHandle {
        &self.0.tenant
    }

    /// The runtime in force; a request keeps the one it started with.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.0.tenant.runtime()
    }

    /// Puts a new runtime in force.
    pub fn swap_runtime(&self, runtime: Arc<Runtime>) {
        self.0.tenant.swap_runtime(runtime);
    }

    /// State carried across reloads.
    pub fn carried(&self) -> &Carried {
        self.0.tenant.carried()
    }

    /// The Prometheus registry.
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.0.metrics
    }

    /// Database, recorder and API keys.
    pub fn storage(&self) -> &Arc<Storage> {
        self.0.tenant.storage()
    }

    /// Largest accepted request body.
    pub fn max_body_bytes(&self) -> usize {
        self.0.max_body_bytes
    }

    /// The in-flight slots and the body memory budget.
    pub fn admission(&self) -> &Admission {
        &self.0.admission
    }

    /// Marks the server as draining: `/readyz` fails from now on.
    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::Release);
    }

    /// Whether the server is draining.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::Acquire)
    }

    /// Counts an open stream until the guard drops.
    pub fn open_stream(&self) -> StreamCount {
        let n = self.0.streams.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::gauge!("tenantgate_streams_in_flight").set(n as f64);
        StreamCount(self.clone())
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.0.streams.load(Ordering::Acquire)
    }
}

/// One open stream.
#[derive(Debug)]
pub struct StreamCount(AppState);

impl Drop for StreamCount {
    fn drop(&mut self) {
        let n = self.0.0.streams.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        metrics::gauge!("tenantgate_streams_in_flight").set(n as f64);
    }
}
