//! PostgreSQL source types → the neutral [`ColumnType`], and pgoutput's text
//! values → [`Value`]s. The rules are documented in `docs/type-mapping.md`.
//!
//! The replication connection is opened with `DateStyle = ISO`,
//! `TimeZone = UTC`, `IntervalStyle = iso_8601`, `extra_float_digits = 1` and
//! `bytea_output = hex` (see [`super::capture::STREAM_SETTINGS`]), so every
//! text form parsed here is the one those settings produce; floats are the
//! shortest text that reads back to the same bits.

use pipeline::schema::ColumnType;
use pipeline::value::{Date, DateTime, Time, Value};

/// Largest PostgreSQL varlena value (1 GB − 1): the `max_bytes` of `text`/`bytea`.
pub const VARLENA_MAX: u64 = 1_073_741_823;

// Built-in type OIDs (pg_type.dat; stable across versions).
pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const OID: u32 = 26;
pub const JSON: u32 = 114;
pub const CIDR: u32 = 650;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const MACADDR8: u32 = 774;
pub const MACADDR: u32 = 829;
pub const INET: u32 = 869;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIME: u32 = 1083;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const INTERVAL: u32 = 1186;
pub const BIT: u32 = 1560;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;
pub const JSONB: u32 = 3802;

/// What the catalog says about a column's type, beyond the OID.
#[derive(Debug, Clone, Default)]
pub struct TypeFacts {
    /// `pg_type.typtype` of the column's own type (`b` base, `e` enum, `d` domain, …).
    pub typtype: char,
    /// Enum labels in sort order (enums only).
    pub labels: Vec<String>,
    /// `format_type()` of the column, for people and error messages.
    pub spelled: String,
}

/// The neutral type of a column of (base) type `oid` with modifier `typmod`,
/// or `Err(reason)` for a type dbmux does not carry.
pub fn column_type(oid: u32, typmod: i32, facts: &TypeFacts) -> Result<ColumnType, String> {
    let fsp = || if typmod < 0 { 6 } else { typmod.clamp(0, 6) as u8 };
    let len = || u32::try_from(typmod - 4).ok();
    if facts.typtype == 'e' {
        return Ok(ColumnType::Enum {
            labels: facts.labels.clone(),
        });
    }
    Ok(match oid {
        BOOL => ColumnType::Bool,
        INT2 => ColumnType::Integer {
            bytes: 2,
            unsigned: false,
        },
        INT4 => ColumnType::Integer {
            bytes: 4,
            unsigned: false,
        },
        INT8 => ColumnType::Integer {
            bytes: 8,
            unsigned: false,
        },
        OID => ColumnType::Integer {
            bytes: 4,
            unsigned: true,
        },
        NUMERIC => {
            if typmod < 4 {
                ColumnType::Numeric
            } else {
                let t = typmod - 4;
                let precision = (t >> 16) & 0xFFFF;
                // The scale is an 11-bit signed field (negative scales since PostgreSQL 15).
                let scale = ((t & 0x7FF) ^ 0x400) - 0x400;
                if (1..=65).contains(&precision) && (0..=30).contains(&scale) && scale <= precision {
                    ColumnType::Decimal {
                        precision: precision as u8,
                        scale: scale as u8,
                    }
                } else {
                    ColumnType::Numeric
                }
            }
        }
        FLOAT4 => ColumnType::Float,
        FLOAT8 => ColumnType::Double,
        BPCHAR => match len() {
            Some(length) => ColumnType::Char { length },
            None => ColumnType::Text {
                max_bytes: VARLENA_MAX,
            },
        },
        VARCHAR => match len() {
            Some(length) => ColumnType::VarChar { length },
            None => ColumnType::Text {
                max_bytes: VARLENA_MAX,
            },
        },
        TEXT => ColumnType::Text {
            max_bytes: VARLENA_MAX,
        },
        NAME => ColumnType::VarChar { length: 63 },
        INET | CIDR => ColumnType::VarChar { length: 43 },
        MACADDR => ColumnType::VarChar { length: 17 },
        MACADDR8 => ColumnType::VarChar { length: 23 },
        BYTEA => ColumnType::Blob {
            max_bytes: VARLENA_MAX,
        },
        DATE => ColumnType::Date,
        TIME => ColumnType::Time { fsp: fsp() },
        TIMESTAMP => ColumnType::DateTime { fsp: fsp() },
        TIMESTAMPTZ => ColumnType::TimestampTz { fsp: fsp() },
        INTERVAL => ColumnType::Interval,
        UUID => ColumnType::Uuid,
        JSON | JSONB => ColumnType::Json,
        BIT => match typmod {
            1..=64 => ColumnType::Bit { width: typmod as u16 },
            _ => return Err("bit(n) wider than 64".into()),
        },
        _ => return Err("no mapping for this type".into()),
    })
}

