//! T-SQL of the SQL Server replica: identifiers, the type mapping, values
//! as TDS parameters, and every statement the applier sends. Everything here
//! is pure (no connection), so the generated SQL is unit-tested without a
//! server (none can run on the build machine; see the README).
//!
//! The mapping is documented in `docs/type-mapping.md` (SQL Server column).

use pipeline::schema::{ColumnDef, ColumnType, TableId, TableSchema};
use pipeline::value::{Date, DateTime, Time, Value};
use std::borrow::Cow;
use std::fmt::Write as _;
use tiberius::numeric::Numeric;
use tiberius::time::{Date as MsDate, DateTime2, DateTimeOffset, Time as MsTime};
use tiberius::ColumnData;

/// A statement parameter: a typed TDS value.
pub type Param = ColumnData<'static>;

/// SQL Server takes at most 2,100 parameters per request; two are kept
/// spare for the offset statements that share nothing with data statements
/// but keep the arithmetic simple.
pub const MAX_PARAMS: usize = 2098;
/// A table value constructor (`INSERT … VALUES`) takes at most 1,000 rows.
pub const MAX_VALUES_ROWS: usize = 1000;
/// Longest identifier SQL Server accepts (`sysname`).
pub const MAX_IDENT_CHARS: usize = 128;
/// Longest `NVARCHAR(n)` / `NCHAR(n)` before `NVARCHAR(MAX)`.
pub const MAX_NCHAR: u32 = 4000;
/// Longest `VARBINARY(n)` / `BINARY(n)` before `VARBINARY(MAX)`.
pub const MAX_BINARY: u32 = 8000;
/// Text and bytes of a key column whose type would be `(MAX)`: SQL Server's
/// index keys hold 900 bytes (UTF-16: 450 characters).
pub const KEY_NCHAR: u32 = 450;
pub const KEY_BINARY: u32 = 900;
/// Largest `DECIMAL` precision.
pub const MAX_DECIMAL_PRECISION: u8 = 38;

/// The collation of text compared byte for byte (binary collations, and
/// sources that compare code points like PostgreSQL's `C`).
pub const COLLATION_BINARY: &str = "Latin1_General_100_BIN2";
/// Case- and accent-insensitive (MySQL `*_ci` collations other than `*_as_ci`).
pub const COLLATION_CI_AI: &str = "Latin1_General_100_CI_AI_SC";
/// Case-insensitive, accent-sensitive (`*_as_ci`).
pub const COLLATION_CI_AS: &str = "Latin1_General_100_CI_AS_SC";
/// Case- and accent-sensitive (`*_cs`, `*_as_cs`).
pub const COLLATION_CS_AS: &str = "Latin1_General_100_CS_AS_SC";

/// Days from 0001-01-01 to 1970-01-01 (SQL Server counts dates from year 1).
const UNIX_EPOCH_DAYS: i64 = 719_162;
const MICROS_PER_DAY: i64 = 86_400_000_000;

// ------------------------------------------------------------------ identifiers

/// Whether SQL Server can hold `name` as an identifier: 1–128 characters, no
/// NUL (anything else is fine once bracket-quoted).
pub fn check_ident(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an empty name".into());
    }
    if name.chars().count() > MAX_IDENT_CHARS {
        return Err(format!(
            "{name:?} is longer than SQL Server's {MAX_IDENT_CHARS} characters; rename it"
        ));
    }
    if name.contains('\0') {
        return Err(format!("{name:?} contains a NUL character"));
    }
    Ok(())
}

/// `[name]`, with `]` doubled: the only character that needs escaping inside brackets.
pub fn quote(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// `[schema].[table]`.
pub fn qualified(t: &TableId) -> String {
    format!("{}.{}", quote(&t.schema), quote(&t.name))
}

/// `N'text'`, with `'` doubled.
pub fn literal(s: &str) -> String {
    format!("N'{}'", s.replace('\'', "''"))
}

// ------------------------------------------------------------------ type mapping

/// The SQL Server collation matching how the source compares `col`'s text
/// (keys equal at the source must be equal on the replica and no others).
pub fn collation(col: &ColumnDef) -> &'static str {
    let Some(c) = col.collation.as_deref().map(str::to_ascii_lowercase) else {
        return COLLATION_BINARY;
    };
    if c.ends_with("_as_ci") {
        COLLATION_CI_AS
    } else if c.ends_with("_ci") || c.ends_with("_ai_ci") {
        COLLATION_CI_AI
    } else if c.ends_with("_cs") {
        COLLATION_CS_AS
    } else {
        // `_bin`, `binary`, PostgreSQL's `C` / `POSIX` / ICU deterministic
        // collations seen by their bytes, or anything unknown: compare exactly.
        COLLATION_BINARY
    }
}

