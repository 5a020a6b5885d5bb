//! End to end: the real `dbmux` binary between the test master and replicas.

use crate::support::compare::assert_identical;
use crate::support::dbmux::{Dbmux, Replicas, BOTH};
use crate::support::private::PrivateMariadb;
use crate::support::{mysql_url, unique_name, wait_for, with_db, workload};
use mysql_async::prelude::Queryable;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CATCH_UP: Duration = Duration::from_secs(180);

async fn assert_all_identical(db: &str, mariadb: bool, pg: bool) -> usize {
    let mut rows = 0;
    for p in workload::projections() {
        rows += assert_identical(db, &p, mariadb, pg).await;
    }
    rows
}

/// Checks the log read back through `dbmux tail`: seq 1..=n without gaps,
/// whole transactions in order, each source transaction exactly once.
fn assert_log_well_formed(envelopes: &[serde_json::Value], expected_events: u64, expected_txns: u64) {
    assert_eq!(envelopes.len() as u64, expected_events, "events in the log");
    let mut seen_txns: HashMap<String, u64> = HashMap::new();
    let mut current: Option<String> = None;
    for (i, e) in envelopes.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(i as u64 + 1),
            "seq must be gapless from 1"
        );
        let txn = e["source"]["txn"].as_str().unwrap().to_string();
        let index = e["source"]["txn_index"].as_u64().unwrap();
        if index == 0 {
            assert!(current.is_none(), "transaction {txn} starts inside another one");
            assert!(
                seen_txns
                    .insert(txn.clone(), e["seq"].as_u64().unwrap())
                    .is_none(),
                "transaction {txn} captured twice"
            );
            current = Some(txn.clone());
        } else {
            assert_eq!(
                current.as_deref(),
                Some(txn.as_str()),
                "event {i} continues another transaction"
            );
        }
        if e["source"]["txn_last"].as_bool().unwrap() {
            current = None;
        }
    }
    assert!(current.is_none(), "the log ends inside a transaction");
    assert_eq!(seen_txns.len() as u64, expected_txns, "transactions in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_reaches_both_replicas_identical() {
    let db = unique_name("wl");
    workload::create_database(&db).await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    dbmux.start();
    // Wait until dbmux is up (capture starts at the binlog's current end).
    wait_for("the admin server", Duration::from_secs(30), || async {
        dbmux.status().await
    })
    .await;
    let started = Instant::now();
    let progress = Arc::new(AtomicU64::new(0));
    let stats = workload::run(&db, 1500, 7, progress).await;
    let written = started.elapsed();
    assert!(stats.row_changes >= 50_000, "workload too small: {stats:?}");
    let last = dbmux.wait_caught_up(stats.row_changes, CATCH_UP).await;
    let total = started.elapsed();
    assert_eq!(last, stats.row_changes, "every row change is one event");
    println!(
        "workload: {} row changes in {} transactions; master write {:.1}s, replicas caught up after {:.1}s => {:.0} rows/s end to end",
        stats.row_changes,
        stats.transactions,
        written.as_secs_f64(),
        total.as_secs_f64(),
        stats.row_changes as f64 / total.as_secs_f64()
    );
    let rows = assert_all_identical(&db, true, true).await;
    assert!(rows > 10_000);
    assert_log_well_formed(&dbmux.tail(Some(1)), stats.row_changes, stats.transactions);
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_workload_loses_nothing_and_applies_nothing_twice() {
    let db = unique_name("crash");
    workload::create_database(&db).await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    dbmux.start();
    wait_for("the admin server", Duration::from_secs(30), || async {
        dbmux.status().await
    })
    .await;
    let progress = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let db = db.clone();
        let progress = progress.clone();
        async move { workload::run(&db, 600, 11, progress).await }
    });
    let mut kills = 0;
    let mut last_seen = 0;
    while !writer.is_finished() && kills < 5 {
        // Let the pipeline make progress, then kill it in the middle of its work.
        let target = last_seen + 1500;
        let me = &dbmux;
        let reached = wait_for(
            "progress before the next kill",
            Duration::from_secs(60),
            || async move {
                let st = me.status().await?;
                let applied = st["replicas"]
                    .as_object()?
                    .values()
                    .filter_map(|r| r["applied_seq"].as_u64())
                    .min()?;
                (applied >= target).then_some(applied)
            },
        )
        .await;
        last_seen = reached;
        dbmux.kill();
        kills += 1;
        dbmux.start();
    }
    let stats = writer.await.unwrap();
    assert!(kills >= 3, "only {kills} kills happened during the workload");
    let last = dbmux.wait_caught_up(stats.row_changes, CATCH_UP).await;
    assert_eq!(last, stats.row_changes);
    assert_all_identical(&db, true, true).await;
    // The no-primary-key `audit` table gets plain INSERTs: a replayed event would
    // duplicate a row, a skipped one would lose it; assert_all_identical compared it
    // row for row. The log itself shows every seq and transaction exactly once:
    assert_log_well_formed(&dbmux.tail(Some(1)), stats.row_changes, stats.transactions);
    println!("crash test: {kills} SIGKILLs, {} row changes", stats.row_changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_outage_is_retried_and_the_checkpoint_never_passes_applied_data() {
    let db = unique_name("outage");
    workload::create_database(&db).await;
    let mut replica = PrivateMariadb::start(&["--server-id=77"]).await;
    {
        let mut c = mysql_async::Conn::from_url(replica.url("app")).await.unwrap();
        c.query_drop(format!("CREATE DATABASE `{db}`")).await.unwrap();
        c.disconnect().await.unwrap();
    }
    let extra = format!(
        "\n[[replica]]\nname = \"flaky\"\n[replica.mysql]\nurl = \"{}\"\n",
        replica.url(&db)
    );
    let mut dbmux = Dbmux::new(
        &db,
        Replicas {
            mariadb: false,
            postgres: false,
        },
        &extra,
    );
    dbmux.start();
    wait_for("the admin server", Duration::from_secs(30), || async {
        dbmux.status().await
    })
    .await;
    let progress = Arc::new(AtomicU64::new(0));
    let first = workload::run(&db, 40, 21, progress.clone()).await;
    dbmux.wait_caught_up(first.row_changes, CATCH_UP).await;

    replica.kill();
    let second = workload::run(&db, 40, 22, progress.clone()).await;
    let total = first.row_changes + second.row_changes;
    // The log keeps capturing; the replica's checkpoint stays where its data is.
    let me = &dbmux;
    let st = wait_for(
        "capture to continue during the outage",
        Duration::from_secs(60),
        || async move {
            let st = me.status().await?;
            (st["log"]["last_seq"].as_u64()? == total).then_some(st)
        },
    )
    .await;
    assert_eq!(
        st["replicas"]["flaky"]["applied_seq"].as_u64(),
        Some(first.row_changes)
    );
    wait_for("a retry to be logged", Duration::from_secs(30), || async {
        dbmux.output().contains("retrying").then_some(())
    })
    .await;
    assert!(
        dbmux.try_exit().is_none(),
        "dbmux must not give up on a transient outage:\n{}",
        dbmux.output()
    );

    replica.restart().await;
    dbmux.wait_caught_up(total, CATCH_UP).await;
    for p in workload::projections() {
        let sql = format!("SELECT {} FROM `{}` ORDER BY {}", p.mysql, p.table, p.order);
        let master = crate::support::compare::mysql_rows(&with_db(&mysql_url(), &db), &sql).await;
        let rep = crate::support::compare::mysql_rows(&replica.url(&db), &sql).await;
        crate::support::compare::assert_rows_eq(
            &master,
            &rep,
            &format!("{} on the restarted replica", p.table),
        );
    }
    // The replica's own checkpoint names exactly the last seq it holds.
    let mut c = mysql_async::Conn::from_url(replica.url(&db)).await.unwrap();
    let stored: Option<u64> = c
        .exec_first(
            "SELECT seq FROM dbmux.dbmux_offsets WHERE consumer = ?",
            (format!("{db}/flaky"),),
        )
        .await
        .unwrap();
    assert_eq!(stored, Some(total));
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_based_master_fails_preflight_naming_the_setting() {
    let master = PrivateMariadb::start(&[
        "--server-id=5",
        "--log-bin=mysql-bin",
        "--binlog-format=STATEMENT",
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dbmux.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[admin]\nlisten = \"\"\n[source.mysql]\nurl = \"{}\"\nserver_id = 4242\n\
             [[replica]]\nname = \"r\"\n[replica.mysql]\nurl = \"{}\"\n",
            dir.path().join("data").display(),
            master.url("app"),
            master.url("app")
        ),
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
            .args(["run", "--config"])
            .arg(&config)
            .output(),
    )
    .await
    .expect("dbmux must stop by itself on a failed preflight")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "dbmux ran against a STATEMENT master:\n{text}"
    );
    assert!(text.contains("binlog_format"), "{text}");
    assert!(text.contains("STATEMENT") && text.contains("ROW"), "{text}");
}

#[test]
fn invalid_config_lists_every_error_with_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        r#"
data_dir = "/tmp/x"
colour = "blue"
[log]
fsync = "sometimes"
truncate_interval_s = 0
[source.mysql]
url = "not a url"
[[replica]]
name = "a"
[replica.mysql]
url = "mysql://u:hunter2@127.0.0.1:1/app"
[[replica]]
name = "a"
[[replica]]
name = "bad name!"
[replica.postgres]
url = "postgres://u:hunter2@127.0.0.1:1/app"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "colour",
        "log.fsync",
        "log.truncate_interval_s",
        "source.mysql.url",
        "replica[1].name",
        "replica[1]: exactly one",
        "replica[2].name",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("hunter2"), "a secret was printed:\n{err}");
}
