//! Replicas that stay equal: regression tests for the holes of issue 6, each
//! through the real `dbmux` binary between the test master and replicas.

use crate::support::compare::{mysql_rows, pg_rows, Rows};
use crate::support::dbmux::{Dbmux, Replicas, BOTH};
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