/// The SQL Server type of a column; `key` when it is part of the primary key
/// or a unique key (SQL Server cannot index `(MAX)` types).
pub fn column_type(col: &ColumnDef, key: bool) -> Result<String, String> {
    let text = |n: Option<u32>| -> Result<String, String> {
        let t = match n {
            // CHAR(n) too is NVARCHAR(n): the value is kept as the source
            // gives it (MySQL strips CHAR's padding), not padded again.
            Some(n) if n <= MAX_NCHAR => format!("NVARCHAR({})", n.max(1)),
            // SQL Server cannot index (MAX) types: a key column of long or
            // unbounded text (PostgreSQL `text` keys are common) gets the
            // 900-byte index key limit; a longer value is a definite error.
            _ if key => format!("NVARCHAR({KEY_NCHAR})"),
            _ => "NVARCHAR(MAX)".into(),
        };
        Ok(format!("{t} COLLATE {}", collation(col)))
    };
    let binary = |n: Option<u32>, fixed: bool| -> Result<String, String> {
        Ok(match n {
            Some(n) if n <= MAX_BINARY => {
                format!("{}({})", if fixed { "BINARY" } else { "VARBINARY" }, n.max(1))
            }
            _ if key => format!("VARBINARY({KEY_BINARY})"),
            _ => "VARBINARY(MAX)".into(),
        })
    };
    Ok(match &col.ty {
        ColumnType::Bool => "BIT".into(),
        ColumnType::Integer { bytes, unsigned } => match (bytes, unsigned) {
            (1, true) => "TINYINT".into(),
            (1, false) | (2, false) => "SMALLINT".into(),
            (2, true) | (3, _) | (4, false) => "INT".into(),
            (4, true) | (8, false) => "BIGINT".into(),
            (8, true) => "DECIMAL(20, 0)".into(),
            _ => return Err(format!("an integer of {bytes} bytes")),
        },
        ColumnType::Decimal { precision, scale } if *precision <= MAX_DECIMAL_PRECISION => {
            format!("DECIMAL({}, {scale})", (*precision).max(1))
        }
        // Wider than DECIMAL(38): kept exactly, as text (a sign, the digits and a point).
        ColumnType::Decimal { precision, .. } => {
            format!("VARCHAR({}) COLLATE {COLLATION_BINARY}", *precision as u32 + 2)
        }
        ColumnType::Numeric if key => format!("VARCHAR(900) COLLATE {COLLATION_BINARY}"),
        ColumnType::Numeric => format!("VARCHAR(MAX) COLLATE {COLLATION_BINARY}"),
        ColumnType::Float => "REAL".into(),
        ColumnType::Double => "FLOAT(53)".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Time { fsp } => format!("TIME({fsp})"),
        ColumnType::DateTime { fsp } => format!("DATETIME2({fsp})"),
        ColumnType::Timestamp { fsp } | ColumnType::TimestampTz { fsp } => format!("DATETIMEOFFSET({fsp})"),
        ColumnType::Year => "SMALLINT".into(),
        ColumnType::Char { length } => text(Some(*length))?,
        ColumnType::VarChar { length } => text(Some(*length))?,
        ColumnType::Text { max_bytes } if *max_bytes <= 255 => text(Some(255))?,
        ColumnType::Text { .. } => text(None)?,
        ColumnType::Binary { length } => binary(Some(*length), true)?,
        ColumnType::VarBinary { length } => binary(Some(*length), false)?,
        ColumnType::Blob { max_bytes } if *max_bytes <= 255 => binary(Some(255), false)?,
        ColumnType::Blob { .. } => binary(None, false)?,
        ColumnType::Json if key => return Err("a JSON column cannot be part of a key on SQL Server".into()),
        // SQL Server 2016+ keeps JSON as text; ISJSON() checks it.
        ColumnType::Json => format!("NVARCHAR(MAX) COLLATE {COLLATION_BINARY}"),
        ColumnType::Enum { labels } | ColumnType::Set { labels } => {
            let longest = if matches!(col.ty, ColumnType::Set { .. }) {
                labels.iter().map(|l| l.chars().count() as u32 + 1).sum::<u32>()
            } else {
                labels.iter().map(|l| l.chars().count() as u32).max().unwrap_or(0)
            };
            text(Some(longest.max(1)))?
        }
        ColumnType::Bit { width: 1 } => "BIT".into(),
        // BIT(n): the value's bytes, big-endian, as MySQL sends them.
        ColumnType::Bit { width } => format!("BINARY({})", width.div_ceil(8)),
        ColumnType::Uuid => "UNIQUEIDENTIFIER".into(),
        ColumnType::Interval => format!("NVARCHAR(64) COLLATE {COLLATION_BINARY}"),
        ColumnType::Other { name } => {
            return Err(format!(
            "type {name:?} has no SQL Server mapping; exclude the table or change the column at the source"
        ))
        }
    })
}

// ------------------------------------------------------------------ values

fn days_from_civil(d: &Date) -> Result<i64, String> {
    if d.year == 0 || d.month == 0 || d.day == 0 {
        return Err(format!(
            "{d} is a MySQL zero date, which SQL Server cannot hold; fix the row at the source"
        ));
    }
    let (y, m, day) = (i64::from(d.year), i64::from(d.month), i64::from(d.day));
    if m > 12 || day > days_in_month(y, m) {
        return Err(format!("{d} is not a calendar date"));
    }
    // Howard Hinnant's days_from_civil, counted from 1970-01-01.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Ok(era * 146_097 + doe - 719_468)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn ms_date(d: &Date) -> Result<MsDate, String> {
    let days = days_from_civil(d)? + UNIX_EPOCH_DAYS;
    u32::try_from(days)
        .ok()
        .filter(|d| d >> 24 == 0)
        .map(MsDate::new)
        .ok_or_else(|| format!("{d} is outside SQL Server's DATE range"))
}

