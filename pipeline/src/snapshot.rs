//! Snapshots: copying the rows a table already has into the stream, without
//! a global lock and without a gap or a change applied twice.
//!
//! # The idea (docs/snapshot.md has the whole argument, with a drawing)
//! A table is copied in primary-key *chunks*. Each chunk is read in its own
//! short consistent read view whose source position `P` is known exactly (on
//! MariaDB, `START TRANSACTION WITH CONSISTENT SNAPSHOT` and
//! `binlog_snapshot_file/position`): the rows are the table's state after
//! every transaction up to `P` and none after. Capture then places the chunk
//! in the log **exactly at `P`**: after every transaction committed before it,
//! before every transaction committed after it. A replica that applies the log
//! in order therefore gets, for the chunk's keys, the state at `P` followed by
//! every later change: the master's history from `P` on.
//!
//! To place a chunk exactly, capture *holds* while the chunk is read: the
//! coordinator asks capture to stop handing transactions to the log before it
//! opens the read view, tells it `P` as soon as it is known (capture may then
//! go on up to `P`), and hands it the rows; capture appends them at `P` and
//! goes on. The hold lasts one chunk read; the read view lasts one chunk, so
//! the master's undo is never pinned for long.
//!
//! # What travels in the log
//! One transaction per chunk: a [`SnapshotMark`] event ([`SnapshotPhase::Chunk`])
//! followed by one [`crate::Op::Read`] event per row (Debezium's `op = "r"`).
//! Before a table's first chunk, a [`SnapshotPhase::Begin`] event announces the
//! table; replicas the snapshot is for skip the table's changes from there
//! until its first chunk, which recreates the table and loads it.
//!
//! # Replicas
//! Appliers keep no extra state for keys: for a table with a key, a replica
//! holds at every point a *subset* of the master's rows, each equal to the
//! master's row (changes are full row images applied as upserts and deletes by
//! key), and each chunk completes its key range. A table without any key is
//! copied in one read view, in pieces placed at the same `P` while capture
//! holds (see docs/snapshot.md for the trade-off).

use crate::event::Row;
use crate::position::Position;
use crate::retry::Classify;
use crate::schema::{TableId, TableSchema};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;

/// Snapshot control: the first event of every snapshot transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMark {
    /// The snapshot run (increasing in one log).
    pub id: u64,
    /// The replicas (by configured name) the run is for; empty = every replica.
    /// Other replicas skip these events (applying them would be correct too,
    /// only wasted work).
    pub targets: Vec<String>,
    /// The run restarts its targets from scratch: a replica that lost its
    /// place in the log (its next `seq` was truncated) starts at this run's
    /// first event.
    pub reset: bool,
    pub phase: SnapshotPhase,
}

/// Where in a table's snapshot an event is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SnapshotPhase {
    /// The table will be copied: the run's targets skip its changes from
    /// here until its first chunk.
    Begin {
        /// Rows the source estimates the table has (progress only).
        estimated_rows: u64,
        /// The operator request that started the run, if any.
        request: Option<String>,
    },
    /// One chunk: the `Read` events that follow in this transaction are every
    /// row of the table whose key is after the previous chunk's `upto` and at
    /// or before this one's, as of this event's position (a table copied whole:
    /// the next rows of its one read view). The first chunk (`index` 0)
    /// recreates the table on the targets first.
    Chunk {
        index: u64,
        /// The last key of this chunk (in key order); `None` for a table
        /// copied whole (no key), and for an empty chunk.
        upto: Option<Row>,
        /// Rows in this chunk.
        rows: u64,
        /// The table's last chunk.
        last: bool,
        /// The table is copied whole (no usable key): every piece is at the
        /// same position, and its changes stay skipped until the last one.
        whole: bool,
        /// Chunk 0: the source's own `CREATE TABLE` for the table as it is at
        /// this position (a replica of the same engine creates it from this;
        /// others from the event's table definition).
        create: Option<String>,
    },
    /// The table could not be copied (it was dropped meanwhile): its targets
    /// stop waiting for it.
    End { reason: String },
}

impl SnapshotPhase {
    /// A table's first chunk: the targets recreate the table before loading.
    pub fn recreates(&self) -> bool {
        matches!(self, SnapshotPhase::Chunk { index: 0, .. })
    }

    /// The chunk after which the targets apply the table's changes again:
    /// the first one of a table copied by key ranges (each later change is a
    /// full row image that keeps the replica a subset of the master), the
    /// last one of a table copied whole (its changes need every row there).
    pub fn ends_pending(&self) -> bool {
        match self {
            SnapshotPhase::Chunk {
                index, whole, last, ..
            } => (*index == 0 && !*whole) || (*whole && *last),
            SnapshotPhase::End { .. } => true,
            SnapshotPhase::Begin { .. } => false,
        }
    }
}

impl SnapshotMark {
    /// Whether replica `name` is one of the targets.
    pub fn targets(&self, name: &str) -> bool {
        self.targets.is_empty() || self.targets.iter().any(|t| t == name)
    }
}

/// How a table is cut into chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkKey {
    /// By these columns (indexes into the definition): the primary key, or a
    /// UNIQUE key over NOT NULL columns. Chunks are key ranges in the
    /// source's own key order.
    Columns(Vec<usize>),
    /// No usable key: the whole table in one read view.
    WholeTable,
}

/// A consistent read view on one table.
#[derive(Debug, Clone)]
pub struct ReadView {
    /// Where in the stream the view's rows belong: every transaction at or
    /// before it is visible, none after it.
    pub position: Position,
    /// The table's definition as the view sees it, built exactly as capture
    /// builds it from the stream (so replica tables come out the same).
    pub schema: Arc<TableSchema>,
    /// The source's own `CREATE TABLE` statement for it, when it has one.
    pub create_statement: Option<String>,
    pub key: ChunkKey,
}

