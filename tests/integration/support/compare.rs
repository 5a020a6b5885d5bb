//! Comparing the master with the replicas, value by value, as canonical text.

use super::{mysql_replica_url, mysql_url, pg_url, with_db};
use mysql_async::prelude::Queryable;

pub type Rows = Vec<Vec<Option<String>>>;

pub async fn mysql_rows(url: &str, sql: &str) -> Rows {
    let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
    let rows: Vec<mysql_async::Row> = conn.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let out = rows
        .into_iter()
        .map(|r| {
            (0..r.len())
                .map(|i| match r.as_ref(i).unwrap() {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => {
                        Some(String::from_utf8(b.clone()).expect("canonical text is UTF-8"))
                    }
                    other => Some(other.as_sql(true)),
                })
                .collect()
        })
        .collect();
    conn.disconnect().await.unwrap();
    out
}

pub async fn pg_rows(sql: &str) -> Rows {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// A table to compare: the same canonical projection on each engine.
pub struct Projection<'a> {
    pub table: &'a str,
    /// MariaDB select list producing canonical text.
    pub mysql: &'a str,
    /// PostgreSQL select list producing the same text.
    pub pg: &'a str,
    /// ORDER BY list (column names valid on both).
    pub order: &'a str,
    /// Output columns holding floating-point text: compared as the f64 they
    /// denote (the engines spell exponents differently: `e308` / `e+308`).
    pub float_cols: &'a [usize],
    /// Output columns holding JSON: compared as parsed documents (`jsonb`
    /// normalizes whitespace and key order).
    pub json_cols: &'a [usize],
}

fn normalize(rows: Rows, p: &Projection<'_>, json: bool) -> Rows {
    rows.into_iter()
        .map(|row| {
            row.into_iter()
                .enumerate()
                .map(|(i, cell)| {
                    let cell = cell?;
                    if p.float_cols.contains(&i) {
                        let v: f64 = cell
                            .parse()
                            .unwrap_or_else(|_| panic!("column {i}: {cell:?} is not a float"));
                        Some(format!("{v:e}"))
                    } else if json && p.json_cols.contains(&i) {
                        let v: serde_json::Value = serde_json::from_str(&cell)
                            .unwrap_or_else(|_| panic!("column {i}: {cell:?} is not JSON"));
                        Some(v.to_string())
                    } else {
                        Some(cell)
                    }
                })
                .collect()
        })
        .collect()
}

/// Asserts master, MariaDB replica and (when `pg`) PostgreSQL replica hold the
/// same rows. Returns the row count.
pub async fn assert_identical(db: &str, p: &Projection<'_>, mariadb: bool, pg: bool) -> usize {
    let sql = format!("SELECT {} FROM `{}` ORDER BY {}", p.mysql, p.table, p.order);
    let master_rows = mysql_rows(&with_db(&mysql_url(), db), &sql).await;
    // MariaDB replicas must hold JSON text byte for byte; PostgreSQL's jsonb
    // normalizes it, so only that comparison parses JSON.
    let master = normalize(master_rows.clone(), p, false);
    if mariadb {
        let replica = normalize(
            mysql_rows(&with_db(&mysql_replica_url(), db), &sql).await,
            p,
            false,
        );
        assert_rows_eq(
            &master,
            &replica,
            &format!("{db}.{} on the MariaDB replica", p.table),
        );
    }
    if pg {
        // Qualified ORDER BY: a bare name would sort by the text output column.
        let order: Vec<String> = p.order.split(',').map(|c| format!("t.{}", c.trim())).collect();
        let sql = format!(
            "SELECT {} FROM \"{db}\".\"{}\" AS t ORDER BY {}",
            p.pg,
            p.table,
            order.join(", ")
        );
        let replica = normalize(pg_rows(&sql).await, p, true);
        assert_rows_eq(
            &normalize(master_rows, p, true),
            &replica,
            &format!("{db}.{} on the PostgreSQL replica", p.table),
        );
    }
    master.len()
}

pub fn assert_rows_eq(master: &Rows, replica: &Rows, what: &str) {
    if master == replica {
        return;
    }
    let first_diff = master.iter().zip(replica).position(|(a, b)| a != b);
    match first_diff {
        Some(i) => panic!(
            "{what} differs from the master at row {i}:\n master:  {:?}\n replica: {:?}\n({} vs {} rows)",
            master[i],
            replica[i],
            master.len(),
            replica.len()
        ),
        None => panic!(
            "{what}: {} rows on the master, {} on the replica",
            master.len(),
            replica.len()
        ),
    }
}
