//! Snapshots end to end: rows a table had before dbmux started reach both
//! replicas, while a writer keeps changing the master and dbmux is killed in
//! the middle of the copy.

use crate::support::compare::{assert_identical, Projection};
use crate::support::dbmux::{Dbmux, Replicas, BOTH};
use crate::support::{mysql_url, unique_name, wait_for, with_db};
use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows pre-loaded by the kill test: `DBMUX_SNAPSHOT_ROWS` (the campaign,
/// `scripts/snapshot-campaign`, runs it with 1,000,000), else a size that
/// fits CI — the same code path and the same assertions.
fn rows() -> u64 {
    std::env::var("DBMUX_SNAPSHOT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000)
}

const TABLES: &[&str] = &[
    "CREATE TABLE big (id BIGINT NOT NULL PRIMARY KEY, grp INT NOT NULL, label VARCHAR(40) NOT NULL, \
     amount DECIMAL(12,2) NULL, noted DATETIME(6) NULL, KEY (grp)) DEFAULT CHARSET=utf8mb4",
    // No primary key, a UNIQUE key over NOT NULL columns: keyed by it.
    "CREATE TABLE uniq (code VARCHAR(20) NOT NULL, val INT NULL, UNIQUE KEY uk (code)) DEFAULT CHARSET=utf8mb4",
    // No key at all: copied whole, in one read view.
    "CREATE TABLE bag (a INT NOT NULL, b VARCHAR(20) NULL) DEFAULT CHARSET=utf8mb4",
];

fn projections() -> Vec<Projection<'static>> {
    vec![
        Projection {
            table: "big",
            mysql: "CAST(id AS CHAR), CAST(grp AS CHAR), label, CAST(amount AS CHAR), \
                    DATE_FORMAT(noted, '%Y-%m-%d %H:%i:%s.%f')",
            pg: "id::text, grp::text, label, amount::text, to_char(noted, 'YYYY-MM-DD HH24:MI:SS.US')",
            order: "id",
            float_cols: &[],
            json_cols: &[],
        },
        Projection {
            table: "uniq",
            mysql: "code, CAST(val AS CHAR)",
            pg: "code, val::text",
            order: "code",
            float_cols: &[],
            json_cols: &[],
        },
        Projection {
            table: "bag",
            mysql: "CAST(a AS CHAR), b",
            pg: "a::text, b",
            order: "a, b",
            float_cols: &[],
            json_cols: &[],
        },
    ]
}

async fn master(db: &str) -> mysql_async::Conn {
    let mut c = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
    c.query_drop(format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
        .await
        .unwrap();
    c.query_drop(format!("USE `{db}`")).await.unwrap();
    c
}

/// Pre-loads `n` rows into `big`, `n / 20` into `uniq`, `n / 50` into `bag`.
async fn preload(c: &mut mysql_async::Conn, n: u64) {
    for t in TABLES {
        c.query_drop(*t).await.unwrap();
    }
    let step = 100_000u64;
    let mut from = 1;
    while from <= n {
        let to = (from + step - 1).min(n);
        c.query_drop(format!(
            "INSERT INTO big SELECT seq, seq % 997, CONCAT('row ', seq), IF(seq % 7 = 0, NULL, seq / 100), \
             IF(seq % 5 = 0, NULL, TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND) FROM seq_{from}_to_{to}"
        ))
        .await
        .unwrap();
        from = to + 1;
    }
    c.query_drop(format!(
        "INSERT INTO uniq SELECT CONCAT('c', seq), IF(seq % 3 = 0, NULL, seq) FROM seq_1_to_{}",
        (n / 20).max(1)
    ))
    .await
    .unwrap();
    c.query_drop(format!(
        "INSERT INTO bag SELECT seq % 101, CONCAT('b', seq % 13) FROM seq_1_to_{}",
        (n / 50).max(1)
    ))
    .await
    .unwrap();
}

/// Random single-row transactions on the master until `stop`: updates and
/// deletes of pre-loaded rows, inserts of new ones, changes of every table.
async fn write(db: String, n: u64, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut c = mysql_async::Conn::from_url(with_db(&mysql_url(), &db))
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    let mut next_id = n + 1;
    while !stop.load(Ordering::SeqCst) {
        let id = rng.gen_range(1..=n);
        let sql = match rng.gen_range(0..10) {
            0..=3 => format!(
                "UPDATE big SET label = CONCAT('upd ', {}), amount = amount + 1 WHERE id = {id}",
                rng.gen::<u32>()
            ),
            4 => format!("DELETE FROM big WHERE id = {id}"),
            5 | 6 => {
                next_id += 1;
                format!(
                    "INSERT INTO big VALUES ({next_id}, {}, 'new', 1.5, NOW(6))",
                    rng.gen_range(0..997)
                )
            }
            7 => format!(
                "UPDATE uniq SET val = {} WHERE code = 'c{}'",
                rng.gen::<u16>(),
                rng.gen_range(1..=(n / 20).max(1))
            ),
            8 => format!(
                "UPDATE bag SET b = 'w{}' WHERE a = {} LIMIT 1",
                rng.gen::<u16>(),
                rng.gen_range(0..101)
            ),
            _ => format!("INSERT INTO bag VALUES ({}, 'ins')", rng.gen_range(0..101)),
        };
        c.query_drop(sql).await.unwrap();
        done.fetch_add(1, Ordering::SeqCst);
    }
    c.disconnect().await.unwrap();
}

/// Reads the whole log through `dbmux tail` (streamed, it can be millions of
/// lines): every seq from 1 exactly once, no source transaction twice, and
/// the count of each operation.
fn check_log(dbmux: &Dbmux) -> std::collections::BTreeMap<String, u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .args(["tail", "--config"])
        .arg(&dbmux.config)
        .args(["--from", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut txns: HashSet<String> = HashSet::new();
    let mut ops = std::collections::BTreeMap::new();
    for (expect, line) in (1u64..).zip(out.lines()) {
        let e: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(
            e["seq"].as_u64(),
            Some(expect),
            "seq must be gapless from 1, each once"
        );
        if e["source"]["txn_index"].as_u64() == Some(0) {
            let txn = e["source"]["txn"].as_str().unwrap().to_string();
            assert!(txns.insert(txn.clone()), "transaction {txn} is in the log twice");
        }
        *ops.entry(e["op"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    assert!(child.wait().unwrap().success());
    ops
}

fn snapshot_config(chunk_rows: u64) -> String {
    format!("\n[snapshot]\ninitial = true\nchunk_rows = {chunk_rows}\nparallel_tables = 2\n")
}

/// Rows of snapshot tables the current process has copied (from /status).
async fn copied(dbmux: &Dbmux) -> Option<u64> {
    let st = dbmux.status().await?;
    Some(
        st["snapshot"]["tables"]
            .as_array()?
            .iter()
            .filter_map(|t| t["rows"].as_u64())
            .sum(),
    )
}

/// The Prove item: pre-loaded rows, a writer changing them all along, two
/// SIGKILLs in the middle of the copy; both replicas end equal to the master
/// value by value, and the log has every seq exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_writes_and_two_kills_reaches_both_replicas() {
    let n = rows();
    let db = unique_name("snap");
    let mut c = master(&db).await;
    let loading = Instant::now();
    preload(&mut c, n).await;
    println!("pre-loaded {n} rows in {:.1}s", loading.elapsed().as_secs_f64());
    let chunk = (n / 40).clamp(500, 10_000);
    let mut dbmux = Dbmux::new(&db, BOTH, &snapshot_config(chunk));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    dbmux.start();
    let writer = tokio::spawn(write(db.clone(), n, stop.clone(), written.clone()));
    let started = Instant::now();
    // Two kills while the copy is under way: each after this process copied
    // a further part of the rows (so each restart resumes mid-table).
    let mut kills = 0;
    for fraction in [0.2, 0.35] {
        let target = (n as f64 * fraction) as u64;
        let me = &dbmux;
        let at = wait_for(
            "the snapshot to copy rows",
            Duration::from_secs(600),
            || async move {
                let done = copied(me).await?;
                (done >= target).then_some(done)
            },
        )
        .await;
        let st = dbmux.status().await.unwrap();
        assert_eq!(st["snapshot"]["active"], true, "killed while copying: {st}");
        dbmux.kill();
        kills += 1;
        println!(
            "kill {kills} after this process copied {at} rows ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
        dbmux.start();
    }
    // The copy finishes while the writer goes on.
    let me = &dbmux;
    wait_for(
        "the snapshot to finish",
        Duration::from_secs(1800),
        || async move {
            let st = me.status().await?;
            let pending = st["replicas"]
                .as_object()?
                .values()
                .all(|r| r["snapshot_pending"].as_array().is_some_and(|p| p.is_empty()));
            (st["snapshot"]["active"] == false && pending).then_some(())
        },
    )
    .await;
    let snapshot_done = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let changes = written.load(Ordering::SeqCst);
    let me = &mut dbmux;
    // Everything the writer did is captured and applied: a marker row written
    // after the writer stopped reaches both replicas. (Not the master's
    // binlog end: other tests write to other databases all along, and capture
    // reports the position of what it logged.)
    c.query_drop("INSERT INTO uniq VALUES ('zz-end-marker', 1)")
        .await
        .unwrap();
    let db2 = db.clone();
    wait_for(
        "the end marker on both replicas",
        Duration::from_secs(1800),
        || {
            let db = db2.clone();
            async move {
                let sql = "SELECT code FROM uniq WHERE code = 'zz-end-marker'";
                let my = crate::support::compare::mysql_rows(
                    &with_db(&crate::support::mysql_replica_url(), &db),
                    sql,
                )
                .await;
                let pg = crate::support::compare::pg_rows(&format!(
                    "SELECT code FROM \"{db}\".uniq WHERE code = 'zz-end-marker'"
                ))
                .await;
                (my.len() == 1 && pg.len() == 1).then_some(())
            }
        },
    )
    .await;
    let last = {
        let st = me.status().await.unwrap();
        st["log"]["last_seq"].as_u64().unwrap()
    };
    let last = me.wait_caught_up(last, Duration::from_secs(1800)).await;
    println!(
        "snapshot of {n} rows under {changes} concurrent changes, {kills} kills: copied in {:.1}s, caught up at seq {last}",
        snapshot_done.as_secs_f64()
    );
    let mut rows_compared = 0;
    for p in projections() {
        rows_compared += assert_identical(&db, &p, true, true).await;
    }
    assert!(rows_compared as u64 >= n, "{rows_compared} rows compared");
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
    let ops = check_log(&dbmux);
    println!("log: {ops:?}");
    assert!(
        ops.get("r").copied().unwrap_or(0) >= n,
        "snapshot rows in the log: {ops:?}"
    );
    assert!(
        ops.get("u").copied().unwrap_or(0) > 0 && ops.get("d").copied().unwrap_or(0) > 0,
        "{ops:?}"
    );
    c.query_drop(format!("DROP DATABASE `{db}`")).await.unwrap();
}

/// A small copy with both replicas, checked for the details: `op = "r"`
/// events in the envelope, the snapshot marks, tables created by the first
/// chunk, a key-less table copied whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_rows_are_copied_then_changes_stream() {
    let db = unique_name("snapsmall");
    let mut c = master(&db).await;
    preload(&mut c, 3000).await;
    let mut dbmux = Dbmux::new(&db, BOTH, &snapshot_config(700));
    dbmux.start();
    dbmux.wait_capturing().await;
    c.query_drop("UPDATE big SET label = 'after' WHERE id <= 10")
        .await
        .unwrap();
    c.query_drop("INSERT INTO bag VALUES (1000, 'after')")
        .await
        .unwrap();
    let me = &dbmux;
    wait_for(
        "the snapshot to finish",
        Duration::from_secs(300),
        || async move {
            let st = me.status().await?;
            (st["snapshot"]["active"] == false && st["snapshot"]["tables"].as_array()?.len() == 3)
                .then_some(())
        },
    )
    .await;
    let last = dbmux.status().await.unwrap()["log"]["last_seq"].as_u64().unwrap();
    dbmux.wait_caught_up(last, Duration::from_secs(300)).await;
    for p in projections() {
        assert_identical(&db, &p, true, true).await;
    }
    let metrics = dbmux.admin_get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dbmux_snapshot_rows_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(dbmux.stop().success());
    let env = dbmux.tail(Some(1));
    let marks: Vec<&serde_json::Value> = env.iter().filter(|e| e["op"] == "snapshot").collect();
    assert!(marks.iter().any(|m| m["snapshot"]["phase"] == "begin"));
    assert!(marks.iter().any(|m| m["snapshot"]["phase"] == "chunk"
        && m["snapshot"]["last"] == true
        && m["source"]["table"] == "bag"));
    let read = env
        .iter()
        .find(|e| e["op"] == "r" && e["source"]["table"] == "big" && e["after"]["id"] == 500)
        .unwrap();
    assert_eq!(read["after"]["label"], "row 500", "{read}");
    let _ = Replicas {
        mariadb: true,
        postgres: true,
    };
    c.query_drop(format!("DROP DATABASE `{db}`")).await.unwrap();
}
