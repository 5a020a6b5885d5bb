//! The Kafka log against real brokers: split processes, crashes (including
//! between produce and commit), fencing, a broker restart, a three-broker
//! cluster losing a broker, unsafe topic settings, and a consumer written
//! with another client rebuilding tables from the change events.
//!
//! The shared broker (19092) only ever sees new, per-test topics; brokers
//! that are killed belong to the test (`support::kafka::PrivateKafka`).
//!
//! `DBMUX_KAFKA_CAMPAIGN=long` (see `scripts/kafka-campaign`) makes the
//! crash tests longer: more transactions and more kills.

use crate::support::compare::{assert_identical, assert_rows_eq, mysql_rows, pg_rows};
use crate::support::dbmux::{admin_get, kafka_brokers, log_section, Dbmux, LogKind, Part, Replicas, BOTH};
use crate::support::kafka::{assert_committed_gapless, create_topic, read_all, PrivateKafka};
use crate::support::{
    mysql_replica_url, mysql_url, pg_url, repo_root, unique_name, wait_for, with_db, workload,
};
use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

const CATCH_UP: Duration = Duration::from_secs(240);

fn long_campaign() -> bool {
    std::env::var("DBMUX_KAFKA_CAMPAIGN").is_ok_and(|v| v == "long")
}

/// The replica's own checkpoint (the truth an applier resumes from).
async fn mariadb_offset(consumer: &str) -> Option<u64> {
    let mut c = mysql_async::Conn::from_url(mysql_replica_url()).await.ok()?;
    let seq: Option<u64> = c
        .exec_first(
            "SELECT seq FROM dbmux.dbmux_offsets WHERE consumer = ?",
            (consumer,),
        )
        .await
        .ok()?;
    c.disconnect().await.ok()?;
    seq
}

async fn postgres_offset(consumer: &str) -> Option<u64> {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    let row = client
        .query_opt(
            "SELECT seq FROM dbmux.dbmux_offsets WHERE consumer = $1",
            &[&consumer],
        )
        .await
        .ok()??;
    Some(row.get::<_, i64>(0) as u64)
}

/// Waits until both test replicas stored `seq` as applied.
async fn wait_replicas_at(db: &str, seq: u64) {
    wait_for(
        &format!("both replicas to apply seq {seq}"),
        CATCH_UP,
        || async move {
            let m = mariadb_offset(&format!("{db}/mariadb")).await?;
            let p = postgres_offset(&format!("{db}/postgres")).await?;
            assert!(m <= seq && p <= seq, "a replica is beyond seq {seq}: {m} / {p}");
            (m == seq && p == seq).then_some(())
        },
    )
    .await
}

async fn assert_all_identical(db: &str) {
    for p in workload::projections() {
        assert_identical(db, &p, true, true).await;
    }
}

/// Waits for a capture process to stream from the master.
async fn wait_capturing(part: &Part) {
    wait_for(
        &format!("{} to stream from the master", part.label),
        Duration::from_secs(60),
        || async {
            let st = part.status().await?;
            (st["capture"]["connected"].as_bool() == Some(true)).then_some(())
        },
    )
    .await
}

/// Capture, both appliers as separate processes; capture killed (-9) at
/// random moments while the master is written, once exactly between
/// producing a Kafka transaction and committing it, appliers killed, and a
/// second capture process started beside the running one (which must be
/// fenced and stop). The replicas end identical to the master, and a
/// read_committed reader sees every seq once, without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_processes_survive_kills_and_a_second_capture_is_fenced() {
    let long = long_campaign();
    let db = unique_name("ksplit");
    workload::create_database(&db).await;
    let dbmux = Dbmux::with_log(&db, BOTH, "", LogKind::Kafka);
    let topic = format!("dbmux-test.{db}");
    let brokers = kafka_brokers();
    let mut capture = dbmux.part("capture", &["capture"]);
    let mut maria = dbmux.part("apply-mariadb", &["apply", "--replica", "mariadb"]);
    let mut pg = dbmux.part("apply-postgres", &["apply", "--replica", "postgres"]);
    capture.start();
    maria.start();
    pg.start();
    wait_capturing(&capture).await;

    let txns = if long { 3000 } else { 500 };
    let progress = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (db, progress) = (db.clone(), progress.clone());
        async move { workload::run(&db, txns, 41, progress).await }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let kills = if long { 25 } else { 4 };
    let mut done = 0;
    let mut last_progress = 0;
    while done < kills && !writer.is_finished() {
        // Let some changes through, then kill capture wherever it is.
        let p = progress.clone();
        wait_for("the master to be written", Duration::from_secs(60), || {
            let now = p.load(std::sync::atomic::Ordering::SeqCst);
            async move { (now > last_progress + 300).then_some(now) }
        })
        .await;
        last_progress = progress.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..700))).await;
        capture.kill();
        if done % 2 == 1 {
            maria.kill();
            maria.start();
        } else {
            pg.kill();
            pg.start();
        }
        capture.start();
        done += 1;
    }
    // Killed between produce and commit: the records are in the topic but
    // never committed; readers must not see them, and the restarted
    // capture must not skip or repeat a seq.
    capture.kill();
    let before_fault = read_all(&brokers, &topic, "read_uncommitted").len();
    capture.start_with_env(&[("DBMUX_FAULT_KAFKA_COMMIT_DELAY_MS", "3000")]);
    // Something to append in that window: by now the workload may be over
    // and capture caught up (only appends wait before their commit).
    {
        let mut c = mysql_async::Conn::from_url(with_db(&mysql_url(), &db))
            .await
            .unwrap();
        c.query_drop("INSERT INTO items VALUES (2000000000, 1, 'fault window')")
            .await
            .unwrap();
        c.disconnect().await.unwrap();
    }
    wait_for(
        "capture to sit between produce and commit",
        Duration::from_secs(120),
        || async {
            capture
                .output()
                .contains("records produced, waiting")
                .then_some(())
        },
    )
    .await;
    capture.kill();
    capture.start();
    wait_capturing(&capture).await;

    // A second capture for the same source fences the running one.
    let mut second = dbmux.part("capture-2", &["capture"]);
    second.start();
    let status = capture.wait_exit(Duration::from_secs(120)).await;
    assert!(!status.success(), "the fenced capture must stop with an error");
    assert!(
        capture.output().to_lowercase().contains("fenced"),
        "the first capture must say it was fenced:\n{}",
        capture.output()
    );

    let stats = writer.await.unwrap();
    // The workload's changes and the row written for the fault window.
    let total = stats.row_changes + 1;
    wait_replicas_at(&db, total).await;
    assert!(
        second.try_exit().is_none(),
        "the new capture keeps running:\n{}",
        second.output()
    );
    // Each applier process follows the log's head (it started on an empty
    // topic) and reports what it applied.
    for part in [&maria, &pg] {
        wait_for(
            &format!("{} to see the head", part.label),
            Duration::from_secs(60),
            || async move {
                let st = part.status().await?;
                let applied = st["replicas"].as_object()?.values().next()?["applied_seq"].as_u64()?;
                (st["log"]["last_seq"].as_u64() == Some(total) && applied == total).then_some(())
            },
        )
        .await;
    }
    assert_all_identical(&db).await;
    assert_eq!(assert_committed_gapless(&brokers, &topic), total);
    // Aborted records exist: the produce/commit kill left records that a
    // read_uncommitted reader sees and a read_committed one does not.
    let uncommitted = read_all(&brokers, &topic, "read_uncommitted");
    let committed = read_all(&brokers, &topic, "read_committed");
    assert!(uncommitted.len() > before_fault);
    assert!(
        uncommitted.len() > committed.len(),
        "no aborted record in the topic: the produce/commit kill did not happen"
    );
    // The whole log through `dbmux tail` (read_committed): each source
    // transaction once, in order.
    let envelopes = dbmux.tail(Some(1));
    assert_eq!(envelopes.len() as u64, total);
    assert!(envelopes
        .iter()
        .enumerate()
        .all(|(i, e)| e["seq"].as_u64() == Some(i as u64 + 1)));
    println!(
        "split processes: {total} row changes, {done} random capture kills + 1 between produce and commit, \
         {done} applier kills, 1 fenced capture; {} records in the topic, {} committed",
        uncommitted.len(),
        committed.len()
    );
}

