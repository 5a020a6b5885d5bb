//! PostgreSQL's side of [`pipeline::apply::Engine`]: connection, statements,
//! error classes, the `COPY` load path and schema changes. The transaction
//! protocol (offsets, planning, quarantine, cascades, snapshots) is the
//! core's ([`pipeline::apply::Applier`]).
//!
//! # Where tables go
//! The URL names the database. A source table `db.table` becomes
//! `"db"."table"` (schema named after the source database) unless `schema` is
//! configured, in which case every table goes into that one schema. Missing
//! schemas and tables are created from the event's table definition, with an
//! index on every foreign key's columns (cascades find rows by them).
//!
//! # Bookkeeping tables
//! ```sql
//! CREATE SCHEMA IF NOT EXISTS "dbmux";
//! CREATE TABLE IF NOT EXISTS "dbmux"."dbmux_offsets" (
//!   consumer text PRIMARY KEY, seq bigint NOT NULL, position text,
//!   updated_at timestamptz NOT NULL DEFAULT now());
//! ```
//! beside it `dbmux_quarantine` and `dbmux_snapshot` (schema configurable
//! with `offsets_schema`).
//!
//! # Statements and parameters
//! Every value travels as a parameter in text format ([`TextParam`]), parsed
//! by the column type's own input function; multi-row statements bind one
//! array per column and spread it with `unnest` (see [`super::apply_sql`]),
//! so one statement text per table and kind serves every batch. Statements
//! with parameters are prepared once per connection and kept in its cache;
//! statements without (DDL, `TRUNCATE`) go through the simple query protocol.
//! A schema change or a dropped table empties the cache.
//!
//! # Snapshot rows
//! [`Engine::load`] writes a chunk with `COPY`: straight into the table, or,
//! when some of its keys are already there (changes applied since the
//! table's first chunk), through a temporary table and an upsert.
//!
//! # Schema changes
//! PostgreSQL's DDL is transactional: a captured change is translated
//! ([`super::ddl`]) and run inside the data transaction, with the offset.

use super::apply_sql::{self as sql, ZeroDates};
use pipeline::apply::{
    Applier, ApplyError, CascadeOp, DdlError, Engine, Limits, LoadError, RowsKind, Statement, TargetTable,
    ValueError,
};
use pipeline::ddl::SchemaChange;
use pipeline::event::Row;
use pipeline::replica::Quarantine;
use pipeline::retry::ErrorClass;
use pipeline::schema::{ColumnDef, TableId, TableSchema};
use pipeline::secret::redact_url;
use pipeline::value::Value;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use tokio_postgres::types::{Format, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls};

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

/// The PostgreSQL replica applier.
pub type PostgresSink = Applier<PostgresEngine>;
/// Why applying to a PostgreSQL replica failed.
pub type PostgresApplyError = ApplyError<PostgresEngine>;

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

/// A parameter in text format: PostgreSQL parses it with the type's own
/// input function (for arrays, `array_in` then each element's). `None` is
/// NULL. Query results come back as the same type: text columns as they
/// are, integers in decimal (the bookkeeping queries read `bigint`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextParam(pub Option<String>);

impl TextParam {
    fn text(s: &str) -> Self {
        TextParam(Some(s.to_string()))
    }
}

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
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

impl<'a> FromSql<'a> for TextParam {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = match *ty {
            Type::INT8 => i64::from_sql(ty, raw)?.to_string(),
            Type::INT4 => i32::from_sql(ty, raw)?.to_string(),
            Type::INT2 => i16::from_sql(ty, raw)?.to_string(),
            Type::BOOL => bool::from_sql(ty, raw)?.to_string(),
            _ => <&str as FromSql>::from_sql(ty, raw)?.to_string(),
        };
        Ok(TextParam(Some(text)))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(TextParam(None))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL) || <&str as FromSql>::accepts(ty)
    }
}

/// An open connection and what is prepared on it.
pub struct Connection {
    client: Client,
    task: tokio::task::JoinHandle<()>,
    /// Prepared statements by text (they belong to this connection).
    prepared: HashMap<Arc<str>, tokio_postgres::Statement>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    /// The statement prepared on this connection (once per text).
    async fn prepare(&mut self, text: &Arc<str>) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        if let Some(s) = self.prepared.get(text) {
            return Ok(s.clone());
        }
        let stmt = self.client.prepare(text).await?;
        if self.prepared.len() >= STMT_CACHE_SIZE {
            self.prepared.clear();
        }
        self.prepared.insert(text.clone(), stmt.clone());
        Ok(stmt)
    }
}

/// The columns of an existing replica table: name → (qualified type name
/// without type modifier, type category).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub columns: HashMap<String, (String, String)>,
}

