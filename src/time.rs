//! Time as the queue counts it: [`UnixTime`], whole seconds since the epoch, and its two
//! renderings, RFC 5322 §3.3 dates (`Thu, 26 Nov 2026 21:40:49 +0000`, for DSNs and `Received:`)
//! and `YYYY-MM-DD HH:MM:SS` (for people), without a date crate: both are always in UTC.
//!
//! A leaf module: every other module may use it, it uses none of them. Only [`UnixTime::now`]
//! reads the clock, for the glue that calls the sans-I/O cores.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time, whole seconds since the Unix epoch; serialized as that number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixTime(pub u64);

impl UnixTime {
    /// The system clock, for the glue that calls the sans-I/O methods.
    pub fn now() -> UnixTime {
        UnixTime(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> UnixTime {
        UnixTime(self.0.saturating_add(d.as_secs()))
    }

    /// `self - d`, saturating at the epoch.
    pub fn minus(self, d: Duration) -> UnixTime {
        UnixTime(self.0.saturating_sub(d.as_secs()))
    }
}

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `t` as an RFC 5322 date-time in UTC (`+0000`, RFC 5322 §3.3: the zone of the machine is not
/// our business and UTC needs no table).
pub fn rfc5322_date(t: UnixTime) -> String {
    let days = t.0 / 86_400;
    let secs = t.0 % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[((days + 4) % 7) as usize];
    let month = MONTHS[(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `t` as `YYYY-MM-DD HH:MM:SS` in UTC, for people reading `queue list`.
pub fn utc_timestamp(t: UnixTime) -> String {
    let secs = t.0 % 86_400;
    let (year, month, day) = civil_from_days(t.0 / 86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The proleptic Gregorian (year, month 1..=12, day 1..=31) of a day count since 1970-01-01.
///
/// Counts in 400-year eras (146 097 days each, the Gregorian cycle) of years that start on
/// 1 March, so the leap day is the last day of its year and month lengths follow a fixed
/// pattern.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Day 0 of era 0 is 0000-03-01, 719 468 days before the Unix epoch.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 31,30,31,30,31 repeat, which (5 * m + 2) / 153 inverts.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps() {
        assert_eq!(utc_timestamp(UnixTime(0)), "1970-01-01 00:00:00");
        assert_eq!(utc_timestamp(UnixTime(951_782_400)), "2000-02-29 00:00:00");
        assert_eq!(
            utc_timestamp(UnixTime(1_795_000_000)),
            "2026-11-18 11:06:40"
        );
    }

    #[test]
    fn known_dates() {
        // Checked against GNU date -u -R.
        let rows = [
            (0, "Thu, 01 Jan 1970 00:00:00 +0000"),
            (86_399, "Thu, 01 Jan 1970 23:59:59 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (951_868_800, "Wed, 01 Mar 2000 00:00:00 +0000"),
            (1_000_000_000, "Sun, 09 Sep 2001 01:46:40 +0000"),
            (1_700_000_000, "Tue, 14 Nov 2023 22:13:20 +0000"),
            (1_709_164_800, "Thu, 29 Feb 2024 00:00:00 +0000"),
            (2_147_483_648, "Tue, 19 Jan 2038 03:14:08 +0000"),
            (4_102_444_800, "Fri, 01 Jan 2100 00:00:00 +0000"),
            (4_107_456_000, "Sun, 28 Feb 2100 00:00:00 +0000"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 +0000"),
            (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 +0000"),
        ];
        for (secs, want) in rows {
            assert_eq!(rfc5322_date(UnixTime(secs)), want, "{secs}");
        }
    }

    #[test]
    fn far_future_does_not_panic() {
        assert!(rfc5322_date(UnixTime(u64::MAX)).ends_with("+0000"));
    }
}
