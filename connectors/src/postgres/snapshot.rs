//! Snapshots of a PostgreSQL source — the [`SnapshotSource`] of the
//! PostgreSQL connector: the initial copy as of the slot's consistent point,
//! read through the snapshot the slot exported when it was created, and
//! later copies one chunk per read view, each through a temporary slot's
//! exported snapshot ([`PerChunk`] states the view's position).
//!
//! # One view for everything
//! `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` returns the slot's consistent
//! point (capture's start position) and a snapshot that shows the database
//! exactly there: every transaction whose changes the slot will not stream is
//! visible in it, none that the slot streams. It stays importable while the
//! creating connection is idle, i.e. until capture starts streaming
//! ([`PostgresSource::snapshot_export`] publishes it meanwhile). Each reader
//! imports it (`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET
//! TRANSACTION SNAPSHOT '…'`) and reads one table in that transaction, so
//! every chunk of every table shows the same instant. That is why this
//! source is [`SnapshotSource::single_view`]: the whole initial copy goes
//! into the log before the first streamed transaction. After it
//! ([`SnapshotSource::initial_copy_done`]) every chunk opens its own view.
//!
//! # Chunks
//! In the initial copy, a table with a primary key is read through a cursor ordered by that key
//! (`DECLARE … CURSOR FOR SELECT … ORDER BY <key>`, `FETCH <chunk_rows>`), so
//! each chunk is a key range and its mark carries the last key. A table
//! without one is read through a cursor in physical order, each `FETCH` one
//! piece of the table copied whole. The list of tables and their
//! definitions are read in the same snapshot: the catalog as of the start
//! position. Per chunk, a keyed chunk is one range query (`WHERE (key) >
//! (last) ORDER BY key LIMIT chunk_rows`) in its own view, and a table
//! without a key is read through a cursor in one view, as above.
//!
//! # Values
//! Rows are read as text (simple query protocol) in a session with the
//! settings of the replication connection ([`STREAM_SETTINGS`]), which are
//! the text forms pgoutput sends, and decoded by the same decoders as the
//! stream ([`super::source_types`]); the table definition is built by the
//! same code as for a `Relation` message (with the replica identity flags
//! pgoutput would send), so a snapshot row and a streamed row of the same
//! table are the same values under the same definition. A column of an
//! unsupported type stops the copy with the error streaming gives.

use super::apply_sql::{to_text, ZeroDates};
#[cfg(doc)]
use super::capture::PostgresSource;
use super::capture::{catalog as driver, connect_plain, quote_ident, quote_literal};
use super::capture::{
    describe_relation, Export, ExportedSnapshot, PostgresCaptureError, PostgresSourceConfig, RelPlan,
    SnapshotExport, CONNECT_TIMEOUT, STREAM_SETTINGS,
};
use super::pgoutput::{Relation, RelationColumn};
use super::replication::{parse_lsn, ReplicationConn};
use pipeline::event::Row;
use pipeline::filter::TableFilter;
use pipeline::retry::ErrorClass;
use pipeline::schema::TableId;
use pipeline::snapshot::{ChunkKey, ChunkReader, ReadView, SnapshotSource};
use pipeline::{Position, Value};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The cursor each reader reads its table through.
const CURSOR: &str = "dbmux_snapshot";

/// Copies a PostgreSQL source's tables with the slot's exported snapshot.
pub struct PostgresSnapshots {
    config: PostgresSourceConfig,
    filter: TableFilter,
    pg: tokio_postgres::Config,
    export: SnapshotExport,
    /// Set once the initial copy is over: each chunk gets its own view.
    per_chunk: Arc<AtomicBool>,
}

