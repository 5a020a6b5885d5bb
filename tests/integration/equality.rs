//! Replicas that stay equal: regression tests for the holes of issue 6, each
//! through the real `dbmux` binary between the test master and replicas.

use crate::support::compare::{mysql_rows, pg_rows, Rows};
use crate::support::dbmux::{Dbmux, LogKind, Replicas, BOTH};
use crate::support::{mysql_replica_url, mysql_url, unique_name, wait_for, with_db};
use mysql_async::prelude::Queryable;
use std::time::Duration;

const CATCH_UP: Duration = Duration::from_secs(120);

async fn master(db: &str) -> mysql_async::Conn {
    let mut c = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
    c.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4"
    ))
    .await
    .unwrap();
    c.query_drop(format!("USE `{db}`")).await.unwrap();
    c
}

async fn exec(c: &mut mysql_async::Conn, sqls: &[&str]) {
    for s in sqls {
        c.query_drop(*s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// `SELECT cols FROM table ORDER BY order` on the master, the MariaDB replica and
/// PostgreSQL (same select list, valid on both engines), asserted equal.
async fn assert_same(db: &str, table: &str, cols: &str, order: &str) -> Rows {
    let sql = format!("SELECT {cols} FROM `{db}`.`{table}` ORDER BY {order}");
    let m = mysql_rows(&with_db(&mysql_url(), db), &sql).await;
    let r = mysql_rows(&with_db(&mysql_replica_url(), db), &sql).await;
    crate::support::compare::assert_rows_eq(&m, &r, &format!("{db}.{table} on the MariaDB replica"));
    let pg = pg_rows(&format!(
        "SELECT {cols} FROM \"{db}\".\"{table}\" ORDER BY {order}"
    ))
    .await;
    crate::support::compare::assert_rows_eq(&m, &pg, &format!("{db}.{table} on PostgreSQL"));
    m
}

async fn log_last_seq(dbmux: &Dbmux) -> u64 {
    dbmux.status().await.unwrap()["log"]["last_seq"].as_u64().unwrap()
}

/// Item 1: a TRUNCATE that is a table's first event after a restart (capture
/// has no definition of the table yet), and one on a table created while
/// dbmux runs, reach both replicas; the pipeline does not stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_as_first_event_after_restart_and_of_a_new_table() {
    let db = unique_name("trunc");
    let mut c = master(&db).await;
    exec(&mut c, &["CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))"]).await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    exec(&mut c, &["INSERT INTO t VALUES (1,'a'),(2,'b'),(3,'c')"]).await;
    dbmux.wait_caught_up(3, CATCH_UP).await;
    assert_eq!(assert_same(&db, "t", "id, v", "id").await.len(), 3);
    assert!(dbmux.stop().success());

    // While dbmux is down: the table's first event after the restart is a TRUNCATE.
    exec(&mut c, &["TRUNCATE TABLE t", "INSERT INTO t VALUES (9,'z')"]).await;
    dbmux.start();
    dbmux.wait_capturing().await;
    // A table created while dbmux runs, truncated before its first row; and one
    // that is truncated and never written (the replicas never see it).
    exec(
        &mut c,
        &[
            "CREATE TABLE fresh (id INT PRIMARY KEY, v INT)",
            "TRUNCATE TABLE fresh",
            "INSERT INTO fresh VALUES (1, 10)",
            "CREATE TABLE never (id INT PRIMARY KEY)",
            "TRUNCATE TABLE never",
            "INSERT INTO t VALUES (10,'y')",
        ],
    )
    .await;
    // seq: 3 inserts, truncate, insert, truncate, insert, truncate, insert.
    dbmux.wait_caught_up(9, CATCH_UP).await;
    assert_eq!(
        assert_same(&db, "t", "id, v", "id").await,
        vec![
            vec![Some("9".into()), Some("z".into())],
            vec![Some("10".into()), Some("y".into())]
        ]
    );
    assert_same(&db, "fresh", "id, v", "id").await;
    assert!(dbmux.try_exit().is_none(), "dbmux stopped:\n{}", dbmux.output());
    assert!(dbmux.stop().success());
}

/// Item 4: every character set MariaDB offers keeps its column lengths on both
/// replicas (`CHAR(4)` stays 4 characters, `VARCHAR(10)` 10), a JSON column
/// keeps its type, values of every charset capture can decode arrive
/// unchanged, and no "information_schema no longer matches" warning is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_character_set_keeps_its_column_lengths() {
    let db = unique_name("charsets");
    let mut c = master(&db).await;
    let sets: Vec<(String, u32)> = c
        .query("SELECT CHARACTER_SET_NAME, MAXLEN FROM information_schema.CHARACTER_SETS ORDER BY 1")
        .await
        .unwrap();
    assert!(sets.len() >= 30, "{sets:?}");
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    // Multi-byte East Asian charsets are described (lengths) but their values
    // cannot be decoded: those tables get a row of NULLs.
    let undecodable = [
        "big5", "cp932", "eucjpms", "euckr", "gb2312", "gbk", "sjis", "ujis",
    ];
    let mut tables = Vec::new();
    for (cs, _) in &sets {
        if cs == "binary" {
            continue;
        }
        let t = format!("cs_{cs}");
        c.query_drop(format!(
            "CREATE TABLE `{t}` (id INT PRIMARY KEY, c CHAR(4) CHARACTER SET {cs}, \
             v VARCHAR(10) CHARACTER SET {cs}, x TEXT CHARACTER SET {cs}, j JSON)"
        ))
        .await
        .unwrap();
        let row = if undecodable.contains(&cs.as_str()) {
            "(1, NULL, NULL, NULL, '[1]')".to_string()
        } else {
            "(1, 'ab', 'abcdefghij', 'x y', '{\"k\": 1}')".to_string()
        };
        c.query_drop(format!("INSERT INTO `{t}` VALUES {row}"))
            .await
            .unwrap();
        tables.push((t, cs.clone()));
    }
    dbmux.wait_caught_up(tables.len() as u64, CATCH_UP).await;
    let replica = with_db(&mysql_replica_url(), &db);
    for (t, cs) in &tables {
        let cols = mysql_rows(
            &replica,
            &format!(
                "SELECT COLUMN_NAME, CAST(CHARACTER_MAXIMUM_LENGTH AS CHAR), CHARACTER_SET_NAME \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = '{t}' \
                 AND COLUMN_NAME IN ('c', 'v') ORDER BY 1"
            ),
        )
        .await;
        // MariaDB reports utf8mb3 columns as utf8mb3 whatever the spelling.
        assert_eq!(
            cols,
            vec![
                vec![Some("c".into()), Some("4".into()), Some(cs.clone())],
                vec![Some("v".into()), Some("10".into()), Some(cs.clone())]
            ],
            "{t} on the MariaDB replica"
        );
        let json = mysql_rows(
            &replica,
            &format!(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = '{db}' AND TABLE_NAME = '{t}'"
            ),
        )
        .await;
        assert!(
            json.iter().any(|r| r[0].as_deref() == Some("json_valid(`j`)")),
            "{t}: the JSON column lost its type on the MariaDB replica: {json:?}"
        );
        let pg = pg_rows(&format!(
            "SELECT column_name::text, character_maximum_length::text, data_type::text \
             FROM information_schema.columns WHERE table_schema = '{db}' AND table_name = '{t}' \
             AND column_name IN ('c', 'v', 'j') ORDER BY 1"
        ))
        .await;
        assert_eq!(
            pg,
            vec![
                vec![
                    Some("c".into()),
                    Some("4".into()),
                    Some("character varying".into())
                ],
                vec![Some("j".into()), None, Some("jsonb".into())],
                vec![
                    Some("v".into()),
                    Some("10".into()),
                    Some("character varying".into())
                ]
            ],
            "{t} on PostgreSQL"
        );
        assert_same(&db, t, "id, c, v, x", "id").await;
    }
    let out = dbmux.output();
    assert!(
        !out.contains("no longer matches"),
        "spurious schema warning:\n{out}"
    );
    assert!(dbmux.stop().success());
}

/// Item 5: a case-sensitive (`utf8mb4_bin`) primary key keeps `'a'` and `'A'`
/// apart on both replicas, and replica columns carry the source collation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_collation_keys_stay_apart() {
    let db = unique_name("coll");
    let mut c = master(&db).await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    exec(
        &mut c,
        &[
            "CREATE TABLE k (k VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PRIMARY KEY, \
             v INT, ci VARCHAR(5) CHARACTER SET latin1 COLLATE latin1_general_ci)",
            "INSERT INTO k VALUES ('a', 1, 'x'), ('A', 2, 'X'), ('b', 3, NULL)",
            "UPDATE k SET v = 20 WHERE k = 'A'",
        ],
    )
    .await;
    dbmux.wait_caught_up(4, CATCH_UP).await;
    let rows = assert_same(&db, "k", "k, v, ci", "k").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let coll = mysql_rows(
        &with_db(&mysql_replica_url(), &db),
        &format!(
            "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = 'k' AND COLLATION_NAME IS NOT NULL ORDER BY 1"
        ),
    )
    .await;
    assert_eq!(
        coll,
        vec![
            vec![Some("ci".into()), Some("latin1_general_ci".into())],
            vec![Some("k".into()), Some("utf8mb4_bin".into())]
        ]
    );
    let pg = pg_rows(&format!(
        "SELECT collation_name::text FROM information_schema.columns \
         WHERE table_schema = '{db}' AND table_name = 'k' AND column_name = 'k'"
    ))
    .await;
    assert_eq!(pg, vec![vec![Some("C".into())]]);
    assert!(dbmux.stop().success());
}

