//! Delays between attempts: the one way the gateway spaces retries and
//! reconnects (LLM retries, MCP reconnects, status writes, the recorder's
//! database retries), on backon's exponential backoff.

use std::time::Duration;

use backon::BackoffBuilder;

/// Doubling delays from `first` up to `max`, forever, in whole milliseconds
/// (backon computes in `f32` seconds; config values are milliseconds).
#[derive(Debug)]
pub struct Delays(backon::ExponentialBackoff);

impl Delays {
    /// Delays from `first` (never above `max`) doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let builder = backon::ExponentialBuilder::new()
            .with_min_delay(first.min(max))
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        Self(builder.build())
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next().map(|d| Duration::from_millis((d.as_secs_f64() * 1000.0).round() as u64))
    }
}

/// `delay` plus up to a quarter more, so peers that failed together do not retry together.
pub fn spread(delay: Duration) -> Duration {
    delay + delay.mul_f64(fastrand::f64() / 4.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_in_whole_milliseconds() {
        let ms = |v| Duration::from_millis(v);
        let got: Vec<_> = Delays::new(ms(100), ms(700)).take(5).collect();
        assert_eq!(got, [ms(100), ms(200), ms(400), ms(700), ms(700)]);
        assert_eq!(Delays::new(ms(900), ms(300)).next(), Some(ms(300)));
        for _ in 0..100 {
            let d = spread(ms(400));
            assert!(d >= ms(400) && d <= ms(500), "{d:?}");
        }
    }
}
