//! `status.driftedTools` of each McpConnection, published by the gateway:
//! the only component that sees the upstream tools.
//!
//! - [`DriftBoard`]: the drifted tools of each connection after its latest
//!   complete listing, set by the upstreams (never blocks them).
//! - [`Published`]: what was applied last per connection, so the API server is
//!   written only on change, once at start per connection (to clear what an
//!   earlier run left), and cleared when a drift goes or a connection leaves.
//! - [`start`]: in a cluster, a task that server-side-applies the changes to
//!   the `status` subresource with its own field manager
//!   ([`FIELD_MANAGER`]); the operator applies its own status fields under
//!   another manager and never sets `driftedTools`, so the two never fight.
//!   Out of a cluster (no `KUBERNETES_SERVICE_HOST`) publishing is off.
//!
//! Every replica applies the same sorted list under the same manager: the
//! writes are idempotent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tenantgate_crds::v1alpha1::McpConnection;
use tokio::sync::watch;

/// The field manager of the gateway's status writes.
pub const FIELD_MANAGER: &str = "tenantgate-gateway";

/// First retry delay after a failed apply; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The drifted tools of each connection, by connection name (sorted, so
/// every replica publishes the same list).
pub type DriftSets = BTreeMap<String, BTreeSet<String>>;

/// The current drifted tools of the tenant's connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DriftBoard(Arc<watch::Sender<DriftSets>>);

impl Default for DriftBoard {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(DriftSets::new())))
    }
}

impl DriftBoard {
    /// Records the drifted tools of `connection`'s latest complete listing.
    pub fn set(&self, connection: &str, tools: BTreeSet<String>) {
        self.0.send_if_modified(|sets| {
            if sets.get(connection) == Some(&tools) {
                return false;
            }
            sets.insert(connection.to_string(), tools);
            true
        });
    }

    /// Forgets the connections not in `names` (removed from the config).
    pub fn retain(&self, names: &BTreeSet<&str>) {
        self.0.send_if_modified(|sets| {
            let before = sets.len();
            sets.retain(|name, _| names.contains(name.as_str()));
            sets.len() != before
        });
    }

    /// Follows the board.
    pub fn subscribe(&self) -> watch::Receiver<DriftSets> {
        self.0.subscribe()
    }
}

/// What was applied last per connection.
#[derive(Debug, Default)]
pub struct Published {
    applied: HashMap<String, BTreeSet<String>>,
}

impl Published {
    /// The applies that bring the API server to `current`: connections never
    /// applied by this process (whatever their list, empty included: an
    /// earlier run may have left a drift that is gone now), those whose list
    /// changed, and an empty list for connections applied before but no
    /// longer on the board.
    pub fn pending(&self, current: &DriftSets) -> Vec<(String, BTreeSet<String>)> {
        let mut out: Vec<(String, BTreeSet<String>)> = current
            .iter()
            .filter(|(name, tools)| self.applied.get(name.as_str()) != Some(tools))
            .map(|(name, tools)| (name.clone(), tools.clone()))
            .collect();
        let mut gone: Vec<&String> = self
            .applied
            .iter()
            .filter(|(name, tools)| !current.contains_key(name.as_str()) && !tools.is_empty())
            .map(|(name, _)| name)
            .collect();
        gone.sort();
        out.extend(gone.into_iter().map(|name| (name.clone(), BTreeSet::new())));
        out
    }

    /// Records a successful apply; an empty list of a connection no longer
    /// on the board is forgotten.
    pub fn record(&mut self, connection: &str, tools: BTreeSet<String>, current: &DriftSets) {
        if tools.is_empty() && !current.contains_key(connection) {
            self.applied.remove(connection);
        } else {
            self.applied.insert(connection.to_string(), tools);
        }
    }
}

/// The server-side apply body of a connection's drifted tools: without the
/// field when there are none, which removes it (this manager owned it).
pub fn apply_body(tools: &BTreeSet<String>) -> Value {
    let mut body = json!({ "apiVersion": "tenantgate.dev/v1alpha1", "kind": "McpConnection" });
    if !tools.is_empty() {
        body["status"] = json!({ "driftedTools": tools });
    }
    body
}

