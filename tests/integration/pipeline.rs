//! End to end: the real `dbmux` binary between the test master and replicas.

use crate::support::compare::assert_identical;
use crate::support::dbmux::{Dbmux, LogKind, Replicas, BOTH};
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
    workload_body(LogKind::Embedded).await
}

/// The same workload, with capture and appliers on the Kafka log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_through_kafka_reaches_both_replicas_identical() {
    workload_body(LogKind::Kafka).await
}

async fn workload_body(kind: LogKind) {
    let db = unique_name("wl");
    workload::create_database(&db).await;
    let mut dbmux = Dbmux::with_log(&db, BOTH, "", kind);
    dbmux.start();
    // Wait until dbmux is up (capture starts at the binlog's current end).
    dbmux.wait_capturing().await;
    // Live: the replicas follow the master while it writes.
    let started = Instant::now();
    let progress = Arc::new(AtomicU64::new(0));
    let live = workload::run(&db, 300, 7, progress.clone()).await;
    let written = started.elapsed();
    dbmux.wait_caught_up(live.row_changes, CATCH_UP).await;
    let live_total = started.elapsed();
    println!(
        "workload ({kind:?} log, live): {} row changes in {} transactions; master write {:.1}s, replicas caught up after {:.1}s => {:.0} rows/s",
        live.row_changes,
        live.transactions,
        written.as_secs_f64(),
        live_total.as_secs_f64(),
        live.row_changes as f64 / live_total.as_secs_f64()
    );
    // Backlog: dbmux is down while the master writes; on restart it drains the
    // binlog at the pipeline's own speed (capture → log → both replicas).
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
    let backlog = workload::run(&db, 1200, 8, progress).await;
    let started = Instant::now();
    dbmux.start();
    let stats = workload::Stats {
        transactions: live.transactions + backlog.transactions,
        row_changes: live.row_changes + backlog.row_changes,
    };
    assert!(stats.row_changes >= 50_000, "workload too small: {stats:?}");
    let last = dbmux.wait_caught_up(stats.row_changes, CATCH_UP).await;
    let drain = started.elapsed();
    assert_eq!(last, stats.row_changes, "every row change is one event");
    println!(
        "workload ({kind:?} log, backlog): {} row changes in {} transactions drained into both replicas in {:.1}s => {:.0} rows/s",
        backlog.row_changes,
        backlog.transactions,
        drain.as_secs_f64(),
        backlog.row_changes as f64 / drain.as_secs_f64()
    );
    let rows = assert_all_identical(&db, true, true).await;
    assert!(rows > 10_000);
    assert_log_well_formed(&dbmux.tail(Some(1)), stats.row_changes, stats.transactions);
    // The metrics say the same.
    let metrics = dbmux.admin_get("/metrics").await.expect("/metrics");
    for line in [
        format!("dbmux_log_last_seq {}", stats.row_changes),
        format!("dbmux_capture_events_total {}", backlog.row_changes),
        format!("dbmux_capture_transactions_total {}", backlog.transactions),
        format!(
            "dbmux_apply_last_seq{{replica=\"mariadb\"}} {}",
            stats.row_changes
        ),
        format!(
            "dbmux_apply_last_seq{{replica=\"postgres\"}} {}",
            stats.row_changes
        ),
        format!(
            "dbmux_apply_events_total{{replica=\"postgres\"}} {}",
            backlog.row_changes
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in /metrics:\n{metrics}"
        );
    }
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_workload_loses_nothing_and_applies_nothing_twice() {
    let db = unique_name("crash");
    workload::create_database(&db).await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    let progress = Arc::new(AtomicU64::new(0));
    let stop_writing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Rounds of 100 transactions (each seed its own keys) until two kills
    // landed during the writes, at least 800 transactions in all: however
    // fast or slow this machine runs the writes and the restarts.
    let writer = tokio::spawn({
        let db = db.clone();
        let progress = progress.clone();
        let stop = stop_writing.clone();
        async move {
            let mut total = workload::Stats::default();
            for round in 0..100u64 {
                if round >= 8 && stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let s = workload::run(&db, 100, 11 + round, progress.clone()).await;
                total.transactions += s.transactions;
                total.row_changes += s.row_changes;
            }
            total
        }
    });
    let mut kills = 0;
    let mut kills_while_writing = 0;
    let mut mark = (0u64, 0u64); // (log last seq, min applied seq) at the last restart
    loop {
        let writing = !writer.is_finished();
        if kills >= 5 || (!writing && kills >= 3) {
            break;
        }
        // Let the pipeline make some progress (capture or apply), then kill it
        // in the middle of its work.
        let me = &dbmux;
        let reached = wait_for(
            "progress before the next kill",
            Duration::from_secs(120),
            || async move {
                let st = me.status().await?;
                let log = st["log"]["last_seq"].as_u64()?;
                let applied = st["replicas"]
                    .as_object()?
                    .values()
                    .filter_map(|r| r["applied_seq"].as_u64())
                    .min()?;
                (log >= mark.0 + 700 || applied >= mark.1 + 700).then_some((log, applied))
            },
        )
        .await;
        mark = reached;
        dbmux.kill();
        kills += 1;
        if writing {
            kills_while_writing += 1;
            if kills_while_writing >= 2 {
                stop_writing.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        dbmux.start();
    }
    let stats = writer.await.unwrap();
    assert!(
        kills >= 3 && kills_while_writing >= 2,
        "{kills} kills, {kills_while_writing} during the writes"
    );
    let last = dbmux.wait_caught_up(stats.row_changes, CATCH_UP).await;
    assert_eq!(last, stats.row_changes);
    assert_all_identical(&db, true, true).await;
    // The no-primary-key `audit` table gets plain INSERTs: a replayed event would
    // duplicate a row, a skipped one would lose it; assert_all_identical compared it
    // row for row. The log itself shows every seq and transaction exactly once:
    assert_log_well_formed(&dbmux.tail(Some(1)), stats.row_changes, stats.transactions);
    println!(
        "crash test: {kills} SIGKILLs ({kills_while_writing} while the master was being written), {} row changes",
        stats.row_changes
    );
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
    dbmux.wait_capturing().await;
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

/// Every MariaDB column type, through capture, the log and both appliers.
/// The table is created while dbmux runs, so it also proves a new table is
/// created on the replicas and replicated from its first row.
const TYPE_MATRIX: &str = "CREATE TABLE types (
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
    dec65 DECIMAL(65,30), f FLOAT, d DOUBLE,
    dt DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6), tm1 TIME(1), tm2 TIME(2), yr YEAR,
    b1 BIT(1), b64 BIT(64), en ENUM('a','b','c d'), st SET('x','y','z'), js JSON,
    ch CHAR(10) CHARACTER SET utf8mb4, vc VARCHAR(100) CHARACTER SET utf8mb4, tx TEXT CHARACTER SET utf8mb4,
    l1 VARCHAR(50) CHARACTER SET latin1, lt TEXT CHARACTER SET latin1,
    bn BINARY(8), vb VARBINARY(300), bl BLOB
)";

const TYPE_ROWS: &[&str] = &[
    // Minimums and empties.
    "(1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
      '-99999999999999999999999999999999999.999999999999999999999999999999', -3.40282e38, -1.7976931348623157e308,
      '1000-01-01', '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', '-838:59:59.000000', '-12:34:56.7', '-00:00:00.01', 1901,
      b'0', b'0', 'a', '', '[]', '', '', '', '', '', X'00', X'', X'')",
    // Maximums and the widest content.
    "(2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615,
      '99999999999999999999999999999999999.999999999999999999999999999999', 3.40282e38, 1.7976931348623157e308,
      '9999-12-31', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', '838:59:59.000000', '-838:59:58.9', '-838:59:58.99', 2155,
      b'1', 0xFFFFFFFFFFFFFFFF, 'c d', 'x,y,z', '{\"k\": [1, 2.5, \"é😀\", null, true], \"n\": {\"a\": {}}}',
      'emoji😀ok', 'héllo wörld 😀🚀 中文 \\\\ '' \"', REPEAT('long text ✓ ', 500), 'Ünïcödé àéîõü ÿ', 'latin1 ÀÉÎ £ © «»',
      X'00FF00FF00FF00FF', X'00FF7F80275C22', X'@ALLBYTES@')",
    // NULL in every nullable column.
    "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
      NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    // Ordinary values.
    "(4, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5, '3.141592653589793238462643383279', 1.5, 0.1,
      '2024-02-29', '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012', '-00:00:01.000001', '-00:00:00.1', '00:00:00.99', 2024,
      b'1', b'101', 'b', 'y', '{\"a\": 1}', 'x', 'y', 'z', 'é', 'ü', X'01', X'02', X'03')",
];

