//! Whether the limit store (Redis) answers: a gauge, an error counter, one
//! log line when an outage starts and one when it ends, and probing while it
//! is down so requests do not each wait for a timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// While the store is down, at most one request per this interval tries it;
/// the others take the fail mode at once.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Up/down state of the store.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    fail_open: AtomicBool,
    /// Milliseconds since `started` when a request last tried a down store.
    last_probe_ms: AtomicU64,
    started: Instant,
}

impl Default for Health {
    fn default() -> Self {
        metrics::gauge!("tenantgate_ratelimit_backend_up").set(1.0);
        Self {
            up: AtomicBool::new(true),
            fail_open: AtomicBool::new(true),
            last_probe_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Health {
    /// Whether this request should try the store: always while it is up; one
    /// request per [`PROBE_INTERVAL`] while it is down.
    pub fn should_try(&self) -> bool {
        if self.up.load(Ordering::Acquire) {
            return true;
        }
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_probe_ms.load(Ordering::Acquire);
        now.saturating_sub(last) >= PROBE_INTERVAL.as_millis() as u64
            && self.last_probe_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The store answered.
    pub fn record_ok(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            metrics::gauge!("tenantgate_ratelimit_backend_up").set(1.0);
            tracing::info!("the rate limit store (Redis) is reachable again; limits are enforced");
        }
    }

    /// What requests get while the store is down (for the outage log line).
    pub fn set_fail_open(&self, fail_open: bool) {
        self.fail_open.store(fail_open, Ordering::Release);
    }

    /// The store failed.
    pub fn record_error(&self, error: &dyn std::fmt::Display) {
        let fail_open = self.fail_open.load(Ordering::Acquire);
        metrics::counter!("tenantgate_ratelimit_backend_errors_total").increment(1);
        if self.up.swap(false, Ordering::AcqRel) {
            self.last_probe_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Release);
            metrics::gauge!("tenantgate_ratelimit_backend_up").set(0.0);
            let mode = if fail_open { "open: requests pass unlimited" } else { "closed: requests are refused" };
            tracing::error!(%error, "the rate limit store (Redis) is unreachable; failing {mode} until it is back");
        }
    }

    /// Whether the store answered last time.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_once_per_interval_while_down_and_recovers() {
        let h = Health::default();
        assert!(h.should_try());
        h.record_error(&"boom");
        assert!(!h.is_up());
        assert!(!h.should_try(), "just failed: no probe yet");
        std::thread::sleep(PROBE_INTERVAL + Duration::from_millis(20));
        assert!(h.should_try(), "one probe after the interval");
        assert!(!h.should_try(), "and only one");
        h.record_ok();
        assert!(h.is_up());
        assert!(h.should_try());
    }
}
