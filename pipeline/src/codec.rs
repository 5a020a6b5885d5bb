//! Compact binary encoding of transactions for the log.
//!
//! One record holds a run of consecutive events of one transaction (a chunk).
//! Table schemas are stored once per record and referenced by index, and the
//! transaction fields shared by all events are stored once, so a record costs
//! little more than its values. The body is `postcard` (varint integers),
//! prefixed by a format version byte and followed by a CRC-32 of everything
//! before it, so corruption is detected independently of the storage engine.

use crate::event::{ChangeEvent, Op, TxnMeta};
use crate::position::Position;
use crate::schema::TableSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The record format this build writes (stored as the first byte; also the
/// Kafka log's `dbmux-format` header). Version 2 added column collations,
/// unique keys and foreign keys to the stored table definitions; version 1
/// records are still read (see [`v1`]). Version 3 added the `Read` and
/// `Snapshot` operations and gave `Ddl` its parsed form; the layout is
/// otherwise version 2's, and version 2 records (which never held a `Ddl`)
/// decode with the same types.
pub const FORMAT_VERSION: u8 = 3;

/// The record could not be decoded: the log is damaged or from a newer dbmux.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("record too short ({0} bytes)")]
    Truncated(usize),
    #[error("record checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown record format version {0}")]
    Version(u8),
    #[error("record body: {0}")]
    Body(#[from] postcard::Error),
    #[error("record refers to schema #{0}, which it does not contain")]
    SchemaIndex(usize),
}

/// What [`decode`] reads. [`encode`] writes the same fields from borrowed data ([`RecordRef`]); postcard
/// encodes `&T` exactly as `T`, so the two are one format (a test checks it byte for byte).
#[derive(Serialize, Deserialize)]
struct Record {
    txn_id: String,
    commit_ts_us: i64,
    position: Position,
    /// Number of events in the whole transaction.
    txn_len: u32,
    first_seq: u64,
    first_index: u32,
    schemas: Vec<TableSchema>,
    events: Vec<(u32, Op)>,
}

/// [`Record`] over borrowed data: encoding must not copy every value of a chunk (capture's hot path;
/// cloning the rows and dropping the clones cost more than serializing them).
#[derive(Serialize)]
struct RecordRef<'a> {
    txn_id: &'a str,
    commit_ts_us: i64,
    position: &'a Position,
    txn_len: u32,
    first_seq: u64,
    first_index: u32,
    schemas: Vec<&'a TableSchema>,
    events: Vec<(u32, &'a Op)>,
}

/// A postcard output that appends to a `Vec` we sized and that already holds the format version byte, so
/// the body is written once, in place (no second buffer, no copy).
struct Appender(Vec<u8>);

impl postcard::ser_flavors::Flavor for Appender {
    type Output = Vec<u8>;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Bytes reserved per event before encoding: most rows fit, a larger one grows the buffer once or twice.
const ESTIMATED_EVENT_BYTES: usize = 160;

/// Encodes a run of consecutive events of one transaction.
pub fn encode(events: &[ChangeEvent], txn_len: u32) -> Vec<u8> {
    let first = &events[0];
    let mut schemas: Vec<&Arc<TableSchema>> = Vec::new();
    let mut refs = Vec::with_capacity(events.len());
    for e in events {
        let idx = match schemas
            .iter()
            .position(|s| Arc::ptr_eq(s, &e.table) || ***s == *e.table)
        {
            Some(i) => i,
            None => {
                schemas.push(&e.table);
                schemas.len() - 1
            }
        };
        refs.push((idx as u32, &e.op));
    }
    let rec = RecordRef {
        txn_id: &first.txn.id,
        commit_ts_us: first.txn.commit_ts_us,
        position: &first.position,
        txn_len,
        first_seq: first.seq,
        first_index: first.txn.index,
        schemas: schemas.iter().map(|s| &***s).collect(),
        events: refs,
    };
    let mut out = Vec::with_capacity(64 + events.len() * ESTIMATED_EVENT_BYTES);
    out.push(FORMAT_VERSION);
    let mut out =
        postcard::serialize_with_flavor(&rec, Appender(out)).expect("in-memory serialization cannot fail");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a record produced by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Vec<ChangeEvent>, CodecError> {
    if bytes.len() < 5 {
        return Err(CodecError::Truncated(bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    let rec: Record = match body[0] {
        FORMAT_VERSION | 2 => postcard::from_bytes(&body[1..])?,
        1 => postcard::from_bytes::<v1::Record>(&body[1..])?.into(),
        other => return Err(CodecError::Version(other)),
    };
    let schemas: Vec<Arc<TableSchema>> = rec.schemas.into_iter().map(Arc::new).collect();
    rec.events
        .into_iter()
        .enumerate()
        .map(|(i, (schema_idx, op))| {
            let table = schemas
                .get(schema_idx as usize)
                .cloned()
                .ok_or(CodecError::SchemaIndex(schema_idx as usize))?;
            let index = rec.first_index + i as u32;
            Ok(ChangeEvent {
                seq: rec.first_seq + i as u64,
                txn: TxnMeta {
                    id: rec.txn_id.clone(),
                    commit_ts_us: rec.commit_ts_us,
                    index,
                    last: index + 1 == rec.txn_len,
                },
                position: rec.position.clone(),
                table,
                op,
            })
        })
        .collect()
}

/// Records written by dbmux before format version 2: the same layout with
/// smaller table definitions. A log written then is read on upgrade.
mod v1 {
    use crate::event::Op;
    use crate::position::Position;
    use crate::schema::{ColumnType, TableId};
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct ColumnDef {
        name: String,
        ty: ColumnType,
        nullable: bool,
        charset: Option<String>,
        source_type: String,
    }

    #[derive(Deserialize)]
    pub struct TableSchema {
        id: TableId,
        columns: Vec<ColumnDef>,
        primary_key: Vec<usize>,
    }

    #[derive(Deserialize)]
    pub struct Record {
        txn_id: String,
        commit_ts_us: i64,
        position: Position,
        txn_len: u32,
        first_seq: u64,
        first_index: u32,
        schemas: Vec<TableSchema>,
        events: Vec<(u32, Op)>,
    }

    impl From<Record> for super::Record {
        fn from(r: Record) -> Self {
            let schemas = r
                .schemas
                .into_iter()
                .map(|t| {
                    crate::schema::TableSchema::new(
                        t.id,
                        t.columns
                            .into_iter()
                            .map(|c| crate::schema::ColumnDef {
                                name: c.name,
                                ty: c.ty,
                                nullable: c.nullable,
                                charset: c.charset,
                                collation: None,
                                source_type: c.source_type,
                            })
                            .collect(),
                        t.primary_key,
                    )
                })
                .collect();
            super::Record {
                txn_id: r.txn_id,
                commit_ts_us: r.commit_ts_us,
                position: r.position,
                txn_len: r.txn_len,
                first_seq: r.first_seq,
                first_index: r.first_index,
                schemas,
                events: r.events,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::sequence_transaction;
    use crate::position::MysqlPosition;
    use crate::schema::{ColumnDef, ColumnType, TableId};
    use crate::value::{Date, Value};

    pub(crate) fn sample_schema() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            TableId::new("app", "t"),
            vec![
                ColumnDef {
                    name: "id".into(),
                    ty: ColumnType::Integer {
                        bytes: 8,
                        unsigned: true,
                    },
                    nullable: false,
                    charset: None,
                    collation: None,
                    source_type: "bigint unsigned".into(),
                },
                ColumnDef {
                    name: "v".into(),
                    ty: ColumnType::VarChar { length: 10 },
                    nullable: true,
                    charset: Some("utf8mb4".into()),
                    collation: Some("utf8mb4_bin".into()),
                    source_type: "varchar(10)".into(),
                },
            ],
            vec![0],
        ))
    }

    #[test]
    fn round_trip_and_corruption() {
        let s = sample_schema();
        let pos = Position::Mysql(MysqlPosition {
            file: "b.000001".into(),
            offset: 99,
            gtid_set: None,
        });
        let txn = sequence_transaction(
            7,
            "0-1-3".into(),
            123,
            pos,
            vec![
                (
                    s.clone(),
                    Op::Insert {
                        after: vec![Value::UInt(u64::MAX), Value::Text("é😀".into())],
                    },
                ),
                (
                    s.clone(),
                    Op::Update {
                        before: vec![Value::UInt(1), Value::Null],
                        after: vec![
                            Value::UInt(2),
                            Value::Date(Date {
                                year: 0,
                                month: 0,
                                day: 0,
                            }),
                        ],
                    },
                ),
                (
                    s,
                    Op::Delete {
                        before: vec![Value::UInt(3), Value::Bytes(vec![0, 255])],
                    },
                ),
            ],
        );
        txn.check().unwrap();
        let bytes = encode(&txn.events, 3);
        assert_eq!(decode(&bytes).unwrap(), txn.events);
        // A chunk from the middle keeps its indexes and the last marker.
        let tail = decode(&encode(&txn.events[1..], 3)).unwrap();
        assert_eq!(tail, txn.events[1..]);
        // The borrowed encoding is byte for byte the owned `Record` that `decode` reads.
        let owned = Record {
            txn_id: txn.events[0].txn.id.clone(),
            commit_ts_us: 123,
            position: txn.events[0].position.clone(),
            txn_len: 3,
            first_seq: 7,
            first_index: 0,
            schemas: vec![(*txn.events[0].table).clone()],
            events: txn.events.iter().map(|e| (0, e.op.clone())).collect(),
        };
        let mut expected = vec![FORMAT_VERSION];
        expected.extend(postcard::to_stdvec(&owned).unwrap());
        expected.extend(crc32fast::hash(&expected).to_le_bytes());
        assert_eq!(bytes, expected);
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        assert!(matches!(decode(&bad), Err(CodecError::Checksum { .. })));
        assert!(matches!(decode(&bytes[..3]), Err(CodecError::Truncated(3))));
    }

    #[test]
    fn snapshot_and_ddl_events_round_trip() {
        use crate::ddl::{AlterAction, DdlKind, Fill, SchemaChange};
        use crate::snapshot::{SnapshotMark, SnapshotPhase};
        let s = sample_schema();
        let txn = sequence_transaction(
            1,
            "snapshot-1".into(),
            5,
            Position::Postgres(9),
            vec![
                (
                    s.clone(),
                    Op::Snapshot(Box::new(SnapshotMark {
                        id: 3,
                        targets: vec!["pg".into()],
                        reset: true,
                        phase: SnapshotPhase::Chunk {
                            index: 0,
                            upto: Some(vec![Value::UInt(7)]),
                            rows: 1,
                            last: false,
                            whole: false,
                            create: Some("CREATE TABLE `t` (…)".into()),
                        },
                    })),
                ),
                (
                    s.clone(),
                    Op::Read {
                        after: vec![Value::UInt(7), Value::Text("x".into())],
                    },
                ),
                (
                    s,
                    Op::Ddl(Box::new(SchemaChange {
                        statement: "ALTER TABLE t ADD c INT NOT NULL".into(),
                        default_schema: "app".into(),
                        kind: DdlKind::AlterTable {
                            actions: vec![AlterAction::AddColumn {
                                name: "c".into(),
                                fill: Fill::Value(Value::Int(0)),
                            }],
                        },
                        unique_key_names: vec!["uk".into()],
                    })),
                ),
            ],
        );
        let bytes = encode(&txn.events, 3);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode(&bytes).unwrap(), txn.events);
        // A version 2 record (same layout) still decodes.
        let plain = sequence_transaction(
            1,
            "x".into(),
            5,
            Position::Postgres(9),
            vec![(sample_schema(), Op::Truncate)],
        );
        let mut v2 = encode(&plain.events, 1);
        v2[0] = 2;
        let n = v2.len();
        v2.truncate(n - 4);
        let crc = crc32fast::hash(&v2);
        v2.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&v2).unwrap(), plain.events);
    }

    #[test]
    fn reads_format_version_1() {
        // A record as dbmux wrote it before version 2 (smaller table definitions).
        #[derive(Serialize)]
        struct Col<'a>(&'a str, ColumnType, bool, Option<&'a str>, &'a str);
        #[derive(Serialize)]
        struct Table<'a>(TableId, Vec<Col<'a>>, Vec<usize>);
        #[derive(Serialize)]
        struct Rec<'a>(
            &'a str,
            i64,
            Position,
            u32,
            u64,
            u32,
            Vec<Table<'a>>,
            Vec<(u32, Op)>,
        );
        let pos = Position::Postgres(5);
        let rec = Rec(
            "x",
            9,
            pos.clone(),
            1,
            4,
            0,
            vec![Table(
                TableId::new("app", "t"),
                vec![Col(
                    "id",
                    ColumnType::Integer {
                        bytes: 4,
                        unsigned: false,
                    },
                    false,
                    None,
                    "int",
                )],
                vec![0],
            )],
            vec![(
                0,
                Op::Insert {
                    after: vec![Value::Int(1)],
                },
            )],
        );
        let mut bytes = vec![1u8];
        bytes.extend(postcard::to_stdvec(&rec).unwrap());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let events = decode(&bytes).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].seq, 4);
        assert_eq!(events[0].table.columns[0].name, "id");
        assert_eq!(events[0].table.columns[0].collation, None);
        assert!(events[0].table.unique_keys.is_empty());
        assert_eq!(events[0].position, pos);
    }
}