/// A Kafka configuration on a private cluster.
fn private_log(brokers: &str, db: &str, rf: i32, min_isr: i32) -> String {
    format!(
        "{}replication_factor = {rf}\nmin_insync_replicas = {min_isr}\nrequest_timeout_ms = 5000\n",
        log_section(LogKind::Kafka, db, brokers)
    )
}

/// The only broker restarts while capture and appliers stream: capture and
/// appliers wait and retry, nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let mut kafka = PrivateKafka::start(1).await;
    let brokers = kafka.brokers();
    let db = unique_name("krestart");
    workload::create_database(&db).await;
    let mut dbmux = Dbmux::with_log_section(&db, BOTH, "", &private_log(&brokers, &db, 1, 1));
    dbmux.start();
    dbmux.wait_capturing().await;
    let progress = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (db, progress) = (db.clone(), progress.clone());
        async move { workload::run(&db, if long_campaign() { 1500 } else { 400 }, 51, progress).await }
    });
    let p = progress.clone();
    wait_for("the workload to start", Duration::from_secs(60), || {
        let n = p.load(std::sync::atomic::Ordering::SeqCst);
        async move { (n > 2000).then_some(()) }
    })
    .await;
    kafka.kill(0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        dbmux.try_exit().is_none(),
        "dbmux must wait for the broker:\n{}",
        dbmux.output()
    );
    kafka.restart(0).await;
    kafka.wait_ready(1).await;
    let stats = writer.await.unwrap();
    wait_replicas_at(&db, stats.row_changes).await;
    assert_all_identical(&db).await;
    assert_eq!(
        assert_committed_gapless(&brokers, &format!("dbmux-test.{db}")),
        stats.row_changes
    );
    // Some restarts leave a hanging transaction (see the writer's `recover`).
    println!(
        "broker restart: {} row changes; a hanging transaction was ended: {}",
        stats.row_changes,
        dbmux.output().contains("the hanging transaction is ended")
    );
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());

    // Started while the broker is down (a process manager starting both at
    // once): dbmux waits for it, saying so, instead of exiting; changes made
    // meanwhile arrive once it is back.
    kafka.kill(0);
    let more = workload::run(&db, 40, 52, Arc::new(AtomicU64::new(0))).await;
    dbmux.start();
    wait_for("dbmux to say it waits for Kafka", Duration::from_secs(60), || {
        let out = dbmux.output();
        async move {
            out.contains("Kafka log unavailable at start; retrying")
                .then_some(())
        }
    })
    .await;
    assert!(
        dbmux.try_exit().is_none(),
        "dbmux must wait for the broker at start:\n{}",
        dbmux.output()
    );
    kafka.restart(0).await;
    kafka.wait_ready(1).await;
    wait_replicas_at(&db, stats.row_changes + more.row_changes).await;
    assert_all_identical(&db).await;
    assert_eq!(
        assert_committed_gapless(&brokers, &format!("dbmux-test.{db}")),
        stats.row_changes + more.row_changes
    );
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
}

