//! SQL text and parameter values for the PostgreSQL applier.
//!
//! Pure functions, no connection: [`super::apply`] executes what this module
//! writes. The type and value rules are documented in `docs/type-mapping.md`.
//!
//! # Values travel as parameters, in text format
//! Every value is bound as a parameter in PostgreSQL's *text* format and
//! parsed by the column type's own input function (`numeric_in`, `bit_in`,
//! `interval_in`, …), which is exact for every type we map, so nothing is
//! rounded through a Rust type. A multi-row statement binds one parameter per
//! column: an array literal holding that column's values for every row, spread
//! back into rows with `unnest` (`INSERT … SELECT * FROM unnest($1::int4[],
//! $2::text[]) ON CONFLICT …`). Its text is the same for any row count, so
//! one prepared statement per table and kind serves every batch.
//!
//! Array literals are the one thing we escape, and the rule is short: every
//! element is written in double quotes with `\` and `"` backslash-escaped;
//! `NULL` is written bare. SQL text itself only ever carries identifiers
//! (double-quoted, `"` doubled) and, in `CREATE TABLE`, ENUM/SET labels as
//! standard string literals (`'` doubled; the session sets
//! `standard_conforming_strings = on`).

use pipeline::schema::{ColumnDef, ColumnType, TableId, TableSchema};
use pipeline::value::{format_timestamp_utc, Value};
use serde::Deserialize;

/// Run on every new connection: UTC for `timestamptz` input and output, ISO
/// dates, plain string literals, shortest exact float output.
pub const SESSION_SETUP: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET standard_conforming_strings = on; SET extra_float_digits = 1";

/// PostgreSQL truncates longer identifiers (`NAMEDATALEN - 1`); we refuse them instead.
pub const MAX_IDENT_BYTES: usize = 63;

/// What to write for MySQL zero dates (`0000-00-00`, `2024-00-10`, and the
/// zero `DATETIME`/`TIMESTAMP`), which PostgreSQL cannot represent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroDates {
    /// Stop with a definite error naming the table and column (default: a
    /// replica never silently holds something else than the source).
    #[default]
    Error,
    /// Write `-infinity`, which sorts before every date.
    NegInfinity,
    /// Write NULL (fails on a NOT NULL column).
    Null,
}

/// PostgreSQL's system column names: a user column cannot have one.
pub const SYSTEM_COLUMNS: &[&str] = &["tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"];

/// True when `name` is a PostgreSQL system column name.
pub fn is_system_column(name: &str) -> bool {
    SYSTEM_COLUMNS.contains(&name)
}

/// A name PostgreSQL can hold: `name` itself when it fits in 63 bytes, else
/// its first bytes (up to 54, on a character boundary), `_` and 8 hex digits
/// of the CRC-32 of the whole name, so that two long names that share a
/// prefix stay apart and the mapping never changes.
pub fn pg_name(name: &str) -> String {
    if name.len() <= MAX_IDENT_BYTES {
        return name.to_string();
    }
    let mut end = 54;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}_{:08x}", &name[..end], crc32(name.as_bytes()))
}

