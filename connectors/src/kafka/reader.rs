//! The read side: read_committed consumers positioned by `seq`.
//!
//! # Positioning
//! Kafka offsets and `seq`s differ (records are chunks of events; commit and
//! abort markers and aborted records take offsets too), so a reader finds
//! the record holding a `seq`:
//! 1. the offset its consumer group committed after the last acknowledged
//!    transaction (a hint: checked, never trusted);
//! 2. else a binary search over the partition: a probe at offset `o` returns
//!    the first committed record at or after `o`, whose `dbmux-seq` header
//!    is compared with the wanted `seq`.
//!
//! # Checks
//! Records must continue each other exactly (`first seq = previous last + 1`);
//! anything else is a definite error naming both `seq`s (a log written by
//! two writers, or damaged), never a silent skip.

use super::Consumer as KConsumer;
use super::{Inner, KafkaError, Resolved, HEADER_FILLER, HEADER_LAST_SEQ, HEADER_SEQ};
use pipeline::codec;
use pipeline::event::{ChangeEvent, Transaction};
use pipeline::log::{into_transactions, LogError, LogReader};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a read waits for a first record before saying "nothing yet".
const READ_WAIT: Duration = Duration::from_millis(200);
/// Offset hints kept for acknowledgements.
const MAX_OFFSET_HINTS: usize = 100_000;

fn header_u64(m: &BorrowedMessage<'_>, name: &str) -> Option<u64> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// A filler record (see [`HEADER_FILLER`]): not part of the log's content.
fn is_filler(m: &BorrowedMessage<'_>) -> bool {
    m.headers()
        .is_some_and(|h| h.iter().any(|h| h.key == HEADER_FILLER))
}

fn decode(m: &BorrowedMessage<'_>) -> Result<Vec<ChangeEvent>, KafkaError> {
    let payload = m.payload().unwrap_or_default();
    let events = codec::decode(payload).map_err(|e| {
        KafkaError::Definite(format!(
            "record at offset {} of {} is not a dbmux log record: {e}",
            m.offset(),
            m.topic()
        ))
    })?;
    if events.is_empty() {
        return Err(KafkaError::Definite(format!(
            "record at offset {} of {} holds no event",
            m.offset(),
            m.topic()
        )));
    }
    Ok(events)
}

/// `(first seq, last seq)` of a log record, from its headers (else its payload).
fn seq_range(m: &BorrowedMessage<'_>) -> Result<(u64, u64), KafkaError> {
    match (header_u64(m, HEADER_SEQ), header_u64(m, HEADER_LAST_SEQ)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => {
            let events = decode(m)?;
            Ok((events[0].seq, events[events.len() - 1].seq))
        }
    }
}

fn assign(c: &KConsumer, topic: &str, offset: Offset) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, offset)
        .map_err(KafkaError::from_client)?;
    c.assign(&tpl).map_err(KafkaError::from_client)
}

fn watermarks(c: &KConsumer, topic: &str, timeout: Duration) -> Result<(i64, i64), KafkaError> {
    c.fetch_watermarks(topic, 0, timeout)
        .map_err(KafkaError::from_client)
}

/// Polls until a data record arrives (`Some`), the end of the partition is
/// reached (`None`), or `timeout` passes (a transient error). Filler records
/// are passed over.
fn next_record<'c>(
    c: &'c KConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Option<BorrowedMessage<'c>>, KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if is_filler(&m) => {}
            Some(Ok(m)) => return Ok(Some(m)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(None),
            Some(Err(e)) => match KafkaError::from_client(e) {
                KafkaError::Transient(m) if Instant::now() < deadline => {
                    tracing::debug!(error = %m, "Kafka consumer error; still waiting");
                }
                other => return Err(other),
            },
            None if Instant::now() >= deadline => {
                return Err(KafkaError::Transient(format!(
                    "no answer from the brokers reading {topic} within {timeout:?}"
                )))
            }
            None => {}
        }
    }
}