#[allow(dead_code)]
async fn wait_log(dbmux: &Dbmux, seq: u64) {
    wait_for("the log to reach a seq", CATCH_UP, || async {
        (log_last_seq(dbmux).await >= seq).then_some(())
    })
    .await
}

#[allow(dead_code)]
const MARIADB_ONLY: Replicas = Replicas {
    mariadb: true,
    postgres: false,
};

/// Item 7: configurations that merge two source databases into one replica
/// database or schema are refused by `check-config`, naming the fields.
#[test]
fn merging_two_source_databases_into_one_target_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("merge.toml");
    std::fs::write(
        &config,
        r#"
[source.mysql]
url = "mysql://u:hunter2@127.0.0.1:1/"
include = ["app", "shop"]
[[replica]]
name = "pg"
[replica.postgres]
url = "postgres://u:hunter2@127.0.0.1:1/x"
schema = "everything"
[[replica]]
name = "my"
[replica.mysql]
url = "mysql://u:hunter2@127.0.0.1:1/"
databases = { app = "merged", shop = "merged" }
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
        "replica[0].postgres.schema",
        "replica[1].mysql.databases",
        "overwrite",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("hunter2"), "{err}");
}

/// Runs `dbmux tail --from 1` and returns its raw lines (not re-parsed, so no
/// precision is lost on the way).
fn tail_lines(dbmux: &Dbmux) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .args(["tail", "--from", "1", "--config"])
        .arg(&dbmux.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Item 9: the JSON envelope carries JSON numbers beyond f64 exactly and a
/// zero TIMESTAMP as its documented special value, through `dbmux tail`
/// (both while dbmux runs, via the admin server, and from the log itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_carries_values_exactly() {
    let db = unique_name("envelope");
    let mut c = master(&db).await;
    exec(
        &mut c,
        &["CREATE TABLE e (id INT PRIMARY KEY, j JSON, ts TIMESTAMP NULL, d DATE NULL, dt DATETIME NULL)"],
    )
    .await;
    let mut dbmux = Dbmux::new(&db, MARIADB_ONLY, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    exec(
        &mut c,
        &[
            "SET SESSION sql_mode = ''",
            "INSERT INTO e VALUES (1, '{\"n\": 123456789012345678901234567890, \"x\": [1.000000000000000000001]}', \
             '0000-00-00 00:00:00', '0000-00-00', '2024-00-15 10:00:00')",
        ],
    )
    .await;
    dbmux.wait_caught_up(1, CATCH_UP).await;
    for lines in [tail_lines(&dbmux), {
        assert!(dbmux.stop().success());
        tail_lines(&dbmux)
    }] {
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        for exact in [
            r#""j":{"n":123456789012345678901234567890,"x":[1.000000000000000000001]}"#,
            r#""ts":"0000-00-00T00:00:00Z""#,
            r#""d":"0000-00-00""#,
            r#""dt":"2024-00-15T10:00:00""#,
        ] {
            assert!(line.contains(exact), "{exact} not in {line}");
        }
    }
}

/// Item 6: one master transaction that swaps unique values through a
/// temporary one, and one whose set-based plan would make MariaDB's
/// `ON DUPLICATE KEY UPDATE` silently update another row (a value equal under
/// the column's case-insensitive collation), reach both replicas identical;
/// replica tables carry the source's unique keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_value_swaps_apply_on_both_replicas() {
    let db = unique_name("uniq");
    let mut c = master(&db).await;
    exec(
        &mut c,
        &["CREATE TABLE u (id INT PRIMARY KEY, v VARCHAR(10) COLLATE utf8mb4_general_ci NOT NULL UNIQUE, w INT)"],
    )
    .await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    exec(&mut c, &["INSERT INTO u VALUES (1, 'a', 10), (2, 'b', 20)"]).await;
    // Each transaction in a batch of its own, so that its rows exist on the
    // replicas before it (one batch with the inserts would only insert).
    dbmux.wait_caught_up(2, CATCH_UP).await;
    let mut tx = c.start_transaction(Default::default()).await.unwrap();
    for s in [
        "UPDATE u SET v = 'tmp' WHERE id = 1",
        "UPDATE u SET v = 'a', w = 21 WHERE id = 2",
        "UPDATE u SET v = 'b', w = 11 WHERE id = 1",
    ] {
        tx.query_drop(s).await.unwrap();
    }
    tx.commit().await.unwrap();
    dbmux.wait_caught_up(5, CATCH_UP).await;
    // Now 1 = 'b', 2 = 'a'. Row 3's final 'A' equals row 2's old 'a' under the
    // collation, and row 3 comes first in the set-based upsert.
    let mut tx = c.start_transaction(Default::default()).await.unwrap();
    for s in [
        "INSERT INTO u VALUES (3, 'q', 30)",
        "UPDATE u SET v = 'x' WHERE id = 2",
        "UPDATE u SET v = 'A', w = 31 WHERE id = 3",
    ] {
        tx.query_drop(s).await.unwrap();
    }
    tx.commit().await.unwrap();
    dbmux.wait_caught_up(8, CATCH_UP).await;
    let rows = assert_same(&db, "u", "id, v, w", "id").await;
    assert_eq!(
        rows,
        vec![
            vec![Some("1".into()), Some("b".into()), Some("11".into())],
            vec![Some("2".into()), Some("x".into()), Some("21".into())],
            vec![Some("3".into()), Some("A".into()), Some("31".into())],
        ]
    );
    // The replicas have the unique key.
    let uk = mysql_rows(
        &with_db(&mysql_replica_url(), &db),
        &format!(
            "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = '{db}' \
             AND TABLE_NAME = 'u' AND COLUMN_NAME = 'v' AND NON_UNIQUE = 0"
        ),
    )
    .await;
    assert_eq!(uk, vec![vec![Some("1".into())]]);
    let pg = pg_rows(&format!(
        "SELECT count(*)::text FROM pg_indexes WHERE schemaname = '{db}' AND tablename = 'u' \
         AND indexdef LIKE 'CREATE UNIQUE INDEX%(v)'"
    ))
    .await;
    assert_eq!(pg, vec![vec![Some("1".into())]]);
    // The MariaDB upsert guard caught the collision the byte-wise planner
    // cannot see, and the batch went through in source order.
    assert!(
        dbmux.output().contains("applying it in source order"),
        "{}",
        dbmux.output()
    );
    assert!(dbmux.try_exit().is_none());
    let status = dbmux.status().await.unwrap();
    for r in ["mariadb", "postgres"] {
        assert_eq!(status["replicas"][r]["state"], "running", "{status}");
        assert_eq!(
            status["replicas"][r]["quarantined"],
            serde_json::json!([]),
            "{status}"
        );
    }
    assert!(dbmux.stop().success());
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Item 10: a value one replica cannot take (a zero date on PostgreSQL)
/// quarantines that table on that replica only: the MariaDB replica applies
/// everything, PostgreSQL applies every other table, `/status`, `/metrics` and
/// the log say so; after the operator fixes the cause, `dbmux resume-table`
/// re-applies exactly what was skipped — once with dbmux stopped, once
/// through the running dbmux's admin server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_table_is_quarantined_per_replica_and_resumed() {
    let db = unique_name("quar");
    let mut c = master(&db).await;
    exec(
        &mut c,
        &[
            "SET SESSION sql_mode = ''",
            "CREATE TABLE ok (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE z (id INT PRIMARY KEY, d DATE)",
            "CREATE TABLE y (id INT PRIMARY KEY, d DATE)",
        ],
    )
    .await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    exec(&mut c, &["INSERT INTO ok VALUES (1, 1)"]).await;
    let mut tx = c.start_transaction(Default::default()).await.unwrap();
    tx.query_drop("INSERT INTO z VALUES (1, '0000-00-00'), (2, '2024-02-29')")
        .await
        .unwrap();
    tx.query_drop("INSERT INTO ok VALUES (2, 2)").await.unwrap();
    tx.commit().await.unwrap();
    exec(
        &mut c,
        &[
            "INSERT INTO ok VALUES (3, 3)",
            "UPDATE z SET d = '2000-01-01' WHERE id = 2",
            "INSERT INTO y VALUES (1, '2024-00-10')",
        ],
    )
    .await;
    // seq: ok1, z1, z2, ok2, ok3, z2', y1 = 7 events; both replicas reach 7.
    dbmux.wait_caught_up(7, CATCH_UP).await;
    let status = dbmux.status().await.unwrap();
    let pg = &status["replicas"]["postgres"];
    assert_eq!(pg["state"], "running", "{status}");
    let quarantined: Vec<&str> = pg["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["table"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(quarantined, ["y", "z"], "{status}");
    assert!(
        pg["quarantined"][1]["reason"].as_str().unwrap().contains("zero"),
        "{status}"
    );
    assert_eq!(
        status["replicas"]["mariadb"]["quarantined"],
        serde_json::json!([])
    );
    let metrics = dbmux.admin_get("/metrics").await.unwrap();
    assert_eq!(
        metric(&metrics, "dbmux_apply_quarantined_tables{replica=\"postgres\"}"),
        Some(2.0),
        "{metrics}"
    );
    assert!(dbmux.output().contains("table quarantined on this replica"));
    // The MariaDB replica has everything; PostgreSQL everything but z and y.
    let rep = with_db(&mysql_replica_url(), &db);
    assert_eq!(
        mysql_rows(&rep, "SELECT id, CAST(d AS CHAR) FROM z ORDER BY id").await,
        vec![
            vec![Some("1".into()), Some("0000-00-00".into())],
            vec![Some("2".into()), Some("2000-01-01".into())]
        ]
    );
    assert_eq!(
        pg_rows(&format!("SELECT id FROM \"{db}\".ok ORDER BY id"))
            .await
            .len(),
        3
    );
    assert!(pg_rows(&format!("SELECT id FROM \"{db}\".z")).await.is_empty());

    // The operator maps zero dates on PostgreSQL and resumes z while dbmux is stopped.
    assert!(dbmux.stop().success());
    let text = std::fs::read_to_string(&dbmux.config).unwrap();
    std::fs::write(
        &dbmux.config,
        text.replace(
            "[replica.postgres]\n",
            "[replica.postgres]\nzero_dates = \"neg_infinity\"\n",
        ),
    )
    .unwrap();
    let config = dbmux.config.clone();
    let resume = |table: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
            .args(["resume-table", "--replica", "postgres", "--table"])
            .arg(format!("{db}.{table}"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = resume("z");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 skipped event(s) re-applied"),
        "{out:?}"
    );
    assert_eq!(
        pg_rows(&format!("SELECT id, d::text FROM \"{db}\".z ORDER BY id")).await,
        vec![
            vec![Some("1".into()), Some("-infinity".into())],
            vec![Some("2".into()), Some("2000-01-01".into())]
        ]
    );
    // z flows again; y is resumed through the running dbmux.
    dbmux.start();
    dbmux.wait_capturing().await;
    exec(
        &mut c,
        &[
            "INSERT INTO z VALUES (3, '2025-01-01')",
            "INSERT INTO y VALUES (2, '2025-01-02')",
        ],
    )
    .await;
    dbmux.wait_caught_up(9, CATCH_UP).await;
    assert_eq!(pg_rows(&format!("SELECT id FROM \"{db}\".z")).await.len(), 3);
    assert!(pg_rows(&format!("SELECT id FROM \"{db}\".y")).await.is_empty());
    let out = resume("y");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 skipped event(s) re-applied"),
        "{out:?}"
    );
    assert_eq!(
        pg_rows(&format!("SELECT id, d::text FROM \"{db}\".y ORDER BY id")).await,
        vec![
            vec![Some("1".into()), Some("-infinity".into())],
            vec![Some("2".into()), Some("2025-01-02".into())]
        ]
    );
    let status = dbmux.status().await.unwrap();
    assert_eq!(
        status["replicas"]["postgres"]["quarantined"],
        serde_json::json!([]),
        "{status}"
    );
    // Resuming a table that is not quarantined is an error that says so.
    let out = resume("ok");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not quarantined"));
    assert!(dbmux.stop().success());
}

/// Items 8 and 10 (exclude): while a replica is down, `dbmux_apply_lag_events`
/// and `dbmux_apply_lag_seconds` grow with the log (they are computed when
/// scraped, not when the last batch committed); and a table added to `exclude`
/// after its events reached the log is skipped by the appliers. With either
/// log (the Kafka log finds the commit time of the first unapplied event on
/// the brokers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_grows_during_an_outage_and_exclude_applies_to_logged_events() {
    lag_and_exclude(LogKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_grows_during_an_outage_and_exclude_applies_to_logged_events_with_kafka() {
    lag_and_exclude(LogKind::Kafka).await;
}

async fn lag_and_exclude(kind: LogKind) {
    use crate::support::private::PrivateMariadb;
    let db = unique_name("lag");
    let mut c = master(&db).await;
    exec(
        &mut c,
        &[
            "CREATE TABLE t (id INT PRIMARY KEY)",
            "CREATE TABLE x (id INT PRIMARY KEY)",
        ],
    )
    .await;
    let mut replica = PrivateMariadb::start(&["--server-id=79"]).await;
    let extra = format!(
        "\n[[replica]]\nname = \"flaky\"\n[replica.mysql]\nurl = \"{}\"\n",
        replica.url("")
    );
    let none = Replicas {
        mariadb: false,
        postgres: false,
    };
    let mut dbmux = Dbmux::with_log(&db, none, &extra, kind);
    dbmux.start();
    dbmux.wait_capturing().await;
    let expected_kind = match kind {
        LogKind::Embedded => "embedded",
        LogKind::Kafka => "kafka",
    };
    assert_eq!(dbmux.status().await.unwrap()["log"]["kind"], expected_kind);
    exec(&mut c, &["INSERT INTO t VALUES (1)", "INSERT INTO x VALUES (1)"]).await;
    dbmux.wait_caught_up(2, CATCH_UP).await;
    let lag = |m: &str| {
        (
            metric(m, "dbmux_apply_lag_events{replica=\"flaky\"}").unwrap(),
            metric(m, "dbmux_apply_lag_seconds{replica=\"flaky\"}").unwrap(),
        )
    };
    assert_eq!(lag(&dbmux.admin_get("/metrics").await.unwrap()), (0.0, 0.0));

    replica.kill();
    exec(
        &mut c,
        &[
            "INSERT INTO t VALUES (2)",
            "INSERT INTO x VALUES (2)",
            "INSERT INTO t VALUES (3)",
        ],
    )
    .await;
    wait_log(&dbmux, 5).await;
    let (events, first) = lag(&dbmux.admin_get("/metrics").await.unwrap());
    assert_eq!(events, 3.0);
    assert!(first > 0.0, "{first}");
    // Seconds keep growing while nothing is applied.
    let me = &dbmux;
    let later = wait_for("lag seconds to grow", Duration::from_secs(30), || async move {
        let (_, s) = lag(&me.admin_get("/metrics").await?);
        (s >= first + 1.0).then_some(s)
    })
    .await;
    exec(&mut c, &["INSERT INTO t VALUES (4)"]).await;
    wait_log(&dbmux, 6).await;
    let (events, s) = lag(&dbmux.admin_get("/metrics").await.unwrap());
    assert_eq!(events, 4.0);
    assert!(s >= later, "{s} < {later}");

    // x is excluded now, with x's seq 4 in the log and not applied.
    assert!(dbmux.stop().success());
    let text = std::fs::read_to_string(&dbmux.config).unwrap();
    std::fs::write(
        &dbmux.config,
        text.replace(
            &format!("include = [\"{db}\"]\n"),
            &format!("include = [\"{db}\"]\nexclude = [\"{db}.x\"]\n"),
        ),
    )
    .unwrap();
    replica.restart().await;
    dbmux.start();
    dbmux.wait_caught_up(6, CATCH_UP).await;
    let url = replica.url(&db);
    assert_eq!(mysql_rows(&url, "SELECT id FROM t ORDER BY id").await.len(), 4);
    assert_eq!(
        mysql_rows(&url, "SELECT id FROM x ORDER BY id").await,
        vec![vec![Some("1".into())]],
        "an excluded table's logged event was applied"
    );
    assert_eq!(lag(&dbmux.admin_get("/metrics").await.unwrap()), (0.0, 0.0));
    assert!(dbmux.stop().success());
}

/// Item 11: a replica added after the log was truncated cannot start from the
/// log: it says so loudly (`needs_snapshot` on `/status`, "needs a snapshot"
/// in the log), is seeded by a snapshot run targeted at it alone, and then
/// follows the log; capture and the other replica are never disturbed. The
/// run is asked for by the replica itself (`dbmux run` may write the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_added_after_truncation_is_seeded_by_a_snapshot_alone() {
    late_replica(false).await
}

/// Item 11 through the documented command: with dbmux stopped, `dbmux
/// snapshot --replica late --start-over` stores the request; the next start
/// seeds the replica from it (the replica does not ask again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_needs_a_snapshot_is_seeded_by_dbmux_snapshot() {
    late_replica(true).await
}