/// How to turn one column's text into a [`Value`]; chosen once per relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Bool,
    Int,
    UInt,
    Decimal,
    Float,
    Double,
    /// `bpchar`: trailing blanks are padding, not data (as MySQL `CHAR` reads back).
    Char,
    Text,
    Bytes,
    Date,
    Time,
    DateTime,
    Timestamp,
    Json,
    Enum,
    Bit,
}

impl Decoder {
    pub fn for_type(ty: &ColumnType) -> Decoder {
        match ty {
            ColumnType::Bool => Decoder::Bool,
            ColumnType::Integer { unsigned: true, .. } => Decoder::UInt,
            ColumnType::Integer { .. } | ColumnType::Year => Decoder::Int,
            ColumnType::Decimal { .. } | ColumnType::Numeric => Decoder::Decimal,
            ColumnType::Float => Decoder::Float,
            ColumnType::Double => Decoder::Double,
            ColumnType::Char { .. } => Decoder::Char,
            ColumnType::Blob { .. } | ColumnType::Binary { .. } | ColumnType::VarBinary { .. } => {
                Decoder::Bytes
            }
            ColumnType::Date => Decoder::Date,
            ColumnType::Time { .. } => Decoder::Time,
            ColumnType::DateTime { .. } => Decoder::DateTime,
            ColumnType::Timestamp { .. } | ColumnType::TimestampTz { .. } => Decoder::Timestamp,
            ColumnType::Json => Decoder::Json,
            ColumnType::Enum { .. } => Decoder::Enum,
            ColumnType::Bit { .. } => Decoder::Bit,
            _ => Decoder::Text,
        }
    }

    /// Decodes one value's text output.
    pub fn decode(self, raw: &[u8]) -> Result<Value, String> {
        let text = || std::str::from_utf8(raw).map_err(|_| "text is not valid UTF-8".to_string());
        let bad = |what: &str| format!("{what}: {:?}", String::from_utf8_lossy(&raw[..raw.len().min(64)]));
        Ok(match self {
            Decoder::Bool => match raw {
                b"t" => Value::Int(1),
                b"f" => Value::Int(0),
                _ => return Err(bad("not a boolean")),
            },
            Decoder::Int => Value::Int(text()?.parse().map_err(|_| bad("not an integer"))?),
            Decoder::UInt => Value::UInt(text()?.parse().map_err(|_| bad("not an unsigned integer"))?),
            Decoder::Decimal => Value::Decimal(text()?.to_string()),
            Decoder::Float => Value::Float(text()?.parse().map_err(|_| bad("not a float"))?),
            Decoder::Double => Value::Double(text()?.parse().map_err(|_| bad("not a float"))?),
            Decoder::Char => Value::Text(text()?.trim_end_matches(' ').to_string()),
            Decoder::Text => Value::Text(text()?.to_string()),
            Decoder::Json => Value::Json(text()?.to_string()),
            Decoder::Enum => Value::Enum(text()?.to_string()),
            Decoder::Bytes => {
                let hex = raw
                    .strip_prefix(b"\\x")
                    .ok_or_else(|| bad("bytea not in hex form"))?;
                Value::Bytes(hex::decode(hex).map_err(|_| bad("bad bytea hex"))?)
            }
            Decoder::Date => Value::Date(parse_date(text()?)?),
            Decoder::Time => Value::Time(parse_time(text()?)?),
            Decoder::DateTime => {
                let t = text()?;
                let (d, tm) = t.split_once(' ').ok_or_else(|| out_of_range(t))?;
                Value::DateTime(datetime(parse_date(d)?, parse_time(tm)?)?)
            }
            Decoder::Timestamp => Value::Timestamp(parse_timestamptz(text()?)?),
            Decoder::Bit => {
                if raw.len() > 64 || !raw.iter().all(|b| *b == b'0' || *b == b'1') {
                    return Err(bad("not a bit string of at most 64 bits"));
                }
                Value::Bit(raw.iter().fold(0u64, |acc, b| (acc << 1) | u64::from(*b - b'0')))
            }
        })
    }
}

