//! Schema changes in stream order (issue 8, "DDL test" and "untranslatable
//! DDL" of the Prove list), through the real `dbmux` binary between the test
//! master and both replicas.

use crate::support::compare::{assert_identical, mysql_rows, pg_rows, Projection, Rows};
use crate::support::dbmux::{Dbmux, BOTH};
use crate::support::{mysql_replica_url, mysql_url, unique_name, wait_for};
use mysql_async::prelude::Queryable;
use std::time::Duration;

const CATCH_UP: Duration = Duration::from_secs(180);

async fn master(db: &str) -> mysql_async::Conn {
    let mut c = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
    c.query_drop(format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
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

async fn last_seq(dbmux: &Dbmux) -> u64 {
    dbmux.status().await.unwrap()["log"]["last_seq"].as_u64().unwrap()
}

/// Waits until both replicas have applied everything written so far: bumps a
/// marker row (table `settle_mark`, captured like the others) and waits for
/// its value on both replicas. (The master's binlog end is no use as a mark:
/// other tests write to other databases all along.)
async fn settle(dbmux: &mut Dbmux) {
    let db = dbmux.db.clone();
    let mut c = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
    c.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.settle_mark (id INT PRIMARY KEY, n BIGINT NOT NULL)"
    ))
    .await
    .unwrap();
    let n: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        / 1000;
    c.query_drop(format!("REPLACE INTO `{db}`.settle_mark VALUES (1, {n})"))
        .await
        .unwrap();
    let want = vec![vec![Some(n.to_string())]];
    let db2 = db.clone();
    wait_for("both replicas to apply the marker", CATCH_UP, || {
        let (db, want) = (db2.clone(), want.clone());
        async move {
            let exists = format!(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = '{db}' \
                 AND table_name = 'settle_mark'"
            );
            if mysql_rows(&mysql_replica_url(), &exists).await.is_empty() || pg_rows(&exists).await.is_empty()
            {
                return None;
            }
            let my = mysql_rows(
                &mysql_replica_url(),
                &format!("SELECT CAST(n AS CHAR) FROM `{db}`.settle_mark"),
            )
            .await;
            let pg = pg_rows(&format!("SELECT n::text FROM \"{db}\".settle_mark")).await;
            (my == want && pg == want).then_some(())
        }
    })
    .await;
    let last = last_seq(dbmux).await;
    dbmux.wait_caught_up(last, CATCH_UP).await;
}

/// Columns (name, type, nullability, default) and indexes of a table on the
/// master equal the MariaDB replica's; PostgreSQL has the same column names,
/// in the same order, with the same nullability.
async fn assert_schema_equivalent(db: &str, table: &str) {
    let cols = format!(
        "SELECT column_name, column_type, is_nullable, column_default FROM information_schema.columns \
         WHERE table_schema = '{db}' AND table_name = '{table}' ORDER BY ordinal_position"
    );
    let m = mysql_rows(&mysql_url(), &cols).await;
    assert!(!m.is_empty(), "{db}.{table} has columns on the master");
    let r = mysql_rows(&mysql_replica_url(), &cols).await;
    crate::support::compare::assert_rows_eq(
        &m,
        &r,
        &format!("columns of {db}.{table} on the MariaDB replica"),
    );
    let idx = format!(
        "SELECT index_name, seq_in_index, column_name, non_unique FROM information_schema.statistics \
         WHERE table_schema = '{db}' AND table_name = '{table}' ORDER BY index_name, seq_in_index"
    );
    let m_idx = mysql_rows(&mysql_url(), &idx).await;
    let r_idx = mysql_rows(&mysql_replica_url(), &idx).await;
    crate::support::compare::assert_rows_eq(
        &m_idx,
        &r_idx,
        &format!("indexes of {db}.{table} on the MariaDB replica"),
    );
    let names = |rows: &Rows| -> Rows { rows.iter().map(|r| vec![r[0].clone(), r[2].clone()]).collect() };
    let pg = pg_rows(&format!(
        "SELECT column_name::text, is_nullable::text FROM information_schema.columns \
         WHERE table_schema = '{db}' AND table_name = '{table}' ORDER BY ordinal_position"
    ))
    .await;
    crate::support::compare::assert_rows_eq(
        &names(&m),
        &pg,
        &format!("columns of {db}.{table} on PostgreSQL"),
    );
    // The primary key, column by column.
    let m_pk: Rows = m_idx
        .iter()
        .filter(|r| r[0].as_deref() == Some("PRIMARY"))
        .map(|r| vec![r[2].clone()])
        .collect();
    let pg_pk = pg_rows(&format!(
        "SELECT a.attname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) ON true \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
         WHERE n.nspname = '{db}' AND c.relname = '{table}' AND i.indisprimary ORDER BY k.ord"
    ))
    .await;
    crate::support::compare::assert_rows_eq(
        &m_pk,
        &pg_pk,
        &format!("primary key of {db}.{table} on PostgreSQL"),
    );
}

