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
