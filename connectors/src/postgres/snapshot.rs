//! The initial snapshot of a PostgreSQL source: every captured table's rows
//! as of the slot's consistent point, read through the snapshot the slot
//! exported when it was created — the [`SnapshotSource`] of the PostgreSQL
//! connector.
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
//! source is [`SnapshotSource::single_view`]: the whole copy goes into the
//! log before the first streamed transaction, and there is no view for a
//! later snapshot (operator requests are refused).
//!
//! # Chunks
//! A table with a primary key is read through a cursor ordered by that key
//! (`DECLARE … CURSOR FOR SELECT … ORDER BY <key>`, `FETCH <chunk_rows>`), so
//! each chunk is a key range and its mark carries the last key. A table
//! without one is read through a cursor in physical order, each `FETCH` one
//! piece of the table copied whole. The list of tables and their
//! definitions are read in the same snapshot: the catalog as of the start
//! position.
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

#[cfg(doc)]
use super::capture::PostgresSource;
use super::capture::{catalog as driver, quote_ident, quote_literal};
use super::capture::{
    describe_relation, Export, ExportedSnapshot, PostgresCaptureError, PostgresSourceConfig, RelPlan,
    SnapshotExport, CONNECT_TIMEOUT, STREAM_SETTINGS,
};
use super::pgoutput::{Relation, RelationColumn};
use pipeline::event::Row;
use pipeline::filter::TableFilter;
use pipeline::retry::ErrorClass;
use pipeline::schema::TableId;
use pipeline::snapshot::{ChunkKey, ChunkReader, ReadView, SnapshotSource};
use pipeline::{Position, Value};
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The cursor each reader reads its table through.
const CURSOR: &str = "dbmux_snapshot";

/// Copies a PostgreSQL source's tables with the slot's exported snapshot.
pub struct PostgresSnapshots {
    config: PostgresSourceConfig,
    filter: TableFilter,
    pg: tokio_postgres::Config,
    export: SnapshotExport,
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
        let what = format!(
            "connecting to {} for the initial snapshot",
            self.config.redacted_url()
        );
        let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, self.pg.connect(NoTls))
            .await
            .map_err(|_| PostgresCaptureError::Catalog {
                context: what.clone(),
                message: "timed out".into(),
                class: ErrorClass::Transient,
            })?
            .map_err(driver(what))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "snapshot connection closed");
            }
        });
        let mut setup: Vec<String> = STREAM_SETTINGS
            .iter()
            .filter(|(k, _)| *k != "application_name")
            .map(|(k, v)| format!("SET {k} = {}", quote_literal(v)))
            .collect();
        setup.push("SET application_name = 'dbmux-snapshot'".into());
        setup.push("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".into());
        setup.push(format!(
            "SET TRANSACTION SNAPSHOT {}",
            quote_literal(&exported.name)
        ));
        match client.batch_execute(&setup.join("; ")).await {
            Ok(()) => Ok((client, exported)),
            // 22023: the snapshot no longer exists (capture started
            // streaming, or the creating connection died).
            Err(e) if e.code().is_some_and(|c| c.code() == "22023") => {
                Err(PostgresCaptureError::SnapshotGone)
            }
            Err(e) => Err(driver("importing the slot's exported snapshot")(e)),
        }
    }
}

impl SnapshotSource for PostgresSnapshots {
    type Error = PostgresCaptureError;
    type Reader = PostgresChunkReader;

    /// The publication's tables that `include`/`exclude` select, as of the
    /// start position, with the planner's row estimates.
    async fn tables(&self) -> Result<Vec<(TableId, u64)>, PostgresCaptureError> {
        let (client, _) = self.connect_in_view().await?;
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
        let (client, exported) = self.connect_in_view().await?;
        Ok(PostgresChunkReader {
            client,
            lsn: exported.lsn,
            view: None,
            used: false,
        })
    }

    fn single_view(&self) -> bool {
        true
    }
}

/// The open cursor over one table.
struct View {
    table: TableId,
    plan: Arc<RelPlan>,
    key: Vec<usize>,
    /// The key of the last row handed out.
    last_key: Option<Row>,
}

/// One connection, in one transaction with the exported snapshot, reading
/// one table.
pub struct PostgresChunkReader {
    client: Client,
    lsn: u64,
    view: Option<View>,
    /// A table was read in this transaction already (a reader serves one).
    used: bool,
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
        if std::mem::replace(&mut self.used, true) {
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
            "DECLARE {CURSOR} NO SCROLL CURSOR FOR SELECT {} FROM {}.{}{order}",
            if columns.is_empty() {
                "NULL".to_string()
            } else {
                columns.join(", ")
            },
            quote_ident(&table.schema),
            quote_ident(&table.name),
        );
        self.client
            .batch_execute(&select)
            .await
            .map_err(driver(format!("opening a cursor over {table}")))?;
        let plan = Arc::new(plan);
        let schema = plan.schema.clone();
        self.view = Some(View {
            table: table.clone(),
            plan,
            key: key.clone(),
            last_key: None,
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
        if !view.key.is_empty() && after != view.last_key.as_deref() {
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
            .simple_query(&format!("FETCH FORWARD {limit} FROM {CURSOR}"))
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