impl PostgresSnapshots {
    /// `export` comes from the [`PostgresSource`] that creates the slot
    /// ([`PostgresSource::snapshot_export`]).
    pub fn new(config: &PostgresSourceConfig, export: SnapshotExport) -> Result<Self, PostgresCaptureError> {
        let pg = tokio_postgres::Config::from_str(&config.url)
            .map_err(|e| PostgresCaptureError::Config(vec![format!("source.postgres.url: {e}")]))?;
        Ok(Self {
            filter: config.filter()?,
            config: config.clone(),
            pg,
            export,
            per_chunk: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The exported snapshot, waiting for capture to create the slot; an
    /// error once capture started streaming (the snapshot is gone).
    async fn exported(&self) -> Result<ExportedSnapshot, PostgresCaptureError> {
        let mut export = self.export.clone();
        let found = export
            .wait_for(|e| !matches!(e, Export::Pending))
            .await
            .map(|e| e.clone());
        match found {
            Ok(Export::Usable(s)) => Ok(s),
            _ => Err(PostgresCaptureError::SnapshotGone),
        }
    }

    /// A connection in a transaction that imported the exported snapshot.
    async fn connect_in_view(&self) -> Result<(Client, ExportedSnapshot), PostgresCaptureError> {
        let exported = self.exported().await?;
        let client = connect_for_snapshots(&self.config, &self.pg).await?;
        import_snapshot(&client, &exported.name).await?;
        Ok((client, exported))
    }
}

/// A plain connection with the stream's session settings (rows read as
/// text come out in the forms the stream's decoders parse).
async fn connect_for_snapshots(
    config: &PostgresSourceConfig,
    pg: &tokio_postgres::Config,
) -> Result<Client, PostgresCaptureError> {
    {
        let what = format!("connecting to {} for a snapshot", config.redacted_url());
        let client = connect_plain(pg, what, "snapshot").await?;
        let mut setup: Vec<String> = STREAM_SETTINGS
            .iter()
            .filter(|(k, _)| *k != "application_name")
            .map(|(k, v)| format!("SET {k} = {}", quote_literal(v)))
            .collect();
        setup.push("SET application_name = 'dbmux-snapshot'".into());
        client
            .batch_execute(&setup.join("; "))
            .await
            .map_err(driver("setting up a snapshot connection"))?;
        Ok(client)
    }
}

/// Opens a read-only repeatable-read transaction on `client` that imports
/// the exported snapshot `name`.
async fn import_snapshot(client: &Client, name: &str) -> Result<(), PostgresCaptureError> {
    let sql = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        quote_literal(name)
    );
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        // 22023: the snapshot no longer exists (the exporting connection
        // ran another command or died).
        Err(e) if e.code().is_some_and(|c| c.code() == "22023") => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(PostgresCaptureError::SnapshotGone)
        }
        Err(e) => Err(driver("importing an exported snapshot")(e)),
    }
}

impl SnapshotSource for PostgresSnapshots {
    type Error = PostgresCaptureError;
    type Reader = PostgresChunkReader;

    /// The publication's tables that `include`/`exclude` select, as of the
    /// start position, with the planner's row estimates.
    async fn tables(&self) -> Result<Vec<(TableId, u64)>, PostgresCaptureError> {
        let client = if self.per_chunk.load(Ordering::SeqCst) {
            connect_for_snapshots(&self.config, &self.pg).await?
        } else {
            self.connect_in_view().await?.0
        };
        let rows = client
            .query(
                "SELECT pt.schemaname::text, pt.tablename::text, GREATEST(c.reltuples, 0)::int8 \
                 FROM pg_publication_tables pt \
                 JOIN pg_namespace n ON n.nspname = pt.schemaname \
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
                 WHERE pt.pubname = $1 ORDER BY 1, 2",
                &[&self.config.publication],
            )
            .await
            .map_err(driver(
                "listing the publication's tables for the initial snapshot",
            ))?;
        let _ = client.batch_execute("COMMIT").await;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, i64>(2)))
            .filter(|(s, t, _)| self.filter.matches(s, t))
            .map(|(s, t, n)| (TableId::new(s, t), n.max(0) as u64))
            .collect())
    }

    async fn reader(&self) -> Result<PostgresChunkReader, PostgresCaptureError> {
        if self.per_chunk.load(Ordering::SeqCst) {
            let client = connect_for_snapshots(&self.config, &self.pg).await?;
            return Ok(PostgresChunkReader {
                client,
                lsn: 0,
                view: None,
                used: false,
                per_chunk: Some(PerChunk {
                    pg: self.pg.clone(),
                    url: self.config.redacted_url(),
                }),
            });
        }
        let (client, exported) = self.connect_in_view().await?;
        Ok(PostgresChunkReader {
            client,
            lsn: exported.lsn,
            view: None,
            used: false,
            per_chunk: None,
        })
    }

    /// The initial copy reads the slot's exported snapshot; later copies a
    /// temporary slot's per chunk ([`PostgresChunkReader`]).
    fn single_view(&self) -> bool {
        true
    }

    fn initial_copy_done(&self) {
        self.per_chunk.store(true, Ordering::SeqCst);
    }
}