/// Three brokers (replication factor 3, min.insync.replicas 2): one is
/// killed mid-stream and replication goes on; it rejoins later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_broker_cluster_keeps_replicating_with_a_broker_down() {
    let mut kafka = PrivateKafka::start(3).await;
    let brokers = kafka.brokers();
    let db = unique_name("kthree");
    workload::create_database(&db).await;
    let mut dbmux = Dbmux::with_log_section(&db, BOTH, "", &private_log(&brokers, &db, 3, 2));
    dbmux.start();
    dbmux.wait_capturing().await;
    let progress = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (db, progress) = (db.clone(), progress.clone());
        async move { workload::run(&db, if long_campaign() { 1500 } else { 400 }, 61, progress).await }
    });
    let p = progress.clone();
    wait_for("the workload to start", Duration::from_secs(60), || {
        let n = p.load(std::sync::atomic::Ordering::SeqCst);
        async move { (n > 2000).then_some(()) }
    })
    .await;
    // Kill the broker that leads the log topic's partition.
    let leader = crate::support::kafka::leader(&brokers, &format!("dbmux-test.{db}"));
    let victim = kafka.nodes.iter().position(|n| n.id as i32 == leader).unwrap();
    kafka.kill(victim);
    let down_at = mariadb_offset(&format!("{db}/mariadb")).await.unwrap_or(0);
    // Replication continues with two of three brokers.
    wait_for(
        "replication to go on with a broker down",
        Duration::from_secs(120),
        || {
            let db = db.clone();
            async move {
                let now = mariadb_offset(&format!("{db}/mariadb")).await?;
                (now > down_at + 1000).then_some(())
            }
        },
    )
    .await;
    let stats = writer.await.unwrap();
    wait_replicas_at(&db, stats.row_changes).await;
    kafka.restart(victim).await;
    kafka.wait_ready(3).await;
    assert_all_identical(&db).await;
    assert_eq!(
        assert_committed_gapless(&brokers, &format!("dbmux-test.{db}")),
        stats.row_changes
    );
    // dbmux created the log topic with the configured safety.
    let admin = crate::support::kafka::admin(&brokers);
    let res = admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(&format!(
                "dbmux-test.{db}"
            ))],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let cfg = res.into_iter().next().unwrap().unwrap();
    assert_eq!(
        cfg.get("min.insync.replicas")
            .and_then(|e| e.value.clone())
            .as_deref(),
        Some("2")
    );
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
}

/// A log topic with settings that would lose or reorder data stops dbmux
/// at start, naming each setting, the value needed and the value found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_log_topic_settings_are_refused_naming_them() {
    let db = unique_name("kunsafe");
    let brokers = kafka_brokers();
    create_topic(
        &brokers,
        &format!("dbmux-test.{db}"),
        2,
        &[("cleanup.policy", "compact"), ("retention.ms", "60000")],
    )
    .await;
    let dbmux = Dbmux::with_log(
        &db,
        Replicas {
            mariadb: true,
            postgres: false,
        },
        "",
        LogKind::Kafka,
    );
    let mut capture = dbmux.part("capture", &["capture"]);
    capture.start();
    let status = capture.wait_exit(Duration::from_secs(60)).await;
    let out = capture.output();
    assert!(!status.success(), "{out}");
    for needle in [
        "partitions must be 1",
        "found 2",
        "cleanup.policy must be delete",
        "found compact",
        "retention.ms must be -1",
        "found 60000",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

/// Change events on per-table topics, read by a consumer written with
/// another client (Python confluent-kafka): rebuilding tables by primary
/// key gives exactly the master's rows (primary-key changes, deletes and
/// composite keys included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consumer_rebuilds_tables_from_change_events() {
    let db = unique_name("kevents");
    workload::create_database(&db).await;
    let brokers = kafka_brokers();
    let prefix = format!("dbmux-test.{db}");
    let log = format!(
        "{}[log.kafka.change_events]\nenabled = true\ntopic = \"{prefix}.{{db}}.{{table}}\"\n\
         transaction_topic = \"{prefix}.transaction\"\n",
        log_section(LogKind::Kafka, &db, &brokers)
    );
    let mut dbmux = Dbmux::with_log_section(&db, BOTH, "", &log);
    dbmux.start();
    dbmux.wait_capturing().await;
    let stats = workload::run(&db, 200, 71, Arc::new(AtomicU64::new(0))).await;
    dbmux.wait_caught_up(stats.row_changes, CATCH_UP).await;
    assert!(dbmux.stop().success());

    let python = std::env::var("DBMUX_TEST_KAFKA_PYTHON")
        .ok()
        .or_else(|| crate::support::services_value("DBMUX_TEST_KAFKA_PYTHON"))
        .unwrap_or_else(|| {
            repo_root()
                .join(".dev/kafka-python/bin/python")
                .display()
                .to_string()
        });
    let topics = [format!("{prefix}.{db}.items"), format!("{prefix}.{db}.pairs")];
    let out = std::process::Command::new(&python)
        .arg(repo_root().join("tests/integration/change_events_consumer.py"))
        .arg(&brokers)
        .args(&topics)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (scripts/services up installs it)"));
    assert!(
        out.status.success(),
        "python consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    let rows = |topic: &str, cols: &[&str]| -> Vec<Vec<Option<String>>> {
        let mut rows: Vec<Vec<Option<String>>> = tables[topic]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| cols.iter().map(|c| text(&r[*c])).collect())
            .collect();
        rows.sort_by_key(|r| {
            r.iter()
                .take(2)
                .map(|v| v.as_deref().unwrap_or("").parse::<i64>().unwrap_or(0))
                .collect::<Vec<_>>()
        });
        rows
    };
    let master = with_db(&mysql_url(), &db);
    let items = mysql_rows(
        &master,
        "SELECT CAST(id AS CHAR), CAST(k AS CHAR), s FROM items ORDER BY id",
    )
    .await;
    let pairs = mysql_rows(
        &master,
        "SELECT CAST(a AS CHAR), CAST(b AS CHAR), v FROM pairs ORDER BY a, b",
    )
    .await;
    assert!(items.len() > 100 && !pairs.is_empty());
    assert_rows_eq(
        &items,
        &rows(&topics[0], &["id", "k", "s"]),
        "items rebuilt by the Python consumer",
    );
    assert_rows_eq(
        &pairs,
        &rows(&topics[1], &["a", "b", "v"]),
        "pairs rebuilt by the Python consumer",
    );
    // One BEGIN and one END marker per source transaction.
    let markers = read_all(&brokers, &format!("{prefix}.transaction"), "read_committed");
    assert_eq!(markers.len() as u64, stats.transactions * 2);
}