/// Per replica table: its statement texts (the same for any row count).
#[derive(Debug)]
pub struct Table {
    /// `"schema"."table"`.
    quoted: String,
    /// The replica's column list, quoted (`COPY`).
    columns: String,
    /// `ON CONFLICT (key) DO …` of the upsert (empty without a key).
    on_conflict: String,
    upsert: Arc<str>,
    insert: Arc<str>,
    delete: Arc<str>,
    update_one: Arc<str>,
    delete_one: Arc<str>,
}

/// PostgreSQL for [`Applier`].
#[derive(Debug)]
pub struct PostgresEngine {
    config: PostgresSinkConfig,
    offsets_table: String,
    quarantine_table: String,
    snapshot_table: String,
}

impl From<PostgresSinkConfig> for PostgresEngine {
    fn from(config: PostgresSinkConfig) -> Self {
        PostgresEngine::new(config)
    }
}

impl PostgresEngine {
    pub fn new(config: PostgresSinkConfig) -> Self {
        // The schema was validated with the configuration; the fallback only
        // keeps a direct caller of `new` from panicking.
        let schema = sql::quote_ident(&config.offsets_schema).unwrap_or_else(|_| "\"dbmux\"".into());
        let table = |name: &str| format!("{schema}.{}", sql::quote_ident(name).expect("valid name"));
        Self {
            offsets_table: table(OFFSETS_TABLE),
            quarantine_table: table(QUARANTINE_TABLE),
            snapshot_table: table(SNAPSHOT_TABLE),
            config,
        }
    }

    pub fn config(&self) -> &PostgresSinkConfig {
        &self.config
    }

    fn seq(seq: u64) -> Result<TextParam, String> {
        i64::try_from(seq)
            .map(|s| TextParam(Some(s.to_string())))
            .map_err(|_| format!("seq {seq} does not fit in bigint"))
    }

    /// A seq that cannot fit `bigint` cannot be an event's: clamp rather
    /// than fail a quarantine (the reason says what happened).
    fn seq_clamped(seq: u64) -> TextParam {
        TextParam(Some(i64::try_from(seq).unwrap_or(i64::MAX).to_string()))
    }

    fn keyed(consumer: &str, table: &TableId) -> Vec<TextParam> {
        vec![
            TextParam::text(consumer),
            TextParam::text(&table.schema),
            TextParam::text(&table.name),
        ]
    }

    fn text_of(&self, v: &Value, col: &ColumnDef) -> Result<Option<String>, ValueError> {
        sql::to_text(v, col, self.config.zero_dates).map_err(|message| ValueError {
            column: col.name.clone(),
            message,
        })
    }

    /// One array literal per column in `cols`, holding that column of every row.
    fn array_params(
        &self,
        table: &TableSchema,
        rows: &[&Row],
        cols: &[usize],
    ) -> Result<Vec<TextParam>, ValueError> {
        let mut out = Vec::with_capacity(cols.len());
        for &i in cols {
            let col = &table.columns[i];
            let mut a = String::with_capacity(2 + rows.len() * 8);
            a.push('{');
            for row in rows {
                let text = self.text_of(&row[i], col)?;
                sql::push_array_element(&mut a, text.as_deref());
            }
            a.push('}');
            out.push(TextParam(Some(a)));
        }
        Ok(out)
    }

    fn row_params(&self, table: &TableSchema, row: &Row) -> Result<Vec<TextParam>, ValueError> {
        table
            .columns
            .iter()
            .zip(row)
            .map(|(col, v)| self.text_of(v, col).map(TextParam))
            .collect()
    }

    /// `(a, b) IN (SELECT * FROM unnest($1::ta[], $2::tb[]))` from parameter `first`.
    fn key_condition(cols: &[(String, String)], first: usize) -> String {
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
    fn key_arrays(keys: &[Vec<TextParam>], width: usize) -> Vec<TextParam> {
        (0..width)
            .map(|i| {
                let mut a = String::from("{");
                for k in keys {
                    sql::push_array_element(&mut a, k[i].0.as_deref());
                }
                a.push('}');
                TextParam(Some(a))
            })
            .collect()
    }
}

/// `"schema"."table"`, for statements that cannot fail: a name PostgreSQL
/// cannot hold then fails on the server, with its message.
fn quoted(t: &TableId) -> String {
    sql::quote_table(t).unwrap_or_else(|_| {
        format!(
            "\"{}\".\"{}\"",
            t.schema.replace('"', "\"\""),
            t.name.replace('"', "\"\"")
        )
    })
}

/// The columns of `target` (name → qualified type name and type category),
/// `None` when the table does not exist.
async fn read_columns(client: &Client, target: &TableId) -> Result<Option<Described>, tokio_postgres::Error> {
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
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(Described {
        columns: rows
            .into_iter()
            .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
            .collect(),
    }))
}

/// `COPY … FROM STDIN` of `data` (text format).
async fn copy_in(client: &Client, statement: &str, data: &[u8]) -> Result<(), tokio_postgres::Error> {
    use futures_util::SinkExt;
    let sink = client.copy_in(statement).await?;
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(1 << 20) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
    }
    sink.finish().await?;
    Ok(())
}

