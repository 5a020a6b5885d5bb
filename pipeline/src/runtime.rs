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
use crate::log::{Log, LogError, LogReader};
use crate::metrics::{PipelineMetrics, ReplicaLabel};
use crate::retry::{Backoff, Classify, ErrorClass};
use crate::sink::Sink;
use crate::source::{CapturedTransaction, Source};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
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
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            max_batch_events: 5000,
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
    let (tx, mut rx) = mpsc::channel::<CapturedTransaction>(options.channel_capacity.max(1));
    // Resume after the newest transaction in the log; before the first one,
    // from the start position stored on the very first start.
    let resume = log.resume_position().await?;
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
            let started = Instant::now();
            // An append the shutdown interrupts is either whole in the log or
            // not at all (the log's contract); the next start reads which.
            let bytes = tokio::select! {
                r = log.append(txns) => r?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            metrics.log_appended_bytes.inc_by(bytes);
            metrics
                .log_append_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.capture_transactions.inc_by(n);
            metrics.capture_events.inc_by(events);
            metrics.log_last_seq.set(log.last_seq());
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

/// Applies the log to one replica, from the replica's own stored offset, until
/// `shutdown` or a definite error. Transient errors are retried with backoff
/// forever (logged loudly); the offset never moves past what the replica committed.
pub async fn run_apply<K: Sink, L: Log>(
    name: String,
    mut sink: K,
    log: L,
    metrics: PipelineMetrics,
    options: ApplyOptions,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let label = ReplicaLabel {
        replica: name.clone(),
    };
    let mut backoff = Backoff::default();
    let mut notify = log.subscribe();
    let fail = |e: &dyn std::fmt::Display| RuntimeError::Apply {
        replica: name.clone(),
        message: e.to_string(),
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
        let mut applied = match sink.open().await {
            Ok(seq) => seq,
            Err(e) if e.is_transient() => {
                metrics.error("apply", ErrorClass::Transient);
                warn!(replica = %name, error = %e, attempt = backoff.attempts() + 1, "replica unavailable; retrying");
                if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                    return Ok(());
                }
                continue 'open;
            }
            Err(e) => {
                metrics.error("apply", ErrorClass::Definite);
                return Err(fail(&e));
            }
        };
        let log_last = log_try!('open, log.last().await).map_or(0, |(s, _)| s);
        if applied > log_last {
            return Err(RuntimeError::ReplicaAhead {
                replica: name.clone(),
                applied,
                log_last,
            });
        }
        info!(replica = %name, applied, "applier resuming");
        log_try!('open, reader.ack(applied).await);
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            notify.borrow_and_update();
            let txns = log_try!('open, reader.read(applied + 1, options.max_batch_events).await);
            let log_last = log.last_seq();
            metrics
                .apply_lag_events
                .get_or_create(&label)
                .set(log_last.saturating_sub(applied));
            if txns.is_empty() {
                // A shared log's head watch may run ahead of or behind this
                // reader's own fetches: look again now and then regardless.
                tokio::select! {
                    _ = notify.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                continue;
            }
            let n_events: u64 = txns.iter().map(|t| t.len() as u64).sum();
            let started = Instant::now();
            match sink.apply(&txns).await {
                Ok(()) => {
                    backoff.reset();
                    let last = txns.last().expect("non-empty");
                    applied = last.last_seq();
                    log_try!('open, reader.ack(applied).await);
                    metrics
                        .apply_batch_seconds
                        .get_or_create(&label)
                        .observe(started.elapsed().as_secs_f64());
                    metrics.apply_batches.get_or_create(&label).inc();
                    metrics.apply_events.get_or_create(&label).inc_by(n_events);
                    metrics.apply_last_seq.get_or_create(&label).set(applied);
                    metrics
                        .apply_lag_events
                        .get_or_create(&label)
                        .set(log.last_seq().saturating_sub(applied));
                    let commit_us = last.events.last().map_or(0, |e| e.txn.commit_ts_us);
                    let now_us = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as i64);
                    metrics
                        .apply_lag_seconds
                        .get_or_create(&label)
                        .set((now_us - commit_us).max(0) as f64 / 1e6);
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
                    error!(replica = %name, error = %e, "apply failed permanently");
                    return Err(fail(&e));
                }
            }
        }
    }
}

/// Periodically deletes log chunks every named consumer has applied.
pub async fn run_truncation<L: Log>(
    log: L,
    consumers: Vec<String>,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    loop {
        if sleep_or_cancel(every, &shutdown).await {
            return Ok(());
        }
        let removed = log.truncate(consumers.clone()).await?;
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
        async fn open(&mut self) -> Result<u64, Fault> {
            Ok(self.store.lock().unwrap().offset)
        }
        async fn apply(&mut self, txns: &[Transaction]) -> Result<(), Fault> {
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
            let app = tokio::spawn(run_apply(
                "mem".into(),
                sink,
                log.clone(),
                metrics,
                ApplyOptions { max_batch_events: 10 },
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
            async fn open(&mut self) -> Result<u64, Fault> {
                Ok(0)
            }
            async fn apply(&mut self, _: &[Transaction]) -> Result<(), Fault> {
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
        let r = run_apply(
            "b".into(),
            Broken,
            log.clone(),
            PipelineMetrics::unregistered(),
            ApplyOptions::default(),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(r, Err(RuntimeError::Apply { .. })), "{r:?}");
        assert_eq!(log.acked("b").unwrap(), Some(0));
    }
}
