//! Test-owned Apache Kafka clusters (KRaft, every node broker + controller)
//! on free loopback ports, for tests that kill and restart brokers without
//! disturbing the shared broker on 19092. Same jars as `scripts/services`.

use super::dbmux::free_port;
use super::{env, wait_for};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct KafkaNode {
    pub id: u32,
    pub port: u16,
    pub controller_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A private KRaft cluster of `n` nodes.
pub struct PrivateKafka {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<KafkaNode>,
}

fn libs() -> String {
    env("DBMUX_TEST_KAFKA_LIBS")
}

impl PrivateKafka {
    /// Formats and starts `n` nodes; with 3 nodes internal topics get
    /// replication factor 3 and `min.insync.replicas` 2.
    pub async fn start(n: u32) -> PrivateKafka {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<KafkaNode> = (1..=n)
            .map(|id| KafkaNode {
                id,
                port: free_port(),
                controller_port: free_port(),
                dir: dir.path().join(format!("node{id}")),
                child: None,
            })
            .collect();
        let voters: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect();
        let rf = n.min(3);
        let min_isr = if n >= 3 { 2 } else { 1 };
        let cluster_id = "dbmuxTestCluster_0000w"; // 22 chars of URL-safe base64
        for node in &nodes {
            std::fs::create_dir_all(node.dir.join("data")).unwrap();
            let props = format!(
                "process.roles=broker,controller\nnode.id={id}\ncontroller.quorum.voters={voters}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 inter.broker.listener.name=PLAINTEXT\ncontroller.listener.names=CONTROLLER\n\
                 log.dirs={data}\nnum.partitions=1\ndefault.replication.factor={rf}\nmin.insync.replicas={min_isr}\n\
                 offsets.topic.replication.factor={rf}\noffsets.topic.num.partitions=3\n\
                 transaction.state.log.replication.factor={rf}\ntransaction.state.log.min.isr={min_isr}\n\
                 transaction.state.log.num.partitions=3\nshare.coordinator.state.topic.replication.factor={rf}\n\
                 share.coordinator.state.topic.min.isr={min_isr}\ngroup.initial.rebalance.delay.ms=0\n\
                 auto.create.topics.enable=false\nunclean.leader.election.enable=false\n\
                 num.network.threads=2\nnum.io.threads=2\nnum.recovery.threads.per.data.dir=1\n\
                 log.flush.interval.messages=9223372036854775807\n",
                id = node.id,
                voters = voters.join(","),
                port = node.port,
                cport = node.controller_port,
                data = node.dir.join("data").display(),
            );
            std::fs::write(node.dir.join("server.properties"), props).unwrap();
            std::fs::write(
                node.dir.join("log4j2.properties"),
                "status = warn\nappender.out.type = Console\nappender.out.name = STDOUT\n\
                 appender.out.layout.type = PatternLayout\nappender.out.layout.pattern = [%d] %p %m (%c)%n\n\
                 rootLogger.level = INFO\nrootLogger.appenderRef.out.ref = STDOUT\n",
            )
            .unwrap();
            let out = Command::new("java")
                .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp"])
                .arg(format!("{}/*", libs()))
                .arg(format!(
                    "-Dlog4j2.configurationFile={}",
                    node.dir.join("log4j2.properties").display()
                ))
                .args(["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c"])
                .arg(node.dir.join("server.properties"))
                .output()
                .expect("java (run scripts/services up first)");
            assert!(
                out.status.success(),
                "kafka storage format: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut k = PrivateKafka { dir, nodes };
        for i in 0..k.nodes.len() {
            k.launch(i);
        }
        k.wait_ready(n as usize).await;
        k
    }

    fn launch(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("kafka.log"))
            .unwrap();
        let child = Command::new("java")
            .args([
                "-Xms64m",
                "-Xmx320m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-cp",
            ])
            .arg(format!("{}/*", libs()))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                node.dir.join("log4j2.properties").display()
            ))
            .arg(format!("-Dkafka.logs.dir={}", node.dir.display()))
            .arg("kafka.Kafka")
            .arg(node.dir.join("server.properties"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("java");
        node.child = Some(child);
    }

    /// `host:port,…` of every node.
    pub fn brokers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until `live` brokers are registered in the cluster metadata.
    pub async fn wait_ready(&self, live: usize) {
        let brokers = self.brokers();
        wait_for(
            &format!("{live} Kafka brokers to register"),
            Duration::from_secs(180),
            || {
                let brokers = brokers.clone();
                async move {
                    let n = tokio::task::spawn_blocking(move || {
                        let c: BaseConsumer = ClientConfig::new()
                            .set("bootstrap.servers", &brokers)
                            .set("log_level", "0")
                            .create()
                            .ok()?;
                        let md = c.fetch_metadata(None, Duration::from_secs(2)).ok()?;
                        Some(md.brokers().len())
                    })
                    .await
                    .unwrap()?;
                    (n >= live).then_some(())
                }
            },
        )
        .await;
    }

    /// SIGKILL node `i` (0-based).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again on its data.
    pub async fn restart(&mut self, i: usize) {
        self.launch(i);
    }

    pub fn node_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("kafka.log")).unwrap_or_default()
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                let log = self.node_log(i);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!(
                    "---- kafka node {} (last lines) ----\n{}",
                    i + 1,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

/// An admin client on `brokers`.
pub fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

/// Creates `topic` with the given settings (the test's own, possibly unsafe).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32, settings: &[(&str, &str)]) {
    let admin = admin(brokers);
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in settings {
        t = t.set(k, v);
    }
    let r = admin.create_topics([&t], &AdminOptions::new()).await.unwrap();
    assert!(r[0].is_ok(), "creating {topic}: {r:?}");
}

/// One record of the log topic as a reader of `isolation` sees it: `(offset,
/// dbmux-seq header, dbmux-last-seq header)`.
pub type LogRecord = (i64, Option<u64>, Option<u64>);

/// Every record of partition 0 of `topic`, read with `isolation.level` =
/// `read_committed` or `read_uncommitted`.
pub fn read_all(brokers: &str, topic: &str, isolation: &str) -> Vec<LogRecord> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "dbmux-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    drop(tpl);
    let header = |m: &rdkafka::message::BorrowedMessage<'_>, name: &str| -> Option<u64> {
        m.headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
    };
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(std::time::Instant::now() < deadline, "reading {topic} timed out");
        match c.poll(Duration::from_millis(500)) {
            // A filler record (it ends a hanging transaction) is not log content.
            Some(Ok(m))
                if m.headers()
                    .is_some_and(|h| h.iter().any(|h| h.key == connectors::kafka::HEADER_FILLER)) => {}
            Some(Ok(m)) => out.push((m.offset(), header(&m, "dbmux-seq"), header(&m, "dbmux-last-seq"))),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
}

/// Checks what a `read_committed` reader sees: records that continue each
/// other exactly from seq 1 (every seq once, no gap); returns the last seq.
pub fn assert_committed_gapless(brokers: &str, topic: &str) -> u64 {
    let mut next = 1;
    for (offset, first, last) in read_all(brokers, topic, "read_committed") {
        let (first, last) = (
            first.expect("dbmux-seq header"),
            last.expect("dbmux-last-seq header"),
        );
        assert_eq!(
            first, next,
            "record at offset {offset} starts at seq {first}, expected {next}"
        );
        assert!(last >= first);
        next = last + 1;
    }
    next - 1
}

/// `(last stable offset, high watermark)` of partition 0 of `topic`: the end
/// a `read_committed` reader sees and the end of the partition. The first is
/// smaller while a transaction is open.
pub fn stable_and_high(brokers: &str, topic: &str) -> (i64, i64) {
    let end = |isolation: &str| -> i64 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "dbmux-test-reader")
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        c.fetch_watermarks(topic, 0, Duration::from_secs(30)).unwrap().1
    };
    (end("read_committed"), end("read_uncommitted"))
}

/// The broker id leading partition 0 of `topic`.
pub fn leader(brokers: &str, topic: &str) -> i32 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let leader = md.topics()[0].partitions()[0].leader();
    drop(md);
    leader
}
