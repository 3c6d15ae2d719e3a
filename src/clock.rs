//! Wall-clock time as the service uses it: Unix milliseconds, and their
//! RFC 3339 and SQL `TIMESTAMP` forms (UTC).

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat};

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    now.saturating_add(test_offset_ms()).max(0) as u64
}

/// Crash tests move the process's clock to a given instant (a replay
/// across midnight): `TEST_CLOCK_OFFSET_MS`, read once, added to every
/// reading. Only in builds with `--features failpoints`; zero otherwise.
#[cfg(feature = "failpoints")]
fn test_offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("TEST_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

#[cfg(not(feature = "failpoints"))]
fn test_offset_ms() -> i64 {
    0
}

/// `2026-01-01T00:00:00.000Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A SQL `TIMESTAMP` (UTC, no zone).
pub fn naive(unix_ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .naive_utc()
}

/// A SQL `TIMESTAMP` (UTC, no zone) from microseconds since the epoch.
pub fn naive_micros(unix_us: i64) -> NaiveDateTime {
    DateTime::from_timestamp_micros(unix_us)
        .unwrap_or_default()
        .naive_utc()
}

/// Microseconds since the epoch of a SQL `TIMESTAMP` read as UTC.
pub fn micros_of(time: NaiveDateTime) -> i64 {
    time.and_utc().timestamp_micros()
}

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const CE_TO_UNIX_DAYS: i32 = 719_163;

/// A SQL `DATE` from days since the epoch.
pub fn date_of_day(unix_day: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(unix_day.saturating_add(CE_TO_UNIX_DAYS))
        .unwrap_or_default()
}

/// Days since the epoch of a SQL `DATE`.
pub fn day_of(date: NaiveDate) -> i32 {
    use chrono::Datelike;
    date.num_days_from_ce() - CE_TO_UNIX_DAYS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_days_map_to_calendar_dates_and_back() {
        assert_eq!(date_of_day(0), NaiveDate::from_ymd_opt(1970, 1, 1).unwrap());
        assert_eq!(
            date_of_day(19_723),
            NaiveDate::from_ymd_opt(2024, 1, 1).unwrap()
        );
        assert_eq!(day_of(date_of_day(19_723)), 19_723);
        assert_eq!(day_of(date_of_day(-5)), -5);
    }

    #[test]
    fn times_print_in_utc_with_milliseconds() {
        assert_eq!(rfc3339(1_704_067_200_123), "2024-01-01T00:00:00.123Z");
        assert_eq!(
            naive(1_704_067_200_123).to_string(),
            "2024-01-01 00:00:00.123"
        );
        assert!(unix_ms() > 1_700_000_000_000);
        let t = naive_micros(1_704_067_200_123_456);
        assert_eq!(t.to_string(), "2024-01-01 00:00:00.123456");
        assert_eq!(micros_of(t), 1_704_067_200_123_456);
    }
}