async fn late_replica(by_command: bool) {
    let db = unique_name("late");
    let mut c = master(&db).await;
    exec(&mut c, &["CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))"]).await;
    let mut dbmux = Dbmux::new(&db, MARIADB_ONLY, "");
    let text = std::fs::read_to_string(&dbmux.config).unwrap();
    std::fs::write(
        &dbmux.config,
        text.replace("truncate = false", "truncate = true\ntruncate_interval_s = 1"),
    )
    .unwrap();
    dbmux.start();
    dbmux.wait_capturing().await;
    for i in 1..=3 {
        exec(&mut c, &[&format!("INSERT INTO t VALUES ({i}, 'v{i}')")]).await;
    }
    dbmux.wait_caught_up(3, CATCH_UP).await;
    let me = &dbmux;
    wait_for("the log to be truncated", CATCH_UP, || async move {
        let st = me.status().await?;
        (st["log"]["first_seq"].as_u64()? > 1).then_some(())
    })
    .await;
    assert!(dbmux.stop().success());
    let text = std::fs::read_to_string(&dbmux.config).unwrap();
    std::fs::write(
        &dbmux.config,
        format!(
            "{text}\n[[replica]]\nname = \"late\"\n[replica.postgres]\nurl = \"{}\"\n",
            crate::support::pg_url()
        ),
    )
    .unwrap();
    if by_command {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
            .args(["snapshot", "--config"])
            .arg(&dbmux.config)
            .args(["--replica", "late", "--start-over"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(said.contains("next `dbmux run`"), "{said}");
    }
    dbmux.start();
    // Capture and the MariaDB replica go on meanwhile.
    exec(
        &mut c,
        &[
            "INSERT INTO t VALUES (4, 'v4')",
            "UPDATE t SET v = 'changed' WHERE id = 1",
        ],
    )
    .await;
    let me = &dbmux;
    wait_for(
        "the late replica to be seeded and follow the log",
        CATCH_UP,
        || async move {
            let st = me.status().await?;
            let last = st["log"]["last_seq"].as_u64()?;
            let late = &st["replicas"]["late"];
            (late["state"] == "running"
                && late["applied_seq"].as_u64() == Some(last)
                && late["snapshot_pending"].as_array()?.is_empty()
                && st["replicas"]["mariadb"]["applied_seq"].as_u64() == Some(last))
            .then_some(())
        },
    )
    .await;
    let last = log_last_seq(&dbmux).await;
    exec(
        &mut c,
        &["INSERT INTO t VALUES (5, 'v5')", "DELETE FROM t WHERE id = 2"],
    )
    .await;
    dbmux.wait_caught_up(last + 2, CATCH_UP).await;
    let sql = "SELECT CAST(id AS CHAR), v FROM t ORDER BY id";
    let m = mysql_rows(&with_db(&mysql_url(), &db), sql).await;
    assert_eq!(m.len(), 4);
    let r = mysql_rows(&with_db(&mysql_replica_url(), &db), sql).await;
    crate::support::compare::assert_rows_eq(&m, &r, "the MariaDB replica");
    let pg = pg_rows(&format!("SELECT id::text, v FROM \"{db}\".t ORDER BY id")).await;
    crate::support::compare::assert_rows_eq(&m, &pg, "the late PostgreSQL replica");
    let metrics = dbmux.admin_get("/metrics").await.unwrap();
    assert_eq!(
        metric(&metrics, "dbmux_apply_needs_snapshot{replica=\"late\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&metrics, "dbmux_apply_stopped{replica=\"mariadb\"}"),
        Some(0.0)
    );
    let out = dbmux.output();
    assert!(out.contains("needs a snapshot"), "said loudly:\n{out}");
    assert!(out.contains("starts over from a snapshot"), "{out}");
    assert_eq!(
        out.contains("asked capture for a snapshot that starts this replica over"),
        !by_command,
        "{out}"
    );
    assert!(dbmux.stop().success());
    // The run was for the late replica alone: the MariaDB replica skipped it.
    let env = dbmux.tail(None);
    let marks: Vec<&serde_json::Value> = env.iter().filter(|e| e["op"] == "snapshot").collect();
    assert!(!marks.is_empty());
    for m in marks {
        assert_eq!(m["snapshot"]["targets"], serde_json::json!(["late"]), "{m}");
        assert_eq!(m["snapshot"]["reset"], true, "{m}");
    }
    c.query_drop(format!("DROP DATABASE `{db}`")).await.unwrap();
}

/// Item 3: a session whose default database is *not* captured, writing with
/// `binlog_format=STATEMENT` to a captured table by its qualified name, stops
/// capture with the clear error (its rows are not in the binlog); the same
/// kind of write to a table that is not captured does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_format_write_to_a_captured_table_stops_capture() {
    let db = unique_name("stmt");
    let other = unique_name("stmtother");
    let mut c = master(&db).await;
    exec(&mut c, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let mut o = master(&other).await;
    exec(&mut o, &["CREATE TABLE o (id INT PRIMARY KEY)"]).await;
    let mut dbmux = Dbmux::new(&db, MARIADB_ONLY, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    exec(&mut c, &["INSERT INTO t VALUES (1)"]).await;
    dbmux.wait_caught_up(1, CATCH_UP).await;
    // `o` sits in the default database `other`, which is not captured.
    exec(
        &mut o,
        &[
            "SET SESSION binlog_format = 'STATEMENT'",
            "INSERT INTO o VALUES (1)",
        ],
    )
    .await;
    exec(&mut c, &["INSERT INTO t VALUES (2)"]).await;
    dbmux.wait_caught_up(2, CATCH_UP).await;
    assert!(dbmux.try_exit().is_none(), "{}", dbmux.output());
    exec(&mut o, &[&format!("INSERT INTO `{db}`.t VALUES (3)")]).await;
    let status = dbmux.wait_exit(CATCH_UP).await;
    assert!(!status.success());
    let out = dbmux.output();
    assert!(
        out.contains("statement-based change")
            && out.contains(&format!("{db}.t"))
            && out.contains("binlog_format=ROW"),
        "{out}"
    );
}

/// Item 2: foreign-key cascades the master performs inside InnoDB (never in
/// the binlog) reach both replicas: ON DELETE CASCADE, ON UPDATE CASCADE,
/// SET NULL on delete and on update, several levels, a self-referencing tree,
/// a key referenced through a UNIQUE column, and a session with
/// `foreign_key_checks = 0` (no cascade on the master, none on the replicas).
/// Every table ends value-by-value identical to the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_key_cascades_reach_both_replicas() {
    let db = unique_name("fk");
    let mut c = master(&db).await;
    exec(
        &mut c,
        &[
            "CREATE TABLE parent (id INT PRIMARY KEY, code VARCHAR(10) NOT NULL UNIQUE, v INT)",
            "CREATE TABLE child (id INT PRIMARY KEY, pid INT, pcode VARCHAR(10), note VARCHAR(10), \
             FOREIGN KEY (pid) REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE, \
             FOREIGN KEY (pcode) REFERENCES parent(code) ON DELETE SET NULL ON UPDATE CASCADE)",
            "CREATE TABLE grandchild (id INT PRIMARY KEY, cid INT NOT NULL, \
             FOREIGN KEY (cid) REFERENCES child(id) ON DELETE CASCADE ON UPDATE CASCADE)",
            "CREATE TABLE tree (id INT PRIMARY KEY, parent_id INT NULL, \
             FOREIGN KEY (parent_id) REFERENCES tree(id) ON DELETE CASCADE)",
            "CREATE TABLE nullme (id INT PRIMARY KEY, pid INT NULL, \
             FOREIGN KEY (pid) REFERENCES parent(id) ON DELETE SET NULL ON UPDATE SET NULL)",
        ],
    )
    .await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    exec(
        &mut c,
        &[
            "INSERT INTO parent VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)",
            "INSERT INTO child VALUES (10, 1, 'a', 'x'), (11, 2, 'b', 'y'), (12, 1, 'c', 'z'), (13, 3, 'a', 'w')",
            "INSERT INTO grandchild VALUES (100, 10), (101, 11), (102, 12)",
            "INSERT INTO tree VALUES (1, NULL), (2, 1), (3, 2), (4, 1), (5, NULL)",
            "INSERT INTO nullme VALUES (1, 1), (2, 2)",
        ],
    )
    .await;
    // Each change in a batch of its own, after the rows it cascades to.
    dbmux.wait_caught_up(17, CATCH_UP).await;
    let steps: &[&[&str]] = &[
        // child 10 and 12 go, with grandchildren 100 and 102; child 13's pcode
        // and nullme 1's pid become NULL.
        &["DELETE FROM parent WHERE id = 1"],
        // child 11 follows both keys; nullme 2's pid becomes NULL.
        &["UPDATE parent SET id = 20, code = 'bb' WHERE id = 2"],
        // grandchild 101 follows child 11's new key.
        &["UPDATE child SET id = 110 WHERE id = 11"],
        // 1 takes 2 and 4 with it, and 2 takes 3.
        &["DELETE FROM tree WHERE id = 1"],
        // No cascade on the master: child 13 stays, pointing at a missing parent.
        &[
            "SET SESSION foreign_key_checks = 0",
            "DELETE FROM parent WHERE id = 3",
            "SET SESSION foreign_key_checks = 1",
        ],
    ];
    let mut seq = 17;
    for s in steps {
        exec(&mut c, s).await;
        seq += 1;
        dbmux.wait_caught_up(seq, CATCH_UP).await;
    }
    let parent = assert_same(&db, "parent", "id, code, v", "id").await;
    assert_eq!(parent.len(), 1, "{parent:?}");
    let child = assert_same(&db, "child", "id, pid, pcode, note", "id").await;
    assert_eq!(
        child,
        vec![
            vec![Some("13".into()), Some("3".into()), None, Some("w".into())],
            vec![
                Some("110".into()),
                Some("20".into()),
                Some("bb".into()),
                Some("y".into())
            ],
        ]
    );
    assert_eq!(
        assert_same(&db, "grandchild", "id, cid", "id").await,
        vec![vec![Some("101".into()), Some("110".into())]]
    );
    assert_eq!(
        assert_same(&db, "tree", "id, parent_id", "id").await,
        vec![vec![Some("5".into()), None]]
    );
    assert_eq!(
        assert_same(&db, "nullme", "id, pid", "id").await,
        vec![vec![Some("1".into()), None], vec![Some("2".into()), None]]
    );
    assert!(dbmux.try_exit().is_none());
    let status = dbmux.status().await.unwrap();
    for r in ["mariadb", "postgres"] {
        assert_eq!(
            status["replicas"][r]["quarantined"],
            serde_json::json!([]),
            "{status}"
        );
    }
    assert!(dbmux.stop().success());
}

/// Item 10 (identifiers): names PostgreSQL cannot hold are mapped instead of
/// stopping: a column named like a system column gets `_` appended, a table
/// name over 63 bytes is shortened with a hash suffix, and a configured rename
/// wins; the MariaDB replica keeps the source names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_postgres_cannot_hold_are_renamed() {
    let db = unique_name("names");
    let long = format!("t_{}", "x".repeat(62));
    let mut c = master(&db).await;
    exec(
        &mut c,
        &[
            "CREATE TABLE sys (id INT PRIMARY KEY, xmin INT, ctid VARCHAR(5), other INT)",
            &format!("CREATE TABLE `{long}` (id INT PRIMARY KEY, v INT)"),
        ],
    )
    .await;
    let extra = format!("rename_columns.\"{db}.sys\" = {{ other = \"renamed\" }}\n");
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    let text = std::fs::read_to_string(&dbmux.config).unwrap();
    std::fs::write(
        &dbmux.config,
        text.replace("[replica.postgres]\n", &format!("[replica.postgres]\n{extra}")),
    )
    .unwrap();
    dbmux.start();
    dbmux.wait_capturing().await;
    exec(
        &mut c,
        &[
            "INSERT INTO sys VALUES (1, 10, 'a', 100)",
            &format!("INSERT INTO `{long}` VALUES (1, 5)"),
        ],
    )
    .await;
    dbmux.wait_caught_up(2, CATCH_UP).await;
    let pg = pg_rows(&format!("SELECT id, xmin_, ctid_, renamed FROM \"{db}\".sys")).await;
    assert_eq!(
        pg,
        vec![vec![
            Some("1".into()),
            Some("10".into()),
            Some("a".into()),
            Some("100".into())
        ]]
    );
    let tables = pg_rows(&format!(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = '{db}' AND tablename LIKE 't\\_x%'"
    ))
    .await;
    assert_eq!(tables.len(), 1, "{tables:?}");
    let name = tables[0][0].clone().unwrap();
    assert_eq!(name.len(), 63, "{name}");
    assert!(name.starts_with(&long[..54]), "{name}");
    assert_eq!(
        pg_rows(&format!("SELECT id, v FROM \"{db}\".\"{name}\"")).await,
        vec![vec![Some("1".into()), Some("5".into())]]
    );
    let my = mysql_rows(
        &with_db(&mysql_replica_url(), &db),
        "SELECT xmin, ctid, other FROM sys",
    )
    .await;
    assert_eq!(
        my,
        vec![vec![Some("10".into()), Some("a".into()), Some("100".into())]]
    );
    let status = dbmux.status().await.unwrap();
    assert_eq!(
        status["replicas"]["postgres"]["quarantined"],
        serde_json::json!([]),
        "{status}"
    );
    assert!(dbmux.stop().success());
}