/// Increments of 10^-`scale` seconds since midnight, `scale` = the column's fsp.
fn ms_time(micros_of_day: i64, fsp: u8) -> MsTime {
    let fsp = fsp.min(6);
    let inc = micros_of_day as u64 / 10u64.pow(u32::from(6 - fsp));
    MsTime::new(inc, fsp)
}

fn time_of_day(t: &Time) -> Result<i64, String> {
    if t.negative || t.hours >= 24 {
        return Err(format!(
            "TIME value {}{:02}:{:02}:{:02}.{:06} is outside SQL Server's TIME range (00:00:00 to 23:59:59.999999)",
            if t.negative { "-" } else { "" },
            t.hours,
            t.minutes,
            t.seconds,
            t.micros
        ));
    }
    Ok(
        ((i64::from(t.hours) * 60 + i64::from(t.minutes)) * 60 + i64::from(t.seconds)) * 1_000_000
            + i64::from(t.micros),
    )
}

fn datetime2(dt: &DateTime, fsp: u8) -> Result<DateTime2, String> {
    let tod = time_of_day(&Time {
        negative: false,
        hours: dt.hour.into(),
        minutes: dt.minute,
        seconds: dt.second,
        micros: dt.micros,
    })?;
    Ok(DateTime2::new(ms_date(&dt.date)?, ms_time(tod, fsp)))
}

/// An instant (µs since the Unix epoch, UTC) as `DATETIMEOFFSET` at +00:00.
fn instant(micros: i64, fsp: u8, zero_is_zero_timestamp: bool) -> Result<DateTimeOffset, String> {
    if micros == 0 && zero_is_zero_timestamp {
        return Err("0000-00-00 00:00:00 is a MySQL zero timestamp, which SQL Server cannot hold".into());
    }
    let days = micros.div_euclid(MICROS_PER_DAY) + UNIX_EPOCH_DAYS;
    let tod = micros.rem_euclid(MICROS_PER_DAY);
    let days = u32::try_from(days)
        .ok()
        .filter(|d| d >> 24 == 0)
        .ok_or_else(|| format!("instant {micros} µs after 1970 is outside SQL Server's range"))?;
    Ok(DateTimeOffset::new(
        DateTime2::new(MsDate::new(days), ms_time(tod, fsp)),
        0,
    ))
}

/// Decimal text (`-12.340`) as a `Numeric` of exactly `scale` digits after the point.
fn numeric(text: &str, scale: u8) -> Result<Numeric, String> {
    let bad = || format!("{text:?} is not a decimal number");
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > usize::from(scale) {
        return Err(format!("{text} has more than {scale} digits after the point"));
    }
    let mut all = String::with_capacity(int.len() + usize::from(scale));
    all.push_str(int.trim_start_matches('0'));
    all.push_str(frac);
    all.extend(std::iter::repeat_n('0', usize::from(scale) - frac.len()));
    if all.trim_start_matches('0').len() > usize::from(MAX_DECIMAL_PRECISION) {
        return Err(format!("{text} has more than {MAX_DECIMAL_PRECISION} digits"));
    }
    let v: i128 = if all.is_empty() {
        0
    } else {
        all.parse().map_err(|_| bad())?
    };
    Ok(Numeric::new_with_scale(if neg { -v } else { v }, scale))
}

/// A NULL typed as the column's SQL Server type (an untyped NULL would be
/// NVARCHAR, which SQL Server will not convert implicitly to VARBINARY).
pub fn typed_null(ty: &ColumnType) -> Param {
    match ty {
        ColumnType::Bool | ColumnType::Bit { width: 1 } => ColumnData::Bit(None),
        ColumnType::Integer {
            bytes: 8,
            unsigned: true,
        } => ColumnData::Numeric(None),
        ColumnType::Integer { .. } | ColumnType::Year => ColumnData::I64(None),
        ColumnType::Decimal { precision, .. } if *precision <= MAX_DECIMAL_PRECISION => {
            ColumnData::Numeric(None)
        }
        ColumnType::Float => ColumnData::F32(None),
        ColumnType::Double => ColumnData::F64(None),
        ColumnType::Date => ColumnData::Date(None),
        ColumnType::Time { .. } => ColumnData::Time(None),
        ColumnType::DateTime { .. } => ColumnData::DateTime2(None),
        ColumnType::Timestamp { .. } | ColumnType::TimestampTz { .. } => ColumnData::DateTimeOffset(None),
        ColumnType::Binary { .. }
        | ColumnType::VarBinary { .. }
        | ColumnType::Blob { .. }
        | ColumnType::Bit { .. } => ColumnData::Binary(None),
        ColumnType::Uuid => ColumnData::Guid(None),
        _ => ColumnData::String(None),
    }
}

