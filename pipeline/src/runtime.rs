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

use crate::event::sequence_transaction;
use crate::filter::TableFilter;
use crate::log::{Log, LogError, LogReader};
use crate::metrics::{PipelineMetrics, ReplicaLabel};
use crate::replica::{Quarantine, ReplicaBoard, ReplicaState};
use crate::retry::{Backoff, Classify, ErrorClass};
use crate::schema::TableId;
use crate::sink::{Sink, TableScoped};
use crate::source::{CapturedTransaction, Source};
use std::collections::{BTreeMap, HashSet};
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
/// gapless `seq`s until `shutdown` or a definite error.
pub async fn run_capture<S, L>(
    mut source: S,
    log: L,
    metrics: PipelineMetrics,
    options: CaptureOptions,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError>
where
    S: Source + 'static,
    L: Log,
{
    let (tx, mut rx) = mpsc::channel::<CapturedTransaction>(options.channel_capacity.max(1));
    // Resume after the newest transaction in the log; before the first one,
    // from the start position stored on the very first start.
    let last = log.last().await?.map(|(_, p)| p);
    let resume = match &last {
        Some(p) => Some(p.clone()),
        None => log.start_position().await?,
    };
    // What the log holds durably, for sources that confirm progress upstream
    // (a PostgreSQL slot): published only once `append` has returned, which
    // the log's contract makes the point of durability (Kafka: after the
    // transaction commit).
    let (durable_tx, durable_rx) = tokio::sync::watch::channel(last);
    source.watch_durable(durable_rx);
    let reader_shutdown = shutdown.child_token();
    let reader_metrics = metrics.clone();
    let reader = tokio::spawn(read_source(
        source,
        log.clone(),
        resume,
        tx,
        reader_metrics,
        reader_shutdown.clone(),
    ));

    let writer = async {
        loop {
            let first = tokio::select! {
                t = rx.recv() => match t { Some(t) => t, None => return Ok(()) },
                _ = tokio::time::sleep(WRITER_HEARTBEAT) => {
                    log.heartbeat().await?;
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
            let newest_commit_us = pending.iter().map(|t| t.commit_ts_us).max().unwrap_or(0);
            let txns: Vec<_> = pending
                .into_iter()
                .filter(|t| !t.changes.is_empty())
                .map(|t| {
                    let txn = sequence_transaction(next_seq, t.id, t.commit_ts_us, t.position, t.changes);
                    next_seq += txn.len() as u64;
                    events += txn.len() as u64;
                    txn
                })
                .collect();
            let n = txns.len() as u64;
            let newest_position = txns.last().and_then(|t| t.position().cloned());
            let started = Instant::now();
            // An append the shutdown interrupts is either whole in the log or
            // not at all (the log's contract); the next start reads which. It
            // publishes nothing as durable.
            let bytes = tokio::select! {
                r = log.append(txns) => r?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            if newest_position.is_some() {
                durable_tx.send_replace(newest_position);
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
        }
    };
    let result: Result<(), RuntimeError> = writer.await;
    reader_shutdown.cancel();
    match reader.await {
        Ok(Ok(())) => result,
        Ok(Err(e)) => Err(e),
        Err(e) => Err(RuntimeError::Join(e.to_string())),
    }
}

async fn read_source<S: Source, L: Log>(
    mut source: S,
    log: L,
    mut resume: Option<crate::position::Position>,
    tx: mpsc::Sender<CapturedTransaction>,
    metrics: PipelineMetrics,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let mut backoff = Backoff::default();
    loop {
        match source.preflight().await {
            Ok(()) => break,
            Err(e) if e.is_transient() => {
                metrics.error("capture", ErrorClass::Transient);
                warn!(error = %e, "capture preflight could not run; retrying");
                if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                    return Ok(());
                }
            }
            Err(e) => {
                metrics.error("capture", ErrorClass::Definite);
                return Err(RuntimeError::Capture(e.to_string()));
            }
        }
    }
    backoff.reset();
    if resume.is_none() {
        // First start ever: pin "the source's current end" to a concrete
        // position and store it durably before streaming, so that a crash
        // before the first transaction reaches the log resumes here instead
        // of at a later "current end".
        let position = loop {
            match source.current_position().await {
                Ok(p) => break p,
                Err(e) if e.is_transient() => {
                    metrics.error("capture", ErrorClass::Transient);
                    warn!(error = %e, "capture could not read the source position; retrying");
                    if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                        return Ok(());
                    }
                }
                Err(e) => {
                    metrics.error("capture", ErrorClass::Definite);
                    return Err(RuntimeError::Capture(e.to_string()));
                }
            }
        };
        log.set_start_position(&position).await?;
        info!(position = %position, "capture start position stored");
        resume = Some(position);
    }
    backoff.reset();
    loop {
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
        loop {
            let next = tokio::select! {
                r = source.next_transaction() => r,
                _ = shutdown.cancelled() => return Ok(()),
            };
            match next {
                Ok(t) => {
                    backoff.reset();
                    resume = Some(t.position.clone());
                    if tx.send(t).await.is_err() {
                        return Ok(()); // the writer stopped; it reports why
                    }
                }
                Err(e) if e.is_transient() => {
                    metrics.error("capture", ErrorClass::Transient);
                    warn!(error = %e, "capture stream interrupted; reconnecting");
                    if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                        return Ok(());
                    }
                    break;
                }
                Err(e) => {
                    metrics.error("capture", ErrorClass::Definite);
                    return Err(RuntimeError::Capture(e.to_string()));
                }
            }
        }
    }
}

/// A request to lift a quarantine (from the admin server).
#[derive(Debug)]
pub struct ResumeRequest {
    pub table: TableId,
    /// What happened, for the operator.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// Reads that may come back empty before resuming a table gives up (a shared
/// log's reader answers "nothing yet" when a fetch takes longer than it waits).
const RESUME_READ_ATTEMPTS: u32 = 100;

/// What the apply loop keeps about its replica between batches.
struct ApplyState {
    applied: u64,
    quarantined: BTreeMap<TableId, Quarantine>,
}

impl ApplyState {
    /// The `seq` the log must keep everything after: the replica's offset, or
    /// just before the oldest event a quarantined table still needs.
    fn retain(&self) -> u64 {
        self.quarantined
            .values()
            .map(|q| q.first_seq.saturating_sub(1))
            .fold(self.applied, u64::min)
    }
}

/// Applies the log to one replica, from the replica's own stored offset, until
/// `shutdown`. Transient errors are retried with backoff forever (logged
/// loudly); the offset never moves past what the replica committed.
///
/// A definite error that belongs to one table quarantines that table on this
/// replica (see [`crate::replica`]) and the rest keeps flowing; any other
/// definite error stops this replica alone (its state on `board` says why) and
/// the function returns `Ok`. Only a definite failure of the log itself is
/// an `Err`; a transient one (a broker restarting) is retried like a replica
/// outage.
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
        let mut st = ApplyState {
            applied: opened.applied,
            quarantined: opened
                .quarantined
                .into_iter()
                .map(|q| (q.table.clone(), q))
                .collect(),
        };
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
                needs_snapshot(&name, &board, &metrics, &label, st.applied + 1, first);
                return Ok(());
            }
        }
        info!(replica = %name, applied = st.applied, quarantined = st.quarantined.len(), "applier resuming");
        log_try!('open, reader.ack(st.retain()).await);
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
            notify.borrow_and_update();
            let txns = match reader.read(st.applied + 1, options.max_batch_events).await {
                Err(LogError::Truncated { requested, first }) => {
                    needs_snapshot(&name, &board, &metrics, &label, requested, first);
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
            let skip: HashSet<TableId> = txns
                .iter()
                .flat_map(|t| &t.events)
                .map(|e| &e.table.id)
                .filter(|id| {
                    st.quarantined.contains_key(*id) || !options.filter.matches(&id.schema, &id.name)
                })
                .cloned()
                .collect();
            let n_events: u64 = txns
                .iter()
                .flat_map(|t| &t.events)
                .filter(|e| !skip.contains(&e.table.id))
                .count() as u64;
            let started = Instant::now();
            match sink.apply(&txns, &skip).await {
                Ok(()) => {
                    backoff.reset();
                    st.applied = txns.last().expect("non-empty").last_seq();
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
                             until `dbmux resume-table --replica {name} --table {t}`; the rest goes on");
                        metrics.apply_quarantines.get_or_create(&label).inc();
                    }
                    continue 'open;
                }
            }
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
    let mut st = ApplyState {
        applied: opened.applied,
        quarantined: opened
            .quarantined
            .into_iter()
            .map(|q| (q.table.clone(), q))
            .collect(),
    };
    let r = resume_table(name, sink, &mut reader, options, &mut st, table).await;
    if r.is_ok() {
        reader.ack(st.retain()).await.map_err(|e| e.to_string())?;
    }
    r
}

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
/// still need). A replica that needs a snapshot cannot use the log and does
/// not hold it back.
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
        let names: Vec<String> = consumers
            .iter()
            .filter(|n| {
                !board
                    .get(n)
                    .is_some_and(|r| matches!(r.state, ReplicaState::NeedsSnapshot { .. }))
            })
            .cloned()
            .collect();
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
            })
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