/// The proxy's read-your-writes with the applier in another process: capture,
/// the MariaDB applier and the proxy each run alone (`dbmux capture`,
/// `dbmux apply --replica mariadb`, `dbmux proxy`) on the Kafka log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_read_your_writes_with_the_applier_in_another_process() {
    let db = unique_name("kryw");
    let mut conn = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
    conn.query_drop(format!("CREATE DATABASE `{db}`")).await.unwrap();
    conn.query_drop(format!(
        "CREATE TABLE `{db}`.ryw (id INT PRIMARY KEY, v INT NOT NULL)"
    ))
    .await
    .unwrap();
    conn.disconnect().await.unwrap();
    let port = crate::support::dbmux::free_port();
    let hashes = "mysql_native_password = \"*F142931D9296BB66D4600D47418DBC1475D27D29\"\n\
                  caching_sha2_password = \"6681bbfe12153c1b4a0268cf4733a0a3021ff47751fafc3c0a4bdae5a0a89db6\"\n";
    let extra = format!(
        "\n[proxy]\nlisten = \"127.0.0.1:{port}\"\nmaster = \"{}\"\nhealth_interval_ms = 100\n\
         [[proxy.replicas]]\nname = \"mariadb\"\nurl = \"{}\"\n\
         [[proxy.users]]\nname = \"app\"\n{hashes}\
         [[proxy.users]]\nname = \"eventual\"\nconsistency = \"eventual\"\n{hashes}",
        with_db(&mysql_url(), ""),
        with_db(&mysql_replica_url(), "")
    );
    let dbmux = Dbmux::with_log(
        &db,
        Replicas {
            mariadb: true,
            postgres: false,
        },
        &extra,
        LogKind::Kafka,
    );
    let mut capture = dbmux.part("capture", &["capture"]);
    let mut apply = dbmux.part("apply-mariadb", &["apply", "--replica", "mariadb"]);
    let mut proxy = dbmux.part("proxy", &["proxy"]);
    capture.start();
    apply.start();
    proxy.start();
    wait_capturing(&capture).await;
    let url = |user: &str| format!("mysql://{user}:app-password@127.0.0.1:{port}/{db}?prefer_socket=false");
    let consumer = format!("{db}/mariadb");
    let clients = 6i32;
    wait_for("the proxy to accept clients", Duration::from_secs(60), || {
        let u = url("app");
        async move { mysql_async::Conn::from_url(u).await.ok().map(|_| ()) }
    })
    .await;
    {
        let mut c = mysql_async::Conn::from_url(url("app")).await.unwrap();
        for id in 0..clients {
            c.exec_drop(format!("INSERT INTO `{db}`.ryw VALUES (?, 0)"), (id,))
                .await
                .unwrap();
        }
        c.disconnect().await.unwrap();
    }
    wait_for("the seed rows to be applied", CATCH_UP, || {
        let consumer = consumer.clone();
        async move { (mariadb_offset(&consumer).await? >= clients as u64).then_some(()) }
    })
    .await;
    // Slow the separate applier down: hold its offsets row locked most of the time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slower = tokio::spawn({
        let (stop, consumer) = (stop.clone(), consumer.clone());
        async move {
            let mut c = mysql_async::Conn::from_url(mysql_replica_url()).await.unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut tx = c.start_transaction(Default::default()).await.unwrap();
                let _: Option<u64> = tx
                    .exec_first(
                        "SELECT seq FROM dbmux.dbmux_offsets WHERE consumer = ? FOR UPDATE",
                        (&consumer,),
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(400)).await;
                tx.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    });
    let mut tasks = Vec::new();
    for client in 0..clients {
        let user = if client % 2 == 0 { "app" } else { "eventual" };
        let (u, db) = (url(user), db.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = mysql_async::Conn::from_url(u).await.unwrap();
            let mut stale = 0u32;
            for round in 1..=12 {
                c.exec_drop(
                    format!("UPDATE `{db}`.ryw SET v = ? WHERE id = ?"),
                    (round, client),
                )
                .await
                .unwrap();
                let v: i32 = c
                    .exec_first(format!("SELECT v FROM `{db}`.ryw WHERE id = ?"), (client,))
                    .await
                    .unwrap()
                    .unwrap();
                if v != round {
                    stale += 1;
                }
            }
            c.disconnect().await.unwrap();
            (user, stale)
        }));
    }
    let (mut stale_ryw, mut stale_eventual) = (0, 0);
    for t in tasks {
        let (user, stale) = t.await.unwrap();
        if user == "app" {
            stale_ryw += stale;
        } else {
            stale_eventual += stale;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    slower.await.unwrap();
    assert_eq!(stale_ryw, 0, "a read-your-writes session read stale data");
    assert!(
        stale_eventual > 0,
        "replication was not slow enough to show the difference"
    );
    assert!(proxy.try_exit().is_none(), "{}", proxy.output());
    // The applier process, started on an empty log topic and never
    // restarted, follows the log's head (for its lag metric).
    let head = capture.status().await.unwrap()["log"]["last_seq"]
        .as_u64()
        .unwrap();
    assert!(head > clients as u64);
    wait_for(
        "the applier process to see the head",
        Duration::from_secs(60),
        || async {
            let st = apply.status().await?;
            (st["log"]["last_seq"].as_u64() == Some(head)).then_some(())
        },
    )
    .await;
    assert!(capture.stop().success());
    assert!(apply.stop().success());
    println!("read-your-writes with a separate applier: 0 stale reads, {stale_eventual} for eventual users");
}

/// `examples/kafka.toml` is valid as shipped (the demo runs it against
/// `scripts/services up`).
#[test]
fn kafka_example_config_is_valid() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .arg("check-config")
        .arg(repo_root().join("examples/kafka.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("log: kafka 127.0.0.1:19092"), "{text}");
}

/// Each sample transaction's commit time derives from its first seq.
fn sample_commit_us(first: u64) -> i64 {
    first as i64 * 1_000 + 7
}

/// A source transaction of `n` inserts numbered from `first`, sequenced
/// from `first`.
fn sample_txn(first: u64, n: usize) -> pipeline::event::Transaction {
    use pipeline::event::{sequence_transaction, Op};
    use pipeline::position::{MysqlPosition, Position};
    use pipeline::schema::{ColumnDef, ColumnType, TableId, TableSchema};
    use pipeline::value::Value;
    let table = Arc::new(TableSchema::new(
        TableId::new("contract", "t"),
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
    let pos = Position::Mysql(MysqlPosition {
        file: "b.000001".into(),
        offset: first,
        gtid_set: Some(format!("0-1-{first}")),
    });
    let changes = (0..n)
        .map(|i| {
            (
                table.clone(),
                Op::Insert {
                    after: vec![Value::Int((first + i as u64) as i64)],
                },
            )
        })
        .collect();
    sequence_transaction(
        first,
        format!("0-1-{first}"),
        sample_commit_us(first),
        pos,
        changes,
    )
}

/// The `Log` contract, checked the same way on both implementations:
/// gapless appends (a gap is refused), whole transactions on read (also
/// from the middle of one spanning many records), the newest seq and its
/// resume position, metadata, and nothing past the end.
async fn log_contract<L: pipeline::log::Log>(log: L) {
    use pipeline::log::{LogError, LogReader};
    use pipeline::position::{MysqlPosition, Position};
    let txn = sample_txn;
    let commit_us = sample_commit_us;
    assert_eq!(log.last().await.unwrap(), None);
    assert_eq!(log.start_position().await.unwrap(), None);
    let start = Position::Mysql(MysqlPosition {
        file: "b.000001".into(),
        offset: 4,
        gtid_set: None,
    });
    log.set_start_position(&start).await.unwrap();
    assert_eq!(log.resume_position().await.unwrap(), Some(start));
    log.append(vec![txn(1, 3)]).await.unwrap();
    // A transaction spanning several records, then a small one, in one append.
    log.append(vec![txn(4, 2500), txn(2504, 1)]).await.unwrap();
    assert!(matches!(
        log.append(vec![txn(2600, 1)]).await,
        Err(LogError::Gap { .. })
    ));
    let (last, pos) = log.last().await.unwrap().unwrap();
    assert_eq!(last, 2504);
    assert_eq!(pos.to_string(), "mysql:b.000001:2504:0-1-2504");
    assert_eq!(log.resume_position().await.unwrap(), Some(pos));
    assert_eq!(log.first_seq().await.unwrap(), Some(1));
    // The commit time of single events (lag at scrape time), also inside a
    // transaction spanning several records, and asked in any order.
    for (seq, first) in [
        (1000, 4),
        (2, 1),
        (2504, 2504),
        (3, 1),
        (4, 4),
        (2503, 4),
        (2503, 4),
    ] {
        assert_eq!(
            log.commit_ts_at(seq).await.unwrap(),
            Some(commit_us(first)),
            "commit time of seq {seq}"
        );
    }
    assert_eq!(log.commit_ts_at(0).await.unwrap(), None);
    assert_eq!(log.commit_ts_at(2505).await.unwrap(), None, "not written yet");

    let mut reader = log.reader("contract").await.unwrap();
    let t = reader.read(1, 1).await.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].first_seq(), t[0].last_seq()), (1, 3));
    // Continues without repositioning; the big transaction comes whole.
    let t = reader.read(4, 10).await.unwrap();
    assert_eq!((t[0].first_seq(), t[0].last_seq(), t.len()), (4, 2503, 1));
    reader.ack(2503).await.unwrap();
    // From the middle of the big transaction (repositioning): its rest, whole.
    let mut other = log.reader("contract-2").await.unwrap();
    let t = other.read(1000, 1).await.unwrap();
    assert_eq!(t[0].first_seq(), 1000);
    assert_eq!(t[0].last_seq(), 2503);
    assert!(t[0].events.last().unwrap().txn.last);
    let t = other.read(2504, 100).await.unwrap();
    assert_eq!((t.len(), t[0].first_seq()), (1, 2504));
    // Nothing past the end (yet).
    assert!(other.read(2505, 100).await.unwrap().is_empty());
    log.append(vec![txn(2505, 2)]).await.unwrap();
    let t = other.read(2505, 100).await.unwrap();
    assert_eq!((t[0].first_seq(), t[0].last_seq()), (2505, 2506));
    assert_eq!(log.commit_ts_at(2506).await.unwrap(), Some(commit_us(2505)));
    // Back to the start with the first reader.
    let t = reader.read(1, 5000).await.unwrap();
    assert_eq!(t.iter().map(|t| t.len()).sum::<usize>(), 2506);
    assert_eq!(log.acked("contract").await.unwrap(), Some(2503));
    // The acknowledgement is only a hint: a new reader of the same consumer
    // asked for an older seq (its target was restored from a backup) gets it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut restored = log.reader("contract").await.unwrap();
    let t = restored.read(2, 1).await.unwrap();
    assert_eq!((t[0].first_seq(), t[0].last_seq()), (2, 3));
    log.set_meta("k", b"v1".to_vec()).await.unwrap();
    log.set_meta("k", b"v2".to_vec()).await.unwrap();
    assert_eq!(log.meta("k").await.unwrap(), Some(b"v2".to_vec()));
    assert_eq!(log.meta("absent").await.unwrap(), None);
    // Read-your-writes, many times over: a write that returned is read back
    // at once (a Kafka commit's markers land just after the commit returns).
    for i in 0..60u64 {
        let value = format!("round {i}").into_bytes();
        log.set_meta("ryw", value.clone()).await.unwrap();
        assert_eq!(log.meta("ryw").await.unwrap(), Some(value), "meta round {i}");
        let seq = 2507 + i;
        log.append(vec![txn(seq, 1)]).await.unwrap();
        assert_eq!(
            log.last().await.unwrap().map(|(s, _)| s),
            Some(seq),
            "last round {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_contract_holds_for_the_embedded_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = pipeline::log::EmbeddedLog::open(dir.path(), pipeline::log::FsyncPolicy::Never).unwrap();
    log_contract(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_contract_holds_for_the_kafka_log() {
    let name = unique_name("kcontract");
    let cfg: connectors::kafka::KafkaLogConfig = toml::from_str(&format!(
        "brokers = \"{}\"\ntopic = \"dbmux-test.{name}\"",
        kafka_brokers()
    ))
    .unwrap();
    let log = connectors::kafka::KafkaLog::open(cfg, &name, connectors::kafka::Role::Capture)
        .await
        .unwrap();
    log_contract(log).await;
}

/// Copies directory `from` to `to` (`to` is replaced).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A log record as capture's writer produces it: payload, `(header, value)`s.
type RawRecord = (Vec<u8>, [(String, String); 3]);

/// A transaction's events as log records, `per_record` events a record.
fn log_records(t: &pipeline::event::Transaction, per_record: usize) -> Vec<RawRecord> {
    t.events
        .chunks(per_record)
        .map(|c| {
            (
                pipeline::codec::encode(c, t.len() as u32),
                [
                    (connectors::kafka::HEADER_SEQ.into(), c[0].seq.to_string()),
                    (
                        connectors::kafka::HEADER_LAST_SEQ.into(),
                        c[c.len() - 1].seq.to_string(),
                    ),
                    (
                        connectors::kafka::HEADER_FORMAT.into(),
                        pipeline::codec::FORMAT_VERSION.to_string(),
                    ),
                ],
            )
        })
        .collect()
}

/// Leaves a *hanging* transaction of capture's own producer id on `topic`
/// of `kafka`'s only broker: `records` in the log partition, while the
/// transaction coordinator's state says no transaction is open, so nothing
/// will ever end it. Made by putting the coordinator's partitions back to a
/// copy taken before the transaction began (the broker stopped meanwhile).
async fn leave_hanging(kafka: &mut PrivateKafka, topic: &str, records: &[RawRecord]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let brokers = kafka.brokers();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("transactional.id", format!("dbmux.{topic}"))
        .set("transaction.timeout.ms", "60000")
        .set("log_level", "3")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(60)).unwrap();
    let data = kafka.dir.path().join("node1").join("data");
    let saved = kafka.dir.path().join("saved");
    kafka.kill(0);
    let dirs: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("__transaction_state-"))
        .collect();
    assert!(!dirs.is_empty(), "no coordinator partition in {data:?}");
    for d in &dirs {
        copy_dir(&data.join(d), &saved.join(d));
    }
    kafka.restart(0).await;
    kafka.wait_ready(1).await;
    producer.begin_transaction().unwrap();
    for (payload, headers) in records {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload).headers(h);
        let delivered = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .unwrap()
            .await
            .unwrap();
        delivered
            .map_err(|(e, _)| e)
            .expect("a record of the transaction is delivered");
    }
    let (lso, hw) = stable_and_high(&brokers, topic).await;
    assert!(
        lso < hw,
        "the open transaction's records are in the partition: {lso} / {hw}"
    );
    // The broker goes; its coordinator comes back without the transaction.
    kafka.kill(0);
    drop(producer);
    for d in &dirs {
        copy_dir(&saved.join(d), &data.join(d));
    }
    kafka.restart(0).await;
    kafka.wait_ready(1).await;
    let (lso, hw) = stable_and_high(&brokers, topic).await;
    assert!(
        lso < hw,
        "a transaction hangs open on {topic}: last stable offset {lso}, high watermark {hw}"
    );
}

async fn stable_and_high(brokers: &str, topic: &str) -> (i64, i64) {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || crate::support::kafka::stable_and_high(&brokers, &topic))
        .await
        .unwrap()
}

/// A *hanging* transaction of capture's own producer id (see
/// `leave_hanging`): seen when the only broker was killed mid-stream. It
/// came back with the records of a transaction whose commit had returned,
/// without their commit marker: readers stopped for good, and before that
/// the next commit of the same producer id committed them along with the
/// batch produced again (every seq twice). Opening the log must end it
/// instead of waiting for ever: committed when it holds whole transactions
/// continuing the log (what the producer was told), aborted when it holds a
/// transaction cut short (never committed). Readers see every seq once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_transaction_of_this_capture_is_ended_not_waited_for() {
    use connectors::kafka::{KafkaLog, KafkaLogConfig, Role};
    use pipeline::log::{Log, LogReader};
    let mut kafka = PrivateKafka::start(1).await;
    let brokers = kafka.brokers();
    // (whole transactions?, what the log holds after the open)
    for (whole, expect_last) in [(true, 6u64), (false, 3)] {
        let name = unique_name(if whole { "khangwhole" } else { "khangcut" });
        let topic = format!("dbmux-test.{name}");
        let cfg: KafkaLogConfig = toml::from_str(&format!(
            "brokers = \"{brokers}\"\ntopic = \"{topic}\"\nreplication_factor = 1\nmin_insync_replicas = 1\n\
             request_timeout_ms = 5000\ntransaction_timeout_ms = 5000"
        ))
        .unwrap();
        let log = KafkaLog::open(cfg.clone(), &name, Role::Capture).await.unwrap();
        log.append(vec![sample_txn(1, 3)]).await.unwrap();
        drop(log);
        // seq 4..=6 in two records; cut short: only the first.
        let mut records = log_records(&sample_txn(4, 3), 2);
        if !whole {
            records.truncate(1);
        }
        leave_hanging(&mut kafka, &topic, &records).await;

        // Capture opens the log, on a thread and runtime of its own: if it
        // hangs, the test fails after 120 s instead of hanging with it (a
        // runtime waits for its blocking tasks when it is dropped).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn({
            let (cfg, name) = (cfg.clone(), name.clone());
            move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                let _ = tx.send(rt.block_on(KafkaLog::open(cfg, &name, Role::Capture)));
            }
        });
        let log = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(120)))
            .await
            .unwrap()
            .expect("opening the log waited for the hanging transaction for 120 s")
            .unwrap();
        assert_eq!(
            log.last().await.unwrap().map(|(s, _)| s),
            Some(expect_last),
            "whole: {whole}"
        );
        let (lso, hw) = stable_and_high(&brokers, &topic).await;
        assert_eq!(lso, hw, "no transaction open any more");
        log.append(vec![sample_txn(expect_last + 1, 2)]).await.unwrap();
        let end = expect_last + 2;
        assert_eq!(log.last().await.unwrap().map(|(s, _)| s), Some(end));
        let mut reader = log.reader("hang").await.unwrap();
        let mut seqs = Vec::new();
        for _ in 0..100 {
            if seqs.last() == Some(&end) {
                break;
            }
            let txns = reader.read(seqs.len() as u64 + 1, 100).await.unwrap();
            seqs.extend(txns.iter().flat_map(|t| t.events.iter().map(|e| e.seq)));
        }
        assert_eq!(seqs, (1..=end).collect::<Vec<_>>(), "whole: {whole}");
        // Every committed record is dbmux's (the filler passed over), from
        // seq 1, once, without a gap.
        assert_eq!(assert_committed_gapless(&brokers, &topic), end, "whole: {whole}");
    }
}

