//! Times given on the command line (`job create --offer-at`,
//! `--expires-at`): RFC 3339, a date and time with a zone or offset, a bare
//! local time, or a time relative to now.
//!
//! A bare local time (`2026-12-02 17:00`) is read in the machine's zone
//! (`TZ`, else `/etc/localtime`) with `mktime`, so no time-zone database is
//! compiled in; everything else is plain arithmetic on the civil calendar.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The accepted forms, for error messages and `--help`.
pub const FORMS: &str = "2026-12-02T17:00:00Z, \"2026-12-02 17:00 +01:00\", \
\"2026-12-02 17:00\" (local time), \"in 2h\", \"+2h\" or now";

/// Parses a time option; the error names the accepted forms.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let refuse = || format!("{text:?} is not a time: use {FORMS}");
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("now") {
        return Ok(SystemTime::now());
    }
    let relative = trimmed
        .strip_prefix('+')
        .or_else(|| trimmed.strip_prefix("in "));
    if let Some(after) = relative {
        let after = humantime::parse_duration(after.trim()).map_err(|_| refuse())?;
        return Ok(SystemTime::now() + after);
    }
    let civil = parse_civil(trimmed).ok_or_else(refuse)?;
    let seconds = match civil.offset_seconds {
        Some(offset) => civil.utc_seconds() - offset,
        None => civil.local_seconds().ok_or_else(refuse)?,
    };
    let base = if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    };
    Ok(base + Duration::from_millis(civil.millis as u64))
}

/// A date and time as written, with its offset from UTC if one was given.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
    offset_seconds: Option<i64>,
}

