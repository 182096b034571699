//! The operator's caches of the kinds it manages, behind one interface so
//! that the table of managed kinds can drive them whatever their type.
//! Each cache keeps its kind's typed objects (compact, and read typed where
//! needed, e.g. the gateway Deployment's status).

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::labels::{MANAGED_SELECTOR, TENANT_LABEL};

/// What the reconcile needs from the cache of one managed kind.
pub trait KindCache: Send + Sync {
    /// The cached object, as JSON, to compare with the desired one.
    fn live(&self, namespace: Option<&str>, name: &str) -> Option<serde_json::Value>;
    /// Names of the cached objects of `tenant` (by its label) in `namespace`.
    fn tenant_objects(&self, tenant: &str, namespace: &str) -> Vec<String>;
    /// How many objects are cached.
    fn count(&self) -> usize;
    /// Resolves once the first list is in (false: the watch is gone).
    fn wait_ready(&self) -> BoxFuture<'_, bool>;
    /// The typed store, for [`crate::context::Stores::store`].
    fn as_any(&self) -> &dyn Any;
}

impl<K> KindCache for Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + Send + Sync + 'static,
{
    fn live(&self, namespace: Option<&str>, name: &str) -> Option<serde_json::Value> {
        let mut reference = ObjectRef::<K>::new(name);
        if let Some(ns) = namespace {
            reference = reference.within(ns);
        }
        self.get(&reference).and_then(|o| serde_json::to_value(&*o).ok())
    }

    fn tenant_objects(&self, tenant: &str, namespace: &str) -> Vec<String> {
        self.state()
            .iter()
            .filter(|o| o.labels().get(TENANT_LABEL).map(String::as_str) == Some(tenant))
            .filter(|o| o.namespace().as_deref() == Some(namespace))
            .map(|o| o.name_any())
            .collect()
    }

    fn count(&self) -> usize {
        self.state().len()
    }

    fn wait_ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.wait_until_ready().await.is_ok() })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A started cache: the cache, and the stream of changed objects (their
/// metadata only: owner references and namespace are all a trigger reads).
pub type Started = (Arc<dyn KindCache>, BoxStream<'static, Result<DynamicObject, watcher::Error>>);

/// How a row of the table starts its cache.
pub type CacheStart = fn(Client) -> Started;

/// managedFields are the largest part of most objects and nothing here reads them.
pub fn strip_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// The trigger's view of a changed object: its metadata, moved out (the
/// cache keeps its own copy).
fn metadata_only<K: Resource>(mut obj: K) -> DynamicObject {
    DynamicObject { types: None, metadata: std::mem::take(obj.meta_mut()), data: serde_json::Value::Null }
}

/// Watches the objects of `K` that carry the operator's managed-by label.
pub(crate) fn watch_owned<K>(client: Client) -> Started
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = watcher(Api::<K>::all(client), watcher::Config::default().labels(MANAGED_SELECTOR))
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(writer)
        .touched_objects()
        .map_ok(metadata_only)
        .boxed();
    (Arc::new(store), stream)
}

/// Watches the metadata of every object of `K` (never the data of Secrets).
pub(crate) fn watch_all_metadata<K>(client: Client) -> Started
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<PartialObjectMeta<K>>();
    let stream = watcher(Api::<PartialObjectMeta<K>>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(writer)
        .touched_objects()
        .map_ok(metadata_only)
        .boxed();
    (Arc::new(store), stream)
}
