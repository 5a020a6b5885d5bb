//! PostgreSQL as a source: logical replication from a fresh database of the
//! test server (a second database beside the replicas' `app`) through a
//! `pgoutput` slot, both at the connector level and end to end through the
//! real `dbmux` binary into the MariaDB and PostgreSQL replicas.

use crate::support::dbmux::{Dbmux, BOTH};
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
