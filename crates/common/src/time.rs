//! Wall-clock times as the daemons store them (milliseconds since the Unix epoch) and as they
//! show them (protobuf timestamps, RFC 3339).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch at `time`; 0 before the epoch, saturating far after it.
pub fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    })
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// The protobuf timestamp of `unix_ms`, negative values included.
pub fn timestamp(unix_ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_ms.div_euclid(1000),
        nanos: i32::try_from(unix_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// `unix_ms` as RFC 3339 in UTC to the second, e.g. `2026-12-05T13:04:00Z` (the epoch for
/// negative values).
pub fn rfc3339_seconds(unix_ms: i64) -> String {
    let since = Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(UNIX_EPOCH + since).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_become_timestamps_and_text_both_sides_of_the_epoch() {
        assert_eq!(
            timestamp(1_500),
            prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            timestamp(-1),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
        assert_eq!(rfc3339_seconds(1_796_389_440_999), "2026-12-04T13:04:00Z");
        assert_eq!(rfc3339_seconds(-5), "1970-01-01T00:00:00Z");
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(42)), 42);
        assert!(now_unix_ms() > 1_700_000_000_000);
    }
}
