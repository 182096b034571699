//! The narrow handle domain code gets instead of the server state: the
//! runtime in force (swapped atomically on reload), what outlives a config,
//! and the storage that records usage and audit.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Carried, Runtime};
use crate::storage::Storage;

/// The tenant's runtime in force and what outlives it. Cheap to clone; built
/// once at start-up.
#[derive(Clone, Debug)]
pub struct RuntimeHandle(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    runtime: ArcSwap<Runtime>,
    carried: Carried,
    storage: Arc<Storage>,
}

impl RuntimeHandle {
    /// A handle around a first runtime.
    pub fn new(runtime: Runtime, carried: Carried, storage: Arc<Storage>) -> Self {
        Self(Arc::new(Inner { runtime: ArcSwap::from_pointee(runtime), carried, storage }))
    }

    /// The runtime in force; a request keeps the one it started with.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.0.runtime.load_full()
    }

    /// Puts a new runtime in force.
    pub fn swap_runtime(&self, runtime: Arc<Runtime>) {
        self.0.runtime.store(runtime);
    }

    /// State carried across reloads.
    pub fn carried(&self) -> &Carried {
        &self.0.carried
    }

    /// Database, recorder and API keys.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.0.storage
    }
}
