//! The runtime: capture into the log, apply from the log, keep the log trimmed.
//!
//! # Advance only after durable
//! Capture hands a transaction to the log and moves its own resume point only
//! past what it handed over; on restart it resumes from the position in the
//! last durable log record. An applier moves its read point only after the
//! replica committed the data together with the new offset; on any transient
//! error it re-opens the sink, which re-reads that offset from the replica. So
//! no step ever advances past data that was not made durable downstream.
//!
//! # Group commit
//! Capture reads the source in its own task and sends whole transactions over a
//! bounded channel; the writer drains whatever is waiting and appends it in one
//! atomic (and, with `fsync = "always"`, one synced) write.

use crate::ddl::DdlKind;
use crate::event::{sequence_transaction, Transaction};
use crate::filter::TableFilter;
use crate::log::{Log, LogError, LogReader};
use crate::metrics::{PipelineMetrics, ReplicaLabel};
use crate::position::Position;
use crate::replica::{Quarantine, ReplicaBoard, ReplicaState};
use crate::retry::{Backoff, Classify, ErrorClass};
use crate::schema::TableId;
use crate::sink::{Sink, TableScoped};
use crate::snapshot::{CaptureControl, SharedState, SnapshotPhase, SnapshotSource, Snapshots};
use crate::source::{CapturedTransaction, Source};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Why a pipeline task stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("capture failed: {0}")]
    Capture(String),
    #[error("replica {replica}: {message}")]
    Apply { replica: String, message: String },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("replica {replica} has applied seq {applied}, beyond the end of the log ({log_last}): the log was lost or belongs to another source; restore it or reset the replica")]
    ReplicaAhead {
        replica: String,
        applied: u64,
        log_last: u64,
    },
    #[error("background task failed: {0}")]
    Join(String),
}

/// How long the log writer may sit idle before it calls [`Log::heartbeat`]
/// (with Kafka: how soon a capture that another one fenced notices and stops).
pub const WRITER_HEARTBEAT: Duration = Duration::from_secs(2);

/// Capture tuning.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Transactions buffered between the source reader and the log writer.
    pub channel_capacity: usize,
    /// Most transactions appended in one log write.
    pub max_append_transactions: usize,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            channel_capacity: 1024,
            max_append_transactions: 512,
        }
    }
}

/// Apply tuning.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Events read from the log for one target transaction (whole source
    /// transactions are never split, so a batch may exceed it).
    pub max_batch_events: usize,
    /// The capture's table filter as configured now: events of tables it no
    /// longer selects (added to `exclude` after they reached the log) are
    /// skipped by the appliers.
    pub filter: TableFilter,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            max_batch_events: 5000,
            filter: TableFilter::all(),
        }
    }
}

