//! Topic preflight: the log topic's settings are checked at start, and
//! missing topics are created with safe ones.
//!
//! # What "unsafe" means
//! The log topic is the only copy of captured changes that appliers have not
//! applied yet, and the only record of where capture resumes. So:
//! - exactly **one partition** (total order; `seq` is one gapless sequence);
//! - `cleanup.policy = delete` (compaction would drop records: they have no key);
//! - `retention.ms` at least the configured one (`-1`: forever) and
//!   `retention.bytes = -1` (size-based deletion removes unapplied data at
//!   any time);
//! - replication factor and `min.insync.replicas` at least the configured
//!   ones (writes use `acks=all`);
//! - `unclean.leader.election.enable = false` (an out-of-sync replica
//!   becoming leader loses committed records);
//! - `max.message.bytes` at least 1 MiB.
//!
//! Each failure names the setting, the value needed and the value found.

use super::config::{KafkaLogConfig, LOG_TOPIC_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES};
use super::KafkaError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub type Admin = Arc<AdminClient<super::Context>>;

/// What a topic is for: the settings it is created with and checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    /// The log itself: checked strictly.
    Log,
    /// The log's small durable values (compacted: the newest value per key).
    Meta,
    /// Per-table change events and transaction markers for downstream
    /// consumers (compaction by key is a legitimate choice there).
    Events { partitions: i32 },
}

fn options(cfg: &KafkaLogConfig) -> AdminOptions {
    let t = Duration::from_millis(cfg.request_timeout_ms);
    AdminOptions::new()
        .request_timeout(Some(t))
        .operation_timeout(Some(t))
}

/// Partition count and replication factor of `topic`, `None` when it does not exist.
async fn describe(
    admin: &Admin,
    topic: &str,
    timeout: Duration,
) -> Result<Option<(usize, usize)>, KafkaError> {
    let admin = admin.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let md = admin
            .inner()
            .fetch_metadata(Some(&topic), timeout)
            .map_err(KafkaError::from_client)?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error() {
            None => {}
            Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
                return Ok(None)
            }
            Some(e) => {
                return Err(KafkaError::from_code(
                    RDKafkaErrorCode::from(e),
                    format!("metadata of topic {topic}"),
                ))
            }
        }
        if t.partitions().is_empty() {
            return Ok(None);
        }
        let rf = t
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .min()
            .unwrap_or(0);
        Ok(Some((t.partitions().len(), rf)))
    })
    .await
    .map_err(|e| KafkaError::Definite(format!("metadata task: {e}")))?
}

/// Creates `topic` for `role` unless it exists, then checks it (strictly for
/// the log topic). Two processes creating it at once is fine.
pub async fn ensure(
    admin: &Admin,
    cfg: &KafkaLogConfig,
    topic: &str,
    role: TopicRole,
) -> Result<(), KafkaError> {
    let timeout = Duration::from_millis(cfg.request_timeout_ms);
    let mut existing = describe(admin, topic, timeout).await?;
    if existing.is_none() {
        if !cfg.create_topics {
            return Err(KafkaError::Unsafe(format!(
                "topic {topic} does not exist and create_topics = false: create it (see docs/configuration.md) or let dbmux do it"
            )));
        }
        create(admin, cfg, topic, role).await?;
        // Metadata propagates asynchronously after a create.
        for _ in 0..50 {
            existing = describe(admin, topic, timeout).await?;
            if existing.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let Some((partitions, rf)) = existing else {
        return Err(KafkaError::Transient(format!(
            "topic {topic} was created but does not show in the metadata yet"
        )));
    };
    if role == TopicRole::Log || role == TopicRole::Meta {
        check(admin, cfg, topic, role, partitions, rf).await?;
    }
    Ok(())
}

async fn create(admin: &Admin, cfg: &KafkaLogConfig, topic: &str, role: TopicRole) -> Result<(), KafkaError> {
    let min_isr = cfg.min_insync_replicas.to_string();
    let retention = cfg.retention_ms.to_string();
    let max_bytes = LOG_TOPIC_MAX_MESSAGE_BYTES.to_string();
    let partitions = match role {
        TopicRole::Events { partitions } => partitions,
        _ => 1,
    };
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(cfg.replication_factor))
        .set("min.insync.replicas", &min_isr)
        .set("unclean.leader.election.enable", "false");
    t = match role {
        TopicRole::Log => t
            .set("cleanup.policy", "delete")
            .set("retention.ms", &retention)
            .set("retention.bytes", "-1")
            .set("max.message.bytes", &max_bytes),
        // Rolled hourly so compaction keeps only the newest value of each
        // key (the heartbeat writes one every few seconds while idle).
        TopicRole::Meta => t.set("cleanup.policy", "compact").set("segment.ms", "3600000"),
        TopicRole::Events { .. } => t,
    };
    let results = admin
        .create_topics([&t], &options(cfg))
        .await
        .map_err(KafkaError::from_client)?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, ?role, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::from_code(code, format!("creating topic {name}")));
            }
        }
    }
    Ok(())
}

