//! The change event: the one type that flows from capture to every consumer.
//!
//! # Sequencing
//! `seq` is assigned by capture when a whole source transaction has been read:
//! strictly increasing by one per event, gapless per stream, and never reused
//! across restarts (capture continues from the last `seq` in the log).
//!
//! # Transactions
//! Every event carries its source transaction's metadata; `txn.last` marks the
//! final event, so appliers can commit whole source transactions atomically.
//! All events of one transaction share one `position`: the point *after* its
//! commit, from which capture resumes.

use crate::ddl::SchemaChange;
use crate::position::Position;
use crate::schema::TableSchema;
use crate::snapshot::SnapshotMark;
use crate::value::Value;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Source transaction metadata, repeated on each event of the transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    /// Source transaction id: GTID (`0-1-42`), XID, or PostgreSQL xid/LSN.
    pub id: String,
    /// Commit time at the source, microseconds since the Unix epoch.
    pub commit_ts_us: i64,
    /// Index of this event within its transaction, from 0.
    pub index: u32,
    /// True on the transaction's final event.
    pub last: bool,
}

/// A row image: one value per column of the event's table schema, in column order.
pub type Row = Vec<Value>;

/// What happened to the row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Insert {
        after: Row,
    },
    Update {
        before: Row,
        after: Row,
    },
    Delete {
        before: Row,
    },
    Truncate,
    /// A schema change of this event's table (or database); the event's
    /// table is the definition after it (see [`crate::ddl`]).
    Ddl(Box<SchemaChange>),
    /// A row of a snapshot: the row as it was at this event's position
    /// (Debezium's `r`; see [`crate::snapshot`]).
    Read {
        after: Row,
    },
    /// Snapshot control, the first event of every snapshot transaction.
    Snapshot(Box<SnapshotMark>),
}

impl Op {
    /// Short code used in the JSON envelope (Debezium's `c`/`u`/`d`/`t`/`r`,
    /// plus `ddl` and `snapshot`).
    pub fn code(&self) -> &'static str {
        match self {
            Op::Insert { .. } => "c",
            Op::Update { .. } => "u",
            Op::Delete { .. } => "d",
            Op::Truncate => "t",
            Op::Ddl(_) => "ddl",
            Op::Read { .. } => "r",
            Op::Snapshot(_) => "snapshot",
        }
    }
}

/// One committed change.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub seq: u64,
    pub txn: TxnMeta,
    pub position: Position,
    /// The table and its definition when the change was written.
    pub table: Arc<TableSchema>,
    pub op: Op,
}

/// A whole source transaction: events with consecutive `seq`, the last one marked.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub events: Vec<ChangeEvent>,
}

impl Transaction {
    /// The snapshot mark when this is a snapshot transaction.
    pub fn snapshot_mark(&self) -> Option<&SnapshotMark> {
        match self.events.first().map(|e| &e.op) {
            Some(Op::Snapshot(m)) => Some(m),
            _ => None,
        }
    }

    /// True when the transaction is a schema change.
    pub fn is_ddl(&self) -> bool {
        self.events.iter().any(|e| matches!(e.op, Op::Ddl(_)))
    }

    pub fn first_seq(&self) -> u64 {
        self.events.first().map_or(0, |e| e.seq)
    }

    pub fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |e| e.seq)
    }

    pub fn position(&self) -> Option<&Position> {
        self.events.last().map(|e| &e.position)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Checks the invariants every producer must keep: non-empty, consecutive
    /// `seq`, indexes from 0, only the final event marked last, one position.
    pub fn check(&self) -> Result<(), String> {
        let first = self.events.first().ok_or("empty transaction")?;
        for (i, e) in self.events.iter().enumerate() {
            if e.seq != first.seq + i as u64 {
                return Err(format!(
                    "seq {} at index {i} breaks the run starting at {}",
                    e.seq, first.seq
                ));
            }
            if e.txn.index as usize != i {
                return Err(format!(
                    "event seq {} has txn index {} at position {i}",
                    e.seq, e.txn.index
                ));
            }
            if e.txn.last != (i + 1 == self.events.len()) {
                return Err(format!("event seq {} has a wrong last-event marker", e.seq));
            }
            if e.position != first.position || e.txn.id != first.txn.id {
                return Err(format!("event seq {} belongs to another transaction", e.seq));
            }
        }
        Ok(())
    }
}

/// Builds a [`Transaction`] from captured changes, assigning `seq` from `next_seq`.
pub fn sequence_transaction(
    next_seq: u64,
    txn_id: String,
    commit_ts_us: i64,
    position: Position,
    changes: Vec<(Arc<TableSchema>, Op)>,
) -> Transaction {
    let n = changes.len();
    let events = changes
        .into_iter()
        .enumerate()
        .map(|(i, (table, op))| ChangeEvent {
            seq: next_seq + i as u64,
            txn: TxnMeta {
                id: txn_id.clone(),
                commit_ts_us,
                index: i as u32,
                last: i + 1 == n,
            },
            position: position.clone(),
            table,
            op,
        })
        .collect();
    Transaction { events }
}