async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// Reads committed transactions from `source` and appends them to `log` with
/// gapless `seq`s until `shutdown` or a definite error (no snapshots).
pub async fn run_capture<S, L>(
    source: S,
    log: L,
    metrics: PipelineMetrics,
    options: CaptureOptions,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError>
where
    S: Source + 'static,
    L: Log,
{
    run_capture_with(
        source,
        None::<Snapshots<crate::snapshot::NoSnapshots>>,
        log,
        metrics,
        options,
        shutdown,
    )
    .await
}

/// What the source reader hands the log writer.
enum WriterItem {
    Txn(CapturedTransaction),
    /// A snapshot transaction; the reply gets its first `seq` once appended.
    Snapshot(CapturedTransaction, oneshot::Sender<u64>),
}

impl WriterItem {
    fn txn(&self) -> &CapturedTransaction {
        match self {
            WriterItem::Txn(t) | WriterItem::Snapshot(t, _) => t,
        }
    }
}

/// Seconds between capture state checkpoints while the log grows.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// [`run_capture`] with snapshots: capture's state (schema history, snapshot
/// progress) is loaded from the log first, the source is given its schema
/// history, and the snapshot coordinator runs beside the reader, which holds
/// the stream while a chunk is read and places the chunk at its position
/// (see [`crate::snapshot`]).
pub async fn run_capture_with<S, C, L>(
    mut source: S,
    snapshots: Option<Snapshots<C>>,
    log: L,
    metrics: PipelineMetrics,
    options: CaptureOptions,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError>
where
    S: Source + 'static,
    C: SnapshotSource,
    L: Log,
{
    // Resume after the newest transaction in the log; before the first one,
    // from the start position stored on the very first start.
    let last = log.last().await?;
    let mut resume = match &last {
        Some((_, p)) => Some(p.clone()),
        None => log.start_position().await?,
    };
    // A single-view source (PostgreSQL) takes its initial snapshot before it
    // streams anything, from the view it sets up at its start position; a
    // copy cut short (the log says "copying": no streamed transaction is in
    // it yet) cannot be continued, so it is taken again from a new start
    // position (see `crate::snapshot::INITIAL_VIEW_KEY`).
    let single_view = snapshots.as_ref().is_some_and(|s| s.source.single_view());
    let take_initial = match &snapshots {
        Some(s) if single_view => {
            let view = log.meta(crate::snapshot::INITIAL_VIEW_KEY).await?;
            let copying = view.as_deref() == Some(crate::snapshot::INITIAL_VIEW_COPYING);
            if copying {
                warn!(
                    initial = s.options.initial,
                    "the initial snapshot was cut short before it was complete: it is taken again from a new \
                     start position (the replicas recreate and reload every table)"
                );
            }
            copying
                || (s.options.initial
                    && last.is_none()
                    && view.as_deref() != Some(crate::snapshot::INITIAL_VIEW_DONE))
        }
        _ => false,
    };
    if take_initial {
        resume = None;
    }
    // What the log holds durably, for sources that confirm progress upstream
    // (a PostgreSQL slot): published only once `append` has returned, which
    // the log's contract makes the point of durability (Kafka: after the
    // transaction commit).
    let (durable_tx, durable_rx) = tokio::sync::watch::channel(last.as_ref().map(|(_, p)| p.clone()));
    source.watch_durable(durable_rx);
    let state = crate::capture_state::load(&log).await?;
    let fresh_log = last.is_none();
    source.restore_history(state.history());
    info!(
        state_seq = state.seq,
        tables = state.history().len(),
        snapshot_runs = state.runs.len(),
        "capture state loaded"
    );
    let state: SharedState = Arc::new(std::sync::Mutex::new(state));

    let (tx, mut rx) = mpsc::channel::<WriterItem>(options.channel_capacity.max(1));
    let (ctl_tx, ctl_rx) = mpsc::channel::<CaptureControl>(64);
    let reader_shutdown = shutdown.child_token();
    let mut holds = Holds::default();
    let coordinator = snapshots.map(|snap| {
        // Nothing reaches the log before the coordinator's first plan.
        holds.holds.insert(crate::snapshot::INITIAL_HOLD, None);
        tokio::spawn(crate::snapshot::run_coordinator(
            snap,
            ctl_tx.clone(),
            state.clone(),
            if single_view { take_initial } else { fresh_log },
            log.clone(),
            metrics.clone(),
            reader_shutdown.clone(),
        ))
    });
    drop(ctl_tx);
    let reader = tokio::spawn(read_source(
        source,
        log.clone(),
        resume,
        ReadMode {
            discard_start: take_initial,
            defer_start: single_view,
        },
        tx,
        ctl_rx,
        holds,
        state.clone(),
        metrics.clone(),
        reader_shutdown.clone(),
    ));

    let writer = async {
        let mut last_checkpoint = Instant::now();
        let mut checkpointed_seq = state.lock().expect("capture state").seq;
        loop {
            let first = tokio::select! {
                t = rx.recv() => match t { Some(t) => t, None => return Ok(()) },
                _ = tokio::time::sleep(WRITER_HEARTBEAT) => {
                    log.heartbeat().await?;
                    let seq = state.lock().expect("capture state").seq;
                    if seq > checkpointed_seq && last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                        crate::snapshot::checkpoint(&log, &state).await?;
                        checkpointed_seq = seq;
                        last_checkpoint = Instant::now();
                    }
                    continue;
                }
                _ = shutdown.cancelled() => return Ok(()),
            };
            let mut pending = vec![first];
            while pending.len() < options.max_append_transactions {
                match rx.try_recv() {
                    Ok(t) => pending.push(t),
                    Err(_) => break,
                }
            }
            let mut next_seq = log.last_seq() + 1;
            let mut events = 0u64;
            let newest_commit_us = pending
                .iter()
                .filter(|t| matches!(t, WriterItem::Txn(_)))
                .map(|t| t.txn().commit_ts_us)
                .max()
                .unwrap_or(0);
            let mut replies = Vec::new();
            let mut txns = Vec::with_capacity(pending.len());
            for item in pending {
                let (t, reply) = match item {
                    WriterItem::Txn(t) => (t, None),
                    WriterItem::Snapshot(t, r) => (t, Some(r)),
                };
                if t.changes.is_empty() {
                    continue;
                }
                let txn = sequence_transaction(next_seq, t.id, t.commit_ts_us, t.position, t.changes);
                if let Some(r) = reply {
                    replies.push((r, next_seq));
                }
                next_seq += txn.len() as u64;
                events += txn.len() as u64;
                txns.push(txn);
            }
            let n = txns.len() as u64;
            let newest_position = txns.last().and_then(|t| t.position().cloned());
            // What the state must learn from this batch, taken before the
            // append consumes it and folded in only once the append returned.
            let folding = to_fold(&txns);
            let started = Instant::now();
            // An append the shutdown interrupts is either whole in the log or
            // not at all (the log's contract); the next start reads which. It
            // publishes nothing as durable and folds nothing into the state.
            let bytes = tokio::select! {
                r = log.append(txns) => r?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            if newest_position.is_some() {
                durable_tx.send_replace(newest_position);
            }
            {
                let mut st = state.lock().expect("capture state");
                fold(&mut st, folding);
            }
            for (reply, seq) in replies {
                let _ = reply.send(seq);
            }
            metrics.log_appended_bytes.inc_by(bytes);
            metrics
                .log_append_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.capture_transactions.inc_by(n);
            metrics.capture_events.inc_by(events);
            metrics.log_last_seq.set(log.last_seq());
            if newest_commit_us > 0 {
                metrics
                    .capture_last_commit_timestamp
                    .set(newest_commit_us as f64 / 1e6);
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                crate::snapshot::checkpoint(&log, &state).await?;
                checkpointed_seq = state.lock().expect("capture state").seq;
                last_checkpoint = Instant::now();
            }
        }
    };
    let result: Result<(), RuntimeError> = writer.await;
    reader_shutdown.cancel();
    // What was appended is in the checkpoint (or follows it in the log).
    if result.is_ok() {
        let _ = crate::snapshot::checkpoint(&log, &state).await;
    }
    // The reader's own error first: it is the cause (a failed preflight, a
    // source gone) when the coordinator merely saw capture stop.
    let read = match reader.await {
        Ok(r) => r,
        Err(e) => Err(RuntimeError::Join(e.to_string())),
    };
    let coordinated = match coordinator {
        Some(c) => match c.await {
            // Capture ended first (shutdown, or its own error, returned
            // above): the coordinator only saw it go.
            Ok(Ok(())) | Ok(Err(crate::snapshot::CoordinatorError::CaptureGone)) => Ok(()),
            Ok(Err(e)) => Err(RuntimeError::Capture(e.to_string())),
            Err(e) => Err(RuntimeError::Join(e.to_string())),
        },
        None => Ok(()),
    };
    if single_view {
        // The reader stops when the initial copy fails; the copy's error is the cause.
        coordinated.and(read).and(result)
    } else {
        read.and(result).and(coordinated)
    }
}

/// Runs one start-up call of the source until it succeeds: a transient
/// error is counted, logged with `retrying` and tried again after the
/// backoff; a definite one stops capture. `None`: shut down while waiting.
/// The backoff is reset after a success, for the next step.
async fn until_done<S: Source, T>(
    source: &mut S,
    retrying: &str,
    backoff: &mut Backoff,
    metrics: &PipelineMetrics,
    shutdown: &CancellationToken,
    mut call: impl AsyncFnMut(&mut S) -> Result<T, S::Error>,
) -> Result<Option<T>, RuntimeError> {
    loop {
        match call(source).await {
            Ok(v) => {
                backoff.reset();
                return Ok(Some(v));
            }
            Err(e) if e.is_transient() => {
                metrics.error("capture", ErrorClass::Transient);
                warn!(error = %e, "{retrying}");
                if sleep_or_cancel(backoff.next_delay(), shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => {
                metrics.error("capture", ErrorClass::Definite);
                return Err(RuntimeError::Capture(e.to_string()));
            }
        }
    }
}

/// How the reader starts (see [`run_capture_with`]).
#[derive(Debug, Clone, Copy)]
struct ReadMode {
    /// Abandon the stored start position and set up a new one first
    /// ([`Source::discard_start`]).
    discard_start: bool,
    /// Start streaming only once the initial hold is released (a
    /// single-view source: its view dies when it streams).
    defer_start: bool,
}

/// The events of a batch that capture's state must look at, and the batch's
/// last `seq`. Row events change the schema history only when their
/// definition changes: each distinct definition of a batch is kept once
/// (cheap clones: a definition is shared, a row is one row), and snapshot
/// rows and truncations change nothing.
fn to_fold(txns: &[Transaction]) -> (Vec<crate::event::ChangeEvent>, u64) {
    let mut seen: HashSet<usize> = HashSet::new();
    let mut out = Vec::new();
    for t in txns {
        for e in &t.events {
            let row = matches!(
                e.op,
                crate::Op::Insert { .. } | crate::Op::Update { .. } | crate::Op::Delete { .. }
            );
            if row && !seen.insert(Arc::as_ptr(&e.table) as usize) {
                continue;
            }
            if row || !matches!(e.op, crate::Op::Read { .. } | crate::Op::Truncate) {
                out.push(e.clone());
            }
        }
    }
    (out, txns.last().map_or(0, Transaction::last_seq))
}

/// Folds what [`to_fold`] kept of an appended batch into capture's state.
fn fold(
    state: &mut crate::capture_state::CaptureState,
    (events, last): (Vec<crate::event::ChangeEvent>, u64),
) {
    for e in &events {
        state.observe(e);
    }
    state.seq = state.seq.max(last);
}

/// The reader's holds (see [`crate::snapshot`]): while any hold exists,
/// nothing read after it was taken reaches the log unless it is at or before
/// every hold's position; chunks wait until the stream has reached their
/// position.
/// The changes of one transaction to place, with their definitions.
type Changes = Vec<(Arc<crate::schema::TableSchema>, crate::Op)>;

#[derive(Default)]
struct Holds {
    /// Hold id → its read view's position, once known.
    holds: BTreeMap<u64, Option<Position>>,
    /// Chunks to place, in arrival order: (hold, changes, release, reply).
    placements: VecDeque<(u64, Changes, bool, oneshot::Sender<u64>)>,
    /// Transactions to append at the current point.
    appends: VecDeque<(Changes, oneshot::Sender<u64>)>,
    /// When the oldest current hold began (for the log line on long holds).
    since: Option<Instant>,
}

impl Holds {
    /// Whether `t` (read from the source) may be handed to the log now.
    fn may_send(&self, t: &Position) -> bool {
        self.holds.values().all(|p| {
            p.as_ref()
                .is_some_and(|p| t.partial_cmp(p).is_some_and(|o| o.is_le()))
        })
    }

    fn apply(&mut self, msg: CaptureControl) {
        match msg {
            CaptureControl::Hold { id, reply } => {
                self.holds.insert(id, None);
                self.since.get_or_insert_with(Instant::now);
                let _ = reply.send(());
            }
            CaptureControl::At { id, position } => {
                if let Some(p) = self.holds.get_mut(&id) {
                    *p = Some(position);
                }
            }
            CaptureControl::Place {
                id,
                changes,
                release,
                reply,
            } => self.placements.push_back((id, changes, release, reply)),
            CaptureControl::Release { id } => {
                self.holds.remove(&id);
                self.placements.retain(|(h, ..)| *h != id);
            }
            CaptureControl::Append { changes, reply } => self.appends.push_back((changes, reply)),
        }
        if self.holds.is_empty() {
            self.since = None;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_source<S: Source, L: Log>(
    mut source: S,
    log: L,
    mut resume: Option<crate::position::Position>,
    mode: ReadMode,
    tx: mpsc::Sender<WriterItem>,
    mut control: mpsc::Receiver<CaptureControl>,
    mut holds: Holds,
    state: SharedState,
    metrics: PipelineMetrics,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let mut backoff = Backoff::default();
    let preflight = until_done(
        &mut source,
        "capture preflight could not run; retrying",
        &mut backoff,
        &metrics,
        &shutdown,
        async |s: &mut S| s.preflight().await,
    );
    if preflight.await?.is_none() {
        return Ok(());
    }
    if mode.discard_start {
        let discard = until_done(
            &mut source,
            "capture could not discard its previous start position yet; retrying",
            &mut backoff,
            &metrics,
            &shutdown,
            async |s: &mut S| s.discard_start().await,
        );
        if discard.await?.is_none() {
            return Ok(());
        }
    }
    if resume.is_none() {
        // First start ever: pin "the source's current end" to a concrete
        // position and store it durably before streaming, so that a crash
        // before the first transaction reaches the log resumes here instead
        // of at a later "current end".
        let position = until_done(
            &mut source,
            "capture could not read the source position; retrying",
            &mut backoff,
            &metrics,
            &shutdown,
            async |s: &mut S| s.current_position().await,
        );
        let Some(position) = position.await? else {
            return Ok(());
        };
        log.set_start_position(&position).await?;
        info!(position = %position, "capture start position stored");
        resume = Some(position);
    }
    // The position of what was last handed to the log (snapshot
    // transactions placed here carry it: resuming from it never skips).
    let mut sent_at = resume.clone().expect("set above");
    // A transaction read from the source that a hold keeps from the log.
    let mut held: Option<CapturedTransaction> = None;
    // Whether the source is streaming (started since the last failure).
    let mut streaming = false;
    let mut control_open = true;
    loop {
        while let Ok(msg) = control.try_recv() {
            holds.apply(msg);
        }
        // Hand over everything that may go now, in stream order.
        loop {
            if let Some((changes, reply)) = holds.appends.pop_front() {
                let t = snapshot_txn(changes, &sent_at);
                if tx.send(WriterItem::Snapshot(t, reply)).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            if let Some(t) = held.as_ref() {
                if holds.may_send(&t.position) {
                    let t = held.take().expect("checked");
                    sent_at = t.position.clone();
                    if tx.send(WriterItem::Txn(t)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            }
            // A chunk may be placed once every transaction at or before its
            // position was handed over: the next one is later, or the source
            // has read past it.
            let read_to = if streaming { source.read_position() } else { None };
            let ready = {
                let reached = |p: &Position| match held.as_ref() {
                    Some(t) => t.position.partial_cmp(p).is_some_and(|o| o.is_gt()),
                    None => read_to
                        .as_ref()
                        .is_some_and(|r| r.partial_cmp(p).is_some_and(|o| o.is_ge())),
                };
                holds
                    .placements
                    .iter()
                    .position(|(id, ..)| holds.holds.get(id).and_then(|p| p.as_ref()).is_some_and(reached))
            };
            if ready.is_none() && streaming && held.is_none() {
                // Chunks wait for the source to read past their position:
                // tell it how far (it may have to ask its server).
                let furthest = holds
                    .placements
                    .iter()
                    .filter_map(|(id, ..)| holds.holds.get(id).and_then(|p| p.clone()))
                    .reduce(|a, b| {
                        if b.partial_cmp(&a).is_some_and(|o| o.is_gt()) {
                            b
                        } else {
                            a
                        }
                    });
                if let Some(p) = furthest {
                    source.want_read_past(&p);
                }
            }
            if let Some(i) = ready {
                let (id, changes, release, reply) = holds.placements.remove(i).expect("found");
                let t = snapshot_txn(changes, &sent_at);
                if release {
                    holds.holds.remove(&id);
                    if holds.holds.is_empty() {
                        holds.since = None;
                    }
                }
                if tx.send(WriterItem::Snapshot(t, reply)).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            break;
        }
        let deferred = mode.defer_start && holds.holds.contains_key(&crate::snapshot::INITIAL_HOLD);
        if !streaming && !deferred {
            match resume.as_ref() {
                Some(p) => info!(position = %p, "capture resuming"),
                None => info!("capture starting at the source's current end"),
            }
            metrics.capture_connected.set(0);
            if let Err(e) = source.start(resume.clone()).await {
                if e.is_transient() {
                    metrics.error("capture", ErrorClass::Transient);
                    warn!(error = %e, attempt = backoff.attempts() + 1, "capture could not start; retrying");
                    if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
                metrics.error("capture", ErrorClass::Definite);
                return Err(RuntimeError::Capture(e.to_string()));
            }
            metrics.capture_connected.set(1);
            streaming = true;
        }
        // Wait for the next transaction (unless one is held), a message from
        // the coordinator, or — while chunks wait for their position — a
        // short tick to look at how far the source has read.
        let waiting_chunks = !holds.placements.is_empty();
        tokio::select! {
            r = source.next_transaction(), if held.is_none() && streaming => match r {
                Ok(t) => {
                    backoff.reset();
                    resume = Some(t.position.clone());
                    // Tables that entered the captured set (renamed in) get a
                    // snapshot run, announced before any later change of them.
                    let entered = source.take_entered_tables();
                    if !entered.is_empty() && control_open {
                        let run = {
                            let mut st = state.lock().expect("capture state");
                            let id = st.next_run.max(1);
                            st.next_run = id + 1;
                            id
                        };
                        let changes = entered
                            .iter()
                            .map(|id| {
                                (
                                    Arc::new(crate::schema::TableSchema {
                                        id: id.clone(),
                                        ..Default::default()
                                    }),
                                    crate::Op::Snapshot(Box::new(crate::snapshot::SnapshotMark {
                                        id: run,
                                        targets: Vec::new(),
                                        reset: false,
                                        phase: SnapshotPhase::Begin {
                                            estimated_rows: 0,
                                            request: None,
                                        },
                                    })),
                                )
                            })
                            .collect();
                        let (reply, _) = oneshot::channel();
                        if tx.send(WriterItem::Snapshot(snapshot_txn(changes, &sent_at), reply)).await.is_err() {
                            return Ok(());
                        }
                    }
                    if holds.holds.is_empty() {
                        sent_at = t.position.clone();
                        if tx.send(WriterItem::Txn(t)).await.is_err() {
                            return Ok(()); // the writer stopped; it reports why
                        }
                    } else {
                        held = Some(t);
                    }
                }
                Err(e) if e.is_transient() => {
                    metrics.error("capture", ErrorClass::Transient);
                    warn!(error = %e, "capture stream interrupted; reconnecting");
                    streaming = false;
                    if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                        return Ok(());
                    }
                }
                Err(e) => {
                    metrics.error("capture", ErrorClass::Definite);
                    return Err(RuntimeError::Capture(e.to_string()));
                }
            },
            msg = control.recv(), if control_open => match msg {
                Some(msg) => holds.apply(msg),
                None => {
                    if deferred && !shutdown.is_cancelled() {
                        // A single-view source's initial copy stopped before
                        // it was complete: streaming now would put changes
                        // after a partial copy. (The coordinator says why.)
                        return Err(RuntimeError::Capture(
                            "the initial snapshot stopped before it was complete".into(),
                        ));
                    }
                    // The coordinator stopped: nobody will place a chunk.
                    control_open = false;
                    holds = Holds::default();
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(20)), if waiting_chunks => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        if let Some(since) = holds.since {
            if since.elapsed() > Duration::from_secs(30) {
                warn!(
                    held_for_s = since.elapsed().as_secs(),
                    "capture has been held for a snapshot read for a long time"
                );
                holds.since = Some(Instant::now());
            }
        }
    }
}

/// A snapshot transaction placed at `at`.
fn snapshot_txn(
    changes: Vec<(Arc<crate::schema::TableSchema>, crate::Op)>,
    at: &Position,
) -> CapturedTransaction {
    // An id unique in the log: run, table, phase, and where it was placed.
    let (run, what) = match changes.first().map(|(t, op)| (t, op)) {
        Some((t, crate::Op::Snapshot(m))) => (
            m.id,
            match &m.phase {
                SnapshotPhase::Begin { .. } => "begin".to_string(),
                SnapshotPhase::Chunk { index, .. } => format!("{}#{index}@{at}", t.id),
                SnapshotPhase::End { .. } => format!("{}:end@{at}", t.id),
            },
        ),
        _ => (0, String::new()),
    };
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    CapturedTransaction {
        id: format!("snapshot-{run}:{what}"),
        commit_ts_us: now_us,
        position: at.clone(),
        changes,
    }
}

/// A request to lift a quarantine (from the admin server).
#[derive(Debug)]
pub struct ResumeRequest {
    pub table: TableId,
    /// What happened, for the operator.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// What the apply loop keeps about its replica between batches.
struct ApplyState {
    applied: u64,
    quarantined: BTreeMap<TableId, Quarantine>,
    /// Tables waiting for the first chunk of a snapshot meant for this
    /// replica: their changes are skipped until it recreates them.
    pending: BTreeSet<TableId>,
}

impl ApplyState {
    fn from(opened: crate::sink::Opened) -> Self {
        ApplyState {
            applied: opened.applied,
            quarantined: opened
                .quarantined
                .into_iter()
                .map(|q| (q.table.clone(), q))
                .collect(),
            pending: opened.pending.into_iter().collect(),
        }
    }

    /// The `seq` the log must keep everything after: the replica's offset, or
    /// just before the oldest event a quarantined table still needs.
    fn retain(&self) -> u64 {
        self.quarantined
            .values()
            .map(|q| q.first_seq.saturating_sub(1))
            .fold(self.applied, u64::min)
    }
}

/// The next segment of `carry` to apply as one `Sink::apply` call: a
/// snapshot or schema-change transaction alone (what a replica skips or
/// records changes at its boundary), or the ordinary transactions before
/// the next such one.
fn next_segment(carry: &mut VecDeque<Transaction>) -> Vec<Transaction> {
    let special = |t: &Transaction| t.snapshot_mark().is_some() || t.is_ddl();
    match carry.front() {
        None => Vec::new(),
        Some(t) if special(t) => vec![carry.pop_front().expect("front")],
        Some(_) => {
            let n = carry.iter().position(special).unwrap_or(carry.len());
            carry.drain(..n).collect()
        }
    }
}

/// Tables of `segment` this replica leaves out (see [`crate::replica`] and
/// [`crate::snapshot`]).
fn skip_set(segment: &[Transaction], st: &ApplyState, filter: &TableFilter, name: &str) -> HashSet<TableId> {
    let excluded = |id: &TableId| {
        if id.name.is_empty() {
            !filter.may_match_schema(&id.schema)
        } else {
            !filter.matches(&id.schema, &id.name)
        }
    };
    if let [t] = segment {
        if let Some(mark) = t.snapshot_mark() {
            let mut skip = HashSet::new();
            for e in &t.events {
                let id = &e.table.id;
                let later_chunk_of_quarantined = matches!(
                    &e.op,
                    crate::Op::Snapshot(m) if matches!(m.phase, SnapshotPhase::Chunk { index, .. } if index > 0)
                ) && st.quarantined.contains_key(id);
                if !mark.targets(name) || excluded(id) || later_chunk_of_quarantined {
                    skip.insert(id.clone());
                }
            }
            return skip;
        }
    }
    let mut skip = HashSet::new();
    for e in segment.iter().flat_map(|t| &t.events) {
        let id = &e.table.id;
        // A dropped table is dropped on the replica whatever its state (its
        // quarantine or pending snapshot ends with it).
        let cleanup = matches!(&e.op, crate::Op::Ddl(c) if matches!(c.kind, DdlKind::DropTable | DdlKind::DropDatabase));
        if excluded(id) || (!cleanup && (st.quarantined.contains_key(id) || st.pending.contains(id))) {
            skip.insert(id.clone());
        }
    }
    // A table with a skipped event must not be half applied.
    skip
}

/// Applies the log to one replica, from the replica's own stored offset, until
/// `shutdown`. Transient errors are retried with backoff forever (logged
/// loudly); the offset never moves past what the replica committed.
///
/// A definite error that belongs to one table quarantines that table on this
/// replica (see [`crate::replica`]) and the rest keeps flowing; any other
/// definite error stops this replica alone (its state on `board` says why) and
/// the function returns `Ok`. A replica whose next `seq` was truncated asks
/// capture for a snapshot that starts it over and waits for it. Only a
/// definite failure of the log itself is an `Err`; a transient one (a broker
/// restarting) is retried like a replica outage.
pub async fn run_apply<K: Sink, L: Log>(
    name: String,
    mut sink: K,
    log: L,
    metrics: PipelineMetrics,
    board: ReplicaBoard,
    options: ApplyOptions,
    mut requests: mpsc::Receiver<ResumeRequest>,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let label = ReplicaLabel {
        replica: name.clone(),
    };
    let mut backoff = Backoff::default();
    let mut notify = log.subscribe();
    let stop = |reason: String| {
        metrics.error("apply", ErrorClass::Definite);
        error!(replica = %name, reason = %reason, "replica stopped; capture and the other replicas go on");
        board.update(&name, |r| r.state = ReplicaState::Stopped { reason });
        metrics.apply_stopped.get_or_create(&label).set(1);
    };
    let mut reader = log.reader(&name).await?;
    // A transient log error (a broker restarting) is retried like a replica
    // outage: back off, re-open the sink (re-reading its offset), re-read.
    macro_rules! log_try {
        ($open:lifetime, $e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) if e.is_transient() => {
                    metrics.error("apply", ErrorClass::Transient);
                    warn!(replica = %name, error = %e, attempt = backoff.attempts() + 1, "log unavailable; retrying");
                    if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                        return Ok(());
                    }
                    continue $open;
                }
                Err(e) => return Err(e.into()),
            }
        };
    }
    'open: loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let opened = match sink.open().await {
            Ok(o) => o,
            Err(e) if e.is_transient() => {
                metrics.error("apply", ErrorClass::Transient);
                warn!(replica = %name, error = %e, attempt = backoff.attempts() + 1, "replica unavailable; retrying");
                if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                    return Ok(());
                }
                continue 'open;
            }
            Err(e) => {
                stop(e.to_string());
                return Ok(());
            }
        };
        let mut st = ApplyState::from(opened);
        publish(&board, &metrics, &label, &name, &st);
        // Read from the log itself: a shared log's head watch may not have
        // caught up yet.
        let log_last = log_try!('open, log.last().await).map_or(0, |(s, _)| s);
        if st.applied > log_last {
            stop(
                RuntimeError::ReplicaAhead {
                    replica: name.clone(),
                    applied: st.applied,
                    log_last,
                }
                .to_string(),
            );
            return Ok(());
        }
        if let Some(first) = log_try!('open, log.first_seq().await) {
            if st.applied < log_last && st.applied + 1 < first {
                if start_over(
                    &name,
                    &mut sink,
                    &log,
                    &mut reader,
                    &board,
                    &metrics,
                    &label,
                    st.applied + 1,
                    &shutdown,
                )
                .await?
                {
                    continue 'open;
                }
                return Ok(());
            }
        }
        info!(replica = %name, applied = st.applied, quarantined = st.quarantined.len(),
            snapshot_pending = st.pending.len(), "applier resuming");
        log_try!('open, reader.ack(st.retain()).await);
        let mut carry: VecDeque<Transaction> = VecDeque::new();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            while let Ok(req) = requests.try_recv() {
                let r = resume_table(&name, &mut sink, &mut reader, &options, &mut st, &req.table).await;
                publish(&board, &metrics, &label, &name, &st);
                let _ = req.reply.send(r);
                log_try!('open, reader.ack(st.retain()).await);
            }
            if carry.is_empty() {
                notify.borrow_and_update();
                let txns = match reader.read(st.applied + 1, options.max_batch_events).await {
                    Err(LogError::Truncated { requested, .. }) => {
                        if start_over(
                            &name,
                            &mut sink,
                            &log,
                            &mut reader,
                            &board,
                            &metrics,
                            &label,
                            requested,
                            &shutdown,
                        )
                        .await?
                        {
                            continue 'open;
                        }
                        return Ok(());
                    }
                    r => log_try!('open, r),
                };
                if txns.is_empty() {
                    tokio::select! {
                        _ = notify.changed() => {}
                        // A shared log's head watch may run ahead of or behind
                        // this reader's own fetches: look again now and then.
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        Some(req) = requests.recv() => {
                            let r = resume_table(&name, &mut sink, &mut reader, &options, &mut st, &req.table).await;
                            publish(&board, &metrics, &label, &name, &st);
                            let _ = req.reply.send(r);
                            log_try!('open, reader.ack(st.retain()).await);
                        }
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    continue;
                }
                carry = txns.into();
            }
            let txns = next_segment(&mut carry);
            let skip = skip_set(&txns, &st, &options.filter, &name);
            let n_events: u64 = txns
                .iter()
                .flat_map(|t| &t.events)
                .filter(|e| !skip.contains(&e.table.id))
                .count() as u64;
            let ddl_events = txns
                .iter()
                .flat_map(|t| &t.events)
                .filter(|e| matches!(e.op, crate::Op::Ddl(_)) && !skip.contains(&e.table.id))
                .count() as u64;
            let started = Instant::now();
            match sink.apply(&txns, &skip).await {
                Ok(()) => {
                    backoff.reset();
                    st.applied = txns.last().expect("non-empty").last_seq();
                    if let [t] = txns.as_slice() {
                        if t.snapshot_mark().is_some_and(|m| m.targets(&name)) {
                            note_snapshot(&mut st, t, &skip);
                        }
                    }
                    if ddl_events > 0 {
                        metrics.apply_ddl.get_or_create(&label).inc_by(ddl_events);
                        // Renames and drops move the replica's own state:
                        // read it back.
                        log_try!('open, reader.ack(st.retain()).await);
                        continue 'open;
                    }
                    log_try!('open, reader.ack(st.retain()).await);
                    metrics
                        .apply_batch_seconds
                        .get_or_create(&label)
                        .observe(started.elapsed().as_secs_f64());
                    metrics
                        .apply_batch_events
                        .get_or_create(&label)
                        .observe(n_events as f64);
                    metrics.apply_batches.get_or_create(&label).inc();
                    metrics.apply_events.get_or_create(&label).inc_by(n_events);
                    publish(&board, &metrics, &label, &name, &st);
                }
                Err(e) if e.is_transient() => {
                    metrics.error("apply", ErrorClass::Transient);
                    warn!(replica = %name, error = %e, attempt = backoff.attempts() + 1,
                        "apply failed; nothing of this batch was committed; retrying");
                    if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                        return Ok(());
                    }
                    continue 'open;
                }
                Err(e) => {
                    metrics.error("apply", ErrorClass::Definite);
                    let Some(table) = e.table().cloned().filter(|t| !st.quarantined.contains_key(t)) else {
                        stop(e.to_string());
                        return Ok(());
                    };
                    if ddl_events > 0 {
                        metrics.apply_ddl_failures.get_or_create(&label).inc();
                    }
                    // Re-read the offset: a sink that commits in several parts
                    // may have committed some before failing.
                    let applied = loop {
                        match sink.open().await {
                            Ok(o) => break o.applied,
                            Err(e2) if e2.is_transient() => {
                                if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                                    return Ok(());
                                }
                            }
                            Err(e2) => {
                                stop(e2.to_string());
                                return Ok(());
                            }
                        }
                    };
                    // The table, and the tables its cascades change (their rows
                    // change with it on the source).
                    let mut group = vec![(table.clone(), e.to_string())];
                    if let Some(schema) = txns
                        .iter()
                        .flat_map(|t| &t.events)
                        .find(|ev| ev.table.id == table)
                    {
                        for fk in &schema.table.cascades {
                            if !group.iter().any(|(t, _)| *t == fk.table)
                                && !st.quarantined.contains_key(&fk.table)
                            {
                                group.push((
                                    fk.table.clone(),
                                    format!("cascades from quarantined {table} change it ({})", fk.name),
                                ));
                            }
                        }
                    }
                    for (t, reason) in group {
                        let q = Quarantine {
                            table: t.clone(),
                            first_seq: applied + 1,
                            reason,
                        };
                        loop {
                            match sink.quarantine(&q).await {
                                Ok(()) => break,
                                Err(e2) if e2.is_transient() => {
                                    if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                                        return Ok(());
                                    }
                                }
                                Err(e2) => {
                                    stop(e2.to_string());
                                    return Ok(());
                                }
                            }
                        }
                        error!(replica = %name, table = %t, first_seq = q.first_seq, reason = %q.reason,
                            "table quarantined on this replica: its events are skipped (and kept in the log) \
                             until `dbmux resume-table --replica {name} --table {t}` (or a re-snapshot: \
                             `dbmux snapshot --replica {name} --table {t}`); the rest goes on");
                        metrics.apply_quarantines.get_or_create(&label).inc();
                    }
                    continue 'open;
                }
            }
        }
    }
}

/// What a snapshot transaction meant for this replica changed in its state
/// (the sink recorded the same in the replica, in the same transaction).
fn note_snapshot(st: &mut ApplyState, t: &Transaction, skip: &HashSet<TableId>) {
    for e in &t.events {
        let crate::Op::Snapshot(m) = &e.op else { continue };
        let id = &e.table.id;
        if skip.contains(id) {
            continue;
        }
        match &m.phase {
            SnapshotPhase::Begin { .. } => {
                st.pending.insert(id.clone());
            }
            SnapshotPhase::Chunk { .. } => {
                if m.phase.recreates() {
                    st.quarantined.remove(id);
                }
                if m.phase.ends_pending() {
                    st.pending.remove(id);
                }
            }
            SnapshotPhase::End { reason } => {
                st.pending.remove(id);
                st.quarantined.insert(
                    id.clone(),
                    Quarantine {
                        table: id.clone(),
                        first_seq: e.seq,
                        reason: reason.clone(),
                    },
                );
            }
        }
    }
}

/// A replica whose next `seq` (`needed_seq`) the log no longer has: shown
/// as `needs_snapshot`, it asks capture for a snapshot run that starts it
/// over (every captured table, recreated and reloaded) and waits for the
/// run's first event to be in the log; then the replica's offset is moved to
/// just before it (its quarantines and pending snapshots cleared) and the
/// function returns true. False on shutdown. The other replicas are not
/// disturbed: the run is targeted at this replica alone.
#[allow(clippy::too_many_arguments)]
async fn start_over<K: Sink, L: Log>(
    name: &str,
    sink: &mut K,
    log: &L,
    reader: &mut L::Reader,
    board: &ReplicaBoard,
    metrics: &PipelineMetrics,
    label: &ReplicaLabel,
    needed_seq: u64,
    shutdown: &CancellationToken,
) -> Result<bool, RuntimeError> {
    let first = log.first_seq().await?.unwrap_or(0);
    needs_snapshot(name, board, metrics, label, needed_seq, first);
    let mut backoff = Backoff::default();
    let mut request: Option<String> = None;
    // A process that only reads the log (`dbmux apply` with Kafka) cannot
    // store the request itself: it says once how to make one, and waits.
    let mut told = false;
    loop {
        let log_first = log.first_seq().await?.unwrap_or(0);
        let pending = crate::snapshot::pending_reset(log, name).await;
        let id = match (&request, pending) {
            (_, Some(id)) => Some(id),
            (Some(id), None) => Some(id.clone()),
            (None, None) => match crate::snapshot::request(log, name, &[], true).await {
                Ok(id) => {
                    info!(replica = %name, request = %id, "asked capture for a snapshot that starts this replica over");
                    Some(id)
                }
                Err(LogError::ReadOnly) => {
                    if !told {
                        error!(replica = %name,
                            "this process cannot write to the log: request the snapshot from the capture \
                             process (`dbmux snapshot --replica {name} --start-over`, through its admin server); \
                             this applier waits for it");
                        told = true;
                    }
                    None
                }
                Err(e) => return Err(RuntimeError::Capture(e.to_string())),
            },
        };
        request = id.clone();
        let started = crate::snapshot::started(log, name)
            .await
            .map_err(|e| RuntimeError::Capture(e.to_string()))?;
        if let Some(s) = started.filter(|s| id.is_none() || id.as_ref() == Some(&s.request)) {
            // With no request of its own (a read-only log), any run that
            // starts this replica over and began after it fell behind will do.
            let usable = s.reset || id.is_some();
            let in_log = log.last().await?.is_some_and(|(last, _)| s.begin_seq <= last);
            if usable && in_log && (id.is_some() || s.begin_seq >= needed_seq) {
                if s.begin_seq < log_first {
                    // Truncated before this replica got to it: ask again.
                    request = crate::snapshot::request(log, name, &[], true).await.ok();
                    continue;
                }
                loop {
                    match sink.reset(s.begin_seq).await {
                        Ok(()) => break,
                        Err(e) if e.is_transient() => {
                            warn!(replica = %name, error = %e, "replica unavailable; retrying");
                            if sleep_or_cancel(backoff.next_delay(), shutdown).await {
                                return Ok(false);
                            }
                        }
                        Err(e) => {
                            metrics.error("apply", ErrorClass::Definite);
                            error!(replica = %name, error = %e, "replica cannot be started over");
                            board.update(name, |r| {
                                r.state = ReplicaState::Stopped {
                                    reason: e.to_string(),
                                }
                            });
                            return Ok(false);
                        }
                    }
                }
                reader.ack(s.begin_seq.saturating_sub(1)).await?;
                info!(replica = %name, run = s.run, begin_seq = s.begin_seq,
                    "replica starts over from a snapshot: its tables are recreated and reloaded; the others go on");
                return Ok(true);
            }
        }
        if sleep_or_cancel(Duration::from_millis(500), shutdown).await {
            return Ok(false);
        }
    }
}

/// Shows `st` on the board and in the gauges.
fn publish(
    board: &ReplicaBoard,
    metrics: &PipelineMetrics,
    label: &ReplicaLabel,
    name: &str,
    st: &ApplyState,
) {
    board.update(name, |r| {
        r.applied_seq = Some(st.applied);
        r.state = ReplicaState::Running;
        r.quarantined = st.quarantined.values().cloned().collect();
        r.snapshot_pending = st.pending.iter().cloned().collect();
    });
    metrics.apply_last_seq.get_or_create(label).set(st.applied);
    metrics.apply_stopped.get_or_create(label).set(0);
    metrics.apply_needs_snapshot.get_or_create(label).set(0);
    metrics
        .apply_quarantined_tables
        .get_or_create(label)
        .set(st.quarantined.len() as u64);
}

fn needs_snapshot(
    name: &str,
    board: &ReplicaBoard,
    metrics: &PipelineMetrics,
    label: &ReplicaLabel,
    needed_seq: u64,
    log_first_seq: u64,
) {
    error!(replica = %name, needed_seq, log_first_seq,
        "replica needs seq {needed_seq}, which the log no longer has (it starts at {log_first_seq}): \
         this replica cannot start from the log and needs a snapshot; it is stopped, the others go on");
    board.update(name, |r| {
        r.state = ReplicaState::NeedsSnapshot {
            needed_seq,
            log_first_seq,
        }
    });
    metrics.apply_needs_snapshot.get_or_create(label).set(1);
    metrics.apply_stopped.get_or_create(label).set(1);
}

/// Lifts the quarantine of `table` on a replica while no applier runs for it
/// (`dbmux resume-table` without an admin server to ask): opens the sink,
/// re-applies the table's skipped events from `log` and lifts the quarantine.
/// The caller makes sure no applier of the replica runs meanwhile (the
/// embedded log's lock does; see `dbmux resume-table` for Kafka).
pub async fn resume_quarantined<K: Sink, L: Log>(
    name: &str,
    sink: &mut K,
    log: &L,
    options: &ApplyOptions,
    table: &TableId,
) -> Result<String, String> {
    let mut reader = log.reader(name).await.map_err(|e| e.to_string())?;
    let opened = sink.open().await.map_err(|e| e.to_string())?;
    let mut st = ApplyState::from(opened);
    let r = resume_table(name, sink, &mut reader, options, &mut st, table).await;
    if r.is_ok() {
        reader.ack(st.retain()).await.map_err(|e| e.to_string())?;
    }
    r
}

/// Reads that may come back empty before resuming a table gives up (a shared
/// log's reader answers "nothing yet" when a fetch takes longer than it waits).
const RESUME_READ_ATTEMPTS: u32 = 100;

/// Re-applies the skipped events of a quarantined table from the log, in
/// batches, each committed with the quarantine's new start (so a crash in the
/// middle resumes where it stopped), and lifts the quarantine with the last.
async fn resume_table<K: Sink, R: LogReader>(
    name: &str,
    sink: &mut K,
    reader: &mut R,
    options: &ApplyOptions,
    st: &mut ApplyState,
    table: &TableId,
) -> Result<String, String> {
    let Some(q) = st.quarantined.get(table).cloned() else {
        return Err(format!("{table} is not quarantined on replica {name}"));
    };
    let mut from = q.first_seq;
    let mut reapplied = 0u64;
    let only: HashSet<TableId> = [table.clone()].into();
    loop {
        let done_all = from > st.applied;
        let (txns, next) = if done_all {
            (Vec::new(), None)
        } else {
            // `from` is at most the replica's offset, so the log has it: an
            // empty read only means it has not arrived yet (a shared log's
            // fetch), never "nothing left" (which would lift the quarantine
            // without re-applying everything).
            let mut attempts = 0;
            let txns = loop {
                let txns = reader
                    .read(from, options.max_batch_events)
                    .await
                    .map_err(|e| match e {
                        LogError::Truncated { .. } => format!(
                            "{table} cannot be resumed from the log: {e}; it needs a snapshot of the table"
                        ),
                        e => e.to_string(),
                    })?;
                if !txns.is_empty() {
                    break txns;
                }
                attempts += 1;
                if attempts >= RESUME_READ_ATTEMPTS {
                    return Err(format!(
                        "{table} stays quarantined on replica {name}: the log did not return seq {from}, \
                         which it must hold; try again"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            // Whole transactions up to the replica's offset: the applier
            // always stops at a transaction boundary.
            let txns: Vec<_> = txns.into_iter().filter(|t| t.last_seq() <= st.applied).collect();
            if let Some(e) = txns
                .iter()
                .flat_map(|t| &t.events)
                .find(|e| e.table.id == *table && matches!(e.op, crate::Op::Ddl(_)))
            {
                return Err(format!(
                    "{table} changed schema while quarantined (seq {}): its skipped changes cannot be replayed \
                     on the old table; re-snapshot it instead: dbmux snapshot --replica {name} --table {table}",
                    e.seq
                ));
            }
            let last = txns.last().map_or(st.applied, |t| t.last_seq());
            let next = (last < st.applied).then_some(last + 1);
            (txns, next)
        };
        let n = txns
            .iter()
            .flat_map(|t| &t.events)
            .filter(|e| only.contains(&e.table.id))
            .count() as u64;
        match sink.resume(table, &txns, from, next).await {
            Ok(()) => reapplied += n,
            Err(e) => {
                let reason = e.to_string();
                if !e.is_transient() {
                    if let Some(q) = st.quarantined.get_mut(table) {
                        q.first_seq = from;
                        q.reason = reason.clone();
                        let _ = sink.quarantine(q).await;
                    }
                }
                warn!(replica = %name, table = %table, error = %reason, "resuming the table failed; it stays quarantined");
                return Err(format!("{table} stays quarantined on replica {name}: {reason}"));
            }
        }
        match next {
            Some(n) => {
                from = n;
                if let Some(q) = st.quarantined.get_mut(table) {
                    q.first_seq = n;
                }
            }
            None => break,
        }
    }
    st.quarantined.remove(table);
    info!(replica = %name, table = %table, reapplied, "quarantine lifted; the table is applied again");
    Ok(format!(
        "{table} resumed on replica {name}: {reapplied} skipped event(s) re-applied"
    ))
}

/// Recomputes the lag gauges from the log's head and each replica's applied
/// position (call it right before rendering `/metrics`): they grow while a
/// replica is down or stuck, as the log grows.
///
/// `dbmux_apply_lag_seconds` is the age of the oldest unapplied transaction
/// (now − its source commit time, [`Log::commit_ts_at`]), 0 when caught up.
pub async fn refresh_lag<L: Log>(metrics: &PipelineMetrics, log: &L, board: &ReplicaBoard) {
    let last = log.last_seq();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let age = |ts: i64| (now_us - ts).max(0) as f64 / 1e6;
    for (name, r) in board.all() {
        let label = ReplicaLabel { replica: name };
        let applied = r.applied_seq.unwrap_or(0);
        metrics
            .apply_lag_events
            .get_or_create(&label)
            .set(last.saturating_sub(applied));
        let seconds = if applied >= last {
            0.0
        } else {
            match log.commit_ts_at(applied + 1).await {
                Ok(Some(ts)) => age(ts),
                // Truncated (the replica needs a snapshot): as old as the oldest kept.
                _ => match log.first_seq().await {
                    Ok(Some(f)) => log.commit_ts_at(f).await.ok().flatten().map_or(0.0, age),
                    _ => 0.0,
                },
            }
        };
        metrics.apply_lag_seconds.get_or_create(&label).set(seconds);
    }
}

/// Periodically deletes log chunks every named consumer has applied (a
/// consumer's acknowledgement already keeps what its quarantined tables
/// still need; capture's state checkpoint is a consumer too). A replica that
/// needs a snapshot cannot use the log and does not hold it back until the
/// snapshot that starts it over has begun.
pub async fn run_truncation<L: Log>(
    log: L,
    consumers: Vec<String>,
    board: ReplicaBoard,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    loop {
        if sleep_or_cancel(every, &shutdown).await {
            return Ok(());
        }
        let first = log.first_seq().await?.unwrap_or(0);
        let mut names: Vec<String> = Vec::new();
        for n in &consumers {
            let waiting = board
                .get(n)
                .is_some_and(|r| matches!(r.state, ReplicaState::NeedsSnapshot { .. }));
            // A replica that needs a snapshot holds nothing back — unless the
            // run that starts it over has begun (capture acknowledged just
            // before its first event for it).
            if !waiting || log.acked(n).await?.is_some_and(|a| a + 1 >= first) {
                names.push(n.clone());
            }
        }
        if names.is_empty() {
            continue;
        }
        let removed = log.truncate(names).await?;
        if removed > 0 {
            tracing::debug!(removed, "log truncated");
        }
    }
}

/// Syncs the log's journal every `every` (the `interval` fsync policy).
pub async fn run_fsync<L: Log>(
    log: L,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    loop {
        if sleep_or_cancel(every, &shutdown).await {
            let _ = log.sync().await;
            return Ok(());
        }
        log.sync().await?;
    }
}

#[cfg(test)]
mod tests {
    //! Hermetic runtime tests: an in-memory source and a fault-injecting
    //! in-memory sink with the same exactly-once contract as the real ones.
    use super::*;
    use crate::event::{Op, Transaction};
    use crate::position::{MysqlPosition, Position};
    use crate::retry::Classify;
    use crate::schema::TableSchema;
    use crate::value::Value;
    use std::sync::{Arc, Mutex};

    #[derive(Debug, thiserror::Error)]
    #[error("injected {0:?} failure")]
    struct Fault(ErrorClass);
    impl Classify for Fault {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }
    impl TableScoped for Fault {
        fn table(&self) -> Option<&TableId> {
            None
        }
    }

    fn schema() -> Arc<TableSchema> {
        crate::schema::test_table()
    }

    /// Transaction `i` (0-based) has `i % 3 + 1` inserts; its position offset is `i + 1`.
    struct MemSource {
        total: usize,
        next: usize,
        fail_at: Vec<usize>,
    }
    impl Source for MemSource {
        type Error = Fault;
        async fn preflight(&mut self) -> Result<(), Fault> {
            Ok(())
        }
        async fn current_position(&mut self) -> Result<Position, Fault> {
            Ok(Position::Mysql(MysqlPosition {
                file: "b.000001".into(),
                offset: 0,
                gtid_set: None,
            }))
        }
        async fn start(&mut self, resume: Option<Position>) -> Result<(), Fault> {
            self.next = match resume {
                Some(Position::Mysql(p)) => p.offset as usize,
                _ => 0,
            };
            Ok(())
        }
        async fn next_transaction(&mut self) -> Result<CapturedTransaction, Fault> {
            if let Some(i) = self.fail_at.iter().position(|&f| f == self.next) {
                self.fail_at.remove(i);
                return Err(Fault(ErrorClass::Transient));
            }
            if self.next >= self.total {
                std::future::pending::<()>().await;
            }
            let i = self.next;
            self.next += 1;
            let s = schema();
            Ok(CapturedTransaction {
                id: format!("0-1-{i}"),
                commit_ts_us: 0,
                position: Position::Mysql(MysqlPosition {
                    file: "b.000001".into(),
                    offset: i as u64 + 1,
                    gtid_set: None,
                }),
                changes: (0..i % 3 + 1)
                    .map(|k| {
                        (
                            s.clone(),
                            Op::Insert {
                                after: vec![Value::Int((i * 10 + k) as i64)],
                            },
                        )
                    })
                    .collect(),
            })
        }
    }

    #[derive(Default)]
    struct Store {
        applied_seqs: Vec<u64>,
        offset: u64,
        applies: usize,
    }
    struct MemSink {
        store: Arc<Mutex<Store>>,
        fail_every: usize,
    }
    impl Sink for MemSink {
        type Error = Fault;
        async fn open(&mut self) -> Result<crate::sink::Opened, Fault> {
            Ok(crate::sink::Opened {
                applied: self.store.lock().unwrap().offset,
                quarantined: Vec::new(),
                pending: Vec::new(),
            })
        }
        async fn reset(&mut self, from: u64) -> Result<(), Fault> {
            self.store.lock().unwrap().offset = from - 1;
            Ok(())
        }
        async fn quarantine(&mut self, _: &Quarantine) -> Result<(), Fault> {
            Ok(())
        }
        async fn resume(
            &mut self,
            _: &TableId,
            _: &[Transaction],
            _: u64,
            _: Option<u64>,
        ) -> Result<(), Fault> {
            Ok(())
        }
        async fn apply(&mut self, txns: &[Transaction], _: &HashSet<TableId>) -> Result<(), Fault> {
            let mut s = self.store.lock().unwrap();
            s.applies += 1;
            if self.fail_every > 0 && s.applies % self.fail_every == 0 {
                return Err(Fault(ErrorClass::Transient)); // nothing visible
            }
            for t in txns {
                assert!(t.events.last().unwrap().txn.last, "split transaction");
                for e in &t.events {
                    if e.seq > s.offset {
                        s.applied_seqs.push(e.seq);
                    }
                }
            }
            s.offset = txns.last().unwrap().last_seq();
            Ok(())
        }
    }

    /// A log whose appends wait for a permit: shows what capture publishes
    /// while an append (a Kafka transaction) is not done yet.
    #[derive(Clone)]
    struct GatedLog {
        inner: crate::log::EmbeddedLog,
        gate: Arc<tokio::sync::Semaphore>,
    }
    impl Log for GatedLog {
        type Reader = crate::log::EmbeddedReader;
        fn last_seq(&self) -> u64 {
            Log::last_seq(&self.inner)
        }
        fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
            Log::subscribe(&self.inner)
        }
        async fn last(&self) -> Result<Option<(u64, Position)>, LogError> {
            Log::last(&self.inner).await
        }
        async fn first_seq(&self) -> Result<Option<u64>, LogError> {
            Log::first_seq(&self.inner).await
        }
        async fn append(&self, txns: Vec<Transaction>) -> Result<u64, LogError> {
            self.gate.acquire().await.expect("gate open").forget();
            Log::append(&self.inner, txns).await
        }
        async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
            Log::meta(&self.inner, key).await
        }
        async fn set_meta(&self, key: &str, value: Vec<u8>) -> Result<(), LogError> {
            Log::set_meta(&self.inner, key, value).await
        }
        async fn reader(&self, consumer: &str) -> Result<Self::Reader, LogError> {
            Log::reader(&self.inner, consumer).await
        }
        async fn acked(&self, consumer: &str) -> Result<Option<u64>, LogError> {
            Log::acked(&self.inner, consumer).await
        }
        async fn truncate(&self, consumers: Vec<String>) -> Result<u64, LogError> {
            Log::truncate(&self.inner, consumers).await
        }
        async fn commit_ts_at(&self, seq: u64) -> Result<Option<i64>, LogError> {
            Log::commit_ts_at(&self.inner, seq).await
        }
        async fn sync(&self) -> Result<(), LogError> {
            Log::sync(&self.inner).await
        }
    }

    /// A [`MemSource`] that keeps the durable-position watch it is given.
    struct Watching {
        inner: MemSource,
        durable: Arc<Mutex<Option<crate::source::DurablePosition>>>,
    }
    impl Source for Watching {
        type Error = Fault;
        async fn preflight(&mut self) -> Result<(), Fault> {
            self.inner.preflight().await
        }
        async fn current_position(&mut self) -> Result<Position, Fault> {
            self.inner.current_position().await
        }
        async fn start(&mut self, resume: Option<Position>) -> Result<(), Fault> {
            self.inner.start(resume).await
        }
        async fn next_transaction(&mut self) -> Result<CapturedTransaction, Fault> {
            self.inner.next_transaction().await
        }
        fn watch_durable(&mut self, durable: crate::source::DurablePosition) {
            *self.durable.lock().unwrap() = Some(durable);
        }
    }

    /// What a source may acknowledge upstream (a PostgreSQL slot's confirmed
    /// position) never runs ahead of the log: capture publishes a position
    /// only once the append holding it has returned (with Kafka: after the
    /// transaction commit), and then exactly the newest one.
    #[tokio::test]
    async fn the_durable_position_follows_only_finished_appends() {
        let dir = tempfile::tempdir().unwrap();
        let log = GatedLog {
            inner: crate::log::EmbeddedLog::open(dir.path(), crate::log::FsyncPolicy::Never).unwrap(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        let durable = Arc::new(Mutex::new(None));
        let source = Watching {
            inner: MemSource {
                total: 3,
                next: 0,
                fail_at: vec![],
            },
            durable: durable.clone(),
        };
        let shutdown = CancellationToken::new();
        let cap = tokio::spawn(run_capture(
            source,
            log.clone(),
            PipelineMetrics::unregistered(),
            CaptureOptions::default(),
            shutdown.clone(),
        ));
        let mut watch = loop {
            if let Some(w) = durable.lock().unwrap().clone() {
                break w;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(*watch.borrow(), None, "nothing appended yet");
        // The writer now waits inside `append` with the first batch.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(log.last_seq(), 0);
        assert_eq!(
            *watch.borrow_and_update(),
            None,
            "published before the append finished"
        );
        let pos = |offset: u64| {
            Some(Position::Mysql(MysqlPosition {
                file: "b.000001".into(),
                offset,
                gtid_set: None,
            }))
        };
        // Let appends through one at a time: each published position is in the log.
        let mut seen = None;
        while seen != pos(3) {
            log.gate.add_permits(1);
            tokio::time::timeout(Duration::from_secs(10), watch.changed())
                .await
                .expect("a position after the append")
                .unwrap();
            seen = watch.borrow_and_update().clone();
            let (_, in_log) = Log::last(&log).await.unwrap().expect("appended");
            assert_eq!(seen, Some(in_log), "the published position is the log's newest");
        }
        assert_eq!(log.last_seq(), 6);
        shutdown.cancel();
        cap.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn capture_and_apply_exactly_once_through_faults_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Mutex::new(Store::default()));
        let total_txns = 300;
        let total_events: u64 = (0..total_txns).map(|i| (i % 3 + 1) as u64).sum();
        // Several "process lifetimes": each reopens the log and stops early.
        for round in 0..3 {
            let log = crate::log::EmbeddedLog::open(dir.path(), crate::log::FsyncPolicy::Never).unwrap();
            let shutdown = CancellationToken::new();
            let metrics = PipelineMetrics::unregistered();
            let source = MemSource {
                total: total_txns,
                next: 0,
                fail_at: vec![5 + round * 40, 77 + round],
            };
            let cap = tokio::spawn(run_capture(
                source,
                log.clone(),
                metrics.clone(),
                CaptureOptions {
                    channel_capacity: 4,
                    max_append_transactions: 7,
                },
                shutdown.clone(),
            ));
            let sink = MemSink {
                store: store.clone(),
                fail_every: 4,
            };
            let (_req_tx, req_rx) = mpsc::channel(1);
            let app = tokio::spawn(run_apply(
                "mem".into(),
                sink,
                log.clone(),
                metrics,
                ReplicaBoard::new(&["mem"]),
                ApplyOptions {
                    max_batch_events: 10,
                    ..ApplyOptions::default()
                },
                req_rx,
                shutdown.clone(),
            ));
            let target = if round < 2 {
                total_events / 3 * (round as u64 + 1)
            } else {
                total_events
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while store.lock().unwrap().offset < target {
                assert!(
                    Instant::now() < deadline,
                    "round {round} stalled at {}",
                    store.lock().unwrap().offset
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            shutdown.cancel();
            cap.await.unwrap().unwrap();
            app.await.unwrap().unwrap();
        }
        let s = store.lock().unwrap();
        let expected: Vec<u64> = (1..=total_events).collect();
        assert_eq!(
            s.applied_seqs, expected,
            "every seq applied exactly once, in order"
        );
    }

    #[tokio::test]
    async fn definite_sink_error_stops_without_advancing() {
        struct Broken;
        impl Sink for Broken {
            type Error = Fault;
            async fn open(&mut self) -> Result<crate::sink::Opened, Fault> {
                Ok(crate::sink::Opened::default())
            }
            async fn quarantine(&mut self, _: &Quarantine) -> Result<(), Fault> {
                Ok(())
            }
            async fn reset(&mut self, _: u64) -> Result<(), Fault> {
                Ok(())
            }
            async fn resume(
                &mut self,
                _: &TableId,
                _: &[Transaction],
                _: u64,
                _: Option<u64>,
            ) -> Result<(), Fault> {
                Ok(())
            }
            async fn apply(&mut self, _: &[Transaction], _: &HashSet<TableId>) -> Result<(), Fault> {
                Err(Fault(ErrorClass::Definite))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let log = crate::log::EmbeddedLog::open(dir.path(), crate::log::FsyncPolicy::Never).unwrap();
        let s = schema();
        let pos = Position::Postgres(1);
        log.append(&sequence_transaction(
            1,
            "x".into(),
            0,
            pos,
            vec![(
                s,
                Op::Insert {
                    after: vec![Value::Int(1)],
                },
            )],
        ))
        .unwrap();
        let board = ReplicaBoard::new(&["b"]);
        let (_req_tx, req_rx) = mpsc::channel(1);
        let r = run_apply(
            "b".into(),
            Broken,
            log.clone(),
            PipelineMetrics::unregistered(),
            board.clone(),
            ApplyOptions::default(),
            req_rx,
            CancellationToken::new(),
        )
        .await;
        // The replica stops alone (the function returns; the process goes on).
        assert!(r.is_ok(), "{r:?}");
        assert!(matches!(
            board.get("b").unwrap().state,
            ReplicaState::Stopped { .. }
        ));
        assert_eq!(log.acked("b").unwrap(), Some(0));
    }
}

#[cfg(test)]
mod snapshot_model {
    //! The snapshot merge against a simulated master: a writer changes a
    //! keyed table and a key-less one while they are copied, capture is killed
    //! twice in the middle, and a replica applying the log in order (with the
    //! appliers' rules: upserts and deletes by key, chunk 0 recreates, changes
    //! of pending tables skipped) must end equal to the master.
    use super::*;
    use crate::event::{Op, Row};
    use crate::position::MysqlPosition;
    use crate::retry::Classify;
    use crate::schema::{ColumnDef, ColumnType, TableSchema};
    use crate::snapshot::{ChunkKey, ChunkReader, ReadView, SnapshotOptions};
    use crate::value::Value;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::sync::Mutex;

    #[derive(Debug, thiserror::Error)]
    #[error("simulated failure")]
    struct SimError;
    impl Classify for SimError {
        fn class(&self) -> ErrorClass {
            ErrorClass::Transient
        }
    }

    fn pos(n: u64) -> Position {
        Position::Mysql(MysqlPosition {
            file: "b.000001".into(),
            offset: n,
            gtid_set: None,
        })
    }

    fn offset(p: &Position) -> u64 {
        match p {
            Position::Mysql(m) => m.offset,
            _ => unreachable!(),
        }
    }

    fn table(name: &str, keyed: bool) -> Arc<TableSchema> {
        let col = |n: &str| ColumnDef {
            name: n.into(),
            ty: ColumnType::Integer {
                bytes: 8,
                unsigned: false,
            },
            nullable: false,
            charset: None,
            collation: None,
            source_type: "bigint".into(),
        };
        Arc::new(TableSchema::new(
            TableId::new("app", name),
            vec![col("id"), col("v")],
            if keyed { vec![0] } else { vec![] },
        ))
    }

    /// The simulated master: two tables, and its binlog (the ops of each
    /// committed transaction; transaction `i` ends at offset `i + 1`).
    #[derive(Default)]
    struct Master {
        keyed: BTreeMap<i64, i64>,
        bag: Vec<(i64, i64)>,
        binlog: Vec<Vec<(bool, Op)>>,
    }

    type Shared = Arc<Mutex<Master>>;

    fn row(k: i64, v: i64) -> Row {
        vec![Value::Int(k), Value::Int(v)]
    }

    /// One random transaction on the master.
    fn write(m: &Shared, rng: &mut StdRng) {
        let mut m = m.lock().unwrap();
        let mut ops = Vec::new();
        for _ in 0..rng.gen_range(1..4) {
            let k = rng.gen_range(0..3000i64);
            let v = rng.gen_range(0..1_000_000i64);
            if rng.gen_bool(0.7) {
                match m.keyed.get(&k).copied() {
                    Some(old) if rng.gen_bool(0.3) => {
                        m.keyed.remove(&k);
                        ops.push((true, Op::Delete { before: row(k, old) }));
                    }
                    Some(old) if rng.gen_bool(0.2) => {
                        // A key change.
                        let k2 = rng.gen_range(0..3000i64);
                        if !m.keyed.contains_key(&k2) {
                            m.keyed.remove(&k);
                            m.keyed.insert(k2, v);
                            ops.push((
                                true,
                                Op::Update {
                                    before: row(k, old),
                                    after: row(k2, v),
                                },
                            ));
                        }
                    }
                    Some(old) => {
                        m.keyed.insert(k, v);
                        ops.push((
                            true,
                            Op::Update {
                                before: row(k, old),
                                after: row(k, v),
                            },
                        ));
                    }
                    None => {
                        m.keyed.insert(k, v);
                        ops.push((true, Op::Insert { after: row(k, v) }));
                    }
                }
            } else if !m.bag.is_empty() && rng.gen_bool(0.4) {
                let i = rng.gen_range(0..m.bag.len());
                let (a, b) = m.bag[i];
                if rng.gen_bool(0.5) {
                    m.bag.remove(i);
                    ops.push((false, Op::Delete { before: row(a, b) }));
                } else {
                    m.bag[i] = (a, v);
                    ops.push((
                        false,
                        Op::Update {
                            before: row(a, b),
                            after: row(a, v),
                        },
                    ));
                }
            } else {
                m.bag.push((k, v));
                ops.push((false, Op::Insert { after: row(k, v) }));
            }
        }
        if !ops.is_empty() {
            m.binlog.push(ops);
        }
    }

    struct SimSource {
        m: Shared,
        next: usize,
        read_to: usize,
    }

    impl Source for SimSource {
        type Error = SimError;
        async fn preflight(&mut self) -> Result<(), SimError> {
            Ok(())
        }
        async fn current_position(&mut self) -> Result<Position, SimError> {
            Ok(pos(self.m.lock().unwrap().binlog.len() as u64))
        }
        async fn start(&mut self, resume: Option<Position>) -> Result<(), SimError> {
            self.next = resume.map_or(0, |p| offset(&p) as usize);
            self.read_to = self.next;
            Ok(())
        }
        async fn next_transaction(&mut self) -> Result<CapturedTransaction, SimError> {
            loop {
                let got = {
                    let m = self.m.lock().unwrap();
                    m.binlog.get(self.next).cloned()
                };
                match got {
                    Some(ops) => {
                        let i = self.next;
                        self.next += 1;
                        self.read_to = self.next;
                        let (k, n) = (table("k", true), table("n", false));
                        return Ok(CapturedTransaction {
                            id: format!("t{i}"),
                            commit_ts_us: 0,
                            position: pos(i as u64 + 1),
                            changes: ops
                                .into_iter()
                                .map(|(keyed, op)| (if keyed { k.clone() } else { n.clone() }, op))
                                .collect(),
                        });
                    }
                    None => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
        }
        fn read_position(&self) -> Option<Position> {
            Some(pos(self.read_to as u64))
        }
    }

    struct SimSnapshots {
        m: Shared,
    }

    struct SimReader {
        m: Shared,
        view: Option<(Vec<Row>, bool)>,
        at: usize,
    }

    impl SnapshotSource for SimSnapshots {
        type Error = SimError;
        type Reader = SimReader;
        async fn tables(&self) -> Result<Vec<(TableId, u64)>, SimError> {
            let m = self.m.lock().unwrap();
            Ok(vec![
                (TableId::new("app", "k"), m.keyed.len() as u64),
                (TableId::new("app", "n"), m.bag.len() as u64),
            ])
        }
        async fn reader(&self) -> Result<SimReader, SimError> {
            Ok(SimReader {
                m: self.m.clone(),
                view: None,
                at: 0,
            })
        }
    }

    impl ChunkReader for SimReader {
        type Error = SimError;
        async fn begin(&mut self, t: &TableId) -> Result<ReadView, SimError> {
            // A consistent view: the rows and the binlog end, atomically.
            let m = self.m.lock().unwrap();
            let keyed = t.name == "k";
            let rows: Vec<Row> = if keyed {
                m.keyed.iter().map(|(k, v)| row(*k, *v)).collect()
            } else {
                m.bag.iter().map(|(k, v)| row(*k, *v)).collect()
            };
            self.view = Some((rows, keyed));
            self.at = 0;
            Ok(ReadView {
                position: pos(m.binlog.len() as u64),
                schema: table(&t.name, keyed),
                create_statement: None,
                key: if keyed {
                    ChunkKey::Columns(vec![0])
                } else {
                    ChunkKey::WholeTable
                },
            })
        }
        async fn read(&mut self, after: Option<&[Value]>, limit: usize) -> Result<Vec<Row>, SimError> {
            // Reading takes a while, so the master moves on meanwhile.
            tokio::time::sleep(Duration::from_millis(3)).await;
            let (rows, keyed) = self.view.as_ref().expect("begun");
            if *keyed {
                let after = after.map(|a| match a[0] {
                    Value::Int(k) => k,
                    _ => unreachable!(),
                });
                Ok(rows
                    .iter()
                    .filter(|r| after.is_none_or(|a| matches!(r[0], Value::Int(k) if k > a)))
                    .take(limit)
                    .cloned()
                    .collect())
            } else {
                let out: Vec<Row> = rows.iter().skip(self.at).take(limit).cloned().collect();
                self.at += out.len();
                Ok(out)
            }
        }
        async fn end(&mut self) -> Result<(), SimError> {
            self.view = None;
            Ok(())
        }
        fn is_gone(_: &SimError) -> bool {
            false
        }
    }

    /// The replica: applies the log in order with the appliers' rules.
    fn replay(events: &[crate::event::ChangeEvent]) -> (BTreeMap<i64, i64>, Vec<(i64, i64)>) {
        let mut keyed = BTreeMap::new();
        let mut bag: Vec<(i64, i64)> = Vec::new();
        let mut pending: BTreeSet<String> = BTreeSet::new();
        let kv = |r: &Row| match (&r[0], &r[1]) {
            (Value::Int(a), Value::Int(b)) => (*a, *b),
            _ => unreachable!(),
        };
        for e in events {
            let name = e.table.id.name.clone();
            let is_k = name == "k";
            match &e.op {
                Op::Snapshot(m) => {
                    if matches!(m.phase, SnapshotPhase::Begin { .. }) {
                        pending.insert(name.clone());
                    }
                    if m.phase.recreates() {
                        if is_k {
                            keyed.clear();
                        } else {
                            bag.clear();
                        }
                    }
                    if m.phase.ends_pending() {
                        pending.remove(&name);
                    }
                }
                // A chunk's rows are applied whatever the table's state.
                Op::Insert { .. } | Op::Update { .. } | Op::Delete { .. } if pending.contains(&name) => {}
                Op::Read { after } | Op::Insert { after } => {
                    let (k, v) = kv(after);
                    if is_k {
                        keyed.insert(k, v);
                    } else {
                        bag.push((k, v));
                    }
                }
                Op::Update { before, after } => {
                    let (bk, bv) = kv(before);
                    let (k, v) = kv(after);
                    if is_k {
                        keyed.remove(&bk);
                        keyed.insert(k, v);
                    } else {
                        let i = bag
                            .iter()
                            .position(|r| *r == (bk, bv))
                            .unwrap_or_else(|| panic!("seq {}: update of a row the replica lacks", e.seq));
                        bag[i] = (k, v);
                    }
                }
                Op::Delete { before } => {
                    let (bk, bv) = kv(before);
                    if is_k {
                        keyed.remove(&bk);
                    } else {
                        let i = bag
                            .iter()
                            .position(|r| *r == (bk, bv))
                            .unwrap_or_else(|| panic!("seq {}: delete of a row the replica lacks", e.seq));
                        bag.remove(i);
                    }
                }
                Op::Truncate | Op::Ddl(_) => unreachable!(),
            }
        }
        (keyed, bag)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_merge_with_live_changes_through_kills() {
        let dir = tempfile::tempdir().unwrap();
        let m: Shared = Arc::default();
        let mut rng = StdRng::seed_from_u64(7);
        // Rows that exist before capture starts (never in the binlog capture reads).
        for _ in 0..1500 {
            write(&m, &mut rng);
        }
        let preexisting = m.lock().unwrap().binlog.len();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = tokio::spawn({
            let (m, stop) = (m.clone(), stop.clone());
            async move {
                let mut rng = StdRng::seed_from_u64(8);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    write(&m, &mut rng);
                    tokio::time::sleep(Duration::from_micros(300)).await;
                }
            }
        });
        // Capture's first start begins at the binlog's end as of now.
        {
            let log = crate::log::EmbeddedLog::open(dir.path(), crate::log::FsyncPolicy::Never).unwrap();
            log.set_start_position(&pos(preexisting as u64)).await.unwrap();
        }
        let chunks_in = |log: &crate::log::EmbeddedLog| {
            log.read(1, usize::MAX)
                .unwrap()
                .iter()
                .filter(
                    |e| matches!(&e.op, Op::Snapshot(m) if matches!(m.phase, SnapshotPhase::Chunk { .. })),
                )
                .count()
        };
        let mut placed = 0;
        for round in 0..3 {
            let log = crate::log::EmbeddedLog::open(dir.path(), crate::log::FsyncPolicy::Never).unwrap();
            let shutdown = CancellationToken::new();
            let cap = tokio::spawn(run_capture_with(
                SimSource {
                    m: m.clone(),
                    next: 0,
                    read_to: 0,
                },
                Some(Snapshots {
                    source: SimSnapshots { m: m.clone() },
                    options: SnapshotOptions {
                        chunk_rows: 37,
                        parallel_tables: 2,
                        initial: true,
                        replicas: vec!["r".into()],
                        poll: Duration::from_millis(50),
                    },
                    board: Default::default(),
                    wake: Default::default(),
                }),
                log.clone(),
                PipelineMetrics::unregistered(),
                CaptureOptions::default(),
                shutdown.clone(),
            ));
            if round < 2 {
                // Kill in the middle of the copy: a few more chunks, then stop.
                let target = placed + 5;
                let deadline = Instant::now() + Duration::from_secs(30);
                while chunks_in(&log) < target {
                    assert!(Instant::now() < deadline, "round {round}: no progress");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                placed = chunks_in(&log);
                cap.abort();
                let _ = cap.await;
                continue;
            }
            // Let the copy finish, then stop the writer and let capture drain.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(Instant::now() < deadline, "snapshot did not finish");
                let done = crate::capture_state::load(&log).await.unwrap().runs.is_empty()
                    && chunks_in(&log) > placed;
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            while !writer.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let end = m.lock().unwrap().binlog.len() as u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            while log.last().unwrap().is_none_or(|(_, p)| offset(&p) < end) {
                assert!(Instant::now() < deadline, "capture did not drain");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            shutdown.cancel();
            cap.await.unwrap().unwrap();
            let events = log.read(1, usize::MAX).unwrap();
            assert!(
                events.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1),
                "gapless"
            );
            if std::env::var("DUMP").is_ok() {
                for e in &events {
                    if e.table.id.name == "n" {
                        let what = match &e.op {
                            Op::Snapshot(m) => format!("{:?} targets={:?}", m.phase, m.targets),
                            Op::Read { after } => format!("r {:?}", after),
                            Op::Insert { after } => format!("c {:?}", after),
                            Op::Update { before, after } => format!("u {:?} {:?}", before, after),
                            Op::Delete { before } => format!("d {:?}", before),
                            op => op.code().to_string(),
                        };
                        eprintln!("{} {} {} {}", e.seq, e.position, e.txn.id, what);
                    }
                }
            }
            let (keyed, mut bag) = replay(&events);
            let master = m.lock().unwrap();
            let mut want_bag = master.bag.clone();
            want_bag.sort();
            bag.sort();
            assert_eq!(keyed, master.keyed, "keyed table equals the master");
            assert_eq!(bag, want_bag, "key-less table equals the master");
            let kinds: BTreeSet<&str> = events.iter().map(|e| e.op.code()).collect();
            assert!(
                kinds.contains("r") && kinds.contains("snapshot") && kinds.contains("u"),
                "{kinds:?}"
            );
        }
    }
}