/// `v` as a parameter for column `col` (SQL Server type [`column_type`]).
pub fn param(col: &ColumnDef, v: &Value) -> Result<Param, String> {
    let mismatch = || {
        format!(
            "a {} value cannot be written to a {:?} column",
            value_kind(v),
            col.ty
        )
    };
    let text = |s: &str| -> Result<Param, String> { Ok(ColumnData::String(Some(Cow::Owned(s.to_string())))) };
    if let Value::Null = v {
        return Ok(typed_null(&col.ty));
    }
    Ok(match (&col.ty, v) {
        (ColumnType::Bool, Value::Int(i)) => ColumnData::Bit(Some(*i != 0)),
        (ColumnType::Bool, Value::UInt(i)) => ColumnData::Bit(Some(*i != 0)),
        (
            ColumnType::Integer {
                bytes: 8,
                unsigned: true,
            },
            Value::UInt(u),
        ) => ColumnData::Numeric(Some(Numeric::new_with_scale(i128::from(*u), 0))),
        (
            ColumnType::Integer {
                bytes: 8,
                unsigned: true,
            },
            Value::Int(i),
        ) => ColumnData::Numeric(Some(Numeric::new_with_scale(i128::from(*i), 0))),
        (ColumnType::Integer { .. }, Value::Int(i)) => ColumnData::I64(Some(*i)),
        (ColumnType::Integer { .. }, Value::UInt(u)) => ColumnData::I64(Some(
            i64::try_from(*u).map_err(|_| format!("{u} does not fit the column"))?,
        )),
        (ColumnType::Year, Value::Year(y)) => ColumnData::I64(Some(i64::from(*y))),
        (ColumnType::Year, Value::Int(y)) => ColumnData::I64(Some(*y)),
        (ColumnType::Year, Value::UInt(y)) => ColumnData::I64(Some(*y as i64)),
        (ColumnType::Decimal { precision, scale }, Value::Decimal(d))
            if *precision <= MAX_DECIMAL_PRECISION =>
        {
            ColumnData::Numeric(Some(numeric(d, *scale)?))
        }
        (ColumnType::Decimal { .. } | ColumnType::Numeric, Value::Decimal(d)) => {
            if !is_decimal_text(d) {
                // NaN / Infinity of PostgreSQL numeric: SQL Server has no such decimal.
                return Err(format!("{d:?} is not a finite decimal number"));
            }
            text(d)?
        }
        (ColumnType::Float, Value::Float(f)) => ColumnData::F32(Some(finite(*f as f64)? as f32)),
        (ColumnType::Double, Value::Double(f)) => ColumnData::F64(Some(finite(*f)?)),
        (ColumnType::Double, Value::Float(f)) => ColumnData::F64(Some(finite(*f as f64)?)),
        (ColumnType::Date, Value::Date(d)) => ColumnData::Date(Some(ms_date(d)?)),
        (ColumnType::Time { fsp }, Value::Time(t)) => ColumnData::Time(Some(ms_time(time_of_day(t)?, *fsp))),
        (ColumnType::DateTime { fsp }, Value::DateTime(dt)) => {
            ColumnData::DateTime2(Some(datetime2(dt, *fsp)?))
        }
        (ColumnType::Timestamp { fsp }, Value::Timestamp(us)) => {
            ColumnData::DateTimeOffset(Some(instant(*us, *fsp, true)?))
        }
        (ColumnType::TimestampTz { fsp }, Value::Timestamp(us)) => {
            ColumnData::DateTimeOffset(Some(instant(*us, *fsp, false)?))
        }
        (
            ColumnType::Char { .. }
            | ColumnType::VarChar { .. }
            | ColumnType::Text { .. }
            | ColumnType::Interval,
            Value::Text(s),
        ) => text(s)?,
        (ColumnType::Json, Value::Json(s) | Value::Text(s)) => text(s)?,
        (ColumnType::Enum { .. }, Value::Enum(s) | Value::Text(s)) => text(s)?,
        (ColumnType::Set { .. }, Value::Set(members)) => text(&members.join(","))?,
        (ColumnType::Set { .. }, Value::Text(s)) => text(s)?,
        (
            ColumnType::Binary { .. } | ColumnType::VarBinary { .. } | ColumnType::Blob { .. },
            Value::Bytes(b),
        ) => ColumnData::Binary(Some(Cow::Owned(b.clone()))),
        (ColumnType::Bit { width: 1 }, Value::Bit(b)) => ColumnData::Bit(Some(*b != 0)),
        (ColumnType::Bit { width }, Value::Bit(b)) => {
            let n = usize::from(width.div_ceil(8));
            ColumnData::Binary(Some(Cow::Owned(b.to_be_bytes()[8 - n..].to_vec())))
        }
        (ColumnType::Uuid, Value::Text(s)) => {
            ColumnData::Guid(Some(s.parse().map_err(|_| format!("{s:?} is not a UUID"))?))
        }
        (ColumnType::Uuid, Value::Bytes(b)) => ColumnData::Guid(Some(
            tiberius::Uuid::from_slice(b).map_err(|_| "a UUID must be 16 bytes".to_string())?,
        )),
        _ => return Err(mismatch()),
    })
}

