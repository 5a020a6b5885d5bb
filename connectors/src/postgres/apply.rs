//! The PostgreSQL applier: a [`Sink`] that writes change events into a
//! PostgreSQL database.
//!
//! # Where tables go
//! The URL names the database. A source table `db.table` becomes
//! `"db"."table"` (schema named after the source database) unless `schema` is
//! configured, in which case every table goes into that one schema. Missing
//! schemas and tables are created from the event's table definition.
//!
//! # Exactly once
//! Each [`Sink::apply`] call is one target transaction: `BEGIN` →
//! `SELECT seq … FOR UPDATE` on this applier's row of `dbmux.dbmux_offsets` →
//! the data statements → `UPDATE dbmux_offsets SET seq = <last seq>` →
//! `COMMIT`. Events at or below the stored `seq` are skipped, so a batch
//! retried after an ambiguous commit failure is never applied twice.
//!
//! # Offsets table
//! ```sql
//! CREATE SCHEMA IF NOT EXISTS "dbmux";
//! CREATE TABLE IF NOT EXISTS "dbmux"."dbmux_offsets" (
//!   consumer text PRIMARY KEY, seq bigint NOT NULL, position text,
//!   updated_at timestamptz NOT NULL DEFAULT now());
//! ```
//! (schema configurable with `offsets_schema`).
//!
//! # Reconnection
//! Any error rolls back and drops the connection; the next `open` or `apply`
//! connects again and re-reads the offset. Prepared statements belong to a
//! connection and are forgotten with it.

use super::apply_sql::{self as sql, ZeroDates};
use pipeline::batch::{self, Action, PlanError};
use pipeline::event::{Row, Transaction};
use pipeline::retry::{Classify, ErrorClass};
use pipeline::schema::{TableId, TableSchema};
use pipeline::secret::redact_url;
use pipeline::sink::Sink;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

/// Default schema of `dbmux_offsets`.
pub const DEFAULT_OFFSETS_SCHEMA: &str = "dbmux";
/// The offsets table's name.
pub const OFFSETS_TABLE: &str = "dbmux_offsets";
/// Default rows per statement (one array parameter per column, so no
/// parameter-count limit applies).
pub const DEFAULT_MAX_ROWS_PER_STATEMENT: usize = 5000;
/// Default approximate bytes of values per statement.
pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 16 << 20;
/// Prepared statements kept per connection before the cache is reset.
const STMT_CACHE_SIZE: usize = 512;

/// `[replica.postgres]`: where and how to apply.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Put every table into this schema. Default: the schema named after the
    /// table's source database (`app.orders` → `"app"."orders"`).
    #[serde(default)]
    pub schema: Option<String>,
    /// Schema holding `dbmux_offsets`.
    #[serde(default = "default_offsets_schema")]
    pub offsets_schema: String,
    /// Rows per statement.
    #[serde(default = "default_max_rows")]
    pub max_rows_per_statement: usize,
    /// Approximate bytes of values per statement.
    #[serde(default = "default_max_bytes")]
    pub max_statement_bytes: usize,
    /// Source transactions per target transaction; 0 = all transactions of one
    /// `apply` call in one target transaction (see the MySQL sink's field).
    #[serde(default)]
    pub max_transactions_per_commit: usize,
    /// What to write for MySQL zero dates: `error` (default), `neg_infinity`, `null`.
    #[serde(default)]
    pub zero_dates: ZeroDates,
}

fn default_offsets_schema() -> String {
    DEFAULT_OFFSETS_SCHEMA.into()
}
fn default_max_rows() -> usize {
    DEFAULT_MAX_ROWS_PER_STATEMENT
}
fn default_max_bytes() -> usize {
    DEFAULT_MAX_STATEMENT_BYTES
}

