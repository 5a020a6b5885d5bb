//! The JSON envelope: the documented, human- and consumer-facing form of a change.
//!
//! Field names follow Debezium's (`before`, `after`, `source`, `op`, `ts_ms`) so
//! existing consumers can read it. Every value is carried **exactly**:
//! - integers → JSON numbers (unsigned 64-bit too);
//! - DECIMAL → string (exact text);
//! - FLOAT/DOUBLE → number (the shortest text that reads back as the same binary value);
//! - DATE → `"YYYY-MM-DD"`, TIME → `"[-]HH:MM:SS[.ffffff]"`, DATETIME →
//!   `"YYYY-MM-DDTHH:MM:SS[.ffffff]"` (no zone), TIMESTAMP →
//!   `"YYYY-MM-DDTHH:MM:SS[.ffffff]Z"` (UTC);
//! - **zero dates** keep MySQL's own spelling, which no date parser accepts (so a
//!   consumer cannot mistake them for a real instant): `"0000-00-00"`,
//!   `"2024-00-15"` (zero parts), `"0000-00-00T00:00:00"`, and the zero TIMESTAMP
//!   `"0000-00-00T00:00:00Z"`;
//! - YEAR → number; text → string; bytes → base64 string;
//! - JSON → the document itself, **as the source's text** with only the
//!   whitespace between tokens removed: numbers keep every digit
//!   (`123456789012345678901234567890` stays that, never `1.2345678901234568e+29`),
//!   key order and duplicate keys are kept. Text that is not valid JSON (never
//!   produced by MariaDB/MySQL) is carried as a JSON string;
//! - ENUM → string; SET → array of strings; BIT → number.
//!
//! Operations (`op`): `c`, `u`, `d`, `t` (truncate), `r` (a snapshot row:
//! `after` is the row as of the event's position), `ddl` (a schema change:
//! `ddl` is the statement, `schema_change` what dbmux understood, `schema` the
//! table's columns and primary key after it) and `snapshot` (snapshot control:
//! `snapshot` says which run, table phase and chunk; see docs/snapshot.md).

use crate::event::{ChangeEvent, Op};
use crate::schema::ColumnDef;
use crate::value::{format_timestamp_utc, Value};
use base64::Engine;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use std::fmt;

/// One value, serialized exactly (see the module documentation).
struct ValueJson<'a>(&'a Value);

impl Serialize for ValueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_none(),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) if f.is_finite() => s.serialize_f32(*f),
            Value::Double(f) if f.is_finite() => s.serialize_f64(*f),
            // MariaDB/MySQL cannot store these; JSON cannot spell them.
            Value::Float(f) => s.serialize_str(&f.to_string()),
            Value::Double(f) => s.serialize_str(&f.to_string()),
            Value::Decimal(d) => s.serialize_str(d),
            Value::Date(d) => s.serialize_str(&d.to_string()),
            Value::Time(t) => s.serialize_str(&t.to_string()),
            Value::DateTime(dt) => s.serialize_str(&dt.to_string().replacen(' ', "T", 1)),
            Value::Timestamp(0) => s.serialize_str("0000-00-00T00:00:00Z"),
            Value::Timestamp(us) => {
                s.serialize_str(&format!("{}Z", format_timestamp_utc(*us).replacen(' ', "T", 1)))
            }
            Value::Year(y) => s.serialize_u16(*y),
            Value::Text(t) | Value::Enum(t) => s.serialize_str(t),
            Value::Bytes(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
            Value::Json(text) => {
                let compact = compact_json(text);
                match serde_json::from_str::<&RawValue>(&compact) {
                    Ok(raw) => raw.serialize(s),
                    Err(_) => s.serialize_str(text),
                }
            }
            Value::Set(items) => items.serialize(s),
            Value::Bit(b) => s.serialize_u64(*b),
        }
    }
}