impl Engine for PostgresEngine {
    type Param = TextParam;
    type Error = tokio_postgres::Error;
    type Conn = Connection;
    type Described = Described;
    type Table = Table;

    const NAME: &'static str = "PostgreSQL";

    fn limits(&self) -> Limits {
        Limits {
            max_rows_per_statement: self.config.max_rows_per_statement,
            max_statement_bytes: self.config.max_statement_bytes,
            max_transactions_per_commit: self.config.max_transactions_per_commit,
        }
    }

    fn classify(e: &Self::Error) -> ErrorClass {
        classify_driver(e)
    }

    /// A unique or foreign-key violation (23505, 23503).
    fn may_pass_in_source_order(e: &Self::Error) -> bool {
        matches!(e.code().map(|c| c.code()), Some("23505" | "23503"))
    }

    /// Unique violation (two `CREATE … IF NOT EXISTS` racing on the
    /// catalog), duplicate schema, table or object.
    fn already_exists(e: &Self::Error) -> bool {
        matches!(
            e.code().map(|c| c.code()),
            Some("23505" | "42P06" | "42P07" | "42710")
        )
    }

    fn describe_error(e: &Self::Error) -> String {
        describe(e)
    }

    async fn connect(&mut self) -> Result<Connection, Self::Error> {
        let (client, connection) = tokio_postgres::connect(&self.config.url, NoTls).await?;
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
        conn.client.batch_execute(sql::SESSION_SETUP).await?;
        Ok(conn)
    }

    async fn execute(conn: &mut Connection, s: &Statement<TextParam>) -> Result<u64, Self::Error> {
        if s.params.is_empty() {
            // DDL and TRUNCATE: one round trip, nothing to keep prepared.
            let mut n = 0;
            for m in conn.client.simple_query(&s.sql).await? {
                if let tokio_postgres::SimpleQueryMessage::CommandComplete(k) = m {
                    n += k;
                }
            }
            if s.sql.starts_with("DROP ") {
                // A table recreated for its snapshot: statements prepared
                // against the old one are forgotten.
                conn.prepared.clear();
            }
            return Ok(n);
        }
        let stmt = conn.prepare(&s.sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> = s.params.iter().map(|p| p as _).collect();
        conn.client.execute(&stmt, &refs).await
    }

    async fn query(
        conn: &mut Connection,
        s: &Statement<TextParam>,
    ) -> Result<Vec<Vec<TextParam>>, Self::Error> {
        let stmt = conn.prepare(&s.sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> = s.params.iter().map(|p| p as _).collect();
        let rows = conn.client.query(&stmt, &refs).await?;
        rows.iter()
            .map(|r| (0..r.len()).map(|i| r.try_get::<_, TextParam>(i)).collect())
            .collect()
    }

    async fn begin(conn: &mut Connection) -> Result<(), Self::Error> {
        conn.client.batch_execute("BEGIN").await
    }

    async fn commit(conn: &mut Connection) -> Result<(), Self::Error> {
        conn.client.batch_execute("COMMIT").await
    }

    async fn rollback(conn: &mut Connection) -> Result<(), Self::Error> {
        conn.client.batch_execute("ROLLBACK").await
    }

    fn as_u64(p: &TextParam) -> Option<u64> {
        p.0.as_deref()?.parse().ok()
    }

    fn as_text(p: &TextParam) -> Option<String> {
        p.0.clone()
    }

    // ------------------------------------------------------------ bookkeeping

    fn setup(&self) -> Vec<Statement<TextParam>> {
        let schema = sql::quote_ident(&self.config.offsets_schema).unwrap_or_else(|_| "\"dbmux\"".into());
        [
            format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (consumer text PRIMARY KEY, seq bigint NOT NULL, \
                 position text, updated_at timestamptz NOT NULL DEFAULT now())",
                self.offsets_table
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (consumer text NOT NULL, table_schema text NOT NULL, \
                 table_name text NOT NULL, first_seq bigint NOT NULL, reason text NOT NULL, \
                 since timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, table_schema, table_name))",
                self.quarantine_table
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (consumer text NOT NULL, table_schema text NOT NULL, \
                 table_name text NOT NULL, run bigint NOT NULL, since timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (consumer, table_schema, table_name))",
                self.snapshot_table
            ),
        ]
        .into_iter()
        .map(Statement::text)
        .collect()
    }

    fn offsets_table(&self) -> String {
        format!("{}.{OFFSETS_TABLE}", self.config.offsets_schema)
    }

    fn register(&self, consumer: &str) -> Statement<TextParam> {
        Statement::new(
            format!(
                "INSERT INTO {} (consumer, seq) VALUES ($1, 0) ON CONFLICT (consumer) DO NOTHING",
                self.offsets_table
            ),
            vec![TextParam::text(consumer)],
        )
    }

