//! The JSON envelope: the documented, human- and consumer-facing form of a change.
//!
//! Field names follow Debezium's (`before`, `after`, `source`, `op`, `ts_ms`,
//! `transaction`) so existing consumers can read it; the full description is
//! `docs/change-events.md`. Value mapping (also in `docs/architecture.md`):
//! integers → JSON numbers (unsigned 64-bit too), DECIMAL → string (exact),
//! FLOAT/DOUBLE → number, DATE → `"YYYY-MM-DD"`, TIME → `"[-]HH:MM:SS[.ffffff]"`,
//! DATETIME → `"YYYY-MM-DDTHH:MM:SS[.ffffff]"` (no zone), TIMESTAMP →
//! `"YYYY-MM-DDTHH:MM:SS[.ffffff]Z"` (UTC), YEAR → number, text → string,
//! bytes → base64 string, JSON → the document itself, ENUM → string,
//! SET → array of strings, BIT → number.

use crate::event::{ChangeEvent, Op, Transaction};
use crate::position::Position;
use crate::schema::TableId;
use crate::value::{format_timestamp_utc, Value};
use base64::Engine;
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;

/// Renders one value as JSON.
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) => serde_json::Number::from_f64(*f as f64).map_or(Json::Null, Json::Number),
        Value::Double(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Decimal(d) => Json::String(d.clone()),
        Value::Date(d) => Json::String(d.to_string()),
        Value::Time(t) => Json::String(t.to_string()),
        Value::DateTime(dt) => Json::String(dt.to_string().replacen(' ', "T", 1)),
        Value::Timestamp(us) => Json::String(format!("{}Z", format_timestamp_utc(*us).replacen(' ', "T", 1))),
        Value::Year(y) => json!(y),
        Value::Text(s) | Value::Enum(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Json(text) => serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.clone())),
        Value::Set(items) => Json::Array(items.iter().cloned().map(Json::String).collect()),
        Value::Bit(b) => json!(b),
    }
}

fn row_to_json(event: &ChangeEvent, row: &[Value]) -> Json {
    let mut m = Map::with_capacity(row.len());
    for (col, v) in event.table.columns.iter().zip(row) {
        m.insert(col.name.clone(), value_to_json(v));
    }
    Json::Object(m)
}

/// The envelope of one event, without the per-table order inside its
/// transaction (see [`transaction_envelopes`], which adds it).
pub fn to_envelope(event: &ChangeEvent) -> Json {
    let (before, after) = match &event.op {
        Op::Insert { after } => (Json::Null, row_to_json(event, after)),
        Op::Update { before, after } => (row_to_json(event, before), row_to_json(event, after)),
        Op::Delete { before } => (row_to_json(event, before), Json::Null),
        Op::Truncate | Op::Ddl { .. } => (Json::Null, Json::Null),
    };
    let ts_ms = event.txn.commit_ts_us.div_euclid(1000);
    let mut source = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "connector": "dbmux",
        "ts_ms": ts_ms,
        "snapshot": "false",
        "db": event.table.id.schema,
        "table": event.table.id.name,
        "seq": event.seq,
        "txn": event.txn.id,
        "txn_index": event.txn.index,
        "txn_last": event.txn.last,
        "position": event.position.to_string(),
        "commit_ts_us": event.txn.commit_ts_us,
    });
    if let Position::Mysql(p) = &event.position {
        source["file"] = json!(p.file);
        source["pos"] = json!(p.offset);
        if event.txn.id.contains('-') || event.txn.id.contains(':') {
            source["gtid"] = json!(event.txn.id);
        }
    }
    let mut env = json!({
        "seq": event.seq,
        "op": event.op.code(),
        "ts_ms": ts_ms,
        "source": source,
        "before": before,
        "after": after,
        "transaction": {
            "id": event.txn.id,
            "total_order": event.txn.index as u64 + 1,
        },
    });
    if let Op::Ddl { statement } = &event.op {
        env["ddl"] = Json::String(statement.clone());
    }
    env
}

/// The envelopes of a whole transaction, each with Debezium's
/// `transaction.data_collection_order` (its 1-based rank among the
/// transaction's events on the same table).
pub fn transaction_envelopes(txn: &Transaction) -> Vec<Json> {
    let mut per_table: HashMap<&TableId, u64> = HashMap::new();
    txn.events
        .iter()
        .map(|e| {
            let n = per_table.entry(&e.table.id).or_default();
            *n += 1;
            let mut env = to_envelope(e);
            env["transaction"]["data_collection_order"] = json!(*n);
            env
        })
        .collect()
}

/// The record key of an event on a per-table topic: the primary-key
/// columns of the row (`{"id": 7}`), from the after image, or the before
/// image for a delete. `None` for tables without a primary key and for
/// table-wide operations (truncate).
pub fn key_of(event: &ChangeEvent, row: &[Value]) -> Option<Json> {
    if event.table.primary_key.is_empty() {
        return None;
    }
    let mut m = Map::with_capacity(event.table.primary_key.len());
    for &i in &event.table.primary_key {
        let col = event.table.columns.get(i)?;
        m.insert(col.name.clone(), value_to_json(row.get(i)?));
    }
    Some(Json::Object(m))
}

/// A Debezium-style transaction boundary marker: `BEGIN` before a
/// transaction's events, `END` (with per-table event counts) after them.
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