/// A source that can copy tables (MariaDB; PostgreSQL through exported
/// snapshots, see [`SnapshotSource::single_view`]).
pub trait SnapshotSource: Send + Sync + 'static {
    type Error: std::error::Error + Classify + Send + Sync + 'static;
    type Reader: ChunkReader<Error = Self::Error>;

    /// The tables capture would capture that exist now, with the number of
    /// rows the source estimates each has.
    fn tables(&self) -> impl Future<Output = Result<Vec<(TableId, u64)>, Self::Error>> + Send;

    /// A new reader (its own connection), used for one table at a time.
    fn reader(&self) -> impl Future<Output = Result<Self::Reader, Self::Error>> + Send;

    /// True when, until [`SnapshotSource::initial_copy_done`], every read
    /// view shows one and the same state, the one at capture's start
    /// position, and only while capture has not started streaming (a
    /// PostgreSQL slot's exported snapshot). The coordinator then takes the
    /// initial snapshot of a first start under the initial hold, appending
    /// the chunks before any streamed transaction, and capture starts
    /// streaming once the copy is complete ([`INITIAL_VIEW_KEY`]). After
    /// that call, the source's readers open one read view per chunk like
    /// any other source's (a PostgreSQL source: a temporary slot's exported
    /// snapshot), and later runs (operator requests, replicas that start
    /// over, tables entering `include`) are copied chunk by chunk.
    fn single_view(&self) -> bool {
        false
    }

    /// Called once by the coordinator of a [`SnapshotSource::single_view`]
    /// source when its initial copy is in the log (or at once when none is
    /// taken), before any later `tables` or `reader`: from here on each
    /// [`ChunkReader::begin`] opens a view of its own at its own position.
    fn initial_copy_done(&self) {}
}

/// Log metadata key: the state of a [`SnapshotSource::single_view`] source's
/// initial snapshot, [`INITIAL_VIEW_COPYING`] from its plan until its last
/// chunk is in the log, then [`INITIAL_VIEW_DONE`]. While it says copying,
/// the log holds no streamed transaction: a start that finds it so (the
/// copy was cut short) takes the initial snapshot again from a new start
/// position ([`crate::source::Source::discard_start`]).
pub const INITIAL_VIEW_KEY: &str = "snapshot_initial_view";
pub const INITIAL_VIEW_COPYING: &[u8] = b"copying";
pub const INITIAL_VIEW_DONE: &[u8] = b"done";

/// Reads one table chunk by chunk.
///
/// # Contract
/// `begin` opens a consistent read view and returns its exact source
/// position; `read` returns rows of that view in key order, at most `limit`,
/// starting after `after` (a key, as the values of the key columns) — for
/// [`ChunkKey::WholeTable`] `after` is ignored and each call continues where
/// the previous one stopped; an empty result means the end. `end` closes the
/// view. An error because the table no longer exists is definite, and
/// [`ChunkReader::is_gone`] says so.
pub trait ChunkReader: Send + 'static {
    type Error: std::error::Error + Classify + Send + Sync + 'static;

    fn begin(&mut self, table: &TableId) -> impl Future<Output = Result<ReadView, Self::Error>> + Send;

    fn read(
        &mut self,
        after: Option<&[crate::value::Value]>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>, Self::Error>> + Send;

    fn end(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// True when `e` means the table does not exist (any more).
    fn is_gone(e: &Self::Error) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_empty_means_everyone() {
        let mut m = SnapshotMark {
            id: 1,
            targets: vec![],
            reset: false,
            phase: SnapshotPhase::End { reason: "x".into() },
        };
        assert!(m.targets("a"));
        m.targets = vec!["b".into()];
        assert!(!m.targets("a"));
        assert!(m.targets("b"));
    }
}

// ---------------------------------------------------------------------------
// The coordinator: plans snapshot runs and copies tables chunk by chunk,
// handing each chunk to capture to be placed at its position.
// ---------------------------------------------------------------------------

use crate::capture_state::{CaptureState, SnapshotRun, TableProgress};
use crate::event::Op;
use crate::log::{Log, LogError};
use crate::metrics::{PipelineMetrics, StateLabel};
use crate::retry::{Backoff, ErrorClass};
use crate::value::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// Default rows per chunk.
pub const DEFAULT_CHUNK_ROWS: usize = 10_000;
/// Default tables copied at the same time.
pub const DEFAULT_PARALLEL_TABLES: usize = 2;
/// Log metadata key prefix of operator requests, per replica.
pub const REQUEST_KEY: &str = "snapshot_request/";
/// Log metadata key prefix of requests that began, per replica.
pub const STARTED_KEY: &str = "snapshot_started/";

/// Snapshot tuning and scope.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Rows per chunk (one read view, one log transaction).
    pub chunk_rows: usize,
    /// Tables copied at the same time.
    pub parallel_tables: usize,
    /// On the first start, copy every captured table's existing rows (and
    /// later, every table that enters `include`).
    pub initial: bool,
    /// The configured replicas (operator requests are kept per replica).
    pub replicas: Vec<String>,
    /// How often to look for operator requests (a request made through the
    /// admin server wakes the coordinator at once).
    pub poll: Duration,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            chunk_rows: DEFAULT_CHUNK_ROWS,
            parallel_tables: DEFAULT_PARALLEL_TABLES,
            initial: true,
            replicas: Vec::new(),
            poll: Duration::from_secs(2),
        }
    }
}

/// An operator's (or a replica's) request for a snapshot, stored in the log
/// metadata under `snapshot_request/<replica>` until capture begins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique per request.
    pub id: String,
    /// `db.table` names; empty = every captured table.
    pub tables: Vec<String>,
    /// The replica lost its place in the log and starts over from this run.
    pub reset: bool,
}

/// What `snapshot_started/<replica>` holds once a request's run began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub request: String,
    pub run: u64,
    /// `seq` of the run's first event.
    pub begin_seq: u64,
    /// The run starts the replica over (its offset moves to just before it).
    #[serde(default)]
    pub reset: bool,
}

/// Records a snapshot request for `replica` (merged into a pending one that
/// has not begun yet) and returns its id.
///
/// The request is a metadata value of the log, so it needs a process that
/// may write the log: any with the embedded log (it is locked by one process
/// at a time), only the capture process with Kafka ([`LogError::ReadOnly`]
/// elsewhere: ask the capture process's admin server).
pub async fn request<L: Log>(
    log: &L,
    replica: &str,
    tables: &[TableId],
    reset: bool,
) -> Result<String, LogError> {
    let key = format!("{REQUEST_KEY}{replica}");
    let started: Option<Started> = log
        .meta(&format!("{STARTED_KEY}{replica}"))
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let pending: Option<Request> = log
        .meta(&key)
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|r: &Request| started.as_ref().is_none_or(|s| s.request != r.id));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut names: BTreeSet<String> = tables.iter().map(|t| t.to_string()).collect();
    let mut all = tables.is_empty();
    let mut reset = reset;
    if let Some(p) = &pending {
        all |= p.tables.is_empty();
        names.extend(p.tables.iter().cloned());
        reset |= p.reset;
    }
    let req = Request {
        id: format!("{replica}-{now:x}"),
        tables: if all {
            Vec::new()
        } else {
            names.into_iter().collect()
        },
        reset,
    };
    log.set_meta(&key, serde_json::to_vec(&req).expect("serializes"))
        .await?;
    Ok(req.id)
}

