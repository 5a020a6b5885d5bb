//! Typed column values.
//!
//! Values are carried as the source engine meant them, not as strings: every
//! integer width and sign, exact decimals, temporal values with microseconds and
//! an explicit time-zone rule, text already decoded from its column charset,
//! raw bytes, JSON, ENUM/SET labels and BIT fields. Appliers map these to their
//! own dialect (see `docs/type-mapping.md`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A calendar date. MariaDB/MySQL allow zero parts (`0000-00-00`), so the
/// fields are not validated against the calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

/// A wall-clock date and time with microseconds and **no time zone**
/// (MySQL `DATETIME`, PostgreSQL `timestamp without time zone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DateTime {
    pub date: Date,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub micros: u32,
}

/// A signed duration as MySQL `TIME` stores it: `-838:59:59.000000` to
/// `838:59:59.000000`; hours may exceed 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Time {
    pub negative: bool,
    pub hours: u32,
    pub minutes: u8,
    pub seconds: u8,
    pub micros: u32,
}

/// One column value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    /// Any signed integer (TINYINT … BIGINT).
    Int(i64),
    /// Any unsigned integer (TINYINT UNSIGNED … BIGINT UNSIGNED).
    UInt(u64),
    Float(f32),
    Double(f64),
    /// Exact decimal in canonical text form (`-12.340`), never rounded through a float.
    Decimal(String),
    Date(Date),
    Time(Time),
    /// Naive date-time (no zone).
    DateTime(DateTime),
    /// An instant: microseconds since the Unix epoch, UTC (MySQL `TIMESTAMP`,
    /// PostgreSQL `timestamptz`). Zero is MySQL's zero timestamp.
    Timestamp(i64),
    Year(u16),
    /// Text decoded to UTF-8 from the column's charset (the charset itself is in the
    /// column definition).
    Text(String),
    Bytes(Vec<u8>),
    /// JSON document as text: MariaDB's stored text unchanged (MariaDB keeps
    /// what the client wrote), MySQL's binary JSON rendered compactly.
    Json(String),
    /// ENUM label (the empty string is MySQL's invalid-value label).
    Enum(String),
    /// SET members in definition order.
    Set(Vec<String>),
    /// BIT(n) value, right-aligned.
    Bit(u64),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:02}:{:02}:{:02}",
            self.date, self.hour, self.minute, self.second
        )?;
        if self.micros != 0 {
            write!(f, ".{:06}", self.micros)?;
        }
        Ok(())
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            f.write_str("-")?;
        }
        write!(f, "{:02}:{:02}:{:02}", self.hours, self.minutes, self.seconds)?;
        if self.micros != 0 {
            write!(f, ".{:06}", self.micros)?;
        }
        Ok(())
    }
}

impl Time {
    /// Signed total microseconds.
    pub fn total_micros(&self) -> i64 {
        let abs = ((self.hours as i64 * 60 + self.minutes as i64) * 60 + self.seconds as i64) * 1_000_000
            + self.micros as i64;
        if self.negative {
            -abs
        } else {
            abs
        }
    }
}

/// 16 bytes as a UUID's canonical text `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// [`format_uuid`] for a slice, which must hold exactly 16 bytes.
pub fn uuid_text(b: &[u8]) -> Result<String, String> {
    let b: &[u8; 16] = b
        .try_into()
        .map_err(|_| format!("a UUID needs 16 bytes, got {}", b.len()))?;
    Ok(format_uuid(b))
}

/// Formats a `Timestamp` value (µs since epoch, UTC) as `YYYY-MM-DD HH:MM:SS[.ffffff]` in UTC.
pub fn format_timestamp_utc(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let dt = DateTime {
        date: Date {
            year: y as u16,
            month: m,
            day: d,
        },
        hour: (sod / 3600) as u8,
        minute: ((sod % 3600) / 60) as u8,
        second: (sod % 60) as u8,
        micros: frac,
    };
    dt.to_string()
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's civil-from-days algorithm).
pub fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_temporal_values() {
        let t = Time {
            negative: true,
            hours: 838,
            minutes: 59,
            seconds: 59,
            micros: 0,
        };
        assert_eq!(t.to_string(), "-838:59:59");
        assert_eq!(t.total_micros(), -3_020_399_000_000);
        let t = Time {
            negative: false,
            hours: 1,
            minutes: 2,
            seconds: 3,
            micros: 40,
        };
        assert_eq!(t.to_string(), "01:02:03.000040");
        assert_eq!(format_timestamp_utc(0), "1970-01-01 00:00:00");
        assert_eq!(
            format_timestamp_utc(2_147_483_647_999_999),
            "2038-01-19 03:14:07.999999"
        );
        assert_eq!(format_timestamp_utc(-1), "1969-12-31 23:59:59.999999");
        assert_eq!(format_uuid(&[0x3e; 16]), "3e3e3e3e-3e3e-3e3e-3e3e-3e3e3e3e3e3e");
        assert!(uuid_text(&[0; 15]).unwrap_err().contains("16 bytes"));
    }
}