fn type_projection() -> crate::support::compare::Projection<'static> {
    crate::support::compare::Projection {
        table: "types",
        mysql: "CAST(id AS CHAR), CAST(ti AS CHAR), CAST(tiu AS CHAR), CAST(si AS CHAR), CAST(siu AS CHAR),
            CAST(mi AS CHAR), CAST(miu AS CHAR), CAST(i AS CHAR), CAST(iu AS CHAR), CAST(bi AS CHAR), CAST(biu AS CHAR),
            CAST(dec65 AS CHAR), CAST(CAST(f AS DOUBLE) AS CHAR), CAST(d AS CHAR),
            DATE_FORMAT(dt, '%Y-%m-%d'), DATE_FORMAT(dtm, '%Y-%m-%d %H:%i:%s.%f'), CAST(UNIX_TIMESTAMP(ts) AS CHAR),
            CAST(CAST(TIME_TO_SEC(tm) AS DECIMAL(20,6)) AS CHAR), CAST(CAST(TIME_TO_SEC(tm1) AS DECIMAL(20,6)) AS CHAR),
            CAST(CAST(TIME_TO_SEC(tm2) AS DECIMAL(20,6)) AS CHAR), CAST(yr AS CHAR),
            BIN(b1), LPAD(BIN(b64), 64, '0'), CAST(en AS CHAR), CAST(st AS CHAR), js,
            ch, vc, tx, l1, lt, HEX(bn), HEX(vb), HEX(bl)",
        pg: "id::text, ti::text, tiu::text, si::text, siu::text, mi::text, miu::text, i::text, iu::text, bi::text, biu::text,
            dec65::text, f::float8::text, d::text,
            to_char(dt, 'YYYY-MM-DD'), to_char(dtm, 'YYYY-MM-DD HH24:MI:SS.US'), extract(epoch from ts)::numeric(20,6)::text,
            extract(epoch from tm)::numeric(20,6)::text, extract(epoch from tm1)::numeric(20,6)::text,
            extract(epoch from tm2)::numeric(20,6)::text, yr::text,
            b1::text, b64::text, en::text, st::text, js::text,
            ch, vc, tx, l1, lt, upper(encode(bn, 'hex')), upper(encode(vb, 'hex')), upper(encode(bl, 'hex'))",
        order: "id",
        float_cols: &[12, 13],
        json_cols: &[25],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_matrix_reaches_both_replicas_value_by_value() {
    type_matrix_body(LogKind::Embedded).await
}

/// The same type matrix through the Kafka log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_matrix_through_kafka_reaches_both_replicas_value_by_value() {
    type_matrix_body(LogKind::Kafka).await
}

