//! API group `tenantgate.dev`, version `v1alpha1`.

mod api_key;
mod common;
mod mcp_connection;
mod model_price;
mod observability;
mod prompt_policy;
mod tenant;

pub use api_key::*;
pub use common::{SecretKeyRef, conditions};
pub use mcp_connection::*;
pub use model_price::*;
pub use observability::*;
pub use prompt_policy::*;
pub use tenant::*;

/// The API group of every Tenantgate resource.
pub const GROUP: &str = "tenantgate.dev";
/// The API version of this module's resources.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of this module's resources.
pub const API_VERSION: &str = "tenantgate.dev/v1alpha1";