/// The run a replica's request began, if it did.
pub async fn started<L: Log>(log: &L, replica: &str) -> Result<Option<Started>, LogError> {
    Ok(log
        .meta(&format!("{STARTED_KEY}{replica}"))
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

/// The id of `replica`'s pending request when it is one that starts the
/// replica over.
pub async fn pending_reset<L: Log>(log: &L, replica: &str) -> Option<String> {
    pending_request(log, replica)
        .await
        .filter(|r| r.reset)
        .map(|r| r.id)
}

async fn pending_request<L: Log>(log: &L, replica: &str) -> Option<Request> {
    log.meta(&format!("{REQUEST_KEY}{replica}"))
        .await
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// What the coordinator asks of capture's reader (see the module docs: the
/// reader holds the stream while a chunk is read, and places the chunk at
/// its position).
#[derive(Debug)]
pub enum CaptureControl {
    /// Hand no transaction read from now on to the log until this hold's
    /// position is known; the reply confirms the hold is in place.
    Hold { id: u64, reply: oneshot::Sender<()> },
    /// The hold's read view is at `position`: transactions at or before it
    /// may go on, later ones wait for the chunk.
    At { id: u64, position: Position },
    /// Place this snapshot transaction at the hold's position (after every
    /// transaction at or before it, before every later one). `release` ends
    /// the hold; otherwise it stays at the same position (pieces of a table
    /// copied whole). Replies with the transaction's first `seq`.
    Place {
        id: u64,
        changes: Vec<(Arc<TableSchema>, Op)>,
        release: bool,
        reply: oneshot::Sender<u64>,
    },
    /// End the hold without placing anything (the read failed).
    Release { id: u64 },
    /// Append a snapshot transaction at the current point (Begin and End
    /// marks). Replies with its first `seq`.
    Append {
        changes: Vec<(Arc<TableSchema>, Op)>,
        reply: oneshot::Sender<u64>,
    },
}

/// A table's snapshot as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableReport {
    pub run: u64,
    pub table: String,
    /// The replicas it is for (empty: every replica).
    pub targets: Vec<String>,
    /// `waiting`, `copying`, `done` or `failed`.
    pub state: &'static str,
    pub rows: u64,
    pub estimated_rows: u64,
    pub chunks: u64,
    /// Rows per second since this process started copying the table.
    pub rows_per_second: f64,
    /// Seconds left at that rate, when it can be told.
    pub eta_seconds: Option<f64>,
    pub error: Option<String>,
    #[serde(skip)]
    started: Option<Instant>,
    #[serde(skip)]
    rows_at_start: u64,
    #[serde(skip)]
    finished: Option<Instant>,
}

/// Every snapshot table's progress; shared with `/status`, the metrics and
/// the progress display.
#[derive(Debug, Clone, Default)]
pub struct SnapshotBoard(
    Arc<Mutex<BTreeMap<(u64, TableId), TableReport>>>,
    /// Set once the coordinator made its first plan (before, whether a copy
    /// is due is not known yet).
    Arc<std::sync::atomic::AtomicBool>,
);

/// Finished tables stay on the board this long.
const KEEP_FINISHED: Duration = Duration::from_secs(600);

impl SnapshotBoard {
    fn update(&self, run: u64, table: &TableId, f: impl FnOnce(&mut TableReport)) {
        let mut m = self.0.lock().expect("snapshot board");
        if let Some(r) = m.get_mut(&(run, table.clone())) {
            f(r);
            if let Some(started) = r.started {
                let secs = started.elapsed().as_secs_f64();
                let done = r.rows.saturating_sub(r.rows_at_start) as f64;
                if secs > 0.5 {
                    r.rows_per_second = done / secs;
                    r.eta_seconds = (r.rows_per_second > 0.0 && r.state == "copying")
                        .then(|| r.estimated_rows.saturating_sub(r.rows) as f64 / r.rows_per_second);
                }
            }
        }
        m.retain(|_, r| r.finished.is_none_or(|f| f.elapsed() < KEEP_FINISHED));
    }

    fn add(&self, run: &SnapshotRun, p: &TableProgress) {
        let mut m = self.0.lock().expect("snapshot board");
        m.entry((run.id, p.table.clone())).or_insert_with(|| TableReport {
            run: run.id,
            table: p.table.to_string(),
            targets: run.targets.clone(),
            state: "waiting",
            rows: p.rows,
            estimated_rows: p.estimated_rows.max(p.rows),
            chunks: p.chunks,
            rows_per_second: 0.0,
            eta_seconds: None,
            error: None,
            started: None,
            rows_at_start: p.rows,
            finished: None,
        });
    }

    /// Every table, oldest run first.
    pub fn all(&self) -> Vec<TableReport> {
        self.0.lock().expect("snapshot board").values().cloned().collect()
    }

    /// True while some table is waiting or being copied, or before the
    /// coordinator's first plan.
    pub fn active(&self) -> bool {
        !self.planned()
            || self
                .0
                .lock()
                .expect("snapshot board")
                .values()
                .any(|r| matches!(r.state, "waiting" | "copying"))
    }

    /// Whether the coordinator has made its first plan.
    pub fn planned(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_planned(&self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn publish(&self, metrics: &PipelineMetrics) {
        let m = self.0.lock().expect("snapshot board");
        for state in crate::metrics::SNAPSHOT_STATES {
            metrics
                .snapshot_tables
                .get_or_create(&StateLabel { state: state.into() })
                .set(m.values().filter(|r| r.state == state).count() as u64);
        }
        metrics.snapshot_rows_estimated.set(
            m.values()
                .filter(|r| matches!(r.state, "waiting" | "copying"))
                .map(|r| r.estimated_rows)
                .sum(),
        );
    }
}

/// Everything the coordinator needs besides capture itself.
pub struct Snapshots<C: SnapshotSource> {
    pub source: C,
    pub options: SnapshotOptions,
    pub board: SnapshotBoard,
    /// Notified when a request was stored (the admin server).
    pub wake: Arc<Notify>,
}

/// The type of "no snapshot source" (a source that cannot copy tables).
pub enum NoSnapshots {}

impl SnapshotSource for NoSnapshots {
    type Error = crate::log::LogError;
    type Reader = NoReader;
    async fn tables(&self) -> Result<Vec<(TableId, u64)>, Self::Error> {
        match *self {}
    }
    async fn reader(&self) -> Result<NoReader, Self::Error> {
        match *self {}
    }
}

/// The reader of [`NoSnapshots`].
pub enum NoReader {}

impl ChunkReader for NoReader {
    type Error = crate::log::LogError;
    async fn begin(&mut self, _: &TableId) -> Result<ReadView, Self::Error> {
        match *self {}
    }
    async fn read(&mut self, _: Option<&[Value]>, _: usize) -> Result<Vec<Row>, Self::Error> {
        match *self {}
    }
    async fn end(&mut self) -> Result<(), Self::Error> {
        match *self {}
    }
    fn is_gone(_: &Self::Error) -> bool {
        false
    }
}

/// Why the coordinator stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("capture stopped")]
    CaptureGone,
    #[error("snapshot: {0}")]
    Log(#[from] crate::log::LogError),
    #[error("initial snapshot failed: {0}")]
    Initial(String),
}

struct Ctl {
    tx: mpsc::Sender<CaptureControl>,
    next_hold: std::sync::atomic::AtomicU64,
}

impl Ctl {
    async fn send(&self, msg: CaptureControl) -> Result<(), CoordinatorError> {
        self.tx.send(msg).await.map_err(|_| CoordinatorError::CaptureGone)
    }

    async fn append(&self, changes: Vec<(Arc<TableSchema>, Op)>) -> Result<u64, CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        self.send(CaptureControl::Append { changes, reply }).await?;
        rx.await.map_err(|_| CoordinatorError::CaptureGone)
    }

    async fn hold(&self) -> Result<u64, CoordinatorError> {
        let id = self.next_hold.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (reply, rx) = oneshot::channel();
        self.send(CaptureControl::Hold { id, reply }).await?;
        rx.await.map_err(|_| CoordinatorError::CaptureGone)?;
        Ok(id)
    }

    async fn place(
        &self,
        id: u64,
        changes: Vec<(Arc<TableSchema>, Op)>,
        release: bool,
    ) -> Result<u64, CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        self.send(CaptureControl::Place {
            id,
            changes,
            release,
            reply,
        })
        .await?;
        rx.await.map_err(|_| CoordinatorError::CaptureGone)
    }
}

/// The hold capture starts with: nothing reaches the log until the
/// coordinator has made its first plan (so a table's `Begin` precedes every
/// change of it captured after a start).
pub const INITIAL_HOLD: u64 = 0;

fn mark(run: &SnapshotRun, phase: SnapshotPhase) -> Op {
    Op::Snapshot(Box::new(SnapshotMark {
        id: run.id,
        targets: run.targets.clone(),
        reset: run.reset,
        phase,
    }))
}

/// The transaction of one chunk: its mark (chunk 0 carries the source's
/// own `CREATE TABLE`), then one `Read` event per row.
fn chunk_changes(
    view: &ReadView,
    run: &SnapshotRun,
    index: u64,
    upto: Option<Row>,
    last: bool,
    whole: bool,
    rows: Vec<Row>,
) -> Vec<(Arc<TableSchema>, Op)> {
    let mut changes = Vec::with_capacity(rows.len() + 1);
    changes.push((
        view.schema.clone(),
        mark(
            run,
            SnapshotPhase::Chunk {
                index,
                upto,
                rows: rows.len() as u64,
                last,
                whole,
                create: if index == 0 {
                    view.create_statement.clone()
                } else {
                    None
                },
            },
        ),
    ));
    changes.extend(
        rows.into_iter()
            .map(|after| (view.schema.clone(), Op::Read { after })),
    );
    changes
}

/// A chunk of `n` rows is in the log: progress, metrics and the board.
fn chunk_done(
    progress: &mut TableProgress,
    n: u64,
    upto: Option<Row>,
    last: bool,
    run: &SnapshotRun,
    board: &SnapshotBoard,
    metrics: &PipelineMetrics,
) {
    progress.chunks += 1;
    progress.rows += n;
    progress.upto = upto;
    progress.done = last;
    metrics.snapshot_rows.inc_by(n);
    metrics.snapshot_chunks.inc();
    board.update(run.id, &progress.table, |b| {
        b.rows = progress.rows;
        b.chunks = progress.chunks;
        b.estimated_rows = b.estimated_rows.max(progress.rows);
    });
}

/// A table definition naming only the table (Begin and End marks of a table
/// whose definition the coordinator does not read).
fn name_only(id: &TableId) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: id.clone(),
        ..TableSchema::default()
    })
}