async fn type_matrix_body(kind: LogKind) {
    let db = unique_name("types");
    let mut conn = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
    conn.query_drop(format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
        .await
        .unwrap();
    conn.query_drop(format!("USE `{db}`")).await.unwrap();
    conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
    let mut dbmux = Dbmux::with_log(&db, BOTH, "", kind);
    dbmux.start();
    dbmux.wait_capturing().await;
    // Created while dbmux runs.
    conn.query_drop(TYPE_MATRIX).await.unwrap();
    let all_bytes: String = (0..=255u8).map(|b| format!("{b:02X}")).collect();
    let mut changes = 0;
    for row in TYPE_ROWS {
        conn.query_drop(format!(
            "INSERT INTO types VALUES {}",
            row.replace("@ALLBYTES@", &all_bytes)
        ))
        .await
        .unwrap();
        changes += 1;
    }
    dbmux.wait_caught_up(changes, CATCH_UP).await;
    assert_eq!(assert_identical(&db, &type_projection(), true, true).await, 4);

    // Updates (incl. NULL → value, value → NULL, a primary-key change) and a delete, in one transaction.
    let mut tx = conn.start_transaction(Default::default()).await.unwrap();
    for sql in [
        "UPDATE types SET vc = 'updated ✓', biu = 12345678901234567890, js = '{\"b\": [1, 2]}',
            tm = '-01:02:03.456789', ts = NULL, f = -0.25 WHERE id = 4",
        "UPDATE types SET bl = X'FF00', l1 = 'now set: ß', dec65 = '-0.000000000000000000000000000001', b64 = 1 WHERE id = 3",
        "UPDATE types SET id = 10, dt = '2000-01-01' WHERE id = 1",
        "DELETE FROM types WHERE id = 2",
    ] {
        tx.query_drop(sql).await.unwrap();
        changes += 1;
    }
    tx.commit().await.unwrap();
    dbmux.wait_caught_up(changes, CATCH_UP).await;
    assert_eq!(assert_identical(&db, &type_projection(), true, true).await, 3);
    conn.disconnect().await.unwrap();
    // With dbmux stopped, `tail` opens the log itself (while it runs, it reads
    // through the admin server, as the workload test does).
    assert!(dbmux.stop().success());
    let all = dbmux.tail(Some(1));
    // The CREATE TABLE is in the log first, in stream order.
    assert_eq!(all[0]["op"], "ddl", "{}", all[0]);
    assert_eq!(all[0]["source"]["table"], "types");
    let envelopes: Vec<serde_json::Value> = all.into_iter().skip(1).collect();
    assert_eq!(envelopes.len() as u64, changes);
    let ops: Vec<&str> = envelopes.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["c", "c", "c", "c", "u", "u", "u", "d"]);
    let max_row = &envelopes[1]["after"];
    assert_eq!(max_row["biu"], serde_json::json!(18446744073709551615u64));
    assert_eq!(
        max_row["dec65"],
        "99999999999999999999999999999999999.999999999999999999999999999999"
    );
    assert_eq!(max_row["tm"], "838:59:59");
    assert_eq!(max_row["ts"], "2038-01-19T03:14:07.999999Z");
    assert_eq!(max_row["st"], serde_json::json!(["x", "y", "z"]));
    assert_eq!(max_row["js"]["k"][2], "é😀");
    assert_eq!(envelopes[6]["before"]["id"], 1);
    assert_eq!(envelopes[6]["after"]["id"], 10);
}

