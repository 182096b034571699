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

use crate::labels::TENANT_LABEL;

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

/// How a row of the table starts its cache, with the label selector of its watch.
pub type CacheStart = fn(Client, Option<&str>) -> Started;

/// managedFields are the largest part of most objects and nothing here reads them.
pub fn strip_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// The trigger's view of a changed object: its metadata, moved out (the
/// cache keeps its own copy).
fn metadata_only<K: Resource>(mut obj: K) -> DynamicObject {
    DynamicObject { types: None, metadata: std::mem::take(obj.meta_mut()), data: serde_json::Value::Null }
}

/// The one way the operator watches a kind: a reflector on `api` filtered
/// by `config`, managedFields dropped before they are cached, and the stream
/// of touched objects (the store fills as the stream is polled).
pub(crate) fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = watcher(api, config).default_backoff().modify(strip_managed_fields).reflect(writer).touched_objects();
    (store, stream)
}

/// Starts the cache of one row: every object of `K` matching `selector` (all
/// when `None`), kept whole, or as metadata only for a row cached as metadata.
fn start<K>(client: Client, selector: Option<&str>) -> Started
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let mut config = watcher::Config::default();
    if let Some(selector) = selector {
        config = config.labels(selector);
    }
    let (store, stream) = reflect(Api::<K>::all(client), config);
    (Arc::new(store), stream.map_ok(metadata_only).boxed())
}

/// Watches the objects of `K` that match `selector` (the operator's
/// managed-by label, for the kinds it owns).
pub(crate) fn watch_whole<K>(client: Client, selector: Option<&str>) -> Started
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    start::<K>(client, selector)
}

/// Watches the metadata of the objects of `K` that match `selector` (every
/// object when `None`; never the data of Secrets).
pub(crate) fn watch_metadata<K>(client: Client, selector: Option<&str>) -> Started
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    start::<PartialObjectMeta<K>>(client, selector)
}
