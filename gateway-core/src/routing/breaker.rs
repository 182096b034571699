//! A circuit breaker per target: closed, open after `failure_threshold`
//! consecutive failures, half-open after `open_seconds` with one probe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// State of one target's breaker. Lock-free: the hot path is two atomic loads.
#[derive(Debug)]
pub struct Breaker {
    label: Arc<str>,
    state: AtomicU8,
    failures: AtomicU32,
    /// Milliseconds since `epoch` when the breaker last opened.
    opened_at_ms: AtomicU64,
    epoch: Instant,
    threshold: AtomicU32,
    open_for_ms: AtomicU64,
}

/// Permission to call a target; a half-open probe that is dropped without a
/// verdict (the client went away) reopens the breaker so another probe can run.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(label: Arc<str>, threshold: u32, open_for: Duration) -> Self {
        let b = Self {
            label,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            threshold: AtomicU32::new(threshold.max(1)),
            open_for_ms: AtomicU64::new(open_for.as_millis() as u64),
        };
        b.publish(CLOSED);
        b
    }

    /// Applies new thresholds from a reloaded config; the state is kept.
    pub fn configure(&self, threshold: u32, open_for: Duration) {
        self.threshold.store(threshold.max(1), Ordering::Relaxed);
        self.open_for_ms.store(open_for.as_millis() as u64, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Asks to call the target. `None` while open (or while a probe runs).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(Permit { breaker: self.clone(), probe: false, settled: false }),
            OPEN => {
                let opened = self.opened_at_ms.load(Ordering::Acquire);
                if self.now_ms() < opened + self.open_for_ms.load(Ordering::Relaxed) {
                    return None;
                }
                // One caller wins the probe.
                self.state.compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire).ok()?;
                self.publish(HALF_OPEN);
                tracing::info!(target_name = %self.label, "circuit breaker half-open: probing");
                Some(Permit { breaker: self.clone(), probe: true, settled: false })
            }
            _ => None,
        }
    }

    /// Time until the breaker lets a probe through (zero when closed).
    pub fn retry_in(&self) -> Duration {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Duration::ZERO;
        }
        let until = self.opened_at_ms.load(Ordering::Acquire) + self.open_for_ms.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(self.now_ms()))
    }

    /// Whether the breaker is open now.
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }

    /// A failure seen outside a permit (a stream that broke after it started).
    pub fn record_failure(&self) {
        self.on_failure(false);
    }

    fn on_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            self.publish(CLOSED);
            tracing::info!(target_name = %self.label, "circuit breaker closed");
        }
    }

    fn on_failure(&self, probe: bool) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if probe || failures >= self.threshold.load(Ordering::Relaxed) {
            self.opened_at_ms.store(self.now_ms(), Ordering::Release);
            if self.state.swap(OPEN, Ordering::AcqRel) != OPEN {
                self.publish(OPEN);
                tracing::warn!(target_name = %self.label, failures, "circuit breaker open");
            }
        }
    }

    fn publish(&self, state: u8) {
        metrics::gauge!("tenantgate_circuit_breaker_state", "target" => self.label.to_string()).set(f64::from(state));
    }
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.on_success();
    }

    /// The call failed in a way that counts against the target.
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.on_failure(self.probe);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            // Back to open with the old timestamp: the next caller may probe at once.
            let _ = self.breaker.state.compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once_and_closes() {
        let b = Arc::new(Breaker::new("t".into(), 2, Duration::from_millis(30)));
        b.try_acquire().expect("closed").failure();
        assert!(!b.is_open());
        b.try_acquire().expect("closed").failure();
        assert!(b.is_open());
        assert!(b.try_acquire().is_none());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.try_acquire().expect("half-open probe");
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        probe.success();
        assert!(!b.is_open());
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn failed_probe_reopens_and_dropped_probe_frees_the_slot() {
        let b = Arc::new(Breaker::new("t".into(), 1, Duration::from_millis(20)));
        b.try_acquire().expect("closed").failure();
        std::thread::sleep(Duration::from_millis(25));
        b.try_acquire().expect("probe").failure();
        assert!(b.try_acquire().is_none(), "reopened");
        std::thread::sleep(Duration::from_millis(25));
        drop(b.try_acquire().expect("probe"));
        assert!(b.try_acquire().is_some(), "a dropped probe lets the next caller probe");
    }
}
