//! A mixed OLTP workload on the master: multi-statement transactions over
//! several tables with inserts, updates (incl. primary-key updates) and deletes,
//! plus an append-only table without a primary key whose rows prove
//! exactly-once apply (a replayed insert would duplicate a row there).

use super::compare::Projection;
use super::{mysql_url, with_db};
use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const TABLES: &[&str] = &[
    "CREATE TABLE accounts (id BIGINT PRIMARY KEY, owner VARCHAR(64) CHARACTER SET utf8mb4 NOT NULL,
        balance DECIMAL(14,2) NOT NULL, updated DATETIME(6) NULL, note BLOB NULL)",
    "CREATE TABLE items (id INT PRIMARY KEY, k INT NOT NULL, s VARCHAR(40) NULL)",
    "CREATE TABLE pairs (a INT NOT NULL, b INT NOT NULL, v VARCHAR(20) NOT NULL, PRIMARY KEY (a, b))",
    "CREATE TABLE audit (txn BIGINT NOT NULL, info VARCHAR(32) NOT NULL)",
];

pub fn projections() -> Vec<Projection<'static>> {
    vec![
        Projection {
            table: "accounts",
            mysql: "CAST(id AS CHAR), owner, CAST(balance AS CHAR), DATE_FORMAT(updated, '%Y-%m-%d %H:%i:%s.%f'), HEX(note)",
            pg: "id::text, owner, balance::text, to_char(updated, 'YYYY-MM-DD HH24:MI:SS.US'), upper(encode(note, 'hex'))",
            order: "id",
            float_cols: &[],
            json_cols: &[],
        },
        Projection { table: "items", mysql: "CAST(id AS CHAR), CAST(k AS CHAR), s", pg: "id::text, k::text, s", order: "id", float_cols: &[], json_cols: &[] },
        Projection { table: "pairs", mysql: "CAST(a AS CHAR), CAST(b AS CHAR), v", pg: "a::text, b::text, v", order: "a, b", float_cols: &[], json_cols: &[] },
        Projection { table: "audit", mysql: "CAST(txn AS CHAR), info", pg: "txn::text, info", order: "txn, info", float_cols: &[], json_cols: &[] },
    ]
}

pub async fn create_database(db: &str) {
    let mut conn = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
    conn.query_drop(format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
        .await
        .unwrap();
    conn.query_drop(format!("USE `{db}`")).await.unwrap();
    for t in TABLES {
        conn.query_drop(*t).await.unwrap();
    }
    conn.disconnect().await.unwrap();
}

/// What the workload did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub transactions: u64,
    pub row_changes: u64,
}

/// Runs `txns` transactions (plus some rolled back, which must never appear).
/// `progress` counts committed row changes as they happen.
pub async fn run(db: &str, txns: u64, seed: u64, progress: Arc<AtomicU64>) -> Stats {
    let mut conn = mysql_async::Conn::from_url(with_db(&mysql_url(), db))
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = Stats::default();
    // Runs with different seeds use disjoint keys, so several runs can share a database.
    let base = (seed % 200) as i64 * 10_000_000;
    let mut next_account = base + 1;
    let mut next_item = base + 1;
    for t in base as u64..base as u64 + txns {
        let mut tx = conn.start_transaction(Default::default()).await.unwrap();
        let mut changes = 0u64;
        // Multi-row insert of accounts.
        let n = rng.gen_range(5..25);
        let mut values = Vec::new();
        for _ in 0..n {
            let note = if rng.gen_bool(0.3) {
                "NULL".to_string()
            } else {
                let bytes: Vec<u8> = (0..rng.gen_range(0..16)).map(|_| rng.gen()).collect();
                format!("X'{}'", hex_upper(&bytes))
            };
            values.push(format!(
                "({next_account}, 'owner-{next_account}-é😀', {}.{:02}, '2024-01-02 03:04:05.{:06}', {note})",
                rng.gen_range(-100_000..100_000),
                rng.gen_range(0..100),
                rng.gen_range(0..1_000_000)
            ));
            next_account += 1;
        }
        changes += exec(
            &mut tx,
            format!("INSERT INTO accounts VALUES {}", values.join(",")),
        )
        .await;
        // Items: inserts, then a PK update and a delete.
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
        changes += exec(&mut tx, format!("INSERT INTO items VALUES {}", rows.join(","))).await;
        next_item += m;
        // Multi-row update of recent accounts (values always change).
        let lo = (next_account - 60).max(base + 1);
        changes += exec(
            &mut tx,
            format!(
                "UPDATE accounts SET balance = balance + 1.25, updated = NOW(6) WHERE id BETWEEN {lo} AND {}",
                lo + rng.gen_range(0..20)
            ),
        )
        .await;
        if next_item > base + 20 && rng.gen_bool(0.5) {
            // Primary-key update: move one item to a fresh id.
            let from = rng.gen_range(base + 1..next_item);
            let to = next_item + 5_000_000;
            changes += exec(
                &mut tx,
                format!("UPDATE items SET id = {to}, k = k + 1 WHERE id = {from}"),
            )
            .await;
        }
        if rng.gen_bool(0.4) {
            let victim = rng.gen_range(base + 1..next_account);
            changes += exec(&mut tx, format!("DELETE FROM accounts WHERE id = {victim}")).await;
        }
        // Composite-key table: upsert-like churn.
        let a = rng.gen_range(0..50);
        changes += exec(
            &mut tx,
            format!("INSERT INTO pairs VALUES ({a}, {t}, 'v{t}') ON DUPLICATE KEY UPDATE v = CONCAT(v, 'x')"),
        )
        .await;
        if t % 7 == 3 {
            changes += exec(
                &mut tx,
                format!(
                    "DELETE FROM pairs WHERE a = {a} AND b BETWEEN {base} AND {}",
                    base as u64 + (t - base as u64) / 2
                ),
            )
            .await;
        }
        changes += exec(&mut tx, format!("INSERT INTO audit VALUES ({t}, 'txn {t}')")).await;
        tx.commit().await.unwrap();
        stats.transactions += 1;
        stats.row_changes += changes;
        progress.fetch_add(changes, Ordering::SeqCst);
        // Every 50th: a transaction that is rolled back.
        if t % 50 == 49 {
            let mut tx = conn.start_transaction(Default::default()).await.unwrap();
            tx.query_drop("INSERT INTO audit VALUES (-1, 'rolled back')")
                .await
                .unwrap();
            tx.rollback().await.unwrap();
        }
    }
    conn.disconnect().await.unwrap();
    stats
}

async fn exec(tx: &mut mysql_async::Transaction<'_>, sql: String) -> u64 {
    tx.query_drop(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    tx.affected_rows()
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}