/// `-12.5`, `3`, `.5`: an optional sign, digits, at most one point.
fn is_decimal_text(d: &str) -> bool {
    let d = d.strip_prefix(['-', '+']).unwrap_or(d);
    let (a, b) = d.split_once('.').unwrap_or((d, ""));
    !(a.is_empty() && b.is_empty()) && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
}

fn finite(f: f64) -> Result<f64, String> {
    if f.is_finite() {
        Ok(f)
    } else {
        Err(format!(
            "{f} is not a finite number; SQL Server's FLOAT has no NaN or infinity"
        ))
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "NULL",
        Value::Int(_) | Value::UInt(_) => "integer",
        Value::Float(_) | Value::Double(_) => "floating-point",
        Value::Decimal(_) => "decimal",
        Value::Date(_) => "date",
        Value::Time(_) => "time",
        Value::DateTime(_) => "date-time",
        Value::Timestamp(_) => "timestamp",
        Value::Year(_) => "year",
        Value::Text(_) => "text",
        Value::Bytes(_) => "binary",
        Value::Json(_) => "JSON",
        Value::Enum(_) => "ENUM",
        Value::Set(_) => "SET",
        Value::Bit(_) => "BIT",
    }
}

// ------------------------------------------------------------------ bookkeeping

/// Statements for `dbmux_offsets`, `dbmux_quarantine` and `dbmux_snapshot`
/// (pending snapshots) in one schema.
#[derive(Debug, Clone)]
pub struct Bookkeeping {
    schema: String,
    offsets: String,
    quarantine: String,
    snapshot: String,
}

/// dbmux's own tables on a SQL Server replica (in the bookkeeping schema).
pub const OWN_TABLES: [&str; 3] = ["dbmux_offsets", "dbmux_quarantine", "dbmux_snapshot"];

impl Bookkeeping {
    pub fn new(schema: &str) -> Self {
        Self {
            schema: schema.to_string(),
            offsets: qualified(&TableId::new(schema, "dbmux_offsets")),
            quarantine: qualified(&TableId::new(schema, "dbmux_quarantine")),
            snapshot: qualified(&TableId::new(schema, "dbmux_snapshot")),
        }
    }

