//! The capture side: one transactional producer per source.
//!
//! # One append = one Kafka transaction
//! `begin`, produce every record of the appended source transactions (log
//! chunks, then change events), `commit`. On failure:
//! - a *retriable* commit error (a timeout) → commit again: the broker
//!   finishes the same transaction, nothing is written twice;
//! - an *abortable* error (a message that could not be delivered, a broker
//!   restart) → abort (readers never see aborted records) and produce the same
//!   batch again after a backoff;
//! - *fenced* (another capture took the transactional id) → stop for good;
//! - any other *fatal* producer state → a new producer re-initializes the
//!   id (aborting whatever is open), then the topic's last committed `seq`
//!   tells whether the batch landed: if it ends exactly at the batch's last
//!   `seq` it did, if at the one before the batch it did not (produce it
//!   again), anything else means another writer and is a definite error.
//!   That end is read once no transaction is open on the topic; one that
//!   stays open after the takeover is a hanging transaction (a broker crash
//!   lost its marker) and is ended by a transaction of the same producer id
//!   (see `Writer::recover` and `Writer::close_hanging`).
//!
//! Transient failures are retried until they heal, logged at WARN with the
//! attempt number: capture waits instead of losing its place.

use super::{events, reader, KafkaError, Resolved, HEADER_FORMAT, HEADER_LAST_SEQ, HEADER_SEQ};
use pipeline::codec;
use pipeline::event::{ChangeEvent, Transaction};
use pipeline::log::{LogError, CHUNK_EVENTS};
use pipeline::retry::Backoff;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A log record's payload stays below this many bytes (unless one event alone
/// is larger): small records keep fetches and reads cheap.
pub const TARGET_RECORD_BYTES: usize = 512 * 1024;

/// A `BaseProducer` served by the thread that produces: rdkafka's
/// `commit_transaction` flushes by polling this producer's queue for
/// delivery reports, and a `ThreadedProducer`'s own polling thread would take
/// them first, making every commit wait out a 100 ms poll.
type TxProducer = BaseProducer<super::Context>;