/// Capture's state, shared by the log writer (which folds every appended
/// event in and stores checkpoints) and the coordinator (which reads the
/// progress and records the tables it knows).
pub type SharedState = Arc<Mutex<CaptureState>>;

/// Stores a checkpoint of `state` now (off the async workers).
pub async fn checkpoint<L: Log>(log: &L, state: &SharedState) -> Result<(), LogError> {
    let snapshot = state.lock().expect("capture state").clone();
    crate::capture_state::store(log, &snapshot).await
}

/// Plans and runs snapshots until `shutdown` (see the module documentation).
/// Capture starts held ([`INITIAL_HOLD`]); the coordinator releases it once
/// its first plan is in the log.
pub async fn run_coordinator<C: SnapshotSource, L: Log>(
    snap: Snapshots<C>,
    control: mpsc::Sender<CaptureControl>,
    state: SharedState,
    fresh_log: bool,
    log: L,
    metrics: PipelineMetrics,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let ctl = Arc::new(Ctl {
        tx: control,
        next_hold: std::sync::atomic::AtomicU64::new(INITIAL_HOLD + 1),
    });
    let opts = snap.options.clone();
    let source = Arc::new(snap.source);
    let board = snap.board.clone();
    if source.single_view() {
        let go_on = run_single_view(
            source.clone(),
            opts.clone(),
            board.clone(),
            ctl.clone(),
            state.clone(),
            fresh_log,
            log.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
        .await?;
        if !go_on {
            return Ok(());
        }
        // Later runs use a read view per chunk, planned below while
        // capture is still held.
        source.initial_copy_done();
    }
    // The first plan, with capture held.
    let mut runs: BTreeMap<u64, SnapshotRun> = state.lock().expect("capture state").runs.clone();
    let tables = loop {
        match source.tables().await {
            Ok(t) => break t,
            Err(e) if e.is_transient() => {
                metrics.error("snapshot", ErrorClass::Transient);
                tracing::warn!(error = %e, "snapshot: cannot list the source's tables yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(e) => {
                // Capture itself stops on what made this fail (or goes on
                // without snapshots): the coordinator lets it go on.
                metrics.error("snapshot", ErrorClass::Definite);
                tracing::error!(error = %e, "snapshot: cannot list the source's tables; no snapshot is planned");
                board.set_planned();
                ctl.send(CaptureControl::Release { id: INITIAL_HOLD }).await?;
                return Ok(());
            }
        }
    };
    let estimates: BTreeMap<TableId, u64> = tables.iter().cloned().collect();
    let (initialized, known) = {
        let st = state.lock().expect("capture state");
        (st.initialized, st.known.clone())
    };
    let mut new_tables: Vec<TableId> = Vec::new();
    if !initialized {
        if fresh_log && opts.initial {
            new_tables = tables.iter().map(|(t, _)| t.clone()).collect();
            tracing::info!(
                tables = new_tables.len(),
                "first start: copying the existing rows of every captured table"
            );
        } else {
            // A log from a dbmux that kept no state, or snapshots switched
            // off: the tables as they are now are known, nothing is copied.
            state
                .lock()
                .expect("capture state")
                .known
                .extend(tables.iter().map(|(t, _)| t.clone()));
        }
    } else if opts.initial {
        new_tables = tables
            .iter()
            .map(|(t, _)| t.clone())
            .filter(|t| !known.contains(t))
            .collect();
        if !new_tables.is_empty() {
            tracing::info!(tables = ?new_tables.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "tables not copied yet (new in include, or created while dbmux was stopped): copying their rows");
        }
    }
    if !new_tables.is_empty() {
        let run = begin_run(&ctl, &state, Vec::new(), false, None, &new_tables, &estimates).await?;
        runs.insert(run.id, run);
    }
    if !initialized {
        state.lock().expect("capture state").initialized = true;
        checkpoint(&log, &state).await?;
    }
    for run in plan_requests(&ctl, &log, &state, &opts, &tables, &estimates).await? {
        runs.insert(run.id, run);
    }
    ctl.send(CaptureControl::Release { id: INITIAL_HOLD }).await?;

    // Work: tables of unfinished runs, `parallel_tables` at a time.
    let mut queue: Vec<(SnapshotRun, TableProgress)> = Vec::new();
    let enqueue = |queue: &mut Vec<(SnapshotRun, TableProgress)>, run: &SnapshotRun| {
        for t in run.tables.iter().filter(|t| !t.done) {
            board.add(run, t);
            queue.push((run.clone(), t.clone()));
        }
    };
    for run in runs.values() {
        enqueue(&mut queue, run);
    }
    let mut seen_runs: BTreeSet<u64> = runs.keys().copied().collect();
    queue.reverse(); // pop() takes the oldest first
    board.set_planned();
    board.publish(&metrics);
    let mut workers = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(opts.poll);
    loop {
        while workers.len() < opts.parallel_tables.max(1) {
            let Some((run, table)) = queue.pop() else { break };
            let (ctl, source, board, metrics, shutdown, opts) = (
                ctl.clone(),
                source.clone(),
                board.clone(),
                metrics.clone(),
                shutdown.clone(),
                opts.clone(),
            );
            workers.spawn(async move {
                copy_table(&*source, &ctl, &run, table, &opts, &board, &metrics, &shutdown).await
            });
        }
        tokio::select! {
            Some(done) = workers.join_next() => {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(CoordinatorError::CaptureGone)) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(crate::log::LogError::Invalid(format!("snapshot worker: {e}")).into()),
                }
                board.publish(&metrics);
            }
            _ = tick.tick() => {}
            _ = snap.wake.notified() => {}
            _ = shutdown.cancelled() => {
                workers.shutdown().await;
                return Ok(());
            }
        }
        // Runs capture began by itself (a table renamed into the captured set).
        let started: Vec<SnapshotRun> = state
            .lock()
            .expect("capture state")
            .runs
            .values()
            .filter(|r| !seen_runs.contains(&r.id))
            .cloned()
            .collect();
        for run in started {
            seen_runs.insert(run.id);
            let mut added = Vec::new();
            enqueue(&mut added, &run);
            added.reverse();
            added.append(&mut queue);
            queue = added;
        }
        let mut waiting = false;
        for r in &opts.replicas {
            let Some(req) = pending_request(&log, r).await else {
                continue;
            };
            waiting |= state
                .lock()
                .expect("capture state")
                .requests
                .get(r)
                .is_none_or(|s| s.request != req.id);
        }
        if !waiting {
            continue;
        }
        let tables = match source.tables().await {
            Ok(t) => t,
            Err(_) => continue,
        };
        let estimates: BTreeMap<TableId, u64> = tables.iter().cloned().collect();
        let new = plan_requests(&ctl, &log, &state, &opts, &tables, &estimates).await?;
        let mut added = Vec::new();
        for run in new {
            seen_runs.insert(run.id);
            enqueue(&mut added, &run);
        }
        added.reverse();
        added.append(&mut queue);
        queue = added;
        board.publish(&metrics);
    }
}

