//! The JSON envelope: the documented, human- and consumer-facing form of a change.
//!
//! Field names follow Debezium's (`before`, `after`, `source`, `op`, `ts_ms`,
//! `transaction`) so existing consumers can read it; the full description is
//! `docs/change-events.md`. Every value is carried **exactly**:
//! - integers → JSON numbers (unsigned 64-bit too);
//! - DECIMAL → string (exact text);
//! - FLOAT/DOUBLE → number (the shortest text that reads back as the same binary value);
//!   NaN and ±infinity, which JSON cannot spell, → the strings `"NaN"`, `"inf"`, `"-inf"`;
//! - DATE → `"YYYY-MM-DD"`, TIME → `"[-]HH:MM:SS[.ffffff]"`, DATETIME →
//!   `"YYYY-MM-DDTHH:MM:SS[.ffffff]"` (no zone), TIMESTAMP →
//!   `"YYYY-MM-DDTHH:MM:SS[.ffffff]Z"` (UTC);
//! - a PostgreSQL `timestamptz` is a TIMESTAMP whose 0 is the epoch
//!   (`"1970-01-01T00:00:00Z"`), never the zero timestamp;
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
//!
//! The envelope is rendered straight to text ([`Envelope`]), never through a
//! `serde_json::Value`, which would round numbers beyond f64. Record keys on
//! the per-table Kafka topics ([`key_of`]) are rendered the same way.

use crate::event::{ChangeEvent, Op, Transaction};
use crate::position::Position;
use crate::schema::{ColumnDef, ColumnType, TableId};
use crate::value::{format_timestamp_utc, Value};
use base64::Engine;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::fmt;

/// One value, serialized exactly (see the module documentation).
/// The flag: the column is a `TimestampTz`, where `Timestamp(0)` is the
/// epoch, not MySQL's zero timestamp.
struct ValueJson<'a>(&'a Value, bool);

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
            Value::Timestamp(0) if !self.1 => s.serialize_str("0000-00-00T00:00:00Z"),
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
            let epoch_based = matches!(col.ty, ColumnType::TimestampTz { .. });
            m.serialize_entry(&col.name, &ValueJson(v, epoch_based))?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct Source<'a> {
    version: &'static str,
    connector: &'static str,
    ts_ms: i64,
    snapshot: &'static str,
    db: &'a str,
    table: &'a str,
    seq: u64,
    txn: &'a str,
    txn_index: u32,
    txn_last: bool,
    position: String,
    commit_ts_us: i64,
    /// Debezium's MySQL connector's names for the binlog coordinates.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pos: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gtid: Option<&'a str>,
    /// Debezium's PostgreSQL connector's name for the WAL position.
    #[serde(skip_serializing_if = "Option::is_none")]
    lsn: Option<u64>,
}

#[derive(Serialize)]
struct TransactionJson<'a> {
    id: &'a str,
    total_order: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_collection_order: Option<u64>,
}

#[derive(Serialize)]
struct EnvelopeJson<'a> {
    seq: u64,
    op: &'static str,
    ts_ms: i64,
    source: Source<'a>,
    before: Option<RowJson<'a>>,
    after: Option<RowJson<'a>>,
    transaction: TransactionJson<'a>,
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
    serde_json::to_string(&ValueJson(v, false)).expect("values always serialize")
}

/// Which part of an event an envelope shows. Debezium publishes an update
/// that changes the primary key as a delete of the old row and a create of
/// the new one, so that a consumer keyed by primary key stays right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The event as it is.
    Whole,
    /// An update's old row, as a delete (`op: "d"`, `after: null`).
    OldRowDeleted,
    /// An update's new row, as a create (`op: "c"`, `before: null`).
    NewRowCreated,
}

/// The envelope of one event, without the per-table order inside its
/// transaction (see [`transaction_envelopes`], which adds it).
pub fn to_envelope(event: &ChangeEvent) -> Envelope {
    envelope_part(event, Part::Whole, None)
}