impl PostgresSinkConfig {
    /// A configuration with defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            offsets_schema: default_offsets_schema(),
            max_rows_per_statement: DEFAULT_MAX_ROWS_PER_STATEMENT,
            max_statement_bytes: DEFAULT_MAX_STATEMENT_BYTES,
            max_transactions_per_commit: 0,
            zero_dates: ZeroDates::Error,
        }
    }

    /// Every problem, each prefixed with its field path.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            p.push(format!(
                "url: {:?} must start with postgres:// or postgresql://",
                redact_url(&self.url)
            ));
        } else if let Err(e) = self.url.parse::<tokio_postgres::Config>() {
            p.push(format!(
                "url: {:?} is not a valid PostgreSQL URL: {e}",
                redact_url(&self.url)
            ));
        }
        if let Some(s) = &self.schema {
            if let Err(e) = sql::quote_ident(s) {
                p.push(format!("schema: {e}"));
            }
        }
        if let Err(e) = sql::quote_ident(&self.offsets_schema) {
            p.push(format!("offsets_schema: {e}"));
        }
        if self.max_rows_per_statement == 0 {
            p.push("max_rows_per_statement: must be > 0".into());
        }
        if self.max_statement_bytes < 1024 {
            p.push(format!(
                "max_statement_bytes: {} must be at least 1024",
                self.max_statement_bytes
            ));
        }
        p
    }

    /// The target schema for a source database.
    pub fn target_schema<'a>(&'a self, source_database: &'a str) -> &'a str {
        self.schema.as_deref().unwrap_or(source_database)
    }
}

impl fmt::Debug for PostgresSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSinkConfig")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("offsets_schema", &self.offsets_schema)
            .field("max_rows_per_statement", &self.max_rows_per_statement)
            .field("max_statement_bytes", &self.max_statement_bytes)
            .field("max_transactions_per_commit", &self.max_transactions_per_commit)
            .field("zero_dates", &self.zero_dates)
            .finish()
    }
}

/// Why applying to a PostgreSQL replica failed.
#[derive(Debug, thiserror::Error)]
pub enum PostgresApplyError {
    #[error("PostgreSQL replica, {context}: {}", describe(source))]
    Driver {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{table}.{column}: {message}")]
    Value {
        table: String,
        column: String,
        message: String,
    },
    #[error("cannot create or use {table}: {message}")]
    Table { table: String, message: String },
    #[error(
        "replica diverged: {table} (no primary key) has no row equal to the before image of the {op} \
         of event seq {seq}; compare the table with the source and re-seed it"
    )]
    Diverged {
        table: String,
        op: &'static str,
        seq: u64,
    },
    #[error("{table} has no row for consumer {consumer:?}; it was deleted while dbmux ran")]
    OffsetRowMissing { table: String, consumer: String },
    #[error(
        "events would skip seq {missing}: the replica has applied up to {applied} and the next event given is {next}"
    )]
    Gap { applied: u64, next: u64, missing: u64 },
}

impl Classify for PostgresApplyError {
    fn class(&self) -> ErrorClass {
        match self {
            PostgresApplyError::Driver { source, .. } => classify_driver(source),
            _ => ErrorClass::Definite,
        }
    }
}

/// Lost connections, server shutdowns, serialization failures, deadlocks,
/// lock and statement timeouts and resource shortages are transient; what the
/// server says about data or statements is definite.
pub fn classify_driver(e: &tokio_postgres::Error) -> ErrorClass {
    if e.is_closed() {
        return ErrorClass::Transient;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        return if c.starts_with("08")
            || c.starts_with("53")
            || matches!(
                c,
                "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "57P05"
            ) {
            ErrorClass::Transient
        } else {
            ErrorClass::Definite
        };
    }
    // No SQLSTATE: connecting failed, or I/O on an established connection.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return ErrorClass::Transient;
        }
        source = s.source();
    }
    if e.to_string().contains("error connecting") || e.to_string().contains("timed out") {
        ErrorClass::Transient
    } else {
        ErrorClass::Definite
    }
}

/// The server's message and SQLSTATE when there is one (tokio-postgres
/// displays only "db error" for those).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            s
        }
        None => e.to_string(),
    }
}

type Result<T, E = PostgresApplyError> = std::result::Result<T, E>;