    pub fn offsets_table(&self) -> &str {
        &self.offsets
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Idempotent DDL; `CREATE SCHEMA` must be alone in its batch, hence `EXEC`.
    pub fn setup(&self) -> Vec<String> {
        vec![
            create_schema(&self.schema),
            format!(
                "IF OBJECT_ID({}, N'U') IS NULL CREATE TABLE {} (\
                 [consumer] NVARCHAR(200) NOT NULL PRIMARY KEY, \
                 [seq] BIGINT NOT NULL, \
                 [position] NVARCHAR(400) NULL, \
                 [updated_at] DATETIME2(3) NOT NULL DEFAULT SYSUTCDATETIME())",
                literal(&self.offsets),
                self.offsets
            ),
            format!(
                "IF OBJECT_ID({}, N'U') IS NULL CREATE TABLE {} (\
                 [consumer] NVARCHAR(200) NOT NULL, \
                 [table_schema] NVARCHAR(128) NOT NULL, \
                 [table_name] NVARCHAR(128) NOT NULL, \
                 [first_seq] BIGINT NOT NULL, \
                 [reason] NVARCHAR(MAX) NOT NULL, \
                 [since] DATETIME2(3) NOT NULL DEFAULT SYSUTCDATETIME(), \
                 PRIMARY KEY ([consumer], [table_schema], [table_name]))",
                literal(&self.quarantine),
                self.quarantine
            ),
            format!(
                "IF OBJECT_ID({}, N'U') IS NULL CREATE TABLE {} (\
                 [consumer] NVARCHAR(200) NOT NULL, \
                 [table_schema] NVARCHAR(128) NOT NULL, \
                 [table_name] NVARCHAR(128) NOT NULL, \
                 [run] BIGINT NOT NULL, \
                 [since] DATETIME2(3) NOT NULL DEFAULT SYSUTCDATETIME(), \
                 PRIMARY KEY ([consumer], [table_schema], [table_name]))",
                literal(&self.snapshot),
                self.snapshot
            ),
        ]
    }

    /// `@P1` consumer: rows (schema, table) of pending snapshots.
    pub fn read_pending(&self) -> String {
        format!(
            "SELECT [table_schema], [table_name] FROM {} WHERE [consumer] = @P1 ORDER BY 1, 2",
            self.snapshot
        )
    }

    /// `@P1` consumer, `@P2` schema, `@P3` table, `@P4` run.
    pub fn store_pending(&self) -> String {
        format!(
            "MERGE INTO {} WITH (HOLDLOCK) AS t \
             USING (VALUES (@P1, @P2, @P3, @P4)) AS s ([consumer], [table_schema], [table_name], [run]) \
             ON t.[consumer] = s.[consumer] AND t.[table_schema] = s.[table_schema] AND t.[table_name] = s.[table_name] \
             WHEN MATCHED THEN UPDATE SET t.[run] = s.[run], t.[since] = SYSUTCDATETIME() \
             WHEN NOT MATCHED THEN INSERT ([consumer], [table_schema], [table_name], [run]) \
             VALUES (s.[consumer], s.[table_schema], s.[table_name], s.[run]);",
            self.snapshot
        )
    }

    /// `@P1` consumer, `@P2` schema, `@P3` table.
    pub fn drop_pending(&self) -> String {
        format!(
            "DELETE FROM {} WHERE [consumer] = @P1 AND [table_schema] = @P2 AND [table_name] = @P3",
            self.snapshot
        )
    }

    /// `@P1` consumer, `@P2` schema: pending snapshots and quarantines of a
    /// dropped database.
    pub fn drop_schema_state(&self) -> [String; 2] {
        [&self.snapshot, &self.quarantine]
            .map(|t| format!("DELETE FROM {t} WHERE [consumer] = @P1 AND [table_schema] = @P2"))
    }

    /// `@P1` consumer: every quarantine and pending snapshot.
    pub fn clear_state(&self) -> [String; 2] {
        [&self.snapshot, &self.quarantine].map(|t| format!("DELETE FROM {t} WHERE [consumer] = @P1"))
    }

    /// `@P1` = consumer. `UPDLOCK, HOLDLOCK` keeps two registrations of one
    /// name from both inserting.
    pub fn register(&self) -> String {
        format!(
            "INSERT INTO {o} ([consumer], [seq]) SELECT @P1, 0 WHERE NOT EXISTS \
             (SELECT 1 FROM {o} WITH (UPDLOCK, HOLDLOCK) WHERE [consumer] = @P1)",
            o = self.offsets
        )
    }

    /// `@P1` = consumer. With `lock`, the row stays locked (update lock, held
    /// to the end of the transaction) so a second applier of the same name waits.
    pub fn read_offset(&self, lock: bool) -> String {
        format!(
            "SELECT [seq] FROM {}{} WHERE [consumer] = @P1",
            self.offsets,
            if lock {
                " WITH (UPDLOCK, HOLDLOCK, ROWLOCK)"
            } else {
                ""
            }
        )
    }

    /// `@P1` consumer, `@P2` seq, `@P3` position.
    pub fn write_offset(&self) -> String {
        format!(
            "UPDATE {} SET [seq] = @P2, [position] = @P3, [updated_at] = SYSUTCDATETIME() WHERE [consumer] = @P1",
            self.offsets
        )
    }

    pub fn read_quarantines(&self) -> String {
        format!(
            "SELECT [table_schema], [table_name], [first_seq], [reason] FROM {} WHERE [consumer] = @P1",
            self.quarantine
        )
    }

    /// `@P1` consumer, `@P2` schema, `@P3` table, `@P4` first seq, `@P5` reason.
    pub fn store_quarantine(&self) -> String {
        format!(
            "MERGE INTO {} WITH (HOLDLOCK) AS t \
             USING (VALUES (@P1, @P2, @P3, @P4, @P5)) AS s ([consumer], [table_schema], [table_name], [first_seq], [reason]) \
             ON t.[consumer] = s.[consumer] AND t.[table_schema] = s.[table_schema] AND t.[table_name] = s.[table_name] \
             WHEN MATCHED THEN UPDATE SET t.[first_seq] = s.[first_seq], t.[reason] = s.[reason], t.[since] = SYSUTCDATETIME() \
             WHEN NOT MATCHED THEN INSERT ([consumer], [table_schema], [table_name], [first_seq], [reason]) \
             VALUES (s.[consumer], s.[table_schema], s.[table_name], s.[first_seq], s.[reason]);",
            self.quarantine
        )
    }

    /// `@P1` consumer, `@P2` schema, `@P3` table, `@P4` the new first seq.
    pub fn move_quarantine(&self) -> String {
        format!(
            "UPDATE {} SET [first_seq] = @P4 WHERE [consumer] = @P1 AND [table_schema] = @P2 AND [table_name] = @P3",
            self.quarantine
        )
    }

    /// `@P1` consumer, `@P2` schema, `@P3` table.
    pub fn lift_quarantine(&self) -> String {
        format!(
            "DELETE FROM {} WHERE [consumer] = @P1 AND [table_schema] = @P2 AND [table_name] = @P3",
            self.quarantine
        )
    }
}

/// `CREATE SCHEMA` unless it exists.
pub fn create_schema(schema: &str) -> String {
    format!(
        "IF SCHEMA_ID({}) IS NULL EXEC(N'CREATE SCHEMA {}')",
        literal(schema),
        quote(schema).replace('\'', "''")
    )
}

/// The replica columns of `described` (name, SQL Server data type), for
/// [`describe_table`]'s query.
pub fn describe_table() -> &'static str {
    "SELECT [COLUMN_NAME], [DATA_TYPE] FROM INFORMATION_SCHEMA.COLUMNS \
     WHERE [TABLE_SCHEMA] = @P1 AND [TABLE_NAME] = @P2 ORDER BY [ORDINAL_POSITION]"
}

// ------------------------------------------------------------------ replica tables

