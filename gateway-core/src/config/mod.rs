//! Loading, compiling and hot-reloading the GatewayConfig.

mod api_copy;
mod handle;
mod runtime;
mod source;
mod watch;

use tenantgate_crds::issue::{ConfigIssue, Reason};
use tenantgate_crds::manifests::ManifestErrors;
use tenantgate_crds::render::RenderError;

pub use api_copy::ApiCopy;
pub use handle::RuntimeHandle;
pub use runtime::{Carried, Runtime, compile};
pub use source::{ConfigSource, Snapshot};
pub use watch::{load_initial, watch};

/// Why a config could not be loaded: every problem is a [`ConfigIssue`];
/// reading CRD YAML and rendering report all of theirs at once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One problem (reading the source, or compiling the config).
    #[error(transparent)]
    Issue(#[from] ConfigIssue),
    /// The CRD YAML was refused.
    #[error(transparent)]
    Manifests(#[from] ManifestErrors),
    /// The tenant's config could not be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl ConfigError {
    /// The reason of the first problem, for the log line and metrics.
    pub fn reason(&self) -> Reason {
        let first = match self {
            Self::Issue(issue) => Some(issue),
            Self::Manifests(errors) => errors.0.first().map(|e| &e.issue),
            Self::Render(e) => e.issues.first(),
        };
        first.map_or(Reason::Internal, |i| i.reason)
    }
}
