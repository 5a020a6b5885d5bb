//! The change log: the one contract between capture and every reader.
//!
//! Capture appends whole source transactions with gapless `seq`s; appliers,
//! the admin server, `dbmux tail` and (later) cache invalidators read them
//! back. Two implementations keep the same contract: [`EmbeddedLog`] (fjall,
//! in one process, the default) and the Kafka log in `connectors::kafka`
//! (capture, appliers and consumers in separate processes).
//!
//! # The contract
//! - **Order and gaplessness.** `seq`s are strictly increasing by one from the
//!   first event ever appended; [`Log::append`] refuses a transaction whose
//!   first `seq` is not the log's last + 1, so two writers can never
//!   interleave, and a reader sees every `seq` exactly once.
//! - **Atomicity.** A source transaction is visible to readers whole or not
//!   at all, also across a crash in the middle of `append`; a reader never
//!   receives part of one (a batch may end early, never inside a transaction).
//! - **Durability.** `append` returns only once the transactions are as
//!   durable as the implementation promises (embedded: its fsync policy;
//!   Kafka: committed to the in-sync replicas, `acks=all`). After a restart,
//!   [`Log::last`] names a transaction that is wholly in the log, and capture
//!   resumes from the source position stored with it.
//! - **Acknowledgement.** [`LogReader::ack`] records that a consumer has made
//!   everything up to a `seq` durable *in its own target*. It is a hint for
//!   the log (truncation, where to start reading next time), never the truth:
//!   an applier always restarts from the offset stored in its replica.
//! - **Metadata.** [`Log::meta`] / [`Log::set_meta`] keep small durable values
//!   beside the records (the capture start position, capture's state
//!   checkpoint: schema history and snapshot progress, see
//!   [`crate::capture_state`], and snapshot requests), so everything a
//!   capture process needs to resume is in the log.

pub mod embedded;

pub use embedded::{EmbeddedLog, EmbeddedReader, FsyncPolicy, CHUNK_EVENTS};

use crate::codec::CodecError;
use crate::event::{ChangeEvent, Transaction};
use crate::position::Position;
use crate::retry::{Classify, ErrorClass};
use std::future::Future;
use tokio::sync::watch;

/// The meta key under which capture stores where it began (see
/// [`crate::runtime::run_capture`]).
pub const START_POSITION_KEY: &str = "capture_start_position";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log storage: {0}")]
    Storage(#[from] fjall::Error),
    #[error("log record at seq {seq} is damaged: {source}")]
    Corrupt { seq: u64, source: CodecError },
    #[error("append out of order: the log ends at seq {last}, the transaction starts at {first}")]
    Gap { last: u64, first: u64 },
    #[error("invalid transaction: {0}")]
    Invalid(String),
    #[error("seq {requested} was truncated; the log now starts at {first}")]
    Truncated { requested: u64, first: u64 },
    /// The log's server cannot be reached or timed out; retrying may succeed.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// Another writer took over the log (a second capture process for the
    /// same source): this one must stop, never interleave.
    #[error("this capture was fenced by another writer of the same log: {0}")]
    Fenced(String),
    /// The log's configuration would lose or reorder data; the message names
    /// the setting, the value needed and the value found.
    #[error("unsafe log settings: {0}")]
    Unsafe(String),
    /// Any other definite failure of the log's server or client.
    #[error("log: {0}")]
    Backend(String),
    #[error("this process opened the log read-only; only capture appends")]
    ReadOnly,
}

impl Classify for LogError {
    fn class(&self) -> ErrorClass {
        match self {
            // A broker restarting or a leader election heals by itself.
            LogError::Unavailable(_) => ErrorClass::Transient,
            // Local disk problems, damaged records, a fenced writer or unsafe
            // settings do not heal by retrying in a loop: stop loudly.
            _ => ErrorClass::Definite,
        }
    }
}

