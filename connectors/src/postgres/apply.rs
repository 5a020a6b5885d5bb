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
use pipeline::batch::{self, Action, PlanError, PlanOptions};
use pipeline::cascade::{CascadeError, CascadeStore, Skip};
use pipeline::event::{Row, Transaction};
use pipeline::replica::Quarantine;
use pipeline::retry::{Classify, ErrorClass};
use pipeline::schema::{TableId, TableSchema};
use pipeline::secret::redact_url;
use pipeline::sink::{Opened, Sink, TableScoped};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

/// Default schema of `dbmux_offsets`.
pub const DEFAULT_OFFSETS_SCHEMA: &str = "dbmux";
/// The offsets table's name.
pub const OFFSETS_TABLE: &str = "dbmux_offsets";
/// The quarantine table's name (beside the offsets table).
pub const QUARANTINE_TABLE: &str = "dbmux_quarantine";
/// Tables waiting for a snapshot's first chunk (beside the offsets table).
pub const SNAPSHOT_TABLE: &str = "dbmux_snapshot";
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
    /// Source table `db.table` → replica table name, for names PostgreSQL
    /// cannot hold (or that you want otherwise).
    #[serde(default)]
    pub rename_tables: BTreeMap<String, String>,
    /// Source table `db.table` → { source column → replica column }.
    #[serde(default)]
    pub rename_columns: BTreeMap<String, BTreeMap<String, String>>,
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
            rename_tables: BTreeMap::new(),
            rename_columns: BTreeMap::new(),
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
        for (from, to) in &self.rename_tables {
            if !from.contains('.') {
                p.push(format!(
                    "rename_tables.{from:?}: the key must be `database.table`"
                ));
            }
            if let Err(e) = sql::quote_ident(to) {
                p.push(format!("rename_tables.{from:?}: {e}"));
            }
        }
        for (table, cols) in &self.rename_columns {
            if !table.contains('.') {
                p.push(format!(
                    "rename_columns.{table:?}: the key must be `database.table`"
                ));
            }
            let mut seen = HashSet::new();
            for (from, to) in cols {
                if let Err(e) = sql::quote_ident(to) {
                    p.push(format!("rename_columns.{table:?}.{from:?}: {e}"));
                } else if sql::is_system_column(to) {
                    p.push(format!(
                        "rename_columns.{table:?}.{from:?}: {to:?} is a PostgreSQL system column name"
                    ));
                }
                if !seen.insert(to) {
                    p.push(format!(
                        "rename_columns.{table:?}.{from:?}: {to:?} is the target of another column too"
                    ));
                }
            }
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

    /// The replica table for a source table: the configured rename, else the
    /// name PostgreSQL can hold (see [`sql::pg_name`]).
    pub fn target_table(&self, source: &TableId) -> TableId {
        let name = match self.rename_tables.get(&source.to_string()) {
            Some(n) => n.clone(),
            None => sql::pg_name(&source.name),
        };
        TableId::new(sql::pg_name(self.target_schema(&source.schema)), name)
    }

    /// The replica column for a source column: the configured rename, else a
    /// name PostgreSQL can hold (system column names get a `_` appended).
    pub fn target_column(&self, table: &TableId, column: &str) -> String {
        if let Some(n) = self
            .rename_columns
            .get(&table.to_string())
            .and_then(|m| m.get(column))
        {
            return n.clone();
        }
        if sql::is_system_column(column) {
            return sql::pg_name(&format!("{column}_"));
        }
        sql::pg_name(column)
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
            .field("rename_tables", &self.rename_tables)
            .field("rename_columns", &self.rename_columns)
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
    #[error("cannot apply the schema change `{statement}` to {table} on the PostgreSQL replica: {message}")]
    Ddl {
        table: String,
        statement: String,
        message: String,
    },
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
    #[error("{0}")]
    Internal(String),
    /// A definite error while applying one source table's events.
    #[error("{source}")]
    InTable {
        table: TableId,
        source: Box<PostgresApplyError>,
    },
}

impl PostgresApplyError {
    /// Ties a definite error to the source table whose step failed.
    fn in_table(self, table: &TableId) -> Self {
        match self {
            e @ PostgresApplyError::InTable { .. } => e,
            e if e.is_transient() => e,
            e => PostgresApplyError::InTable {
                table: table.clone(),
                source: Box::new(e),
            },
        }
    }

    /// A unique or foreign-key violation (23505, 23503): a set-based plan may
    /// cause one that source order does not.
    fn may_pass_in_source_order(&self) -> bool {
        match self {
            PostgresApplyError::InTable { source, .. } => source.may_pass_in_source_order(),
            PostgresApplyError::Driver { source, .. } => {
                matches!(source.code().map(|c| c.code()), Some("23505" | "23503"))
            }
            _ => false,
        }
    }
}

impl Classify for PostgresApplyError {
    fn class(&self) -> ErrorClass {
        match self {
            PostgresApplyError::Driver { source, .. } => classify_driver(source),
            PostgresApplyError::InTable { source, .. } => source.class(),
            _ => ErrorClass::Definite,
        }
    }
}

impl TableScoped for PostgresApplyError {
    fn table(&self) -> Option<&TableId> {
        match self {
            PostgresApplyError::InTable { table, .. } => Some(table),
            PostgresApplyError::Plan(p) => p.table(),
            _ => None,
        }
    }
}

/// What one target transaction does (see the MySQL sink's `Mode`).
#[derive(Clone, Copy)]
enum Mode<'a> {
    Stream {
        skip: &'a HashSet<TableId>,
    },
    Resume {
        table: &'a TableId,
        from: u64,
        next: Option<u64>,
    },
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
    /// Which source table each replica table receives (two never share one).
    targets: HashMap<TableId, TableId>,
    offsets_table: String,
    quarantine_table: String,
    snapshot_table: String,
}