/// Why a status apply failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The in-cluster config (token, CA, namespace files) could not be read.
    #[error("in-cluster config: {0}")]
    Config(#[from] kube::config::InClusterError),
    /// The client could not be built.
    #[error("API client: {0}")]
    Client(#[source] kube::Error),
    /// The API server refused or could not be reached.
    #[error("applying status of McpConnection {connection}: {source}")]
    Apply {
        /// metadata.name of the McpConnection.
        connection: String,
        /// What the client said.
        #[source]
        source: kube::Error,
    },
}

impl StatusError {
    /// Short label for logs and metrics.
    pub fn as_reason(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Client(_) => "client",
            Self::Apply { source: kube::Error::Api(s), .. } if s.code == 403 => "forbidden",
            Self::Apply { source: kube::Error::Api(_), .. } => "api",
            Self::Apply { .. } => "transport",
        }
    }
}

/// Starts publishing `board` to the McpConnections of the pod's namespace
/// when running in a cluster; logs once and does nothing otherwise.
pub fn start(board: &DriftBoard) {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        tracing::info!(
            "not in a cluster (no KUBERNETES_SERVICE_HOST): McpConnection status.driftedTools is not published"
        );
        return;
    }
    match client() {
        Ok(client) => {
            let api: Api<McpConnection> = Api::default_namespaced(client);
            tokio::spawn(publish(board.subscribe(), api));
        }
        Err(e) => {
            metrics::counter!("tenantgate_mcp_status_apply_errors_total", "reason" => e.as_reason()).increment(1);
            tracing::warn!(error = %e, "McpConnection status.driftedTools cannot be published");
        }
    }
}

/// The in-cluster client: the projected ServiceAccount token (re-read as the
/// kubelet rotates it), the cluster CA and the namespace.
fn client() -> Result<kube::Client, StatusError> {
    let config = kube::Config::incluster()?;
    kube::Client::try_from(config).map_err(StatusError::Client)
}

/// Applies every change of the board until it is dropped; retries failures
/// with exponential backoff (a board change retries at once).
pub async fn publish(mut board: watch::Receiver<DriftSets>, api: Api<McpConnection>) {
    let mut published = Published::default();
    let mut delays = crate::backoff::Delays::new(RETRY_MIN, RETRY_MAX).peekable();
    loop {
        let current = board.borrow_and_update().clone();
        let mut failed = false;
        for (connection, tools) in published.pending(&current) {
            match apply(&api, &connection, &tools).await {
                Ok(()) => {
                    tracing::info!(%connection, drifted_tools = ?tools, "McpConnection status.driftedTools applied");
                    published.record(&connection, tools, &current);
                }
                Err(e) => {
                    failed = true;
                    metrics::counter!("tenantgate_mcp_status_apply_errors_total", "reason" => e.as_reason())
                        .increment(1);
                    tracing::warn!(error = %e, reason = e.as_reason(), retry_in_ms = delays.peek().map_or(0, |d| d.as_millis() as u64), "McpConnection status not applied");
                }
            }
        }
        if failed {
            let retry = delays.next().unwrap_or(RETRY_MAX);
            tokio::select! {
                () = tokio::time::sleep(crate::backoff::spread(retry)) => {}
                changed = board.changed() => if changed.is_err() { return },
            }
            continue;
        }
        delays = crate::backoff::Delays::new(RETRY_MIN, RETRY_MAX).peekable();
        if board.changed().await.is_err() {
            return;
        }
    }
}