/// `text` without the whitespace between JSON tokens (keeps the envelope on
/// one line); strings and numbers are copied byte for byte.
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// One row image as an object keyed by column name.
struct RowJson<'a>(&'a [ColumnDef], &'a [Value]);

impl Serialize for RowJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.1.len()))?;
        for (col, v) in self.0.iter().zip(self.1) {
            m.serialize_entry(&col.name, &ValueJson(v))?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct Source<'a> {
    db: &'a str,
    table: &'a str,
    txn: &'a str,
    txn_index: u32,
    txn_last: bool,
    position: String,
    commit_ts_us: i64,
}

#[derive(Serialize)]
struct EnvelopeJson<'a> {
    seq: u64,
    op: &'static str,
    ts_ms: i64,
    source: Source<'a>,
    before: Option<RowJson<'a>>,
    after: Option<RowJson<'a>>,
    /// Schema changes: the statement as the source logged it.
    #[serde(skip_serializing_if = "Option::is_none")]
    ddl: Option<&'a str>,
    /// Schema changes: what dbmux understood (see `pipeline::ddl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_change: Option<&'a crate::ddl::DdlKind>,
    /// Schema changes: the table's columns and primary key after the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<SchemaJson<'a>>,
    /// Snapshot control events.
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<SnapshotJson<'a>>,
}

#[derive(Serialize)]
struct ColumnJson<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    nullable: bool,
}

#[derive(Serialize)]
struct SchemaJson<'a> {
    columns: Vec<ColumnJson<'a>>,
    primary_key: Vec<&'a str>,
}

#[derive(Serialize)]
struct SnapshotJson<'a> {
    id: u64,
    targets: &'a [String],
    reset: bool,
    phase: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

fn snapshot_json(m: &crate::snapshot::SnapshotMark) -> SnapshotJson<'_> {
    use crate::snapshot::SnapshotPhase;
    let mut j = SnapshotJson {
        id: m.id,
        targets: &m.targets,
        reset: m.reset,
        phase: "",
        estimated_rows: None,
        index: None,
        rows: None,
        last: None,
        reason: None,
    };
    match &m.phase {
        SnapshotPhase::Begin { estimated_rows, .. } => {
            j.phase = "begin";
            j.estimated_rows = Some(*estimated_rows);
        }
        SnapshotPhase::Chunk {
            index, rows, last, ..
        } => {
            j.phase = "chunk";
            j.index = Some(*index);
            j.rows = Some(*rows);
            j.last = Some(*last);
        }
        SnapshotPhase::End { reason } => {
            j.phase = "end";
            j.reason = Some(reason);
        }
    }
    j
}

/// The envelope of one event: one line of JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope(String);

impl Envelope {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// Parsed into a `serde_json::Value` (for tools and tests; numbers beyond
    /// f64 in JSON documents lose precision there, not in the text).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).expect("an envelope is valid JSON")
    }
}

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Renders one value as JSON text (see the module documentation).
pub fn value_json(v: &Value) -> String {
    serde_json::to_string(&ValueJson(v)).expect("values always serialize")
}

