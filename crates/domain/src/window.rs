//! Maintenance windows (issue 14): when a mandatory job may start on a
//! workstation. A window opens at a wall-clock time in a time zone, stays
//! open for a duration, and opens again every so many days (7: weekly) or
//! never again. A job starts only inside a window that stays open at least
//! its timeout from now (Configuration Manager's rule: the run must fit in
//! what is left of the window); with no window, at any time.
//!
//! Time zones are resolved by the caller (reading a time-zone database is
//! IO): a [`Window`] holds its zone resolved, and everything here is a pure
//! function of it and of the time passed in.

use crate::TimestampMs;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Span;

/// One maintenance window.
#[derive(Clone, Debug)]
pub struct Window {
    /// The first opening, as a wall-clock time in `zone`.
    pub start: DateTime,
    /// The zone `start` is read in; each recurrence keeps its wall-clock
    /// time across daylight-saving changes.
    pub zone: TimeZone,
    /// How long it stays open, in milliseconds (more than 0).
    pub duration_ms: i64,
    /// Opens again every this many days; none: once.
    pub every_days: Option<u32>,
}

/// Whether a job may start now under a set of windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowVerdict {
    /// Inside a window with room for the job's timeout (or no window).
    Open,
    /// Not now; the next window with room for the timeout opens then.
    OpensAt(TimestampMs),
    /// No window, now or later, is long enough for the timeout.
    Never,
}

/// Longest look back or ahead, in occurrences, when the arithmetic
/// estimate of the current occurrence is off (a daylight-saving change
/// moves an occurrence by an hour, never by a whole period).
const SLACK: i64 = 2;

impl Window {
    /// The instant of occurrence `k` (0: the first opening); none past the
    /// calendar's range or for an occurrence a once-only window lacks.
    fn opening(&self, k: i64) -> Option<TimestampMs> {
        if k < 0 || (k > 0 && self.every_days.is_none()) {
            return None;
        }
        // Days are added to the wall-clock start, then read in the zone: a
        // start that falls in a daylight-saving gap moves (forward, as
        // `jiff`'s "compatible" reading does) on that day only.
        let days = k.checked_mul(i64::from(self.every_days.unwrap_or(0)))?;
        let civil = self
            .start
            .checked_add(Span::new().try_days(days).ok()?)
            .ok()?;
        let at = civil.to_zoned_datetime(self.zone.clone()).ok()?;
        Some(at.timestamp().as_millisecond())
    }

    /// The occurrence a job of `timeout_ms` may start in at `now`, or the
    /// first later one it could start in.
    fn verdict(&self, now: TimestampMs, timeout_ms: i64) -> WindowVerdict {
        if self.duration_ms < timeout_ms {
            return WindowVerdict::Never;
        }
        let Some(first) = self.opening(0) else {
            return WindowVerdict::Never;
        };
        let period_ms = i64::from(self.every_days.unwrap_or(0)) * 86_400_000;
        let estimate = match period_ms {
            0 => 0,
            period => (now - first).div_euclid(period),
        };
        let mut k = (estimate - SLACK).max(0);
        loop {
            let Some(opens) = self.opening(k) else {
                return WindowVerdict::Never;
            };
            let closes = opens.saturating_add(self.duration_ms);
            if opens <= now && now.saturating_add(timeout_ms) <= closes {
                return WindowVerdict::Open;
            }
            if opens > now {
                return WindowVerdict::OpensAt(opens);
            }
            k += 1;
        }
    }
}

