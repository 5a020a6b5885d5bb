//! The change log on Apache Kafka (`[log] kind = "kafka"`): capture, each
//! applier and downstream consumers in separate processes (separate hosts),
//! coordinated only through Kafka and the replicas' own offset tables.
//!
//! # Layout
//! - The **log topic** (one per source, exactly one partition): records are
//!   chunks of consecutive events of one source transaction in the log's
//!   binary format ([`pipeline::codec`], which carries each event's `seq`,
//!   transaction and source position), with headers `dbmux-seq` (first `seq`
//!   of the chunk), `dbmux-last-seq` and `dbmux-format`.
//! - The **meta topic** `<log topic>.meta` (compacted): small durable values
//!   keyed by name (the capture start position).
//! - Optionally, **change events** for downstream consumers: one topic per
//!   table, keyed by primary key, Debezium-shaped JSON, plus `BEGIN`/`END`
//!   transaction markers (see `docs/change-events.md`).
//!
//! # Atomicity and fencing
//! Capture writes through a transactional producer (`acks=all`, idempotent)
//! whose `transactional.id` is fixed per source: one append (a group of whole
//! source transactions, with their change events) is one Kafka transaction,
//! and every reader uses `isolation.level=read_committed`, so a reader sees a
//! source transaction whole or not at all, also after a crash between
//! produce and commit. A second capture process for the same source calls
//! `init_transactions` with the same id, which aborts what the first left
//! open and fences it: the first one's next commit fails and it stops
//! ([`LogError::Fenced`]), never interleaving.
//!
//! # Recovery
//! After `init_transactions` (so nothing is left open), capture reads the
//! last committed record of the log topic: its last event's `seq` is where
//! numbering continues and its position is where the binlog resumes. No
//! `seq` is skipped or repeated; an append is refused unless it continues
//! exactly there, and readers check continuity again.
//!
//! # Readers
//! An applier's truth is the `seq` in its replica's `dbmux_offsets`. To find
//! the record holding a `seq` the reader tries the Kafka offset it committed
//! last time (a hint, in consumer group `dbmux.<topic>.<consumer>`), checks
//! it, and otherwise binary-searches the partition by the `dbmux-seq` header.

pub mod config;
pub mod events;
mod reader;
pub mod topic;
mod writer;

pub use config::KafkaLogConfig;
pub use reader::KafkaReader;

use pipeline::event::Transaction;
use pipeline::log::{Log, LogError};
use pipeline::position::Position;
use pipeline::retry::{Classify, ErrorClass};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Record header: `seq` of the first event in the record (decimal text).
pub const HEADER_SEQ: &str = "dbmux-seq";
/// Record header: `seq` of the last event in the record (decimal text).
pub const HEADER_LAST_SEQ: &str = "dbmux-last-seq";
/// Meta key of capture's heartbeat (see [`Log::heartbeat`]).
pub const HEARTBEAT_KEY: &str = "capture_heartbeat";
/// Record header: the payload's format (the log codec's version).
pub const HEADER_FORMAT: &str = "dbmux-format";
/// Record header of a *filler* record: produced, with no payload, only to
/// end a hanging transaction (see `writer::Writer::close_hanging`). Readers
/// skip it; it holds no event and no `seq`.
pub const HEADER_FILLER: &str = "dbmux-filler";

/// Why a Kafka operation failed, classified.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// Brokers unreachable, a leader moving, a timeout: retrying may succeed.
    #[error("Kafka unavailable: {0}")]
    Transient(String),
    /// Another producer with the same transactional id took over.
    #[error("{0}")]
    Fenced(String),
    /// A topic setting or layout that would lose or reorder data.
    #[error("{0}")]
    Unsafe(String),
    /// The wanted `seq` is older than anything the topic still holds.
    #[error("seq {requested} is no longer in the log topic; it now starts at {first}")]
    Truncated { requested: u64, first: u64 },
    /// Anything else that retrying will not fix (configuration, permissions,
    /// a damaged or foreign record).
    #[error("Kafka: {0}")]
    Definite(String),
}

