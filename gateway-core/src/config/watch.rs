//! Polls the config source and swaps the runtime atomically when it changes.
//!
//! Polling the content (about once a second) rather than watching inotify
//! events is deliberate: a Kubernetes ConfigMap volume updates by swapping a
//! `..data` symlink, which file watches on the config file itself miss.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch::Receiver;

use tenantgate_crds::config::GatewayConfig;

use super::{ConfigSource, RuntimeHandle, compile};
use crate::storage::AuditEvent;

/// Reads the first config (compiled by the caller once what outlives it is
/// built); the gateway does not start without one.
pub async fn load_initial(source: &ConfigSource) -> Result<(GatewayConfig, [u8; 32]), super::ConfigError> {
    let snapshot = source.read().await?;
    let config = source.config(&snapshot)?;
    Ok((config, snapshot.fingerprint))
}

/// Reloads on change until `shutdown` flips. An invalid config is refused
/// (logged once per distinct content, counted) and the old one stays.
pub async fn watch(
    state: RuntimeHandle,
    source: ConfigSource,
    mut fingerprint: [u8; 32],
    interval: Duration,
    mut shutdown: Receiver<bool>,
) {
    let mut refused: Option<[u8; 32]> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let snapshot = match source.read().await {
            Ok(s) => s,
            Err(e) => {
                // A file mid-swap or briefly missing: try again next tick, keep serving.
                tracing::debug!(error = %e, "config source unreadable");
                continue;
            }
        };
        if snapshot.fingerprint == fingerprint || Some(snapshot.fingerprint) == refused {
            continue;
        }
        let old_hash = state.runtime().config.config_hash.clone();
        let compiled = match source.config(&snapshot) {
            Ok(config) => compile(config, state.carried()).await.map_err(super::ConfigError::from),
            Err(e) => Err(e),
        };
        match compiled {
            Ok(runtime) => {
                let new_hash = runtime.config.config_hash.clone();
                let change = AuditEvent::config_change(&runtime.config.tenant.name, &old_hash, &new_hash);
                state.swap_runtime(Arc::new(runtime));
                state.storage().recorder.audit(change);
                fingerprint = snapshot.fingerprint;
                refused = None;
                metrics::counter!("tenantgate_config_reloads_total", "result" => "applied").increment(1);
                metrics::gauge!("tenantgate_config_valid").set(1.0);
                tracing::info!(%old_hash, %new_hash, "config reloaded");
            }
            Err(error) => {
                refused = Some(snapshot.fingerprint);
                metrics::counter!("tenantgate_config_reloads_total", "result" => "refused").increment(1);
                metrics::gauge!("tenantgate_config_valid").set(0.0);
                tracing::error!(%error, reason = %error.reason(), kept_hash = %old_hash, "refusing the new config; the previous config stays in force");
            }
        }
    }
}