    fn read_offset(&self, consumer: &str, lock: bool) -> Statement<TextParam> {
        let lock = if lock { " FOR UPDATE" } else { "" };
        Statement::new(
            format!("SELECT seq FROM {} WHERE consumer = $1{lock}", self.offsets_table),
            vec![TextParam::text(consumer)],
        )
    }

    fn write_offset(
        &self,
        consumer: &str,
        seq: u64,
        position: Option<&str>,
    ) -> Result<Statement<TextParam>, String> {
        Ok(Statement::new(
            format!(
                "UPDATE {} SET seq = $1, position = $2, updated_at = now() WHERE consumer = $3",
                self.offsets_table
            ),
            vec![
                Self::seq(seq)?,
                TextParam(position.map(str::to_string)),
                TextParam::text(consumer),
            ],
        ))
    }

    fn read_quarantines(&self, consumer: &str) -> Statement<TextParam> {
        Statement::new(
            format!(
                "SELECT table_schema, table_name, first_seq, reason FROM {} WHERE consumer = $1 \
                 ORDER BY table_schema, table_name",
                self.quarantine_table
            ),
            vec![TextParam::text(consumer)],
        )
    }

    fn store_quarantine(&self, consumer: &str, q: &Quarantine) -> Statement<TextParam> {
        let mut params = Self::keyed(consumer, &q.table);
        params.push(Self::seq_clamped(q.first_seq));
        params.push(TextParam::text(&q.reason));
        Statement::new(
            format!(
                "INSERT INTO {} (consumer, table_schema, table_name, first_seq, reason) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (consumer, table_schema, table_name) \
                 DO UPDATE SET first_seq = EXCLUDED.first_seq, reason = EXCLUDED.reason, since = now()",
                self.quarantine_table
            ),
            params,
        )
    }

    fn move_quarantine(&self, consumer: &str, table: &TableId, next: Option<u64>) -> Statement<TextParam> {
        let mut params = Self::keyed(consumer, table);
        match next {
            Some(n) => {
                params.push(Self::seq_clamped(n));
                Statement::new(
                    format!(
                        "UPDATE {} SET first_seq = $4 WHERE consumer = $1 AND table_schema = $2 AND table_name = $3",
                        self.quarantine_table
                    ),
                    params,
                )
            }
            None => Statement::new(
                format!(
                    "DELETE FROM {} WHERE consumer = $1 AND table_schema = $2 AND table_name = $3",
                    self.quarantine_table
                ),
                params,
            ),
        }
    }

    // ------------------------------------------------------------ replica tables

    fn target_table(&self, source: &TableId) -> TableId {
        self.config.target_table(source)
    }

    fn target_column(&self, source: &TableId, column: &str) -> String {
        self.config.target_column(source, column)
    }

    fn is_own_table(&self, target: &TableId) -> bool {
        target.schema == self.config.offsets_schema
            && [OFFSETS_TABLE, QUARANTINE_TABLE, SNAPSHOT_TABLE].contains(&target.name.as_str())
    }

    async fn describe(
        &self,
        conn: &mut Connection,
        target: &TableId,
    ) -> Result<Option<Described>, Self::Error> {
        read_columns(&conn.client, target).await
    }

    fn create_table(&self, target: &TableId, schema: &TableSchema) -> Result<Vec<String>, (String, String)> {
        super::ddl::create_statements(target, schema)
    }