/// CRC-32 (IEEE), bitwise: names are short and rare.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// `"name"` with `"` doubled; refuses names PostgreSQL would truncate or cannot hold.
pub fn quote_ident(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > MAX_IDENT_BYTES || name.contains('\0') {
        return Err(format!(
            "identifier {name:?} must be 1-{MAX_IDENT_BYTES} bytes without NUL for PostgreSQL"
        ));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// `"schema"."table"`.
pub fn quote_table(t: &TableId) -> Result<String, String> {
    Ok(format!("{}.{}", quote_ident(&t.schema)?, quote_ident(&t.name)?))
}

/// A standard string literal (`standard_conforming_strings = on`).
pub fn quote_string(s: &str) -> Result<String, String> {
    if s.contains('\0') {
        return Err(format!("{s:?} contains NUL, which PostgreSQL text cannot hold"));
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

/// The column type to create, plus an optional CHECK expression keeping the
/// source's domain (unsigned ranges, ENUM and SET labels).
pub fn column_type_sql(col: &ColumnDef) -> Result<(String, Option<String>), String> {
    let q = quote_ident(&col.name)?;
    let labels = |ls: &[String]| -> Result<String, String> {
        Ok(ls
            .iter()
            .map(|l| quote_string(l))
            .collect::<Result<Vec<_>, _>>()?
            .join(","))
    };
    let range = |max: u64| Some(format!("{q} BETWEEN 0 AND {max}"));
    Ok(match &col.ty {
        ColumnType::Bool => ("boolean".into(), None),
        ColumnType::Integer {
            bytes,
            unsigned: false,
        } => (
            match bytes {
                1 | 2 => "smallint",
                3 | 4 => "integer",
                8 => "bigint",
                other => return Err(format!("integer width of {other} bytes")),
            }
            .into(),
            match bytes {
                1 => Some(format!("{q} BETWEEN -128 AND 127")),
                3 => Some(format!("{q} BETWEEN -8388608 AND 8388607")),
                _ => None,
            },
        ),
        ColumnType::Integer {
            bytes,
            unsigned: true,
        } => match bytes {
            1 => ("smallint".into(), range(255)),
            2 => ("integer".into(), range(65_535)),
            3 => ("integer".into(), range(16_777_215)),
            4 => ("bigint".into(), range(4_294_967_295)),
            8 => ("numeric(20,0)".into(), range(u64::MAX)),
            other => return Err(format!("integer width of {other} bytes")),
        },
        ColumnType::Decimal { precision, scale } => (format!("numeric({precision},{scale})"), None),
        ColumnType::Numeric => ("numeric".into(), None),
        ColumnType::Float => ("real".into(), None),
        ColumnType::Double => ("double precision".into(), None),
        ColumnType::Date => ("date".into(), None),
        ColumnType::Time { .. } => ("interval".into(), None),
        ColumnType::DateTime { fsp } => (format!("timestamp({fsp}) without time zone"), None),
        ColumnType::Timestamp { fsp } | ColumnType::TimestampTz { fsp } => {
            (format!("timestamp({fsp}) with time zone"), None)
        }
        ColumnType::Interval => ("interval".into(), None),
        ColumnType::Year => ("smallint".into(), None),
        ColumnType::Char { length } | ColumnType::VarChar { length } => {
            (format!("varchar({length}){}", text_collation(col)), None)
        }
        ColumnType::Text { .. } => (format!("text{}", text_collation(col)), None),
        ColumnType::Binary { .. } | ColumnType::VarBinary { .. } | ColumnType::Blob { .. } => {
            ("bytea".into(), None)
        }
        ColumnType::Json => ("jsonb".into(), None),
        ColumnType::Enum { labels: ls } => (
            format!("text{}", text_collation(col)),
            Some(format!("{q} IN ({})", labels(ls)?)),
        ),
        ColumnType::Set { labels: ls } => (
            format!("text{}", text_collation(col)),
            Some(format!(
                "{q} = '' OR string_to_array({q}, ',') <@ ARRAY[{}]::text[]",
                labels(ls)?
            )),
        ),
        ColumnType::Bit { width } => (format!("bit({width})"), None),
        ColumnType::Uuid => ("uuid".into(), None),
        ColumnType::Other { name } => return Err(format!("source type {name:?} has no mapping")),
    })
}

/// The `COLLATE` clause for a text column. PostgreSQL's own collations are
/// deterministic (two strings are equal only when their bytes are), so keys
/// never merge rows the source keeps apart, whatever the source collation.
/// A binary source collation (`*_bin`) also *orders* by code point, which is
/// what `"C"` does with UTF-8; other source collations (case- or
/// accent-insensitive) have no PostgreSQL equivalent that compares alike, so
/// the database's default collation is used (see `docs/type-mapping.md`).
pub fn text_collation(col: &ColumnDef) -> &'static str {
    match col.collation.as_deref() {
        Some(c) if c.ends_with("_bin") => " COLLATE \"C\"",
        _ => "",
    }
}

/// `CREATE TABLE IF NOT EXISTS` from the source definition.
pub fn create_table_sql(target: &TableId, schema: &TableSchema) -> Result<String, (String, String)> {
    let mut parts = Vec::with_capacity(schema.columns.len() + 1);
    for col in &schema.columns {
        let (ty, check) = column_type_sql(col).map_err(|m| (col.name.clone(), m))?;
        let null = if col.nullable { "NULL" } else { "NOT NULL" };
        let check = check.map_or(String::new(), |c| format!(" CHECK ({c})"));
        parts.push(format!(
            "{} {ty} {null}{check}",
            quote_ident(&col.name).map_err(|m| (col.name.clone(), m))?
        ));
    }
    if schema.has_primary_key() {
        parts.push(format!(
            "PRIMARY KEY ({})",
            key_list(schema).map_err(|m| (String::new(), m))?
        ));
    }
    for uk in &schema.unique_keys {
        let cols = uk
            .iter()
            .map(|&i| quote_ident(&schema.columns[i].name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| (String::new(), m))?;
        parts.push(format!("UNIQUE ({})", cols.join(",")));
    }
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote_table(target).map_err(|m| (String::new(), m))?,
        parts.join(", ")
    ))
}

fn key_list(schema: &TableSchema) -> Result<String, String> {
    Ok(schema
        .primary_key
        .iter()
        .map(|&i| quote_ident(&schema.columns[i].name))
        .collect::<Result<Vec<_>, _>>()?
        .join(","))
}

/// Statements for one source table definition against one target table.
/// `types[i]` is the target type of source column `i`, as a qualified name
/// without type modifiers (`"pg_catalog"."numeric"`), read from the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct TableStatements {
    /// The replica's column list, quoted (`COPY` of snapshot rows).
    pub columns: String,
    /// `ON CONFLICT (key) DO …` of the upsert (empty without a key).
    pub on_conflict: String,
    pub upsert: String,
    pub insert: String,
    pub delete: String,
    pub update_one: String,
    pub delete_one: String,
    pub truncate: String,
}

impl TableStatements {
    /// Only `truncate` (for a table known by name alone); empty when the
    /// replica has no such table (nothing to truncate).
    pub fn truncate_only(target: &TableId, exists: bool) -> Result<Self, String> {
        Ok(TableStatements {
            columns: String::new(),
            on_conflict: String::new(),
            upsert: String::new(),
            insert: String::new(),
            delete: String::new(),
            update_one: String::new(),
            delete_one: String::new(),
            truncate: if exists {
                format!("TRUNCATE TABLE {}", quote_table(target)?)
            } else {
                String::new()
            },
        })
    }
}

pub fn table_statements(
    target: &TableId,
    schema: &TableSchema,
    types: &[String],
) -> Result<TableStatements, String> {
    let table = quote_table(target)?;
    let cols: Vec<String> = schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Result<_, _>>()?;
    let unnest = |idx: &[usize]| {
        idx.iter()
            .enumerate()
            .map(|(n, &i)| format!("${}::{}[]", n + 1, types[i]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all: Vec<usize> = (0..cols.len()).collect();
    let insert = format!(
        "INSERT INTO {table} ({}) SELECT * FROM unnest({})",
        cols.join(","),
        unnest(&all)
    );
    let non_key: Vec<String> = all
        .iter()
        .filter(|i| !schema.primary_key.contains(i))
        .map(|&i| format!("{c} = EXCLUDED.{c}", c = cols[i]))
        .collect();
    let on_conflict = if schema.has_primary_key() {
        let action = if non_key.is_empty() {
            "NOTHING".to_string()
        } else {
            format!("UPDATE SET {}", non_key.join(", "))
        };
        format!(" ON CONFLICT ({}) DO {action}", key_list(schema)?)
    } else {
        String::new()
    };
    let upsert = if schema.has_primary_key() {
        format!("{insert}{on_conflict}")
    } else {
        String::new()
    };
    let delete = match schema.primary_key.as_slice() {
        [] => String::new(),
        [k] => format!(
            "DELETE FROM {table} WHERE {} = ANY($1::{}[])",
            cols[*k], types[*k]
        ),
        keys => format!(
            "DELETE FROM {table} WHERE ({}) IN (SELECT * FROM unnest({}))",
            keys.iter()
                .map(|&i| cols[i].as_str())
                .collect::<Vec<_>>()
                .join(","),
            unnest(keys)
        ),
    };
    let n = cols.len();
    let matches = |offset: usize| {
        all.iter()
            .map(|&i| {
                format!(
                    "{} IS NOT DISTINCT FROM ${}::{}",
                    cols[i],
                    offset + i + 1,
                    types[i]
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let set = all
        .iter()
        .map(|&i| format!("{} = ${}::{}", cols[i], i + 1, types[i]))
        .collect::<Vec<_>>()
        .join(", ");
    let update_one = format!(
        "UPDATE {table} SET {set} WHERE ctid = (SELECT ctid FROM {table} WHERE {} LIMIT 1)",
        matches(n)
    );
    let delete_one = format!(
        "DELETE FROM {table} WHERE ctid = (SELECT ctid FROM {table} WHERE {} LIMIT 1)",
        matches(0)
    );
    Ok(TableStatements {
        columns: cols.join(","),
        on_conflict,
        upsert,
        insert,
        delete,
        update_one,
        delete_one,
        truncate: format!("TRUNCATE TABLE {table}"),
    })
}

/// Appends one value to a `COPY … FROM STDIN` text-format row: `\N` for
/// NULL, the text with backslash, tab, newline and carriage return escaped.
pub fn push_copy_field(out: &mut Vec<u8>, text: Option<&str>) {
    let Some(t) = text else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for b in t.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
}

/// The text-format input for one value of column `col`; `None` is NULL.
/// Errors are definite; the caller adds table and column.
pub fn to_text(v: &Value, col: &ColumnDef, zero: ZeroDates) -> Result<Option<String>, String> {
    let zero_date = |what: &str| -> Result<Option<String>, String> {
        match zero {
            ZeroDates::Error => Err(format!(
                "zero {what} cannot be stored in PostgreSQL (set zero_dates = \"neg_infinity\" or \"null\" to map it)"
            )),
            ZeroDates::NegInfinity => Ok(Some("-infinity".into())),
            ZeroDates::Null => Ok(None),
        }
    };
    let text = |s: &str| -> Result<Option<String>, String> {
        if s.contains('\0') {
            Err("text contains NUL (0x00), which PostgreSQL text cannot store".into())
        } else {
            Ok(Some(s.to_string()))
        }
    };
    Ok(match v {
        Value::Null => None,
        Value::Int(x) if col.ty == ColumnType::Bool => Some(bool_text(*x as i128)?),
        Value::UInt(x) if col.ty == ColumnType::Bool => Some(bool_text(*x as i128)?),
        Value::Int(x) => Some(x.to_string()),
        Value::UInt(x) => Some(x.to_string()),
        Value::Float(x) => Some(float_text(*x as f64, x.is_finite(), format!("{x:e}"))),
        Value::Double(x) => Some(float_text(*x, x.is_finite(), format!("{x:e}"))),
        Value::Decimal(s) => return text(s),
        Value::Date(d) if d.month == 0 || d.day == 0 => return zero_date("date"),
        Value::Date(d) => Some(d.to_string()),
        Value::DateTime(dt) if dt.date.month == 0 || dt.date.day == 0 => return zero_date("datetime"),
        Value::DateTime(dt) => Some(dt.to_string()),
        // 0 is MySQL's zero TIMESTAMP, but an ordinary instant in a `TimestampTz` column.
        Value::Timestamp(0) if !matches!(col.ty, ColumnType::TimestampTz { .. }) => {
            return zero_date("timestamp")
        }
        Value::Timestamp(us) => Some(format!("{}+00", format_timestamp_utc(*us))),
        Value::Time(t) => Some(t.to_string()),
        Value::Year(y) => Some(y.to_string()),
        Value::Text(s) | Value::Json(s) | Value::Enum(s) => return text(s),
        Value::Set(members) => return text(&members.join(",")),
        Value::Bytes(b) => match &col.ty {
            ColumnType::Uuid => Some(pipeline::value::uuid_text(b)?),
            ColumnType::Binary { length } if b.len() < *length as usize => {
                // MySQL stores and returns BINARY(n) right-padded with 0x00.
                let mut padded = b.clone();
                padded.resize(*length as usize, 0);
                Some(format!("\\x{}", hex::encode(padded)))
            }
            _ => Some(format!("\\x{}", hex::encode(b))),
        },
        Value::Bit(x) => match &col.ty {
            ColumnType::Bit { width } => {
                let w = usize::from(*width);
                if w < 64 && *x >> w != 0 {
                    return Err(format!("BIT value {x} does not fit in BIT({w})"));
                }
                Some(format!("{x:0w$b}"))
            }
            _ => Some(x.to_string()),
        },
    })
}

fn bool_text(x: i128) -> Result<String, String> {
    match x {
        0 => Ok("f".into()),
        1 => Ok("t".into()),
        other => Err(format!(
            "{other} in a BOOL column has no PostgreSQL boolean equivalent"
        )),
    }
}

fn float_text(x: f64, finite: bool, shortest: String) -> String {
    if finite {
        shortest
    } else if x.is_nan() {
        "NaN".into()
    } else if x > 0.0 {
        "Infinity".into()
    } else {
        "-Infinity".into()
    }
}

/// Appends one element to an array literal being built in `out` (without the braces).
pub fn push_array_element(out: &mut String, element: Option<&str>) {
    if out.len() > 1 {
        out.push(',');
    }
    match element {
        None => out.push_str("NULL"),
        Some(s) => {
            // Copies runs between the two characters that need a backslash
            // (both ASCII, so byte positions are character boundaries): the
            // profile of a backlog drain had the old char-by-char loop at
            // 6-10 % of dbmux's CPU.
            out.reserve(s.len() + 2);
            out.push('"');
            let mut rest = s;
            while let Some(i) = rest.find(['"', '\\']) {
                out.push_str(&rest[..i]);
                out.push('\\');
                out.push_str(&rest[i..=i]);
                rest = &rest[i + 1..];
            }
            out.push_str(rest);
            out.push('"');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::value::{Date, DateTime, Time};

    fn col(name: &str, ty: ColumnType) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            ty,
            nullable: true,
            charset: None,
            collation: None,
            source_type: String::new(),
        }
    }

    #[test]
    fn array_elements_are_quoted_and_escaped() {
        // The escaping rule of a PostgreSQL array literal, one character at a time.
        fn reference(out: &mut String, element: Option<&str>) {
            if out.len() > 1 {
                out.push(',');
            }
            match element {
                None => out.push_str("NULL"),
                Some(s) => {
                    out.push('"');
                    for c in s.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
            }
        }
        let elements = [
            Some(""),
            Some("plain"),
            Some("\""),
            Some("\\"),
            Some("a\"b\\c\"\""),
            Some("é😀\"ü\\"),
            Some("NULL"),
            Some("{,}"),
            None,
            Some("trailing\\"),
        ];
        let (mut got, mut want) = ("{".to_string(), "{".to_string());
        for e in elements {
            push_array_element(&mut got, e);
            reference(&mut want, e);
        }
        assert_eq!(got, want);
        assert!(got.starts_with("{\"\",\"plain\",\"\\\"\",\"\\\\\""), "{got}");
    }

    #[test]
    fn long_and_system_names() {
        assert_eq!(pg_name("short"), "short");
        let long = "a".repeat(70);
        let mapped = pg_name(&long);
        assert_eq!(mapped.len(), 63);
        assert!(mapped.starts_with(&"a".repeat(54)));
        assert_ne!(pg_name(&format!("{long}x")), mapped);
        assert_eq!(pg_name(&"é".repeat(40)).len(), 54 + 9);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert!(is_system_column("xmin") && !is_system_column("xmin_"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert!(quote_ident(&"x".repeat(64)).is_err());
        assert!(quote_ident(&"x".repeat(63)).is_ok());
        assert_eq!(quote_string("it's \\").unwrap(), "'it''s \\'");
        assert!(quote_string("a\0").is_err());
        let mut a = String::from("{");
        push_array_element(&mut a, Some("a\"b\\c,d"));
        push_array_element(&mut a, None);
        push_array_element(&mut a, Some("NULL"));
        a.push('}');
        assert_eq!(a, r#"{"a\"b\\c,d",NULL,"NULL"}"#);
    }

    #[test]
    fn column_types() {
        let t = |ty| column_type_sql(&col("c", ty)).unwrap();
        assert_eq!(
            t(ColumnType::Integer {
                bytes: 8,
                unsigned: true
            }),
            (
                "numeric(20,0)".into(),
                Some("\"c\" BETWEEN 0 AND 18446744073709551615".into())
            )
        );
        assert_eq!(
            t(ColumnType::Integer {
                bytes: 4,
                unsigned: true
            })
            .0,
            "bigint"
        );
        assert_eq!(t(ColumnType::Time { fsp: 6 }).0, "interval");
        assert_eq!(
            t(ColumnType::Timestamp { fsp: 6 }).0,
            "timestamp(6) with time zone"
        );
        assert_eq!(t(ColumnType::Char { length: 3 }).0, "varchar(3)");
        let bin = ColumnDef {
            collation: Some("utf8mb4_bin".into()),
            ..col("c", ColumnType::VarChar { length: 3 })
        };
        assert_eq!(column_type_sql(&bin).unwrap().0, "varchar(3) COLLATE \"C\"");
        assert_eq!(
            t(ColumnType::Enum {
                labels: vec!["a'".into(), "b".into()]
            }),
            ("text".into(), Some("\"c\" IN ('a''','b')".into()))
        );
        assert!(column_type_sql(&col(
            "c",
            ColumnType::Other {
                name: "geometry".into()
            }
        ))
        .is_err());
    }

    #[test]
    fn statements() {
        let schema = TableSchema {
            id: TableId::new("src", "t"),
            columns: vec![
                col(
                    "id",
                    ColumnType::Integer {
                        bytes: 4,
                        unsigned: false,
                    },
                ),
                col("v", ColumnType::Text { max_bytes: 65535 }),
            ],
            primary_key: vec![0],
            ..Default::default()
        };
        let types = vec![
            "\"pg_catalog\".\"int4\"".to_string(),
            "\"pg_catalog\".\"text\"".to_string(),
        ];
        let s = table_statements(&TableId::new("app", "t"), &schema, &types).unwrap();
        assert_eq!(
            s.upsert,
            "INSERT INTO \"app\".\"t\" (\"id\",\"v\") SELECT * FROM unnest($1::\"pg_catalog\".\"int4\"[], \
             $2::\"pg_catalog\".\"text\"[]) ON CONFLICT (\"id\") DO UPDATE SET \"v\" = EXCLUDED.\"v\""
        );
        assert_eq!(
            s.delete,
            "DELETE FROM \"app\".\"t\" WHERE \"id\" = ANY($1::\"pg_catalog\".\"int4\"[])"
        );
        assert_eq!(
            s.delete_one,
            "DELETE FROM \"app\".\"t\" WHERE ctid = (SELECT ctid FROM \"app\".\"t\" WHERE \
             \"id\" IS NOT DISTINCT FROM $1::\"pg_catalog\".\"int4\" AND \"v\" IS NOT DISTINCT FROM \
             $2::\"pg_catalog\".\"text\" LIMIT 1)"
        );
        assert!(s.update_one.contains("SET \"id\" = $1::\"pg_catalog\".\"int4\""));
        assert!(s.update_one.contains("\"id\" IS NOT DISTINCT FROM $3::"));
        let composite = TableSchema {
            primary_key: vec![0, 1],
            ..schema.clone()
        };
        let s = table_statements(&TableId::new("app", "t"), &composite, &types).unwrap();
        assert_eq!(
            s.delete,
            "DELETE FROM \"app\".\"t\" WHERE (\"id\",\"v\") IN (SELECT * FROM unnest($1::\"pg_catalog\".\"int4\"[], \
             $2::\"pg_catalog\".\"text\"[]))"
        );
        assert!(s.upsert.ends_with("ON CONFLICT (\"id\",\"v\") DO NOTHING"));
    }

    #[test]
    fn copy_fields() {
        let mut out = Vec::new();
        push_copy_field(&mut out, Some("a\tb\\c\nd\r"));
        out.push(b'\t');
        push_copy_field(&mut out, None);
        assert_eq!(out, b"a\\tb\\\\c\\nd\\r\t\\N");
    }

    #[test]
    fn values() {
        let any = col("c", ColumnType::Json);
        let z = ZeroDates::Error;
        let t = |v: Value| to_text(&v, &any, z).unwrap().unwrap();
        assert_eq!(t(Value::Float(f32::MIN_POSITIVE)), "1.1754944e-38");
        assert_eq!(t(Value::Double(0.1)), "1e-1");
        assert_eq!(t(Value::Double(f64::NAN)), "NaN");
        assert_eq!(t(Value::Float(f32::NEG_INFINITY)), "-Infinity");
        assert_eq!(t(Value::Timestamp(1)), "1970-01-01 00:00:00.000001+00");
        assert_eq!(
            t(Value::Time(Time {
                negative: true,
                hours: 838,
                minutes: 59,
                seconds: 59,
                micros: 0
            })),
            "-838:59:59"
        );
        assert_eq!(t(Value::Bytes(vec![0, 255])), "\\x00ff");
        let zero = Value::Date(Date {
            year: 0,
            month: 0,
            day: 0,
        });
        assert!(to_text(&zero, &any, ZeroDates::Error).is_err());
        assert_eq!(
            to_text(&zero, &any, ZeroDates::NegInfinity).unwrap().unwrap(),
            "-infinity"
        );
        assert_eq!(to_text(&zero, &any, ZeroDates::Null).unwrap(), None);
        let half = Value::DateTime(DateTime {
            date: Date {
                year: 2024,
                month: 0,
                day: 10,
            },
            hour: 1,
            minute: 2,
            second: 3,
            micros: 0,
        });
        assert!(to_text(&half, &any, ZeroDates::Error).is_err());
        assert!(to_text(&Value::Timestamp(0), &any, ZeroDates::Error).is_err());
        assert!(to_text(&Value::Text("a\0b".into()), &any, z).is_err());
        let bit = col("b", ColumnType::Bit { width: 3 });
        assert_eq!(to_text(&Value::Bit(5), &bit, z).unwrap().unwrap(), "101");
        assert!(to_text(&Value::Bit(8), &bit, z).is_err());
        let b64 = col("b", ColumnType::Bit { width: 64 });
        assert_eq!(
            to_text(&Value::Bit(u64::MAX), &b64, z).unwrap().unwrap(),
            "1".repeat(64)
        );
        let boolean = col("b", ColumnType::Bool);
        assert_eq!(to_text(&Value::Int(1), &boolean, z).unwrap().unwrap(), "t");
        assert!(to_text(&Value::Int(2), &boolean, z).is_err());
        let bin = col("b", ColumnType::Binary { length: 3 });
        assert_eq!(
            to_text(&Value::Bytes(vec![1]), &bin, z).unwrap().unwrap(),
            "\\x010000"
        );
        let set = col("s", ColumnType::Set { labels: vec![] });
        assert_eq!(
            to_text(&Value::Set(vec!["a".into(), "b".into()]), &set, z)
                .unwrap()
                .unwrap(),
            "a,b"
        );
    }
}
