//! An upstream API key in a mounted Secret file, re-read at most once a second
//! so a rotated key is used without a restart.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderValue;

use super::UpstreamError;

const REREAD_AFTER: Duration = Duration::from_secs(1);

/// A header value built from a secret file, e.g. `Bearer <key>`.
#[derive(Debug)]
pub struct SecretFile {
    path: PathBuf,
    prefix: &'static str,
    /// Held only for a clone or a swap, never across an await.
    cached: Mutex<Option<(Instant, HeaderValue)>>,
}

impl SecretFile {
    /// A secret whose header value is `prefix` followed by the file content.
    pub fn new(path: impl Into<PathBuf>, prefix: &'static str) -> Self {
        Self { path: path.into(), prefix, cached: Mutex::new(None) }
    }

    /// The current header value.
    pub fn header(&self) -> Result<HeaderValue, UpstreamError> {
        if let Ok(guard) = self.cached.lock()
            && let Some((at, value)) = guard.as_ref()
            && at.elapsed() < REREAD_AFTER
        {
            return Ok(value.clone());
        }
        // A small file on a tmpfs: reading it inline is cheaper than a blocking-pool hop.
        let value = match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let mut v = HeaderValue::from_str(&format!("{}{}", self.prefix, text.trim()))
                    .map_err(|_| UpstreamError::Credentials)?;
                v.set_sensitive(true);
                v
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the provider API key file");
                // Keep using the last good key while the file is being swapped.
                return self
                    .cached
                    .lock()
                    .ok()
                    .and_then(|g| g.as_ref().map(|(_, v)| v.clone()))
                    .ok_or(UpstreamError::Credentials);
            }
        };
        if let Ok(mut guard) = self.cached.lock() {
            *guard = Some((Instant::now(), value.clone()));
        }
        Ok(value)
    }
}