/// A durable, ordered log of whole transactions (see the module docs for the
/// contract). Handles are cheap to clone; clones share one log.
pub trait Log: Clone + Send + Sync + 'static {
    type Reader: LogReader;

    /// The newest `seq` this process knows of (0: empty or not known yet).
    /// Cheap; follows appends of this process and, for a shared log, a
    /// watch on the log's head.
    fn last_seq(&self) -> u64;

    /// A watch of [`Log::last_seq`] (for tailing readers, lag, the proxy).
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// Reads the newest event's `seq` and the source position stored with it
    /// from the log itself (authoritative, unlike [`Log::last_seq`]). Every
    /// append of this process that returned is included.
    fn last(&self) -> impl Future<Output = Result<Option<(u64, Position)>, LogError>> + Send;

    /// The oldest `seq` still stored, if any.
    fn first_seq(&self) -> impl Future<Output = Result<Option<u64>, LogError>> + Send;

    /// Appends whole transactions (consecutive `seq`s, the first one = the
    /// log's last + 1) in one atomic write; returns once durable (see the
    /// contract), with the number of bytes written.
    fn append(&self, txns: Vec<Transaction>) -> impl Future<Output = Result<u64, LogError>> + Send;

    /// A small durable value stored beside the records.
    fn meta(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, LogError>> + Send;

    /// Stores a small value durably before returning; a [`Log::meta`] of
    /// `key` after it returns reads this value (until another write).
    fn set_meta(&self, key: &str, value: Vec<u8>) -> impl Future<Output = Result<(), LogError>> + Send;

    /// A reader for consumer `consumer` (its name keys its acknowledgements).
    fn reader(&self, consumer: &str) -> impl Future<Output = Result<Self::Reader, LogError>> + Send;

    /// The `seq` consumer `consumer` last acknowledged, as far as the log knows.
    fn acked(&self, consumer: &str) -> impl Future<Output = Result<Option<u64>, LogError>> + Send;

    /// Records `seq` as consumer `consumer`'s acknowledgement on its behalf,
    /// where the log keeps acknowledgements itself (the embedded log, whose
    /// truncation follows them): capture holds the log for a replica that
    /// starts over from a snapshot, and for its own state checkpoint. A no-op
    /// where retention is the server's business (Kafka).
    fn ack_for(&self, consumer: &str, seq: u64) -> impl Future<Output = Result<(), LogError>> + Send {
        let _ = (consumer, seq);
        async { Ok(()) }
    }

    /// Deletes what every named consumer has acknowledged, where the log
    /// manages its own retention; returns the events removed (0 where
    /// retention is the server's business, as with Kafka).
    fn truncate(&self, consumers: Vec<String>) -> impl Future<Output = Result<u64, LogError>> + Send;

    /// The source commit time (µs since the Unix epoch) of the event `seq`,
    /// read from the log; `None` when the log does not hold it (not written
    /// yet, or truncated). For lag at scrape time: it may read storage or the
    /// network, so callers ask for the few `seq`s they need, not ranges.
    fn commit_ts_at(&self, seq: u64) -> impl Future<Output = Result<Option<i64>, LogError>> + Send;

    /// Local disk space the log uses, in bytes; `None` where the records are
    /// kept by a server (Kafka: the brokers' own metrics report it).
    fn disk_bytes(&self) -> impl Future<Output = Result<Option<u64>, LogError>> + Send {
        async { Ok(None) }
    }

    /// Makes buffered appends durable (the embedded log's `interval` policy).
    fn sync(&self) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Called by an idle writer now and then: a shared log checks that this
    /// writer still owns the stream ([`LogError::Fenced`] if another capture
    /// took it over), so a fenced capture stops even when nothing is written.
    fn heartbeat(&self) -> impl Future<Output = Result<(), LogError>> + Send {
        async { Ok(()) }
    }

    /// Where capture began, stored once before its first transaction.
    fn start_position(&self) -> impl Future<Output = Result<Option<Position>, LogError>> + Send {
        async move {
            match self.meta(START_POSITION_KEY).await? {
                Some(v) => String::from_utf8_lossy(&v)
                    .parse()
                    .map(Some)
                    .map_err(|e: crate::position::ParsePositionError| LogError::Invalid(e.to_string())),
                None => Ok(None),
            }
        }
    }

    /// Stores where capture begins (see [`crate::runtime::run_capture`]).
    fn set_start_position(&self, position: &Position) -> impl Future<Output = Result<(), LogError>> + Send {
        self.set_meta(START_POSITION_KEY, position.to_string().into_bytes())
    }

    /// Where capture resumes: after the newest transaction in the log, else
    /// where it first began; `None` on the very first start.
    fn resume_position(&self) -> impl Future<Output = Result<Option<Position>, LogError>> + Send {
        async move {
            match self.last().await? {
                Some((_, p)) => Ok(Some(p)),
                None => self.start_position().await,
            }
        }
    }
}

/// One consumer's cursor on a [`Log`].
pub trait LogReader: Send + 'static {
    /// Whole transactions from `from` on, in `seq` order, stopping at the
    /// first transaction boundary at or after `max_events` (a single larger
    /// transaction is returned whole). The first event is exactly `from`;
    /// empty when nothing is there yet (it may wait briefly for data);
    /// [`LogError::Truncated`] when `from` is no longer stored.
    fn read(
        &mut self,
        from: u64,
        max_events: usize,
    ) -> impl Future<Output = Result<Vec<Transaction>, LogError>> + Send;

    /// Records that this consumer has durably applied everything up to `seq`
    /// in its own target (a hint for the log, never the truth).
    fn ack(&mut self, seq: u64) -> impl Future<Output = Result<(), LogError>> + Send;
}

/// Groups consecutive events into whole transactions (events must be whole
/// transactions, as [`EmbeddedLog::read`] returns them).
pub fn into_transactions(events: Vec<ChangeEvent>) -> Vec<Transaction> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for e in events {
        let last = e.txn.last;
        cur.push(e);
        if last {
            out.push(Transaction {
                events: std::mem::take(&mut cur),
            });
        }
    }
    if !cur.is_empty() {
        out.push(Transaction { events: cur });
    }
    out
}