    fn table(
        &self,
        target: &TableId,
        schema: &Arc<TableSchema>,
        described: &Described,
    ) -> Result<Table, String> {
        let mut arrays: Vec<&String> = described
            .columns
            .iter()
            .filter(|(_, (_, category))| category == "A")
            .map(|(n, _)| n)
            .collect();
        arrays.sort();
        if let Some(name) = arrays.first() {
            return Err(format!("column {name} is an array, which dbmux does not write"));
        }
        let types = schema
            .columns
            .iter()
            .map(|c| {
                described.columns.get(&c.name).map(|(ty, _)| ty.clone()).ok_or_else(|| {
                    format!(
                        "it has no column {:?} (it was created otherwise; add the column or drop the table to have \
                         it created again)",
                        c.name
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let s = sql::table_statements(target, schema, &types)?;
        Ok(Table {
            quoted: sql::quote_table(target)?,
            columns: s.columns,
            on_conflict: s.on_conflict,
            upsert: s.upsert.into(),
            insert: s.insert.into(),
            delete: s.delete.into(),
            update_one: s.update_one.into(),
            delete_one: s.delete_one.into(),
        })
    }

    // ------------------------------------------------------------ statements

    /// One array parameter per column: no parameter-count limit.
    fn max_rows(&self, _table: &TargetTable<Table>, _kind: RowsKind) -> usize {
        usize::MAX
    }

    fn rows(
        &self,
        table: &mut TargetTable<Table>,
        kind: RowsKind,
        rows: &[&Row],
    ) -> Result<Statement<TextParam>, ValueError> {
        let t = &table.schema;
        let (text, cols): (&Arc<str>, Vec<usize>) = match kind {
            RowsKind::Upsert => (&table.engine.upsert, (0..t.columns.len()).collect()),
            RowsKind::Insert => (&table.engine.insert, (0..t.columns.len()).collect()),
            RowsKind::Delete => (&table.engine.delete, t.primary_key.clone()),
        };
        Ok(Statement::new(text.clone(), self.array_params(t, rows, &cols)?))
    }

    fn update_one(
        &self,
        table: &mut TargetTable<Table>,
        before: &Row,
        after: &Row,
    ) -> Result<Statement<TextParam>, ValueError> {
        let mut params = self.row_params(&table.schema, after)?;
        params.extend(self.row_params(&table.schema, before)?);
        Ok(Statement::new(table.engine.update_one.clone(), params))
    }

    fn delete_one(
        &self,
        table: &mut TargetTable<Table>,
        before: &Row,
    ) -> Result<Statement<TextParam>, ValueError> {
        Ok(Statement::new(
            table.engine.delete_one.clone(),
            self.row_params(&table.schema, before)?,
        ))
    }

    fn truncate(&self, target: &TableId) -> Statement<TextParam> {
        Statement::text(format!("TRUNCATE TABLE {}", quoted(target)))
    }

    // ------------------------------------------------------------ snapshots

    fn read_pending(&self, consumer: &str) -> Statement<TextParam> {
        Statement::new(
            format!(
                "SELECT table_schema, table_name FROM {} WHERE consumer = $1 ORDER BY 1, 2",
                self.snapshot_table
            ),
            vec![TextParam::text(consumer)],
        )
    }

    fn store_pending(&self, consumer: &str, table: &TableId, run: u64) -> Statement<TextParam> {
        let mut params = Self::keyed(consumer, table);
        params.push(Self::seq_clamped(run));
        Statement::new(
            format!(
                "INSERT INTO {} (consumer, table_schema, table_name, run) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (consumer, table_schema, table_name) DO UPDATE SET run = EXCLUDED.run, since = now()",
                self.snapshot_table
            ),
            params,
        )
    }

    fn drop_pending(&self, consumer: &str, table: &TableId) -> Statement<TextParam> {
        Statement::new(
            format!(
                "DELETE FROM {} WHERE consumer = $1 AND table_schema = $2 AND table_name = $3",
                self.snapshot_table
            ),
            Self::keyed(consumer, table),
        )
    }

    fn drop_schema_state(&self, consumer: &str, schema: &str) -> Vec<Statement<TextParam>> {
        [&self.snapshot_table, &self.quarantine_table]
            .into_iter()
            .map(|t| {
                Statement::new(
                    format!("DELETE FROM {t} WHERE consumer = $1 AND table_schema = $2"),
                    vec![TextParam::text(consumer), TextParam::text(schema)],
                )
            })
            .collect()
    }

    fn clear_state(&self, consumer: &str) -> Vec<Statement<TextParam>> {
        [&self.quarantine_table, &self.snapshot_table]
            .into_iter()
            .map(|t| {
                Statement::new(
                    format!("DELETE FROM {t} WHERE consumer = $1"),
                    vec![TextParam::text(consumer)],
                )
            })
            .collect()
    }

    fn recreate_table(
        &self,
        target: &TableId,
        schema: &TableSchema,
        _source: &TableSchema,
        _create: Option<&str>,
    ) -> Result<Vec<String>, (String, String)> {
        // The source's own CREATE TABLE is MySQL's dialect: the table is
        // created from the definition instead.
        let mut out = vec![format!(
            "DROP TABLE IF EXISTS {}",
            sql::quote_table(target).map_err(|m| (String::new(), m))?
        )];
        out.extend(super::ddl::create_statements(target, schema)?);
        Ok(out)
    }

    /// Rows of a snapshot chunk, with `COPY`: straight into the table when
    /// none of their keys is there yet (a table reloaded from its first
    /// chunk), else through a temporary table and an upsert (changes
    /// applied since the first chunk may have put some keys there).
    async fn load(
        &self,
        conn: &mut Connection,
        table: &mut TargetTable<Table>,
        rows: &[&Row],
    ) -> Result<bool, LoadError<Self::Error>> {
        let schema = &table.schema;
        let t = &table.engine;
        let mut data = Vec::with_capacity(rows.len() * 64);
        for row in rows {
            for (i, (col, v)) in schema.columns.iter().zip(row.iter()).enumerate() {
                if i > 0 {
                    data.push(b'\t');
                }
                let text = self.text_of(v, col).map_err(LoadError::Value)?;
                sql::push_copy_field(&mut data, text.as_deref());
            }
            data.push(b'\n');
        }
        let copy = format!("COPY {} ({}) FROM STDIN", t.quoted, t.columns);
        let client = &conn.client;
        if !schema.has_primary_key() {
            copy_in(client, &copy, &data).await.map_err(LoadError::Driver)?;
            return Ok(true);
        }
        client
            .batch_execute("SAVEPOINT dbmux_load")
            .await
            .map_err(LoadError::Driver)?;
        match copy_in(client, &copy, &data).await {
            Ok(()) => client
                .batch_execute("RELEASE SAVEPOINT dbmux_load")
                .await
                .map_err(LoadError::Driver)?,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT dbmux_load; RELEASE SAVEPOINT dbmux_load")
                    .await
                    .map_err(LoadError::Driver)?;
                // Named after the target so two tables of one transaction
                // do not share a stage; `pg_name` keeps it within 63 bytes.
                let stage = sql::quote_ident(&sql::pg_name(&format!("dbmux_stage_{}", table.id)))
                    .expect("pg_name fits an identifier");
                client
                    .batch_execute(&format!(
                        "CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {}) ON COMMIT DROP; TRUNCATE {stage}",
                        t.quoted
                    ))
                    .await
                    .map_err(LoadError::Driver)?;
                copy_in(client, &format!("COPY {stage} ({}) FROM STDIN", t.columns), &data)
                    .await
                    .map_err(LoadError::Driver)?;
                client
                    .batch_execute(&format!(
                        "INSERT INTO {} ({cols}) SELECT {cols} FROM {stage}{}",
                        t.quoted,
                        t.on_conflict,
                        cols = t.columns
                    ))
                    .await
                    .map_err(LoadError::Driver)?;
            }
            Err(e) => return Err(LoadError::Driver(e)),
        }
        Ok(true)
    }

    // ------------------------------------------------------------ schema changes

    async fn schema_change(
        &self,
        conn: &mut Connection,
        source: &TableSchema,
        renamed: &TableSchema,
        change: &SchemaChange,
        _commit_ts_us: i64,
        _retried: bool,
    ) -> Result<(), DdlError<Self::Error>> {
        super::ddl::apply(
            &conn.client,
            &self.config,
            source,
            renamed,
            change,
            self.config.zero_dates,
        )
        .await
        .map_err(|e| match e {
            super::ddl::DdlError::Transient(e) => DdlError::Driver(e),
            super::ddl::DdlError::Refused(m) => DdlError::Refused(m),
        })
    }

    fn schema_changed(conn: &mut Connection) {
        conn.prepared.clear();
    }

    // ------------------------------------------------------------ cascades

    fn param(&self, column: &ColumnDef, value: &Value) -> Result<TextParam, String> {
        sql::to_text(value, column, self.config.zero_dates).map(TextParam)
    }

    fn null() -> TextParam {
        TextParam(None)
    }

    fn is_null(p: &TextParam) -> bool {
        p.0.is_none()
    }

    /// Values travel in text format, cast to the replica columns' own types;
    /// rows read back are cast to text and bound again the same way, so
    /// nothing is converted on the way.
    fn cascade(
        &self,
        target: &TableId,
        described: &Described,
        op: CascadeOp<'_, TextParam>,
    ) -> Result<Vec<Statement<TextParam>>, String> {
        let typed = |cols: &[String]| -> Result<Vec<(String, String)>, String> {
            cols.iter()
                .map(|name| {
                    let (ty, _) = described.columns.get(name).ok_or_else(|| {
                        format!("a cascade needs column {name:?}, which the replica table lacks")
                    })?;
                    Ok((sql::quote_ident(name)?, ty.clone()))
                })
                .collect()
        };
        let table = sql::quote_table(target)?;
        let statement = match op {
            CascadeOp::Select { cols, keys, want } => {
                let m = typed(cols)?;
                let w = typed(want)?;
                let list = w
                    .iter()
                    .map(|(n, _)| format!("{n}::text"))
                    .collect::<Vec<_>>()
                    .join(", ");
                Statement::new(
                    format!("SELECT {list} FROM {table} WHERE {}", Self::key_condition(&m, 1)),
                    Self::key_arrays(keys, m.len()),
                )
            }
            CascadeOp::Delete { cols, keys } => {
                let m = typed(cols)?;
                Statement::new(
                    format!("DELETE FROM {table} WHERE {}", Self::key_condition(&m, 1)),
                    Self::key_arrays(keys, m.len()),
                )
            }
            CascadeOp::Update { cols, keys, new } => {
                let m = typed(cols)?;
                let (set, mut params): (Vec<String>, Vec<TextParam>) = match new {
                    Some(values) => (
                        m.iter()
                            .enumerate()
                            .map(|(i, (n, ty))| format!("{n} = ${}::{ty}", i + 1))
                            .collect(),
                        values.to_vec(),
                    ),
                    None => (m.iter().map(|(n, _)| format!("{n} = NULL")).collect(), Vec::new()),
                };
                let condition = Self::key_condition(&m, params.len() + 1);
                params.extend(Self::key_arrays(keys, m.len()));
                Statement::new(
                    format!("UPDATE {table} SET {} WHERE {condition}", set.join(", ")),
                    params,
                )
            }
        };
        Ok(vec![statement])
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

    fn int() -> pipeline::schema::ColumnType {
        pipeline::schema::ColumnType::Integer {
            bytes: 4,
            unsigned: false,
        }
    }

    fn engine() -> PostgresEngine {
        let mut c = PostgresSinkConfig::new("postgres://u:p@h/db");
        c.rename_columns
            .insert("app.t".into(), [("from".to_string(), "to".to_string())].into());
        PostgresEngine::from(c)
    }

    fn described(cols: &[(&str, &str, &str)]) -> Described {
        Described {
            columns: cols
                .iter()
                .map(|(n, t, c)| (n.to_string(), (t.to_string(), c.to_string())))
                .collect(),
        }
    }

    /// `app.t (a int, b text, c int)`, key `a` when `keyed`, as the replica has it.
    fn table(e: &PostgresEngine, keyed: bool) -> TargetTable<Table> {
        let col = |n: &str, ty| ColumnDef {
            name: n.to_string(),
            ty,
            nullable: true,
            charset: None,
            collation: None,
            source_type: String::new(),
        };
        let schema = Arc::new(TableSchema::new(
            TableId::new("app", "t"),
            vec![
                col("a", int()),
                col("b", pipeline::schema::ColumnType::Text { max_bytes: 65535 }),
                col("c", int()),
            ],
            if keyed { vec![0] } else { vec![] },
        ));
        let d = described(&[
            ("a", "pg_catalog.int4", "N"),
            ("b", "pg_catalog.text", "S"),
            ("c", "pg_catalog.int4", "N"),
        ]);
        TargetTable {
            id: schema.id.clone(),
            engine: e.table(&schema.id, &schema, &d).unwrap(),
            schema,
        }
    }

    fn t(s: &str) -> TextParam {
        TextParam::text(s)
    }

    /// One array literal per column, the same statement text for any row
    /// count, key arrays only for deletes, after then before for keyless updates.
    #[test]
    fn rows_bind_one_array_per_column() {
        let e = engine();
        let mut k = table(&e, true);
        let r1 = vec![Value::Int(1), Value::Text("x\"y".into()), Value::Null];
        let r2 = vec![Value::Int(2), Value::Null, Value::Int(3)];
        let up = e.rows(&mut k, RowsKind::Upsert, &[&r1, &r2]).unwrap();
        assert!(up.sql.starts_with("INSERT INTO \"app\".\"t\""), "{}", up.sql);
        assert!(up.sql.contains("ON CONFLICT (\"a\") DO UPDATE"), "{}", up.sql);
        assert_eq!(
            up.params,
            vec![t(r#"{"1","2"}"#), t(r#"{"x\"y",NULL}"#), t(r#"{NULL,"3"}"#)]
        );
        let again = e.rows(&mut k, RowsKind::Upsert, &[&r2]).unwrap();
        assert!(Arc::ptr_eq(&up.sql, &again.sql), "one text per table and kind");
        let del = e.rows(&mut k, RowsKind::Delete, &[&r1, &r2]).unwrap();
        assert_eq!(del.params, vec![t(r#"{"1","2"}"#)], "only the key column");
        let mut n = table(&e, false);
        let u = e.update_one(&mut n, &r1, &r2).unwrap();
        assert_eq!(
            u.params,
            vec![
                t("2"),
                TextParam(None),
                t("3"),
                t("1"),
                t("x\"y"),
                TextParam(None)
            ],
            "the after image, then the before image"
        );
        assert_eq!(e.delete_one(&mut n, &r2).unwrap().params.len(), 3);
        let bad = vec![Value::Int(1), Value::Text("a\0b".into()), Value::Null];
        assert_eq!(e.rows(&mut n, RowsKind::Insert, &[&bad]).unwrap_err().column, "b");
        assert_eq!(
            e.max_rows(&n, RowsKind::Insert),
            usize::MAX,
            "no parameter-count limit"
        );
    }

    #[test]
    fn replica_tables_with_arrays_or_missing_columns_are_refused() {
        let e = engine();
        let k = table(&e, true);
        let arrays = described(&[
            ("a", "pg_catalog.int4", "N"),
            ("b", "pg_catalog._text", "A"),
            ("c", "pg_catalog.int4", "N"),
        ]);
        let err = e.table(&k.id, &k.schema, &arrays).unwrap_err();
        assert!(err.contains("column b is an array"), "{err}");
        let short = described(&[("a", "pg_catalog.int4", "N"), ("b", "pg_catalog.text", "S")]);
        let err = e.table(&k.id, &k.schema, &short).unwrap_err();
        assert!(err.contains("no column \"c\""), "{err}");
    }

    #[test]
    fn bookkeeping_statements_and_own_tables() {
        let e = engine();
        assert!(e.is_own_table(&TableId::new("dbmux", "dbmux_offsets")));
        assert!(e.is_own_table(&TableId::new("dbmux", "dbmux_snapshot")));
        assert!(!e.is_own_table(&TableId::new("app", "dbmux_offsets")));
        assert_eq!(e.offsets_table(), "dbmux.dbmux_offsets");
        assert!(e.read_offset("p/r", true).sql.ends_with("FOR UPDATE"));
        assert!(!e.read_offset("p/r", false).sql.contains("FOR UPDATE"));
        let w = e.write_offset("p/r", 42, Some("mysql-bin.000001:4")).unwrap();
        assert_eq!(w.params, vec![t("42"), t("mysql-bin.000001:4"), t("p/r")]);
        assert!(e
            .write_offset("p/r", u64::MAX, None)
            .unwrap_err()
            .contains("bigint"));
        let id = TableId::new("app", "t");
        let moved = e.move_quarantine("p/r", &id, Some(9));
        assert!(moved.sql.starts_with("UPDATE \"dbmux\".\"dbmux_quarantine\""));
        assert_eq!(moved.params, vec![t("p/r"), t("app"), t("t"), t("9")]);
        assert!(e.move_quarantine("p/r", &id, None).sql.starts_with("DELETE"));
        let dropped = e.drop_schema_state("p/r", "app");
        assert_eq!(dropped.len(), 2, "pending snapshots and quarantines");
        assert!(dropped.iter().all(|s| s.params == vec![t("p/r"), t("app")]));
        assert_eq!(e.clear_state("p/r").len(), 2);
        assert_eq!(e.setup().len(), 4, "schema, offsets, quarantine, snapshot");
        assert_eq!(PostgresEngine::as_u64(&t("17")), Some(17));
        assert_eq!(PostgresEngine::as_u64(&TextParam(None)), None);
        assert_eq!(PostgresEngine::as_u64(&t("-1")), None);
    }

    #[test]
    fn recreate_drops_then_creates_schema_table_and_foreign_key_indexes() {
        let e = engine();
        let mut schema = (*table(&e, true).schema).clone();
        schema.foreign_keys.push(pipeline::schema::ForeignKey {
            name: "fk_c".into(),
            table: schema.id.clone(),
            columns: vec!["c".into()],
            referenced_table: TableId::new("app", "parent"),
            referenced_columns: vec!["id".into()],
            on_delete: pipeline::schema::FkAction::Cascade,
            on_update: pipeline::schema::FkAction::Restrict,
            table_captured: true,
            referenced_captured: true,
        });
        let s = e.recreate_table(&schema.id, &schema, &schema, None).unwrap();
        assert_eq!(s[0], "DROP TABLE IF EXISTS \"app\".\"t\"");
        assert_eq!(s[1], "CREATE SCHEMA IF NOT EXISTS \"app\"");
        assert!(s[2].starts_with("CREATE TABLE IF NOT EXISTS \"app\".\"t\""));
        assert_eq!(
            s[3],
            "CREATE INDEX IF NOT EXISTS \"t_fk_c_fk\" ON \"app\".\"t\" (\"c\")"
        );
        assert_eq!(e.create_table(&schema.id, &schema).unwrap(), s[1..].to_vec());
        schema.columns[1].ty = pipeline::schema::ColumnType::Other {
            name: "geometry".into(),
        };
        let (column, message) = e.create_table(&schema.id, &schema).unwrap_err();
        assert_eq!(column, "b");
        assert!(message.contains("geometry"), "{message}");
    }

    #[test]
    fn cascades_cast_to_the_replica_types_and_put_new_values_first() {
        let e = engine();
        let d = described(&[("a", "pg_catalog.int4", "N"), ("b", "pg_catalog.text", "S")]);
        let id = TableId::new("app", "t");
        let cols = vec!["a".to_string()];
        let keys = vec![vec![t("1")], vec![t("2")]];
        let u = e
            .cascade(
                &id,
                &d,
                CascadeOp::Update {
                    cols: &cols,
                    keys: &keys,
                    new: Some(&[t("7")]),
                },
            )
            .unwrap();
        assert_eq!(
            &*u[0].sql,
            "UPDATE \"app\".\"t\" SET \"a\" = $1::pg_catalog.int4 WHERE (\"a\") IN \
             (SELECT * FROM unnest($2::pg_catalog.int4[]))"
        );
        assert_eq!(u[0].params, vec![t("7"), t(r#"{"1","2"}"#)]);
        let want = vec!["b".to_string()];
        let sel = e
            .cascade(
                &id,
                &d,
                CascadeOp::Select {
                    cols: &cols,
                    keys: &keys,
                    want: &want,
                },
            )
            .unwrap();
        assert!(
            sel[0].sql.starts_with("SELECT \"b\"::text FROM"),
            "{}",
            sel[0].sql
        );
        let missing = vec!["zz".to_string()];
        let err = e
            .cascade(
                &id,
                &d,
                CascadeOp::Delete {
                    cols: &missing,
                    keys: &keys,
                },
            )
            .unwrap_err();
        assert!(err.contains("\"zz\""), "{err}");
    }
}