impl Classify for KafkaError {
    fn class(&self) -> ErrorClass {
        match self {
            KafkaError::Transient(_) => ErrorClass::Transient,
            _ => ErrorClass::Definite,
        }
    }
}

impl From<KafkaError> for LogError {
    fn from(e: KafkaError) -> LogError {
        match e {
            KafkaError::Transient(m) => LogError::Unavailable(m),
            KafkaError::Fenced(m) => LogError::Fenced(m),
            KafkaError::Unsafe(m) => LogError::Unsafe(m),
            KafkaError::Definite(m) => LogError::Backend(m),
            KafkaError::Truncated { requested, first } => LogError::Truncated { requested, first },
        }
    }
}

impl KafkaError {
    /// Classifies a broker or client error code.
    pub fn from_code(code: RDKafkaErrorCode, context: String) -> KafkaError {
        use RDKafkaErrorCode as C;
        let msg = format!("{context}: {code}");
        match code {
            C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch | C::TransactionCoordinatorFenced => {
                KafkaError::Fenced(msg)
            }
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::Authentication
            | C::SaslAuthenticationFailed
            | C::InvalidConfig
            | C::InvalidRequest
            | C::UnsupportedVersion
            | C::MessageSizeTooLarge
            | C::InvalidRecord
            | C::InvalidTransactionTimeout
            | C::InvalidReplicationFactor
            | C::PolicyViolation
            | C::InvalidArgument
            | C::UnknownTopicOrPartition
            | C::InvalidTopic => KafkaError::Definite(msg),
            _ => KafkaError::Transient(msg),
        }
    }

    /// Classifies an error of the rdkafka client.
    pub fn from_client(e: rdkafka::error::KafkaError) -> KafkaError {
        use rdkafka::error::KafkaError as K;
        match &e {
            K::Transaction(t) => {
                let msg = format!("transaction: {}", t.string());
                if matches!(
                    t.code(),
                    RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced
                ) {
                    KafkaError::Fenced(msg)
                } else if t.is_fatal() {
                    KafkaError::Definite(msg)
                } else {
                    KafkaError::Transient(msg)
                }
            }
            K::ClientConfig(..) | K::ClientCreation(_) | K::AdminOpCreation(_) | K::Nul(_) => {
                KafkaError::Definite(e.to_string())
            }
            _ => match e.rdkafka_error_code() {
                Some(code) => KafkaError::from_code(code, e.to_string()),
                None => KafkaError::Transient(e.to_string()),
            },
        }
    }
}

/// The clients' callbacks: librdkafka's messages go to `tracing` at a level
/// that fits dbmux (a broker restarting is a warning: the client reconnects
/// and the operation that needed it reports a transient error), and the end
/// of a partition, which readers ask for, is not an error at all.
pub struct Context;

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(target: "librdkafka", "{fac} {message}")
            }
            _ => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let eof = matches!(
            error,
            rdkafka::error::KafkaError::PartitionEOF(_)
                | rdkafka::error::KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(target: "librdkafka", error = %error, "{reason}");
        }
    }
}

impl ConsumerContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();
    // Delivery is confirmed by the transaction commit, which fails if any
    // record of the transaction was not delivered.
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

pub type Consumer = rdkafka::consumer::BaseConsumer<Context>;

/// What this process does with the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Capture: the only writer (transactional producer, fences others).
    Capture,
    /// Appliers, the proxy, `tail`: read only. `follow_head` keeps a watch
    /// on the newest `seq` (for lag and the proxy).
    Reader { follow_head: bool },
}

/// The names and settings every part of the Kafka log shares.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub cfg: KafkaLogConfig,
    pub topic: String,
    pub meta_topic: String,
    pub transactional_id: String,
}