/// The type matrix through the snapshot path: the rows exist before dbmux
/// starts and are copied by chunk reads; the same rows written while dbmux
/// runs go through the binlog. Both give identical replica rows (each equal
/// to the master, value by value), and the log carries the same values for
/// both: the snapshot reader maps every type to the `Value` the binlog
/// decoder produces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_matrix_through_the_snapshot_path_equals_the_streaming_path() {
    let db = unique_name("snaptypes");
    let live = format!("{db}_live");
    let all_bytes: String = (0..=255u8).map(|b| format!("{b:02X}")).collect();
    let mut conn = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
    conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
    let fill = |db: String| {
        let all_bytes = all_bytes.clone();
        async move {
            let mut conn = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
            conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
            conn.query_drop(format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
                .await
                .unwrap();
            conn.query_drop(format!("USE `{db}`")).await.unwrap();
            conn.query_drop(TYPE_MATRIX).await.unwrap();
            for row in TYPE_ROWS {
                conn.query_drop(format!(
                    "INSERT INTO types VALUES {}",
                    row.replace("@ALLBYTES@", &all_bytes)
                ))
                .await
                .unwrap();
            }
            conn.disconnect().await.unwrap();
        }
    };
    // Before dbmux starts: copied by the snapshot.
    fill(db.clone()).await;
    let mut dbmux = Dbmux::new(
        &db,
        BOTH,
        "\n[snapshot]\ninitial = true\nchunk_rows = 2\nparallel_tables = 1\n",
    );
    let text = std::fs::read_to_string(&dbmux.config).unwrap();
    std::fs::write(
        &dbmux.config,
        text.replace(
            &format!("include = [\"{db}\"]"),
            &format!("include = [\"{db}\", \"{live}\"]"),
        ),
    )
    .unwrap();
    dbmux.start();
    dbmux.wait_capturing().await;
    // While it runs: streamed from the binlog.
    fill(live.clone()).await;
    let me = &dbmux;
    wait_for("the snapshot to finish", CATCH_UP, || async move {
        let st = me.status().await?;
        let pending = st["replicas"]
            .as_object()?
            .values()
            .all(|r| r["snapshot_pending"].as_array().is_some_and(|p| p.is_empty()));
        (st["snapshot"]["active"] == false && st["snapshot"]["tables"].as_array()?.len() == 1 && pending)
            .then_some(())
    })
    .await;
    // The replicas applied all of the streamed rows (the last one written is
    // the marker), then the whole log.
    let me = &dbmux;
    let live2 = live.clone();
    wait_for("the streamed rows on both replicas", CATCH_UP, || {
        let live = live2.clone();
        async move {
            let _ = me;
            let exists = format!(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = '{live}' AND table_name = 'types'"
            );
            let replica = crate::support::mysql_replica_url();
            if crate::support::compare::mysql_rows(&replica, &exists).await.is_empty()
                || crate::support::compare::pg_rows(&exists).await.is_empty()
            {
                return None;
            }
            let my = crate::support::compare::mysql_rows(
                &replica,
                &format!("SELECT id FROM `{live}`.types WHERE id = 4"),
            )
            .await;
            let pg =
                crate::support::compare::pg_rows(&format!("SELECT id FROM \"{live}\".types WHERE id = 4")).await;
            (my.len() == 1 && pg.len() == 1).then_some(())
        }
    })
    .await;
    let last = dbmux.status().await.unwrap()["log"]["last_seq"].as_u64().unwrap();
    dbmux.wait_caught_up(last, CATCH_UP).await;
    let p = type_projection();
    assert_eq!(assert_identical(&db, &p, true, true).await, 4);
    assert_eq!(assert_identical(&live, &p, true, true).await, 4);
    // The two paths' replica rows, compared with each other directly.
    use crate::support::compare::{assert_rows_eq, mysql_rows, pg_rows};
    let my = |d: &str| format!("SELECT {} FROM `{d}`.types ORDER BY id", p.mysql);
    let pg = |d: &str| format!("SELECT {} FROM \"{d}\".types ORDER BY id", p.pg);
    let replica = crate::support::mysql_replica_url();
    assert_rows_eq(
        &mysql_rows(&replica, &my(&db)).await,
        &mysql_rows(&replica, &my(&live)).await,
        "MariaDB replica: snapshot path vs streaming path",
    );
    assert_rows_eq(
        &pg_rows(&pg(&db)).await,
        &pg_rows(&pg(&live)).await,
        "PostgreSQL: snapshot path vs streaming path",
    );
    assert!(dbmux.stop().success(), "{}", dbmux.output());
    // In the log: the snapshot's `r` rows carry exactly the values of the
    // binlog's `c` rows.
    let env = dbmux.tail(Some(1));
    let rows_of = |d: &str, op: &str| -> std::collections::BTreeMap<i64, serde_json::Value> {
        env.iter()
            .filter(|e| e["op"] == op && e["source"]["db"] == d && e["source"]["table"] == "types")
            .map(|e| (e["after"]["id"].as_i64().unwrap(), e["after"].clone()))
            .collect()
    };
    let snap = rows_of(&db, "r");
    let streamed = rows_of(&live, "c");
    assert_eq!(snap.len(), 4, "snapshot rows in the log");
    assert_eq!(snap, streamed, "snapshot values equal binlog values");
    conn.query_drop(format!("DROP DATABASE `{db}`")).await.unwrap();
    conn.query_drop(format!("DROP DATABASE `{live}`")).await.unwrap();
}