/// The envelope of `part` of `event`, with `transaction.data_collection_order`
/// when given (see [`data_collection_orders`]).
pub fn envelope_part(event: &ChangeEvent, part: Part, data_collection_order: Option<u64>) -> Envelope {
    let cols = event.table.columns.as_slice();
    let (op, before, after) = match (&event.op, part) {
        (Op::Update { before, .. }, Part::OldRowDeleted) => ("d", Some(RowJson(cols, before)), None),
        (Op::Update { after, .. }, Part::NewRowCreated) => ("c", None, Some(RowJson(cols, after))),
        (Op::Insert { after }, _) => ("c", None, Some(RowJson(cols, after))),
        (Op::Update { before, after }, _) => ("u", Some(RowJson(cols, before)), Some(RowJson(cols, after))),
        (Op::Delete { before }, _) => ("d", Some(RowJson(cols, before)), None),
        (Op::Read { after }, _) => ("r", None, Some(RowJson(cols, after))),
        (Op::Truncate | Op::Ddl(_) | Op::Snapshot(_), _) => (event.op.code(), None, None),
    };
    let ts_ms = event.txn.commit_ts_us.div_euclid(1000);
    let (file, pos, gtid, lsn) = match &event.position {
        Position::Mysql(p) => {
            // A GTID (`domain-server-seq` or `uuid:n`); a transaction without
            // one is named by its binlog coordinates instead.
            let is_gtid = event.txn.id.contains('-') || event.txn.id.contains(':');
            (
                Some(p.file.as_str()),
                Some(p.offset),
                is_gtid.then_some(event.txn.id.as_str()),
                None,
            )
        }
        Position::Postgres(lsn) => (None, None, None, Some(*lsn)),
    };
    let t = &event.table;
    let env = EnvelopeJson {
        seq: event.seq,
        op,
        ts_ms,
        source: Source {
            version: env!("CARGO_PKG_VERSION"),
            connector: "dbmux",
            ts_ms,
            // Debezium's convention: snapshot rows say so in their source.
            snapshot: if matches!(event.op, Op::Read { .. }) {
                "true"
            } else {
                "false"
            },
            db: &event.table.id.schema,
            table: &event.table.id.name,
            seq: event.seq,
            txn: &event.txn.id,
            txn_index: event.txn.index,
            txn_last: event.txn.last,
            position: event.position.to_string(),
            commit_ts_us: event.txn.commit_ts_us,
            file,
            pos,
            gtid,
            lsn,
        },
        before,
        after,
        transaction: TransactionJson {
            id: &event.txn.id,
            total_order: event.txn.index as u64 + 1,
            data_collection_order,
        },
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
                primary_key: t
                    .primary_key
                    .iter()
                    .map(|&i| t.columns[i].name.as_str())
                    .collect(),
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

/// Each event's 1-based rank among the transaction's events on the same
/// table (Debezium's `transaction.data_collection_order`), in event order.
pub fn data_collection_orders(txn: &Transaction) -> Vec<u64> {
    let mut per_table: HashMap<&TableId, u64> = HashMap::new();
    txn.events
        .iter()
        .map(|e| {
            let n = per_table.entry(&e.table.id).or_default();
            *n += 1;
            *n
        })
        .collect()
}

/// The envelopes of a whole transaction, each with its
/// `transaction.data_collection_order`.
pub fn transaction_envelopes(txn: &Transaction) -> Vec<Envelope> {
    txn.events
        .iter()
        .zip(data_collection_orders(txn))
        .map(|(e, n)| envelope_part(e, Part::Whole, Some(n)))
        .collect()
}

/// The record key of an event on a per-table topic, as JSON text: the
/// primary-key columns of `row` (`{"id":7}`), values rendered exactly like
/// the envelope's. `None` for tables without a primary key.
pub fn key_of(event: &ChangeEvent, row: &[Value]) -> Option<String> {
    let table = &event.table;
    if table.primary_key.is_empty() {
        return None;
    }
    let mut cols = Vec::with_capacity(table.primary_key.len());
    let mut vals = Vec::with_capacity(table.primary_key.len());
    for &i in &table.primary_key {
        cols.push(table.columns.get(i)?.clone());
        vals.push(row.get(i)?.clone());
    }
    Some(serde_json::to_string(&RowJson(&cols, &vals)).expect("keys always serialize"))
}

/// A Debezium-style transaction boundary marker: `BEGIN` before a
/// transaction's events, `END` (with per-table event counts) after them.
/// (It carries no row values, so a `serde_json::Value` is exact here.)
pub fn transaction_marker(txn: &Transaction, begin: bool) -> Json {
    let first = &txn.events[0];
    let ts_ms = first.txn.commit_ts_us.div_euclid(1000);
    if begin {
        return json!({
            "status": "BEGIN",
            "id": first.txn.id,
            "ts_ms": ts_ms,
            "event_count": Json::Null,
            "data_collections": Json::Null,
            "first_seq": txn.first_seq(),
        });
    }
    let mut counts: Vec<(String, u64)> = Vec::new();
    for e in &txn.events {
        let name = e.table.id.to_string();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    json!({
        "status": "END",
        "id": first.txn.id,
        "ts_ms": ts_ms,
        "event_count": txn.len(),
        "data_collections": counts
            .into_iter()
            .map(|(n, c)| json!({"data_collection": n, "event_count": c}))
            .collect::<Vec<_>>(),
        "first_seq": txn.first_seq(),
        "last_seq": txn.last_seq(),
        "position": first.position.to_string(),
    })
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
    #[test]
    fn debezium_fields_parts_and_exact_keys() {
        use crate::event::sequence_transaction;
        use crate::position::MysqlPosition;
        use crate::schema::{ColumnType, TableSchema};
        use std::sync::Arc;
        let col = |name: &str, ty| ColumnDef {
            name: name.into(),
            ty,
            nullable: false,
            charset: None,
            collation: None,
            source_type: String::new(),
        };
        let t = Arc::new(TableSchema::new(
            TableId::new("shop", "items"),
            vec![
                col(
                    "id",
                    ColumnType::Decimal {
                        precision: 40,
                        scale: 0,
                    },
                ),
                col("doc", ColumnType::Json),
            ],
            vec![0],
        ));
        let big = "1234567890123456789012345678901234567890";
        let row = |id: &str| {
            vec![
                Value::Decimal(id.into()),
                Value::Json("{\"n\": 123456789012345678901234567890}".into()),
            ]
        };
        let pos = Position::Mysql(MysqlPosition {
            file: "mysql-bin.000002".into(),
            offset: 77,
            gtid_set: None,
        });
        let txn = sequence_transaction(
            5,
            "0-1-9".into(),
            1_700_000_000_123_456,
            pos,
            vec![
                (t.clone(), Op::Insert { after: row(big) }),
                (
                    t.clone(),
                    Op::Update {
                        before: row(big),
                        after: row("2"),
                    },
                ),
            ],
        );
        let envs = transaction_envelopes(&txn);
        let first = envs[0].as_str();
        assert!(
            first.contains(r#""doc":{"n":123456789012345678901234567890}"#),
            "{first}"
        );
        let v = envs[1].to_value();
        assert_eq!(v["op"], "u");
        assert_eq!(v["seq"], 6);
        assert_eq!(v["ts_ms"], 1_700_000_000_123i64);
        assert_eq!(v["source"]["connector"], "dbmux");
        assert_eq!(v["source"]["seq"], 6);
        assert_eq!(v["source"]["file"], "mysql-bin.000002");
        assert_eq!(v["source"]["pos"], 77);
        assert_eq!(v["source"]["gtid"], "0-1-9");
        assert!(v["source"].get("lsn").is_none());
        assert_eq!(v["transaction"]["total_order"], 2);
        assert_eq!(v["transaction"]["data_collection_order"], 2);
        assert!(to_envelope(&txn.events[1]).to_value()["transaction"]
            .get("data_collection_order")
            .is_none());
        let del = envelope_part(&txn.events[1], Part::OldRowDeleted, Some(2)).to_value();
        assert_eq!((del["op"].as_str(), del["after"].is_null()), (Some("d"), true));
        assert_eq!(del["before"]["id"], big);
        let cre = envelope_part(&txn.events[1], Part::NewRowCreated, Some(2)).to_value();
        assert_eq!((cre["op"].as_str(), cre["before"].is_null()), (Some("c"), true));
        assert_eq!(cre["after"]["id"], "2");
        assert_eq!(
            key_of(&txn.events[0], &row(big)).unwrap(),
            format!("{{\"id\":\"{big}\"}}")
        );
        let nopk = Arc::new(TableSchema::new(
            TableId::new("shop", "log"),
            t.columns.clone(),
            vec![],
        ));
        let mut e = txn.events[0].clone();
        e.table = nopk;
        assert_eq!(key_of(&e, &row("1")), None);
        let pg = sequence_transaction(
            1,
            "7".into(),
            0,
            Position::Postgres(0x1_0000_0010),
            vec![(t, Op::Truncate)],
        );
        let v = to_envelope(&pg.events[0]).to_value();
        assert_eq!(v["op"], "t");
        // PostgreSQL timestamptz: 0 is the epoch, not MySQL's zero TIMESTAMP.
        let tz = Arc::new(TableSchema::new(
            TableId::new("public", "e"),
            vec![col("at", ColumnType::TimestampTz { fsp: 6 })],
            vec![],
        ));
        let e = sequence_transaction(
            2,
            "8".into(),
            0,
            Position::Postgres(1),
            vec![(
                tz,
                Op::Insert {
                    after: vec![Value::Timestamp(0)],
                },
            )],
        );
        assert!(to_envelope(&e.events[0])
            .as_str()
            .contains(r#""after":{"at":"1970-01-01T00:00:00Z"}"#));
        assert_eq!(v["source"]["lsn"], 0x1_0000_0010u64);
        assert!(v["source"].get("file").is_none());
    }
}