async fn mariadb_tables(db: &str) -> Rows {
    mysql_rows(
        &mysql_replica_url(),
        &format!("SELECT table_name FROM information_schema.tables WHERE table_schema = '{db}' ORDER BY 1"),
    )
    .await
}

async fn pg_tables(db: &str) -> Rows {
    pg_rows(&format!(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = '{db}' ORDER BY 1"
    ))
    .await
}

fn accounts() -> Projection<'static> {
    Projection {
        table: "accounts",
        mysql: "CAST(id AS CHAR), name, CAST(bal AS CHAR), CAST(late_col AS CHAR)",
        pg: "id::text, name, bal::text, late_col::text",
        order: "id",
        float_cols: &[],
        json_cols: &[],
    }
}

/// The scripted migration: every statement kind of the issue, interleaved
/// with row changes; a clean restart with a migration made while dbmux was
/// stopped (capture then reads rows written under the old definitions while
/// `information_schema` already shows the new ones, and one apply batch holds
/// rows under the old and the new schema), and a kill -9 right after schema
/// changes (capture re-reads binlog events already behind the catalog). Both
/// replicas end with the master's data and equivalent schemas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_sequence_reaches_both_replicas_through_restarts() {
    let db = unique_name("ddl");
    let other = format!("{db}_n");
    let mut c = master(&db).await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    let text = std::fs::read_to_string(&dbmux.config).unwrap();
    std::fs::write(
        &dbmux.config,
        text.replace(
            &format!("include = [\"{db}\"]"),
            &format!("include = [\"{db}\", \"{other}\"]"),
        ),
    )
    .unwrap();
    dbmux.start();
    dbmux.wait_capturing().await;

    // Phase A, dbmux running: create, add / modify / rename columns, index, default.
    exec(
        &mut c,
        &[
            "CREATE TABLE acc (id INT NOT NULL PRIMARY KEY, name VARCHAR(10) NOT NULL, bal DECIMAL(10,2) DEFAULT 0)",
            "INSERT INTO acc (id, name, bal) VALUES (1,'a',1.50),(2,'b',2),(3,'c',NULL)",
            "ALTER TABLE acc ADD COLUMN note VARCHAR(20) NULL DEFAULT 'n/a'",
            "INSERT INTO acc VALUES (4,'d',4,'four')",
            "UPDATE acc SET note = 'one' WHERE id = 1",
            "ALTER TABLE acc MODIFY name VARCHAR(40) NOT NULL",
            "INSERT INTO acc VALUES (5,'a name longer than ten',5,NULL)",
            "ALTER TABLE acc RENAME COLUMN note TO remark",
            "UPDATE acc SET remark = 'renamed' WHERE id = 4",
            "ALTER TABLE acc ADD INDEX ix_name (name), ALTER COLUMN bal SET DEFAULT 1.00",
            "INSERT INTO acc (id, name) VALUES (6,'defaulted')",
        ],
    )
    .await;
    settle(&mut dbmux).await;
    assert_schema_equivalent(&db, "acc").await;

    // Phase B, dbmux stopped: rows under the old schema, a drop of the column
    // they fill, rows under the new one; a primary key change; a rename.
    assert!(dbmux.stop().success(), "{}", dbmux.output());
    exec(
        &mut c,
        &[
            "INSERT INTO acc VALUES (7,'old schema',7,'dropped soon')",
            "UPDATE acc SET remark = 'still there', bal = bal + 1 WHERE id = 2",
            "ALTER TABLE acc DROP COLUMN remark",
            "INSERT INTO acc VALUES (8,'new schema',8)",
            "ALTER TABLE acc DROP INDEX ix_name",
            "CREATE TABLE k (a INT NOT NULL, b INT NOT NULL, v TEXT, PRIMARY KEY (a))",
            "INSERT INTO k VALUES (1,1,'x'),(2,1,'y')",
            "ALTER TABLE k DROP PRIMARY KEY, ADD PRIMARY KEY (a, b)",
            "INSERT INTO k VALUES (1,2,'same a, other b')",
            "RENAME TABLE acc TO accounts",
            "INSERT INTO accounts VALUES (9,'renamed table',9)",
        ],
    )
    .await;
    dbmux.start();
    settle(&mut dbmux).await;
    assert_schema_equivalent(&db, "k").await;
    assert_identical(
        &db,
        &Projection {
            table: "k",
            mysql: "CAST(a AS CHAR), CAST(b AS CHAR), v",
            pg: "a::text, b::text, v",
            order: "a, b",
            float_cols: &[],
            json_cols: &[],
        },
        true,
        true,
    )
    .await;

    // Phase C: truncate, a database created and filled, a table created and
    // dropped, then kill -9 right after: the restart re-reads these binlog
    // events, which the catalog is already past.
    exec(
        &mut c,
        &[
            "TRUNCATE TABLE k",
            "INSERT INTO k VALUES (5,5,'after truncate')",
            &format!("CREATE DATABASE `{other}`"),
            &format!("CREATE TABLE `{other}`.t (id INT PRIMARY KEY, v VARCHAR(5))"),
            &format!("INSERT INTO `{other}`.t VALUES (1,'x'),(2,'y')"),
            "CREATE TABLE gone (id INT PRIMARY KEY, v INT)",
            "INSERT INTO gone VALUES (1,1)",
            "DROP TABLE gone",
            "ALTER TABLE accounts ADD COLUMN late_col INT NOT NULL DEFAULT 7",
            "UPDATE accounts SET late_col = id * 10 WHERE id > 4",
        ],
    )
    .await;
    let me = &dbmux;
    let seq_now = last_seq(me).await;
    wait_for("some of phase C in the log", CATCH_UP, || async move {
        (last_seq(me).await > seq_now).then_some(())
    })
    .await;
    dbmux.kill();
    exec(
        &mut c,
        &[
            "DROP TABLE k",
            "INSERT INTO accounts (id, name) VALUES (10,'last')",
        ],
    )
    .await;
    dbmux.start();
    settle(&mut dbmux).await;
    assert_identical(
        &other,
        &Projection {
            table: "t",
            mysql: "CAST(id AS CHAR), v",
            pg: "id::text, v",
            order: "id",
            float_cols: &[],
            json_cols: &[],
        },
        true,
        true,
    )
    .await;
    exec(&mut c, &[&format!("DROP DATABASE `{other}`")]).await;
    settle(&mut dbmux).await;

    // The end state: data and schemas equal, dropped things gone everywhere.
    assert_identical(&db, &accounts(), true, true).await;
    assert_schema_equivalent(&db, "accounts").await;
    let want: Rows = vec![
        vec![Some("accounts".to_string())],
        vec![Some("settle_mark".to_string())],
    ];
    assert_eq!(mariadb_tables(&db).await, want, "tables on the MariaDB replica");
    assert_eq!(pg_tables(&db).await, want, "tables on PostgreSQL");
    assert!(mariadb_tables(&other).await.is_empty());
    let schemas = pg_rows(&format!(
        "SELECT nspname::text FROM pg_namespace WHERE nspname = '{other}'"
    ))
    .await;
    assert!(
        schemas.is_empty(),
        "DROP DATABASE reaches PostgreSQL: {schemas:?}"
    );
    let st = dbmux.status().await.unwrap();
    for (name, r) in st["replicas"].as_object().unwrap() {
        assert_eq!(r["state"], "running", "{name}: {r}");
        assert!(
            r["quarantined"].as_array().is_none_or(|q| q.is_empty()),
            "{name}: {r}"
        );
    }
    assert!(dbmux.stop().success(), "{}", dbmux.output());
    // `dbmux tail` consumers see the schema changes in order, with the
    // statement and the resulting columns.
    let env = dbmux.tail(Some(1));
    let ddl: Vec<&serde_json::Value> = env.iter().filter(|e| e["op"] == "ddl").collect();
    let drop_col = ddl
        .iter()
        .position(|e| {
            e["ddl"]
                .as_str()
                .is_some_and(|s| s.contains("DROP COLUMN remark"))
        })
        .expect("the DROP COLUMN in the log");
    let rename = ddl
        .iter()
        .position(|e| e["ddl"].as_str().is_some_and(|s| s.starts_with("RENAME TABLE")))
        .expect("the RENAME TABLE in the log");
    assert!(drop_col < rename);
    let cols: Vec<&str> = ddl[drop_col]["schema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["id", "name", "bal"], "{}", ddl[drop_col]);
    // Row 7 was written under the old schema (with `remark`) and is in the
    // log with it, though it was read after the column was dropped.
    let row7 = env
        .iter()
        .find(|e| e["op"] == "c" && e["source"]["table"] == "acc" && e["after"]["id"] == 7)
        .expect("row 7 in the log");
    assert_eq!(row7["after"]["remark"], "dropped soon", "{row7}");
    c.query_drop(format!("DROP DATABASE `{db}`")).await.unwrap();
}