impl Resolved {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.request_timeout_ms)
    }

    /// Settings every client gets: the brokers and the user's extra properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        // Metadata refreshed every few seconds: after a broker dies, clients
        // learn the partition's new leader quickly instead of after the
        // default five minutes.
        c.set("bootstrap.servers", &self.cfg.brokers)
            .set("client.id", "dbmux")
            .set("topic.metadata.refresh.interval.ms", "5000")
            .set("log_level", "4");
        for (k, v) in &self.cfg.properties {
            c.set(k, v);
        }
        c
    }

    /// A read_committed consumer that reports the end of the partition and
    /// never commits by itself. `group` keys its offset hints.
    pub fn consumer(&self, group: &str) -> Result<Consumer, KafkaError> {
        self.consumer_at(group, "read_committed")
    }

    /// [`Resolved::consumer`] at another isolation level (the writer's check
    /// that no transaction is open compares both ends of the partition).
    pub fn consumer_at(&self, group: &str, isolation: &str) -> Result<Consumer, KafkaError> {
        self.client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", isolation)
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.cfg.fetch_wait_max_ms.to_string())
            .create_with_context(Context)
            .map_err(KafkaError::from_client)
    }

    pub fn group_for(&self, consumer: &str) -> String {
        format!("dbmux.{}.{}", self.topic, config::topic_part(consumer))
    }
}

pub(crate) struct Inner {
    pub resolved: Arc<Resolved>,
    admin: topic::Admin,
    writer: Option<Arc<Mutex<writer::Writer>>>,
    /// For one-off reads (last record, first record, meta).
    util: Arc<Mutex<Consumer>>,
    head: watch::Sender<u64>,
    /// Change-event topics known to exist.
    known_topics: Mutex<HashSet<String>>,
    /// What this process's readers acknowledged.
    pub acks: Mutex<HashMap<String, u64>>,
    /// The last [`Log::commit_ts_at`] answer, `(seq, commit µs, offset of its
    /// record)`: a stopped replica asks for the same `seq` at every scrape,
    /// a moving one for a later `seq`, whose search starts at that offset.
    commit_ts_seen: Mutex<Option<(u64, i64, i64)>>,
    /// Stops the head watcher when the last handle goes.
    stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The Kafka log: a cheap handle (clones share clients and state).
#[derive(Clone)]
pub struct KafkaLog(Arc<Inner>);

impl KafkaLog {
    /// Connects, checks (and if allowed creates) the topics and, for
    /// capture, takes over the transactional id and recovers the last `seq`.
    pub async fn open(cfg: KafkaLogConfig, pipeline: &str, role: Role) -> Result<KafkaLog, LogError> {
        let resolved = Arc::new(Resolved {
            topic: cfg.log_topic(pipeline),
            meta_topic: cfg.meta_topic(pipeline),
            transactional_id: cfg.transactional_id(pipeline),
            cfg,
        });
        let admin: topic::Admin = Arc::new(
            resolved
                .client_config()
                .create_with_context(Context)
                .map_err(|e| LogError::from(KafkaError::from_client(e)))?,
        );
        topic::ensure(&admin, &resolved.cfg, &resolved.topic, topic::TopicRole::Log).await?;
        topic::ensure(
            &admin,
            &resolved.cfg,
            &resolved.meta_topic,
            topic::TopicRole::Meta,
        )
        .await?;
        let ce = &resolved.cfg.change_events;
        if role == Role::Capture && ce.enabled && !ce.transaction_topic.is_empty() {
            let role = topic::TopicRole::Events {
                partitions: ce.partitions,
            };
            topic::ensure(&admin, &resolved.cfg, &ce.transaction_topic, role).await?;
        }
        let util = Arc::new(Mutex::new(resolved.consumer(&resolved.group_for("dbmux-util"))?));
        let (head, _) = watch::channel(0u64);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = match role {
            Role::Capture => {
                let r = resolved.clone();
                let w = tokio::task::spawn_blocking(move || writer::Writer::open(r))
                    .await
                    .map_err(|e| LogError::Backend(format!("log task: {e}")))??;
                head.send_replace(w.last_seq());
                tracing::info!(topic = %resolved.topic, transactional_id = %resolved.transactional_id,
                    last_seq = w.last_seq(), "Kafka log opened for capture");
                Some(Arc::new(Mutex::new(w)))
            }
            Role::Reader { follow_head } => {
                if follow_head {
                    reader::spawn_head_watcher(resolved.clone(), head.clone(), stop.clone())?;
                }
                None
            }
        };
        Ok(KafkaLog(Arc::new(Inner {
            resolved,
            admin,
            writer,
            util,
            head,
            known_topics: Mutex::new(HashSet::new()),
            acks: Mutex::new(HashMap::new()),
            commit_ts_seen: Mutex::new(None),
            stop,
        })))
    }