/// Appends the Begin marks of a new run (one transaction) and returns the run.
async fn begin_run(
    ctl: &Ctl,
    state: &SharedState,
    targets: Vec<String>,
    reset: bool,
    request: Option<String>,
    tables: &[TableId],
    estimates: &BTreeMap<TableId, u64>,
) -> Result<SnapshotRun, CoordinatorError> {
    let id = {
        let mut st = state.lock().expect("capture state");
        let id = st.next_run.max(1);
        st.next_run = id + 1;
        id
    };
    let mut run = SnapshotRun {
        id,
        targets,
        reset,
        request: request.clone(),
        begin_seq: 0,
        tables: tables
            .iter()
            .map(|t| TableProgress {
                table: t.clone(),
                estimated_rows: estimates.get(t).copied().unwrap_or(0),
                chunks: 0,
                rows: 0,
                upto: None,
                done: false,
                ended: None,
            })
            .collect(),
    };
    let changes: Vec<(Arc<TableSchema>, Op)> = run
        .tables
        .iter()
        .map(|t| {
            (
                name_only(&t.table),
                mark(
                    &run,
                    SnapshotPhase::Begin {
                        estimated_rows: t.estimated_rows,
                        request: request.clone(),
                    },
                ),
            )
        })
        .collect();
    if !changes.is_empty() {
        run.begin_seq = ctl.append(changes).await?;
    }
    state
        .lock()
        .expect("capture state")
        .known
        .extend(run.tables.iter().map(|t| t.table.clone()));
    tracing::info!(run = run.id, tables = run.tables.len(), targets = ?run.targets, reset, begin_seq = run.begin_seq,
        "snapshot run begins");
    Ok(run)
}