/// One server-side apply of a connection's `status.driftedTools`; a
/// connection that no longer exists has nothing to clear.
async fn apply(api: &Api<McpConnection>, connection: &str, tools: &BTreeSet<String>) -> Result<(), StatusError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch_status(connection, &params, &Patch::Apply(apply_body(tools))).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 && tools.is_empty() => Ok(()),
        Err(source) => Err(StatusError::Apply { connection: connection.to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(tools: &[&str]) -> BTreeSet<String> {
        tools.iter().map(|t| t.to_string()).collect()
    }

    fn sets(entries: &[(&str, &[&str])]) -> DriftSets {
        entries.iter().map(|(c, t)| (c.to_string(), set(t))).collect()
    }

    /// Runs `pending` and records every apply as successful; what was applied.
    fn sync(published: &mut Published, current: &DriftSets) -> Vec<(String, BTreeSet<String>)> {
        let pending = published.pending(current);
        for (c, t) in &pending {
            published.record(c, t.clone(), current);
        }
        pending
    }

    #[test]
    fn applies_once_per_change_and_clears_when_the_drift_goes() {
        let mut p = Published::default();
        // First sight of each connection: applied even when clean (clears an earlier run's list).
        let first = sets(&[("gh", &["search"]), ("docs", &[])]);
        assert_eq!(sync(&mut p, &first), [("docs".into(), set(&[])), ("gh".into(), set(&["search"]))]);
        assert!(sync(&mut p, &first).is_empty(), "nothing changed: nothing applied");
        // A second tool drifts.
        let two = sets(&[("gh", &["search", "delete"]), ("docs", &[])]);
        assert_eq!(sync(&mut p, &two), [("gh".into(), set(&["delete", "search"]))]);
        // The pin is fixed: applied without the field.
        let clean = sets(&[("gh", &[]), ("docs", &[])]);
        assert_eq!(sync(&mut p, &clean), [("gh".into(), set(&[]))]);
        assert!(sync(&mut p, &clean).is_empty());
    }

    #[test]
    fn a_removed_connection_is_cleared_once_and_forgotten() {
        let mut p = Published::default();
        sync(&mut p, &sets(&[("gh", &["search"]), ("docs", &[])]));
        let removed = sets(&[]);
        assert_eq!(sync(&mut p, &removed), [("gh".into(), set(&[]))], "only the one with a list to clear");
        assert!(sync(&mut p, &removed).is_empty());
        // Back on the board: applied again.
        assert_eq!(sync(&mut p, &sets(&[("gh", &[])])), [("gh".into(), set(&[]))]);
    }

    #[test]
    fn a_failed_apply_stays_pending() {
        let mut p = Published::default();
        sync(&mut p, &sets(&[("gh", &["search"])]));
        let clean = sets(&[("gh", &[])]);
        // The clearing apply failed (not recorded): it is still pending on the next pass.
        assert_eq!(p.pending(&clean), [("gh".into(), set(&[]))]);
        assert_eq!(p.pending(&clean), [("gh".into(), set(&[]))]);
        // And a removed connection's clearing too.
        assert_eq!(p.pending(&sets(&[])), [("gh".into(), set(&[]))]);
    }

    #[test]
    fn the_body_sets_the_list_or_leaves_the_field_out() {
        assert_eq!(
            apply_body(&set(&["b", "a"])),
            json!({"apiVersion": "tenantgate.dev/v1alpha1", "kind": "McpConnection", "status": {"driftedTools": ["a", "b"]}})
        );
        let empty = apply_body(&set(&[]));
        assert!(empty.get("status").is_none(), "{empty}");
    }

    #[tokio::test]
    async fn the_board_notifies_only_on_change() {
        let board = DriftBoard::default();
        let mut rx = board.subscribe();
        board.set("gh", set(&["search"]));
        assert!(rx.has_changed().unwrap_or(false));
        rx.borrow_and_update();
        board.set("gh", set(&["search"]));
        assert!(!rx.has_changed().unwrap_or(true), "same list: no wake-up");
        board.retain(&BTreeSet::from(["gh"]));
        assert!(!rx.has_changed().unwrap_or(true));
        board.retain(&BTreeSet::new());
        assert!(rx.has_changed().unwrap_or(false));
        assert!(rx.borrow_and_update().is_empty());
    }
}