    /// The log topic's name.
    pub fn topic(&self) -> &str {
        &self.0.resolved.topic
    }

    async fn util<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Consumer, &Resolved) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, LogError> {
        let (util, resolved) = (self.0.util.clone(), self.0.resolved.clone());
        tokio::task::spawn_blocking(move || {
            let mut c = util.lock().expect("util consumer lock");
            let r = f(&c, &resolved);
            if matches!(r, Err(KafkaError::Transient(_))) {
                // A fresh consumer next time: this one's metadata may name a
                // broker that is gone.
                *c = resolved.consumer(&resolved.group_for("dbmux-util"))?;
            }
            r
        })
        .await
        .map_err(|e| LogError::Backend(format!("log task: {e}")))?
        .map_err(LogError::from)
    }

    /// Reads with `read` until `done` holds of the answer, for at most the
    /// request timeout (then `Unavailable`, a transient error). Why: a Kafka transaction's
    /// commit returns once the coordinator has decided it, but its commit
    /// markers reach the partitions just after, and until then a
    /// `read_committed` reader stops short of it. So a read right after this
    /// process's own write may not show it yet; the wait is a few
    /// milliseconds and is only paid when the read races the markers.
    async fn visible<T, F: std::future::Future<Output = Result<T, LogError>>>(
        &self,
        what: &str,
        read: impl Fn() -> F,
        done: impl Fn(&T) -> bool,
    ) -> Result<T, LogError> {
        let timeout = self.0.resolved.timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = read().await?;
            if done(&got) {
                return Ok(got);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LogError::Unavailable(format!(
                    "{what} is committed but not visible to readers of {} after {timeout:?}",
                    self.0.resolved.topic
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Creates the change-event topics of `txns` that are not known yet.
    async fn ensure_event_topics(&self, txns: &[Transaction]) -> Result<(), LogError> {
        let ce = &self.0.resolved.cfg.change_events;
        let mut missing = Vec::new();
        {
            let known = self.0.known_topics.lock().expect("topics lock");
            for t in txns {
                for e in &t.events {
                    let name = self
                        .0
                        .resolved
                        .cfg
                        .table_topic(&e.table.id.schema, &e.table.id.name);
                    if !known.contains(&name) && !missing.contains(&name) {
                        missing.push(name);
                    }
                }
            }
        }
        for name in missing {
            let role = topic::TopicRole::Events {
                partitions: ce.partitions,
            };
            topic::ensure(&self.0.admin, &self.0.resolved.cfg, &name, role).await?;
            self.0.known_topics.lock().expect("topics lock").insert(name);
        }
        Ok(())
    }
}

impl Log for KafkaLog {
    type Reader = KafkaReader;

    fn last_seq(&self) -> u64 {
        *self.0.head.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.head.subscribe()
    }

    async fn last(&self) -> Result<Option<(u64, Position)>, LogError> {
        // The writer's own appends must be in the answer (see `visible`).
        let appended = if self.0.writer.is_some() {
            *self.0.head.borrow()
        } else {
            0
        };
        self.visible(
            "the last appended transaction",
            || async {
                let last = self
                    .util(|c, r| reader::last_record(c, &r.topic, r.timeout()))
                    .await?;
                Ok(last.and_then(|events| events.last().map(|e| (e.seq, e.position.clone()))))
            },
            |last| last.as_ref().map_or(0, |(seq, _)| *seq) >= appended,
        )
        .await
    }

    async fn first_seq(&self) -> Result<Option<u64>, LogError> {
        self.util(|c, r| reader::first_seq(c, &r.topic, r.timeout()))
            .await
    }

    async fn append(&self, txns: Vec<Transaction>) -> Result<u64, LogError> {
        let Some(writer) = self.0.writer.clone() else {
            return Err(LogError::ReadOnly);
        };
        if txns.is_empty() {
            return Ok(0);
        }
        if self.0.resolved.cfg.change_events.enabled {
            self.ensure_event_topics(&txns).await?;
        }
        let head = self.0.head.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = writer.lock().expect("writer lock");
            let bytes = w.append(&txns)?;
            head.send_replace(w.last_seq());
            Ok(bytes)
        })
        .await
        .map_err(|e| LogError::Backend(format!("log task: {e}")))?
    }

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        let key = key.to_string();
        self.util(move |c, r| reader::meta(c, &r.meta_topic, &key, r.timeout()))
            .await
    }

    async fn set_meta(&self, key: &str, value: Vec<u8>) -> Result<(), LogError> {
        let Some(writer) = self.0.writer.clone() else {
            return Err(LogError::ReadOnly);
        };
        // Returns once a reader sees it (the trait's contract; see `visible`
        // for why that is not at once).
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            writer.lock().expect("writer lock").set_meta_visible(&key, &value)
        })
        .await
        .map_err(|e| LogError::Backend(format!("log task: {e}")))?
    }

    async fn reader(&self, consumer: &str) -> Result<KafkaReader, LogError> {
        KafkaReader::new(self.0.clone(), consumer).map_err(LogError::from)
    }

    async fn acked(&self, consumer: &str) -> Result<Option<u64>, LogError> {
        Ok(self.0.acks.lock().expect("acks lock").get(consumer).copied())
    }

    /// Finds the record by binary search over the partition (its
    /// `dbmux-seq` headers), starting from the last answer's offset when
    /// `seq` is at or after it.
    async fn commit_ts_at(&self, seq: u64) -> Result<Option<i64>, LogError> {
        if seq == 0 {
            return Ok(None);
        }
        let seen = *self.0.commit_ts_seen.lock().expect("commit ts lock");
        if let Some((s, ts, _)) = seen {
            if s == seq {
                return Ok(Some(ts));
            }
        }
        let from = seen.filter(|(s, _, _)| *s <= seq).map(|(_, _, off)| off);
        let found = self
            .util(move |c, r| reader::record_holding(c, &r.topic, seq, from, r.timeout()))
            .await?;
        let Some((offset, events)) = found else {
            return Ok(None);
        };
        let ts = events.iter().find(|e| e.seq == seq).map(|e| e.txn.commit_ts_us);
        if let Some(ts) = ts {
            *self.0.commit_ts_seen.lock().expect("commit ts lock") = Some((seq, ts, offset));
        }
        Ok(ts)
    }

    /// Kafka keeps records for the topic's retention (checked at start);
    /// dbmux never deletes them itself: downstream consumers read them too.
    async fn truncate(&self, _consumers: Vec<String>) -> Result<u64, LogError> {
        Ok(0)
    }

    /// Appends return only after the Kafka commit: nothing is buffered.
    async fn sync(&self) -> Result<(), LogError> {
        Ok(())
    }

    /// A tiny transaction on the meta topic (`capture_heartbeat`: time and
    /// process id): it fails with [`LogError::Fenced`] once another capture
    /// has taken over the transactional id, so an idle capture stops too.
    async fn heartbeat(&self) -> Result<(), LogError> {
        let Some(writer) = self.0.writer.clone() else {
            return Ok(());
        };
        let value = serde_json::json!({
            "ts_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "pid": std::process::id(),
            "last_seq": self.last_seq(),
        })
        .to_string();
        tokio::task::spawn_blocking(move || {
            writer
                .lock()
                .expect("writer lock")
                .set_meta(HEARTBEAT_KEY, value.as_bytes())
        })
        .await
        .map_err(|e| LogError::Backend(format!("log task: {e}")))?
    }
}