/// A sample's value in an OpenMetrics text (`name{labels}` as written there).
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Quarantine with the Kafka log and split processes: a value the PostgreSQL
/// replica cannot take quarantines that table in the `dbmux apply --replica
/// postgres` process only (the MariaDB applier takes everything); its
/// `/status` and `/metrics` say so. `dbmux resume-table` refuses to work by
/// itself (an applier may run on another host) and, pointed at the applier's
/// admin server with `--admin`, has the applier re-apply exactly the skipped
/// events, read back from the Kafka topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_and_resume_with_the_kafka_log_and_split_processes() {
    let db = unique_name("kquar");
    let master = with_db(&mysql_url(), "");
    let mut c = mysql_async::Conn::from_url(master.as_str()).await.unwrap();
    for s in [
        format!("CREATE DATABASE `{db}`"),
        format!("CREATE TABLE `{db}`.ok (id INT PRIMARY KEY, v INT)"),
        format!("CREATE TABLE `{db}`.z (id INT PRIMARY KEY, d DATE)"),
        format!("CREATE TABLE `{db}`.y (id INT PRIMARY KEY, d DATE)"),
    ] {
        c.query_drop(s).await.unwrap();
    }
    c.query_drop(format!("USE `{db}`")).await.unwrap();
    c.query_drop("SET SESSION sql_mode = ''").await.unwrap();
    let dbmux = Dbmux::with_log(&db, BOTH, "", LogKind::Kafka);
    let mut capture = dbmux.part("capture", &["capture"]);
    let mut maria = dbmux.part("apply-mariadb", &["apply", "--replica", "mariadb"]);
    let mut pg = dbmux.part("apply-postgres", &["apply", "--replica", "postgres"]);
    capture.start();
    maria.start();
    pg.start();
    wait_capturing(&capture).await;
    for s in [
        "INSERT INTO ok VALUES (1, 1)",
        "INSERT INTO z VALUES (1, '0000-00-00'), (2, '2024-02-29')",
        "INSERT INTO ok VALUES (2, 2)",
        "UPDATE z SET d = '2000-01-01' WHERE id = 2",
        "INSERT INTO y VALUES (1, '2024-00-10')",
    ] {
        c.query_drop(s).await.unwrap();
    }
    // seq: ok1, z1, z2, ok2, z2', y1 = 6 events; both replicas reach 6.
    wait_replicas_at(&db, 6).await;
    let status = pg.status().await.unwrap();
    assert_eq!(status["log"]["kind"], "kafka", "{status}");
    assert_eq!(status["log"]["last_seq"], 6, "{status}");
    let p = &status["replicas"]["postgres"];
    assert_eq!(p["state"], "running", "{status}");
    let quarantined: Vec<&str> = p["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["table"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(quarantined, ["y", "z"], "{status}");
    assert!(status["replicas"].get("mariadb").is_none(), "{status}");
    assert_eq!(
        maria.status().await.unwrap()["replicas"]["mariadb"]["quarantined"],
        serde_json::json!([])
    );
    // The apply process learns the log's head from Kafka.
    let pg_ref = &pg;
    wait_for(
        "dbmux_log_last_seq in the apply process",
        CATCH_UP,
        || async move {
            let m = admin_get(&pg_ref.admin, "/metrics").await?;
            (metric(&m, "dbmux_log_last_seq") == Some(6.0)).then_some(())
        },
    )
    .await;
    let metrics = admin_get(&pg.admin, "/metrics").await.unwrap();
    assert_eq!(
        metric(&metrics, "dbmux_apply_quarantined_tables{replica=\"postgres\"}"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "dbmux_apply_lag_events{replica=\"postgres\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert!(pg_rows(&format!("SELECT id FROM \"{db}\".z")).await.is_empty());
    assert_eq!(pg_rows(&format!("SELECT id FROM \"{db}\".ok")).await.len(), 2);

    let resume = |table: &str, admin: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
            .args(["resume-table", "--replica", "postgres", "--table"])
            .arg(format!("{db}.{table}"))
            .arg("--config")
            .arg(&dbmux.config)
            .args(["--admin", admin])
            .output()
            .unwrap()
    };
    // Nothing answers there: with Kafka it does not work beside a possibly
    // running applier, and says what to do instead.
    let nobody = format!("127.0.0.1:{}", crate::support::dbmux::free_port());
    let out = resume("z", &nobody);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Kafka") && err.contains("--admin"), "{err}");

    // The operator maps zero dates on PostgreSQL, restarts that applier and
    // resumes z, then y, through it.
    assert!(pg.stop().success());
    let text = std::fs::read_to_string(&dbmux.config).unwrap();
    std::fs::write(
        &dbmux.config,
        text.replace(
            "[replica.postgres]\n",
            "[replica.postgres]\nzero_dates = \"neg_infinity\"\n",
        ),
    )
    .unwrap();
    pg.start();
    let me = &pg;
    wait_for("the PostgreSQL applier to run again", CATCH_UP, || async move {
        let st = me.status().await?;
        (st["replicas"]["postgres"]["state"] == "running").then_some(())
    })
    .await;
    let out = resume("z", &pg.admin);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 skipped event(s) re-applied"),
        "{out:?}"
    );
    let out = resume("y", &pg.admin);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 skipped event(s) re-applied"),
        "{out:?}"
    );
    assert_eq!(
        pg_rows(&format!("SELECT id, d::text FROM \"{db}\".z ORDER BY id")).await,
        vec![
            vec![Some("1".into()), Some("-infinity".into())],
            vec![Some("2".into()), Some("2000-01-01".into())]
        ]
    );
    // Both tables flow again.
    for s in [
        "INSERT INTO z VALUES (3, '2025-01-01')",
        "INSERT INTO y VALUES (2, '2025-01-02')",
    ] {
        c.query_drop(s).await.unwrap();
    }
    wait_replicas_at(&db, 8).await;
    assert_eq!(
        pg_rows(&format!("SELECT id, d::text FROM \"{db}\".y ORDER BY id")).await,
        vec![
            vec![Some("1".into()), Some("-infinity".into())],
            vec![Some("2".into()), Some("2025-01-02".into())]
        ]
    );
    assert_eq!(pg_rows(&format!("SELECT id FROM \"{db}\".z")).await.len(), 3);
    let status = pg.status().await.unwrap();
    assert_eq!(
        status["replicas"]["postgres"]["quarantined"],
        serde_json::json!([]),
        "{status}"
    );
    for part in [&mut capture, &mut maria, &mut pg] {
        assert!(part.stop().success(), "{} did not stop cleanly", part.label);
    }
}

