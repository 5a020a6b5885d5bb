//! Downstream change events: Debezium-shaped JSON on per-table topics.
//!
//! Produced inside the capture's Kafka transaction, together with the log
//! records they come from, so a `read_committed` consumer sees exactly the
//! committed source transactions, each once. The format is documented in
//! `docs/change-events.md`; in short, per event:
//! - key: the primary-key columns as JSON (`{"id":7}`), `null` for tables
//!   without a primary key and for truncates;
//! - value: the envelope of [`pipeline::envelope::to_envelope`] (`before`,
//!   `after`, `source` with `seq`/`txn`/`position`, `op`, `ts_ms`,
//!   `transaction`);
//! - an update that changes the primary key becomes a delete under the old
//!   key (plus its tombstone) and a create under the new one, as Debezium
//!   does, so a consumer keyed by primary key stays right;
//! - a delete is followed by a tombstone (key, null value) when enabled.
//!
//! Transaction boundaries: a `BEGIN` and an `END` record on the transaction
//! topic, keyed by `{"id": <txn id>}`.

use super::config::KafkaLogConfig;
use super::writer::Outgoing;
use pipeline::envelope::{data_collection_orders, envelope_part, key_of, transaction_marker, Part};
use pipeline::event::{Op, Transaction};
use serde_json::json;

