//! Copying a MariaDB table's existing rows chunk by chunk: the
//! [`SnapshotSource`] of the MySQL connector.
//!
//! # One chunk
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT` opens an InnoDB read view, and
//! MariaDB reports in the same session the binlog position that view
//! corresponds to (`binlog_snapshot_file` / `binlog_snapshot_position`):
//! every transaction committed before the view is before that position, none
//! after. The chunk is then `SELECT <every column> FROM t WHERE key > last
//! ORDER BY key LIMIT n` and the transaction is committed: a read view lives
//! for one chunk only, so the master's undo log is never pinned for long.
//! Key order and the comparison with the last key are the master's own (its
//! collations): dbmux never compares keys itself.
//!
//! # The definition the rows belong to
//! A schema change committed after the view opened would show in the
//! `SELECT` (columns come from the current definition), yet belong after the
//! chunk's position in the stream. So the definition is read before the view
//! opens and again once the `SELECT` holds the table's metadata lock (no DDL
//! of it can commit until the chunk's transaction ends): if they differ, the
//! chunk is read again.
//!
//! # Values
//! Rows are read with the binary protocol and `character_set_results =
//! binary`, so text arrives in the column's own character set and is decoded
//! by the same decoders as the binlog: a value copied by a snapshot equals the
//! value the binlog gives for the same row (the type-matrix tests compare
//! both).
//!
//! # Tables without a key
//! Copied whole in one read view, streamed in pieces (one query, read as it
//! goes), placed at the view's position while capture holds there.
//!
//! MySQL has no `binlog_snapshot_*`: snapshots need MariaDB (a definite
//! error says so).

use super::binlog_table::{schema_from_facts, ServerCharsets};
use super::binlog_values::Charset;
use super::capture::{
    read_foreign_keys, read_server_info, read_table_facts, with_foreign_keys, MysqlCaptureError,
    MysqlSourceConfig,
};
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Params};
use pipeline::event::Row;
use pipeline::filter::TableFilter;
use pipeline::position::{MysqlPosition, Position};
use pipeline::schema::{ColumnType, TableId, TableSchema};
use pipeline::snapshot::{ChunkKey, ChunkReader, ReadView, SnapshotSource};
use pipeline::value::{Date, DateTime, Time, Value};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OnceCell};

/// Times a chunk's definition check may fail in a row (DDL racing the read)
/// before the chunk is reported as a transient failure.
const DEFINITION_RETRIES: usize = 5;

/// Session settings of every snapshot connection: UTC for `TIMESTAMP`,
/// results in each column's own character set, a repeatable read view.
const SESSION: &[&str] = &[
    "SET NAMES utf8mb4",
    "SET SESSION time_zone = '+00:00', character_set_results = binary",
    "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
];

/// Snapshots of a MariaDB master's captured tables.
pub struct MysqlSnapshots {
    filter: TableFilter,
    opts: Opts,
    redacted: String,
    server: Arc<OnceCell<super::capture::ServerInfo>>,
}

impl MysqlSnapshots {
    pub fn new(config: &MysqlSourceConfig) -> Result<Self, MysqlCaptureError> {
        let opts = Opts::from_url(&config.url)
            .map_err(|e| MysqlCaptureError::Config(vec![format!("source.url: {e}")]))?;
        Ok(Self {
            filter: config.filter()?,
            opts,
            redacted: config.redacted_url(),
            server: Arc::new(OnceCell::new()),
        })
    }

    async fn connect(&self) -> Result<Conn, MysqlCaptureError> {
        let mut conn = Conn::new(self.opts.clone())
            .await
            .map_err(driver(format!("connecting to {} for a snapshot", self.redacted)))?;
        for s in SESSION {
            conn.query_drop(*s)
                .await
                .map_err(driver("setting up the snapshot session"))?;
        }
        Ok(conn)
    }
}