/// Begins a run for every replica request that has not begun yet.
async fn plan_requests<L: Log>(
    ctl: &Ctl,
    log: &L,
    state: &SharedState,
    opts: &SnapshotOptions,
    tables: &[(TableId, u64)],
    estimates: &BTreeMap<TableId, u64>,
) -> Result<Vec<SnapshotRun>, CoordinatorError> {
    let mut out = Vec::new();
    for replica in &opts.replicas {
        let Some(req) = pending_request(log, replica).await else {
            continue;
        };
        let began = state
            .lock()
            .expect("capture state")
            .requests
            .get(replica)
            .filter(|s| s.request == req.id)
            .cloned();
        if let Some(s) = began {
            // Began before a restart; make sure the requester can see it.
            write_started(log, replica, &s.request, req.reset, s.run, s.begin_seq).await?;
            continue;
        }
        let wanted: Vec<TableId> = if req.tables.is_empty() {
            tables.iter().map(|(t, _)| t.clone()).collect()
        } else {
            req.tables
                .iter()
                .filter_map(|n| {
                    let found = tables.iter().find(|(t, _)| t.to_string() == *n).map(|(t, _)| t.clone());
                    if found.is_none() {
                        tracing::warn!(replica = %replica, table = %n, "snapshot request names a table capture does not capture; left out");
                    }
                    found
                })
                .collect()
        };
        let run = begin_run(
            ctl,
            state,
            vec![replica.clone()],
            req.reset,
            Some(req.id.clone()),
            &wanted,
            estimates,
        )
        .await?;
        let begin_seq = if run.begin_seq == 0 {
            log.last_seq() + 1
        } else {
            run.begin_seq
        };
        state.lock().expect("capture state").requests.insert(
            replica.clone(),
            crate::capture_state::StartedRequest {
                request: req.id.clone(),
                run: run.id,
                begin_seq,
            },
        );
        if req.reset {
            // Hold truncation for the replica that starts over here.
            log.ack_for(replica, begin_seq.saturating_sub(1)).await?;
        }
        write_started(log, replica, &req.id, req.reset, run.id, begin_seq).await?;
        out.push(run);
    }
    Ok(out)
}

async fn write_started<L: Log>(
    log: &L,
    replica: &str,
    request: &str,
    reset: bool,
    run: u64,
    begin_seq: u64,
) -> Result<(), CoordinatorError> {
    let started = Started {
        request: request.into(),
        run,
        begin_seq,
        reset,
    };
    let key = format!("{STARTED_KEY}{replica}");
    let bytes = serde_json::to_vec(&started).expect("serializes");
    if log.meta(&key).await?.as_deref() != Some(bytes.as_slice()) {
        log.set_meta(&key, bytes).await?;
    }
    Ok(())
}

/// The key of a row: its values in the key columns.
fn key_of(row: &Row, key: &[usize]) -> Row {
    key.iter().map(|&i| row[i].clone()).collect()
}

/// Copies one table of a run, from where its progress says, chunk by chunk.
#[allow(clippy::too_many_arguments)]
async fn copy_table<C: SnapshotSource>(
    source: &C,
    ctl: &Ctl,
    run: &SnapshotRun,
    mut progress: TableProgress,
    opts: &SnapshotOptions,
    board: &SnapshotBoard,
    metrics: &PipelineMetrics,
    shutdown: &CancellationToken,
) -> Result<(), CoordinatorError> {
    let table = progress.table.clone();
    let mut backoff = Backoff::default();
    let mut reader: Option<C::Reader> = None;
    board.update(run.id, &table, |r| {
        r.state = "copying";
        r.started = Some(Instant::now());
        r.rows_at_start = r.rows;
    });
    tracing::info!(run = run.id, table = %table, from_chunk = progress.chunks, estimated_rows = progress.estimated_rows,
        "snapshot: copying table");
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let r = match reader.as_mut() {
            Some(r) => r,
            None => match source.reader().await {
                Ok(r) => reader.insert(r),
                Err(e) => {
                    if !retry_or_end(
                        ctl,
                        run,
                        &table,
                        &e.to_string(),
                        e.is_transient(),
                        false,
                        &mut backoff,
                        board,
                        metrics,
                        shutdown,
                    )
                    .await?
                    {
                        return Ok(());
                    }
                    continue;
                }
            },
        };
        let started = Instant::now();
        let hold = ctl.hold().await?;
        let result = copy_chunks(r, ctl, hold, run, &mut progress, opts, board, metrics).await;
        metrics
            .snapshot_hold_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(true) => {
                board.update(run.id, &table, |r| {
                    r.state = "done";
                    r.eta_seconds = None;
                    r.finished = Some(Instant::now());
                });
                tracing::info!(run = run.id, table = %table, rows = progress.rows, chunks = progress.chunks, "snapshot: table copied");
                return Ok(());
            }
            Ok(false) => backoff.reset(),
            Err(ChunkError::Capture(e)) => return Err(e),
            Err(ChunkError::Source(e, transient, gone)) => {
                ctl.send(CaptureControl::Release { id: hold }).await?;
                let _ = r.end().await;
                if transient {
                    reader = None;
                }
                if !retry_or_end(
                    ctl,
                    run,
                    &table,
                    &e,
                    transient,
                    gone,
                    &mut backoff,
                    board,
                    metrics,
                    shutdown,
                )
                .await?
                {
                    return Ok(());
                }
            }
        }
    }
}

enum ChunkError {
    Capture(CoordinatorError),
    /// The error, whether it is transient, whether the table is gone.
    Source(String, bool, bool),
}

impl From<CoordinatorError> for ChunkError {
    fn from(e: CoordinatorError) -> Self {
        ChunkError::Capture(e)
    }
}