/// Whether no transaction is open on `topic`: its last stable offset (the
/// end `committed`, a read_committed consumer, is told of: librdkafka's
/// watermark query honours the isolation level) has reached its high
/// watermark (the end `uncommitted`, a read_uncommitted one, is told of).
/// Until then a read_committed read of the end may still change: a commit
/// or an abort whose markers have not reached the partition yet.
pub fn stable(
    committed: &KConsumer,
    uncommitted: &KConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<(bool, i64, i64), KafkaError> {
    let (_, lso) = watermarks(committed, topic, timeout)?;
    let (_, hw) = watermarks(uncommitted, topic, timeout)?;
    Ok((lso >= hw, lso, hw))
}

/// The records of `topic` from offset `from` to its end, read by `c` (a
/// `read_uncommitted` consumer: records of open transactions too), decoded;
/// `None` for a record that is not a dbmux log record. Filler records are
/// passed over.
pub fn records_from(
    c: &KConsumer,
    topic: &str,
    from: i64,
    timeout: Duration,
) -> Result<Vec<Option<Vec<ChangeEvent>>>, KafkaError> {
    assign(c, topic, Offset::Offset(from))?;
    let mut out = Vec::new();
    while let Some(m) = next_record(c, topic, timeout)? {
        out.push(decode(&m).ok());
    }
    Ok(out)
}

/// The last committed record of the log topic, decoded (`None`: empty).
/// Reads a growing window back from the end: aborted records and
/// transaction markers at the tail take offsets but are not returned.
pub fn last_record(
    c: &KConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Option<Vec<ChangeEvent>>, KafkaError> {
    let (low, high) = watermarks(c, topic, timeout)?;
    if high <= low {
        return emptied(topic, low);
    }
    let mut window = 64i64;
    loop {
        let start = (high - window).max(low);
        assign(c, topic, Offset::Offset(start))?;
        let mut last = None;
        while let Some(m) = next_record(c, topic, timeout)? {
            last = Some(decode(&m)?);
        }
        if let Some(events) = last {
            let tail = events.last().expect("non-empty");
            if !tail.txn.last {
                return Err(KafkaError::Definite(format!(
                    "the last committed record of {topic} ends inside a transaction (seq {}): not written by dbmux's capture",
                    tail.seq
                )));
            }
            return Ok(Some(events));
        }
        if start == low {
            return emptied(topic, low);
        }
        window = window.saturating_mul(16);
    }
}

/// An empty log topic is a fresh log, unless records were deleted from it.
fn emptied<T>(topic: &str, low: i64) -> Result<Option<T>, KafkaError> {
    if low > 0 {
        return Err(KafkaError::Unsafe(format!(
            "the log topic {topic} holds no record but starts at offset {low}: its records were deleted \
             (retention?). Capture would restart numbering and lose its place; restore the topic or reset the pipeline"
        )));
    }
    Ok(None)
}

/// The `seq` of the oldest stored event.
pub fn first_seq(c: &KConsumer, topic: &str, timeout: Duration) -> Result<Option<u64>, KafkaError> {
    let (low, high) = watermarks(c, topic, timeout)?;
    if high <= low {
        return Ok(None);
    }
    assign(c, topic, Offset::Offset(low))?;
    match next_record(c, topic, timeout)? {
        Some(m) => Ok(Some(seq_range(&m)?.0)),
        None => Ok(None),
    }
}

/// The first committed record at or after `offset`: `(its offset, first seq, last seq)`.
fn probe_at(
    c: &KConsumer,
    topic: &str,
    offset: i64,
    timeout: Duration,
) -> Result<Option<(i64, u64, u64)>, KafkaError> {
    assign(c, topic, Offset::Offset(offset))?;
    match next_record(c, topic, timeout)? {
        Some(m) => {
            let (a, b) = seq_range(&m)?;
            Ok(Some((m.offset(), a, b)))
        }
        None => Ok(None),
    }
}

/// The record holding `seq`: its offset and events; `None` when the topic
/// does not hold it (older than its first record, or not written yet).
/// `from` is an offset known to be at or before that record (a hint from an
/// earlier search, checked): the binary search then covers only what lies
/// beyond it.
pub fn record_holding(
    c: &KConsumer,
    topic: &str,
    seq: u64,
    from: Option<i64>,
    timeout: Duration,
) -> Result<Option<(i64, Vec<ChangeEvent>)>, KafkaError> {
    let (low, high) = watermarks(c, topic, timeout)?;
    if high <= low {
        return Ok(None);
    }
    let mut lo = match from.filter(|o| *o > low && *o < high) {
        Some(h) => match probe_at(c, topic, h, timeout)? {
            Some((off, first, _)) if first <= seq => Some(off),
            _ => None,
        },
        None => None,
    };
    if lo.is_none() {
        match probe_at(c, topic, low, timeout)? {
            Some((off, first, _)) if first <= seq => lo = Some(off),
            _ => return Ok(None),
        }
    }
    let mut lo = lo.expect("set above");
    let mut hi = high;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match probe_at(c, topic, mid, timeout)? {
            Some((off, first, _)) if first <= seq => lo = off,
            _ => hi = mid,
        }
    }
    assign(c, topic, Offset::Offset(lo))?;
    let Some(m) = next_record(c, topic, timeout)? else {
        return Ok(None);
    };
    let events = decode(&m)?;
    let holds = events.first().is_some_and(|e| e.seq <= seq) && events.last().is_some_and(|e| e.seq >= seq);
    Ok(holds.then(|| (m.offset(), events)))
}

/// The newest committed value of `key` in the meta topic.
pub fn meta(c: &KConsumer, topic: &str, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, KafkaError> {
    let (low, high) = watermarks(c, topic, timeout)?;
    if high <= low {
        return Ok(None);
    }
    newest_value(c, topic, key, low, timeout)
}

/// Where `topic` ends now (the offset its next record will take, at most).
pub fn end_offset(c: &KConsumer, topic: &str, timeout: Duration) -> Result<i64, KafkaError> {
    Ok(watermarks(c, topic, timeout)?.1)
}

/// The newest value of `key` among the committed records from offset `from`
/// on (`None`: none there).
pub fn newest_value(
    c: &KConsumer,
    topic: &str,
    key: &str,
    from: i64,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, KafkaError> {
    assign(c, topic, Offset::Offset(from))?;
    let mut value = None;
    while let Some(m) = next_record(c, topic, timeout)? {
        if m.key() == Some(key.as_bytes()) {
            value = m.payload().map(<[u8]>::to_vec);
        }
    }
    Ok(value)
}

/// Follows the newest `seq` of the log topic into `head` until `stop`.
pub(crate) fn spawn_head_watcher(
    resolved: Arc<Resolved>,
    head: watch::Sender<u64>,
    stop: Arc<AtomicBool>,
) -> Result<(), KafkaError> {
    let group = resolved.group_for("dbmux-head");
    let mut consumer = resolved.consumer(&group)?;
    std::thread::Builder::new()
        .name("dbmux-kafka-head".into())
        .spawn(move || {
            let mut backoff = pipeline::retry::Backoff::default();
            while !stop.load(Ordering::SeqCst) {
                match last_record(&consumer, &resolved.topic, resolved.timeout()) {
                    Ok(Some(events)) => {
                        let seq = events.last().map_or(0, |e| e.seq);
                        head.send_if_modified(|h| std::mem::replace(h, seq) != seq);
                    }
                    Ok(None) => {
                        // An empty log: follow it from its beginning.
                        if let Err(e) = assign(&consumer, &resolved.topic, Offset::Beginning) {
                            tracing::warn!(error = %e, "cannot follow the head of the Kafka log; retrying");
                            std::thread::sleep(backoff.next_delay());
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the head of the Kafka log; retrying");
                        std::thread::sleep(backoff.next_delay());
                        if let Ok(c) = resolved.consumer(&group) {
                            consumer = c;
                        }
                        continue;
                    }
                }
                backoff.reset();
                // The consumer now stands at the end: follow what comes next.
                while !stop.load(Ordering::SeqCst) {
                    match consumer.poll(Duration::from_millis(200)) {
                        Some(Ok(m)) => {
                            if let Some(seq) = header_u64(&m, HEADER_LAST_SEQ) {
                                head.send_if_modified(|h| {
                                    let newer = seq > *h;
                                    if newer {
                                        *h = seq;
                                    }
                                    newer
                                });
                            }
                        }
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
                        Some(Err(e)) => {
                            // librdkafka reconnects by itself; say so once in a while.
                            tracing::debug!(error = %e, "Kafka head watcher");
                        }
                    }
                }
            }
        })
        .map_err(|e| KafkaError::Definite(format!("starting the head watcher: {e}")))?;
    Ok(())
}

/// The cursor's state, moved into blocking tasks.
struct Cursor {
    consumer: KConsumer,
    resolved: Arc<Resolved>,
    group: String,
    /// The `seq` the next [`Cursor::read`] continues from without repositioning.
    next: Option<u64>,
    /// Events fetched but not returned yet (the rest of a record).
    buf: VecDeque<ChangeEvent>,
    /// The `seq` the next fetched record must start at (`None`: right after positioning).
    expect: Option<u64>,
    at_eof: bool,
    /// `(last seq of a record, offset after it)`, for the acknowledgement hint.
    offsets: VecDeque<(u64, i64)>,
}

impl Cursor {
    /// Reads whole transactions from `from` (see [`LogReader::read`]).
    fn read(&mut self, from: u64, max_events: usize) -> Result<Vec<Transaction>, KafkaError> {
        let r = self.read_inner(from, max_events);
        if matches!(r, Err(KafkaError::Transient(_))) {
            // Start over with a fresh consumer: the old one's metadata may
            // name a broker that is gone.
            self.next = None;
            self.consumer = self.resolved.consumer(&self.group)?;
        }
        r
    }

    fn read_inner(&mut self, from: u64, max_events: usize) -> Result<Vec<Transaction>, KafkaError> {
        if self.next != Some(from) {
            self.next = None;
            self.position(from)?;
        }
        let mut out: Vec<ChangeEvent> = Vec::new();
        let mut mid_txn_since: Option<Instant> = None;
        loop {
            while let Some(e) = self.buf.pop_front() {
                let last = e.txn.last;
                out.push(e);
                if last && out.len() >= max_events {
                    return self.done(from, out);
                }
            }
            let boundary = out.last().is_none_or(|e| e.txn.last);
            if boundary && self.at_eof && !out.is_empty() {
                return self.done(from, out);
            }
            let wait = if !boundary {
                // read_committed: the rest of this transaction is committed
                // and on its way.
                let since = *mid_txn_since.get_or_insert_with(Instant::now);
                if since.elapsed() > self.resolved.timeout() {
                    return Err(KafkaError::Transient(format!(
                        "the rest of the transaction after seq {} did not arrive",
                        out.last().map_or(0, |e| e.seq)
                    )));
                }
                READ_WAIT
            } else if out.is_empty() {
                READ_WAIT
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                None => {
                    if boundary {
                        return self.done(from, out);
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                    self.at_eof = true;
                    if boundary {
                        return self.done(from, out);
                    }
                }
                Some(Err(e)) => {
                    self.next = None;
                    return Err(KafkaError::from_client(e));
                }
                Some(Ok(m)) if is_filler(&m) => self.at_eof = false,
                Some(Ok(m)) => {
                    self.at_eof = false;
                    let events = decode(&m)?;
                    let (first, last) = (events[0].seq, events[events.len() - 1].seq);
                    match self.expect {
                        None if first > from => {
                            self.next = None;
                            return Err(KafkaError::Definite(format!(
                                "positioned for seq {from} but the log continues at seq {first}"
                            )));
                        }
                        Some(want) if first != want => {
                            self.next = None;
                            return Err(KafkaError::Definite(format!(
                                "the log topic {} skips from seq {} to seq {first} at offset {}: written by more than one writer, or damaged",
                                self.resolved.topic,
                                want - 1,
                                m.offset()
                            )));
                        }
                        _ => {}
                    }
                    self.expect = Some(last + 1);
                    self.offsets.push_back((last, m.offset() + 1));
                    if self.offsets.len() > MAX_OFFSET_HINTS {
                        self.offsets.pop_front();
                    }
                    self.buf.extend(events.into_iter().filter(|e| e.seq >= from));
                }
            }
        }
    }

    fn done(&mut self, from: u64, out: Vec<ChangeEvent>) -> Result<Vec<Transaction>, KafkaError> {
        if let Some(first) = out.first() {
            if first.seq != from {
                self.next = None;
                return Err(KafkaError::Definite(format!(
                    "read for seq {from} returned seq {} first",
                    first.seq
                )));
            }
        }
        self.next = Some(out.last().map_or(from, |e| e.seq + 1));
        Ok(into_transactions(out))
    }

    /// `(offset, first seq, last seq)` of the first committed record at or
    /// after `offset`, `None` past the end.
    fn probe(&mut self, offset: i64) -> Result<Option<(i64, u64, u64)>, KafkaError> {
        let topic = self.resolved.topic.clone();
        assign(&self.consumer, &topic, Offset::Offset(offset))?;
        match next_record(&self.consumer, &topic, self.resolved.timeout())? {
            Some(m) => {
                let (a, b) = seq_range(&m)?;
                Ok(Some((m.offset(), a, b)))
            }
            None => Ok(None),
        }
    }

    /// The offset this consumer's group committed last time (the hint).
    fn hint(&self) -> Option<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.resolved.topic, 0);
        let committed = self
            .consumer
            .committed_offsets(tpl, self.resolved.timeout())
            .ok()?;
        // (The list is dropped here, before the consumer can be: dropping a
        // consumer while a list it returned is alive hangs.)
        let offset = committed
            .find_partition(&self.resolved.topic, 0)
            .and_then(|e| e.offset().to_raw());
        offset.filter(|o| *o >= 0)
    }

    /// Positions the consumer on the record holding `from`.
    fn position(&mut self, from: u64) -> Result<(), KafkaError> {
        self.buf.clear();
        self.at_eof = false;
        self.expect = None;
        let topic = self.resolved.topic.clone();
        let (low, high) = watermarks(&self.consumer, &topic, self.resolved.timeout())?;
        let mut lo = low;
        let mut hi = high;
        if let Some(h) = self.hint().filter(|h| *h > low && *h < high) {
            match self.probe(h)? {
                Some((off, first, last)) if first <= from => {
                    if last + 1 >= from {
                        tracing::debug!(topic, from, offset = off, "positioned by the offset hint");
                        return assign(&self.consumer, &topic, Offset::Offset(off));
                    }
                    lo = off;
                }
                _ => hi = h,
            }
        }
        if lo == low {
            match self.probe(low)? {
                None => return assign(&self.consumer, &topic, Offset::Offset(low)),
                Some((_, first, _)) if first > from => {
                    return Err(KafkaError::Truncated {
                        requested: from,
                        first,
                    })
                }
                Some((off, _, _)) => lo = off,
            }
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match self.probe(mid)? {
                Some((off, first, _)) if first <= from => lo = off,
                _ => hi = mid,
            }
        }
        tracing::debug!(topic, from, offset = lo, "positioned by binary search");
        assign(&self.consumer, &topic, Offset::Offset(lo))
    }

    /// Commits the offset after the record that ends at `seq` (a hint).
    fn ack(&mut self, seq: u64) {
        while self.offsets.front().is_some_and(|(s, _)| *s < seq) {
            self.offsets.pop_front();
        }
        if let Some(&(s, offset)) = self.offsets.front() {
            if s == seq {
                let mut tpl = TopicPartitionList::new();
                if tpl
                    .add_partition_offset(&self.resolved.topic, 0, Offset::Offset(offset))
                    .is_ok()
                {
                    if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                        tracing::debug!(error = %e, "could not store the offset hint");
                    }
                }
            }
        }
    }
}

/// One consumer's cursor on the Kafka log.
pub struct KafkaReader {
    inner: Arc<Inner>,
    name: String,
    cursor: Arc<Mutex<Cursor>>,
}

impl KafkaReader {
    pub(crate) fn new(inner: Arc<Inner>, name: &str) -> Result<KafkaReader, KafkaError> {
        let resolved = inner.resolved.clone();
        let group = resolved.group_for(name);
        let consumer = resolved.consumer(&group)?;
        Ok(KafkaReader {
            inner,
            name: name.to_string(),
            cursor: Arc::new(Mutex::new(Cursor {
                consumer,
                resolved,
                group,
                next: None,
                buf: VecDeque::new(),
                expect: None,
                at_eof: false,
                offsets: VecDeque::new(),
            })),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Cursor) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, LogError> {
        let cursor = self.cursor.clone();
        tokio::task::spawn_blocking(move || f(&mut cursor.lock().expect("cursor lock")))
            .await
            .map_err(|e| LogError::Backend(format!("log task: {e}")))?
            .map_err(LogError::from)
    }
}

impl LogReader for KafkaReader {
    async fn read(&mut self, from: u64, max_events: usize) -> Result<Vec<Transaction>, LogError> {
        self.blocking(move |c| c.read(from, max_events)).await
    }

    async fn ack(&mut self, seq: u64) -> Result<(), LogError> {
        self.inner
            .acks
            .lock()
            .expect("acks lock")
            .insert(self.name.clone(), seq);
        self.blocking(move |c| {
            c.ack(seq);
            Ok(())
        })
        .await
    }
}