fn driver(context: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> MysqlCaptureError {
    let context = context.into();
    move |source| MysqlCaptureError::Driver { context, source }
}

impl SnapshotSource for MysqlSnapshots {
    type Error = MysqlCaptureError;
    type Reader = MysqlChunkReader;

    async fn tables(&self) -> Result<Vec<(TableId, u64)>, MysqlCaptureError> {
        let mut conn = self.connect().await?;
        // Schemas first, then the tables of the captured ones only, one
        // schema at a time: `information_schema.TABLES` without a constant
        // schema opens every table of the server (slow on a master with
        // thousands of tables, and MariaDB 10.11 crashed once here under
        // that scan while other sessions dropped databases).
        // (results arrive as bytes in this session; the catalog is UTF-8)
        let schemas: Vec<String> = conn
            .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME")
            .await
            .map_err(driver("listing the master's databases"))?;
        let mut tables = Vec::new();
        for db in schemas.into_iter().filter(|db| self.filter.may_match_schema(db)) {
            let rows: Vec<(String, Option<u64>)> = conn
                .exec(
                    "SELECT TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES \
                     WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                    (db.as_str(),),
                )
                .await
                .map_err(driver(format!("listing the tables of {db}")))?;
            tables.extend(
                rows.into_iter()
                    .filter(|(t, _)| self.filter.matches(&db, t))
                    .map(|(t, n)| (TableId::new(db.clone(), t), n.unwrap_or(0))),
            );
        }
        let _ = conn.disconnect().await;
        Ok(tables)
    }

    async fn reader(&self) -> Result<MysqlChunkReader, MysqlCaptureError> {
        let conn = self.connect().await?;
        let server = self
            .server
            .get_or_try_init(|| async {
                let mut c = self.connect().await?;
                let info = read_server_info(&mut c).await;
                let _ = c.disconnect().await;
                info
            })
            .await?
            .clone();
        if !server.mariadb {
            let _ = conn.disconnect().await;
            return Err(MysqlCaptureError::Preflight(vec![
                "snapshots need MariaDB: MySQL does not report the binlog position of a consistent \
                 snapshot (binlog_snapshot_file/position); set [snapshot] initial = false"
                    .into(),
            ]));
        }
        Ok(MysqlChunkReader {
            conn: Some(conn),
            filter: self.filter.clone(),
            charsets: server.charsets,
            view: None,
            stream: None,
        })
    }
}

/// How to read one column of a result row back into a [`Value`].
#[derive(Debug, Clone)]
struct ColumnReader {
    name: String,
    ty: ColumnType,
    charset: Charset,
}

/// The open read view.
struct View {
    table: TableId,
    schema: Arc<TableSchema>,
    columns: Vec<ColumnReader>,
    select: String,
    key: Vec<usize>,
}

/// A table copied whole: the query streaming its rows runs in a task that
/// owns the connection and hands pieces over; it gives the connection back
/// when done.
struct Streaming {
    pieces: mpsc::Receiver<Result<Vec<Row>, MysqlCaptureError>>,
    limit: mpsc::Sender<usize>,
    conn: oneshot::Receiver<Option<Conn>>,
}

/// One connection reading one table at a time.
pub struct MysqlChunkReader {
    conn: Option<Conn>,
    filter: TableFilter,
    charsets: Arc<ServerCharsets>,
    view: Option<View>,
    stream: Option<Streaming>,
}

fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `SHOW CREATE TABLE` text, in the connection's (binary) results charset.
fn text(v: &mysql_async::Value) -> Option<String> {
    match v {
        mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

impl MysqlChunkReader {
    fn conn(&mut self) -> Result<&mut Conn, MysqlCaptureError> {
        self.conn.as_mut().ok_or(MysqlCaptureError::NotStarted)
    }

    /// The table's definition as the catalog shows it now, built as capture
    /// builds it from the stream.
    async fn definition(
        &mut self,
        table: &TableId,
    ) -> Result<(TableSchema, Option<String>), MysqlCaptureError> {
        let filter = self.filter.clone();
        let charsets = self.charsets.clone();
        let conn = self.conn()?;
        let ctx = format!("reading the definition of {table}");
        let facts = read_table_facts(conn, &table.schema, &table.name, true)
            .await
            .map_err(driver(ctx.clone()))?;
        if facts.columns.is_empty() {
            return Err(MysqlCaptureError::TableMap {
                table: table.to_string(),
                message: "the table does not exist (any more)".into(),
            });
        }
        let fks = read_foreign_keys(conn, &filter)
            .await
            .map_err(driver(ctx.clone()))?;
        let facts = with_foreign_keys(facts, &fks, table);
        let create: Option<mysql_async::Row> = conn
            .query_first(format!(
                "SHOW CREATE TABLE {}.{}",
                quote(&table.schema),
                quote(&table.name)
            ))
            .await
            .map_err(driver(ctx))?;
        let create = create.and_then(|r| r.as_ref(1).and_then(text));
        let (schema, _) = schema_from_facts(table.clone(), &facts, &charsets)?;
        Ok((schema, create))
    }
}

impl ChunkReader for MysqlChunkReader {
    type Error = MysqlCaptureError;

    async fn begin(&mut self, table: &TableId) -> Result<ReadView, MysqlCaptureError> {
        self.end().await?;
        let mut attempt = 0;
        loop {
            let (before, _) = self.definition(table).await?;
            let conn = self.conn()?;
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                .await
                .map_err(driver("opening a consistent snapshot"))?;
            let status: Vec<(String, String)> = conn
                .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
                .await
                .map_err(driver("reading binlog_snapshot_file/position"))?;
            let get = |n: &str| {
                status
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.clone())
            };
            let (Some(file), Some(offset)) = (
                get("binlog_snapshot_file").filter(|f| !f.is_empty()),
                get("binlog_snapshot_position").and_then(|p| p.parse::<u64>().ok()),
            ) else {
                let _ = conn.query_drop("COMMIT").await;
                return Err(MysqlCaptureError::Preflight(vec![
                    "the master reports no binlog_snapshot_file/position (MariaDB with log_bin is needed for snapshots)"
                        .into(),
                ]));
            };
            // Take the table's metadata lock for the rest of the transaction,
            // then read the definition the rows will have.
            let lock = conn
                .query_drop(format!(
                    "SELECT 1 FROM {}.{} LIMIT 0",
                    quote(&table.schema),
                    quote(&table.name)
                ))
                .await;
            if let Err(e) = lock {
                let _ = conn.query_drop("COMMIT").await;
                return Err(driver(format!("reading {table}"))(e));
            }
            let (schema, create) = self.definition(table).await?;
            if schema != before {
                let _ = self.conn()?.query_drop("COMMIT").await;
                attempt += 1;
                if attempt >= DEFINITION_RETRIES {
                    return Err(MysqlCaptureError::Driver {
                        context: format!("reading {table}: its definition keeps changing"),
                        source: mysql_async::Error::Other("schema changes while copying".into()),
                    });
                }
                continue;
            }
            let columns: Vec<ColumnReader> = schema
                .columns
                .iter()
                .map(|c| ColumnReader {
                    name: c.name.clone(),
                    ty: c.ty.clone(),
                    charset: c
                        .charset
                        .as_deref()
                        .map_or(Charset::Binary, Charset::from_name_or_unsupported),
                })
                .collect();
            let select = format!(
                "SELECT {} FROM {}.{}",
                columns
                    .iter()
                    .map(|c| quote(&c.name))
                    .collect::<Vec<_>>()
                    .join(", "),
                quote(&table.schema),
                quote(&table.name)
            );
            let key = schema.primary_key.clone();
            let schema = Arc::new(schema);
            self.view = Some(View {
                table: table.clone(),
                schema: schema.clone(),
                columns,
                select,
                key: key.clone(),
            });
            return Ok(ReadView {
                position: Position::Mysql(MysqlPosition {
                    file,
                    offset,
                    gtid_set: None,
                }),
                schema,
                create_statement: create,
                key: if key.is_empty() {
                    ChunkKey::WholeTable
                } else {
                    ChunkKey::Columns(key)
                },
            });
        }
    }

    async fn read(&mut self, after: Option<&[Value]>, limit: usize) -> Result<Vec<Row>, MysqlCaptureError> {
        let view = self.view.as_ref().ok_or(MysqlCaptureError::NotStarted)?;
        if view.key.is_empty() {
            return self.read_stream(limit).await;
        }
        // Keyset pagination in the master's own key order: `(a, b) > (x, y)`
        // spelled out so the optimizer uses a range on the key.
        let key: Vec<String> = view.key.iter().map(|&i| quote(&view.columns[i].name)).collect();
        let mut sql = view.select.clone();
        let mut params = Vec::new();
        if let Some(after) = after {
            let mut ors = Vec::new();
            for i in 0..key.len() {
                let mut ands: Vec<String> = key[..i].iter().map(|k| format!("{k} = ?")).collect();
                ands.push(format!("{} > ?", key[i]));
                ors.push(format!("({})", ands.join(" AND ")));
                for (j, v) in after.iter().enumerate().take(i + 1) {
                    let col = &view.schema.columns[view.key[j]];
                    params.push(super::apply_sql::to_param(v, col).map_err(|message| {
                        MysqlCaptureError::Decode {
                            table: view.table.to_string(),
                            column: col.name.clone(),
                            position: "snapshot key".into(),
                            message,
                        }
                    })?);
                }
            }
            sql.push_str(&format!(" WHERE {}", ors.join(" OR ")));
        }
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", key.join(", ")));
        let columns = view.columns.clone();
        let table = view.table.to_string();
        let rows: Vec<mysql_async::Row> = self
            .conn()?
            .exec(sql, Params::Positional(params))
            .await
            .map_err(driver(format!("reading a chunk of {table}")))?;
        rows.into_iter().map(|r| to_row(r, &columns, &table)).collect()
    }

    async fn end(&mut self) -> Result<(), MysqlCaptureError> {
        if let Some(s) = self.stream.take() {
            drop(s.limit);
            drop(s.pieces);
            self.conn = s.conn.await.ok().flatten();
        }
        if self.view.take().is_some() {
            match self.conn.as_mut() {
                Some(c) => c
                    .query_drop("COMMIT")
                    .await
                    .map_err(driver("ending a snapshot read"))?,
                None => return Err(MysqlCaptureError::StreamEnded),
            }
        }
        Ok(())
    }

    fn is_gone(e: &MysqlCaptureError) -> bool {
        match e {
            MysqlCaptureError::Driver {
                source: mysql_async::Error::Server(s),
                ..
            } => s.code == 1146, // no such table
            MysqlCaptureError::TableMap { message, .. } => message.contains("does not exist"),
            _ => false,
        }
    }
}

impl MysqlChunkReader {
    /// The next piece of a table copied whole: the first call starts one
    /// query over the table in the read view, read as it goes.
    async fn read_stream(&mut self, limit: usize) -> Result<Vec<Row>, MysqlCaptureError> {
        if self.stream.is_none() {
            let view = self.view.as_ref().expect("checked");
            let (sql, columns, table) = (view.select.clone(), view.columns.clone(), view.table.to_string());
            let mut conn = self.conn.take().ok_or(MysqlCaptureError::NotStarted)?;
            let (piece_tx, pieces) = mpsc::channel(1);
            let (limit_tx, mut limits) = mpsc::channel::<usize>(1);
            let (conn_tx, conn_rx) = oneshot::channel();
            tokio::spawn(async move {
                let result = async {
                    let mut result = conn
                        .query_iter(sql)
                        .await
                        .map_err(driver(format!("reading {table}")))?;
                    let mut stream = result
                        .stream::<mysql_async::Row>()
                        .await
                        .map_err(driver(format!("reading {table}")))?;
                    let mut piece = Vec::new();
                    let Some(mut want) = limits.recv().await else {
                        return Ok(());
                    };
                    if let Some(stream) = stream.as_mut() {
                        while let Some(row) = stream.next().await {
                            let row = row.map_err(driver(format!("reading {table}")))?;
                            piece.push(to_row(row, &columns, &table)?);
                            if piece.len() >= want {
                                if piece_tx.send(Ok(std::mem::take(&mut piece))).await.is_err() {
                                    return Ok(());
                                }
                                match limits.recv().await {
                                    Some(n) => want = n,
                                    None => return Ok(()),
                                }
                            }
                        }
                    }
                    let _ = piece_tx.send(Ok(piece)).await;
                    Ok::<(), MysqlCaptureError>(())
                }
                .await;
                let ok = result.is_ok();
                if let Err(e) = result {
                    let _ = piece_tx.send(Err(e)).await;
                }
                let _ = conn_tx.send(ok.then_some(conn));
            });
            self.stream = Some(Streaming {
                pieces,
                limit: limit_tx,
                conn: conn_rx,
            });
        }
        let s = self.stream.as_mut().expect("just set");
        if s.limit.send(limit).await.is_err() {
            return Ok(Vec::new());
        }
        match s.pieces.recv().await {
            Some(r) => r,
            None => Ok(Vec::new()),
        }
    }
}

/// One result row as the values the binlog decoder gives for the same row.
fn to_row(row: mysql_async::Row, columns: &[ColumnReader], table: &str) -> Result<Row, MysqlCaptureError> {
    let values = row.unwrap();
    values
        .into_iter()
        .zip(columns)
        .map(|(v, c)| {
            to_value(v, c).map_err(|message| MysqlCaptureError::Decode {
                table: table.to_string(),
                column: c.name.clone(),
                position: "snapshot".into(),
                message,
            })
        })
        .collect()
}

fn to_value(v: mysql_async::Value, c: &ColumnReader) -> Result<Value, String> {
    use mysql_async::Value as M;
    let unexpected = |v: &M| format!("unexpected {v:?} for a {:?} column", c.ty);
    let int = |v: &M| -> Result<i128, String> {
        match v {
            M::Int(i) => Ok(*i as i128),
            M::UInt(u) => Ok(*u as i128),
            M::Bytes(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| unexpected(v)),
            _ => Err(unexpected(v)),
        }
    };
    if matches!(v, M::NULL) {
        return Ok(Value::Null);
    }
    Ok(match &c.ty {
        ColumnType::Integer { unsigned: true, .. } => Value::UInt(int(&v)? as u64),
        ColumnType::Integer { .. } | ColumnType::Bool => Value::Int(int(&v)? as i64),
        ColumnType::Year => Value::Year(int(&v)? as u16),
        ColumnType::Float => match v {
            M::Float(f) => Value::Float(f),
            M::Double(d) => Value::Float(d as f32),
            other => return Err(unexpected(&other)),
        },
        ColumnType::Double => match v {
            M::Double(d) => Value::Double(d),
            M::Float(f) => Value::Double(f as f64),
            other => return Err(unexpected(&other)),
        },
        ColumnType::Decimal { .. } => match v {
            M::Bytes(b) => Value::Decimal(String::from_utf8(b).map_err(|e| e.to_string())?),
            other => return Err(unexpected(&other)),
        },
        ColumnType::Date => match v {
            M::Date(y, m, d, ..) => Value::Date(Date {
                year: y,
                month: m,
                day: d,
            }),
            other => return Err(unexpected(&other)),
        },
        ColumnType::DateTime { .. } => match v {
            M::Date(y, mo, d, h, mi, s, us) => Value::DateTime(DateTime {
                date: Date {
                    year: y,
                    month: mo,
                    day: d,
                },
                hour: h,
                minute: mi,
                second: s,
                micros: us,
            }),
            other => return Err(unexpected(&other)),
        },
        ColumnType::Timestamp { .. } => match v {
            M::Date(0, 0, 0, 0, 0, 0, 0) => Value::Timestamp(0),
            M::Date(y, mo, d, h, mi, s, us) => {
                let days = days_from_civil(y as i64, mo, d);
                Value::Timestamp(
                    ((days * 86_400 + h as i64 * 3600 + mi as i64 * 60 + s as i64) * 1_000_000) + us as i64,
                )
            }
            other => return Err(unexpected(&other)),
        },
        ColumnType::Time { .. } => match v {
            M::Time(neg, days, h, m, s, us) => Value::Time(Time {
                negative: neg && (days | h as u32 | m as u32 | s as u32 | us) != 0,
                hours: days * 24 + h as u32,
                minutes: m,
                seconds: s,
                micros: us,
            }),
            other => return Err(unexpected(&other)),
        },
        ColumnType::Bit { .. } => match v {
            M::Bytes(b) => Value::Bit(b.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64)),
            M::Int(i) => Value::Bit(i as u64),
            M::UInt(u) => Value::Bit(u),
            other => return Err(unexpected(&other)),
        },
        ColumnType::Enum { .. } => Value::Enum(c.charset.decode(&bytes(v, c)?).map_err(|e| e.0)?),
        ColumnType::Set { .. } => {
            let text = c.charset.decode(&bytes(v, c)?).map_err(|e| e.0)?;
            Value::Set(if text.is_empty() {
                Vec::new()
            } else {
                text.split(',').map(str::to_string).collect()
            })
        }
        ColumnType::Json => Value::Json(c.charset.decode(&bytes(v, c)?).map_err(|e| e.0)?),
        ColumnType::Char { .. } | ColumnType::VarChar { .. } | ColumnType::Text { .. } => match c.charset {
            Charset::Binary => Value::Bytes(bytes(v, c)?),
            cs => Value::Text(cs.decode(&bytes(v, c)?).map_err(|e| e.0)?),
        },
        ColumnType::Binary { .. } | ColumnType::VarBinary { .. } | ColumnType::Blob { .. } => {
            Value::Bytes(bytes(v, c)?)
        }
        // (PostgreSQL-source types never occur in a MySQL table.)
        ColumnType::Uuid
        | ColumnType::Other { .. }
        | ColumnType::Numeric
        | ColumnType::TimestampTz { .. }
        | ColumnType::Interval => {
            return Err(format!("type {:?} cannot be copied", c.ty));
        }
    })
}

fn bytes(v: mysql_async::Value, c: &ColumnReader) -> Result<Vec<u8>, String> {
    match v {
        mysql_async::Value::Bytes(b) => Ok(b),
        other => Err(format!("unexpected {other:?} for a {:?} column", c.ty)),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of
/// [`civil_from_days`]).
fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::value::civil_from_days;

    #[test]
    fn days_round_trip() {
        for days in [-719_468i64, -1, 0, 1, 11_016, 24_855, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
