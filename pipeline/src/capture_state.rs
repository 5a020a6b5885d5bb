//! What capture must know to resume, kept in the log itself.
//!
//! # Contents
//! - **Schema history**: every captured table's newest definition as of the
//!   end of the log (with its UNIQUE keys' names), so a restarted capture
//!   decodes old row events with the definition they were written under — not
//!   with today's `information_schema`, which may already show later changes.
//! - **Snapshot progress**: every snapshot run not finished, and per table the
//!   chunks placed and the last key copied, so a killed snapshot resumes at
//!   its next chunk.
//! - **Known tables**: the tables capture has seen, so a table that enters
//!   `include` later (or was never copied) gets a snapshot.
//! - **Operator requests** already started (`dbmux snapshot`).
//!
//! # One source of truth
//! All of it is a function of the log's events: [`CaptureState::observe`]
//! folds one event in (a DDL event carries the definition after it, a row
//! event the definition it was written under, a snapshot event its progress).
//! A checkpoint — the state as of some `seq` — is stored in the log's
//! metadata after appends that change it and every few seconds; on start,
//! capture loads the checkpoint and folds in the events after it
//! ([`load`]). A crash between an append and its checkpoint loses nothing:
//! the events are in the log, and truncation keeps every event after the
//! checkpoint (its `seq` is acknowledged like a consumer's,
//! [`STATE_CONSUMER`]).

use crate::event::{ChangeEvent, Op, Row, Transaction};
use crate::log::{Log, LogError, LogReader};
use crate::schema::{TableId, TableSchema};
use crate::snapshot::SnapshotPhase;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The log metadata key of the checkpoint.
pub const STATE_KEY: &str = "capture_state";
/// The consumer name whose acknowledgement holds truncation at the checkpoint.
pub const STATE_CONSUMER: &str = "dbmux:capture-state";

/// One table's newest definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub schema: Arc<TableSchema>,
    /// Names of `schema.unique_keys`, pairwise (empty strings when unknown).
    pub unique_key_names: Vec<String>,
}

/// One table of a snapshot run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableProgress {
    pub table: TableId,
    pub estimated_rows: u64,
    /// Chunks placed in the log.
    pub chunks: u64,
    /// Rows placed in the log.
    pub rows: u64,
    /// The last key copied (the next chunk starts after it).
    pub upto: Option<Row>,
    pub done: bool,
    /// Why the table was given up (dropped while being copied).
    pub ended: Option<String>,
}

/// A snapshot run that is not finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRun {
    pub id: u64,
    pub targets: Vec<String>,
    pub reset: bool,
    pub request: Option<String>,
    /// `seq` of the run's first event.
    pub begin_seq: u64,
    pub tables: Vec<TableProgress>,
}

impl SnapshotRun {
    pub fn done(&self) -> bool {
        self.tables.iter().all(|t| t.done)
    }
}

/// An operator request that has begun (its run's first event is in the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedRequest {
    pub request: String,
    pub run: u64,
    pub begin_seq: u64,
}

/// See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptureState {
    /// Every event up to this `seq` is folded in.
    pub seq: u64,
    /// False until the first snapshot plan was made for this log (on the
    /// first start, or the first start of a dbmux that keeps this state).
    pub initialized: bool,
    history: Vec<HistoryEntry>,
    pub known: BTreeSet<TableId>,
    pub runs: BTreeMap<u64, SnapshotRun>,
    pub next_run: u64,
    /// By replica name: the newest request of that replica that began.
    pub requests: BTreeMap<String, StartedRequest>,
}

impl CaptureState {
    /// The schema history head, by table.
    pub fn history(&self) -> BTreeMap<TableId, HistoryEntry> {
        self.history
            .iter()
            .map(|h| (h.schema.id.clone(), h.clone()))
            .collect()
    }

    fn entry(&mut self, id: &TableId) -> Option<&mut HistoryEntry> {
        self.history.iter_mut().find(|h| h.schema.id == *id)
    }

