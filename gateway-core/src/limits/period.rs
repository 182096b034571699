//! The windows of quotas and budgets: a UTC day, a UTC month, or fixed
//! windows of one length from a start. `lease.lua` computes the same windows
//! on Redis' clock.

use tenantgate_crds::v1alpha1::{Budget, BudgetPeriod};

/// A window kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
    /// Back-to-back windows of `length` seconds from second `start` since the epoch.
    Fixed {
        /// Start of the first window.
        start: i64,
        /// Length of each window (positive).
        length: i64,
    },
}

impl Period {
    /// The period of `budget`; `Err` names what does not parse (the config
    /// load refuses it before any limiter is built).
    pub fn of(budget: &Budget) -> Result<Self, String> {
        match (budget.period, &budget.fixed_window) {
            (BudgetPeriod::Day, None) => Ok(Self::Day),
            (BudgetPeriod::Month, None) => Ok(Self::Month),
            (BudgetPeriod::Fixed, Some(w)) => {
                let (start, length) = w.seconds()?;
                Ok(Self::Fixed { start, length })
            }
            (BudgetPeriod::Fixed, None) => Err("period Fixed needs fixedWindow".into()),
            (_, Some(_)) => Err("fixedWindow is only for period Fixed".into()),
        }
    }
}

const DAY_US: f64 = 86_400e6;

impl Period {
    /// The number `lease.lua` and `give.lua` know the period by.
    pub fn code(self) -> u8 {
        match self {
            Self::Day => 0,
            Self::Month => 1,
            Self::Fixed { .. } => 2,
        }
    }

    /// The start and length of a fixed window, as `lease.lua` takes them (zero otherwise).
    pub fn fixed(self) -> (i64, i64) {
        match self {
            Self::Fixed { start, length } => (start, length),
            Self::Day | Self::Month => (0, 0),
        }
    }

    /// The window holding second `s` since the epoch: the day number, the
    /// month number (`year * 12 + month - 1`), or the first second of a fixed
    /// window (so that a changed start or length never lands in an old window).
    pub fn window(self, s: i64) -> i64 {
        let day = s.div_euclid(86_400);
        match self {
            Self::Day => day,
            Self::Month => {
                let (y, m) = civil(day);
                y * 12 + m - 1
            }
            Self::Fixed { start, length } => start + (s - start).div_euclid(length) * length,
        }
    }

    /// Microseconds from `now_us` (since the epoch) to the end of its window.
    pub fn reset_us(self, now_us: f64) -> f64 {
        let day = (now_us / DAY_US).floor();
        match self {
            Self::Day => (day + 1.0) * DAY_US - now_us,
            Self::Month => {
                let (y, m) = civil(day as i64);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                first_of_month(y, m) as f64 * DAY_US - now_us
            }
            Self::Fixed { length, .. } => {
                let w = self.window((now_us / 1e6).floor() as i64);
                (w + length) as f64 * 1e6 - now_us
            }
        }
    }
}

impl Period {
    /// Window `window` as a date: `2026-12-06` (a day), `2026-12` (a month),
    /// `2026-12-01T09:00:00Z` (the start of a fixed window).
    pub fn label(self, window: i64) -> String {
        match self {
            Self::Day => date(window),
            Self::Month => format!("{:04}-{:02}", window.div_euclid(12), window.rem_euclid(12) + 1),
            Self::Fixed { .. } => {
                let s = window.rem_euclid(86_400);
                format!("{}T{:02}:{:02}:{:02}Z", date(window.div_euclid(86_400)), s / 3600, s / 60 % 60, s % 60)
            }
        }
    }

    /// What the window is, in words: `day (UTC)`, `month (UTC)`, `window of 168h`.
    pub fn describe(self) -> String {
        match self {
            Self::Day => "day (UTC)".into(),
            Self::Month => "month (UTC)".into(),
            Self::Fixed { length, .. } if length % 3600 == 0 => format!("window of {}h", length / 3600),
            Self::Fixed { length, .. } => {
                format!("window of {}", super::go_duration(std::time::Duration::from_secs(length.unsigned_abs())))
            }
        }
    }
}

/// Day number `day` as `2026-12-06`.
fn date(day: i64) -> String {
    let (y, m) = civil(day);
    format!("{y:04}-{m:02}-{:02}", day - first_of_month(y, m) + 1)
}

/// Year and month (1-12) of day number `days` since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m)
}

/// Day number of the first of month `m` of year `y` (`days_from_civil`).
fn first_of_month(y: i64, m: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_follow_the_calendar() {
        // 2024-02-29 12:00 UTC (a leap day), 2026-12-31 23:59:59 UTC, 1970-01-01.
        let leap = 1_709_208_000;
        assert_eq!(Period::Month.window(leap), 2024 * 12 + 1);
        assert_eq!(Period::Day.window(leap), 19_782);
        let eve = 1_798_761_599;
        assert_eq!(Period::Month.window(eve), 2026 * 12 + 11);
        assert_eq!(Period::Month.window(eve + 1), 2027 * 12, "a second later is January");
        assert_eq!(Period::Month.window(0), 1970 * 12);
        assert_eq!(first_of_month(2024, 3), 19_783);
        assert_eq!(first_of_month(1970, 1), 0);
        assert_eq!(Period::Day.label(Period::Day.window(leap)), "2024-02-29");
        assert_eq!(Period::Month.label(Period::Month.window(eve)), "2026-12");
        assert_eq!(Period::Month.label(Period::Month.window(eve + 1)), "2027-01");
    }

    #[test]
    fn resets_are_at_the_next_midnight_and_first_of_month() {
        let leap_us = 1_709_208_000e6;
        assert!((Period::Day.reset_us(leap_us) - 43_200e6).abs() < 1.0);
        // From noon on 29 February 2024 to 1 March: half a day.
        assert!((Period::Month.reset_us(leap_us) - 43_200e6).abs() < 1.0);
        // From 2026-12-06 00:00 to 2027-01-01: 26 days.
        let dec6 = 1_796_515_200e6;
        assert!((Period::Month.reset_us(dec6) - 26.0 * DAY_US).abs() < 1.0);
    }

    #[test]
    fn fixed_windows_follow_each_other_from_their_start() {
        let budget = Budget::fixed("10", "2026-12-01T09:00:00Z", "168h");
        let p = Period::of(&budget).expect("period");
        let start = 1_796_115_600; // 2026-12-01 09:00 UTC
        assert_eq!(p, Period::Fixed { start, length: 604_800 });
        assert_eq!(p.window(start), start);
        assert_eq!(p.window(start + 604_799), start);
        assert_eq!(p.window(start + 604_800), start + 604_800, "the second week");
        assert_eq!(p.window(start - 1), start - 604_800, "before the start: the window ending at it");
        assert_eq!(p.label(p.window(start + 700_000)), "2026-12-08T09:00:00Z");
        let now_us = (start + 3_600) as f64 * 1e6;
        assert!((p.reset_us(now_us) - 601_200e6).abs() < 1.0, "an hour in, 167 hours left");
        assert_eq!(p.describe(), "window of 168h");
        let mut broken = budget.clone();
        broken.period = BudgetPeriod::Month;
        assert!(Period::of(&broken).is_err(), "fixedWindow without Fixed");
        broken.fixed_window = None;
        broken.period = BudgetPeriod::Fixed;
        assert!(Period::of(&broken).is_err(), "Fixed without fixedWindow");
    }
}
