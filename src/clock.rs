//! Wall-clock time as the service uses it: Unix milliseconds, and their
//! RFC 3339 and SQL `TIMESTAMP` forms (UTC).

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDateTime, SecondsFormat};

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

#[cfg(test)]
mod tests {
    use super::*;

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
