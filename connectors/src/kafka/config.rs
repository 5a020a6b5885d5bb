//! `[log.kafka]`: where the log lives on Kafka and how its topics must be set.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Default per-table topic name template (Debezium's `<prefix>.<db>.<table>`).
pub const DEFAULT_TABLE_TOPIC: &str = "dbmux.{db}.{table}";
/// Default topic of the transaction boundary markers.
pub const DEFAULT_TRANSACTION_TOPIC: &str = "dbmux.transaction";
/// Default Kafka transaction timeout: how long readers can be held back by a
/// transaction a crashed capture left open (a restarted capture aborts it at once).
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 10_000;
/// Default for broker requests dbmux waits on (metadata, offsets, admin).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default `fetch.wait.max.ms` of readers (see [`KafkaLogConfig::fetch_wait_max_ms`]).
pub const DEFAULT_FETCH_WAIT_MAX_MS: u64 = 10;
/// Largest record the log topic is created to accept (`max.message.bytes`);
/// records are chunks of at most ~512 KiB, a single event may be larger.
pub const LOG_TOPIC_MAX_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest `max.message.bytes` the log topic may have.
pub const MIN_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaLogConfig {
    /// `host:port[,host:port…]` bootstrap servers.
    pub brokers: String,
    /// The log topic (one per source). Default: `dbmux.<pipeline name>.log`.
    #[serde(default)]
    pub topic: Option<String>,
    /// The capture producer's `transactional.id`: one per source, so a second
    /// capture process for the same source fences the first. Default:
    /// `dbmux.<log topic>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Create missing topics with safe settings (else a missing topic is an error).
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Replication factor for created topics, and the least an existing log
    /// topic must have.
    #[serde(default = "default_one")]
    pub replication_factor: i32,
    /// `min.insync.replicas` for created topics, and the least an existing
    /// log topic must have.
    #[serde(default = "default_one")]
    pub min_insync_replicas: i32,
    /// `retention.ms` of a created log topic; an existing one must keep data
    /// at least this long. `-1` (the default) keeps everything: an applier
    /// that is down longer than the retention could not catch up.
    #[serde(default = "default_retention")]
    pub retention_ms: i64,
    #[serde(default = "default_txn_timeout")]
    pub transaction_timeout_ms: u64,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Longest a reader's fetch waits at the end of the log for new records.
    /// Kafka answers a waiting `read_committed` fetch when this expires
    /// rather than when a transaction commits, so this bounds how long a
    /// committed change can sit unseen: it is the floor of apply lag.
    #[serde(default = "default_fetch_wait")]
    pub fetch_wait_max_ms: u64,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd` (producer compression).
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Extra librdkafka properties for every client. Those dbmux's
    /// guarantees rest on (isolation level, idempotence, acks, transactional
    /// id) cannot be set here. (librdkafka is built without TLS and SASL.)
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Downstream change events on per-table topics.
    #[serde(default)]
    pub change_events: ChangeEventsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeEventsConfig {
    /// Produce the change events (in the same Kafka transaction as the log).
    #[serde(default)]
    pub enabled: bool,
    /// Topic name template; `{db}` and `{table}` are replaced (characters
    /// Kafka does not allow in names become `_`).
    #[serde(default = "default_table_topic")]
    pub topic: String,
    /// Topic of the `BEGIN`/`END` transaction markers; `""` disables them.
    #[serde(default = "default_transaction_topic")]
    pub transaction_topic: String,
    /// After a delete, a tombstone (key, null value) so compaction can drop the key.
    #[serde(default = "default_true")]
    pub tombstones: bool,
    /// Partitions of created per-table topics (events of one key always go to
    /// one partition; one partition keeps the table's order too).
    #[serde(default = "default_one")]
    pub partitions: i32,
}

impl Default for ChangeEventsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            topic: default_table_topic(),
            transaction_topic: default_transaction_topic(),
            tombstones: true,
            partitions: 1,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_one() -> i32 {
    1
}
fn default_retention() -> i64 {
    -1
}
fn default_txn_timeout() -> u64 {
    DEFAULT_TRANSACTION_TIMEOUT_MS
}
fn default_request_timeout() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}
fn default_fetch_wait() -> u64 {
    DEFAULT_FETCH_WAIT_MAX_MS
}
fn default_compression() -> String {
    "lz4".into()
}
fn default_table_topic() -> String {
    DEFAULT_TABLE_TOPIC.into()
}
fn default_transaction_topic() -> String {
    DEFAULT_TRANSACTION_TOPIC.into()
}

/// librdkafka properties dbmux sets itself because its guarantees rest on them.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "transactional.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "isolation.level",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "enable.partition.eof",
];

/// A valid Kafka topic name: 1–249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A name part with every character Kafka does not allow replaced by `_`.
pub fn topic_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl KafkaLogConfig {
    /// The log topic for pipeline `name`.
    pub fn log_topic(&self, name: &str) -> String {
        self.topic.clone().unwrap_or_else(|| format!("dbmux.{name}.log"))
    }

    /// The compacted topic holding the log's small durable values.
    pub fn meta_topic(&self, name: &str) -> String {
        format!("{}.meta", self.log_topic(name))
    }

    pub fn transactional_id(&self, name: &str) -> String {
        self.transactional_id
            .clone()
            .unwrap_or_else(|| format!("dbmux.{}", self.log_topic(name)))
    }

    /// The per-table topic of `db.table`.
    pub fn table_topic(&self, db: &str, table: &str) -> String {
        let name = self
            .change_events
            .topic
            .replace("{db}", &topic_part(db))
            .replace("{table}", &topic_part(table));
        // Kafka names are at most 249 characters; a longer one keeps a hash
        // of the whole so two long names cannot collide.
        if name.len() > 249 {
            let h = crc32fast_hash(name.as_bytes());
            format!("{}-{h:08x}", &name[..240])
        } else {
            name
        }
    }

    /// Every problem, as `field: message` (the caller prefixes `log.kafka.`).
    pub fn validate(&self, pipeline_name: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.brokers.trim().is_empty() {
            p.push("brokers: must name at least one host:port".into());
        }
        for b in self.brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
            if !ok {
                p.push(format!("brokers: {b:?} is not host:port"));
            }
        }
        let topic = self.log_topic(pipeline_name);
        if !valid_topic_name(&topic) || topic.len() > 240 {
            p.push(format!(
                "topic: {topic:?} is not a valid Kafka topic name (1-240 of [A-Za-z0-9._-])"
            ));
        }
        let tid = self.transactional_id(pipeline_name);
        if tid.is_empty() {
            p.push("transactional_id: must not be empty".into());
        }
        if self.replication_factor < 1 {
            p.push("replication_factor: must be >= 1".into());
        }
        if self.min_insync_replicas < 1 {
            p.push("min_insync_replicas: must be >= 1".into());
        } else if self.min_insync_replicas > self.replication_factor {
            p.push(format!(
                "min_insync_replicas: {} is more than replication_factor {}: no write could succeed",
                self.min_insync_replicas, self.replication_factor
            ));
        }
        if self.retention_ms == 0 || self.retention_ms < -1 {
            p.push("retention_ms: must be -1 (keep everything) or > 0".into());
        }
        if self.transaction_timeout_ms < 1000 || self.transaction_timeout_ms > 900_000 {
            p.push("transaction_timeout_ms: must be between 1000 and 900000".into());
        }
        if self.fetch_wait_max_ms > 5000 {
            p.push("fetch_wait_max_ms: must be at most 5000".into());
        }
        if self.request_timeout_ms < 100 {
            p.push("request_timeout_ms: must be >= 100".into());
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()) {
            p.push(format!(
                "compression: {:?} is not one of none, gzip, snappy, lz4, zstd",
                self.compression
            ));
        }
        for k in self.properties.keys() {
            if RESERVED.contains(&k.as_str()) {
                p.push(format!(
                    "properties.{k}: set by dbmux itself (its delivery guarantees rest on it)"
                ));
            }
        }
        let ce = &self.change_events;
        if ce.enabled {
            if !ce.topic.contains("{table}") {
                p.push(format!(
                    "change_events.topic: {:?} must contain {{table}} (one topic per table)",
                    ce.topic
                ));
            }
            let sample = ce.topic.replace("{db}", "db").replace("{table}", "t");
            if !valid_topic_name(&sample) {
                p.push(format!(
                    "change_events.topic: {:?} gives invalid topic names (allowed: [A-Za-z0-9._-])",
                    ce.topic
                ));
            }
            if !ce.transaction_topic.is_empty() && !valid_topic_name(&ce.transaction_topic) {
                p.push(format!(
                    "change_events.transaction_topic: {:?} is not a valid topic name",
                    ce.transaction_topic
                ));
            }
            if ce.partitions < 1 {
                p.push("change_events.partitions: must be >= 1".into());
            }
        }
        p
    }
}

/// CRC-32 (IEEE) of `bytes`, for shortening over-long topic names.
fn crc32fast_hash(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> KafkaLogConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_names_and_validation() {
        let c = parse("brokers = \"127.0.0.1:19092\"");
        assert!(c.validate("app").is_empty(), "{:?}", c.validate("app"));
        assert_eq!(c.log_topic("app"), "dbmux.app.log");
        assert_eq!(c.meta_topic("app"), "dbmux.app.log.meta");
        assert_eq!(c.transactional_id("app"), "dbmux.dbmux.app.log");
        assert_eq!(c.table_topic("shop", "order lines"), "dbmux.shop.order_lines");
        assert_eq!(crc32fast_hash(b"123456789"), 0xCBF4_3926);
        let long = c.table_topic("d", &"x".repeat(300));
        assert!(long.len() <= 249 && valid_topic_name(&long));

        let bad = parse(
            "brokers = \"nohost, 1.2.3.4:0\"\ntopic = \"a b\"\nreplication_factor = 1\nmin_insync_replicas = 2\n\
             retention_ms = 0\ncompression = \"brotli\"\n[properties]\n\"isolation.level\" = \"read_uncommitted\"\n\
             [change_events]\nenabled = true\ntopic = \"events\"\n",
        );
        let p = bad.validate("app");
        for needle in [
            "\"nohost\"",
            "\"1.2.3.4:0\"",
            "topic:",
            "min_insync_replicas",
            "retention_ms",
            "compression",
            "properties.isolation.level",
            "change_events.topic",
        ] {
            assert!(p.iter().any(|m| m.contains(needle)), "missing {needle} in {p:#?}");
        }
        assert!(toml::from_str::<KafkaLogConfig>("brokers = \"x:1\"\ncolour = 1").is_err());
    }
}