/// One hold: a keyed table's next chunk, or a whole table's pieces. Returns
/// true when the table is done.
#[allow(clippy::too_many_arguments)]
async fn copy_chunks<R: ChunkReader>(
    r: &mut R,
    ctl: &Ctl,
    hold: u64,
    run: &SnapshotRun,
    progress: &mut TableProgress,
    opts: &SnapshotOptions,
    board: &SnapshotBoard,
    metrics: &PipelineMetrics,
) -> Result<bool, ChunkError> {
    let src = |e: R::Error| {
        let gone = R::is_gone(&e);
        ChunkError::Source(e.to_string(), e.is_transient(), gone)
    };
    let view = r.begin(&progress.table).await.map_err(src)?;
    ctl.send(CaptureControl::At {
        id: hold,
        position: view.position.clone(),
    })
    .await?;
    let limit = opts.chunk_rows.max(1);
    match &view.key {
        ChunkKey::Columns(key) => {
            let rows = r.read(progress.upto.as_deref(), limit).await.map_err(src)?;
            r.end().await.map_err(src)?;
            let last = rows.len() < limit;
            let upto = rows.last().map(|row| key_of(row, key)).or(progress.upto.clone());
            let n = rows.len() as u64;
            let changes = chunk_changes(&view, run, progress.chunks, upto.clone(), last, false, rows);
            ctl.place(hold, changes, true).await?;
            chunk_done(progress, n, upto, last, run, board, metrics);
            Ok(last)
        }
        ChunkKey::WholeTable => {
            // One read view for the whole table; pieces placed at its
            // position while capture holds there. A copy cut short starts
            // over (its first piece recreates the table).
            progress.chunks = 0;
            progress.rows = 0;
            loop {
                let rows = r.read(None, limit).await.map_err(src)?;
                let last = rows.len() < limit;
                if last {
                    r.end().await.map_err(src)?;
                }
                let n = rows.len() as u64;
                let changes = chunk_changes(&view, run, progress.chunks, None, last, true, rows);
                ctl.place(hold, changes, last).await?;
                chunk_done(progress, n, None, last, run, board, metrics);
                if last {
                    return Ok(true);
                }
            }
        }
    }
}

/// After a failed chunk: waits and returns true to retry (transient), or
/// places an End mark and returns false (the table is given up: dropped, or
/// a definite error the targets quarantine the table with).
#[allow(clippy::too_many_arguments)]
async fn retry_or_end(
    ctl: &Ctl,
    run: &SnapshotRun,
    table: &TableId,
    error: &str,
    transient: bool,
    gone: bool,
    backoff: &mut Backoff,
    board: &SnapshotBoard,
    metrics: &PipelineMetrics,
    shutdown: &CancellationToken,
) -> Result<bool, CoordinatorError> {
    if transient {
        metrics.error("snapshot", ErrorClass::Transient);
        tracing::warn!(run = run.id, table = %table, error = %error, attempt = backoff.attempts() + 1,
            "snapshot chunk failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return Ok(false),
        }
        return Ok(true);
    }
    metrics.error("snapshot", ErrorClass::Definite);
    let reason = if gone {
        format!("{table} no longer exists on the source (dropped while being copied)")
    } else {
        format!("copying {table} failed: {error}")
    };
    tracing::error!(run = run.id, table = %table, reason = %reason,
        "snapshot of the table given up; its targets quarantine it until `dbmux snapshot --table {table}`");
    ctl.append(vec![(
        name_only(table),
        mark(
            run,
            SnapshotPhase::End {
                reason: reason.clone(),
            },
        ),
    )])
    .await?;
    board.update(run.id, table, |r| {
        r.state = "failed";
        r.error = Some(reason);
        r.eta_seconds = None;
        r.finished = Some(Instant::now());
    });
    Ok(false)
}

// ---------------------------------------------------------------------------
// Single-view sources (a PostgreSQL slot's exported snapshot): the initial
// snapshot only, all of it before the first streamed transaction.
// ---------------------------------------------------------------------------

/// Transient failures of one table's copy retried (from its first chunk)
/// before the initial snapshot of a single-view source fails.
const SINGLE_VIEW_RETRIES: u32 = 5;

/// The coordinator of a [`SnapshotSource::single_view`] source. With
/// `take_initial`, copies every table the source lists as of its one view
/// while capture stays held and does not stream (the chunks are appended at
/// the start position, in order), marks the copy done in the log
/// ([`INITIAL_VIEW_KEY`]); capture stays held for the per-chunk coordinator
/// that follows (true; false on shutdown). A failure of the copy is an
/// error that stops capture: the next start takes the initial snapshot
/// again from a new start position.
#[allow(clippy::too_many_arguments)]
async fn run_single_view<C: SnapshotSource, L: Log>(
    source: Arc<C>,
    opts: SnapshotOptions,
    board: SnapshotBoard,
    ctl: Arc<Ctl>,
    state: SharedState,
    take_initial: bool,
    log: L,
    metrics: PipelineMetrics,
    shutdown: CancellationToken,
) -> Result<bool, CoordinatorError> {
    if take_initial {
        log.set_meta(INITIAL_VIEW_KEY, INITIAL_VIEW_COPYING.to_vec())
            .await?;
        let tables = loop {
            // (The source may wait for capture to set up its view.)
            let listed = tokio::select! {
                r = source.tables() => r,
                _ = shutdown.cancelled() => return Ok(false),
            };
            match listed {
                Ok(t) => break t,
                Err(e) if e.is_transient() => {
                    metrics.error("snapshot", ErrorClass::Transient);
                    tracing::warn!(error = %e, "initial snapshot: cannot list the source's tables yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return Ok(false),
                    }
                }
                Err(e) => {
                    metrics.error("snapshot", ErrorClass::Definite);
                    return Err(CoordinatorError::Initial(format!(
                        "listing the tables to copy: {e}"
                    )));
                }
            }
        };
        let listed: BTreeSet<TableId> = tables.iter().map(|(t, _)| t.clone()).collect();
        // Runs of an earlier initial snapshot that was cut short: the tables
        // copied again below are recreated by their new first chunk; the
        // others (dropped or excluded since) are ended on the replicas.
        let abandoned: Vec<SnapshotRun> = std::mem::take(&mut state.lock().expect("capture state").runs)
            .into_values()
            .collect();
        for run in &abandoned {
            for t in run
                .tables
                .iter()
                .filter(|t| !t.done && !listed.contains(&t.table))
            {
                let reason = format!(
                    "{} is no longer captured (the initial snapshot that began copying it was cut short)",
                    t.table
                );
                ctl.append(vec![(
                    name_only(&t.table),
                    mark(run, SnapshotPhase::End { reason }),
                )])
                .await?;
            }
        }
        if !abandoned.is_empty() {
            tracing::warn!(
                runs = abandoned.len(),
                "initial snapshot: the previous attempt was cut short; copying every table again from a new start position"
            );
        }
        let estimates: BTreeMap<TableId, u64> = tables.iter().cloned().collect();
        let ids: Vec<TableId> = tables.iter().map(|(t, _)| t.clone()).collect();
        tracing::info!(
            tables = ids.len(),
            "first start: copying the existing rows of every captured table as of the start position \
             (capture streams once the copy is complete)"
        );
        let run = begin_run(&ctl, &state, Vec::new(), false, None, &ids, &estimates).await?;
        state.lock().expect("capture state").initialized = true;
        checkpoint(&log, &state).await?;
        for t in &run.tables {
            board.add(&run, t);
        }
        board.set_planned();
        board.publish(&metrics);
        let mut queue: Vec<TableProgress> = run.tables.iter().rev().cloned().collect();
        let mut workers = tokio::task::JoinSet::new();
        loop {
            while workers.len() < opts.parallel_tables.max(1) {
                let Some(table) = queue.pop() else { break };
                let (source, ctl, run, opts, board, metrics, shutdown) = (
                    source.clone(),
                    ctl.clone(),
                    run.clone(),
                    opts.clone(),
                    board.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                );
                workers.spawn(async move {
                    copy_single_view(&*source, &ctl, &run, table, &opts, &board, &metrics, &shutdown).await
                });
            }
            tokio::select! {
                done = workers.join_next() => match done {
                    None => break,
                    Some(Ok(Ok(()))) => board.publish(&metrics),
                    Some(Ok(Err(e))) => {
                        workers.shutdown().await;
                        return Err(e);
                    }
                    Some(Err(e)) => {
                        workers.shutdown().await;
                        return Err(CoordinatorError::Initial(format!("snapshot worker: {e}")));
                    }
                },
                _ = shutdown.cancelled() => {
                    workers.shutdown().await;
                    return Ok(false);
                }
            }
        }
        if shutdown.is_cancelled() {
            return Ok(false);
        }
        // Every chunk is in the log (each append returned): from here on
        // streamed transactions may follow them.
        log.set_meta(INITIAL_VIEW_KEY, INITIAL_VIEW_DONE.to_vec()).await?;
        checkpoint(&log, &state).await?;
        tracing::info!(
            run = run.id,
            "initial snapshot complete; capture streams from its position"
        );
    } else {
        let fresh = {
            let mut st = state.lock().expect("capture state");
            !std::mem::replace(&mut st.initialized, true)
        };
        if fresh {
            checkpoint(&log, &state).await?;
        }
        board.set_planned();
    }
    Ok(!shutdown.is_cancelled())
}