/// Idempotent DDL creating `t` (replica names): its schema, the table with
/// its primary key, a filtered unique index per unique key (SQL Server's
/// UNIQUE constraint admits one NULL; MySQL and PostgreSQL admit many, so
/// rows with a NULL in the key are left out of the index), and an index on
/// each foreign key's columns (cascades look rows up by them).
/// `Err((column, message))` names the column that cannot be created.
pub fn create_table(t: &TableSchema) -> Result<Vec<String>, (String, String)> {
    check_ident(&t.id.schema).map_err(|m| (String::new(), format!("schema name: {m}")))?;
    check_ident(&t.id.name).map_err(|m| (String::new(), format!("table name: {m}")))?;
    let keyed: std::collections::HashSet<usize> = t
        .primary_key
        .iter()
        .chain(t.unique_keys.iter().flatten())
        .copied()
        .collect();
    let name = qualified(&t.id);
    let mut cols = Vec::with_capacity(t.columns.len());
    for (i, c) in t.columns.iter().enumerate() {
        check_ident(&c.name).map_err(|m| (c.name.clone(), m))?;
        let ty = column_type(c, keyed.contains(&i)).map_err(|m| (c.name.clone(), m))?;
        let null = if c.nullable && !t.primary_key.contains(&i) {
            "NULL"
        } else {
            "NOT NULL"
        };
        cols.push(format!("{} {ty} {null}", quote(&c.name)));
    }
    if !t.primary_key.is_empty() {
        let pk: Vec<String> = t.primary_key.iter().map(|&i| quote(&t.columns[i].name)).collect();
        cols.push(format!("PRIMARY KEY ({})", pk.join(", ")));
    }
    let mut out = vec![
        create_schema(&t.id.schema),
        format!(
            "IF OBJECT_ID({}, N'U') IS NULL CREATE TABLE {name} ({})",
            literal(&name),
            cols.join(", ")
        ),
    ];
    let index =
        |ix: &str, unique: bool, cols: &[String]| {
            let list: Vec<String> = cols.iter().map(|c| quote(c)).collect();
            let filter: Vec<String> = cols.iter().map(|c| format!("{} IS NOT NULL", quote(c))).collect();
            format!(
            "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE [name] = {} AND [object_id] = OBJECT_ID({})) \
             CREATE {}INDEX {} ON {name} ({}){}",
            literal(ix),
            literal(&name),
            if unique { "UNIQUE " } else { "" },
            quote(ix),
            list.join(", "),
            if unique { format!(" WHERE {}", filter.join(" AND ")) } else { String::new() }
        )
        };
    for (n, key) in t.unique_keys.iter().enumerate() {
        let cols: Vec<String> = key.iter().map(|&i| t.columns[i].name.clone()).collect();
        out.push(index(&format!("dbmux_uk_{}", n + 1), true, &cols));
    }
    for (n, f) in t.foreign_keys.iter().enumerate() {
        out.push(index(&format!("dbmux_fk_{}", n + 1), false, &f.columns));
    }
    Ok(out)
}

/// `@P{n}` placeholders, numbered from `first`.
fn placeholders(first: usize, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "@P{}", first + i);
    }
    s
}

/// `(@P1, @P2), (@P3, @P4)` for `rows` rows of `width` values.
fn values_rows(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(r * width + 1, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Upsert of `rows` whole rows by primary key: one `MERGE` over a `VALUES`
/// source. `HOLDLOCK` makes the match-then-insert atomic against concurrent
/// writers (MERGE alone is not).
pub fn merge(t: &TableSchema, rows: usize) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
    let on: Vec<String> = t
        .primary_key
        .iter()
        .map(|&i| format!("t.{c} = s.{c}", c = cols[i]))
        .collect();
    let set: Vec<String> = (0..cols.len())
        .filter(|i| !t.primary_key.contains(i))
        .map(|i| format!("t.{c} = s.{c}", c = cols[i]))
        .collect();
    let mut sql = format!(
        "MERGE INTO {} WITH (HOLDLOCK) AS t USING (VALUES {}) AS s ({}) ON {}",
        qualified(&t.id),
        values_rows(rows, cols.len()),
        cols.join(", "),
        on.join(" AND ")
    );
    if !set.is_empty() {
        let _ = write!(sql, " WHEN MATCHED THEN UPDATE SET {}", set.join(", "));
    }
    let src: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
    let _ = write!(
        sql,
        " WHEN NOT MATCHED THEN INSERT ({}) VALUES ({});",
        cols.join(", "),
        src.join(", ")
    );
    sql
}

/// Delete of `rows` rows by primary key (`@P…` = the key values, row by row).
pub fn delete_keys(t: &TableSchema, rows: usize) -> String {
    let keys: Vec<String> = t.primary_key.iter().map(|&i| quote(&t.columns[i].name)).collect();
    let on: Vec<String> = keys.iter().map(|c| format!("t.{c} = s.{c}")).collect();
    format!(
        "DELETE t FROM {} AS t INNER JOIN (VALUES {}) AS s ({}) ON {}",
        qualified(&t.id),
        values_rows(rows, keys.len()),
        keys.join(", "),
        on.join(" AND ")
    )
}

/// Plain insert of `rows` whole rows (tables without a primary key).
pub fn insert(t: &TableSchema, rows: usize) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
    format!(
        "INSERT INTO {} ({}) VALUES {}",
        qualified(&t.id),
        cols.join(", "),
        values_rows(rows, cols.len())
    )
}