/// One record to produce inside a transaction.
pub struct Outgoing {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

/// Fault injection for crash tests: milliseconds to wait between producing a
/// transaction's records and committing it, so a test can kill capture in
/// exactly that window. Never set in production.
pub const FAULT_COMMIT_DELAY_ENV: &str = "DBMUX_FAULT_KAFKA_COMMIT_DELAY_MS";

/// Where the log topic ends, as [`Writer::recover`] reads it.
enum End {
    /// No transaction open: the last committed record, decoded.
    Last(Option<Vec<ChangeEvent>>),
    /// A transaction is open: last stable offset < high watermark.
    Open { lso: i64, hw: i64 },
}

pub struct Writer {
    resolved: Arc<Resolved>,
    commit_delay: Option<Duration>,
    producer: TxProducer,
    recovery: super::Consumer,
    /// read_uncommitted: its end of the log topic is the high watermark
    /// (see `recover`).
    uncommitted: super::Consumer,
    last_seq: u64,
}

/// How one transaction attempt failed.
enum Failure {
    /// Abort and produce the batch again.
    Abortable(String),
    /// The producer is unusable: re-initialize and find out what landed.
    Fatal(String),
    /// Another writer took over, or a definite problem: stop.
    Stop(KafkaError),
}

fn producer(r: &Resolved) -> Result<TxProducer, KafkaError> {
    r.client_config()
        .set("transactional.id", &r.transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transaction.timeout.ms", r.cfg.transaction_timeout_ms.to_string())
        .set("compression.type", &r.cfg.compression)
        .set("linger.ms", "2")
        .set(
            "message.max.bytes",
            super::config::LOG_TOPIC_MAX_MESSAGE_BYTES.to_string(),
        )
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(super::Context)
        .map_err(KafkaError::from_client)
}

impl Writer {
    /// Creates the producer, takes over the transactional id (fencing any
    /// other capture of this source and aborting what it left open), then
    /// reads where the log ends.
    pub fn open(resolved: Arc<Resolved>) -> Result<Writer, LogError> {
        let producer = init(&resolved)?;
        let (recovery, uncommitted) = end_readers(&resolved)?;
        let commit_delay = std::env::var(FAULT_COMMIT_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        if let Some(d) = commit_delay {
            warn!(delay = ?d, "fault injection: {FAULT_COMMIT_DELAY_ENV} delays every Kafka commit");
        }
        let mut w = Writer {
            resolved,
            commit_delay,
            producer,
            recovery,
            uncommitted,
            last_seq: 0,
        };
        // A previous capture's last transaction may still be completing.
        w.last_seq = w.recover()?;
        Ok(w)
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends whole transactions as one Kafka transaction; returns the log
    /// payload bytes.
    pub fn append(&mut self, txns: &[Transaction]) -> Result<u64, LogError> {
        let mut expect = self.last_seq + 1;
        for t in txns {
            t.check().map_err(LogError::Invalid)?;
            if t.first_seq() != expect {
                return Err(LogError::Gap {
                    last: expect - 1,
                    first: t.first_seq(),
                });
            }
            expect = t.last_seq() + 1;
        }
        let batch_last = expect - 1;
        let mut records = Vec::new();
        let mut bytes = 0u64;
        for t in txns {
            for (payload, first, last) in chunks(&t.events, t.len() as u32) {
                bytes += payload.len() as u64;
                let headers = OwnedHeaders::new_with_capacity(3)
                    .insert(Header {
                        key: HEADER_SEQ,
                        value: Some(first.to_string().as_bytes()),
                    })
                    .insert(Header {
                        key: HEADER_LAST_SEQ,
                        value: Some(last.to_string().as_bytes()),
                    })
                    .insert(Header {
                        key: HEADER_FORMAT,
                        value: Some(codec::FORMAT_VERSION.to_string().as_bytes()),
                    });
                records.push(Outgoing {
                    topic: self.resolved.topic.clone(),
                    key: None,
                    value: Some(payload),
                    headers: Some(headers),
                });
            }
        }
        if self.resolved.cfg.change_events.enabled {
            records.extend(events::records(&self.resolved.cfg, txns));
        }
        let before = self.last_seq;
        self.transact(&records, move |w| {
            // After a re-initialization: did the batch land?
            let last = w.recover()?;
            if last == batch_last {
                Ok(true)
            } else if last == before {
                Ok(false)
            } else {
                Err(LogError::Backend(format!(
                    "the log topic {} ends at seq {last}, but this capture wrote up to {before} and was appending {}..={batch_last}: another writer? stopping",
                    w.resolved.topic,
                    before + 1
                )))
            }
        })?;
        self.last_seq = batch_last;
        Ok(bytes)
    }

    /// Stores `value` under `key` in the meta topic (one Kafka transaction).
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<(), LogError> {
        let record = Outgoing {
            topic: self.resolved.meta_topic.clone(),
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.to_vec()),
            headers: None,
        };
        // Writing the same value twice is harmless: produce it again.
        self.transact(std::slice::from_ref(&record), |_| Ok(false))
    }

    /// [`Writer::set_meta`], then waits until a `read_committed` reader sees
    /// the value (a commit returns before its markers reach the partition;
    /// see `KafkaLog::set_meta`). The read-back starts where the meta topic
    /// ended before the write, so it costs a few records, not a scan.
    ///
    /// A value still not visible after the request timeout is written again,
    /// up to [`META_WRITE_ROUNDS`] times, before the caller gets
    /// `Unavailable`: around a broker failover the markers of a commit can
    /// take longer than that to reach the partition (CI, three brokers, one
    /// restarted: a capture-state checkpoint was not visible after 5 s, and
    /// that error stopped capture). Writing a meta value twice is harmless.
    pub fn set_meta_visible(&mut self, key: &str, value: &[u8]) -> Result<(), LogError> {
        let (topic, timeout) = (self.resolved.meta_topic.clone(), self.resolved.timeout());
        let from = reader::end_offset(&self.recovery, &topic, timeout)?;
        for round in 1..=META_WRITE_ROUNDS {
            self.set_meta(key, value)?;
            let deadline = Instant::now() + timeout;
            loop {
                let seen = reader::newest_value(&self.recovery, &topic, key, from, timeout)?;
                if seen.as_deref() == Some(value) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if round < META_WRITE_ROUNDS {
                warn!(key, topic = %topic, round, "a meta value is committed but not visible to readers after {timeout:?}; writing it again");
            }
        }
        Err(LogError::Unavailable(format!(
            "the value of {key} written to {topic} is committed but not visible to readers after \
             {META_WRITE_ROUNDS} writes of {timeout:?} each"
        )))
    }

    /// The last committed `seq` in the log topic, read again (with fresh
    /// consumers after a failure: their metadata may name a dead leader).
    ///
    /// Read only once no transaction is open on the topic: a read_committed
    /// reader stops short of an open transaction, so the end read then would
    /// be the one before it ("did not land", produced again).
    ///
    /// This producer's `init_transactions` has ended whatever the
    /// transactional id had open, so a transaction still open on the topic
    /// after [`Resolved::timeout`] is a *hanging* one: its records are in the
    /// partition, but the transaction coordinator no longer knows it, and
    /// nothing will ever end it. Seen with Kafka 4.3.1 when the only broker
    /// was killed mid-stream right after a commit had returned to this
    /// producer (the coordinator had written `PrepareCommit`): the restarted
    /// coordinator wrote `CompleteCommit` for it, but no commit marker ever
    /// reached the log partition (read back with `kafka-dump-log`).
    /// Readers then stop before it for good; and the next commit by the same
    /// producer id would commit its records along with the new batch (a
    /// partition ends a producer's transaction from its first record), which
    /// is how a batch was once in the log twice. [`Writer::close_hanging`]
    /// ends it.
    fn recover(&mut self) -> Result<u64, LogError> {
        let grace = self.resolved.timeout();
        // When a transaction was first seen open; when it was ended here.
        let mut open_since: Option<Instant> = None;
        let mut closed_at: Option<Instant> = None;
        let mut backoff = Backoff::default();
        loop {
            let resolved = self.resolved.clone();
            let (recovery, uncommitted) = (&mut self.recovery, &mut self.uncommitted);
            let end = with_retry("reading the end of the log topic", || {
                let r = match reader::stable(recovery, uncommitted, &resolved.topic, resolved.timeout()) {
                    Ok((true, _, _)) => {
                        reader::last_record(recovery, &resolved.topic, resolved.timeout()).map(End::Last)
                    }
                    Ok((false, lso, hw)) => Ok(End::Open { lso, hw }),
                    Err(e) => Err(e),
                };
                if r.is_err() {
                    (*recovery, *uncommitted) = end_readers(&resolved)?;
                }
                r
            })?;
            let (lso, hw) = match end {
                End::Last(events) => return Ok(events.and_then(|e| e.last().map(|e| e.seq)).unwrap_or(0)),
                End::Open { lso, hw } => (lso, hw),
            };
            let since = *open_since.get_or_insert_with(Instant::now);
            match closed_at {
                None if since.elapsed() >= grace => {
                    if self.close_hanging(lso)? {
                        closed_at = Some(Instant::now());
                        // (Its markers land just after the commit returns.)
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
                // Ended here, and still open after the grace: not this
                // producer id's transaction.
                Some(at) if at.elapsed() >= grace => warn!(
                    topic = %self.resolved.topic, last_stable_offset = lso, high_watermark = hw,
                    attempt = backoff.attempts() + 1,
                    "a transaction of another producer is open on the log topic, and capture cannot end it; \
                     waiting for its commit or abort before reading where the log ends. Find and end it with \
                     `kafka-transactions.sh find-hanging` and `kafka-transactions.sh abort`"
                ),
                _ => warn!(
                    topic = %self.resolved.topic, last_stable_offset = lso, high_watermark = hw,
                    attempt = backoff.attempts() + 1,
                    "a transaction is still open on the log topic; waiting for its commit or abort before \
                     reading where the log ends"
                ),
            }
            std::thread::sleep(backoff.next_delay());
        }
    }

    /// Ends the hanging transaction that starts at offset `lso` of the log
    /// topic (see [`Writer::recover`]) with a transaction of this producer
    /// id that produces one filler record ([`super::HEADER_FILLER`], skipped
    /// by readers) to the log partition: its marker ends the hanging
    /// transaction too, from that one's first record. How it ends it is
    /// decided by what the hanging records hold ([`ending`]):
    /// - whole transactions that continue the log exactly: **committed**.
    ///   This is what the producer was told (a commit that returned, its
    ///   marker lost); were it still unconfirmed, committing whole
    ///   transactions in order is as right as producing them again, which
    ///   the caller then does not do;
    /// - anything else (a transaction cut short, records that do not
    ///   continue the log, not dbmux's): **aborted**, never read. If the
    ///   producer had been told part of it was committed, the caller finds
    ///   the log ending before what it wrote and stops (loudly).
    ///
    /// Returns whether the marker was written; `false` after a failure that
    /// may heal (tried again).
    fn close_hanging(&mut self, lso: i64) -> Result<bool, LogError> {
        let (topic, timeout) = (self.resolved.topic.clone(), self.resolved.timeout());
        let read = reader::last_record(&self.recovery, &topic, timeout).and_then(|last| {
            let last = last.and_then(|e| e.last().map(|e| e.seq)).unwrap_or(0);
            let held = reader::records_from(&self.uncommitted, &topic, lso, timeout)?;
            Ok((last, held))
        });
        let (last, held) = match read {
            Ok(v) => v,
            Err(KafkaError::Transient(m)) => {
                warn!(error = %m, "cannot read the hanging transaction on the log topic yet; retrying");
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let ending = ending(last, &held);
        let commit = match &ending {
            Ending::Commit { first, last } => {
                warn!(
                    topic = %topic, last_stable_offset = lso, first_seq = first, last_seq = last,
                    "a transaction has stayed open on the log topic after this producer took over its \
                     transactional id: a hanging transaction (the broker lost its marker, e.g. when the only \
                     broker was killed). It holds whole transactions that continue the log: committing it"
                );
                true
            }
            Ending::Abort(why) => {
                warn!(
                    topic = %topic, last_stable_offset = lso, reason = %why,
                    "a transaction has stayed open on the log topic after this producer took over its \
                     transactional id: a hanging transaction (the broker lost its marker, e.g. when the only \
                     broker was killed). Aborting it: its records are never read"
                );
                false
            }
        };
        let record = Outgoing {
            topic: topic.clone(),
            key: None,
            value: None,
            headers: Some(OwnedHeaders::new_with_capacity(1).insert(Header {
                key: super::HEADER_FILLER,
                value: Some(b"ends a hanging transaction".as_slice()),
            })),
        };
        let sent = |f: Failure| match f {
            Failure::Stop(e) => e,
            Failure::Abortable(m) | Failure::Fatal(m) => KafkaError::Transient(m),
        };
        let result = self
            .producer
            .begin_transaction()
            .map_err(KafkaError::from_client)
            .and_then(|()| self.send(&record).map_err(sent))
            .and_then(|()| self.producer.flush(timeout).map_err(KafkaError::from_client))
            .and_then(|()| {
                if commit {
                    self.producer.commit_transaction(timeout)
                } else {
                    self.producer.abort_transaction(timeout)
                }
                .map_err(KafkaError::from_client)
            });
        match result {
            Ok(()) => {
                info!(topic = %topic, committed = commit, "the hanging transaction is ended");
                Ok(true)
            }
            Err(KafkaError::Fenced(m)) => Err(LogError::Fenced(m)),
            Err(e) => {
                warn!(error = %e, "ending the hanging transaction failed; re-initializing the producer");
                self.reinit()?;
                Ok(false)
            }
        }
    }

    /// Produces `records` in one Kafka transaction, retrying until it is
    /// committed. `landed` is asked after a producer re-initialization
    /// whether the transaction had been committed after all.
    fn transact(
        &mut self,
        records: &[Outgoing],
        landed: impl Fn(&mut Writer) -> Result<bool, LogError>,
    ) -> Result<(), LogError> {
        let mut backoff = Backoff::default();
        loop {
            let failure = match self.attempt(records) {
                Ok(()) => return Ok(()),
                Err(f) => f,
            };
            match failure {
                Failure::Stop(e) => return Err(e.into()),
                Failure::Abortable(msg) => {
                    warn!(error = %msg, attempt = backoff.attempts() + 1,
                        "Kafka transaction failed; aborting it and producing the batch again");
                    if let Err(e) = self.producer.abort_transaction(self.resolved.timeout()) {
                        match KafkaError::from_client(e) {
                            KafkaError::Fenced(m) => return Err(LogError::Fenced(m)),
                            other => {
                                warn!(error = %other, "abort failed; re-initializing the producer");
                                self.reinit()?;
                                if landed(self)? {
                                    return Ok(());
                                }
                            }
                        }
                    }
                }
                Failure::Fatal(msg) => {
                    warn!(error = %msg, attempt = backoff.attempts() + 1,
                        "Kafka producer failed; re-initializing it");
                    self.reinit()?;
                    if landed(self)? {
                        info!("the interrupted Kafka transaction had been committed");
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(backoff.next_delay());
        }
    }

    fn reinit(&mut self) -> Result<(), LogError> {
        self.producer = init(&self.resolved)?;
        Ok(())
    }

    fn attempt(&self, records: &[Outgoing]) -> Result<(), Failure> {
        let classify = |e: rdkafka::error::KafkaError| -> Failure {
            if let rdkafka::error::KafkaError::Transaction(t) = &e {
                if t.txn_requires_abort() {
                    return Failure::Abortable(t.string());
                }
            }
            match KafkaError::from_client(e) {
                KafkaError::Fenced(m) => Failure::Stop(KafkaError::Fenced(m)),
                KafkaError::Transient(m) => Failure::Fatal(m),
                other => Failure::Stop(other),
            }
        };
        let started = Instant::now();
        self.producer.begin_transaction().map_err(classify)?;
        for r in records {
            self.send(r)?;
        }
        let produced = started.elapsed();
        // rdkafka's commit flushes by polling in 100 ms slices that do not
        // end early; serving the delivery reports here in 1 ms slices first
        // saves ~100 ms per transaction (the commit's own flush then finds
        // nothing outstanding). Bounded: the commit flushes whatever is left.
        let flush_until = Instant::now() + Duration::from_millis(500);
        while self.producer.in_flight_count() > 0 && Instant::now() < flush_until {
            self.producer.poll(Duration::from_millis(1));
        }
        // Only transactions that append to the log topic: a test kills
        // capture in this window to leave aborted *log* records, and the
        // metadata writes (capture's state checkpoint, heartbeats) must not
        // take the place of the append it waits for.
        let appends = records.iter().any(|r| r.topic == self.resolved.topic);
        if let (Some(d), true) = (self.commit_delay, appends) {
            self.producer.flush(d).ok();
            info!("fault injection: records produced, waiting {d:?} before the commit");
            std::thread::sleep(d);
        }
        // A commit that times out may be called again: the broker completes
        // the same transaction.
        let deadline = Instant::now() + Duration::from_millis(self.resolved.cfg.transaction_timeout_ms * 3);
        loop {
            match self.producer.commit_transaction(self.resolved.timeout()) {
                Ok(()) => {
                    tracing::debug!(records = records.len(), ?produced, total = ?started.elapsed(), "Kafka transaction committed");
                    return Ok(());
                }
                Err(rdkafka::error::KafkaError::Transaction(t))
                    if t.is_retriable() && Instant::now() < deadline =>
                {
                    warn!(error = %t.string(), "Kafka commit not confirmed yet; committing again");
                }
                Err(e) => return Err(classify(e)),
            }
        }
    }

    fn send(&self, r: &Outgoing) -> Result<(), Failure> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&r.topic);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_slice());
        }
        if let Some(h) = &r.headers {
            record = record.headers(h.clone());
        }
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    // The local queue is full: serve delivery reports while
                    // librdkafka sends, then try again.
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    return Err(match KafkaError::from_client(e) {
                        KafkaError::Fenced(m) => Failure::Stop(KafkaError::Fenced(m)),
                        KafkaError::Definite(m) => Failure::Stop(KafkaError::Definite(m)),
                        other => Failure::Abortable(other.to_string()),
                    });
                }
            }
        }
    }
}

/// The writer's two readers of where the log topic ends: `read_committed`
/// (the last committed record, the last stable offset) and
/// `read_uncommitted` (the high watermark, and the records of an open
/// transaction).
fn end_readers(r: &Resolved) -> Result<(super::Consumer, super::Consumer), KafkaError> {
    let group = r.group_for("dbmux-capture");
    Ok((r.consumer(&group)?, r.consumer_at(&group, "read_uncommitted")?))
}

/// A producer that owns the transactional id: `init_transactions` fences
/// any older producer with the same id and aborts its open transaction.
fn init(r: &Resolved) -> Result<TxProducer, LogError> {
    let p = producer(r)?;
    with_retry("initializing the transactional producer", || {
        p.init_transactions(r.timeout()).map_err(KafkaError::from_client)
    })?;
    Ok(p)
}

/// How many times [`Writer::set_meta_visible`] writes a value that readers
/// do not see yet before it gives up.
const META_WRITE_ROUNDS: u32 = 4;

/// Retries transient failures with backoff (logged), for as long as they
/// last; other errors are returned.
pub(crate) fn with_retry<T>(what: &str, mut f: impl FnMut() -> Result<T, KafkaError>) -> Result<T, LogError> {
    let mut backoff = Backoff::default();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(KafkaError::Transient(m)) => {
                warn!(error = %m, attempt = backoff.attempts() + 1, "Kafka unavailable while {what}; retrying");
                std::thread::sleep(backoff.next_delay());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How [`Writer::close_hanging`] ends a hanging transaction.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// Its records are whole transactions that continue the log exactly.
    Commit { first: u64, last: u64 },
    /// Anything else, and why.
    Abort(String),
}

/// Judges the records of a hanging transaction (`None`: not a dbmux log
/// record), given the last committed `seq` of the log.
fn ending(committed_last: u64, held: &[Option<Vec<ChangeEvent>>]) -> Ending {
    if held.is_empty() {
        return Ending::Abort("none of its records could be read".into());
    }
    let mut next = committed_last + 1;
    let mut whole = true;
    for (i, record) in held.iter().enumerate() {
        let Some(events) = record else {
            return Ending::Abort(format!("its record {i} is not a dbmux log record"));
        };
        for e in events {
            if e.seq != next {
                return Ending::Abort(format!(
                    "it does not continue the log: seq {} where seq {next} comes next",
                    e.seq
                ));
            }
            next += 1;
            whole = e.txn.last;
        }
    }
    if !whole {
        return Ending::Abort(format!("it ends inside a transaction, at seq {}", next - 1));
    }
    Ending::Commit {
        first: committed_last + 1,
        last: next - 1,
    }
}

/// Splits one transaction's events into record payloads of at most
/// [`CHUNK_EVENTS`] events and about [`TARGET_RECORD_BYTES`] bytes; returns
/// `(payload, first seq, last seq)`.
pub fn chunks(events: &[ChangeEvent], txn_len: u32) -> Vec<(Vec<u8>, u64, u64)> {
    let mut out = Vec::new();
    for part in events.chunks(CHUNK_EVENTS) {
        split(part, txn_len, &mut out);
    }
    out
}

fn split(events: &[ChangeEvent], txn_len: u32, out: &mut Vec<(Vec<u8>, u64, u64)>) {
    let payload = codec::encode(events, txn_len);
    if payload.len() <= TARGET_RECORD_BYTES || events.len() == 1 {
        out.push((payload, events[0].seq, events[events.len() - 1].seq));
        return;
    }
    let (a, b) = events.split_at(events.len() / 2);
    split(a, txn_len, out);
    split(b, txn_len, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::event::{sequence_transaction, Op};
    use pipeline::position::Position;
    use pipeline::schema::{ColumnDef, ColumnType, TableId, TableSchema};
    use pipeline::value::Value;

    /// A transaction of `n` small inserts from `first`, as records of
    /// `per_record` events.
    fn records(first: u64, n: usize, per_record: usize) -> Vec<Option<Vec<ChangeEvent>>> {
        let s = std::sync::Arc::new(TableSchema::new(
            TableId::new("app", "t"),
            vec![ColumnDef {
                name: "id".into(),
                ty: ColumnType::Integer {
                    bytes: 8,
                    unsigned: false,
                },
                nullable: false,
                charset: None,
                collation: None,
                source_type: "bigint".into(),
            }],
            vec![0],
        ));
        let changes = (0..n)
            .map(|i| {
                (
                    s.clone(),
                    Op::Insert {
                        after: vec![Value::Int(i as i64)],
                    },
                )
            })
            .collect();
        let t = sequence_transaction(first, "0-1-9".into(), 5, Position::Postgres(first), changes);
        t.events.chunks(per_record).map(|c| Some(c.to_vec())).collect()
    }

    #[test]
    fn a_hanging_transaction_of_whole_transactions_continuing_the_log_is_committed() {
        let mut held = records(11, 5, 2);
        held.extend(records(16, 1, 1));
        assert_eq!(ending(10, &held), Ending::Commit { first: 11, last: 16 });
        // From an empty log.
        assert_eq!(ending(0, &records(1, 3, 3)), Ending::Commit { first: 1, last: 3 });
    }

    #[test]
    fn any_other_hanging_transaction_is_aborted() {
        let abort =
            |committed: u64, held: &[Option<Vec<ChangeEvent>>], why: &str| match ending(committed, held) {
                Ending::Abort(reason) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{other:?} for {why}"),
            };
        // Cut short inside a transaction.
        let mut cut = records(11, 5, 2);
        cut.pop();
        abort(10, &cut, "ends inside a transaction, at seq 14");
        // Whole, then a second one cut short.
        let mut held = records(11, 2, 2);
        held.extend(records(13, 4, 2).into_iter().take(1));
        abort(10, &held, "ends inside a transaction, at seq 14");
        // Not continuing the log: a gap, a repeat.
        abort(10, &records(12, 2, 2), "seq 12 where seq 11 comes next");
        abort(10, &records(10, 2, 2), "seq 10 where seq 11 comes next");
        // Not dbmux records; nothing readable.
        let mut foreign = records(11, 2, 1);
        foreign.insert(1, None);
        abort(10, &foreign, "record 1 is not a dbmux log record");
        abort(10, &[], "none of its records");
    }

    #[test]
    fn chunks_are_bounded_and_decode_back_to_the_transaction() {
        let s = std::sync::Arc::new(TableSchema::new(
            TableId::new("app", "t"),
            vec![ColumnDef {
                name: "v".into(),
                ty: ColumnType::VarChar { length: 30_000 },
                nullable: false,
                charset: Some("utf8mb4".into()),
                collation: Some("utf8mb4_bin".into()),
                source_type: "varchar(30000)".into(),
            }],
            vec![],
        ));
        let big = "x".repeat(20_000);
        let changes = (0..300)
            .map(|i| {
                (
                    s.clone(),
                    Op::Insert {
                        after: vec![Value::Text(format!("{i}{big}"))],
                    },
                )
            })
            .collect();
        let t = sequence_transaction(41, "0-1-9".into(), 5, Position::Postgres(7), changes);
        let parts = chunks(&t.events, t.len() as u32);
        assert!(parts.len() > 1);
        let mut decoded = Vec::new();
        let mut next = 41;
        for (payload, first, last) in &parts {
            assert!(payload.len() <= TARGET_RECORD_BYTES, "{}", payload.len());
            assert_eq!(*first, next);
            let events = codec::decode(payload).unwrap();
            assert_eq!(events.last().unwrap().seq, *last);
            next = last + 1;
            decoded.extend(events);
        }
        assert_eq!(decoded, t.events);
    }
}