/// Every change-event record of `txns`, in order.
pub fn records(cfg: &KafkaLogConfig, txns: &[Transaction]) -> Vec<Outgoing> {
    let ce = &cfg.change_events;
    let mut out = Vec::new();
    // Keys and envelopes are JSON text rendered exactly (see
    // `pipeline::envelope`); markers carry no row values.
    let record = |topic: &str, key: Option<&String>, value: Option<Vec<u8>>| Outgoing {
        topic: topic.to_string(),
        key: key.map(|k| k.as_bytes().to_vec()),
        value,
        headers: None,
    };
    let marker = |v: serde_json::Value| Some(serde_json::to_vec(&v).expect("JSON values serialize"));
    for txn in txns {
        if txn.is_empty() {
            continue;
        }
        let marker_key = json!({"id": txn.events[0].txn.id}).to_string();
        if !ce.transaction_topic.is_empty() {
            out.push(record(
                &ce.transaction_topic,
                Some(&marker_key),
                marker(transaction_marker(txn, true)),
            ));
        }
        for (event, order) in txn.events.iter().zip(data_collection_orders(txn)) {
            let topic = cfg.table_topic(&event.table.id.schema, &event.table.id.name);
            let env = |part: Part| Some(envelope_part(event, part, Some(order)).into_string().into_bytes());
            match &event.op {
                // A snapshot row (`op: "r"`) is keyed like an insert.
                Op::Insert { after } | Op::Read { after } => {
                    out.push(record(&topic, key_of(event, after).as_ref(), env(Part::Whole)))
                }
                Op::Update { before, after } => {
                    let (old, new) = (key_of(event, before), key_of(event, after));
                    if old == new {
                        out.push(record(&topic, new.as_ref(), env(Part::Whole)));
                    } else {
                        out.push(record(&topic, old.as_ref(), env(Part::OldRowDeleted)));
                        if ce.tombstones && old.is_some() {
                            out.push(record(&topic, old.as_ref(), None));
                        }
                        out.push(record(&topic, new.as_ref(), env(Part::NewRowCreated)));
                    }
                }
                Op::Delete { before } => {
                    let key = key_of(event, before);
                    out.push(record(&topic, key.as_ref(), env(Part::Whole)));
                    if ce.tombstones && key.is_some() {
                        out.push(record(&topic, key.as_ref(), None));
                    }
                }
                Op::Truncate => out.push(record(&topic, None, env(Part::Whole))),
                // Schema changes are not row changes; consumers get the new
                // shape with the next row (its `after` names every column).
                // Snapshot control marks (run/table begin, chunk bounds) are
                // dbmux's own bookkeeping: `dbmux tail` shows them, the
                // per-table topics carry only the rows.
                Op::Ddl(_) | Op::Snapshot(_) => {}
            }
        }
        if !ce.transaction_topic.is_empty() {
            out.push(record(
                &ce.transaction_topic,
                Some(&marker_key),
                marker(transaction_marker(txn, false)),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::event::sequence_transaction;
    use pipeline::position::Position;
    use pipeline::schema::{ColumnDef, ColumnType, TableId, TableSchema};
    use pipeline::value::Value;
    use serde_json::Value as Json;
    use std::sync::Arc;

    fn table(pk: bool) -> Arc<TableSchema> {
        let col = |name: &str| ColumnDef {
            name: name.into(),
            ty: ColumnType::Integer {
                bytes: 4,
                unsigned: false,
            },
            nullable: false,
            charset: None,
            collation: None,
            source_type: "int".into(),
        };
        Arc::new(TableSchema::new(
            TableId::new("shop", if pk { "items" } else { "log" }),
            vec![col("id"), col("qty")],
            if pk { vec![0] } else { vec![] },
        ))
    }

    fn json_of(v: &Option<Vec<u8>>) -> Json {
        v.as_ref()
            .map_or(Json::Null, |b| serde_json::from_slice(b).unwrap())
    }

    #[test]
    fn keys_tombstones_key_changes_and_markers() {
        let cfg: KafkaLogConfig =
            toml::from_str("brokers = \"b:1\"\n[change_events]\nenabled = true\n").unwrap();
        let (t, nopk) = (table(true), table(false));
        let row = |a: i32, b: i32| vec![Value::Int(a as i64), Value::Int(b as i64)];
        let txn = sequence_transaction(
            10,
            "0-1-5".into(),
            1_700_000_000_123_456,
            Position::Postgres(1),
            vec![
                (t.clone(), Op::Insert { after: row(1, 5) }),
                (
                    t.clone(),
                    Op::Update {
                        before: row(1, 5),
                        after: row(1, 6),
                    },
                ),
                (
                    t.clone(),
                    Op::Update {
                        before: row(1, 6),
                        after: row(2, 6),
                    },
                ),
                (t.clone(), Op::Delete { before: row(2, 6) }),
                (nopk.clone(), Op::Insert { after: row(9, 9) }),
            ],
        );
        let recs = records(&cfg, &[txn]);
        let summary: Vec<(String, Json, Json)> = recs
            .iter()
            .map(|r| {
                let v = json_of(&r.value);
                let tag = if v.is_null() {
                    Json::Null
                } else {
                    v.get("op").or(v.get("status")).cloned().unwrap()
                };
                (r.topic.clone(), json_of(&r.key), tag)
            })
            .collect();
        let k = |id: i32| json!({ "id": id });
        let expected = vec![
            ("dbmux.transaction", json!({"id": "0-1-5"}), json!("BEGIN")),
            ("dbmux.shop.items", k(1), json!("c")),
            ("dbmux.shop.items", k(1), json!("u")),
            ("dbmux.shop.items", k(1), json!("d")),
            ("dbmux.shop.items", k(1), Json::Null),
            ("dbmux.shop.items", k(2), json!("c")),
            ("dbmux.shop.items", k(2), json!("d")),
            ("dbmux.shop.items", k(2), Json::Null),
            ("dbmux.shop.log", Json::Null, json!("c")),
            ("dbmux.transaction", json!({"id": "0-1-5"}), json!("END")),
        ];
        let expected: Vec<(String, Json, Json)> = expected
            .into_iter()
            .map(|(a, b, c)| (a.to_string(), b, c))
            .collect();
        assert_eq!(summary, expected);
        // The key change: the delete carries the old row, the create the new one.
        let del = json_of(&recs[3].value);
        assert_eq!(del["before"], json!({"id": 1, "qty": 6}));
        assert!(del["after"].is_null());
        let cre = json_of(&recs[5].value);
        assert_eq!(cre["after"], json!({"id": 2, "qty": 6}));
        assert!(cre["before"].is_null());
        assert_eq!(cre["source"]["seq"], 12);
        assert_eq!(cre["ts_ms"], 1_700_000_000_123i64);
        assert_eq!(cre["transaction"]["total_order"], 3);
        assert_eq!(cre["transaction"]["data_collection_order"], 3);
        let end = json_of(&recs[9].value);
        assert_eq!(end["event_count"], 5);
        assert_eq!(
            end["data_collections"],
            json!([{"data_collection": "shop.items", "event_count": 4},
                   {"data_collection": "shop.log", "event_count": 1}])
        );
        // Without tombstones and markers.
        let cfg: KafkaLogConfig = toml::from_str(
            "brokers = \"b:1\"\n[change_events]\nenabled = true\ntombstones = false\ntransaction_topic = \"\"\n",
        )
        .unwrap();
        let txn = sequence_transaction(
            1,
            "x".into(),
            0,
            Position::Postgres(1),
            vec![(t, Op::Delete { before: row(3, 3) })],
        );
        assert_eq!(records(&cfg, &[txn]).len(), 1);
    }
}