/// The front door in front of the real pipeline: a session that wrote reads
/// its own write even while replication is deliberately slowed, a session of
/// an `eventual` user does not, and once the replica has caught up plain
/// reads are served by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_read_your_writes_over_the_real_pipeline() {
    let db = unique_name("ryw");
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
        with_db(&crate::support::mysql_replica_url(), "")
    );
    let mut dbmux = Dbmux::new(
        &db,
        Replicas {
            mariadb: true,
            postgres: false,
        },
        &extra,
    );
    dbmux.start();
    dbmux.wait_capturing().await;
    let proxy_url =
        |user: &str| format!("mysql://{user}:app-password@127.0.0.1:{port}/{db}?prefer_socket=false");

    // Seed one row per client and let it replicate, so the offsets row exists.
    let clients = 8i32;
    {
        let mut c = mysql_async::Conn::from_url(proxy_url("app")).await.unwrap();
        for id in 0..clients * 2 {
            c.exec_drop(format!("INSERT INTO `{db}`.ryw VALUES (?, 0)"), (id,))
                .await
                .unwrap();
        }
        c.disconnect().await.unwrap();
    }
    dbmux.wait_caught_up(clients as u64 * 2, CATCH_UP).await;

    // Slow replication down: hold the applier's offsets row locked most of the time.
    let consumer = format!("{db}/mariadb");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slower = tokio::spawn({
        let stop = stop.clone();
        let url = crate::support::mysql_replica_url();
        async move {
            let mut c = mysql_async::Conn::from_url(url).await.unwrap();
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
        // Even clients read their writes; odd ones are `eventual`.
        let user = if client % 2 == 0 { "app" } else { "eventual" };
        let url = proxy_url(user);
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = mysql_async::Conn::from_url(url).await.unwrap();
            let (mut stale, mut from_replica) = (0u32, 0u32);
            for round in 1..=15 {
                let id = client;
                c.exec_drop(format!("UPDATE `{db}`.ryw SET v = ? WHERE id = ?"), (round, id))
                    .await
                    .unwrap();
                let (v, server): (i32, u32) = c
                    .exec_first(
                        format!("SELECT v, @@server_id FROM `{db}`.ryw WHERE id = ?"),
                        (id,),
                    )
                    .await
                    .unwrap()
                    .unwrap();
                if v != round {
                    stale += 1;
                }
                if server == 2 {
                    from_replica += 1;
                }
            }
            c.disconnect().await.unwrap();
            (user, stale, from_replica)
        }));
    }
    let mut stale_ryw = 0;
    let mut stale_eventual = 0;
    for t in tasks {
        let (user, stale, _) = t.await.unwrap();
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

    // Caught up: a plain read from a fresh session is served by the replica.
    let last = dbmux.status().await.unwrap()["log"]["last_seq"].as_u64().unwrap();
    dbmux.wait_caught_up(last, CATCH_UP).await;
    // (Health checks refresh the replica's applied position every 100 ms.)
    let url = proxy_url("app");
    let query = format!("SELECT @@server_id FROM `{db}`.ryw LIMIT 1");
    let server = wait_for("a replica-served read", Duration::from_secs(30), || {
        let (url, query) = (url.clone(), query.clone());
        async move {
            let mut c = mysql_async::Conn::from_url(url).await.unwrap();
            let s: Option<u32> = c.query_first(query).await.unwrap();
            c.disconnect().await.unwrap();
            (s == Some(2)).then_some(2)
        }
    })
    .await;
    assert_eq!(server, 2);
    println!("read-your-writes over the pipeline: 0 stale reads for read_your_writes users, {stale_eventual} for eventual ones");
}