/// The open cursor over one table.
struct View {
    table: TableId,
    plan: Arc<RelPlan>,
    key: Vec<usize>,
    /// The key of the last row handed out.
    last_key: Option<Row>,
    /// `SELECT <columns> FROM <table>` (per-chunk keyed reads add the range).
    select: String,
    /// A cursor is open (single view; per chunk, a table without a key).
    cursor: bool,
}

/// Reads one table: during the initial copy in the one transaction that
/// imported the main slot's exported snapshot; later one read view per
/// chunk, each from a temporary slot of its own (see [`PerChunk`]).
pub struct PostgresChunkReader {
    client: Client,
    /// The current view's position.
    lsn: u64,
    view: Option<View>,
    /// A table was read in this transaction already (a single-view reader
    /// serves one).
    used: bool,
    per_chunk: Option<PerChunk>,
}

/// A read view per chunk, at an exact stream position.
///
/// `begin` creates a *temporary* logical slot on a replication connection
/// of its own (`CREATE_REPLICATION_SLOT <unique> TEMPORARY LOGICAL pgoutput
/// EXPORT_SNAPSHOT`, the form PostgreSQL 10 to 17 accept) and imports its
/// exported snapshot on the query connection (`BEGIN ISOLATION LEVEL
/// REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT …`); then it closes
/// the replication connection, which drops the slot (an imported snapshot
/// no longer needs its exporter, and the slot would only pin WAL).
///
/// The view's position is the slot's `consistent_point` C. PostgreSQL's
/// documentation of exported snapshots: the snapshot "will show exactly the
/// state of the database after which all changes will be included in the
/// change stream" of the new slot; the slot streams exactly the
/// transactions whose commit record starts at or after C (snapbuild.c:
/// consistency is reached at a record boundary, and the exported snapshot
/// is built from the commits decoded before it, every transaction
/// tracked). C is the end of a WAL record, so no commit record straddles
/// it: **every transaction whose commit record ends at or before C — the
/// position capture reports for it — is in the view, and none after.** The
/// main slot streams in commit order by the same LSNs, so a chunk placed at
/// C (after every streamed transaction ≤ C, before every later one) is
/// exactly the state those transactions left.
struct PerChunk {
    pg: tokio_postgres::Config,
    url: String,
}

/// A temporary slot name no other session has: process, time, counter.
fn temporary_slot_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!(
        "dbmux_chunk_{}_{now:x}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl PerChunk {
    /// Creates a temporary slot, imports its snapshot on `client` (opening
    /// the read transaction) and returns the slot's consistent point.
    async fn open_view(&self, client: &Client) -> Result<u64, PostgresCaptureError> {
        let mut conn = ReplicationConn::connect(&self.pg, STREAM_SETTINGS, CONNECT_TIMEOUT)
            .await
            .map_err(|source| PostgresCaptureError::Replication {
                context: format!("connecting for a snapshot chunk's temporary slot ({})", self.url),
                source,
            })?;
        let slot = temporary_slot_name();
        let created = conn
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT",
                quote_ident(&slot)
            ))
            .await;
        let result = async {
            let rows = created.map_err(|source| PostgresCaptureError::Replication {
                context: format!("creating temporary replication slot {slot:?} for a snapshot chunk"),
                source,
            })?;
            let row = rows.first().ok_or_else(|| PostgresCaptureError::Stream {
                position: "snapshot chunk".into(),
                message: "CREATE_REPLICATION_SLOT returned no row".into(),
            })?;
            let lsn = row.get(1).and_then(|v| v.as_deref()).and_then(parse_lsn);
            let name = row.get(2).cloned().flatten();
            let (Some(lsn), Some(name)) = (lsn, name) else {
                return Err(PostgresCaptureError::Stream {
                    position: "snapshot chunk".into(),
                    message: format!("bad CREATE_REPLICATION_SLOT result {row:?}"),
                });
            };
            // Imported while the exporting connection is idle (the
            // snapshot lives until its next command).
            import_snapshot(client, &name).await?;
            Ok(lsn)
        }
        .await;
        conn.close().await;
        // A snapshot that vanished between export and import is a lost
        // connection, not a reason to give the table up.
        result.map_err(|e| match e {
            PostgresCaptureError::SnapshotGone => PostgresCaptureError::Catalog {
                context: "importing a snapshot chunk's exported snapshot".into(),
                message: "the temporary slot's snapshot was gone".into(),
                class: ErrorClass::Transient,
            },
            e => e,
        })
    }
}

