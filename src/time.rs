//! Timestamps, durations and the injectable clock.
//!
//! Event times are integer epoch milliseconds (UTC). Inputs may be integers (epoch ms) or
//! RFC 3339 strings; sub-millisecond digits are floored to the millisecond.

use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Epoch milliseconds, UTC.
pub type TimestampMs = i64;

/// The earliest accepted time: 0001-01-01T00:00:00Z.
pub const TIME_MIN_MS: TimestampMs = -62_135_596_800_000;
/// The latest accepted time: 9999-12-31T23:59:59.999Z.
pub const TIME_MAX_MS: TimestampMs = 253_402_300_799_999;
/// The longest window or freshness period: 100 years of days.
pub const DURATION_MAX_MS: i64 = 36_500 * 86_400_000;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{0:?} is not epoch milliseconds or an RFC 3339 timestamp")]
    Unparseable(String),
    #[error("{0} ms is outside the supported range (years 1 to 9999)")]
    OutOfRange(i64),
    #[error("{0:?} is not a duration (an integer followed by ms, s, m, h or d, e.g. 90s, 15m, 7d)")]
    BadDuration(String),
    #[error("duration {0:?} must be positive and at most 36500d")]
    DurationOutOfRange(String),
}

/// Parse epoch milliseconds or an RFC 3339 timestamp.
pub fn parse_timestamp(text: &str) -> Result<TimestampMs, TimeError> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return check_range(ms);
    }
    let parsed = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| TimeError::Unparseable(text.to_owned()))?;
    let ms = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
    check_range(i64::try_from(ms).map_err(|_| TimeError::Unparseable(text.to_owned()))?)
}

pub fn check_range(ms: i64) -> Result<TimestampMs, TimeError> {
    if (TIME_MIN_MS..=TIME_MAX_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(TimeError::OutOfRange(ms))
    }
}

/// Format as RFC 3339 with milliseconds, e.g. `2026-03-01T12:00:00.000Z`.
pub fn format_timestamp(ms: TimestampMs) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => ms.to_string(),
    }
}

/// Parse a duration such as `90s`, `15m`, `7d` into milliseconds.
pub fn parse_duration(text: &str) -> Result<i64, TimeError> {
    let bad = || TimeError::BadDuration(text.to_owned());
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let n: i64 = digits
        .parse()
        .map_err(|_| TimeError::DurationOutOfRange(text.to_owned()))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n
        .checked_mul(unit_ms)
        .ok_or_else(|| TimeError::DurationOutOfRange(text.to_owned()))?;
    if ms <= 0 || ms > DURATION_MAX_MS {
        return Err(TimeError::DurationOutOfRange(text.to_owned()));
    }
    Ok(ms)
}

/// The shortest text for a duration, in the largest unit that divides it.
pub fn format_duration(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Where "now" comes from. The engine never reads the wall clock itself: `latest` asks the
/// clock it was opened with, so tests (and reproducible runs) can fix time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> TimestampMs;
}

/// The system's wall clock. Used by the CLI and the HTTP server.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> TimestampMs {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        since_epoch.as_millis() as i64
    }
}

/// A clock that says what it is told. For tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: TimestampMs) -> Self {
        Self(AtomicI64::new(now_ms))
    }

    pub fn set(&self, now_ms: TimestampMs) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> TimestampMs {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("0"), Ok(0));
        assert_eq!(parse_timestamp("1772366400000"), Ok(1_772_366_400_000));
        assert_eq!(
            parse_timestamp("2026-03-01T12:00:00Z"),
            Ok(1_772_366_400_000)
        );
        assert_eq!(
            parse_timestamp("2026-03-01T13:00:00+01:00"),
            Ok(1_772_366_400_000)
        );
        // Sub-millisecond digits floor, also before 1970.
        assert_eq!(
            parse_timestamp("2026-03-01T12:00:00.0019Z"),
            Ok(1_772_366_400_001)
        );
        assert_eq!(parse_timestamp("1969-12-31T23:59:59.9995Z"), Ok(-1));
        assert!(parse_timestamp("yesterday").is_err());
        assert!(parse_timestamp("2026-02-30T00:00:00Z").is_err());
        assert_eq!(
            parse_timestamp(&i64::MAX.to_string()),
            Err(TimeError::OutOfRange(i64::MAX))
        );
        assert_eq!(
            format_timestamp(1_772_366_400_001),
            "2026-03-01T12:00:00.001Z"
        );
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("15m"), Ok(900_000));
        assert_eq!(parse_duration("7d"), Ok(604_800_000));
        assert_eq!(parse_duration("1ms"), Ok(1));
        for bad in ["", "h", "1", "1w", "-1h", "1.5h", " 1h", "1H"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_duration("0s"),
            Err(TimeError::DurationOutOfRange(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(TimeError::DurationOutOfRange(_))
        ));
        assert_eq!(format_duration(604_800_000), "7d");
        assert_eq!(format_duration(90_000), "90s");
        assert_eq!(format_duration(1_500), "1500ms");
    }
}