    fn set_history(&mut self, schema: &Arc<TableSchema>, names: Option<&[String]>) {
        if schema.columns_unknown() || schema.id.name.is_empty() {
            return;
        }
        let id = schema.id.clone();
        match self.entry(&id) {
            Some(h) => {
                if !Arc::ptr_eq(&h.schema, schema) && *h.schema != **schema {
                    let names = match names {
                        Some(n) => n.to_vec(),
                        // A row event: the same keys keep their names.
                        None if h.schema.unique_keys == schema.unique_keys => h.unique_key_names.clone(),
                        None => vec![String::new(); schema.unique_keys.len()],
                    };
                    *h = HistoryEntry {
                        schema: schema.clone(),
                        unique_key_names: names,
                    };
                } else if let Some(n) = names {
                    h.unique_key_names = n.to_vec();
                }
            }
            None => self.history.push(HistoryEntry {
                schema: schema.clone(),
                unique_key_names: names
                    .map(<[String]>::to_vec)
                    .unwrap_or_else(|| vec![String::new(); schema.unique_keys.len()]),
            }),
        }
    }

    fn forget(&mut self, id: &TableId) {
        self.history.retain(|h| h.schema.id != *id);
        self.known.remove(id);
        for run in self.runs.values_mut() {
            for t in run.tables.iter_mut().filter(|t| t.table == *id && !t.done) {
                t.done = true;
                t.ended = Some("the table was dropped".into());
            }
        }
        self.runs.retain(|_, r| !r.done());
    }

    /// Folds one event in. Returns true when something other than `seq` and
    /// the row events' definitions changed (worth a checkpoint now).
    pub fn observe(&mut self, ev: &ChangeEvent) -> bool {
        self.seq = self.seq.max(ev.seq);
        let id = &ev.table.id;
        match &ev.op {
            Op::Insert { .. } | Op::Update { .. } | Op::Delete { .. } => {
                self.set_history(&ev.table, None);
                false
            }
            Op::Truncate | Op::Read { .. } => false,
            Op::Ddl(change) => {
                use crate::ddl::DdlKind;
                match &change.kind {
                    DdlKind::CreateTable { .. } | DdlKind::AlterTable { .. } => {
                        if let DdlKind::AlterTable { actions } = &change.kind {
                            for a in actions {
                                if let crate::ddl::AlterAction::RenameTable { from } = a {
                                    self.forget(from);
                                }
                            }
                        }
                        self.set_history(&ev.table, Some(&change.unique_key_names));
                        self.known.insert(id.clone());
                    }
                    DdlKind::Unknown { .. } => {
                        // The definition is the catalog's, not the statement's:
                        // the next row event's table map decides.
                        self.history.retain(|h| h.schema.id != *id);
                        self.known.insert(id.clone());
                    }
                    DdlKind::RenameTable { from } => {
                        self.forget(from);
                        self.set_history(&ev.table, Some(&change.unique_key_names));
                        self.known.insert(id.clone());
                    }
                    DdlKind::DropTable => self.forget(id),
                    DdlKind::CreateDatabase => {}
                    DdlKind::DropDatabase => {
                        let gone: Vec<TableId> = self
                            .known
                            .iter()
                            .chain(self.history.iter().map(|h| &h.schema.id))
                            .filter(|t| t.schema == id.schema)
                            .cloned()
                            .collect();
                        for t in gone {
                            self.forget(&t);
                        }
                    }
                }
                true
            }
            Op::Snapshot(mark) => {
                self.next_run = self.next_run.max(mark.id + 1);
                let run = self.runs.entry(mark.id).or_insert_with(|| SnapshotRun {
                    id: mark.id,
                    targets: mark.targets.clone(),
                    reset: mark.reset,
                    request: None,
                    begin_seq: ev.seq,
                    tables: Vec::new(),
                });
                match &mark.phase {
                    SnapshotPhase::Begin {
                        estimated_rows,
                        request,
                    } => {
                        self.known.insert(id.clone());
                        if !run.tables.iter().any(|t| t.table == *id) {
                            run.tables.push(TableProgress {
                                table: id.clone(),
                                estimated_rows: *estimated_rows,
                                chunks: 0,
                                rows: 0,
                                upto: None,
                                done: false,
                                ended: None,
                            });
                        }
                        if let Some(r) = request {
                            run.request = Some(r.clone());
                            for target in &mark.targets {
                                self.requests.insert(
                                    target.clone(),
                                    StartedRequest {
                                        request: r.clone(),
                                        run: mark.id,
                                        begin_seq: run.begin_seq,
                                    },
                                );
                            }
                        }
                    }
                    SnapshotPhase::Chunk {
                        index,
                        upto,
                        rows,
                        last,
                        ..
                    } => {
                        if let Some(t) = run.tables.iter_mut().find(|t| t.table == *id) {
                            t.chunks = index + 1;
                            t.rows += rows;
                            if upto.is_some() {
                                t.upto = upto.clone();
                            }
                            t.done = *last;
                        }
                    }
                    SnapshotPhase::End { reason } => {
                        if let Some(t) = run.tables.iter_mut().find(|t| t.table == *id) {
                            t.done = true;
                            t.ended = Some(reason.clone());
                        }
                    }
                }
                self.runs.retain(|_, r| !r.done());
                true
            }
        }
    }