/// The envelope of one event.
pub fn to_envelope(event: &ChangeEvent) -> Envelope {
    let cols = event.table.columns.as_slice();
    let (before, after) = match &event.op {
        Op::Insert { after } => (None, Some(RowJson(cols, after))),
        Op::Update { before, after } => (Some(RowJson(cols, before)), Some(RowJson(cols, after))),
        Op::Delete { before } => (Some(RowJson(cols, before)), None),
        Op::Read { after } => (None, Some(RowJson(cols, after))),
        Op::Truncate | Op::Ddl(_) | Op::Snapshot(_) => (None, None),
    };
    let t = &event.table;
    let env = EnvelopeJson {
        seq: event.seq,
        op: event.op.code(),
        ts_ms: event.txn.commit_ts_us.div_euclid(1000),
        source: Source {
            db: &event.table.id.schema,
            table: &event.table.id.name,
            txn: &event.txn.id,
            txn_index: event.txn.index,
            txn_last: event.txn.last,
            position: event.position.to_string(),
            commit_ts_us: event.txn.commit_ts_us,
        },
        before,
        after,
        ddl: match &event.op {
            Op::Ddl(c) => Some(&c.statement),
            _ => None,
        },
        schema_change: match &event.op {
            Op::Ddl(c) => Some(&c.kind),
            _ => None,
        },
        schema: match &event.op {
            Op::Ddl(_) => Some(SchemaJson {
                columns: t
                    .columns
                    .iter()
                    .map(|c| ColumnJson {
                        name: &c.name,
                        ty: &c.source_type,
                        nullable: c.nullable,
                    })
                    .collect(),
                primary_key: t.primary_key.iter().map(|&i| t.columns[i].name.as_str()).collect(),
            }),
            _ => None,
        },
        snapshot: match &event.op {
            Op::Snapshot(m) => Some(snapshot_json(m)),
            _ => None,
        },
    };
    Envelope(serde_json::to_string(&env).expect("envelopes always serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Date, DateTime, Time};
    use serde_json::json;

    fn value_to_json(v: &Value) -> serde_json::Value {
        serde_json::from_str(&value_json(v)).unwrap()
    }

    #[test]
    fn json_documents_and_zero_dates_are_exact() {
        let doc = "{\"big\": 123456789012345678901234567890, \"f\": 0.10000000000000000000001,\n \"s\": \"a b\\\" c\", \"k\": 1, \"k\": 2}";
        assert_eq!(
            value_json(&Value::Json(doc.into())),
            "{\"big\":123456789012345678901234567890,\"f\":0.10000000000000000000001,\"s\":\"a b\\\" c\",\"k\":1,\"k\":2}"
        );
        assert_eq!(value_json(&Value::Json("not json".into())), "\"not json\"");
        assert_eq!(value_json(&Value::Timestamp(0)), "\"0000-00-00T00:00:00Z\"");
        let zero = Date {
            year: 0,
            month: 0,
            day: 0,
        };
        assert_eq!(value_json(&Value::Date(zero)), "\"0000-00-00\"");
        let dt = DateTime {
            date: zero,
            hour: 0,
            minute: 0,
            second: 0,
            micros: 0,
        };
        assert_eq!(value_json(&Value::DateTime(dt)), "\"0000-00-00T00:00:00\"");
        assert_eq!(value_json(&Value::Double(0.1)), "0.1");
        assert_eq!(value_json(&Value::Float(0.1)), "0.1");
        assert_eq!(value_json(&Value::UInt(u64::MAX)), "18446744073709551615");
    }

    #[test]
    fn value_mapping() {
        assert_eq!(
            value_to_json(&Value::UInt(u64::MAX)),
            json!(18446744073709551615u64)
        );
        assert_eq!(value_to_json(&Value::Decimal("-1.50".into())), json!("-1.50"));
        assert_eq!(value_to_json(&Value::Bytes(vec![0, 255])), json!("AP8="));
        assert_eq!(
            value_to_json(&Value::Json("{\"a\":[1]}".into())),
            json!({"a":[1]})
        );
        assert_eq!(
            value_to_json(&Value::Set(vec!["a".into(), "c".into()])),
            json!(["a", "c"])
        );
        assert_eq!(
            value_to_json(&Value::Timestamp(1_500_000)),
            json!("1970-01-01T00:00:01.500000Z")
        );
        let dt = DateTime {
            date: Date {
                year: 2024,
                month: 2,
                day: 29,
            },
            hour: 23,
            minute: 5,
            second: 1,
            micros: 7,
        };
        assert_eq!(
            value_to_json(&Value::DateTime(dt)),
            json!("2024-02-29T23:05:01.000007")
        );
        let t = Time {
            negative: true,
            hours: 1,
            minutes: 0,
            seconds: 0,
            micros: 500_000,
        };
        assert_eq!(value_to_json(&Value::Time(t)), json!("-01:00:00.500000"));
    }
}