/// A schema change PostgreSQL cannot take (a partition added) stops that
/// table on PostgreSQL only, with an error naming the statement, on /status
/// and in the metrics; the MariaDB replica replays it, other tables keep
/// flowing on both; a re-snapshot of the table (`dbmux snapshot --table`)
/// brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untranslatable_schema_change_stops_only_its_table() {
    let db = unique_name("ddlbad");
    let mut c = master(&db).await;
    let mut dbmux = Dbmux::new(&db, BOTH, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    exec(
        &mut c,
        &[
            "CREATE TABLE ok (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE part (id INT NOT NULL, v INT, PRIMARY KEY (id)) \
             PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (100))",
            "INSERT INTO ok VALUES (1,1)",
            "INSERT INTO part VALUES (1,1)",
        ],
    )
    .await;
    settle(&mut dbmux).await;
    let statement = "ALTER TABLE part ADD PARTITION (PARTITION p1 VALUES LESS THAN (200))";
    exec(
        &mut c,
        &[
            statement,
            "INSERT INTO part VALUES (150,2)",
            "INSERT INTO ok VALUES (2,2)",
            "UPDATE ok SET v = 20 WHERE id = 2",
        ],
    )
    .await;
    let me = &dbmux;
    let q = wait_for("part to be quarantined on PostgreSQL", CATCH_UP, || async move {
        let st = me.status().await?;
        let q = st["replicas"]["postgres"]["quarantined"].as_array()?.clone();
        (!q.is_empty()).then_some(q)
    })
    .await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["table"]["schema"], db.as_str(), "{q:?}");
    assert_eq!(q[0]["table"]["name"], "part", "{q:?}");
    let reason = q[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(statement),
        "the error names the statement: {reason}"
    );
    settle(&mut dbmux).await;
    let ok = Projection {
        table: "ok",
        mysql: "CAST(id AS CHAR), CAST(v AS CHAR)",
        pg: "id::text, v::text",
        order: "id",
        float_cols: &[],
        json_cols: &[],
    };
    let part = Projection {
        table: "part",
        mysql: "CAST(id AS CHAR), CAST(v AS CHAR)",
        pg: "id::text, v::text",
        order: "id",
        float_cols: &[],
        json_cols: &[],
    };
    // The other table on both, the partitioned one on MariaDB.
    assert_identical(&db, &ok, true, true).await;
    assert_identical(&db, &part, true, false).await;
    let st = dbmux.status().await.unwrap();
    assert!(
        st["replicas"]["mariadb"]["quarantined"]
            .as_array()
            .is_none_or(|q| q.is_empty()),
        "{st}"
    );
    let metrics = dbmux.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("dbmux_apply_ddl_failures_total{replica=\"postgres\"}") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert!(
        dbmux.output().contains(statement),
        "the log line names the statement"
    );
    // The operator brings it back with a re-snapshot of that table.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .args(["snapshot", "--config"])
        .arg(&dbmux.config)
        .args(["--replica", "postgres", "--table", &format!("{db}.part")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    exec(&mut c, &["INSERT INTO part VALUES (2,3)"]).await;
    let me = &dbmux;
    wait_for("part to be resumed on PostgreSQL", CATCH_UP, || async move {
        let st = me.status().await?;
        let r = &st["replicas"]["postgres"];
        (r["quarantined"].as_array()?.is_empty() && r["snapshot_pending"].as_array()?.is_empty())
            .then_some(())
    })
    .await;
    settle(&mut dbmux).await;
    assert_identical(&db, &part, true, true).await;
    assert_identical(&db, &ok, true, true).await;
    assert!(dbmux.stop().success(), "{}", dbmux.output());
    c.query_drop(format!("DROP DATABASE `{db}`")).await.unwrap();
}