/// The condition "column `i` equals the before image's value" for keyless
/// rows; NULL as `IS NULL`. Text is compared by its exact characters
/// (binary collation and equal length: SQL Server ignores trailing spaces in
/// `=` under every collation), so the row found is the row the source changed.
fn exact_match(c: &ColumnDef, p: &str, null: bool) -> String {
    let q = quote(&c.name);
    if null {
        return format!("{q} IS NULL");
    }
    match c.ty {
        ColumnType::Char { .. }
        | ColumnType::VarChar { .. }
        | ColumnType::Text { .. }
        | ColumnType::Json
        | ColumnType::Enum { .. }
        | ColumnType::Set { .. }
        | ColumnType::Interval
        | ColumnType::Numeric => format!(
            "{q} = {p} COLLATE {COLLATION_BINARY} AND DATALENGTH({q}) = DATALENGTH(CAST({p} AS NVARCHAR(MAX)))"
        ),
        ColumnType::Decimal { precision, .. } if precision > MAX_DECIMAL_PRECISION => format!(
            "{q} = {p} COLLATE {COLLATION_BINARY} AND DATALENGTH({q}) = DATALENGTH(CAST({p} AS VARCHAR(MAX)))"
        ),
        // SQL Server pads the shorter binary with zeros in `=`; BINARY(n) is
        // stored padded, as MySQL stores it.
        ColumnType::VarBinary { .. } | ColumnType::Blob { .. } => {
            format!("{q} = {p} AND DATALENGTH({q}) = DATALENGTH({p})")
        }
        _ => format!("{q} = {p}"),
    }
}

/// `UPDATE TOP (1)` of one row equal to the before image (its non-NULL
/// values are `@P1…`, then the after image's values follow).
/// `nulls[i]` says the before image's column `i` is NULL.
pub fn update_one(t: &TableSchema, nulls: &[bool]) -> String {
    let mut n = 0;
    let mut conds = Vec::with_capacity(t.columns.len());
    for (c, &null) in t.columns.iter().zip(nulls) {
        if null {
            conds.push(exact_match(c, "", true));
        } else {
            n += 1;
            conds.push(exact_match(c, &format!("@P{n}"), false));
        }
    }
    let set: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = @P{}", quote(&c.name), n + i + 1))
        .collect();
    format!(
        "UPDATE TOP (1) {} SET {} WHERE {}",
        qualified(&t.id),
        set.join(", "),
        conds.join(" AND ")
    )
}

/// `DELETE TOP (1)` of one row equal to the before image (non-NULL values as `@P1…`).
pub fn delete_one(t: &TableSchema, nulls: &[bool]) -> String {
    let mut n = 0;
    let conds: Vec<String> = t
        .columns
        .iter()
        .zip(nulls)
        .map(|(c, &null)| {
            if null {
                exact_match(c, "", true)
            } else {
                n += 1;
                exact_match(c, &format!("@P{n}"), false)
            }
        })
        .collect();
    format!(
        "DELETE TOP (1) FROM {} WHERE {}",
        qualified(&t.id),
        conds.join(" AND ")
    )
}

/// Drops `t` unless it is missing (a snapshot's first chunk creates it again).
pub fn drop_table(t: &TableId) -> String {
    format!("DROP TABLE IF EXISTS {}", qualified(t))
}

/// Every row of `t`, inside the transaction. `DELETE` rather than
/// `TRUNCATE TABLE`: it needs only the DELETE permission the applier has anyway.
pub fn truncate(t: &TableId) -> String {
    format!("DELETE FROM {}", qualified(t))
}

/// `(a = @P1 AND b = @P2) OR (a = @P3 AND b = @P4)` for cascades; keys are NULL-free.
fn key_match(cols: &[String], keys: usize, first: usize) -> String {
    (0..keys)
        .map(|k| {
            let parts: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{} = @P{}", quote(c), first + k * cols.len() + i))
                .collect();
            format!("({})", parts.join(" AND "))
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// `SELECT want FROM t WHERE cols IN keys`.
pub fn cascade_select(t: &TableId, cols: &[String], keys: usize, want: &[String]) -> String {
    let want: Vec<String> = want.iter().map(|c| quote(c)).collect();
    format!(
        "SELECT {} FROM {} WHERE {}",
        want.join(", "),
        qualified(t),
        key_match(cols, keys, 1)
    )
}

/// `DELETE FROM t WHERE cols IN keys`.
pub fn cascade_delete(t: &TableId, cols: &[String], keys: usize) -> String {
    format!("DELETE FROM {} WHERE {}", qualified(t), key_match(cols, keys, 1))
}

/// `UPDATE t SET cols = new (or NULL) WHERE cols IN keys`; the new values, when
/// any, are the first parameters.
pub fn cascade_update(t: &TableId, cols: &[String], keys: usize, set_null: bool) -> String {
    let set: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if set_null {
                format!("{} = NULL", quote(c))
            } else {
                format!("{} = @P{}", quote(c), i + 1)
            }
        })
        .collect();
    let first = if set_null { 1 } else { cols.len() + 1 };
    format!(
        "UPDATE {} SET {} WHERE {}",
        qualified(t),
        set.join(", "),
        key_match(cols, keys, first)
    )
}

#[cfg(test)]
mod tests;