impl Civil {
    /// Seconds since the epoch, reading the fields as UTC.
    fn utc_seconds(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// Seconds since the epoch, reading the fields in the local zone.
    fn local_seconds(&self) -> Option<i64> {
        // SAFETY: `tm` is a plain C struct; zeroed is a valid value, and
        // mktime only reads and normalises it.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        tm.tm_year = i32::try_from(self.year - 1900).ok()?;
        tm.tm_mon = self.month as i32 - 1;
        tm.tm_mday = self.day as i32;
        tm.tm_hour = self.hour as i32;
        tm.tm_min = self.minute as i32;
        tm.tm_sec = self.second as i32;
        // Let the zone's rules say whether daylight saving time applies.
        tm.tm_isdst = -1;
        // SAFETY: `tm` is a valid, exclusively borrowed struct.
        let seconds = unsafe { libc::mktime(&mut tm) };
        (seconds != -1).then_some(seconds)
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Reads `N` ASCII digits at the start of `text`.
fn digits(text: &str, n: usize) -> Option<(u32, &str)> {
    let head = text.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, &text[n..]))
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][ ][Z|UTC|±HH[:MM]]`.
fn parse_civil(text: &str) -> Option<Civil> {
    let (year, rest) = digits(text, 4)?;
    let (month, rest) = digits(rest.strip_prefix('-')?, 2)?;
    let (day, rest) = digits(rest.strip_prefix('-')?, 2)?;
    let (mut hour, mut minute, mut second, mut millis) = (0, 0, 0, 0);
    let mut rest = rest;
    if let Some(time) = rest
        .strip_prefix(['T', 't'])
        .or_else(|| rest.strip_prefix(' ').map(str::trim_start))
        .filter(|time| time.starts_with(|c: char| c.is_ascii_digit()))
    {
        let (h, after) = digits(time, 2)?;
        let (m, mut after) = digits(after.strip_prefix(':')?, 2)?;
        hour = h;
        minute = m;
        if let Some(seconds) = after.strip_prefix(':') {
            let (s, more) = digits(seconds, 2)?;
            second = s;
            after = more;
            if let Some(fraction) = after.strip_prefix(['.', ',']) {
                let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
                if len == 0 {
                    return None;
                }
                let mut ms: String = fraction[..len.min(3)].to_owned();
                while ms.len() < 3 {
                    ms.push('0');
                }
                millis = ms.parse().ok()?;
                after = &fraction[len..];
            }
        }
        rest = after;
    }
    let zone = rest.trim_start();
    let offset_seconds = if zone.is_empty() {
        None
    } else if zone.eq_ignore_ascii_case("z") || zone.eq_ignore_ascii_case("utc") {
        Some(0)
    } else {
        let (sign, offset) = match zone.split_at(1) {
            ("+", offset) => (1, offset),
            ("-", offset) => (-1, offset),
            _ => return None,
        };
        let (hours, after) = digits(offset, 2)?;
        let minutes = match after.strip_prefix(':').unwrap_or(after) {
            "" => 0,
            text => {
                let (minutes, end) = digits(text, 2)?;
                if !end.is_empty() {
                    return None;
                }
                minutes
            }
        };
        if hours > 23 || minutes > 59 {
            return None;
        }
        Some(sign * (i64::from(hours) * 3600 + i64::from(minutes) * 60))
    };
    let year = i64::from(year);
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    valid.then_some(Civil {
        year,
        month,
        day,
        hour,
        minute,
        second,
        millis,
        offset_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(time: SystemTime) -> i64 {
        time.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
    }

    /// 2026-12-02T16:00:00Z.
    const UTC_MS: i64 = 1_796_227_200_000;

    #[test]
    fn times_with_an_offset_or_zone_parse() {
        for text in [
            "2026-12-02T17:00:00+01:00",
            "2026-12-02T16:00:00Z",
            "2026-12-02t16:00:00z",
            "2026-12-02 17:00 +01:00",
            "2026-12-02 17:00+0100",
            "2026-12-02 17:00 +01",
            "2026-12-02 16:00Z",
            "2026-12-02 16:00 UTC",
            "2026-12-02 15:00 -01:00",
            "  2026-12-02 16:00:00Z ",
        ] {
            assert_eq!(parse_time(text).map(ms), Ok(UTC_MS), "{text}");
        }
        assert_eq!(
            parse_time("2026-12-02T16:00:00.25Z").map(ms),
            Ok(UTC_MS + 250)
        );
        assert_eq!(parse_time("1970-01-01T00:00:00Z").map(ms), Ok(0));
        assert_eq!(
            parse_time("2024-02-29 00:00Z").map(ms),
            Ok(1_709_164_800_000)
        );
    }

    #[test]
    fn a_bare_time_is_local() {
        let time = parse_time("2026-12-02 17:00").unwrap();
        let seconds = ms(time) / 1000;
        // SAFETY: plain C structs, exclusively borrowed.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to values borrowed for the call.
        unsafe { libc::localtime_r(&seconds, &mut tm) };
        assert_eq!(
            (
                tm.tm_year + 1900,
                tm.tm_mon + 1,
                tm.tm_mday,
                tm.tm_hour,
                tm.tm_min
            ),
            (2026, 12, 2, 17, 0)
        );
        let midnight = parse_time("2026-12-02").unwrap();
        assert_eq!(ms(time) - ms(midnight), 17 * 3600 * 1000);
    }

    #[test]
    fn relative_times_count_from_now() {
        let now = ms(SystemTime::now());
        for (text, after_ms) in [
            ("now", 0),
            ("in 2h", 7_200_000),
            ("+2h", 7_200_000),
            ("+90m", 5_400_000),
            ("in 1d 2h", 93_600_000),
        ] {
            let at = ms(parse_time(text).unwrap());
            assert!((at - now - after_ms).abs() < 5_000, "{text}: {at} vs {now}");
        }
    }

    #[test]
    fn other_text_is_refused_naming_the_forms() {
        for text in [
            "tomorrow",
            "17:00",
            "2026-13-01 00:00Z",
            "2026-02-29 00:00Z",
            "2026-12-02 24:00Z",
            "2026-12-02 17:00 +25:00",
            "2026-12-02 17:00 CET",
            "2026-12-02 17",
            "in soon",
            "",
        ] {
            let err = parse_time(text).unwrap_err();
            assert!(
                err.contains("in 2h") && err.contains("local time"),
                "{text}: {err}"
            );
        }
    }
}
