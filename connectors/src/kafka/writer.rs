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
        let group = resolved.group_for("dbmux-capture");
        let recovery = resolved.consumer(&group)?;
        let uncommitted = resolved.consumer_at(&group, "read_uncommitted")?;
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
    pub fn set_meta_visible(&mut self, key: &str, value: &[u8]) -> Result<(), LogError> {
        let (topic, timeout) = (self.resolved.meta_topic.clone(), self.resolved.timeout());
        let from = reader::end_offset(&self.recovery, &topic, timeout)?;
        self.set_meta(key, value)?;
        let deadline = Instant::now() + timeout;
        loop {
            let seen = reader::newest_value(&self.recovery, &topic, key, from, timeout)?;
            if seen.as_deref() == Some(value) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LogError::Unavailable(format!(
                    "the value of {key} written to {topic} is committed but not visible to readers after {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last committed `seq` in the log topic, read again (with fresh
    /// consumers after a failure: their metadata may name a dead leader).
    ///
    /// Read only once no transaction is open on the topic. Why: a producer's
    /// re-initialization (or a new capture's) can return while its previous
    /// transaction's commit markers are still on their way (seen after a
    /// broker restart: the markers landed 5 s after the new producer's
    /// init). A read_committed reader stops short of such a transaction, so
    /// the end read then is the one before the batch: "did not land",
    /// produced again, and the log held every seq of it twice.
    fn recover(&mut self) -> Result<u64, LogError> {
        let resolved = self.resolved.clone();
        let (recovery, uncommitted) = (&mut self.recovery, &mut self.uncommitted);
        Ok(with_retry("reading the end of the log topic", || {
            let r = match reader::stable(recovery, uncommitted, &resolved.topic, resolved.timeout()) {
                Ok((true, _, _)) => reader::last_record(recovery, &resolved.topic, resolved.timeout()),
                Ok((false, lso, hw)) => {
                    return Err(KafkaError::Transient(format!(
                        "a transaction is still open on {} (last stable offset {lso}, high watermark {hw}); \
                         waiting for its commit or abort before reading where the log ends",
                        resolved.topic
                    )))
                }
                Err(e) => Err(e),
            };
            if r.is_err() {
                let group = resolved.group_for("dbmux-capture");
                *recovery = resolved.consumer(&group)?;
                *uncommitted = resolved.consumer_at(&group, "read_uncommitted")?;
            }
            r
        })?
        .and_then(|events| events.last().map(|e| e.seq))
        .unwrap_or(0))
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

/// A producer that owns the transactional id: `init_transactions` fences
/// any older producer with the same id and aborts its open transaction.
fn init(r: &Resolved) -> Result<TxProducer, LogError> {
    let p = producer(r)?;
    with_retry("initializing the transactional producer", || {
        p.init_transactions(r.timeout()).map_err(KafkaError::from_client)
    })?;
    Ok(p)
}

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