/// Whether a job whose run may take `timeout_ms` may start at `now` under
/// `windows` (any of them will do; none: any time).
pub fn may_start(windows: &[Window], now: TimestampMs, timeout_ms: i64) -> WindowVerdict {
    if windows.is_empty() {
        return WindowVerdict::Open;
    }
    let mut next: Option<TimestampMs> = None;
    for window in windows {
        match window.verdict(now, timeout_ms) {
            WindowVerdict::Open => return WindowVerdict::Open,
            WindowVerdict::OpensAt(at) => next = Some(next.map_or(at, |next| next.min(at))),
            WindowVerdict::Never => {}
        }
    }
    next.map_or(WindowVerdict::Never, WindowVerdict::OpensAt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    const HOUR: i64 = 3_600_000;

    fn window(start: &str, zone: &str, hours: i64, every_days: Option<u32>) -> Window {
        Window {
            start: start.parse().unwrap(),
            zone: TimeZone::get(zone).unwrap(),
            duration_ms: hours * HOUR,
            every_days,
        }
    }

    fn at(text: &str) -> TimestampMs {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn no_window_means_any_time() {
        assert_eq!(may_start(&[], 0, HOUR), WindowVerdict::Open);
    }

    #[test]
    fn a_job_starts_only_where_its_timeout_fits_in_what_is_left() {
        // Every day 22:00–02:00 UTC.
        let nightly = [window("2026-12-01T22:00:00", "UTC", 4, Some(1))];
        assert_eq!(
            may_start(&nightly, at("2026-12-08T23:00:00Z"), HOUR),
            WindowVerdict::Open
        );
        // At 01:30 only half an hour is left: the next night.
        assert_eq!(
            may_start(&nightly, at("2026-12-09T01:30:00Z"), HOUR),
            WindowVerdict::OpensAt(at("2026-12-09T22:00:00Z"))
        );
        assert_eq!(
            may_start(&nightly, at("2026-12-08T12:00:00Z"), HOUR),
            WindowVerdict::OpensAt(at("2026-12-08T22:00:00Z"))
        );
        // Before the first opening.
        assert_eq!(
            may_start(&nightly, at("2026-11-01T12:00:00Z"), HOUR),
            WindowVerdict::OpensAt(at("2026-12-01T22:00:00Z"))
        );
        // A timeout longer than the window: never.
        assert_eq!(
            may_start(&nightly, at("2026-12-08T23:00:00Z"), 5 * HOUR),
            WindowVerdict::Never
        );
    }

    #[test]
    fn a_window_keeps_its_wall_clock_time_across_daylight_saving() {
        // 22:00 in Paris: 21:00 UTC in winter, 20:00 UTC in summer.
        let paris = [window("2026-03-01T22:00:00", "Europe/Paris", 2, Some(1))];
        assert_eq!(
            may_start(&paris, at("2026-03-27T12:00:00Z"), HOUR),
            WindowVerdict::OpensAt(at("2026-03-27T21:00:00Z"))
        );
        assert_eq!(
            may_start(&paris, at("2026-03-30T12:00:00Z"), HOUR),
            WindowVerdict::OpensAt(at("2026-03-30T20:00:00Z"))
        );
    }

    #[test]
    fn a_start_in_a_daylight_saving_gap_moves_that_day_only() {
        // 02:30 does not exist in Paris on 2026-03-29 (02:00 → 03:00).
        let paris = [window("2026-03-29T02:30:00", "Europe/Paris", 2, Some(1))];
        assert_eq!(
            may_start(&paris, at("2026-03-28T12:00:00Z"), HOUR),
            WindowVerdict::OpensAt(at("2026-03-29T01:30:00Z"))
        );
        // The next day it opens at 02:30 local time again (00:30 UTC).
        assert_eq!(
            may_start(&paris, at("2026-03-29T12:00:00Z"), HOUR),
            WindowVerdict::OpensAt(at("2026-03-30T00:30:00Z"))
        );
    }

    #[test]
    fn weekly_and_once_only_windows() {
        // Saturdays (2026-12-05 is one) 06:00–12:00 UTC.
        let weekly = [window("2026-12-05T06:00:00", "UTC", 6, Some(7))];
        assert_eq!(
            may_start(&weekly, at("2026-12-08T12:00:00Z"), HOUR),
            WindowVerdict::OpensAt(at("2026-12-12T06:00:00Z"))
        );
        let once = [window("2026-12-05T06:00:00", "UTC", 6, None)];
        assert_eq!(
            may_start(&once, at("2026-12-05T07:00:00Z"), HOUR),
            WindowVerdict::Open
        );
        assert_eq!(
            may_start(&once, at("2026-12-08T12:00:00Z"), HOUR),
            WindowVerdict::Never
        );
    }

    #[test]
    fn the_earliest_of_several_windows_is_the_next() {
        let windows = [
            window("2026-12-05T06:00:00", "UTC", 6, Some(7)),
            window("2026-12-01T22:00:00", "UTC", 1, Some(1)),
        ];
        // The nightly one is too short for two hours; Saturday's is next.
        assert_eq!(
            may_start(&windows, at("2026-12-08T12:00:00Z"), 2 * HOUR),
            WindowVerdict::OpensAt(at("2026-12-12T06:00:00Z"))
        );
        assert_eq!(
            may_start(&windows, at("2026-12-08T12:00:00Z"), HOUR / 2),
            WindowVerdict::OpensAt(at("2026-12-08T22:00:00Z"))
        );
    }
}