impl PostgresChunkReader {
    /// The definition of `table` as pgoutput would describe it at the start
    /// position, and its primary key in key order (empty without one).
    async fn definition(&self, table: &TableId) -> Result<(RelPlan, Vec<usize>), PostgresCaptureError> {
        let ctx = format!("reading the definition of {table}");
        let rel = self
            .client
            .query_opt(
                "SELECT c.oid, c.relreplident::text, \
                   ARRAY(SELECT a.attname::text FROM pg_index i \
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                         WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) \
                               OR (c.relreplident = 'i' AND i.indisreplident))), \
                   ARRAY(SELECT a.attname::text FROM pg_index i, \
                           unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                         JOIN pg_attribute a ON a.attnum = k.attnum \
                         WHERE i.indrelid = c.oid AND i.indisprimary AND a.attrelid = c.oid ORDER BY k.n) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(driver(ctx.clone()))?
            .ok_or_else(|| PostgresCaptureError::TableGone(table.to_string()))?;
        let (oid, ident, identity, pk): (u32, String, Vec<String>, Vec<String>) =
            (rel.get(0), rel.get(1), rel.get(2), rel.get(3));
        let ident = ident.bytes().next().unwrap_or(b'd');
        // The columns pgoutput sends (no generated ones), flagged as its
        // Relation message flags them.
        let columns = self
            .client
            .query(
                "SELECT a.attname::text, a.atttypid, a.atttypmod FROM pg_attribute a \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(driver(ctx))?;
        let relation = Relation {
            oid,
            namespace: table.schema.clone(),
            name: table.name.clone(),
            replica_identity: ident,
            columns: columns
                .iter()
                .map(|c| {
                    let name: String = c.get(0);
                    RelationColumn {
                        key: ident == b'f' || identity.contains(&name),
                        name,
                        type_oid: c.get(1),
                        type_modifier: c.get(2),
                    }
                })
                .collect(),
        };
        let plan = describe_relation(&self.client, oid, &table.schema, &table.name, Some(&relation)).await?;
        let key: Vec<usize> = pk
            .iter()
            .filter_map(|n| plan.schema.columns.iter().position(|c| &c.name == n))
            .collect();
        let key = if key.len() == pk.len() { key } else { Vec::new() };
        Ok((plan, key))
    }
}

impl ChunkReader for PostgresChunkReader {
    type Error = PostgresCaptureError;

    async fn begin(&mut self, table: &TableId) -> Result<ReadView, PostgresCaptureError> {
        if let Some(p) = &self.per_chunk {
            if self.view.take().is_some() {
                // A view left open by a failed chunk.
                let _ = self.client.batch_execute("ROLLBACK").await;
            }
            self.lsn = p.open_view(&self.client).await?;
        } else if std::mem::replace(&mut self.used, true) {
            return Err(PostgresCaptureError::Stream {
                position: "initial snapshot".into(),
                message: "a snapshot reader serves one table".into(),
            });
        }
        let (plan, key) = self.definition(table).await?;
        let columns: Vec<String> = plan.schema.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let order = if key.is_empty() {
            String::new()
        } else {
            format!(
                " ORDER BY {}",
                key.iter()
                    .map(|&i| columns[i].clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let select = format!(
            "SELECT {} FROM {}.{}",
            if columns.is_empty() {
                "NULL".to_string()
            } else {
                columns.join(", ")
            },
            quote_ident(&table.schema),
            quote_ident(&table.name),
        );
        // Per chunk, a keyed table's chunk is one range query in its view;
        // otherwise a cursor reads on where the last read stopped.
        let cursor = self.per_chunk.is_none() || key.is_empty();
        if cursor {
            self.client
                .batch_execute(&format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR {select}{order}"))
                .await
                .map_err(driver(format!("opening a cursor over {table}")))?;
        }
        let plan = Arc::new(plan);
        let schema = plan.schema.clone();
        self.view = Some(View {
            table: table.clone(),
            plan,
            key: key.clone(),
            last_key: None,
            select,
            cursor,
        });
        Ok(ReadView {
            position: Position::Postgres(self.lsn),
            schema,
            create_statement: None,
            key: if key.is_empty() {
                ChunkKey::WholeTable
            } else {
                ChunkKey::Columns(key)
            },
        })
    }

    /// The cursor's next rows. Keyed tables: `after` must be the key of the
    /// last row this reader returned (the cursor continues from there; a
    /// reader cannot jump, and the single-view coordinator never asks it to).
    async fn read(
        &mut self,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Row>, PostgresCaptureError> {
        let view = self.view.as_ref().ok_or(PostgresCaptureError::NotStarted)?;
        let query = if view.cursor {
            format!("FETCH FORWARD {limit} FROM {CURSOR}")
        } else {
            range_query(view, after, limit)?
        };
        if view.cursor && !view.key.is_empty() && after != view.last_key.as_deref() {
            return Err(PostgresCaptureError::Stream {
                position: "initial snapshot".into(),
                message: format!(
                    "{}: a chunk after {after:?} was asked for, but the cursor is after {:?}",
                    view.table, view.last_key
                ),
            });
        }
        let messages = self
            .client
            .simple_query(&query)
            .await
            .map_err(driver(format!("reading a chunk of {}", view.table)))?;
        let plan = view.plan.clone();
        let table = view.table.to_string();
        let mut rows = Vec::new();
        for m in messages {
            let SimpleQueryMessage::Row(r) = m else { continue };
            if plan.schema.columns.is_empty() {
                rows.push(Vec::new());
                continue;
            }
            let mut row = Vec::with_capacity(plan.decoders.len());
            for (i, d) in plan.decoders.iter().enumerate() {
                row.push(match r.get(i) {
                    None => Value::Null,
                    Some(raw) => d
                        .decode(raw.as_bytes())
                        .map_err(|message| PostgresCaptureError::Value {
                            table: table.clone(),
                            column: plan.schema.columns[i].name.clone(),
                            position: "initial snapshot".into(),
                            message,
                        })?,
                });
            }
            rows.push(row);
        }
        let view = self.view.as_mut().expect("checked");
        if let (false, Some(last)) = (view.key.is_empty(), rows.last()) {
            view.last_key = Some(view.key.iter().map(|&i| last[i].clone()).collect());
        }
        Ok(rows)
    }

    async fn end(&mut self) -> Result<(), PostgresCaptureError> {
        if self.view.take().is_some() {
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(driver("ending a snapshot read"))?;
        }
        Ok(())
    }

    fn is_gone(e: &PostgresCaptureError) -> bool {
        matches!(e, PostgresCaptureError::TableGone(_))
    }
}

/// A keyed chunk in a per-chunk view: the rows whose key is after `after`,
/// in key order, at most `limit`. The key values go back as PostgreSQL text
/// input (the forms the stream's decoders read them from), as literals of
/// unknown type that PostgreSQL reads as the key column's own type; the row
/// comparison `(k1, k2) > (…)` is the order of `ORDER BY k1, k2` (same
/// operators, same collations).
fn range_query(view: &View, after: Option<&[Value]>, limit: usize) -> Result<String, PostgresCaptureError> {
    let cols = &view.plan.schema.columns;
    let names: Vec<String> = view.key.iter().map(|&i| quote_ident(&cols[i].name)).collect();
    let order = names.join(", ");
    let range = match after {
        None => String::new(),
        Some(after) => {
            if after.len() != view.key.len() {
                return Err(PostgresCaptureError::Stream {
                    position: "snapshot chunk".into(),
                    message: format!(
                        "{}: a key of {} values for a key of {} columns",
                        view.table,
                        after.len(),
                        view.key.len()
                    ),
                });
            }
            let mut literals = Vec::with_capacity(after.len());
            for (v, &i) in after.iter().zip(&view.key) {
                let text = to_text(v, &cols[i], ZeroDates::Error)
                    .map_err(|message| PostgresCaptureError::Value {
                        table: view.table.to_string(),
                        column: cols[i].name.clone(),
                        position: "snapshot chunk key".into(),
                        message,
                    })?
                    .ok_or_else(|| PostgresCaptureError::Stream {
                        position: "snapshot chunk".into(),
                        message: format!("{}: a NULL in the key column {}", view.table, cols[i].name),
                    })?;
                literals.push(quote_literal(&text));
            }
            format!(" WHERE ({order}) > ({})", literals.join(", "))
        }
    };
    Ok(format!("{}{range} ORDER BY {order} LIMIT {limit}", view.select))
}
