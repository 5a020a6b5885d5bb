//! The embedded change log (the default transport).
//!
//! # Layout
//! A `fjall` database (LSM tree with a write-ahead journal) in the data
//! directory. Keyspace `records` maps the big-endian `seq` of a chunk's first
//! event to an encoded chunk (see [`crate::codec`]); a transaction larger than
//! [`CHUNK_EVENTS`] is split into several chunks written in **one atomic batch**,
//! so a reader never sees part of a transaction. Keyspace `consumers` holds each
//! registered consumer's acknowledged `seq`; keyspace `meta` small durable
//! values: the position where capture first began, capture's state checkpoint
//! (see [`crate::capture_state`]) and snapshot requests.
//!
//! # Durability
//! [`FsyncPolicy::Always`] syncs the journal (`fdatasync`) before `append`
//! returns; `Interval` leaves writes in OS buffers (they survive a process
//! crash, not a power loss) and a background task syncs them periodically;
//! `Never` leaves it to the OS. Capture acknowledges nothing to the source, so
//! the only promise is: `last()` after a restart names a transaction that is
//! wholly in the log, and capture resumes after it.
//!
//! # Truncation
//! Chunks every registered consumer has acknowledged are deleted, except the
//! newest chunk, which carries the capture resume position.

use super::{into_transactions, Log, LogError, LogReader};
use crate::codec;
use crate::event::{ChangeEvent, Transaction};
use crate::position::Position;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Events per stored chunk: keeps records small enough to decode cheaply when
/// a consumer starts reading in the middle of a large transaction.
pub const CHUNK_EVENTS: usize = 1024;

/// When the log syncs its journal to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Sync before `append` returns.
    Always,
    /// Sync at most every this many milliseconds (background).
    IntervalMs(u64),
    /// Never sync explicitly.
    Never,
}

/// The embedded, durable, single-node change log: a cheap handle (clones
/// share one open database).
#[derive(Clone)]
pub struct EmbeddedLog(Arc<Store>);