fn out_of_range(t: &str) -> String {
    format!(
        "{t:?} is outside what dbmux carries (years 1-9999, no infinity, no BC dates); \
         exclude the table or keep such values out of captured tables"
    )
}

fn num<T: std::str::FromStr>(s: &str, all: &str) -> Result<T, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(out_of_range(all));
    }
    s.parse().map_err(|_| out_of_range(all))
}

/// `YYYY-MM-DD` (ISO); years outside 1..=9999, BC and infinity are errors.
fn parse_date(t: &str) -> Result<Date, String> {
    let mut it = t.splitn(3, '-');
    let (y, m, d) = match (it.next(), it.next(), it.next()) {
        (Some(y), Some(m), Some(d)) if y.len() == 4 => (y, m, d),
        _ => return Err(out_of_range(t)),
    };
    let date = Date {
        year: num(y, t)?,
        month: num(m, t)?,
        day: num(d, t)?,
    };
    if date.year == 0 {
        return Err(out_of_range(t));
    }
    Ok(date)
}

/// `HH:MM:SS[.ffffff]` (0..=24 hours).
fn parse_time(t: &str) -> Result<Time, String> {
    let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
    let mut it = hms.splitn(3, ':');
    let (h, m, s) = match (it.next(), it.next(), it.next()) {
        (Some(h), Some(m), Some(s)) => (h, m, s),
        _ => return Err(format!("not a time: {t:?}")),
    };
    if frac.len() > 6 {
        return Err(format!("more than 6 fractional digits: {t:?}"));
    }
    let micros = if frac.is_empty() {
        0
    } else {
        num::<u32>(frac, t)? * 10u32.pow(6 - frac.len() as u32)
    };
    Ok(Time {
        negative: false,
        hours: num(h, t)?,
        minutes: num(m, t)?,
        seconds: num(s, t)?,
        micros,
    })
}

