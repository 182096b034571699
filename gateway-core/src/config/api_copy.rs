//! The gateway's own ConfigMap, watched through the API server.
//!
//! The ConfigMap volume the config file lives in is refreshed by the kubelet on
//! its own schedule (its sync period plus its cache TTL: about a minute by
//! default). Watching the same ConfigMap through the API server sees the
//! operator's write within a second, so a change (an ApiKey deleted or
//! rotated, a model added) reaches every replica in seconds. The file stays the
//! source at start and whenever the API server has delivered nothing yet: a
//! gateway that cannot reach the API server still starts and still follows the
//! volume. What the API server delivered is never older than the file, since
//! both are the one object the operator writes.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// The latest content of one key of a ConfigMap, as the API server delivers it.
#[derive(Clone, Debug)]
pub struct ApiCopy {
    latest: watch::Receiver<Option<Arc<str>>>,
    what: Arc<str>,
}

impl ApiCopy {
    /// Watches key `key` of ConfigMap `namespace/name` until the process ends. The watch
    /// asks for that one object (`metadata.name=<name>`), which is what a Role limited to
    /// it by `resourceNames` allows; failures are retried with backoff and logged.
    pub fn start(client: kube::Client, namespace: &str, name: &str, key: &str) -> Self {
        let (tx, latest) = watch::channel(None);
        let what: Arc<str> = format!("ConfigMap {namespace}/{name}").into();
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let (key, label) = (key.to_owned(), what.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
            while let Some(event) = events.next().await {
                match event {
                    Ok(map) => match map.data.and_then(|mut d| d.remove(&key)) {
                        Some(text) => {
                            tx.send_if_modified(|held| {
                                let changed = held.as_deref() != Some(text.as_str());
                                if changed {
                                    *held = Some(text.into());
                                }
                                changed
                            });
                        }
                        None => tracing::warn!(configmap = %label, key, "the ConfigMap has no such key"),
                    },
                    Err(e) => {
                        metrics::counter!("tenantgate_config_watch_errors_total").increment(1);
                        tracing::warn!(configmap = %label, error = %e, "watching the config through the API server failed; retrying (the mounted file is still followed)");
                    }
                }
            }
        });
        Self { latest, what }
    }

    /// [`Self::start`] with the client Kubernetes tools would use (`KUBECONFIG` or
    /// `~/.kube/config`, else the pod's ServiceAccount), in its default namespace.
    pub async fn infer(name: &str, key: &str) -> Result<Self, String> {
        let config = kube::Config::infer().await.map_err(|e| e.to_string())?;
        let namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
        Ok(Self::start(client, &namespace, name, key))
    }

    /// A copy fed by hand (tests).
    pub fn from_receiver(latest: watch::Receiver<Option<Arc<str>>>, what: &str) -> Self {
        Self { latest, what: what.into() }
    }

    /// The latest content, once the API server has delivered one.
    pub fn latest(&self) -> Option<Arc<str>> {
        self.latest.borrow().clone()
    }

    /// Which ConfigMap this is a copy of.
    pub fn what(&self) -> &str {
        &self.what
    }
}