/// Killed before the first transaction reached the log: what the master
/// committed while dbmux was down is still captured (the start position was
/// stored on the first start; capture does not jump to a later "current end").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_before_the_first_transaction_loses_nothing() {
    let db = unique_name("first");
    workload::create_database(&db).await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    // With the `interval` fsync policy: writes reach the OS before capture moves
    // on, so a process crash (not a power loss) loses nothing either.
    let text = std::fs::read_to_string(&dbmux.config).unwrap();
    std::fs::write(
        &dbmux.config,
        text.replace("fsync = \"always\"", "fsync = \"interval\""),
    )
    .unwrap();
    dbmux.start();
    dbmux.wait_capturing().await;
    dbmux.kill();
    let first = workload::run(&db, 20, 31, Arc::new(AtomicU64::new(0))).await;
    dbmux.start();
    let last = dbmux.wait_caught_up(first.row_changes, CATCH_UP).await;
    assert_eq!(last, first.row_changes);
    // And killed again right after catching up: the interval policy had no
    // chance to sync, yet the log reopens with everything.
    dbmux.kill();
    let second = workload::run(&db, 20, 32, Arc::new(AtomicU64::new(0))).await;
    dbmux.start();
    let total = first.row_changes + second.row_changes;
    assert_eq!(dbmux.wait_caught_up(total, CATCH_UP).await, total);
    assert!(dbmux.output().contains("fsync=interval"));
    assert_all_identical(&db, true, true).await;
}
