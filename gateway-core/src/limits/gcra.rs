//! The generic cell rate algorithm (GCRA): a token bucket kept as one number,
//! the theoretical arrival time (TAT) of the next unit.
//!
//! A bucket of `capacity` units refills one unit every `interval`. A fresh
//! bucket admits exactly `capacity` units at once, then one per `interval`.
//! Costs are in units (one request, or N tokens), times in microseconds as
//! `f64` (exact to well below a microsecond at Unix-epoch magnitudes).
//! `lease.lua` runs the same arithmetic inside Redis; keep the two in step.

/// Rounding slack when comparing times, in microseconds.
const EPSILON_US: f64 = 1.0;

/// One bucket's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gcra {
    /// Microseconds for one unit to refill.
    pub interval_us: f64,
    /// Units the bucket holds.
    pub capacity: u64,
}

/// The answer for one cost at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Check {
    /// Admitted: store `tat`.
    Allow {
        /// The new TAT to store.
        tat: f64,
        /// Units still available right now.
        remaining: u64,
        /// Microseconds until the bucket is full again.
        reset_us: f64,
    },
    /// Refused: nothing changes.
    Deny {
        /// Microseconds until this cost would be admitted.
        retry_us: f64,
        /// Units available right now (fewer than the cost).
        remaining: u64,
        /// Microseconds until the bucket is full again.
        reset_us: f64,
    },
}

impl Gcra {
    /// `rate` units per minute, `capacity` at once.
    pub fn per_minute(rate: u64, capacity: u64) -> Self {
        Self { interval_us: 60e6 / rate.max(1) as f64, capacity: capacity.max(1) }
    }

    /// Tries to take `cost` units at `now` from a bucket whose TAT is `tat`
    /// (0 for a bucket never used). A cost above the capacity is taken as the
    /// capacity: it waits for a full bucket rather than never passing.
    pub fn check(&self, tat: f64, now: f64, cost: u64) -> Check {
        let cost = cost.min(self.capacity) as f64;
        let base = tat.max(now);
        let span = self.capacity as f64 * self.interval_us;
        let new_tat = base + cost * self.interval_us;
        let allow_at = new_tat - span;
        if allow_at - now > EPSILON_US {
            let remaining = ((now + span - base) / self.interval_us + 1e-6).floor().max(0.0) as u64;
            return Check::Deny { retry_us: allow_at - now, remaining, reset_us: base - now };
        }
        let remaining = ((now - allow_at) / self.interval_us + 1e-6).floor().max(0.0) as u64;
        Check::Allow { tat: new_tat, remaining, reset_us: new_tat - now }
    }

    /// The TAT after settling a reservation of `reserved` units that really
    /// used `actual`: overuse is charged, unused units come back.
    pub fn settle(&self, tat: f64, now: f64, reserved: u64, actual: u64) -> f64 {
        let delta = actual as f64 - reserved.min(self.capacity) as f64;
        tat.max(now) + delta * self.interval_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: f64 = 1e6;

    fn run(g: &Gcra, tat: &mut f64, now: f64, cost: u64) -> bool {
        match g.check(*tat, now, cost) {
            Check::Allow { tat: t, .. } => {
                *tat = t;
                true
            }
            Check::Deny { .. } => false,
        }
    }

    #[test]
    fn a_fresh_bucket_admits_exactly_its_capacity_at_once() {
        let g = Gcra::per_minute(60, 5);
        let mut tat = 0.0;
        let now = 1_700_000_000.0 * S;
        let admitted = (0..20).filter(|_| run(&g, &mut tat, now, 1)).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn steady_rate_after_the_burst() {
        // 60/min = one per second, burst 5: 5 at once, then one each second.
        let g = Gcra::per_minute(60, 5);
        let mut tat = 0.0;
        let start = 1_700_000_000.0 * S;
        let mut admitted = 0;
        // Ten seconds of requests every 100 ms.
        for i in 0..100 {
            if run(&g, &mut tat, start + f64::from(i) * 0.1 * S, 1) {
                admitted += 1;
            }
        }
        // 5 at once plus one per second for the 9.9 s that followed.
        assert_eq!(admitted, 5 + 9);
    }

    #[test]
    fn retry_after_is_when_the_next_unit_refills() {
        let g = Gcra::per_minute(60, 2);
        let now = 1_000.0 * S;
        let mut tat = 0.0;
        assert!(run(&g, &mut tat, now, 1));
        assert!(run(&g, &mut tat, now, 1));
        match g.check(tat, now + 0.25 * S, 1) {
            Check::Deny { retry_us, remaining, reset_us } => {
                assert!((retry_us - 0.75 * S).abs() < 2.0, "retry {retry_us}");
                assert_eq!(remaining, 0);
                assert!((reset_us - 1.75 * S).abs() < 2.0, "reset {reset_us}");
            }
            other => panic!("expected a denial, got {other:?}"),
        }
        // Exactly at the retry time it passes.
        assert!(run(&g, &mut tat, now + S, 1));
    }

    #[test]
    fn remaining_and_reset_count_down() {
        let g = Gcra::per_minute(600, 10);
        let now = 5.0 * S;
        match g.check(0.0, now, 1) {
            Check::Allow { remaining, reset_us, .. } => {
                assert_eq!(remaining, 9);
                assert!((reset_us - 0.1 * S).abs() < 2.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_bucket_with_variable_costs_and_settlement() {
        // 1000 tokens per minute, the whole minute at once.
        let g = Gcra::per_minute(1000, 1000);
        let now = 10.0 * S;
        let mut tat = 0.0;
        assert!(run(&g, &mut tat, now, 600));
        assert!(!run(&g, &mut tat, now, 500), "600 + 500 > 1000");
        // The 600 reserved used only 100: 500 come back.
        tat = g.settle(tat, now, 600, 100);
        assert!(run(&g, &mut tat, now, 900));
        assert!(!run(&g, &mut tat, now, 1));
        // Overuse is charged: 10 reserved, 210 used, so 200 more are owed.
        let mut tat2 = 0.0;
        assert!(run(&g, &mut tat2, now, 10));
        tat2 = g.settle(tat2, now, 10, 210);
        assert!(run(&g, &mut tat2, now, 790));
        assert!(!run(&g, &mut tat2, now, 1));
    }

    #[test]
    fn a_cost_above_capacity_waits_for_a_full_bucket() {
        let g = Gcra::per_minute(100, 100);
        let now = 10.0 * S;
        let mut tat = 0.0;
        assert!(run(&g, &mut tat, now, 5_000));
        assert!(!run(&g, &mut tat, now + S, 5_000));
        assert!(run(&g, &mut tat, now + 60.0 * S, 5_000));
        // Settling a capped reservation counts from the cap.
        let t = g.settle(0.0, now, 5_000, 100);
        assert!((t - now).abs() < 1.0);
    }

    #[test]
    fn fractional_intervals_stay_exact_at_epoch_magnitudes() {
        // 7/min does not divide a minute in whole microseconds.
        let g = Gcra::per_minute(7, 7);
        let mut tat = 0.0;
        let now = 1_763_000_000.0 * S;
        assert_eq!((0..10).filter(|_| run(&g, &mut tat, now, 1)).count(), 7);
        // One minute later the bucket is full again.
        assert_eq!((0..10).filter(|_| run(&g, &mut tat, now + 60.0 * S, 1)).count(), 7);
    }
}