/// Copies one table of a single-view source's initial snapshot: chunk by
/// chunk in one read view, each appended as it is read. A transient failure
/// copies the table again from its first chunk (which recreates it on the
/// replicas); a definite one fails the snapshot.
#[allow(clippy::too_many_arguments)]
async fn copy_single_view<C: SnapshotSource>(
    source: &C,
    ctl: &Ctl,
    run: &SnapshotRun,
    mut progress: TableProgress,
    opts: &SnapshotOptions,
    board: &SnapshotBoard,
    metrics: &PipelineMetrics,
    shutdown: &CancellationToken,
) -> Result<(), CoordinatorError> {
    let table = progress.table.clone();
    let mut backoff = Backoff::default();
    board.update(run.id, &table, |r| {
        r.state = "copying";
        r.started = Some(Instant::now());
        r.rows_at_start = 0;
    });
    tracing::info!(run = run.id, table = %table, estimated_rows = progress.estimated_rows, "snapshot: copying table");
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let result = copy_view_table(source, ctl, run, &mut progress, opts, board, metrics).await;
        match result {
            Ok(()) => {
                board.update(run.id, &table, |r| {
                    r.state = "done";
                    r.eta_seconds = None;
                    r.finished = Some(Instant::now());
                });
                tracing::info!(run = run.id, table = %table, rows = progress.rows, chunks = progress.chunks,
                    "snapshot: table copied");
                return Ok(());
            }
            Err(ChunkError::Capture(e)) => return Err(e),
            Err(ChunkError::Source(e, _, true)) => {
                // Dropped since the view was taken: its targets stop waiting.
                retry_or_end(
                    ctl,
                    run,
                    &table,
                    &e,
                    false,
                    true,
                    &mut backoff,
                    board,
                    metrics,
                    shutdown,
                )
                .await?;
                return Ok(());
            }
            Err(ChunkError::Source(e, true, false)) if backoff.attempts() < SINGLE_VIEW_RETRIES => {
                metrics.error("snapshot", ErrorClass::Transient);
                tracing::warn!(run = run.id, table = %table, error = %e, attempt = backoff.attempts() + 1,
                    "snapshot of the table failed; copying it again from its first chunk");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(ChunkError::Source(e, _, false)) => {
                metrics.error("snapshot", ErrorClass::Definite);
                board.update(run.id, &table, |r| {
                    r.state = "failed";
                    r.error = Some(e.clone());
                    r.eta_seconds = None;
                    r.finished = Some(Instant::now());
                });
                return Err(CoordinatorError::Initial(format!("copying {table}: {e}")));
            }
        }
    }
}

/// One attempt at a table of a single-view source, from its first chunk.
async fn copy_view_table<C: SnapshotSource>(
    source: &C,
    ctl: &Ctl,
    run: &SnapshotRun,
    progress: &mut TableProgress,
    opts: &SnapshotOptions,
    board: &SnapshotBoard,
    metrics: &PipelineMetrics,
) -> Result<(), ChunkError> {
    fn src<E: std::error::Error + Classify>(gone: bool) -> impl Fn(E) -> ChunkError {
        move |e: E| ChunkError::Source(e.to_string(), e.is_transient(), gone)
    }
    let mut r = source.reader().await.map_err(src(false))?;
    let view = match r.begin(&progress.table).await {
        Ok(v) => v,
        Err(e) => {
            let gone = C::Reader::is_gone(&e);
            return Err(src(gone)(e));
        }
    };
    let limit = opts.chunk_rows.max(1);
    let (key, whole) = match &view.key {
        ChunkKey::Columns(k) => (k.clone(), false),
        ChunkKey::WholeTable => (Vec::new(), true),
    };
    progress.chunks = 0;
    progress.rows = 0;
    progress.upto = None;
    loop {
        let rows = r
            .read(progress.upto.as_deref(), limit)
            .await
            .map_err(src(false))?;
        let last = rows.len() < limit;
        let upto = if whole {
            None
        } else {
            rows.last().map(|row| key_of(row, &key)).or(progress.upto.clone())
        };
        let n = rows.len() as u64;
        let changes = chunk_changes(&view, run, progress.chunks, upto.clone(), last, whole, rows);
        ctl.append(changes).await?;
        chunk_done(progress, n, upto, last, run, board, metrics);
        if last {
            let _ = r.end().await;
            return Ok(());
        }
    }
}