/// The Kafka topic's retention deleted records a replica still needs (here:
/// the test deletes them, as retention would): a replica added then says so
/// loudly (`needs_snapshot`), is seeded by a snapshot run targeted at it alone
/// (requested through the Kafka log's metadata) and then follows the topic,
/// while capture and the other replica go on; `dbmux_log_first_seq` follows
/// the topic's start (issue 6 item 11 with the Kafka log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_needing_expired_kafka_records_is_seeded_by_a_snapshot() {
    use rdkafka::admin::AdminOptions;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let db = unique_name("kexp");
    let mut c = mysql_async::Conn::from_url(with_db(&mysql_url(), "").as_str())
        .await
        .unwrap();
    c.query_drop(format!("CREATE DATABASE `{db}`")).await.unwrap();
    c.query_drop(format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY)"))
        .await
        .unwrap();
    let maria_only = Replicas {
        mariadb: true,
        postgres: false,
    };
    let mut dbmux = Dbmux::with_log(&db, maria_only, "", LogKind::Kafka);
    dbmux.start();
    dbmux.wait_capturing().await;
    for i in 1..=3 {
        c.query_drop(format!("INSERT INTO `{db}`.t VALUES ({i})"))
            .await
            .unwrap();
    }
    dbmux.wait_caught_up(3, CATCH_UP).await;
    assert!(dbmux.stop().success());
    // Delete the records before the one holding seq 2.
    let brokers = kafka_brokers();
    let topic = format!("dbmux-test.{db}");
    let offset = read_all(&brokers, &topic, "read_committed")
        .into_iter()
        .find(|r| r.1 == Some(2))
        .expect("a record starting at seq 2")
        .0;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(offset))
        .unwrap();
    crate::support::kafka::admin(&brokers)
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("deleting records");
    let text = std::fs::read_to_string(&dbmux.config).unwrap();
    std::fs::write(
        &dbmux.config,
        format!(
            "{text}\n[[replica]]\nname = \"late\"\n[replica.postgres]\nurl = \"{}\"\n",
            pg_url()
        ),
    )
    .unwrap();
    dbmux.start();
    // Capture and the MariaDB replica go on meanwhile.
    c.query_drop(format!("INSERT INTO `{db}`.t VALUES (4)"))
        .await
        .unwrap();
    let me = &dbmux;
    wait_for(
        "the late replica to be seeded and follow the topic",
        CATCH_UP,
        || async move {
            let st = me.status().await?;
            let last = st["log"]["last_seq"].as_u64()?;
            let late = &st["replicas"]["late"];
            (last > 4
                && late["state"] == "running"
                && late["applied_seq"].as_u64() == Some(last)
                && late["snapshot_pending"].as_array()?.is_empty()
                && st["replicas"]["mariadb"]["applied_seq"].as_u64() == Some(last))
            .then_some(())
        },
    )
    .await;
    let me = &dbmux;
    wait_for(
        "dbmux_log_first_seq to follow the topic",
        CATCH_UP,
        || async move {
            let m = me.admin_get("/metrics").await?;
            (metric(&m, "dbmux_log_first_seq") == Some(2.0)).then_some(())
        },
    )
    .await;
    let m = dbmux.admin_get("/metrics").await.unwrap();
    assert_eq!(
        metric(&m, "dbmux_apply_needs_snapshot{replica=\"late\"}"),
        Some(0.0),
        "{m}"
    );
    let sql = "SELECT CAST(id AS CHAR) FROM t ORDER BY id";
    let master = crate::support::compare::mysql_rows(&with_db(&mysql_url(), &db), sql).await;
    assert_eq!(master.len(), 4);
    let maria =
        crate::support::compare::mysql_rows(&with_db(&crate::support::mysql_replica_url(), &db), sql).await;
    crate::support::compare::assert_rows_eq(&master, &maria, "the MariaDB replica");
    let pg = crate::support::compare::pg_rows(&format!("SELECT id::text FROM \"{db}\".t ORDER BY id")).await;
    crate::support::compare::assert_rows_eq(&master, &pg, "the late PostgreSQL replica");
    let out = dbmux.output();
    assert!(
        out.contains("needs seq 1, which the log no longer has (it starts at 2)"),
        "{out}"
    );
    assert!(out.contains("starts over from a snapshot"), "{out}");
    assert!(dbmux.stop().success());
}