fn datetime(date: Date, t: Time) -> Result<DateTime, String> {
    Ok(DateTime {
        date,
        hour: u8::try_from(t.hours).map_err(|_| "hour out of range".to_string())?,
        minute: t.minutes,
        second: t.seconds,
        micros: t.micros,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days-from-civil, the inverse of `pipeline::value::civil_from_days`).
pub fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]+00` (the session runs in UTC) → µs since the epoch.
fn parse_timestamptz(t: &str) -> Result<i64, String> {
    let body = t
        .strip_suffix("+00")
        .ok_or_else(|| format!("{}: timestamptz not in UTC", out_of_range(t)))?;
    let (d, tm) = body.split_once(' ').ok_or_else(|| out_of_range(t))?;
    let date = parse_date(d)?;
    let time = parse_time(tm)?;
    let days = days_from_civil(i64::from(date.year), date.month, date.day);
    let secs =
        days * 86_400 + i64::from(time.hours) * 3600 + i64::from(time.minutes) * 60 + i64::from(time.seconds);
    Ok(secs * 1_000_000 + i64::from(time.micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> TypeFacts {
        TypeFacts {
            typtype: 'b',
            ..Default::default()
        }
    }

    #[test]
    fn types() {
        let f = facts();
        // numeric(10,2): typmod = (10 << 16 | 2) + 4
        assert_eq!(
            column_type(NUMERIC, (10 << 16 | 2) + 4, &f).unwrap(),
            ColumnType::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert_eq!(column_type(NUMERIC, -1, &f).unwrap(), ColumnType::Numeric);
        assert_eq!(
            column_type(NUMERIC, (100 << 16 | 2) + 4, &f).unwrap(),
            ColumnType::Numeric
        );
        // numeric(5,-2) (PostgreSQL 15): negative scale is not a MySQL DECIMAL.
        assert_eq!(
            column_type(NUMERIC, (5 << 16 | (0x800 - 2)) + 4, &f).unwrap(),
            ColumnType::Numeric
        );
        assert_eq!(
            column_type(VARCHAR, 14, &f).unwrap(),
            ColumnType::VarChar { length: 10 }
        );
        assert_eq!(
            column_type(VARCHAR, -1, &f).unwrap(),
            ColumnType::Text {
                max_bytes: VARLENA_MAX
            }
        );
        assert_eq!(
            column_type(TIMESTAMPTZ, 3, &f).unwrap(),
            ColumnType::TimestampTz { fsp: 3 }
        );
        assert_eq!(column_type(TIME, -1, &f).unwrap(), ColumnType::Time { fsp: 6 });
        assert!(column_type(BIT, 65, &f).is_err());
        assert!(column_type(1007, -1, &f).is_err(), "int4[] is not mapped");
        let e = TypeFacts {
            typtype: 'e',
            labels: vec!["a".into()],
            ..Default::default()
        };
        assert_eq!(
            column_type(99_999, -1, &e).unwrap(),
            ColumnType::Enum {
                labels: vec!["a".into()]
            }
        );
    }

    #[test]
    fn values() {
        let d = |dec: Decoder, s: &str| dec.decode(s.as_bytes());
        assert_eq!(d(Decoder::Bool, "t").unwrap(), Value::Int(1));
        assert!(d(Decoder::Bool, "x").is_err());
        assert_eq!(
            d(Decoder::Int, "-9223372036854775808").unwrap(),
            Value::Int(i64::MIN)
        );
        assert!(matches!(d(Decoder::Float, "NaN").unwrap(), Value::Float(x) if x.is_nan()));
        assert_eq!(
            d(Decoder::Double, "-Infinity").unwrap(),
            Value::Double(f64::NEG_INFINITY)
        );
        assert_eq!(
            d(Decoder::Double, "1.7976931348623157e+308").unwrap(),
            Value::Double(f64::MAX)
        );
        assert_eq!(d(Decoder::Char, "ab   ").unwrap(), Value::Text("ab".into()));
        assert_eq!(d(Decoder::Bytes, "\\x00ff").unwrap(), Value::Bytes(vec![0, 255]));
        assert!(d(Decoder::Bytes, "00ff").is_err());
        assert!(Decoder::Text.decode(&[0xff]).is_err());
        assert_eq!(
            d(Decoder::Timestamp, "1970-01-01 00:00:00+00").unwrap(),
            Value::Timestamp(0)
        );
        assert_eq!(
            d(Decoder::Timestamp, "0001-01-01 00:00:00+00").unwrap(),
            Value::Timestamp(-62_135_596_800_000_000)
        );
        assert_eq!(
            d(Decoder::Timestamp, "9999-12-31 23:59:59.999999+00").unwrap(),
            Value::Timestamp(253_402_300_799_999_999)
        );
        assert_eq!(
            d(Decoder::Timestamp, "2024-02-29 12:00:00.5+00").unwrap(),
            Value::Timestamp(1_709_208_000_500_000)
        );
        for bad in [
            "infinity",
            "-infinity",
            "0044-03-15 00:00:00+00 BC",
            "10000-01-01 00:00:00+00",
        ] {
            assert!(d(Decoder::Timestamp, bad).is_err(), "{bad}");
        }
        assert!(d(Decoder::Date, "infinity").is_err());
        assert!(d(Decoder::Date, "2000-01-01 BC").is_err());
        assert_eq!(
            d(Decoder::DateTime, "2000-02-03 04:05:06.000007").unwrap(),
            Value::DateTime(DateTime {
                date: Date {
                    year: 2000,
                    month: 2,
                    day: 3
                },
                hour: 4,
                minute: 5,
                second: 6,
                micros: 7
            })
        );
        assert_eq!(
            d(Decoder::Time, "24:00:00").unwrap(),
            Value::Time(Time {
                negative: false,
                hours: 24,
                minutes: 0,
                seconds: 0,
                micros: 0
            })
        );
        assert_eq!(d(Decoder::Bit, "101").unwrap(), Value::Bit(5));
        assert!(d(Decoder::Bit, "12").is_err());
        for days in [-719_162i64, -1, 0, 1, 11_016, 2_932_896] {
            let (y, m, dd) = pipeline::value::civil_from_days(days);
            assert_eq!(days_from_civil(y, m, dd), days);
        }
    }
}
