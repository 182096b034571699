//! Loading, compiling and hot-reloading the GatewayConfig.

mod runtime;
mod source;
mod watch;

pub use runtime::{Carried, Runtime, compile};
pub use source::{ConfigSource, Snapshot};
pub use watch::{load_initial, watch};