struct Store {
    db: Database,
    records: Keyspace,
    consumers: Keyspace,
    /// Small facts about the log itself (the capture start position).
    meta: Keyspace,
    policy: FsyncPolicy,
    /// Serializes appends so the gapless check and the write are one step.
    append_lock: Mutex<()>,
    last_seq: AtomicU64,
    /// Key of the oldest stored chunk, 0 while the log is empty. Kept in
    /// memory because truncation leaves tombstones at the front of the
    /// keyspace: asking the tree for its first key, or scanning from the
    /// start, walks every one of them until compaction drops them (seconds on
    /// a long-running log, which made `/status` and truncation slow). Every
    /// range below starts here instead.
    first_key: AtomicU64,
    notify: watch::Sender<u64>,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key.try_into().expect("8-byte keys"))
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir`; recovers the journal after a crash.
    pub fn open(dir: &Path, policy: FsyncPolicy) -> Result<Self, LogError> {
        let db = Database::builder(dir).manual_journal_persist(true).open()?;
        let records = db.keyspace("records", KeyspaceCreateOptions::default)?;
        let consumers = db.keyspace("consumers", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let log = EmbeddedLog(Arc::new(Store {
            db,
            records,
            consumers,
            meta,
            policy,
            append_lock: Mutex::new(()),
            last_seq: AtomicU64::new(0),
            first_key: AtomicU64::new(0),
            notify: watch::channel(0).0,
        }));
        // The one walk over leftover tombstones, at open.
        if let Some(kv) = log.0.records.first_key_value() {
            log.0.first_key.store(seq_of(&kv.key()?), Ordering::SeqCst);
        }
        let last = log.last()?.map_or(0, |(s, _)| s);
        log.0.last_seq.store(last, Ordering::SeqCst);
        log.0.notify.send_replace(last);
        Ok(log)
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.0.policy
    }

    /// The `seq` of the newest event, 0 when the log is empty.
    pub fn last_seq(&self) -> u64 {
        self.0.last_seq.load(Ordering::SeqCst)
    }

    /// Watch the newest `seq` (for tailing consumers).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.notify.subscribe()
    }

    /// The newest event's `seq` and the capture resume position stored with it.
    pub fn last(&self) -> Result<Option<(u64, Position)>, LogError> {
        let Some(kv) = self.0.records.last_key_value() else {
            return Ok(None);
        };
        let (k, v) = kv.into_inner()?;
        let first = seq_of(&k);
        let events = codec::decode(&v).map_err(|source| LogError::Corrupt { seq: first, source })?;
        let last = events.last().ok_or(LogError::Invalid("empty chunk".into()))?;
        Ok(Some((last.seq, last.position.clone())))
    }

    /// The `seq` of the oldest stored event, if any.
    pub fn first_seq(&self) -> Result<Option<u64>, LogError> {
        Ok(match self.0.first_key.load(Ordering::SeqCst) {
            0 => None,
            k => Some(k),
        })
    }

    fn first_key(&self) -> [u8; 8] {
        key(self.0.first_key.load(Ordering::SeqCst))
    }

    /// Appends one whole transaction atomically. Its first `seq` must be the
    /// log's last + 1 (gapless). Returns once the write is as durable as the
    /// fsync policy promises.
    pub fn append(&self, txn: &Transaction) -> Result<u64, LogError> {
        self.append_many(std::slice::from_ref(txn))
    }

    /// Appends several whole transactions in one atomic write; returns the
    /// encoded bytes written.
    pub fn append_many(&self, txns: &[Transaction]) -> Result<u64, LogError> {
        if txns.is_empty() {
            return Ok(0);
        }
        let _guard = self.0.append_lock.lock().expect("append lock poisoned");
        let mut expect = self.last_seq() + 1;
        let mut batch = self.0.db.batch();
        let mut bytes = 0u64;
        for txn in txns {
            txn.check().map_err(LogError::Invalid)?;
            if txn.first_seq() != expect {
                return Err(LogError::Gap {
                    last: expect - 1,
                    first: txn.first_seq(),
                });
            }
            let len = txn.len() as u32;
            for chunk in txn.events.chunks(CHUNK_EVENTS) {
                let record = codec::encode(chunk, len);
                bytes += record.len() as u64;
                batch.insert(&self.0.records, key(chunk[0].seq), record);
            }
            expect = txn.last_seq() + 1;
        }
        let batch = match self.0.policy {
            FsyncPolicy::Always => batch.durability(Some(PersistMode::SyncData)),
            _ => batch.durability(Some(PersistMode::Buffer)),
        };
        let first_appended = txns[0].first_seq();
        batch.commit()?;
        // Only an empty log learns its first key here; truncation moves it.
        let _ = self
            .0
            .first_key
            .compare_exchange(0, first_appended, Ordering::SeqCst, Ordering::SeqCst);
        self.0.last_seq.store(expect - 1, Ordering::SeqCst);
        self.0.notify.send_replace(expect - 1);
        Ok(bytes)
    }

    /// Syncs the journal to disk (used by the interval policy's background task).
    pub fn sync(&self) -> Result<(), LogError> {
        self.0.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    /// Reads events from `from_seq` on, whole transactions only, stopping at the
    /// first transaction boundary after `max_events` (a single larger
    /// transaction is returned whole). Empty when nothing is there yet.
    pub fn read(&self, from_seq: u64, max_events: usize) -> Result<Vec<ChangeEvent>, LogError> {
        if from_seq > self.last_seq() {
            return Ok(Vec::new());
        }
        // Start at the chunk containing `from_seq`.
        let start = match self.0.records.range(self.first_key()..=key(from_seq)).next_back() {
            Some(kv) => seq_of(&kv.key()?),
            None => {
                let first = self.first_seq()?.unwrap_or(0);
                return Err(LogError::Truncated {
                    requested: from_seq,
                    first,
                });
            }
        };
        let mut out = Vec::new();
        for kv in self.0.records.range(key(start)..) {
            let (k, v) = kv.into_inner()?;
            let chunk_seq = seq_of(&k);
            let events = codec::decode(&v).map_err(|source| LogError::Corrupt {
                seq: chunk_seq,
                source,
            })?;
            if events.last().is_some_and(|e| e.seq < from_seq) {
                continue; // the whole chunk is before `from_seq`
            }
            for e in events {
                if e.seq < from_seq {
                    continue;
                }
                let last = e.txn.last;
                out.push(e);
                if last && out.len() >= max_events {
                    return Ok(out);
                }
            }
        }
        if let Some(first) = out.first() {
            if first.seq != from_seq {
                return Err(LogError::Truncated {
                    requested: from_seq,
                    first: first.seq,
                });
            }
        }
        Ok(out)
    }

    /// The source commit time (µs) of the event `seq`, decoding only the chunk
    /// holding it; `None` when the log does not have it.
    pub fn commit_ts_at(&self, seq: u64) -> Result<Option<i64>, LogError> {
        if seq == 0 || seq > self.last_seq() {
            return Ok(None);
        }
        let Some(kv) = self.0.records.range(self.first_key()..=key(seq)).next_back() else {
            return Ok(None);
        };
        let (k, v) = kv.into_inner()?;
        let chunk_seq = seq_of(&k);
        let events = codec::decode(&v).map_err(|source| LogError::Corrupt {
            seq: chunk_seq,
            source,
        })?;
        Ok(events.iter().find(|e| e.seq == seq).map(|e| e.txn.commit_ts_us))
    }

    /// Disk space the log uses (tables and journal), in bytes.
    pub fn disk_bytes(&self) -> Result<u64, LogError> {
        Ok(self.0.db.disk_space()?)
    }

    /// A small durable value stored beside the records (see [`Log::meta`]).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self.0.meta.get(key)?.map(|v| v.to_vec()))
    }

    /// Stores a small value durably (synced whatever the policy).
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), LogError> {
        self.0.meta.insert(key, value)?;
        self.0.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Records that consumer `name` has durably applied everything up to `seq`.
    pub fn ack(&self, name: &str, seq: u64) -> Result<(), LogError> {
        self.0.consumers.insert(name, seq.to_be_bytes())?;
        Ok(())
    }

    /// A consumer's acknowledged `seq`.
    pub fn acked(&self, name: &str) -> Result<Option<u64>, LogError> {
        Ok(self.0.consumers.get(name)?.map(|v| seq_of(&v)))
    }

    /// Deletes chunks whose every event is below `min(acks of consumers)`, keeping
    /// the newest chunk. `consumers` are the names that must all have passed.
    /// Returns the number of events removed.
    pub fn truncate(&self, consumers: &[&str]) -> Result<u64, LogError> {
        if consumers.is_empty() {
            return Ok(0);
        }
        let mut upto = u64::MAX;
        for c in consumers {
            upto = upto.min(self.acked(c)?.unwrap_or(0));
        }
        self.truncate_through(upto)
    }

    /// Deletes chunks whose every event has `seq <= upto`, keeping the newest chunk.
    pub fn truncate_through(&self, upto: u64) -> Result<u64, LogError> {
        let mut keys = Vec::new();
        for kv in self
            .0
            .records
            .range(self.first_key()..=key(upto.saturating_add(1)))
        {
            keys.push(seq_of(&kv.key()?));
        }
        let newest = self
            .0
            .records
            .last_key_value()
            .map(|kv| kv.key())
            .transpose()?
            .map(|k| seq_of(&k));
        let mut removed = 0;
        let mut batch = self.0.db.batch();
        let mut kept_first = None;
        for w in keys.windows(2) {
            // A chunk ends just before the next chunk starts.
            if w[1] <= upto.saturating_add(1) && Some(w[0]) != newest {
                batch.remove(&self.0.records, key(w[0]));
                removed += w[1] - w[0];
                kept_first = Some(w[1]);
            }
        }
        if !batch.is_empty() {
            batch.commit()?;
        }
        if let Some(k) = kept_first {
            // Chunks are removed from the front only, so the chunk after the
            // last removed one is the oldest left.
            self.0.first_key.store(k, Ordering::SeqCst);
        }
        Ok(removed)
    }
}

/// Runs a blocking log operation off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Backend(format!("log task: {e}")))?
}

impl Log for EmbeddedLog {
    type Reader = EmbeddedReader;

    fn last_seq(&self) -> u64 {
        EmbeddedLog::last_seq(self)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        EmbeddedLog::subscribe(self)
    }

    async fn last(&self) -> Result<Option<(u64, Position)>, LogError> {
        let log = self.clone();
        blocking(move || EmbeddedLog::last(&log)).await
    }

    async fn first_seq(&self) -> Result<Option<u64>, LogError> {
        let log = self.clone();
        blocking(move || EmbeddedLog::first_seq(&log)).await
    }

    async fn append(&self, txns: Vec<Transaction>) -> Result<u64, LogError> {
        let log = self.clone();
        blocking(move || log.append_many(&txns)).await
    }

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        EmbeddedLog::meta(self, key)
    }

    async fn set_meta(&self, key: &str, value: Vec<u8>) -> Result<(), LogError> {
        let (log, key) = (self.clone(), key.to_string());
        blocking(move || EmbeddedLog::set_meta(&log, &key, &value)).await
    }

    async fn reader(&self, consumer: &str) -> Result<EmbeddedReader, LogError> {
        Ok(EmbeddedReader {
            log: self.clone(),
            consumer: consumer.to_string(),
        })
    }

    async fn acked(&self, consumer: &str) -> Result<Option<u64>, LogError> {
        EmbeddedLog::acked(self, consumer)
    }

    async fn ack_for(&self, consumer: &str, seq: u64) -> Result<(), LogError> {
        EmbeddedLog::ack(self, consumer, seq)
    }

    async fn truncate(&self, consumers: Vec<String>) -> Result<u64, LogError> {
        let log = self.clone();
        blocking(move || {
            let names: Vec<&str> = consumers.iter().map(String::as_str).collect();
            EmbeddedLog::truncate(&log, &names)
        })
        .await
    }

    async fn commit_ts_at(&self, seq: u64) -> Result<Option<i64>, LogError> {
        let log = self.clone();
        blocking(move || EmbeddedLog::commit_ts_at(&log, seq)).await
    }

    async fn disk_bytes(&self) -> Result<Option<u64>, LogError> {
        let log = self.clone();
        blocking(move || EmbeddedLog::disk_bytes(&log).map(Some)).await
    }

    async fn sync(&self) -> Result<(), LogError> {
        let log = self.clone();
        blocking(move || EmbeddedLog::sync(&log)).await
    }
}

/// A consumer's cursor on the embedded log: reads are range scans from any
/// `seq`, so it needs no state beyond its name.
pub struct EmbeddedReader {
    log: EmbeddedLog,
    consumer: String,
}

impl LogReader for EmbeddedReader {
    async fn read(&mut self, from: u64, max_events: usize) -> Result<Vec<Transaction>, LogError> {
        let log = self.log.clone();
        blocking(move || log.read(from, max_events).map(into_transactions)).await
    }

    async fn ack(&mut self, seq: u64) -> Result<(), LogError> {
        self.log.ack(&self.consumer, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{sequence_transaction, Op};
    use crate::position::MysqlPosition;
    use crate::schema::TableSchema;
    use crate::value::Value;
    use std::sync::Arc;

    fn schema() -> Arc<TableSchema> {
        crate::schema::test_table()
    }

    fn txn(first: u64, n: usize) -> Transaction {
        let pos = Position::Mysql(MysqlPosition {
            file: "b.000001".into(),
            offset: first * 10,
            gtid_set: None,
        });
        let s = schema();
        let changes = (0..n)
            .map(|i| {
                (
                    s.clone(),
                    Op::Insert {
                        after: vec![Value::Int((first + i as u64) as i64)],
                    },
                )
            })
            .collect();
        sequence_transaction(first, format!("0-1-{first}"), 0, pos, changes)
    }

    #[test]
    fn append_read_reopen_truncate() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EmbeddedLog::open(dir.path(), FsyncPolicy::Always).unwrap();
            assert_eq!(log.last().unwrap(), None);
            assert_eq!(log.first_seq().unwrap(), None);
            log.append(&txn(1, 3)).unwrap();
            assert_eq!(log.first_seq().unwrap(), Some(1));
            // A large transaction spans several chunks.
            log.append(&txn(4, CHUNK_EVENTS * 2 + 5)).unwrap();
            let last = 3 + CHUNK_EVENTS as u64 * 2 + 5;
            log.append(&txn(last + 1, 1)).unwrap();
            assert!(matches!(log.append(&txn(last + 5, 1)), Err(LogError::Gap { .. })));
            assert_eq!(log.last_seq(), last + 1);
            // Reading from the middle of the large transaction returns its rest, whole.
            let ev = log.read(100, 1).unwrap();
            assert_eq!(ev.first().unwrap().seq, 100);
            assert_eq!(ev.last().unwrap().seq, last);
            assert!(ev.last().unwrap().txn.last);
            let all = log.read(1, usize::MAX).unwrap();
            assert_eq!(all.len() as u64, last + 1);
            assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
            assert_eq!(into_transactions(all).len(), 3);
        }
        let log = EmbeddedLog::open(dir.path(), FsyncPolicy::Always).unwrap();
        let total = 3 + CHUNK_EVENTS as u64 * 2 + 6;
        assert_eq!(log.last_seq(), total);
        let (_, pos) = log.last().unwrap().unwrap();
        assert_eq!(pos.to_string(), format!("mysql:b.000001:{}", (total) * 10));
        log.ack("a", 3).unwrap();
        log.ack("b", 2000).unwrap();
        assert_eq!(log.truncate(&["a", "b"]).unwrap(), 3);
        assert_eq!(log.first_seq().unwrap(), Some(4));
        assert!(matches!(log.read(2, 10), Err(LogError::Truncated { .. })));
        assert_eq!(log.commit_ts_at(2).unwrap(), None);
        assert!(log.commit_ts_at(4).unwrap().is_some());
        // The oldest key is found again after a reopen (past the tombstones).
        drop(log);
        let log = EmbeddedLog::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(log.first_seq().unwrap(), Some(4));
        assert!(matches!(log.read(3, 10), Err(LogError::Truncated { .. })));
        assert_eq!(log.read(4, 1).unwrap().first().unwrap().seq, 4);
        log.ack("a", total).unwrap();
        log.ack("b", total).unwrap();
        log.truncate(&["a", "b"]).unwrap();
        // The newest chunk stays: it carries the resume position.
        assert_eq!(log.first_seq().unwrap(), Some(total));
        assert_eq!(log.last().unwrap().unwrap().0, total);
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }

    fn journals(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut j: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
            .collect();
        j.sort();
        j
    }

    /// A crash in the middle of a write leaves a torn journal tail: the log
    /// must reopen at the last whole transaction and go on without a gap.
    #[test]
    fn reopens_cleanly_after_a_torn_write() {
        for (cut, garbage) in [(1usize, 0usize), (37, 0), (0, 113), (500, 64)] {
            let live = tempfile::tempdir().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let mut next = 1;
            {
                let log = EmbeddedLog::open(live.path(), FsyncPolicy::Always).unwrap();
                for n in [3, 1, 5, 2, 40, 7] {
                    log.append(&txn(next, n)).unwrap();
                    next += n as u64;
                }
                // The files as a crash would leave them: copied while the log is
                // open, before any flush or clean close.
                copy_dir(live.path(), dir.path());
            }
            let jnl = journals(dir.path()).pop().expect("a journal file");
            // The journal is preallocated (zero-filled): find where the data ends,
            // tear off the last `cut` bytes, then write `garbage` where the next
            // record would have started.
            let mut bytes = std::fs::read(&jnl).unwrap();
            let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            assert!(end > 500, "journal holds the appended data");
            let torn = end - cut;
            for b in &mut bytes[torn..end] {
                *b = 0;
            }
            for b in &mut bytes[torn..torn + garbage] {
                *b = 0xA5;
            }
            std::fs::write(&jnl, &bytes).unwrap();
            let log = EmbeddedLog::open(dir.path(), FsyncPolicy::Always)
                .unwrap_or_else(|e| panic!("cut {cut}, garbage {garbage}: reopen failed: {e}"));
            let last = log.last_seq();
            let boundaries = [0u64, 3, 4, 9, 11, 51, 58];
            assert!(
                boundaries.contains(&last),
                "cut {cut}: reopened at seq {last}, inside a transaction"
            );
            if cut == 0 {
                assert_eq!(last, 58, "garbage after the last record must not lose data");
            }
            let all = log.read(1, usize::MAX).unwrap();
            assert_eq!(all.len() as u64, last);
            assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
            log.append(&txn(last + 1, 2)).unwrap();
            assert_eq!(log.last_seq(), last + 2);
        }
    }
}
