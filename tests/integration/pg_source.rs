//! PostgreSQL as a source: logical replication from a fresh database of the
//! test server (a second database beside the replicas' `app`) through a
//! `pgoutput` slot, both at the connector level and end to end through the
//! real `dbmux` binary into the MariaDB and PostgreSQL replicas.

use crate::support::dbmux::{Dbmux, LogKind, BOTH};
use crate::support::pg_source::{parse_lsn, PgSourceDb};
use crate::support::{self, mysql_replica_url, pg_url, wait_for, with_db};
use connectors::postgres::capture::{PostgresCaptureError, PostgresSource, PostgresSourceConfig};
use pipeline::retry::Classify;
use pipeline::source::{CapturedTransaction, Source};
use pipeline::{Op, Position, Value};
use std::time::Duration;

fn config(db: &PgSourceDb) -> PostgresSourceConfig {
    PostgresSourceConfig {
        slot: db.name.clone(),
        publication: db.name.clone(),
        include: vec!["public".into()],
        status_interval_secs: 1,
        ..PostgresSourceConfig::new(db.url.clone())
    }
}

async fn next(src: &mut PostgresSource) -> CapturedTransaction {
    tokio::time::timeout(Duration::from_secs(30), src.next_transaction())
        .await
        .expect("a transaction within 30 s")
        .unwrap()
}

/// Polls the source for `wait` (so it answers keepalives and sends status
/// updates) and asserts it hands out no transaction.
async fn idle(src: &mut PostgresSource, wait: Duration) {
    if let Ok(r) = tokio::time::timeout(wait, src.next_transaction()).await {
        panic!("unexpected transaction: {:?}", r.map(|t| t.changes));
    }
}

fn lsn(p: &Position) -> u64 {
    match p {
        Position::Postgres(l) => *l,
        other => panic!("not a PostgreSQL position: {other}"),
    }
}