impl PostgresSink {
    /// A sink for replica `name` (its key in `dbmux_offsets`). Connects on `open`.
    pub fn new(name: &str, config: PostgresSinkConfig) -> Self {
        let offsets_table = format!(
            "{}.{}",
            sql::quote_ident(&config.offsets_schema).unwrap_or_else(|_| "\"dbmux\"".into()),
            sql::quote_ident(OFFSETS_TABLE).expect("valid name")
        );
        let quarantine_table = format!(
            "{}.{}",
            sql::quote_ident(&config.offsets_schema).unwrap_or_else(|_| "\"dbmux\"".into()),
            sql::quote_ident(QUARANTINE_TABLE).expect("valid name")
        );
        let snapshot_table = format!(
            "{}.{}",
            sql::quote_ident(&config.offsets_schema).unwrap_or_else(|_| "\"dbmux\"".into()),
            sql::quote_ident(SNAPSHOT_TABLE).expect("valid name")
        );
        Self {
            name: name.to_string(),
            config,
            conn: None,
            applied: 0,
            known_tables: HashMap::new(),
            tables: HashMap::new(),
            targets: HashMap::new(),
            offsets_table,
            quarantine_table,
            snapshot_table,
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
        ddl(
            &conn.client,
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (consumer text NOT NULL, table_schema text NOT NULL, \
                 table_name text NOT NULL, first_seq bigint NOT NULL, reason text NOT NULL, \
                 since timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, table_schema, table_name))",
                self.quarantine_table
            ),
            "creating the quarantine table",
        )
        .await?;
        ddl(
            &conn.client,
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (consumer text NOT NULL, table_schema text NOT NULL, \
                 table_name text NOT NULL, run bigint NOT NULL, since timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (consumer, table_schema, table_name))",
                self.snapshot_table
            ),
            "creating the snapshot table",
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
        self.config.target_table(&schema.id)
    }

    /// `schema` with every column named as on the replica (renames applied);
    /// an error when two columns would get one name.
    fn renamed(&self, schema: &Arc<TableSchema>) -> std::result::Result<Arc<TableSchema>, String> {
        let mut t = (**schema).clone();
        let mut seen = HashSet::new();
        for c in &mut t.columns {
            let to = self.config.target_column(&schema.id, &c.name);
            if !seen.insert(to.clone()) {
                return Err(format!(
                    "two columns would be named {to:?} on PostgreSQL; rename one with rename_columns"
                ));
            }
            c.name = to;
        }
        Ok(Arc::new(t))
    }

    /// Creates missing schemas and tables (outside the data transaction, so a
    /// failed batch does not undo them, which is harmless) and learns the
    /// target column types of every table the batch touches.
    async fn ensure_tables(&mut self, txns: &[Transaction], mode: Mode<'_>) -> Result<()> {
        let mut seen: HashSet<usize> = HashSet::new();
        for ev in txns.iter().flat_map(|t| &t.events) {
            let wanted = match mode {
                Mode::Stream { skip } => ev.seq > self.applied && !skip.contains(&ev.table.id),
                Mode::Resume { table, from, .. } => ev.seq >= from && ev.table.id == *table,
            };
            if !wanted {
                continue;
            }
            match &ev.op {
                pipeline::Op::Snapshot(m) => {
                    if m.phase.recreates() {
                        self.recreate(&ev.table)
                            .await
                            .map_err(|e| e.in_table(&ev.table.id))?;
                    }
                    continue;
                }
                pipeline::Op::Ddl(_) => continue,
                _ => {}
            }
            if !seen.insert(Arc::as_ptr(&ev.table) as usize)
                || (self.tables.contains_key(&ev.table) && !ev.table.columns_unknown())
            {
                continue;
            }
            self.ensure_table(&ev.table)
                .await
                .map_err(|e| e.in_table(&ev.table.id))?;
        }
        Ok(())
    }

    /// A snapshot's first chunk: the replica table is dropped and created
    /// again from the definition at the chunk's position (before the data
    /// transaction, like any table creation; running it twice is harmless).
    async fn recreate(&mut self, source: &Arc<TableSchema>) -> Result<()> {
        let target = self.target(source);
        let table_err = |message: String| PostgresApplyError::Table {
            table: target.to_string(),
            message,
        };
        let renamed = self.renamed(source).map_err(table_err)?;
        let statements =
            super::ddl::create_statements(&target, &renamed, source, &self.config).map_err(table_err)?;
        let client = &self.conn.as_ref().expect("connected").client;
        ddl(
            client,
            &format!(
                "DROP TABLE IF EXISTS {}",
                sql::quote_table(&target).map_err(table_err)?
            ),
            &format!("dropping {target} to reload it"),
        )
        .await?;
        for s in statements {
            ddl(client, &s, &format!("creating table {target}")).await?;
        }
        self.known_tables.remove(&target);
        self.tables.retain(|k, _| k.id != source.id);
        if let Some(c) = self.conn.as_mut() {
            c.prepared.clear();
        }
        self.ensure_table(source).await
    }

    async fn ensure_table(&mut self, source: &Arc<TableSchema>) -> Result<()> {
        let target = self.target(source);
        let table_err = |message: String| PostgresApplyError::Table {
            table: target.to_string(),
            message,
        };
        if target.schema == self.config.offsets_schema
            && [OFFSETS_TABLE, QUARANTINE_TABLE, SNAPSHOT_TABLE].contains(&target.name.as_str())
        {
            return Err(table_err(
                "it is one of dbmux's own tables (offsets_schema)".into(),
            ));
        }
        match self.targets.get(&target) {
            Some(other) if *other != source.id => {
                return Err(table_err(format!(
                    "it already receives source table {other}; {} cannot be written there too",
                    source.id
                )))
            }
            Some(_) => {}
            None => {
                self.targets.insert(target.clone(), source.id.clone());
            }
        }
        if source.columns_unknown() {
            // A TRUNCATE of a table capture has no definition for (its first
            // event after a restart, or a table created while dbmux runs):
            // truncate it if the replica has it; a missing table is empty.
            let client = &self.conn.as_ref().expect("connected").client;
            let exists = read_columns(client, &target).await?.is_some();
            let statements = sql::TableStatements::truncate_only(&target, exists).map_err(table_err)?;
            self.tables.insert(
                source.clone(),
                Arc::new(TableSql {
                    target_text: target.to_string(),
                    statements,
                }),
            );
            return Ok(());
        }
        if let Some(f) = pipeline::cascade::uncaptured_parent(source) {
            return Err(table_err(pipeline::cascade::uncaptured_parent_message(f)));
        }
        let renamed = self.renamed(source).map_err(table_err)?;
        if !self.known_tables.contains_key(&target) {
            let create = sql::create_table_sql(&target, &renamed).map_err(|(column, m)| {
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
            // An index on every foreign key's columns: the applier finds the
            // rows a cascade reaches by them (the source has one for each key).
            for f in &source.foreign_keys {
                let cols = f
                    .columns
                    .iter()
                    .map(|c| sql::quote_ident(&self.config.target_column(&source.id, c)))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(table_err)?;
                let index = sql::quote_ident(&sql::pg_name(&format!("{}_{}_fk", target.name, f.name)))
                    .map_err(table_err)?;
                ddl(
                    client,
                    &format!(
                        "CREATE INDEX IF NOT EXISTS {index} ON {} ({})",
                        sql::quote_table(&target).map_err(table_err)?,
                        cols.join(", ")
                    ),
                    &format!("indexing {target}"),
                )
                .await?;
            }
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
        let types = renamed
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
        let statements = sql::table_statements(&target, &renamed, &types).map_err(table_err)?;
        self.tables.insert(
            source.clone(),
            Arc::new(TableSql {
                target_text: target.to_string(),
                statements,
            }),
        );
        Ok(())
    }

    /// Applies `txns` in one target transaction as `mode` says; a set-based
    /// plan that trips a unique or foreign key is rolled back and applied
    /// again in source order.
    async fn apply_group(&mut self, txns: &[Transaction], mode: Mode<'_>) -> Result<()> {
        let mut conn = self.conn.take().expect("connected");
        let mut result = self.apply_in(&mut conn, txns, mode, false).await;
        if result
            .as_ref()
            .is_err_and(PostgresApplyError::may_pass_in_source_order)
        {
            let e = result.as_ref().expect_err("an error");
            tracing::info!(replica = %self.name, error = %e, "set-based batch broke a constraint; applying it in source order");
            let _ = conn.client.batch_execute("ROLLBACK").await;
            result = self.apply_in(&mut conn, txns, mode, true).await;
        }
        match result {
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

    async fn apply_in(
        &self,
        conn: &mut Connection,
        txns: &[Transaction],
        mode: Mode<'_>,
        source_order: bool,
    ) -> Result<u64> {
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
        let only: HashSet<TableId>;
        let options = match mode {
            Mode::Stream { skip } => PlanOptions {
                applied,
                skip: Some(skip),
                only: None,
                source_order,
            },
            Mode::Resume { table, from, .. } => {
                if let Some(e) = txns.iter().flat_map(|t| &t.events).find(|e| e.seq > applied) {
                    return Err(PostgresApplyError::Internal(format!(
                        "resuming {table}: event seq {} is beyond the replica's offset {applied}",
                        e.seq
                    )));
                }
                only = [table.clone()].into();
                PlanOptions {
                    applied: from.saturating_sub(1),
                    skip: None,
                    only: Some(&only),
                    source_order,
                }
            }
        };
        let plan = batch::plan_with(txns, &options)?;
        // Cascades leave quarantined tables alone; while resuming a table they
        // change that table only (see docs/operations.md).
        let skip: Box<Skip<'_>> = match mode {
            Mode::Stream { skip } => Box::new(move |t: &TableId| skip.contains(t)),
            Mode::Resume { table, .. } => Box::new(move |t: &TableId| t != table),
        };
        if let Mode::Resume { table, next, .. } = mode {
            for step in &plan.steps {
                self.run_step(conn, step, &*skip)
                    .await
                    .map_err(|e| e.in_table(&step.table.id))?;
            }
            let (sql, first): (String, Option<i64>) = match next {
                Some(n) => (
                    format!(
                        "UPDATE {} SET first_seq = $4 WHERE consumer = $1 AND table_schema = $2 AND table_name = $3",
                        self.quarantine_table
                    ),
                    Some(n as i64),
                ),
                None => (
                    format!(
                        "DELETE FROM {} WHERE consumer = $1 AND table_schema = $2 AND table_name = $3",
                        self.quarantine_table
                    ),
                    None,
                ),
            };
            let r = match first {
                Some(n) => {
                    conn.client
                        .execute(&sql, &[&self.name, &table.schema, &table.name, &n])
                        .await
                }
                None => {
                    conn.client
                        .execute(&sql, &[&self.name, &table.schema, &table.name])
                        .await
                }
            };
            r.map_err(driver("moving the quarantine"))?;
            conn.client
                .batch_execute("COMMIT")
                .await
                .map_err(driver("committing"))?;
            return Ok(applied);
        }
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
            self.run_step(conn, step, &*skip)
                .await
                .map_err(|e| e.in_table(&step.table.id))?;
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

    /// Executes one step of a plan inside the open transaction.
    async fn run_step(&self, conn: &mut Connection, step: &batch::Step<'_>, skip: &Skip<'_>) -> Result<()> {
        match &step.action {
            Action::Snapshot { seq, mark } => {
                return self.record_snapshot(conn, step.table, *seq, mark).await
            }
            Action::Ddl { change, .. } => {
                let renamed = self
                    .renamed(step.table)
                    .map_err(|message| PostgresApplyError::Table {
                        table: step.table.id.to_string(),
                        message,
                    })?;
                return super::ddl::apply(
                    &conn.client,
                    &self.config,
                    step.table,
                    &renamed,
                    change,
                    self.config.zero_dates,
                )
                .await
                .map_err(|e| match e {
                    super::ddl::DdlError::Transient(e) => driver("applying a schema change")(e),
                    super::ddl::DdlError::Refused(message) => PostgresApplyError::Ddl {
                        table: step.table.id.to_string(),
                        statement: change.statement.clone(),
                        message,
                    },
                });
            }
            _ => {}
        }
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
            Action::Load(rows) if rows.is_empty() => {}
            Action::Load(rows) => self.load(conn, step.table, &t, rows).await?,
            Action::Snapshot { .. } | Action::Ddl { .. } => unreachable!("handled above"),
            Action::Truncate if s.truncate.is_empty() => {} // the replica has no such table
            Action::Truncate => {
                conn.client
                    .batch_execute(&s.truncate)
                    .await
                    .map_err(driver(format!("truncating {}", t.target_text)))?;
            }
            Action::Cascade(change) => {
                let mut store = PgCascade {
                    conn,
                    config: &self.config,
                    types: HashMap::new(),
                };
                pipeline::cascade::cascade(&mut store, step.table, change, skip)
                    .await
                    .map_err(|e| match e {
                        CascadeError::Store(e) => e,
                        e => PostgresApplyError::Internal(e.to_string()),
                    })?;
            }
        }
        Ok(())
    }

    /// Rows of a snapshot chunk, with `COPY`: straight into the table when
    /// none of their keys is there yet (a table reloaded from its first
    /// chunk), else through a temporary table and an upsert (changes
    /// applied since the first chunk may have put some keys there).
    async fn load(
        &self,
        conn: &mut Connection,
        table: &TableSchema,
        t: &TableSql,
        rows: &[&Row],
    ) -> Result<()> {
        let mut data = Vec::with_capacity(rows.len() * 64);
        for row in rows {
            for (i, (col, v)) in table.columns.iter().zip(row.iter()).enumerate() {
                if i > 0 {
                    data.push(b'\t');
                }
                let text = sql::to_text(v, col, self.config.zero_dates)
                    .map_err(Self::value_err(&t.target_text, &col.name))?;
                sql::push_copy_field(&mut data, text.as_deref());
            }
            data.push(b'\n');
        }
        let s = &t.statements;
        let copy = format!("COPY {} ({}) FROM STDIN", t.target_text, s.columns);
        let context = || format!("loading snapshot rows into {}", t.target_text);
        if !table.has_primary_key() {
            return copy_in(&conn.client, &copy, &data)
                .await
                .map_err(driver(context()));
        }
        conn.client
            .batch_execute("SAVEPOINT dbmux_load")
            .await
            .map_err(driver(context()))?;
        match copy_in(&conn.client, &copy, &data).await {
            Ok(()) => conn
                .client
                .batch_execute("RELEASE SAVEPOINT dbmux_load")
                .await
                .map_err(driver(context())),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                conn.client
                    .batch_execute("ROLLBACK TO SAVEPOINT dbmux_load; RELEASE SAVEPOINT dbmux_load")
                    .await
                    .map_err(driver(context()))?;
                let stage = sql::quote_ident(&sql::pg_name(&format!("dbmux_stage_{}", t.target_text)))
                    .map_err(|message| PostgresApplyError::Table {
                        table: t.target_text.clone(),
                        message,
                    })?;
                conn.client
                    .batch_execute(&format!(
                        "CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {}) ON COMMIT DROP; TRUNCATE {stage}",
                        t.target_text
                    ))
                    .await
                    .map_err(driver(context()))?;
                copy_in(
                    &conn.client,
                    &format!("COPY {stage} ({}) FROM STDIN", s.columns),
                    &data,
                )
                .await
                .map_err(driver(context()))?;
                conn.client
                    .batch_execute(&format!(
                        "INSERT INTO {} ({cols}) SELECT {cols} FROM {stage}{}",
                        t.target_text,
                        s.on_conflict,
                        cols = s.columns
                    ))
                    .await
                    .map_err(driver(context()))
            }
            Err(e) => Err(driver(context())(e)),
        }
    }

    /// What a snapshot mark changes in the replica's own tables, inside the
    /// data transaction (see `pipeline::sink`).
    async fn record_snapshot(
        &self,
        conn: &mut Connection,
        table: &TableSchema,
        seq: u64,
        mark: &pipeline::snapshot::SnapshotMark,
    ) -> Result<()> {
        use pipeline::snapshot::SnapshotPhase;
        let id = &table.id;
        let c = &conn.client;
        let ctx = || driver(format!("recording the snapshot of {id}"));
        let delete = |t: &str| {
            format!("DELETE FROM {t} WHERE consumer = $1 AND table_schema = $2 AND table_name = $3")
        };
        match &mark.phase {
            SnapshotPhase::Begin { .. } => {
                c.execute(
                    &format!(
                        "INSERT INTO {} (consumer, table_schema, table_name, run) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (consumer, table_schema, table_name) DO UPDATE SET run = EXCLUDED.run, since = now()",
                        self.snapshot_table
                    ),
                    &[&self.name, &id.schema, &id.name, &(mark.id as i64)],
                )
                .await
                .map_err(ctx())?;
            }
            SnapshotPhase::Chunk { .. } => {
                if mark.phase.recreates() {
                    c.execute(
                        &delete(&self.quarantine_table),
                        &[&self.name, &id.schema, &id.name],
                    )
                    .await
                    .map_err(ctx())?;
                }
                if mark.phase.ends_pending() {
                    c.execute(&delete(&self.snapshot_table), &[&self.name, &id.schema, &id.name])
                        .await
                        .map_err(ctx())?;
                }
            }
            SnapshotPhase::End { reason } => {
                c.execute(&delete(&self.snapshot_table), &[&self.name, &id.schema, &id.name])
                    .await
                    .map_err(ctx())?;
                c.execute(
                    &format!(
                        "INSERT INTO {} (consumer, table_schema, table_name, first_seq, reason) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (consumer, table_schema, table_name) \
                         DO UPDATE SET first_seq = EXCLUDED.first_seq, reason = EXCLUDED.reason, since = now()",
                        self.quarantine_table
                    ),
                    &[&self.name, &id.schema, &id.name, &(seq as i64), reason],
                )
                .await
                .map_err(ctx())?;
            }
        }
        Ok(())
    }

    /// Bookkeeping of a schema-change transaction in dbmux's own tables (a
    /// dropped table's pending snapshot and quarantine end with it).
    async fn after_ddl(&self, conn: &Connection, txn: &Transaction, skip: &HashSet<TableId>) -> Result<()> {
        use pipeline::ddl::DdlKind;
        for ev in &txn.events {
            let pipeline::Op::Ddl(change) = &ev.op else {
                continue;
            };
            if skip.contains(&ev.table.id) {
                continue;
            }
            let id = &ev.table.id;
            for t in [&self.snapshot_table, &self.quarantine_table] {
                let r = match change.kind {
                    DdlKind::DropTable => {
                        conn.client
                            .execute(
                                &format!("DELETE FROM {t} WHERE consumer = $1 AND table_schema = $2 AND table_name = $3"),
                                &[&self.name, &id.schema, &id.name],
                            )
                            .await
                    }
                    DdlKind::DropDatabase => {
                        conn.client
                            .execute(
                                &format!("DELETE FROM {t} WHERE consumer = $1 AND table_schema = $2"),
                                &[&self.name, &id.schema],
                            )
                            .await
                    }
                    _ => Ok(0),
                };
                r.map_err(driver("updating dbmux's own tables"))?;
            }
        }
        Ok(())
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

/// `COPY … FROM STDIN` of `data` (text format).
async fn copy_in(
    client: &Client,
    statement: &str,
    data: &[u8],
) -> std::result::Result<(), tokio_postgres::Error> {
    use futures_util::SinkExt;
    let sink = client.copy_in(statement).await?;
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(1 << 20) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
    }
    sink.finish().await?;
    Ok(())
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

impl PostgresSink {
    async fn read_pending(&mut self) -> Result<Vec<TableId>> {
        let client = &self.conn.as_ref().expect("connected").client;
        let rows = client
            .query(
                &format!(
                    "SELECT table_schema, table_name FROM {} WHERE consumer = $1 ORDER BY 1, 2",
                    self.snapshot_table
                ),
                &[&self.name],
            )
            .await
            .map_err(driver("reading the snapshot table"))?;
        Ok(rows
            .into_iter()
            .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    async fn read_quarantines(&mut self) -> Result<Vec<Quarantine>> {
        let client = &self.conn.as_ref().expect("connected").client;
        let rows = client
            .query(
                &format!(
                    "SELECT table_schema, table_name, first_seq, reason FROM {} WHERE consumer = $1 \
                     ORDER BY table_schema, table_name",
                    self.quarantine_table
                ),
                &[&self.name],
            )
            .await
            .map_err(driver("reading the quarantine table"))?;
        Ok(rows
            .into_iter()
            .map(|r| Quarantine {
                table: TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                first_seq: r.get::<_, i64>(2) as u64,
                reason: r.get(3),
            })
            .collect())
    }

    async fn prepare(&mut self, txns: &[Transaction], mode: Mode<'_>) -> Result<()> {
        if self.conn.is_none() {
            self.tables.clear();
            self.connect().await?;
        }
        if let Err(e) = self.ensure_tables(txns, mode).await {
            self.conn = None;
            self.known_tables.clear();
            self.tables.clear();
            return Err(e);
        }
        Ok(())
    }
}

impl Sink for PostgresSink {
    type Error = PostgresApplyError;

    async fn open(&mut self) -> Result<Opened> {
        self.tables.clear();
        let r = async {
            self.connect().await?;
            let q = self.read_quarantines().await?;
            Ok::<_, PostgresApplyError>((q, self.read_pending().await?))
        }
        .await;
        match r {
            Ok((quarantined, pending)) => Ok(Opened {
                applied: self.applied,
                quarantined,
                pending,
            }),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    async fn apply(&mut self, txns: &[Transaction], skip: &HashSet<TableId>) -> Result<()> {
        // A schema change is one target transaction of its own (with its
        // offset): tables are prepared for what follows it only after it.
        let mut rest = txns;
        while !rest.is_empty() {
            let n = match rest.iter().position(Transaction::is_ddl) {
                Some(0) => 1,
                Some(n) => n,
                None => rest.len(),
            };
            let (part, tail) = rest.split_at(n);
            rest = tail;
            let mode = Mode::Stream { skip };
            self.prepare(part, mode).await?;
            let ddl = part[0].is_ddl();
            let group = match self.config.max_transactions_per_commit {
                0 => part.len().max(1),
                n => n,
            };
            for g in part.chunks(group) {
                if self.conn.is_none() {
                    self.prepare(g, mode).await?;
                }
                self.apply_group(g, mode).await?;
            }
            if ddl {
                if let Some(conn) = self.conn.as_ref() {
                    self.after_ddl(conn, &part[0], skip).await?;
                }
                // Definitions changed: forget what was learned about tables.
                self.known_tables.clear();
                self.tables.clear();
                self.targets.clear();
                if let Some(c) = self.conn.as_mut() {
                    c.prepared.clear();
                }
            }
        }
        Ok(())
    }

    async fn reset(&mut self, from_seq: u64) -> Result<()> {
        if self.conn.is_none() {
            self.tables.clear();
            self.connect().await?;
        }
        let r = async {
            let c = &self.conn.as_ref().expect("connected").client;
            c.batch_execute("BEGIN")
                .await
                .map_err(driver("starting a transaction"))?;
            c.execute(
                &format!(
                    "SELECT seq FROM {} WHERE consumer = $1 FOR UPDATE",
                    self.offsets_table
                ),
                &[&self.name],
            )
            .await
            .map_err(driver("locking the offset"))?;
            c.execute(
                &format!(
                    "UPDATE {} SET seq = $1, position = NULL, updated_at = now() WHERE consumer = $2",
                    self.offsets_table
                ),
                &[&(from_seq.saturating_sub(1) as i64), &self.name],
            )
            .await
            .map_err(driver("moving the offset"))?;
            for t in [&self.quarantine_table, &self.snapshot_table] {
                c.execute(&format!("DELETE FROM {t} WHERE consumer = $1"), &[&self.name])
                    .await
                    .map_err(driver("clearing the replica's state"))?;
            }
            c.batch_execute("COMMIT").await.map_err(driver("committing"))
        }
        .await;
        match r {
            Ok(()) => {
                self.applied = from_seq.saturating_sub(1);
                Ok(())
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    async fn quarantine(&mut self, q: &Quarantine) -> Result<()> {
        if self.conn.is_none() {
            self.tables.clear();
            self.connect().await?;
        }
        let client = &self.conn.as_ref().expect("connected").client;
        let r = client
            .execute(
                &format!(
                    "INSERT INTO {} (consumer, table_schema, table_name, first_seq, reason) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (consumer, table_schema, table_name) \
                     DO UPDATE SET first_seq = EXCLUDED.first_seq, reason = EXCLUDED.reason, since = now()",
                    self.quarantine_table
                ),
                &[
                    &self.name,
                    &q.table.schema,
                    &q.table.name,
                    &(q.first_seq as i64),
                    &q.reason,
                ],
            )
            .await
            .map(|_| ())
            .map_err(driver("storing a quarantine"));
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn resume(
        &mut self,
        table: &TableId,
        txns: &[Transaction],
        from: u64,
        next: Option<u64>,
    ) -> Result<()> {
        let mode = Mode::Resume { table, from, next };
        self.prepare(txns, mode).await?;
        self.apply_group(txns, mode).await
    }
}

/// Foreign-key cascades on a PostgreSQL replica (see [`pipeline::cascade`]),
/// inside the applier's open transaction. Values travel in text format, cast
/// to the replica columns' own types; rows read back are cast to text and
/// bound again the same way, so nothing is converted on the way.
struct PgCascade<'a> {
    conn: &'a mut Connection,
    config: &'a PostgresSinkConfig,
    /// Replica column types per table (`None`: the replica has no such table).
    types: HashMap<TableId, Option<HashMap<String, String>>>,
}

impl PgCascade<'_> {
    /// The replica table and its column types, `None` when it has no such table.
    async fn table(&mut self, table: &TableId) -> Result<Option<(TableId, HashMap<String, String>)>> {
        let target = self.config.target_table(table);
        if !self.types.contains_key(table) {
            let cols = read_columns(&self.conn.client, &target)
                .await?
                .map(|c| c.into_iter().map(|(n, (ty, _))| (n, ty)).collect());
            self.types.insert(table.clone(), cols);
        }
        Ok(self.types[table].clone().map(|t| (target, t)))
    }

    /// Replica names and types of `cols` of source table `table`.
    fn columns(
        &self,
        table: &TableId,
        cols: &[String],
        types: &HashMap<String, String>,
    ) -> Result<Vec<(String, String)>> {
        cols.iter()
            .map(|c| {
                let name = self.config.target_column(table, c);
                let ty = types
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| PostgresApplyError::Table {
                        table: table.to_string(),
                        message: format!("a cascade needs column {name:?}, which the replica table lacks"),
                    })?;
                Ok((sql::quote_ident(&name).map_err(PostgresApplyError::Internal)?, ty))
            })
            .collect()
    }

    /// `(a, b) IN (SELECT * FROM unnest($1::ta[], $2::tb[]))` from parameter `first`.
    fn condition(cols: &[(String, String)], first: usize) -> String {
        let names = cols
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let arrays = cols
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::{ty}[]", first + i))
            .collect::<Vec<_>>()
            .join(", ");
        format!("({names}) IN (SELECT * FROM unnest({arrays}))")
    }

    /// One array literal per column of `keys`.
    fn arrays(keys: &[Vec<Option<String>>], width: usize) -> Vec<TextParam> {
        (0..width)
            .map(|i| {
                let mut a = String::from("{");
                for k in keys {
                    sql::push_array_element(&mut a, k[i].as_deref());
                }
                a.push('}');
                TextParam(Some(a))
            })
            .collect()
    }
}

impl CascadeStore for PgCascade<'_> {
    type Val = Option<String>;
    type Error = PostgresApplyError;

    fn value(&self, table: &TableSchema, col: usize, v: &pipeline::Value) -> Result<Self::Val> {
        let c = &table.columns[col];
        sql::to_text(v, c, self.config.zero_dates).map_err(|message| PostgresApplyError::Value {
            table: table.id.to_string(),
            column: c.name.clone(),
            message,
        })
    }

    fn is_null(v: &Self::Val) -> bool {
        v.is_none()
    }

    fn null() -> Self::Val {
        None
    }

    async fn select(
        &mut self,
        table: &TableId,
        cols: &[String],
        keys: &[Vec<Self::Val>],
        want: &[String],
    ) -> Result<Vec<Vec<Self::Val>>> {
        let Some((target, types)) = self.table(table).await? else {
            return Ok(Vec::new());
        };
        let m = self.columns(table, cols, &types)?;
        let w = self.columns(table, want, &types)?;
        let list = w
            .iter()
            .map(|(n, _)| format!("{n}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let q = format!(
            "SELECT {list} FROM {} WHERE {}",
            sql::quote_table(&target).map_err(PostgresApplyError::Internal)?,
            Self::condition(&m, 1)
        );
        let params = Self::arrays(keys, m.len());
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = self
            .conn
            .client
            .query(&q, &refs)
            .await
            .map_err(driver(format!("reading rows a cascade reaches in {target}")))?;
        Ok(rows
            .into_iter()
            .map(|r| (0..w.len()).map(|i| r.get::<_, Option<String>>(i)).collect())
            .collect())
    }

    async fn delete(&mut self, table: &TableId, cols: &[String], keys: &[Vec<Self::Val>]) -> Result<()> {
        let Some((target, types)) = self.table(table).await? else {
            return Ok(());
        };
        let m = self.columns(table, cols, &types)?;
        let q = format!(
            "DELETE FROM {} WHERE {}",
            sql::quote_table(&target).map_err(PostgresApplyError::Internal)?,
            Self::condition(&m, 1)
        );
        let params = Self::arrays(keys, m.len());
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        self.conn
            .client
            .execute(&q, &refs)
            .await
            .map_err(driver(format!("cascading a delete into {target}")))?;
        Ok(())
    }

    async fn update(
        &mut self,
        table: &TableId,
        cols: &[String],
        keys: &[Vec<Self::Val>],
        new: Option<&[Self::Val]>,
    ) -> Result<()> {
        let Some((target, types)) = self.table(table).await? else {
            return Ok(());
        };
        let m = self.columns(table, cols, &types)?;
        let (set, mut params): (Vec<String>, Vec<TextParam>) = match new {
            Some(values) => (
                m.iter()
                    .enumerate()
                    .map(|(i, (n, ty))| format!("{n} = ${}::{ty}", i + 1))
                    .collect(),
                values.iter().map(|v| TextParam(v.clone())).collect(),
            ),
            None => (m.iter().map(|(n, _)| format!("{n} = NULL")).collect(), Vec::new()),
        };
        let q = format!(
            "UPDATE {} SET {} WHERE {}",
            sql::quote_table(&target).map_err(PostgresApplyError::Internal)?,
            set.join(", "),
            Self::condition(&m, params.len() + 1)
        );
        params.extend(Self::arrays(keys, m.len()));
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        self.conn
            .client
            .execute(&q, &refs)
            .await
            .map_err(driver(format!("cascading an update into {target}")))?;
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