    /// The checkpoint's bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the capture state always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("capture state checkpoint: {e}"))
    }
}

/// The capture state as of the end of `log`: the stored checkpoint plus the
/// events after it. A log without a checkpoint but with events (written by a
/// dbmux that kept none) starts from its end, `initialized = false`. Works
/// on any [`Log`]: the checkpoint is a metadata value, the events are read
/// like any consumer reads them.
pub async fn load<L: Log>(log: &L) -> Result<CaptureState, LogError> {
    let last = log.last().await?.map_or(0, |(s, _)| s);
    let mut state = match log.meta(STATE_KEY).await? {
        Some(bytes) => CaptureState::decode(&bytes).map_err(LogError::Invalid)?,
        None => {
            return Ok(CaptureState {
                seq: last,
                ..CaptureState::default()
            })
        }
    };
    if state.seq >= last {
        return Ok(state);
    }
    let mut reader = log.reader(STATE_CONSUMER).await?;
    let mut from = state.seq + 1;
    let mut empty_reads = 0;
    while from <= last {
        let txns = match reader.read(from, 10_000).await {
            Ok(t) => t,
            Err(LogError::Truncated { first, .. }) => {
                // Never expected (truncation keeps what follows the
                // checkpoint; Kafka retention is far longer than a
                // checkpoint interval); the definitions from the gap are
                // then learned from the source's catalog again.
                tracing::warn!(
                    checkpoint = state.seq,
                    first,
                    "events after the capture checkpoint were truncated; schema history restarts from the log's first event"
                );
                from = first;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(end) = txns.last().map(Transaction::last_seq) else {
            // A shared log's reader may answer "nothing yet" while its fetch
            // is under way; the events up to `last` are there.
            empty_reads += 1;
            if empty_reads > 600 {
                return Err(LogError::Backend(format!(
                    "capture state: the log did not return seq {from} (its last is {last})"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        for t in &txns {
            for e in &t.events {
                state.observe(e);
            }
        }
        from = end + 1;
    }
    Ok(state)
}

/// Stores `state` as the checkpoint and holds truncation at its `seq`.
pub async fn store<L: Log>(log: &L, state: &CaptureState) -> Result<(), LogError> {
    log.set_meta(STATE_KEY, state.encode()).await?;
    log.ack_for(STATE_CONSUMER, state.seq).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddl::{DdlKind, SchemaChange};
    use crate::event::sequence_transaction;
    use crate::log::EmbeddedLog;
    use crate::position::Position;
    use crate::snapshot::SnapshotMark;
    use crate::value::Value;

    fn ddl(schema: Arc<TableSchema>, kind: DdlKind) -> (Arc<TableSchema>, Op) {
        (
            schema,
            Op::Ddl(Box::new(SchemaChange {
                statement: "…".into(),
                default_schema: "app".into(),
                kind,
                unique_key_names: vec![],
            })),
        )
    }

    fn mark(id: u64, phase: SnapshotPhase) -> Op {
        Op::Snapshot(Box::new(SnapshotMark {
            id,
            targets: vec!["pg".into()],
            reset: false,
            phase,
        }))
    }

    #[tokio::test]
    async fn folds_schemas_snapshots_and_survives_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), crate::log::FsyncPolicy::Never).unwrap();
        let t = crate::schema::test_table();
        let mut t2 = (*t).clone();
        t2.columns.push(t2.columns[0].clone());
        t2.columns[1].name = "c".into();
        let t2 = Arc::new(t2);
        // A fresh log: an empty checkpoint, as capture stores on its first start.
        assert!(!load(&log).await.unwrap().initialized);
        store(
            &log,
            &CaptureState {
                initialized: true,
                ..CaptureState::default()
            },
        )
        .await
        .unwrap();
        let pos = Position::Postgres(1);
        let mut next = 1;
        let mut append = |changes: Vec<(Arc<TableSchema>, Op)>| {
            let txn = sequence_transaction(next, "x".into(), 0, pos.clone(), changes);
            next += txn.len() as u64;
            log.append(&txn).unwrap();
        };
        append(vec![(
            t.clone(),
            mark(
                4,
                SnapshotPhase::Begin {
                    estimated_rows: 10,
                    request: Some("r1".into()),
                },
            ),
        )]);
        append(vec![(
            t.clone(),
            Op::Insert {
                after: vec![Value::Int(1)],
            },
        )]);
        // A checkpoint here; what follows is folded in on load.
        let mut state = load(&log).await.unwrap();
        assert_eq!(state.seq, 2);
        assert_eq!(state.runs[&4].tables[0].chunks, 0);
        store(&log, &state).await.unwrap();
        assert_eq!(log.acked(STATE_CONSUMER).unwrap(), Some(2));
        append(vec![
            (
                t.clone(),
                mark(
                    4,
                    SnapshotPhase::Chunk {
                        index: 0,
                        upto: Some(vec![Value::Int(9)]),
                        rows: 5,
                        last: false,
                        whole: false,
                        create: None,
                    },
                ),
            ),
            (
                t.clone(),
                Op::Read {
                    after: vec![Value::Int(9)],
                },
            ),
        ]);
        append(vec![ddl(t2.clone(), DdlKind::AlterTable { actions: vec![] })]);
        state = load(&log).await.unwrap();
        assert_eq!(state.seq, 5);
        let p = &state.runs[&4].tables[0];
        assert_eq!((p.chunks, p.rows, p.done), (1, 5, false));
        assert_eq!(p.upto, Some(vec![Value::Int(9)]));
        assert_eq!(state.requests["pg"].request, "r1");
        assert_eq!(state.requests["pg"].begin_seq, 1);
        assert_eq!(state.history()[&t.id].schema.columns.len(), 2);
        assert!(state.known.contains(&t.id));
        assert_eq!(state.next_run, 5);
        // The last chunk finishes the run; a drop forgets the table.
        state.observe(&ChangeEvent {
            seq: 6,
            txn: crate::event::TxnMeta {
                id: "y".into(),
                commit_ts_us: 0,
                index: 0,
                last: true,
            },
            position: pos.clone(),
            table: t.clone(),
            op: mark(
                4,
                SnapshotPhase::Chunk {
                    index: 1,
                    upto: None,
                    rows: 0,
                    last: true,
                    whole: false,
                    create: None,
                },
            ),
        });
        assert!(state.runs.is_empty());
        let (s, op) = ddl(t.clone(), DdlKind::DropTable);
        state.observe(&ChangeEvent {
            seq: 7,
            txn: crate::event::TxnMeta {
                id: "z".into(),
                commit_ts_us: 0,
                index: 0,
                last: true,
            },
            position: pos,
            table: s,
            op,
        });
        assert!(state.history().is_empty());
        assert!(!state.known.contains(&t.id));
        let back = CaptureState::decode(&state.encode()).unwrap();
        assert_eq!(back, state);
    }
}