async fn check(
    admin: &Admin,
    cfg: &KafkaLogConfig,
    topic: &str,
    role: TopicRole,
    partitions: usize,
    rf: usize,
) -> Result<(), KafkaError> {
    // Right after a create, a broker that has not received the topic's
    // configuration yet answers with no entries at all (a real topic always
    // lists every setting, defaults included): ask again rather than report
    // every setting as unsafe.
    let mut attempts = 0;
    let settings = loop {
        let settings = describe_settings(admin, cfg, topic).await?;
        if !settings.is_empty() {
            break settings;
        }
        attempts += 1;
        if attempts >= 50 {
            return Err(KafkaError::Transient(format!(
                "the brokers do not show the configuration of topic {topic} yet"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let problems = problems(cfg, role, partitions, rf, &settings);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(KafkaError::Unsafe(format!(
            "topic {topic}: {}",
            problems.join("; ")
        )))
    }
}

/// A topic's settings as the brokers describe them (empty: not known yet).
async fn describe_settings(
    admin: &Admin,
    cfg: &KafkaLogConfig,
    topic: &str,
) -> Result<HashMap<String, String>, KafkaError> {
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options(cfg))
        .await
        .map_err(KafkaError::from_client)?;
    let resource = match results.into_iter().next() {
        Some(Ok(r)) => r,
        Some(Err(code)) => return Err(KafkaError::from_code(code, format!("describing topic {topic}"))),
        None => {
            return Err(KafkaError::Definite(format!(
                "no configuration returned for topic {topic}"
            )))
        }
    };
    Ok(resource
        .entries
        .iter()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect())
}

/// The unsafe settings of a topic, each naming the setting, the value needed
/// and the value found (pure, so it is unit-tested).
pub fn problems(
    cfg: &KafkaLogConfig,
    role: TopicRole,
    partitions: usize,
    rf: usize,
    settings: &HashMap<String, String>,
) -> Vec<String> {
    let mut p = Vec::new();
    let get = |k: &str| settings.get(k).map(String::as_str).unwrap_or("?");
    let num = |k: &str| settings.get(k).and_then(|v| v.parse::<i64>().ok());
    if partitions != 1 {
        p.push(format!(
            "partitions must be 1 (one total order of seq), found {partitions}"
        ));
    }
    if (rf as i32) < cfg.replication_factor {
        p.push(format!(
            "replication factor must be at least {} (replication_factor), found {rf}",
            cfg.replication_factor
        ));
    }
    match num("min.insync.replicas") {
        Some(n) if n >= cfg.min_insync_replicas as i64 => {}
        _ => p.push(format!(
            "min.insync.replicas must be at least {} (min_insync_replicas), found {}",
            cfg.min_insync_replicas,
            get("min.insync.replicas")
        )),
    }
    if get("unclean.leader.election.enable") == "true" {
        p.push("unclean.leader.election.enable must be false (an out-of-sync leader loses committed records), found true".into());
    }
    match role {
        TopicRole::Log => {
            let policy = get("cleanup.policy");
            if policy != "delete" {
                p.push(format!(
                    "cleanup.policy must be delete (compaction drops log records), found {policy}"
                ));
            }
            let retention = num("retention.ms");
            let ok = match (cfg.retention_ms, retention) {
                (_, Some(-1)) => true,
                (-1, _) => false,
                (want, Some(have)) => have >= want,
                (_, None) => false,
            };
            if !ok {
                let want = if cfg.retention_ms == -1 {
                    "-1 (keep everything; retention_ms = -1)".to_string()
                } else {
                    format!("-1 or at least {} (retention_ms)", cfg.retention_ms)
                };
                p.push(format!(
                    "retention.ms must be {want}: records an applier has not applied yet would be deleted; found {}",
                    get("retention.ms")
                ));
            }
            if num("retention.bytes") != Some(-1) {
                p.push(format!(
                    "retention.bytes must be -1 (size-based deletion removes unapplied records), found {}",
                    get("retention.bytes")
                ));
            }
            match num("max.message.bytes") {
                Some(n) if n >= MIN_MAX_MESSAGE_BYTES as i64 => {}
                _ => p.push(format!(
                    "max.message.bytes must be at least {MIN_MAX_MESSAGE_BYTES}, found {}",
                    get("max.message.bytes")
                )),
            }
        }
        TopicRole::Meta => {
            if !get("cleanup.policy").contains("compact") && num("retention.ms") != Some(-1) {
                p.push(format!(
                    "cleanup.policy must be compact (or retention.ms -1): the newest value of each key must stay; found cleanup.policy={} retention.ms={}",
                    get("cleanup.policy"),
                    get("retention.ms")
                ));
            }
        }
        TopicRole::Events { .. } => {}
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_settings_are_named_with_expected_and_found() {
        let cfg: KafkaLogConfig =
            toml::from_str("brokers = \"b:1\"\nreplication_factor = 3\nmin_insync_replicas = 2").unwrap();
        let good: HashMap<String, String> = [
            ("cleanup.policy", "delete"),
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
            ("min.insync.replicas", "2"),
            ("unclean.leader.election.enable", "false"),
            ("max.message.bytes", "67108864"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(problems(&cfg, TopicRole::Log, 1, 3, &good).is_empty());
        let mut bad = good.clone();
        bad.insert("cleanup.policy".into(), "compact".into());
        bad.insert("retention.ms".into(), "604800000".into());
        bad.insert("retention.bytes".into(), "1073741824".into());
        bad.insert("min.insync.replicas".into(), "1".into());
        bad.insert("unclean.leader.election.enable".into(), "true".into());
        bad.insert("max.message.bytes".into(), "1000".into());
        let p = problems(&cfg, TopicRole::Log, 3, 1, &bad);
        assert_eq!(p.len(), 8, "{p:#?}");
        for needle in [
            "partitions must be 1",
            "found 1",
            "min.insync.replicas must be at least 2 (min_insync_replicas), found 1",
            "cleanup.policy must be delete",
            "found compact",
            "retention.ms must be -1",
            "found 604800000",
            "retention.bytes must be -1",
            "unclean.leader.election.enable",
            "max.message.bytes",
        ] {
            assert!(
                p.iter().any(|m| m.contains(needle)),
                "missing {needle:?} in {p:#?}"
            );
        }
        // A finite retention is accepted when configured and long enough.
        let finite: KafkaLogConfig = toml::from_str("brokers = \"b:1\"\nretention_ms = 1000").unwrap();
        let mut s = good.clone();
        s.insert("retention.ms".into(), "5000".into());
        s.insert("min.insync.replicas".into(), "1".into());
        assert!(problems(&finite, TopicRole::Log, 1, 1, &s).is_empty());
        s.insert("retention.ms".into(), "500".into());
        assert_eq!(problems(&finite, TopicRole::Log, 1, 1, &s).len(), 1);
    }
}