fn ints(row: &[Value]) -> Vec<i64> {
    row.iter()
        .filter_map(|v| match v {
            Value::Int(i) => Some(*i),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_capture_whole_transactions_in_order_and_slot_confirms_only_what_is_durable() {
    let db = PgSourceDb::create("pgcap").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY)")
        .await;
    let mut cfg = config(&db);
    cfg.exclude = vec!["public.other".into()];
    let mut src = PostgresSource::new(cfg.clone()).unwrap();
    src.preflight().await.unwrap();
    let (durable_tx, durable_rx) = tokio::sync::watch::channel(None);
    src.watch_durable(durable_rx);
    let start = src.current_position().await.unwrap();
    assert!(
        src.exported_snapshot().is_some(),
        "slot creation exports a snapshot"
    );
    let created_at = db.slot_confirmed(&db.name).await.expect("slot created");
    assert_eq!(
        created_at,
        lsn(&start),
        "start position = the slot's consistent point"
    );
    src.start(Some(start.clone())).await.unwrap();
    assert!(
        src.exported_snapshot().is_none(),
        "the snapshot ends when streaming starts"
    );

    let c = db.client().await;
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1, 'a'), (2, 'b'); INSERT INTO other VALUES (1); COMMIT")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO other VALUES (2)").await.unwrap(); // nothing captured
    c.batch_execute("BEGIN; UPDATE t SET v = 'c' WHERE id = 1; UPDATE t SET id = 3 WHERE id = 2; DELETE FROM t WHERE id = 1; COMMIT")
        .await
        .unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES (9, 'rolled back'); ROLLBACK")
        .await
        .unwrap();
    c.batch_execute("TRUNCATE t").await.unwrap();

    let t1 = next(&mut src).await;
    assert_eq!(t1.changes.len(), 2, "only the captured table: {:?}", t1.changes);
    assert!(
        matches!(&t1.changes[0].1, Op::Insert { after } if after == &vec![Value::Int(1), Value::Text("a".into())])
    );
    assert_eq!(t1.changes[0].0.id.to_string(), "public.t");
    assert_eq!(t1.changes[0].0.primary_key, vec![0]);
    let t2 = next(&mut src).await;
    assert_eq!(t2.changes.len(), 3);
    match &t2.changes[1].1 {
        Op::Update { before, after } => {
            assert_eq!(ints(before), vec![2], "key-only before image");
            assert_eq!(after, &vec![Value::Int(3), Value::Text("b".into())]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&t2.changes[2].1, Op::Delete { before } if before[0] == Value::Int(1)));
    let t3 = next(&mut src).await;
    assert_eq!(t3.changes.len(), 1);
    assert!(matches!(t3.changes[0].1, Op::Truncate));
    assert!(lsn(&t1.position) < lsn(&t2.position) && lsn(&t2.position) < lsn(&t3.position));
    assert!(t1.commit_ts_us > 1_600_000_000_000_000, "commit time in Unix µs");

    // Nothing is durable yet: however many status updates go out, the slot
    // stays where it was created.
    idle(&mut src, Duration::from_millis(2500)).await;
    assert_eq!(db.slot_confirmed(&db.name).await, Some(created_at));
    // The log holds t1: the slot confirms t1 — or the end of the excluded
    // `other` transaction right after it (nothing of it is captured, and all
    // before it is durable) — but never t2 or t3.
    durable_tx.send_replace(Some(t1.position.clone()));
    idle(&mut src, Duration::from_millis(1500)).await;
    let confirmed = db.slot_confirmed(&db.name).await.unwrap();
    assert!(
        confirmed >= lsn(&t1.position) && confirmed < lsn(&t2.position),
        "confirmed {confirmed:X} outside [t1 {:X}, t2 {:X})",
        lsn(&t1.position),
        lsn(&t2.position)
    );
    durable_tx.send_replace(Some(t3.position.clone()));
    idle(&mut src, Duration::from_millis(1500)).await;
    assert_eq!(db.slot_confirmed(&db.name).await, Some(lsn(&t3.position)));
    src.stop().await;

    // A new source resuming at t3 (the log's newest position) hands out what
    // committed afterwards, and nothing before it.
    c.batch_execute("INSERT INTO t VALUES (10, 'after')")
        .await
        .unwrap();
    let mut again = PostgresSource::new(cfg).unwrap();
    again.start(Some(t3.position.clone())).await.unwrap();
    let t4 = next(&mut again).await;
    assert!(
        matches!(&t4.changes[0].1, Op::Insert { after } if after[0] == Value::Int(10)),
        "{:?}",
        t4.changes
    );
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_preflight_names_missing_replica_identity_permissions_and_publication() {
    let db = PgSourceDb::create("pgpre").await;
    db.exec(
        "CREATE TABLE nokey (a int, b text); CREATE TABLE nothing (id int PRIMARY KEY); \
         ALTER TABLE nothing REPLICA IDENTITY NOTHING; CREATE TABLE arr (id int PRIMARY KEY, xs int[]); \
         CREATE TABLE fine (id int PRIMARY KEY); CREATE TABLE full_ok (a int); ALTER TABLE full_ok REPLICA IDENTITY FULL",
    )
    .await;
    let mut src = PostgresSource::new(config(&db)).unwrap();
    let e = src.preflight().await.unwrap_err();
    assert!(!e.is_transient());
    let text = e.to_string();
    for want in [
        "public.nokey: missing REPLICA IDENTITY (no primary key)",
        "public.nothing: REPLICA IDENTITY is NOTHING",
        "public.arr.xs: unsupported column type integer[]",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text.contains("public.fine") && !text.contains("full_ok"),
        "{text}"
    );
    assert_eq!(
        text.matches("\n  - ").count(),
        3,
        "every problem at once:\n{text}"
    );

    // A missing publication that dbmux may not create.
    let mut cfg = config(&db);
    cfg.publication = "nope".into();
    cfg.create_publication = false;
    let e = PostgresSource::new(cfg).unwrap().preflight().await.unwrap_err();
    assert!(
        matches!(e, PostgresCaptureError::PublicationMissing { .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("CREATE PUBLICATION \"nope\" FOR ALL TABLES"),
        "{e}"
    );

    // A role without REPLICATION (and not a superuser).
    let role = support::unique_name("norepl");
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw' NOSUPERUSER NOREPLICATION"
    ))
    .await;
    let mut u = url::Url::parse(&db.url).unwrap();
    u.set_username(&role).unwrap();
    u.set_password(Some("pw")).unwrap();
    let cfg = PostgresSourceConfig {
        url: u.to_string(),
        ..config(&db)
    };
    let e = PostgresSource::new(cfg).unwrap().preflight().await.unwrap_err();
    db.exec(&format!("DROP ROLE {role}")).await;
    assert!(
        e.to_string()
            .contains("permissions: expected a role with the REPLICATION attribute"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dropped_slot_and_dropped_publication_stop_with_a_clear_error() {
    let db = PgSourceDb::create("pgdrop").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut src = PostgresSource::new(config(&db)).unwrap();
    src.preflight().await.unwrap();
    let start = src.current_position().await.unwrap();
    src.start(Some(start.clone())).await.unwrap();
    db.exec("INSERT INTO t VALUES (1)").await;
    let t1 = next(&mut src).await;
    src.stop().await;
    // The slot is gone when capture comes back: a definite error, no new slot.
    wait_for(
        "the walsender to release the slot",
        Duration::from_secs(10),
        || async {
            let c = db.client().await;
            c.query_opt("SELECT pg_drop_replication_slot($1::text)::text", &[&db.name])
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    let e = src.start(Some(t1.position.clone())).await.unwrap_err();
    assert!(matches!(e, PostgresCaptureError::SlotMissing { .. }), "{e}");
    assert!(!e.is_transient());
    assert!(e.to_string().contains("does not exist (dropped?)"), "{e}");
    assert_eq!(
        db.slot_confirmed(&db.name).await,
        None,
        "no slot is created behind the user's back"
    );

    // A publication dropped while capture streams.
    let db2 = PgSourceDb::create("pgdroppub").await;
    db2.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut src = PostgresSource::new(config(&db2)).unwrap();
    src.preflight().await.unwrap();
    let start = src.current_position().await.unwrap();
    src.start(Some(start)).await.unwrap();
    db2.exec(&format!("DROP PUBLICATION \"{}\"", db2.name)).await;
    db2.exec("INSERT INTO t VALUES (1)").await;
    let e = tokio::time::timeout(Duration::from_secs(30), src.next_transaction())
        .await
        .expect("an error within 30 s")
        .unwrap_err();
    assert!(
        matches!(e, PostgresCaptureError::PublicationMissing { .. }),
        "{e}"
    );
    assert!(!e.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_unchanged_toast_values_are_filled_from_the_old_row_or_stop_capture() {
    let db = PgSourceDb::create("pgtoast").await;
    db.exec(
        "CREATE TABLE full_t (id int PRIMARY KEY, n int, big text); ALTER TABLE full_t REPLICA IDENTITY FULL; \
         CREATE TABLE dflt (id int PRIMARY KEY, n int, big text)",
    )
    .await;
    let mut src = PostgresSource::new(config(&db)).unwrap();
    src.preflight().await.unwrap();
    let start = src.current_position().await.unwrap();
    src.start(Some(start)).await.unwrap();
    // md5 chains do not compress: 200 kB stored out of line (TOAST).
    let big = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 6400) i)";
    db.exec(&format!("INSERT INTO full_t VALUES (1, 0, {big})")).await;
    let t = next(&mut src).await;
    let Op::Insert { after } = &t.changes[0].1 else {
        panic!()
    };
    let Value::Text(original) = &after[2] else {
        panic!("{:?}", after[2])
    };
    assert_eq!(original.len(), 6400 * 32);
    db.exec("UPDATE full_t SET n = n + 1 WHERE id = 1").await;
    let t = next(&mut src).await;
    match &t.changes[0].1 {
        Op::Update { before, after } => {
            assert_eq!(after[1], Value::Int(1));
            assert_eq!(
                after[2],
                Value::Text(original.clone()),
                "unchanged TOAST value filled in"
            );
            assert_eq!(before[2], Value::Text(original.clone()));
        }
        other => panic!("{other:?}"),
    }
    // Without the old row the value is unknown: capture stops, loudly.
    db.exec(&format!("INSERT INTO dflt VALUES (1, 0, {big})")).await;
    next(&mut src).await;
    db.exec("UPDATE dflt SET n = 5 WHERE id = 1").await;
    let e = tokio::time::timeout(Duration::from_secs(30), src.next_transaction())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, PostgresCaptureError::ToastUnchanged { .. }), "{e}");
    assert!(!e.is_transient());
    assert!(e.to_string().contains("public.dflt.big"), "{e}");
    assert!(e.to_string().contains("REPLICA IDENTITY FULL"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_keepalives_are_answered_and_a_killed_walsender_is_transient() {
    let db = PgSourceDb::create("pgkeep").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    // The server drops a silent client after 1 s; our own status updates
    // come only every 30 s, so only answering keepalives keeps it alive.
    let mut cfg = config(&db);
    cfg.status_interval_secs = 30;
    cfg.url = format!("{}?options=-c%20wal_sender_timeout%3D1000", db.url);
    let mut src = PostgresSource::new(cfg).unwrap();
    src.preflight().await.unwrap();
    let start = src.current_position().await.unwrap();
    src.start(Some(start)).await.unwrap();
    let slot = db.name.clone();
    let pid = || async {
        let c = db.client().await;
        let r = c
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        r.and_then(|r| r.get::<_, Option<i32>>(0))
    };
    let before = pid().await.expect("streaming");
    idle(&mut src, Duration::from_secs(4)).await;
    db.exec("INSERT INTO t VALUES (1)").await;
    let t = next(&mut src).await;
    assert_eq!(t.changes.len(), 1);
    assert_eq!(
        pid().await,
        Some(before),
        "the same walsender streamed throughout"
    );

    // The walsender is killed: a transient error, and a restart resumes.
    db.exec(&format!("SELECT pg_terminate_backend({before})")).await;
    let e = tokio::time::timeout(Duration::from_secs(30), src.next_transaction())
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    db.exec("INSERT INTO t VALUES (2)").await;
    // (The runtime retries `start` with backoff; so does this loop.)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = src.start(Some(t.position.clone())).await {
        assert!(e.is_transient(), "{e}");
        assert!(std::time::Instant::now() < deadline, "no reconnect: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t2 = next(&mut src).await;
    assert!(matches!(&t2.changes[0].1, Op::Insert { after } if after[0] == Value::Int(2)));
}

// ---------------------------------------------------------------------------
// End to end through the real binary: PostgreSQL → MariaDB and PostgreSQL.

/// How a compared column is normalized before comparing engines.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    /// `real`: compared as the f32 the text denotes.
    F4,
    /// `double precision`: compared as the f64.
    F8,
    /// Exact decimal text: trailing fractional zeros are not significant
    /// (MariaDB's DECIMAL(65,30) pads `numeric` values to 30 places).
    Dec,
    /// JSON: compared as parsed documents (`jsonb` normalizes).
    Json,
}

/// One compared column: the PostgreSQL expression (source and PostgreSQL
/// replica alike) and the MariaDB one producing the same canonical text.
struct Col(&'static str, &'static str, Kind);

type Rows = Vec<Vec<Option<String>>>;

/// PostgreSQL rows as text, in the session the canonical forms assume.
async fn pg_canonical(url: &str, sql: &str) -> Rows {
    let c = crate::support::pg_source::connect(url).await;
    c.batch_execute("SET TimeZone = 'UTC'; SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 1")
        .await
        .unwrap();
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// MariaDB rows through the binary protocol (floats exact).
async fn my_canonical(url: &str, sql: &str) -> Rows {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
    let rows: Vec<mysql_async::Row> = conn.exec(sql, ()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.disconnect().await.unwrap();
    rows.into_iter()
        .map(|r| {
            r.unwrap()
                .into_iter()
                .map(|v| match v {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => Some(String::from_utf8(b).expect("UTF-8")),
                    mysql_async::Value::Float(f) => Some(format!("{f:e}")),
                    mysql_async::Value::Double(f) => Some(format!("{f:e}")),
                    mysql_async::Value::Int(i) => Some(i.to_string()),
                    mysql_async::Value::UInt(u) => Some(u.to_string()),
                    other => Some(other.as_sql(true)),
                })
                .collect()
        })
        .collect()
}

fn normalize(rows: Rows, cols: &[Col]) -> Rows {
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .zip(cols)
                .map(|(cell, col)| {
                    let cell = cell?;
                    Some(match col.2 {
                        Kind::Plain => cell,
                        Kind::F4 => {
                            format!("{:e}", cell.parse::<f32>().unwrap_or_else(|_| panic!("{cell:?}")))
                        }
                        Kind::F8 => {
                            format!("{:e}", cell.parse::<f64>().unwrap_or_else(|_| panic!("{cell:?}")))
                        }
                        Kind::Dec if cell.contains('.') => {
                            cell.trim_end_matches('0').trim_end_matches('.').to_string()
                        }
                        Kind::Dec => cell,
                        Kind::Json => serde_json::from_str::<serde_json::Value>(&cell)
                            .unwrap_or_else(|_| panic!("{cell:?} is not JSON"))
                            .to_string(),
                    })
                })
                .collect()
        })
        .collect()
}

fn assert_same(what: &str, want: &Rows, got: &Rows) {
    if want == got {
        return;
    }
    let i = want.iter().zip(got).position(|(a, b)| a != b);
    match i {
        Some(i) => {
            let j = want[i].iter().zip(&got[i]).position(|(a, b)| a != b).unwrap_or(0);
            let short = |c: &Option<String>| c.as_ref().map(|s| s.chars().take(120).collect::<String>());
            panic!(
                "{what}: row {i} column {j} differs:\n source:  {:?}\n replica: {:?}",
                short(&want[i][j]),
                short(&got[i][j])
            )
        }
        None => panic!(
            "{what}: {} rows at the source, {} on the replica",
            want.len(),
            got.len()
        ),
    }
}

/// Asserts the source table, the MariaDB replica's and the PostgreSQL
/// replica's hold the same rows. Returns the row count.
async fn assert_table_identical(src: &PgSourceDb, table: &str, order: &str, cols: &[Col]) -> usize {
    let pg_list: Vec<&str> = cols.iter().map(|c| c.0).collect();
    // Qualified: a bare name would sort by the text output column of that name.
    let pg_order: Vec<String> = order.split(',').map(|c| format!("t.{}", c.trim())).collect();
    let pg_order = pg_order.join(", ");
    let my_list: Vec<&str> = cols.iter().map(|c| c.1).collect();
    let source = normalize(
        pg_canonical(
            &src.url,
            &format!(
                "SELECT {} FROM public.\"{table}\" AS t ORDER BY {pg_order}",
                pg_list.join(", ")
            ),
        )
        .await,
        cols,
    );
    let pg_replica = normalize(
        pg_canonical(
            &pg_url(),
            &format!(
                "SELECT {} FROM \"{}\".\"{table}\" AS t ORDER BY {pg_order}",
                pg_list.join(", "),
                src.name
            ),
        )
        .await,
        cols,
    );
    assert_same(
        &format!("{table} on the PostgreSQL replica"),
        &source,
        &pg_replica,
    );
    let mariadb = normalize(
        my_canonical(
            &with_db(&mysql_replica_url(), &src.name),
            &format!("SELECT {} FROM `{table}` ORDER BY {order}", my_list.join(", ")),
        )
        .await,
        cols,
    );
    assert_same(&format!("{table} on the MariaDB replica"), &source, &mariadb);
    source.len()
}

const MATRIX: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE matrix (id int PRIMARY KEY, b boolean, i2 smallint, i4 integer, i8 bigint,
  n numeric(20,5), nu numeric, f4 real, f8 double precision, c char(5), vc varchar(20), t text,
  by bytea, d date, tm time(6), ts timestamp(6), tz timestamptz(6), iv interval, u uuid,
  j json, jb jsonb, bt bit(10), e mood, ip inet)";

fn matrix_cols() -> Vec<Col> {
    use Kind::*;
    vec![
        Col("id::text", "CAST(id AS CHAR)", Plain),
        Col(
            "CASE WHEN b THEN '1' WHEN NOT b THEN '0' END",
            "CAST(b AS CHAR)",
            Plain,
        ),
        Col("i2::text", "CAST(i2 AS CHAR)", Plain),
        Col("i4::text", "CAST(i4 AS CHAR)", Plain),
        Col("i8::text", "CAST(i8 AS CHAR)", Plain),
        Col("n::text", "CAST(n AS CHAR)", Plain),
        Col("nu::text", "CAST(nu AS CHAR)", Dec),
        Col("f4::text", "f4", F4),
        Col("f8::text", "f8", F8),
        Col("c::text", "c", Plain),
        Col("vc", "vc", Plain),
        Col("t", "t", Plain),
        Col("encode(by, 'hex')", "LOWER(HEX(`by`))", Plain),
        Col("d::text", "CAST(d AS CHAR)", Plain),
        Col(
            "to_char(tm, 'HH24:MI:SS.US')",
            "TIME_FORMAT(tm, '%H:%i:%s.%f')",
            Plain,
        ),
        Col(
            "to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US')",
            "DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f')",
            Plain,
        ),
        Col(
            "to_char(tz, 'YYYY-MM-DD HH24:MI:SS.US')",
            "DATE_FORMAT(tz, '%Y-%m-%d %H:%i:%s.%f')",
            Plain,
        ),
        Col("iv::text", "iv", Plain),
        Col("u::text", "CAST(u AS CHAR)", Plain),
        Col("j::text", "j", Json),
        Col("jb::text", "jb", Json),
        Col("bt::text", "LPAD(BIN(bt + 0), 10, '0')", Plain),
        Col("e::text", "CAST(e AS CHAR)", Plain),
        Col("ip", "ip", Plain),
    ]
}

const MATRIX_ROWS: &str = r#"
INSERT INTO matrix VALUES
 (1, false, -32768, -2147483648, -9223372036854775808, -999999999999999.99999,
  -12345678901234567890123456789012345.123456789012345678901234567890, -3.4028235e38, -1.7976931348623157e308,
  '', '', '', '\x', '0001-01-01', '00:00:00', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00',
  '-1 years -2 mons -3 days -04:05:06.789', '00000000-0000-0000-0000-000000000000', '[]', '{}',
  B'0000000000', 'sad', '0.0.0.0'),
 (2, true, 32767, 2147483647, 9223372036854775807, 999999999999999.99999,
  99999999999999999999999999999999999.999999999999999999999999999999, 3.4028235e38, 1.7976931348623157e308,
  'abcde', 'vingt caractères é😀!', (SELECT string_agg(chr(i), '') FROM generate_series(1, 1114111) i WHERE i NOT BETWEEN 55296 AND 57343),
  (SELECT string_agg(set_byte('\x00'::bytea, 0, i), ''::bytea) FROM generate_series(0, 255) i),
  '9999-12-31', '24:00:00', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999999+00',
  '178000000 years 11 mons 30 days 23:59:59.999999', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
  '{"a": [1, 2.5, "x\u00e9"],  "b": null, "a": 2}', '{"z": 1, "a": {"b": [true, false]}}',
  B'1111111111', 'happy', '2001:db8::ff/64'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL),
 (4, true, 0, 0, 0, 0.00001, 0.000000000000000000000000000001, 1.401298e-45, 5e-324,
  'a b', ' lead', E'tab\there\nnewline "quotes" \\ back''slash', '\x00', '1970-01-01', '12:34:56.789012',
  '1970-01-01 00:00:00', '1970-01-01 00:00:00+00', '0 seconds', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '"str"', 'null', B'0101010101', 'ok', '192.168.0.1/32');
UPDATE matrix SET f8 = -0.1, nu = 1.5, tz = '2038-01-19 03:14:08+00' WHERE id = 4;
UPDATE matrix SET id = 5 WHERE id = 4;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_source_type_matrix_toast_and_truncate_reach_both_replicas_identical() {
    let src = PgSourceDb::create("pgmx").await;
    src.exec("CREATE TABLE aux (id int PRIMARY KEY, v text)").await;
    let mut dbmux = Dbmux::with_pg_source(&src.name, BOTH, "");
    dbmux.start();
    dbmux.wait_capturing().await;
    // Created while dbmux runs: captured from their first row.
    src.exec(MATRIX).await;
    src.exec(MATRIX_ROWS).await;
    src.exec(
        "CREATE TABLE docs (id int PRIMARY KEY, n int, big text); ALTER TABLE docs REPLICA IDENTITY FULL;
         INSERT INTO docs VALUES (1, 0, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 6400) i));
         UPDATE docs SET n = 1 WHERE id = 1;
         INSERT INTO aux VALUES (1, 'x'), (2, 'y'); TRUNCATE aux; INSERT INTO aux VALUES (3, 'after truncate');",
    )
    .await;
    // 4 inserts + 2 updates (matrix), 2 (docs), 2 + 1 truncate + 1 (aux).
    let last = dbmux.wait_caught_up(12, Duration::from_secs(120)).await;
    assert_eq!(last, 12, "one event per row change:\n{}", dbmux.output());
    assert_eq!(
        assert_table_identical(&src, "matrix", "id", &matrix_cols()).await,
        4
    );
    let docs = [
        Col("id::text", "CAST(id AS CHAR)", Kind::Plain),
        Col("n::text", "CAST(n AS CHAR)", Kind::Plain),
        Col("md5(big)", "MD5(big)", Kind::Plain),
        Col("length(big)::text", "CAST(CHAR_LENGTH(big) AS CHAR)", Kind::Plain),
    ];
    assert_eq!(assert_table_identical(&src, "docs", "id", &docs).await, 1);
    let aux = [
        Col("id::text", "CAST(id AS CHAR)", Kind::Plain),
        Col("v", "v", Kind::Plain),
    ];
    assert_eq!(assert_table_identical(&src, "aux", "id", &aux).await, 1);
    // The log says TRUNCATE, as a consumer sees it.
    let ops: Vec<String> = dbmux
        .tail(Some(1))
        .iter()
        .map(|e| e["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops.iter().filter(|o| *o == "t").count(), 1, "{ops:?}");
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
}

const WORKLOAD_TABLES: &str = "
CREATE TABLE accounts (id bigint PRIMARY KEY, owner varchar(64) NOT NULL, balance numeric(14,2) NOT NULL,
  updated timestamptz(6), note bytea);
CREATE TABLE items (id int PRIMARY KEY, k int NOT NULL, s varchar(40));
CREATE TABLE pairs (a int NOT NULL, b bigint NOT NULL, v text NOT NULL, PRIMARY KEY (a, b));
CREATE TABLE audit (txn bigint NOT NULL, info varchar(32) NOT NULL);
ALTER TABLE audit REPLICA IDENTITY FULL;";

fn workload_projections() -> Vec<(&'static str, &'static str, Vec<Col>)> {
    use Kind::Plain;
    vec![
        (
            "accounts",
            "id",
            vec![
                Col("id::text", "CAST(id AS CHAR)", Plain),
                Col("owner", "owner", Plain),
                Col("balance::text", "CAST(balance AS CHAR)", Plain),
                Col(
                    "to_char(updated, 'YYYY-MM-DD HH24:MI:SS.US')",
                    "DATE_FORMAT(updated, '%Y-%m-%d %H:%i:%s.%f')",
                    Plain,
                ),
                Col("encode(note, 'hex')", "LOWER(HEX(note))", Plain),
            ],
        ),
        (
            "items",
            "id",
            vec![
                Col("id::text", "CAST(id AS CHAR)", Plain),
                Col("k::text", "CAST(k AS CHAR)", Plain),
                Col("s", "s", Plain),
            ],
        ),
        (
            "pairs",
            "a, b",
            vec![
                Col("a::text", "CAST(a AS CHAR)", Plain),
                Col("b::text", "CAST(b AS CHAR)", Plain),
                Col("v", "v", Plain),
            ],
        ),
        (
            "audit",
            "txn, info",
            vec![
                Col("txn::text", "CAST(txn AS CHAR)", Plain),
                Col("info", "info", Plain),
            ],
        ),
    ]
}

/// A mixed OLTP workload on the PostgreSQL source (like the MariaDB one):
/// multi-row inserts, range updates, primary-key updates, deletes, upserts on
/// a composite key, and inserts into `audit`, which has no primary key (a
/// replayed insert would duplicate a row there). Returns (transactions, row changes).
async fn pg_workload(
    url: &str,
    txns: u64,
    seed: u64,
    progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> (u64, u64) {
    use rand::{Rng, SeedableRng};
    let mut client = crate::support::pg_source::connect(url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut next_account, mut next_item, mut changes_total) = (1i64, 1i32, 0u64);
    for t in 0..txns as i64 {
        let tx = client.transaction().await.unwrap();
        let mut changes = 0u64;
        let n = rng.gen_range(5..25);
        let mut values = Vec::new();
        for _ in 0..n {
            let note = if rng.gen_bool(0.3) {
                "NULL".to_string()
            } else {
                let bytes: Vec<u8> = (0..rng.gen_range(0..16)).map(|_| rng.gen()).collect();
                format!(
                    "'\\x{}'",
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            };
            values.push(format!(
                "({next_account}, 'owner-{next_account}-é😀', {}.{:02}, '2024-01-02 03:04:05.{:06}+00', {note})",
                rng.gen_range(-100_000..100_000),
                rng.gen_range(0..100),
                rng.gen_range(0..1_000_000)
            ));
            next_account += 1;
        }
        let exec = |sql: String| {
            let tx = &tx;
            async move {
                tx.execute(sql.as_str(), &[])
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            }
        };
        changes += exec(format!("INSERT INTO accounts VALUES {}", values.join(","))).await;
        let m = rng.gen_range(3..10);
        let rows: Vec<String> = (0..m)
            .map(|i| {
                let s = if i % 4 == 0 {
                    "NULL".to_string()
                } else {
                    format!("'s{}'", rng.gen::<u32>())
                };
                format!("({}, {}, {s})", next_item + i, rng.gen_range(0..1000))
            })
            .collect();
        changes += exec(format!("INSERT INTO items VALUES {}", rows.join(","))).await;
        next_item += m;
        let lo = (next_account - 60).max(1);
        changes += exec(format!(
            "UPDATE accounts SET balance = balance + 1.25, updated = clock_timestamp() WHERE id BETWEEN {lo} AND {}",
            lo + rng.gen_range(0..20)
        ))
        .await;
        if next_item > 20 && rng.gen_bool(0.5) {
            let from = rng.gen_range(1..next_item);
            changes += exec(format!(
                "UPDATE items SET id = {}, k = k + 1 WHERE id = {from}",
                next_item + 5_000_000
            ))
            .await;
        }
        if rng.gen_bool(0.4) {
            let victim = rng.gen_range(1..next_account);
            changes += exec(format!("DELETE FROM accounts WHERE id = {victim}")).await;
        }
        let a = rng.gen_range(0..50);
        changes += exec(format!(
            "INSERT INTO pairs VALUES ({a}, {t}, 'v{t}') ON CONFLICT (a, b) DO UPDATE SET v = pairs.v || 'x'"
        ))
        .await;
        if t % 7 == 3 {
            changes += exec(format!(
                "DELETE FROM pairs WHERE a = {a} AND b BETWEEN 0 AND {}",
                t / 2
            ))
            .await;
        }
        changes += exec(format!("INSERT INTO audit VALUES ({t}, 'txn {t}')")).await;
        tx.commit().await.unwrap();
        changes_total += changes;
        progress.fetch_add(changes, std::sync::atomic::Ordering::SeqCst);
        if t % 50 == 49 {
            let tx = client.transaction().await.unwrap();
            tx.execute("INSERT INTO audit VALUES (-1, 'rolled back')", &[])
                .await
                .unwrap();
            tx.rollback().await.unwrap();
        }
    }
    (txns, changes_total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_source_workload_with_sigkills_loses_and_repeats_nothing() {
    pg_source_crashes(LogKind::Embedded, 1500, 50_000).await;
}

/// The same through the Kafka log (a shorter workload): the slot is
/// confirmed only up to what a committed Kafka transaction holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_source_workload_with_sigkills_through_kafka_loses_and_repeats_nothing() {
    pg_source_crashes(LogKind::Kafka, 900, 25_000).await;
}

async fn pg_source_crashes(kind: LogKind, txns: u64, min_changes: u64) {
    let src = PgSourceDb::create("pgwl").await;
    src.exec(WORKLOAD_TABLES).await;
    let mut dbmux = Dbmux::with_pg_source_log(&src.name, BOTH, "", kind);
    dbmux.start();
    dbmux.wait_capturing().await;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = tokio::spawn({
        let url = src.url.clone();
        let progress = progress.clone();
        async move { pg_workload(&url, txns, 21, progress).await }
    });
    let (mut kills, mut kills_while_writing) = (0, 0);
    let lsn_checks = std::sync::atomic::AtomicU64::new(0);
    let mut mark = 0u64;
    loop {
        let writing = !writer.is_finished();
        if kills >= 5 || (!writing && kills >= 3) {
            break;
        }
        let me = &dbmux;
        let slot = src.name.clone();
        let src = &src;
        let checks = &lsn_checks;
        let checks_before = checks.load(std::sync::atomic::Ordering::SeqCst);
        let writer = &writer;
        // Let the pipeline progress; meanwhile the slot must never be
        // confirmed past what the log holds (slot read first, log second:
        // the log only grows in between). At least 4 checks per lifetime (the test wants 10 or more),
        // however fast the pipeline runs on this machine.
        let reached = wait_for("progress before the next kill", Duration::from_secs(120), || {
            let slot = slot.clone();
            async move {
                let confirmed = src.slot_confirmed(&slot).await;
                let st = me.status().await?;
                if let (Some(c), Some(p)) = (confirmed, st["log"]["resume_position"].as_str()) {
                    let held = parse_lsn(p);
                    assert!(
                        c <= held,
                        "slot confirmed {c:X} beyond the log's newest position {held:X}"
                    );
                    checks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let last = st["log"]["last_seq"].as_u64()?;
                let checked = checks.load(std::sync::atomic::Ordering::SeqCst) - checks_before;
                // (Once the writer is done there may be fewer than 3000
                // changes left: a lifetime then needs no more progress.)
                ((last >= mark + 3000 || writer.is_finished()) && checked >= 4).then_some(last)
            }
        })
        .await;
        mark = reached;
        dbmux.kill();
        kills += 1;
        if writing {
            kills_while_writing += 1;
        }
        dbmux.start();
    }
    let (txns, changes) = writer.await.unwrap();
    assert!(changes >= min_changes, "workload too small: {changes}");
    assert!(
        kills >= 3 && kills_while_writing >= 2,
        "{kills} kills, {kills_while_writing} while writing"
    );
    let last = dbmux.wait_caught_up(changes, Duration::from_secs(300)).await;
    assert_eq!(last, changes, "every row change is one event, once");
    let mut rows = 0;
    for (table, order, cols) in workload_projections() {
        rows += assert_table_identical(&src, table, order, &cols).await;
    }
    assert!(rows > 10_000);
    // The log: seq 1..=n without gaps, whole transactions, each exactly once.
    let envelopes = dbmux.tail(Some(1));
    assert_eq!(envelopes.len() as u64, changes);
    let mut seen = std::collections::HashSet::new();
    for (i, e) in envelopes.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1));
        if e["source"]["txn_index"].as_u64() == Some(0) {
            assert!(
                seen.insert(e["source"]["txn"].as_str().unwrap().to_string()),
                "a transaction twice"
            );
        }
    }
    assert_eq!(seen.len() as u64, txns, "transactions in the log");
    // Once caught up and stopped cleanly, the slot holds exactly the log's end.
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
    let confirmed = src.slot_confirmed(&src.name).await.unwrap();
    let end = envelopes.last().unwrap()["source"]["position"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        confirmed <= parse_lsn(&end),
        "confirmed {confirmed:X} beyond the log end {end}"
    );
    let lsn_checks = lsn_checks.load(std::sync::atomic::Ordering::SeqCst);
    assert!(lsn_checks >= 10, "only {lsn_checks} slot-vs-log checks");
    println!(
        "pg crash test ({kind:?} log): {kills} SIGKILLs ({kills_while_writing} while writing), {changes} row changes in {txns} \
         transactions, {lsn_checks} slot-vs-log checks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_postgres_source_toml_works_as_is() {
    use mysql_async::prelude::Queryable;
    let path = support::repo_root().join("examples/postgres-source.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    for needle in [
        "name = \"dbmux-shop\"",
        "15432/shop",
        "slot = \"dbmux_shop\"",
        "public = \"shop\"",
        "schema = \"shop\"",
    ] {
        assert!(text.contains(needle), "{needle} not in the example");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The database `shop` comes from scripts/services; the slot may be left
    // over from an earlier run of this test.
    let shop = with_db(&pg_url(), "shop");
    let admin = crate::support::pg_source::connect(&shop).await;
    let table = support::unique_name("ex");
    admin
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = 'dbmux_shop' AND NOT active; \
             DO $$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables \
               WHERE schemaname = 'public' AND tablename LIKE 'ex\\_%' LOOP \
               EXECUTE format('DROP TABLE public.%I', t); END LOOP; END $$; \
             CREATE TABLE public.\"{table}_old\" (id int PRIMARY KEY)"
        ))
        .await
        .unwrap();
    forget_example_offsets().await;
    // Run the file as is; only where dbmux keeps its state and its admin port
    // move (environment overrides), so the test leaves the checkout alone.
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = format!("127.0.0.1:{}", crate::support::dbmux::free_port());
    let log = std::fs::File::create(dir.path().join("dbmux.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .args(["run", "--config"])
        .arg(&path)
        .env("DBMUX__DATA_DIR", dir.path().join("data").display().to_string())
        .env("DBMUX__ADMIN__LISTEN", &admin_addr)
        .stderr(log.try_clone().unwrap())
        .stdout(log)
        .spawn()
        .unwrap();
    let output = || std::fs::read_to_string(dir.path().join("dbmux.log")).unwrap_or_default();
    // Killed, and its output shown, if anything below fails.
    struct Running(std::process::Child, std::path::PathBuf);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            if std::thread::panicking() {
                eprintln!(
                    "---- dbmux output ----\n{}",
                    std::fs::read_to_string(&self.1).unwrap_or_default()
                );
            }
        }
    }
    let mut running = Running(child, dir.path().join("dbmux.log"));
    // Streaming, not merely creating its slot (a slot is "active" while it
    // waits for its consistent point, and what commits before that point is
    // not captured): capture reports itself connected only once streaming.
    wait_for("the example to stream", Duration::from_secs(60), || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&admin_addr).await.ok()?;
        s.write_all(b"GET /status HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        let json: serde_json::Value = serde_json::from_str(body.split_once("\r\n\r\n")?.1).ok()?;
        (json["capture"]["connected"].as_bool() == Some(true)).then_some(())
    })
    .await;
    // A table created while dbmux runs, and a change to one created before.
    admin
        .batch_execute(&format!(
            "CREATE TABLE public.\"{table}\" (id int PRIMARY KEY, item text); \
             INSERT INTO public.\"{table}\" VALUES (1, 'tea'), (2, 'crème brûlée'); \
             INSERT INTO public.\"{table}_old\" VALUES (7)"
        ))
        .await
        .unwrap();
    let replica = with_db(&mysql_replica_url(), "shop");
    let t = table.clone();
    let got = wait_for("both replicas to hold the rows", Duration::from_secs(60), || {
        let (replica, t) = (replica.clone(), t.clone());
        async move {
            let mut my = mysql_async::Conn::from_url(replica).await.ok()?;
            let rows: Vec<(i32, String)> = my
                .query(format!("SELECT id, item FROM `{t}` ORDER BY id"))
                .await
                .ok()?;
            let old: Vec<i32> = my.query(format!("SELECT id FROM `{t}_old`")).await.ok()?;
            let pg = crate::support::pg_source::connect(&pg_url()).await;
            let pg_rows = pg
                .query(&format!("SELECT id, item FROM shop.\"{t}\" ORDER BY id"), &[])
                .await
                .ok()?;
            let pg_rows: Vec<(i32, String)> = pg_rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            (rows.len() == 2 && old == vec![7] && pg_rows == rows).then_some(rows)
        }
    })
    .await;
    assert_eq!(got, vec![(1, "tea".to_string()), (2, "crème brûlée".to_string())]);
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(running.0.id().to_string())
        .status();
    let status = running.0.wait().unwrap();
    assert!(status.success(), "clean shutdown:\n{}", output());
    forget_example_offsets().await;
    // Leave shop as it was: no slot, no test tables.
    admin
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot('dbmux_shop'); DROP TABLE public.\"{table}\", public.\"{table}_old\""
        ))
        .await
        .unwrap();
}

/// The example's replicas start from an empty log here: forget what an
/// earlier run applied (its `dbmux_offsets` rows), or dbmux rightly refuses.
async fn forget_example_offsets() {
    use mysql_async::prelude::Queryable;
    let mut my = mysql_async::Conn::from_url(mysql_replica_url()).await.unwrap();
    let _ = my
        .query_drop("DELETE FROM dbmux.dbmux_offsets WHERE consumer LIKE 'dbmux-shop/%'")
        .await;
    my.disconnect().await.unwrap();
    let pg = crate::support::pg_source::connect(&pg_url()).await;
    let _ = pg
        .batch_execute("DELETE FROM dbmux.dbmux_offsets WHERE consumer LIKE 'dbmux-shop/%'")
        .await;
}

// ---------------------------------------------------------------------------
// The initial snapshot of a PostgreSQL source (the slot's exported snapshot).
// ---------------------------------------------------------------------------

/// Tables that exist, with rows, before dbmux first starts: the type matrix,
/// `big` (spans many chunks), `nokey` (no primary key: copied whole; 40
/// identical rows that must arrive exactly 40 times) and `fence` (written
/// last, to know when everything before it was applied).
async fn preload_snapshot_tables(src: &PgSourceDb, big_rows: u64) {
    src.exec(MATRIX).await;
    src.exec(MATRIX_ROWS).await;
    src.exec(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL, n numeric(12,2), at timestamptz(6));
         INSERT INTO big SELECT i, 'row ' || i || repeat('é', i % 7), i * 1.25,
           '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 second' FROM generate_series(1, {big_rows}) i;
         CREATE TABLE nokey (a int NOT NULL, b text NOT NULL);
         ALTER TABLE nokey REPLICA IDENTITY FULL;
         INSERT INTO nokey SELECT i, 'row ' || i FROM generate_series(1, 3000) i;
         INSERT INTO nokey SELECT -1, 'dup' FROM generate_series(1, 40);
         CREATE TABLE fence (id int PRIMARY KEY);
         ANALYZE"
    ))
    .await;
}

/// Changes the snapshot tables until `stop`: updates, deletes and inserts
/// on `big`, `nokey` (never its duplicates) and `matrix`. Returns the
/// number of transactions.
async fn snapshot_writer(
    url: String,
    big_rows: i64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> u64 {
    use rand::{Rng, SeedableRng};
    let mut client = crate::support::pg_source::connect(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut t = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let tx = client.transaction().await.unwrap();
        let (u, d) = (rng.gen_range(1..=big_rows), rng.gen_range(1..=big_rows));
        let (nu, nd) = (rng.gen_range(1..=3000), rng.gen_range(1..=3000));
        let sql = format!(
            "UPDATE big SET v = v || 'u', n = n + 1, at = clock_timestamp() WHERE id = {u};
             DELETE FROM big WHERE id = {d};
             INSERT INTO big VALUES ({}, 'new {t}', NULL, NULL);
             UPDATE nokey SET b = b || '+' WHERE a = {nu};
             DELETE FROM nokey WHERE a = {nd};
             INSERT INTO nokey VALUES ({}, 'ins {t}');
             UPDATE matrix SET i4 = i4 + 1, vc = 'w{t}' WHERE id = 1",
            big_rows + 1 + t as i64,
            100_000 + t
        );
        tx.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        tx.commit().await.unwrap();
        t += 1;
        done.store(t, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    t
}

/// [`snapshot_writer`] running in the background, with its progress.
struct SnapshotWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl SnapshotWriter {
    fn start(src: &PgSourceDb, big_rows: u64) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(snapshot_writer(
            src.url.clone(),
            big_rows as i64,
            stop.clone(),
            done.clone(),
        ));
        SnapshotWriter { stop, done, task }
    }

    /// Transactions committed so far.
    fn done(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` more transactions than now have committed.
    async fn more(&self, what: &str, n: u64, timeout: Duration) {
        let from = self.done();
        wait_for(what, timeout, || async {
            (self.done() >= from + n).then_some(())
        })
        .await;
    }

    /// Stops the writer; its transaction count.
    async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// Waits until the replicas hold everything the source committed, then
/// compares the snapshot tables value by value; the rows compared (more
/// than `big` of them).
async fn caught_up_and_identical(src: &PgSourceDb, dbmux: &mut Dbmux, big: u64) -> usize {
    fence_and_catch_up(src, dbmux).await;
    let rows = assert_snapshot_tables_identical(src).await;
    assert!(rows > big as usize, "{rows} rows");
    rows
}

/// A snapshot mark or a copied row in `dbmux tail`'s output.
fn is_snapshot_event(e: &serde_json::Value) -> bool {
    matches!(e["op"].as_str(), Some("snapshot" | "r"))
}

/// The index of the first streamed change in `dbmux tail`'s output.
fn first_streamed_change(envelopes: &[serde_json::Value]) -> usize {
    envelopes
        .iter()
        .position(|e| !is_snapshot_event(e))
        .expect("streamed changes")
}

fn big_cols() -> Vec<Col> {
    use Kind::*;
    vec![
        Col("id::text", "CAST(id AS CHAR)", Plain),
        Col("v", "v", Plain),
        Col("n::text", "CAST(n AS CHAR)", Plain),
        Col(
            "to_char(at, 'YYYY-MM-DD HH24:MI:SS.US')",
            "DATE_FORMAT(at, '%Y-%m-%d %H:%i:%s.%f')",
            Plain,
        ),
    ]
}

fn nokey_cols() -> Vec<Col> {
    vec![
        Col("a::text", "CAST(a AS CHAR)", Kind::Plain),
        Col("b", "b", Kind::Plain),
    ]
}

/// Writes the fence row and waits until both replicas have it and applied
/// the whole log (pgoutput streams in commit order: everything committed
/// before it is then applied).
async fn fence_and_catch_up(src: &PgSourceDb, dbmux: &mut Dbmux) -> u64 {
    use mysql_async::prelude::Queryable;
    src.exec("INSERT INTO fence VALUES (1)").await;
    let (name, replica) = (src.name.clone(), with_db(&mysql_replica_url(), &src.name));
    wait_for("the fence on both replicas", Duration::from_secs(300), || {
        let (name, replica) = (name.clone(), replica.clone());
        async move {
            let mut my = mysql_async::Conn::from_url(replica).await.ok()?;
            let got: Vec<i32> = my.query("SELECT id FROM fence").await.ok()?;
            let pg = crate::support::pg_source::connect(&pg_url()).await;
            let rows = pg
                .query(&format!("SELECT id FROM \"{name}\".fence"), &[])
                .await
                .ok()?;
            (got == vec![1] && rows.len() == 1).then_some(())
        }
    })
    .await;
    dbmux.wait_caught_up(1, Duration::from_secs(120)).await
}

/// Asserts every snapshot table is identical on both replicas; returns rows.
async fn assert_snapshot_tables_identical(src: &PgSourceDb) -> usize {
    let mut rows = assert_table_identical(src, "matrix", "id", &matrix_cols()).await;
    rows += assert_table_identical(src, "big", "id", &big_cols()).await;
    rows += assert_table_identical(src, "nokey", "a, b", &nokey_cols()).await;
    rows
}

fn pg_snapshot_config(chunk_rows: u64) -> String {
    format!("\n[snapshot]\ninitial = true\nchunk_rows = {chunk_rows}\nparallel_tables = 2\n")
}

/// The Prove item: rows that exist before the first start (every type of the
/// matrix, a table of many chunks, a table without a key) reach both
/// replicas value by value while a writer changes the same tables before,
/// during and after the copy; nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_source_snapshot_copies_existing_rows_under_writes_to_both_replicas() {
    const BIG: u64 = 24_000;
    let src = PgSourceDb::create("pgsnap").await;
    preload_snapshot_tables(&src, BIG).await;
    let mut dbmux = Dbmux::with_pg_source(&src.name, BOTH, &pg_snapshot_config(2000));
    let writer = SnapshotWriter::start(&src, BIG);
    // The writer runs before the slot exists, while it is created and while
    // the tables are copied.
    writer
        .more("the writer to begin", 20, Duration::from_secs(30))
        .await;
    let before = writer.done();
    dbmux.start();
    let me = &dbmux;
    let st = wait_for(
        "the initial snapshot to finish",
        Duration::from_secs(300),
        || async move {
            let st = me.status().await?;
            let tables = st["snapshot"]["tables"].as_array()?;
            (tables.len() == 4 && st["snapshot"]["active"] == false && st["capture"]["connected"] == true)
                .then_some(st)
        },
    )
    .await;
    let tables = st["snapshot"]["tables"].as_array().unwrap();
    assert!(tables.iter().all(|t| t["state"] == "done"), "{st}");
    let big = tables.iter().find(|t| t["table"] == "public.big").unwrap();
    assert!(big["chunks"].as_u64().unwrap() >= 10, "several chunks: {big}");
    let during = writer.done();
    // Some more streamed changes after the copy.
    writer.more("more writes", 50, Duration::from_secs(60)).await;
    let txns = writer.stop().await;
    let rows = caught_up_and_identical(&src, &mut dbmux, BIG).await;
    // The log: the snapshot (marks and `r` rows) comes before every streamed change.
    let envelopes = dbmux.tail(Some(1));
    let first_change = first_streamed_change(&envelopes);
    assert!(
        envelopes[first_change..].iter().all(|e| !is_snapshot_event(e)),
        "snapshot events after a streamed change"
    );
    let copied = envelopes[..first_change]
        .iter()
        .filter(|e| e["op"] == "r")
        .count();
    assert!(copied >= BIG as usize, "{copied} rows copied");
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
    println!(
        "pg snapshot: {copied} rows copied, writer {txns} transactions ({before} before start, {during} by the end of the copy), {rows} rows compared"
    );
}

/// `[snapshot] initial = false`: rows that existed before the first start are
/// not copied; what changes afterwards is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_source_snapshot_initial_false_copies_nothing() {
    use mysql_async::prelude::Queryable;
    let src = PgSourceDb::create("pgnosnap").await;
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'old' FROM generate_series(1, 500) i",
    )
    .await;
    let mut dbmux = Dbmux::with_pg_source(&src.name, BOTH, "\n[snapshot]\ninitial = false\n");
    dbmux.start();
    dbmux.wait_capturing().await;
    src.exec("INSERT INTO t VALUES (1000, 'new')").await;
    assert_eq!(dbmux.wait_caught_up(1, Duration::from_secs(60)).await, 1);
    let mut my = mysql_async::Conn::from_url(with_db(&mysql_replica_url(), &src.name))
        .await
        .unwrap();
    let ids: Vec<i32> = my.query("SELECT id FROM t").await.unwrap();
    assert_eq!(ids, vec![1000], "only the change after the start");
    let st = dbmux.status().await.unwrap();
    assert!(
        st["snapshot"]["tables"].as_array().is_none_or(|t| t.is_empty()),
        "{st}"
    );
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
}

/// SIGKILL in the middle of the copy (twice), with the writer running: the
/// next start finds the copy cut short, creates the slot anew and copies
/// everything again; the replicas end equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_source_snapshot_killed_midway_starts_over_and_loses_nothing() {
    const BIG: u64 = 60_000;
    let src = PgSourceDb::create("pgsnapkill").await;
    preload_snapshot_tables(&src, BIG).await;
    let mut dbmux = Dbmux::with_pg_source(&src.name, BOTH, &pg_snapshot_config(500));
    let writer = SnapshotWriter::start(&src, BIG);
    let mut consistent_points = Vec::new();
    for kill in 0..2 {
        dbmux.start();
        let me = &dbmux;
        let at = wait_for(
            "the copy to be under way",
            Duration::from_secs(300),
            || async move {
                let st = me.status().await?;
                let rows: u64 = st["snapshot"]["tables"]
                    .as_array()?
                    .iter()
                    .filter_map(|t| t["rows"].as_u64())
                    .sum();
                (rows >= 8000 && st["snapshot"]["active"] == true).then_some(rows)
            },
        )
        .await;
        let st = dbmux.status().await.unwrap();
        assert_eq!(
            st["capture"]["connected"], false,
            "nothing streams during the copy: {st}"
        );
        consistent_points.push(src.slot_confirmed(&src.name).await.expect("slot"));
        dbmux.kill();
        println!("kill {} after {at} rows copied", kill + 1);
    }
    dbmux.start();
    let me = &dbmux;
    wait_for(
        "the initial snapshot to finish",
        Duration::from_secs(600),
        || async move {
            let st = me.status().await?;
            (st["snapshot"]["active"] == false && st["capture"]["connected"] == true).then_some(())
        },
    )
    .await;
    consistent_points.push(src.slot_confirmed(&src.name).await.expect("slot"));
    assert!(
        consistent_points.windows(2).all(|w| w[0] < w[1]),
        "each start after a cut-short copy creates the slot anew: {consistent_points:X?}"
    );
    let out = dbmux.output();
    assert_eq!(
        out.matches("the initial snapshot was cut short").count(),
        2,
        "both restarts say so:\n{out}"
    );
    writer.stop().await;
    caught_up_and_identical(&src, &mut dbmux, BIG).await;
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
}

/// Damages `big` on both replicas directly: rows deleted, rows changed, a
/// row the source never had. (The appliers write the same rows meanwhile:
/// a statement that loses a deadlock against them is run again.)
async fn damage_replicas(src: &PgSourceDb) {
    use mysql_async::prelude::Queryable;
    let mut my = mysql_async::Conn::from_url(with_db(&mysql_replica_url(), &src.name))
        .await
        .unwrap();
    let pg = crate::support::pg_source::connect(&pg_url()).await;
    let name = &src.name;
    let statements = [
        ("DELETE FROM big WHERE id % 3 = 0", true),
        ("UPDATE big SET v = 'damaged' WHERE id % 7 = 1", true),
        ("INSERT INTO big VALUES (-5, 'phantom', NULL, NULL)", false),
        ("DELETE FROM nokey WHERE a % 5 = 0", true),
    ];
    for (sql, many) in statements {
        let mut attempts = 0;
        let affected = loop {
            match my.query_drop(sql).await {
                Ok(()) => break my.affected_rows(),
                Err(e) if attempts < 20 => {
                    attempts += 1;
                    println!("MariaDB replica damage retried: {e}");
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        };
        assert!(
            !many || affected > 100,
            "MariaDB replica damaged by {sql}: {affected}"
        );
        let sql = sql
            .replace("big", &format!("\"{name}\".big"))
            .replace("nokey", &format!("\"{name}\".nokey"));
        let mut attempts = 0;
        let affected = loop {
            match pg.execute(sql.as_str(), &[]).await {
                Ok(n) => break n,
                Err(e) if attempts < 20 => {
                    attempts += 1;
                    println!("PostgreSQL replica damage retried: {e}");
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        };
        assert!(
            !many || affected > 100,
            "PostgreSQL replica damaged by {sql}: {affected}"
        );
    }
}

/// `dbmux snapshot --replica <replica> --table <table>`.
fn request_snapshot(dbmux: &Dbmux, replica: &str, table: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .args(["snapshot", "--config"])
        .arg(&dbmux.config)
        .args(["--replica", replica, "--table", table])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dbmux snapshot --replica {replica}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The re-snapshot Prove items: on a running PostgreSQL-source pipeline,
/// with a writer changing `big` all along, both replicas' `big` is damaged
/// directly and a snapshot of it is requested for each; (`kill`: dbmux is
/// SIGKILLed while the chunks are being copied, and restarted). Both
/// replicas end equal to the source, value by value.
async fn pg_resnapshot(prefix: &str, kill: bool) {
    const BIG: u64 = 12_000;
    let src = PgSourceDb::create(prefix).await;
    preload_snapshot_tables(&src, BIG).await;
    let mut dbmux = Dbmux::with_pg_source(&src.name, BOTH, &pg_snapshot_config(200));
    dbmux.start();
    let me = &dbmux;
    wait_for(
        "the initial snapshot to finish",
        Duration::from_secs(300),
        || async move {
            let st = me.status().await?;
            let tables = st["snapshot"]["tables"].as_array()?;
            (tables.len() == 4 && st["snapshot"]["active"] == false && st["capture"]["connected"] == true)
                .then_some(())
        },
    )
    .await;
    // The copy being done at the source says nothing of the replicas: the
    // damage needs both to hold every table first.
    dbmux.wait_caught_up(1, Duration::from_secs(300)).await;
    let writer = SnapshotWriter::start(&src, BIG);
    writer
        .more("the writer to begin", 20, Duration::from_secs(30))
        .await;
    // (A streamed change may repair some damaged rows; most stay damaged.)
    damage_replicas(&src).await;
    // `big` is copied by key ranges, `nokey` (no key) whole, in one view
    // placed at one position.
    for replica in ["mariadb", "postgres"] {
        request_snapshot(&dbmux, replica, "public.big");
        request_snapshot(&dbmux, replica, "public.nokey");
    }
    // A targeted run's table on the board: copying, or done.
    let targeted = |st: &serde_json::Value, table: &str, state: &str, min_rows: u64| {
        st["snapshot"]["tables"].as_array().is_some_and(|t| {
            t.iter().any(|t| {
                t["table"] == table
                    && t["targets"].as_array().is_some_and(|a| !a.is_empty())
                    && t["state"] == state
                    && t["rows"].as_u64().unwrap_or(0) >= min_rows
            })
        })
    };
    if kill {
        let me = &dbmux;
        wait_for(
            "the re-snapshot to be under way",
            Duration::from_secs(300),
            || async move {
                let st = me.status().await?;
                targeted(&st, "public.big", "copying", 2000).then_some(())
            },
        )
        .await;
        dbmux.kill();
        dbmux.start();
    }
    let me = &dbmux;
    let st = wait_for(
        "the re-snapshots to finish",
        Duration::from_secs(600),
        || async move {
            let st = me.status().await?;
            (st["snapshot"]["active"] == false
                && st["capture"]["connected"] == true
                && if kill {
                    // (A table whose run finished before the kill is not
                    // on the new process's board.)
                    targeted(&st, "public.big", "done", 0) || targeted(&st, "public.nokey", "done", 0)
                } else {
                    targeted(&st, "public.big", "done", BIG / 2)
                        && targeted(&st, "public.nokey", "done", 1000)
                })
            .then_some(st)
        },
    )
    .await;
    let tables = st["snapshot"]["tables"].as_array().unwrap();
    assert!(tables.iter().all(|t| t["state"] == "done"), "{st}");
    writer.more("more writes", 30, Duration::from_secs(60)).await;
    let txns = writer.stop().await;
    let rows = caught_up_and_identical(&src, &mut dbmux, BIG).await;
    // The re-snapshots' chunks sit between streamed changes.
    let envelopes = dbmux.tail(Some(1));
    let first_change = first_streamed_change(&envelopes);
    let later = envelopes[first_change..]
        .iter()
        .filter(|e| e["op"] == "r")
        .count();
    assert!(
        later >= BIG as usize / 2,
        "{later} rows copied by the re-snapshots"
    );
    let out = dbmux.output();
    assert!(!out.contains("snapshot request refused"), "{out}");
    assert!(dbmux.stop().success(), "clean shutdown:\n{}", dbmux.output());
    println!("pg re-snapshot (kill: {kill}): writer {txns} transactions, {later} rows re-copied, {rows} rows compared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_source_resnapshot_repairs_damaged_replicas_under_writes() {
    pg_resnapshot("pgresnap", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_source_resnapshot_killed_midway_ends_equal_to_the_source() {
    pg_resnapshot("pgresnapkill", true).await;
}

/// The connector side of a per-chunk read view, on an idle server and
/// under load: a temporary slot's view at C shows exactly the transactions
/// capture reports at or before C; capture's read position reaches C (the
/// walsender's keepalive, asked for by `want_read_past`) only once every
/// transaction at or before C was handed out, and without any later commit
/// to push it there; a transaction committed after the view is after C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_chunk_view_position_and_read_position_agree_with_the_stream() {
    use connectors::postgres::snapshot::PostgresSnapshots;
    use pipeline::schema::TableId;
    use pipeline::snapshot::{ChunkReader, SnapshotSource};
    let db = PgSourceDb::create("pgchunkview").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
        .await;
    let cfg = config(&db);
    let mut src = PostgresSource::new(cfg.clone()).unwrap();
    src.preflight().await.unwrap();
    let start = src.current_position().await.unwrap();
    let snapshots = PostgresSnapshots::new(&cfg, src.snapshot_export()).unwrap();
    src.start(Some(start)).await.unwrap();
    snapshots.initial_copy_done();
    let c = db.client().await;
    let table = TableId::new("public", "t");
    let mut reader = snapshots.reader().await.unwrap();
    let mut handed: Vec<(u64, Vec<i64>)> = Vec::new();
    for round in 0..3i64 {
        // Round 0: an idle server. Later rounds: a writer commits all along.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = (round > 0).then(|| {
            let (url, stop) = (db.url.clone(), stop.clone());
            tokio::spawn(async move {
                let w = crate::support::pg_source::connect(&url).await;
                let mut i = 0i64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let id = round * 100_000 + i;
                    w.batch_execute(&format!("INSERT INTO t VALUES ({id}, 'w')"))
                        .await
                        .unwrap();
                    i += 1;
                }
            })
        });
        for i in 0..5 {
            c.batch_execute(&format!("INSERT INTO t VALUES ({}, 'r')", round * 1000 + i))
                .await
                .unwrap();
        }
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let view = reader.begin(&table).await.unwrap();
        let at = lsn(&view.position);
        let rows = reader.read(None, 1_000_000).await.unwrap();
        reader.end().await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = writer {
            w.await.unwrap();
        }
        // Capture reads on until its read position reaches C.
        src.want_read_past(&view.position);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut reached_with: Option<usize> = None;
        while std::time::Instant::now() < deadline {
            if src.read_position().is_some_and(|p| lsn(&p) >= at) {
                reached_with = Some(handed.len());
                break;
            }
            if let Ok(t) = tokio::time::timeout(Duration::from_millis(50), src.next_transaction()).await {
                let t = t.unwrap();
                let ids = t
                    .changes
                    .iter()
                    .filter_map(|(_, op)| match op {
                        Op::Insert { after } => Some(ints(after)[0]),
                        _ => None,
                    })
                    .collect();
                handed.push((lsn(&t.position), ids));
            }
        }
        let upto =
            reached_with.unwrap_or_else(|| panic!("round {round}: the read position never reached {at:X}"));
        // The view holds exactly the rows of the transactions at or before C
        // (every earlier round's too), and all of those were handed out
        // before the read position said C.
        let mut in_view: Vec<i64> = rows.iter().map(|r| ints(r)[0]).collect();
        in_view.sort();
        let mut by_stream: Vec<i64> = handed[..upto]
            .iter()
            .filter(|(l, _)| *l <= at)
            .flat_map(|(_, ids)| ids.clone())
            .collect();
        by_stream.sort();
        assert_eq!(
            in_view, by_stream,
            "round {round}: the view at {at:X} = the stream's transactions <= it"
        );
        for i in 0..5 {
            assert!(
                in_view.contains(&(round * 1000 + i)),
                "round {round}: committed before the view"
            );
        }
    }
    // Drain: everything left was committed after the last view, so it is
    // after its position... and a new commit is reported after C.
    c.batch_execute("INSERT INTO t VALUES (-1, 'after')")
        .await
        .unwrap();
    loop {
        let t = next(&mut src).await;
        if t.changes
            .iter()
            .any(|(_, op)| matches!(op, Op::Insert { after } if ints(after)[0] == -1))
        {
            let last_view = handed.iter().map(|(l, _)| *l).max().unwrap_or(0);
            assert!(lsn(&t.position) > last_view);
            break;
        }
    }
    src.stop().await;
}

/// The PostgreSQL side of capture's cancel-safety (see the MySQL test
/// `capture_dropped_at_any_point_hands_out_what_an_undisturbed_one_does`): a
/// `Relation` message makes capture read the catalog; a capture whose calls
/// are dropped after a few polls hands out exactly what an undisturbed one
/// reading a second slot does, and does not stall.
/// (Before the catalog read ran on a task of its own it was started again
/// on every call; tokio-postgres survives a dropped query, so this was a
/// stall on a loaded server, not garbage.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_capture_dropped_at_any_point_hands_out_what_an_undisturbed_one_does() {
    let db = PgSourceDb::create("pgcancel").await;
    db.exec("CREATE TABLE seed (id int PRIMARY KEY)").await;
    let mut sources = Vec::new();
    for slot in [db.name.clone(), format!("{}_ref", db.name)] {
        let mut src = PostgresSource::new(PostgresSourceConfig { slot, ..config(&db) }).unwrap();
        src.preflight().await.unwrap();
        let start = src.current_position().await.unwrap();
        src.start(Some(start)).await.unwrap();
        sources.push(src);
    }
    let (mut cut, mut reference) = (sources.remove(0), sources.remove(0));

    let tables = 6;
    let c = db.client().await;
    for i in 0..tables {
        // One statement per call: a multi-statement string is one transaction.
        for sql in [
            format!("CREATE TABLE t{i} (id int PRIMARY KEY, v varchar(20), n numeric(10,2), at timestamptz)"),
            format!("INSERT INTO t{i} VALUES (1, 'a', 1.5, now()), (2, 'b', 2.5, now())"),
            format!("ALTER TABLE t{i} ADD COLUMN w int DEFAULT 7, ALTER COLUMN v TYPE varchar(40)"),
            format!("UPDATE t{i} SET v = 'c' WHERE id = 1"),
        ] {
            c.batch_execute(&sql).await.unwrap();
        }
    }
    c.batch_execute("INSERT INTO seed VALUES (1)").await.unwrap();
    // DDL is not in the WAL stream: an insert and an update per table.
    let expected = tables * 2 + 1;

    // Commit times and ids are the server's: the same on both slots.
    let shape = |t: &CapturedTransaction| format!("{} {} {:?}", t.id, t.position, t.changes);
    let mut want = Vec::new();
    while want.len() < expected {
        want.push(shape(&next(&mut reference).await));
    }
    let mut got = Vec::new();
    let mut cancelled = 0u32;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut k = 0u64;
    while got.len() < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "the cut capture made no progress for 120 s ({} of {expected} transactions, {cancelled} calls cut)",
            got.len()
        );
        k += 1;
        // WAL already received is handed out in well under a millisecond:
        // the call is dropped after 1 to 7 polls instead of after a time, so
        // it is cut at every await point in turn (the catalog read included).
        let mut call = Box::pin(cut.next_transaction());
        let mut outcome = None;
        for _ in 0..1 + k % 7 {
            if let std::task::Poll::Ready(r) = futures_util::poll!(&mut call) {
                outcome = Some(r);
                break;
            }
            tokio::task::yield_now().await;
        }
        drop(call);
        match outcome {
            Some(Ok(t)) => got.push(shape(&t)),
            Some(Err(e)) => panic!(
                "a capture called again after a dropped call failed: {e} ({} of {expected} transactions)",
                got.len()
            ),
            None => cancelled += 1,
        }
    }
    assert!(cancelled > 0, "no call was cut short: the test proves nothing");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "transaction {i} differs");
    }
    println!("{expected} transactions equal; {cancelled} calls were cut short");
    idle(&mut cut, Duration::from_millis(500)).await;
    cut.stop().await;
    reference.stop().await;
}