fn driver(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PostgresApplyError {
    let context = context.into();
    move |source| PostgresApplyError::Driver { context, source }
}

/// A parameter in text format: PostgreSQL parses it with the type's own
/// input function (for arrays, `array_in` then each element's).
#[derive(Debug)]
struct TextParam(Option<String>);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(s) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Per source table definition: where it goes and its statements.
struct TableSql {
    target_text: String,
    statements: sql::TableStatements,
}

/// An open connection and what is prepared on it.
struct Connection {
    client: Client,
    task: tokio::task::JoinHandle<()>,
    prepared: HashMap<String, Statement>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies change events to a PostgreSQL database.
pub struct PostgresSink {
    name: String,
    config: PostgresSinkConfig,
    conn: Option<Connection>,
    applied: u64,
    /// Target tables known to exist, with each column's type name (no type modifier).
    known_tables: HashMap<TableId, HashMap<String, String>>,
    tables: HashMap<Arc<TableSchema>, Arc<TableSql>>,
    offsets_table: String,
}

impl PostgresSink {
    /// A sink for replica `name` (its key in `dbmux_offsets`). Connects on `open`.
    pub fn new(name: &str, config: PostgresSinkConfig) -> Self {
        let offsets_table = format!(
            "{}.{}",
            sql::quote_ident(&config.offsets_schema).unwrap_or_else(|_| "\"dbmux\"".into()),
            sql::quote_ident(OFFSETS_TABLE).expect("valid name")
        );
        Self {
            name: name.to_string(),
            config,
            conn: None,
            applied: 0,
            known_tables: HashMap::new(),
            tables: HashMap::new(),
            offsets_table,
        }
    }

    /// The offset as of the last `open` or successful `apply`.
    pub fn applied_seq(&self) -> u64 {
        self.applied
    }

    pub fn config(&self) -> &PostgresSinkConfig {
        &self.config
    }

    async fn connect(&mut self) -> Result<()> {
        self.conn = None;
        let (client, connection) = tokio_postgres::connect(&self.config.url, NoTls)
            .await
            .map_err(driver("connecting"))?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL replica connection ended");
            }
        });
        let conn = Connection {
            client,
            task,
            prepared: HashMap::new(),
        };
        conn.client
            .batch_execute(sql::SESSION_SETUP)
            .await
            .map_err(driver("setting up the session"))?;
        let schema =
            sql::quote_ident(&self.config.offsets_schema).map_err(|message| PostgresApplyError::Table {
                table: self.offsets_table.clone(),
                message,
            })?;
        ddl(
            &conn.client,
            &format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
            "creating the offsets schema",
        )
        .await?;
        ddl(
            &conn.client,
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (consumer text PRIMARY KEY, seq bigint NOT NULL, \
                 position text, updated_at timestamptz NOT NULL DEFAULT now())",
                self.offsets_table
            ),
            "creating the offsets table",
        )
        .await?;
        conn.client
            .execute(
                &format!(
                    "INSERT INTO {} (consumer, seq) VALUES ($1, 0) ON CONFLICT (consumer) DO NOTHING",
                    self.offsets_table
                ),
                &[&self.name],
            )
            .await
            .map_err(driver("registering in the offsets table"))?;
        let row = conn
            .client
            .query_opt(
                &format!("SELECT seq FROM {} WHERE consumer = $1", self.offsets_table),
                &[&self.name],
            )
            .await
            .map_err(driver("reading the offset"))?;
        let seq: i64 = row.ok_or_else(|| self.offset_missing())?.get(0);
        self.applied = seq as u64;
        self.conn = Some(conn);
        Ok(())
    }

    fn offset_missing(&self) -> PostgresApplyError {
        PostgresApplyError::OffsetRowMissing {
            table: format!("{}.{}", self.config.offsets_schema, OFFSETS_TABLE),
            consumer: self.name.clone(),
        }
    }

    fn target(&self, schema: &TableSchema) -> TableId {
        TableId::new(
            self.config.target_schema(&schema.id.schema),
            schema.id.name.clone(),
        )
    }

    /// Creates missing schemas and tables (outside the data transaction, so a
    /// failed batch does not undo them, which is harmless) and learns the
    /// target column types of every table the batch touches.
    async fn ensure_tables(&mut self, txns: &[Transaction]) -> Result<()> {
        let mut seen: HashSet<usize> = HashSet::new();
        for ev in txns.iter().flat_map(|t| &t.events) {
            if ev.seq <= self.applied
                || matches!(ev.op, pipeline::Op::Ddl { .. })
                || !seen.insert(Arc::as_ptr(&ev.table) as usize)
                || (self.tables.contains_key(&ev.table) && !ev.table.columns_unknown())
            {
                continue;
            }
            let target = self.target(&ev.table);
            let table_err = |message: String| PostgresApplyError::Table {
                table: target.to_string(),
                message,
            };
            if ev.table.columns_unknown() {
                // A TRUNCATE of a table capture has no definition for (its first
                // event after a restart, or a table created while dbmux runs):
                // truncate it if the replica has it; a missing table is empty.
                let client = &self.conn.as_ref().expect("connected").client;
                let exists = read_columns(client, &target).await?.is_some();
                let statements = sql::TableStatements::truncate_only(&target, exists).map_err(table_err)?;
                self.tables.insert(
                    ev.table.clone(),
                    Arc::new(TableSql {
                        target_text: target.to_string(),
                        statements,
                    }),
                );
                continue;
            }
            if !self.known_tables.contains_key(&target) {
                let create = sql::create_table_sql(&target, &ev.table).map_err(|(column, m)| {
                    table_err(if column.is_empty() {
                        m
                    } else {
                        format!("column {column}: {m}")
                    })
                })?;
                let client = &self.conn.as_ref().expect("connected").client;
                let schema = sql::quote_ident(&target.schema).map_err(table_err)?;
                ddl(
                    client,
                    &format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
                    &format!("creating schema {}", target.schema),
                )
                .await?;
                ddl(client, &create, &format!("creating table {target}")).await?;
                let columns = read_columns(client, &target)
                    .await?
                    .ok_or_else(|| table_err("it does not exist right after CREATE TABLE".into()))?;
                if let Some((name, _)) = columns.iter().find(|(_, (_, category))| category == "A") {
                    return Err(table_err(format!(
                        "column {name} is an array, which dbmux does not write"
                    )));
                }
                let columns = columns.into_iter().map(|(n, (ty, _))| (n, ty)).collect();
                self.known_tables.insert(target.clone(), columns);
            }
            let columns = &self.known_tables[&target];
            let types = ev
                .table
                .columns
                .iter()
                .map(|c| {
                    columns.get(&c.name).cloned().ok_or_else(|| {
                        table_err(format!(
                            "it has no column {:?} (schema changes are not replicated yet)",
                            c.name
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let statements = sql::table_statements(&target, &ev.table, &types).map_err(table_err)?;
            self.tables.insert(
                ev.table.clone(),
                Arc::new(TableSql {
                    target_text: target.to_string(),
                    statements,
                }),
            );
        }
        Ok(())
    }

    async fn apply_group(&mut self, txns: &[Transaction]) -> Result<()> {
        let mut conn = self.conn.take().expect("connected");
        match self.apply_in(&mut conn, txns).await {
            Ok(applied) => {
                self.applied = applied;
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                let _ = conn.client.batch_execute("ROLLBACK").await;
                drop(conn);
                self.known_tables.clear();
                self.tables.clear();
                Err(e)
            }
        }
    }

    async fn apply_in(&self, conn: &mut Connection, txns: &[Transaction]) -> Result<u64> {
        conn.client
            .batch_execute("BEGIN")
            .await
            .map_err(driver("starting a transaction"))?;
        let lock = format!(
            "SELECT seq FROM {} WHERE consumer = $1 FOR UPDATE",
            self.offsets_table
        );
        let stmt = prepare(conn, &lock).await?;
        let row = conn
            .client
            .query_opt(&stmt, &[&self.name])
            .await
            .map_err(driver("locking the offset"))?;
        let applied = row.ok_or_else(|| self.offset_missing())?.get::<_, i64>(0) as u64;
        let plan = batch::plan(txns, applied)?;
        let Some(last) = plan.last_seq else {
            conn.client
                .batch_execute("COMMIT")
                .await
                .map_err(driver("committing"))?;
            return Ok(applied);
        };
        let first = txns
            .iter()
            .flat_map(|t| &t.events)
            .map(|e| e.seq)
            .find(|&s| s > applied)
            .unwrap_or(last);
        if applied > 0 && first > applied + 1 {
            return Err(PostgresApplyError::Gap {
                applied,
                next: first,
                missing: applied + 1,
            });
        }
        for step in &plan.steps {
            let t = self
                .tables
                .get(step.table)
                .cloned()
                .ok_or_else(|| PostgresApplyError::Table {
                    table: step.table.id.to_string(),
                    message: "table was not prepared".into(),
                })?;
            let s = &t.statements;
            match &step.action {
                Action::Upsert(rows) | Action::Delete(rows) | Action::Insert(rows) => {
                    let (text, cols, what): (&str, Vec<usize>, &str) = match &step.action {
                        Action::Upsert(_) => (
                            &s.upsert,
                            (0..step.table.columns.len()).collect(),
                            "upserting into",
                        ),
                        Action::Delete(_) => (&s.delete, step.table.primary_key.clone(), "deleting from"),
                        _ => (
                            &s.insert,
                            (0..step.table.columns.len()).collect(),
                            "inserting into",
                        ),
                    };
                    let stmt = prepare(conn, text).await?;
                    for chunk in batch::chunks(
                        rows,
                        self.config.max_rows_per_statement,
                        self.config.max_statement_bytes,
                    ) {
                        let params = self.array_params(step.table, &t.target_text, chunk, &cols)?;
                        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
                        conn.client
                            .execute(&stmt, &refs)
                            .await
                            .map_err(driver(format!("{what} {}", t.target_text)))?;
                    }
                }
                Action::UpdateOne { seq, before, after } => {
                    let stmt = prepare(conn, &s.update_one).await?;
                    let mut params = self.row_params(step.table, &t.target_text, after)?;
                    params.extend(self.row_params(step.table, &t.target_text, before)?);
                    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
                    let n = conn
                        .client
                        .execute(&stmt, &refs)
                        .await
                        .map_err(driver(format!("updating {}", t.target_text)))?;
                    if n != 1 {
                        return Err(PostgresApplyError::Diverged {
                            table: t.target_text.clone(),
                            op: "update",
                            seq: *seq,
                        });
                    }
                }
                Action::DeleteOne { seq, before } => {
                    let stmt = prepare(conn, &s.delete_one).await?;
                    let params = self.row_params(step.table, &t.target_text, before)?;
                    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
                    let n = conn
                        .client
                        .execute(&stmt, &refs)
                        .await
                        .map_err(driver(format!("deleting from {}", t.target_text)))?;
                    if n != 1 {
                        return Err(PostgresApplyError::Diverged {
                            table: t.target_text.clone(),
                            op: "delete",
                            seq: *seq,
                        });
                    }
                }
                Action::Truncate if s.truncate.is_empty() => {} // the replica has no such table
                Action::Truncate => {
                    conn.client
                        .batch_execute(&s.truncate)
                        .await
                        .map_err(driver(format!("truncating {}", t.target_text)))?;
                }
            }
        }
        let position = txns
            .iter()
            .rev()
            .flat_map(|t| t.events.iter().rev())
            .find(|e| e.seq == last)
            .map(|e| e.position.to_string());
        let update = format!(
            "UPDATE {} SET seq = $1, position = $2, updated_at = now() WHERE consumer = $3",
            self.offsets_table
        );
        let stmt = prepare(conn, &update).await?;
        let last_i64 = i64::try_from(last).map_err(|_| PostgresApplyError::Table {
            table: self.offsets_table.clone(),
            message: format!("seq {last} does not fit in bigint"),
        })?;
        conn.client
            .execute(&stmt, &[&last_i64, &position, &self.name])
            .await
            .map_err(driver("writing the offset"))?;
        conn.client
            .batch_execute("COMMIT")
            .await
            .map_err(driver("committing"))?;
        Ok(last)
    }

    fn value_err(table: &str, col: &str) -> impl FnOnce(String) -> PostgresApplyError {
        let (table, column) = (table.to_string(), col.to_string());
        move |message| PostgresApplyError::Value {
            table,
            column,
            message,
        }
    }

    /// One array literal per column in `cols`, holding that column of every row.
    fn array_params(
        &self,
        table: &TableSchema,
        target: &str,
        rows: &[&Row],
        cols: &[usize],
    ) -> Result<Vec<TextParam>> {
        let mut out = Vec::with_capacity(cols.len());
        for &i in cols {
            let col = &table.columns[i];
            let mut a = String::with_capacity(2 + rows.len() * 8);
            a.push('{');
            for row in rows {
                let text = sql::to_text(&row[i], col, self.config.zero_dates)
                    .map_err(Self::value_err(target, &col.name))?;
                sql::push_array_element(&mut a, text.as_deref());
            }
            a.push('}');
            out.push(TextParam(Some(a)));
        }
        Ok(out)
    }

    fn row_params(&self, table: &TableSchema, target: &str, row: &Row) -> Result<Vec<TextParam>> {
        table
            .columns
            .iter()
            .zip(row)
            .map(|(col, v)| {
                sql::to_text(v, col, self.config.zero_dates)
                    .map(TextParam)
                    .map_err(Self::value_err(target, &col.name))
            })
            .collect()
    }
}

/// The columns of `target` (name → qualified type name and type category),
/// `None` when the table does not exist.
async fn read_columns(
    client: &Client,
    target: &TableId,
) -> Result<Option<HashMap<String, (String, String)>>> {
    let rows = client
        .query(
            "SELECT a.attname::text, format('%I.%I', tn.nspname, t.typname), t.typcategory::text \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_namespace tn ON tn.oid = t.typnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&target.schema, &target.name],
        )
        .await
        .map_err(driver(format!("reading the columns of {target}")))?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.into_iter()
            .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
            .collect(),
    ))
}

/// Runs idempotent DDL; a concurrent creator of the same object makes the
/// first attempt fail with a duplicate error, and the retry then sees it.
async fn ddl(client: &Client, statement: &str, context: &str) -> Result<()> {
    match client.batch_execute(statement).await {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.code().map(|c| c.code()),
                Some("23505" | "42P06" | "42P07" | "42710")
            ) =>
        {
            client.batch_execute(statement).await.map_err(driver(context))
        }
        Err(e) => Err(driver(context)(e)),
    }
}

async fn prepare(conn: &mut Connection, text: &str) -> Result<Statement> {
    if let Some(s) = conn.prepared.get(text) {
        return Ok(s.clone());
    }
    let stmt = conn
        .client
        .prepare(text)
        .await
        .map_err(driver(format!("preparing {}", first_words(text))))?;
    if conn.prepared.len() >= STMT_CACHE_SIZE {
        conn.prepared.clear();
    }
    conn.prepared.insert(text.to_string(), stmt.clone());
    Ok(stmt)
}

fn first_words(s: &str) -> String {
    s.chars().take(80).collect()
}

impl Sink for PostgresSink {
    type Error = PostgresApplyError;

    async fn open(&mut self) -> Result<u64> {
        self.tables.clear();
        self.connect().await?;
        Ok(self.applied)
    }

    async fn apply(&mut self, txns: &[Transaction]) -> Result<()> {
        if self.conn.is_none() {
            self.tables.clear();
            self.connect().await?;
        }
        if let Err(e) = self.ensure_tables(txns).await {
            self.conn = None;
            self.known_tables.clear();
            self.tables.clear();
            return Err(e);
        }
        let group = match self.config.max_transactions_per_commit {
            0 => txns.len().max(1),
            n => n,
        };
        for part in txns.chunks(group) {
            if self.conn.is_none() {
                self.connect().await?;
                self.ensure_tables(part).await?;
            }
            self.apply_group(part).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_validation_and_redaction() {
        let c: PostgresSinkConfig =
            serde_json::from_str(r#"{"url": "postgres://u:secret@h:5432/app"}"#).unwrap();
        assert_eq!(c.offsets_schema, "dbmux");
        assert_eq!(c.zero_dates, ZeroDates::Error);
        assert_eq!(c.target_schema("app"), "app");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret") && dbg.contains("***"), "{dbg}");
        let err = serde_json::from_str::<PostgresSinkConfig>(r#"{"url": "postgres://h/a", "shema": "x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("shema"), "{err}");
        let c: PostgresSinkConfig = serde_json::from_str(
            r#"{"url": "mysql://u:secret@h/app", "schema": "", "offsets_schema": "", "max_rows_per_statement": 0,
                "max_statement_bytes": 1, "zero_dates": "neg_infinity"}"#,
        )
        .unwrap();
        assert_eq!(c.zero_dates, ZeroDates::NegInfinity);
        let problems = c.validate();
        for field in [
            "url:",
            "schema:",
            "offsets_schema:",
            "max_rows_per_statement:",
            "max_statement_bytes:",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field} in {problems:?}"
            );
        }
        assert!(!problems.iter().any(|p| p.contains("secret")), "{problems:?}");
        let fixed = PostgresSinkConfig {
            schema: Some("replica".into()),
            ..PostgresSinkConfig::new("postgres://h/app")
        };
        assert_eq!(fixed.target_schema("app"), "replica");
        assert!(serde_json::from_str::<PostgresSinkConfig>(
            r#"{"url": "postgres://h/a", "zero_dates": "zero"}"#
        )
        .is_err());
    }
}
