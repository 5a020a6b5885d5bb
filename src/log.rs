//! The log the configuration names (`[log] kind`), as one type: the runtime,
//! the admin server and `tail` are generic over [`Log`]; this enum picks the
//! implementation once, at start.

use crate::config::Config;
use anyhow::Context;
use pipeline::event::Transaction;
use pipeline::log::{EmbeddedLog, EmbeddedReader, Log, LogError, LogReader};
use pipeline::position::Position;
use tokio::sync::watch;

/// What this process does with the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Capture writes it (the one writer; with Kafka it fences any other).
    Capture,
    /// Appliers and the proxy read it and follow its head.
    Follow,
    /// `tail`: reads only.
    Read,
}

#[derive(Clone)]
pub enum AnyLog {
    Embedded(EmbeddedLog),
    #[cfg(feature = "kafka")]
    Kafka(connectors::kafka::KafkaLog),
}

pub enum AnyReader {
    Embedded(EmbeddedReader),
    #[cfg(feature = "kafka")]
    Kafka(connectors::kafka::KafkaReader),
}

impl AnyLog {
    /// Opens the configured log. The embedded log lives in `<data_dir>/log`
    /// and is locked by the process that opens it.
    pub async fn open(cfg: &Config, role: Role) -> anyhow::Result<AnyLog> {
        if cfg.log.kind == "kafka" {
            #[cfg(feature = "kafka")]
            {
                use connectors::kafka::{KafkaLog, Role as KafkaRole};
                let k = cfg.kafka.clone().context("[log.kafka] is missing")?;
                let role = match role {
                    Role::Capture => KafkaRole::Capture,
                    Role::Follow => KafkaRole::Reader { follow_head: true },
                    Role::Read => KafkaRole::Reader { follow_head: false },
                };
                // Brokers that cannot be reached yet (started after dbmux, a
                // restart, a network blip) are waited for, loudly: a process
                // manager starting dbmux and Kafka together must not need an
                // ordering. Definite errors (unsafe topic settings, bad
                // credentials, fencing) still stop at once.
                let started = std::time::Instant::now();
                let mut backoff = pipeline::retry::Backoff::new(
                    std::time::Duration::from_millis(500),
                    pipeline::retry::Backoff::DEFAULT_MAX,
                );
                let log = loop {
                    match KafkaLog::open(k.clone(), &cfg.name, role).await {
                        Ok(log) => break log,
                        Err(LogError::Unavailable(m)) => {
                            let delay = backoff.next_delay();
                            tracing::warn!(brokers = %k.brokers, attempt = backoff.attempts(), error = %m,
                                "Kafka log unavailable at start; retrying");
                            tokio::time::sleep(delay).await;
                        }
                        Err(e) => return Err(e).context("opening the Kafka log"),
                    }
                };
                if backoff.attempts() > 0 {
                    tracing::info!(brokers = %k.brokers, waited_s = started.elapsed().as_secs(), "Kafka log reachable");
                }
                return Ok(AnyLog::Kafka(log));
            }
            #[cfg(not(feature = "kafka"))]
            anyhow::bail!("this dbmux was built without the `kafka` feature");
        }
        let dir = cfg.data_dir.join("log");
        if role == Role::Read && !dir.exists() {
            anyhow::bail!("no log at {} (has dbmux run with this config?)", dir.display());
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = EmbeddedLog::open(&dir, cfg.log.policy()).with_context(|| {
            format!(
                "opening the log in {} (is another dbmux using it?)",
                dir.display()
            )
        })?;
        Ok(AnyLog::Embedded(log))
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self, AnyLog::Embedded(_))
    }
}

/// Calls the same method on whichever log this is.
macro_rules! dispatch {
    ($self:expr, $l:ident => $e:expr) => {
        match $self {
            AnyLog::Embedded($l) => $e,
            #[cfg(feature = "kafka")]
            AnyLog::Kafka($l) => $e,
        }
    };
}

impl Log for AnyLog {
    type Reader = AnyReader;

    fn last_seq(&self) -> u64 {
        dispatch!(self, l => Log::last_seq(l))
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        dispatch!(self, l => Log::subscribe(l))
    }

    async fn last(&self) -> Result<Option<(u64, Position)>, LogError> {
        dispatch!(self, l => Log::last(l).await)
    }

    async fn first_seq(&self) -> Result<Option<u64>, LogError> {
        dispatch!(self, l => Log::first_seq(l).await)
    }

    async fn append(&self, txns: Vec<Transaction>) -> Result<u64, LogError> {
        dispatch!(self, l => Log::append(l, txns).await)
    }

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        dispatch!(self, l => Log::meta(l, key).await)
    }

    async fn set_meta(&self, key: &str, value: Vec<u8>) -> Result<(), LogError> {
        dispatch!(self, l => Log::set_meta(l, key, value).await)
    }

    async fn reader(&self, consumer: &str) -> Result<AnyReader, LogError> {
        Ok(match self {
            AnyLog::Embedded(l) => AnyReader::Embedded(Log::reader(l, consumer).await?),
            #[cfg(feature = "kafka")]
            AnyLog::Kafka(l) => AnyReader::Kafka(Log::reader(l, consumer).await?),
        })
    }

    async fn acked(&self, consumer: &str) -> Result<Option<u64>, LogError> {
        dispatch!(self, l => Log::acked(l, consumer).await)
    }

    async fn ack_for(&self, consumer: &str, seq: u64) -> Result<(), LogError> {
        dispatch!(self, l => Log::ack_for(l, consumer, seq).await)
    }

    async fn truncate(&self, consumers: Vec<String>) -> Result<u64, LogError> {
        dispatch!(self, l => Log::truncate(l, consumers).await)
    }

    async fn commit_ts_at(&self, seq: u64) -> Result<Option<i64>, LogError> {
        dispatch!(self, l => Log::commit_ts_at(l, seq).await)
    }

    async fn disk_bytes(&self) -> Result<Option<u64>, LogError> {
        dispatch!(self, l => Log::disk_bytes(l).await)
    }

    async fn sync(&self) -> Result<(), LogError> {
        dispatch!(self, l => Log::sync(l).await)
    }

    async fn heartbeat(&self) -> Result<(), LogError> {
        dispatch!(self, l => Log::heartbeat(l).await)
    }
}

impl LogReader for AnyReader {
    async fn read(&mut self, from: u64, max_events: usize) -> Result<Vec<Transaction>, LogError> {
        match self {
            AnyReader::Embedded(r) => r.read(from, max_events).await,
            #[cfg(feature = "kafka")]
            AnyReader::Kafka(r) => r.read(from, max_events).await,
        }
    }

    async fn ack(&mut self, seq: u64) -> Result<(), LogError> {
        match self {
            AnyReader::Embedded(r) => r.ack(seq).await,
            #[cfg(feature = "kafka")]
            AnyReader::Kafka(r) => r.ack(seq).await,
        }
    }
}
