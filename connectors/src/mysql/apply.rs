//! MySQL / MariaDB's side of [`pipeline::apply::Engine`]: connection,
//! statements, schema changes and error classes. The exactly-once protocol
//! (offset row locked in the data transaction, quarantine, snapshots,
//! cascades, the source-order fallback) is the core's, [`Applier`].
//!
//! # Bookkeeping tables
//! In `offsets_database` (default `dbmux`), apart from replicated databases:
//! `dbmux_offsets` (one row per consumer: `seq`, the source `position` after
//! it, for people), `dbmux_quarantine`, `dbmux_snapshot` (tables waiting for
//! a snapshot's first chunk) and `dbmux_ddl` (a schema change that may have
//! run but whose offset is not committed yet). Their DDL is
//! [`sql::Bookkeeping::setup`].
//!
//! # Session
//! Each connection sets [`sql::SESSION_SETUP`] (UTC, strict mode, no foreign
//! key checks), counts found rather than changed rows (`CLIENT_FOUND_ROWS`,
//! so an update of a row to its own values still proves the row was there),
//! and keeps its prepared statements in a cache. `SELECT VERSION()` tells
//! MariaDB from MySQL ([`Flavor`]): a few types and comparisons differ.
//!
//! # Statements
//! Multi-row statements are padded to a power-of-two row count by repeating
//! their last row (harmless for an upsert or a delete by key), so only a
//! handful of statement shapes exist per table; their texts are built once
//! per table ([`MysqlTable`]) and stay prepared in the connection's cache.
//!
//! # Schema changes
//! DDL commits by itself here ([`Engine::AUTOCOMMIT_DDL`]): the core notes the
//! change in `dbmux_ddl`, commits, runs it, then moves the offset. The change
//! is the source's statement with its names qualified and mapped
//! ([`super::ddl::rewrite`]), run with the source's commit time as the
//! statement time; run again after a crash, "already exists / does not
//! exist" answers ([`DDL_ALREADY_DONE`]) mean done (MariaDB's DDL is atomic:
//! all of a statement happened or none).

use super::apply_sql::{self as sql, Bookkeeping, Flavor};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params};
use pipeline::apply::{
    Applier, ApplyError, CascadeOp, DdlError, Engine, Limits, RowsKind, Statement, TargetTable, ValueError,
};
use pipeline::ddl::{DdlKind, SchemaChange};
use pipeline::event::Row;
use pipeline::replica::Quarantine;
use pipeline::retry::ErrorClass;
use pipeline::schema::{ColumnDef, TableId, TableSchema};
use pipeline::secret::redact_url;
use pipeline::value::Value;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

pub use super::apply_sql::{DDL_TABLE, OFFSETS_TABLE, QUARANTINE_TABLE, SNAPSHOT_TABLE};

/// The MariaDB / MySQL replica applier.
pub type MysqlSink = Applier<MysqlEngine>;
/// Why applying to a MariaDB / MySQL replica failed.
pub type MysqlApplyError = ApplyError<MysqlEngine>;

/// Default database of `dbmux_offsets` on the replica.
pub const DEFAULT_OFFSETS_DATABASE: &str = "dbmux";
/// Server errors that mean a replayed schema change had already taken
/// effect: table/database exists or is unknown, duplicate or unknown column
/// or key, multiple primary keys.
pub const DDL_ALREADY_DONE: &[u16] = &[
    1007, 1008, 1050, 1051, 1054, 1060, 1061, 1068, 1091, 1146, 1176, 1826,
];
/// Default rows per multi-row statement.
pub const DEFAULT_MAX_ROWS_PER_STATEMENT: usize = 1000;
/// Default approximate bytes of values per statement (below MariaDB's default
/// 16 MiB `max_allowed_packet`).
pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 4 << 20;
/// Prepared statements kept per connection.
const STMT_CACHE_SIZE: usize = 256;

/// `[replica.mysql]`: where and how to apply.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSinkConfig {
    /// `mysql://user:password@host:port[/database]`; the database part is only
    /// the connection's default and may be left out.
    pub url: String,
    /// Source database → replica database. A source database not listed is
    /// written to the database of the same name.
    #[serde(default)]
    pub databases: BTreeMap<String, String>,
    /// Database holding `dbmux_offsets`.
    #[serde(default = "default_offsets_database")]
    pub offsets_database: String,
    /// Rows per multi-row statement (also bounded by 65,535 parameters).
    #[serde(default = "default_max_rows")]
    pub max_rows_per_statement: usize,
    /// Approximate bytes of values per statement.
    #[serde(default = "default_max_bytes")]
    pub max_statement_bytes: usize,
    /// Source transactions per target transaction; 0 = all transactions of one
    /// `apply` call in one target transaction. When a call carries more, it is
    /// applied as several consecutive target transactions, each committed with
    /// its own offset (a failure keeps the earlier ones, and the offset says so).
    #[serde(default)]
    pub max_transactions_per_commit: usize,
}

fn default_offsets_database() -> String {
    DEFAULT_OFFSETS_DATABASE.into()
}
fn default_max_rows() -> usize {
    DEFAULT_MAX_ROWS_PER_STATEMENT
}
fn default_max_bytes() -> usize {
    DEFAULT_MAX_STATEMENT_BYTES
}

impl MysqlSinkConfig {
    /// A configuration with defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            databases: BTreeMap::new(),
            offsets_database: default_offsets_database(),
            max_rows_per_statement: DEFAULT_MAX_ROWS_PER_STATEMENT,
            max_statement_bytes: DEFAULT_MAX_STATEMENT_BYTES,
            max_transactions_per_commit: 0,
        }
    }

    /// Every problem, each prefixed with its field path.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.url.starts_with("mysql://") {
            p.push(format!(
                "url: {:?} must start with mysql://",
                redact_url(&self.url)
            ));
        } else if let Err(e) = Opts::from_url(&self.url) {
            p.push(format!(
                "url: {:?} is not a valid MySQL URL: {e}",
                redact_url(&self.url)
            ));
        }
        let name_ok = |s: &str| !s.is_empty() && s.chars().count() <= 64 && !s.ends_with(' ');
        for (from, to) in &self.databases {
            if !name_ok(from) || !name_ok(to) {
                p.push(format!(
                    "databases.{from}: {from:?} → {to:?}: database names must be 1-64 characters, without trailing spaces"
                ));
            }
        }
        if !name_ok(&self.offsets_database) {
            p.push(format!(
                "offsets_database: {:?} must be 1-64 characters, without trailing spaces",
                self.offsets_database
            ));
        }
        if self.max_rows_per_statement == 0 || self.max_rows_per_statement > sql::MAX_PARAMS {
            p.push(format!(
                "max_rows_per_statement: {} must be between 1 and {}",
                self.max_rows_per_statement,
                sql::MAX_PARAMS
            ));
        }
        if self.max_statement_bytes < 1024 {
            p.push(format!(
                "max_statement_bytes: {} must be at least 1024",
                self.max_statement_bytes
            ));
        }
        p
    }

    /// The replica database for a source database.
    pub fn target_database<'a>(&'a self, source: &'a str) -> &'a str {
        self.databases.get(source).map_or(source, String::as_str)
    }
}

impl fmt::Debug for MysqlSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlSinkConfig")
            .field("url", &redact_url(&self.url))
            .field("databases", &self.databases)
            .field("offsets_database", &self.offsets_database)
            .field("max_rows_per_statement", &self.max_rows_per_statement)
            .field("max_statement_bytes", &self.max_statement_bytes)
            .field("max_transactions_per_commit", &self.max_transactions_per_commit)
            .finish()
    }
}

/// Connection trouble, server restarts, deadlocks and lock waits are transient;
/// everything the server says about the data or the statements is definite.
pub fn classify_driver(e: &mysql_async::Error) -> ErrorClass {
    use mysql_async::{DriverError as D, Error as E};
    match e {
        E::Io(_) | E::Other(_) => ErrorClass::Transient,
        E::Driver(
            D::ConnectionClosed
            | D::PacketOutOfOrder
            | D::UnexpectedPacket { .. }
            | D::PoolDisconnected
            | D::BadCompressedPacketHeader,
        ) => ErrorClass::Transient,
        E::Driver(_) | E::Url(_) => ErrorClass::Definite,
        E::Server(s) => match s.code {
            // lock wait timeout, deadlock, XA branch rolled back on deadlock
            1205 | 1213 | 1614
            // too many connections, server shutdown / shutting down
            | 1040 | 1053 | 1077 | 1078 | 1079 | 1080
            // aborted connection, net read/write errors and timeouts
            | 1152 | 1158 | 1159 | 1160 | 1161
            // query interrupted, error during commit/rollback, connection killed
            | 1317 | 1180 | 1181 | 1927
            // too many active transactions, statement time limit (MariaDB / MySQL)
            | 1637 | 1969 | 3024
            // client-side codes a server may relay: gone away, lost connection
            | 2006 | 2013
            // disconnected for inactivity (MySQL 8)
            | 4031 => ErrorClass::Transient,
            _ => ErrorClass::Definite,
        },
    }
}

/// Keys per cascade statement.
const CASCADE_KEYS_PER_STATEMENT: usize = 500;

/// MariaDB / MySQL for [`Applier`].
#[derive(Debug)]
pub struct MysqlEngine {
    config: MysqlSinkConfig,
    books: Bookkeeping,
    /// Read at each connection (`SELECT VERSION()`).
    flavor: Flavor,
}

impl From<MysqlSinkConfig> for MysqlEngine {
    fn from(config: MysqlSinkConfig) -> Self {
        Self::new(config)
    }
}

/// Per replica table: its statement texts, built once.
#[derive(Debug)]
pub struct MysqlTable {
    update_one: Arc<str>,
    delete_one: Arc<str>,
    /// Multi-row statements by kind and (padded) row count.
    multi: HashMap<(RowsKind, usize), Arc<str>>,
}

impl MysqlEngine {
    pub fn new(config: MysqlSinkConfig) -> Self {
        let books = Bookkeeping::new(&config.offsets_database);
        Self {
            config,
            books,
            flavor: Flavor::MariaDb,
        }
    }

    pub fn config(&self) -> &MysqlSinkConfig {
        &self.config
    }

    /// The replica's flavor as of the last connection.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    fn text(s: &str) -> mysql_async::Value {
        mysql_async::Value::Bytes(s.as_bytes().to_vec())
    }

    fn who(consumer: &str, table: &TableId) -> Vec<mysql_async::Value> {
        vec![
            Self::text(consumer),
            Self::text(&table.schema),
            Self::text(&table.name),
        ]
    }

    /// Parameters of `cols` of each row, then the last row's repeated up to
    /// `shape` rows.
    fn values(
        t: &TableSchema,
        cols: &[usize],
        rows: &[&Row],
        shape: usize,
    ) -> Result<Vec<mysql_async::Value>, ValueError> {
        let mut out = Vec::with_capacity(cols.len() * shape);
        for row in rows {
            for &i in cols {
                let c = &t.columns[i];
                out.push(sql::to_param(&row[i], c).map_err(|message| ValueError {
                    column: c.name.clone(),
                    message,
                })?);
            }
        }
        if let Some(last) = out.len().checked_sub(cols.len()) {
            for _ in rows.len()..shape {
                out.extend_from_within(last..last + cols.len());
            }
        }
        Ok(out)
    }

    /// The statements that make one schema change on this replica: the
    /// source's statement with its table names qualified and mapped, or a
    /// generated one where the statement would do more than this table's
    /// part (a multi-table `DROP`/`RENAME`).
    fn ddl_statements(&self, table: &TableSchema, change: &SchemaChange) -> Result<Vec<String>, String> {
        let config = &self.config;
        let map = |db: &str| config.target_database(db).to_string();
        let target = TableId::new(map(&table.id.schema), table.id.name.clone());
        let replay = || -> Result<Vec<String>, String> {
            match super::ddl::rewrite(&change.statement, &change.default_schema, &map) {
                Ok(s) => Ok(vec![s]),
                Err(e) => {
                    // Unreadable for dbmux, but the source ran it: replay it
                    // as written where no name needs mapping.
                    let unmapped = map(&table.id.schema) == table.id.schema
                        && (change.default_schema.is_empty()
                            || map(&change.default_schema) == change.default_schema);
                    if unmapped && !change.default_schema.is_empty() {
                        Ok(vec![
                            format!("USE {}", sql::quote_ident(&change.default_schema)),
                            change.statement.clone(),
                        ])
                    } else {
                        Err(format!(
                            "its table names cannot be rewritten for the replica ({e})"
                        ))
                    }
                }
            }
        };
        // A database that existed before capture began is not in the stream:
        // the replica may not have it yet (the applier creates it for a
        // table's first row too). Created with utf8mb4 like there; a replayed
        // CREATE TABLE without a charset then takes utf8mb4 where the master's
        // database default may be another (values are the same text).
        let ensure_db = |target: &TableId| sql::create_database_sql(&target.schema);
        Ok(match &change.kind {
            DdlKind::CreateTable { .. } => {
                let mut v = vec![ensure_db(&target)];
                v.extend(replay()?);
                v
            }
            DdlKind::AlterTable { .. } | DdlKind::Unknown { .. } => replay()?,
            DdlKind::RenameTable { from } => {
                if change
                    .statement
                    .trim_start()
                    .to_ascii_uppercase()
                    .starts_with("ALTER")
                {
                    replay()?
                } else {
                    let from = TableId::new(map(&from.schema), from.name.clone());
                    vec![
                        ensure_db(&target),
                        format!(
                            "RENAME TABLE {} TO {}",
                            sql::quote_table(&from),
                            sql::quote_table(&target)
                        ),
                    ]
                }
            }
            DdlKind::DropTable => vec![format!("DROP TABLE IF EXISTS {}", sql::quote_table(&target))],
            DdlKind::CreateDatabase => replay()?,
            DdlKind::DropDatabase => {
                if target.schema == config.offsets_database {
                    return Err(format!(
                        "database {} holds dbmux's own tables on this replica; it is not dropped",
                        target.schema
                    ));
                }
                vec![format!(
                    "DROP DATABASE IF EXISTS {}",
                    sql::quote_ident(&target.schema)
                )]
            }
        })
    }
}

impl Engine for MysqlEngine {
    type Param = mysql_async::Value;
    type Error = mysql_async::Error;
    type Conn = Conn;
    /// The table exists (nothing more is read of it).
    type Described = ();
    type Table = MysqlTable;

    const NAME: &'static str = "MariaDB/MySQL";
    const AUTOCOMMIT_DDL: bool = true;

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

    /// A duplicate unique value (1062), the upsert guard firing because a row
    /// collided on a key other than the primary key (1048, see
    /// [`sql::upsert_sql`]), a foreign key of a table created by the user
    /// (1451, 1452).
    fn may_pass_in_source_order(e: &Self::Error) -> bool {
        matches!(e, mysql_async::Error::Server(s) if matches!(s.code, 1062 | 1048 | 1451 | 1452))
    }

    async fn connect(&mut self) -> Result<Conn, Self::Error> {
        let opts = Opts::from_url(&self.config.url)?;
        let opts = OptsBuilder::from_opts(opts)
            .client_found_rows(true)
            .stmt_cache_size(STMT_CACHE_SIZE);
        let mut conn = Conn::new(opts).await?;
        for stmt in sql::SESSION_SETUP {
            conn.query_drop(*stmt).await?;
        }
        let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
        self.flavor = Flavor::from_version(version.as_deref().unwrap_or(""));
        Ok(conn)
    }

    /// Statements with parameters are prepared (and cached by the
    /// connection); those without go as text (DDL, `START TRANSACTION`).
    async fn execute(conn: &mut Conn, s: &Statement<Self::Param>) -> Result<u64, Self::Error> {
        if s.params.is_empty() {
            conn.query_drop(&*s.sql).await?;
        } else {
            conn.exec_drop(&*s.sql, Params::Positional(s.params.clone()))
                .await?;
        }
        Ok(conn.affected_rows())
    }

    async fn query(
        conn: &mut Conn,
        s: &Statement<Self::Param>,
    ) -> Result<Vec<Vec<Self::Param>>, Self::Error> {
        let rows: Vec<mysql_async::Row> = if s.params.is_empty() {
            conn.query(&*s.sql).await?
        } else {
            conn.exec(&*s.sql, Params::Positional(s.params.clone())).await?
        };
        Ok(rows.into_iter().map(mysql_async::Row::unwrap).collect())
    }

    async fn begin(conn: &mut Conn) -> Result<(), Self::Error> {
        conn.query_drop("START TRANSACTION").await
    }

    async fn commit(conn: &mut Conn) -> Result<(), Self::Error> {
        conn.query_drop("COMMIT").await
    }

    async fn rollback(conn: &mut Conn) -> Result<(), Self::Error> {
        conn.query_drop("ROLLBACK").await
    }

    /// Binary results are typed; text results (queries without parameters) are digits.
    fn as_u64(p: &Self::Param) -> Option<u64> {
        match p {
            mysql_async::Value::UInt(v) => Some(*v),
            mysql_async::Value::Int(v) => u64::try_from(*v).ok(),
            mysql_async::Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    fn as_text(p: &Self::Param) -> Option<String> {
        match p {
            mysql_async::Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
            _ => None,
        }
    }

    fn setup(&self) -> Vec<Statement<Self::Param>> {
        self.books.setup().into_iter().map(Statement::text).collect()
    }

    fn offsets_table(&self) -> String {
        format!("{}.{}", self.books.database(), OFFSETS_TABLE)
    }

    fn register(&self, consumer: &str) -> Statement<Self::Param> {
        Statement::new(self.books.register(), vec![Self::text(consumer)])
    }

    fn read_offset(&self, consumer: &str, lock: bool) -> Statement<Self::Param> {
        Statement::new(self.books.read_offset(lock), vec![Self::text(consumer)])
    }

    fn write_offset(
        &self,
        consumer: &str,
        seq: u64,
        position: Option<&str>,
    ) -> Result<Statement<Self::Param>, String> {
        Ok(Statement::new(
            self.books.write_offset(),
            vec![
                mysql_async::Value::UInt(seq),
                position.map_or(mysql_async::Value::NULL, Self::text),
                Self::text(consumer),
            ],
        ))
    }

    fn read_quarantines(&self, consumer: &str) -> Statement<Self::Param> {
        Statement::new(self.books.read_quarantines(), vec![Self::text(consumer)])
    }

    fn store_quarantine(&self, consumer: &str, q: &Quarantine) -> Statement<Self::Param> {
        let mut params = Self::who(consumer, &q.table);
        params.push(mysql_async::Value::UInt(q.first_seq));
        params.push(Self::text(&q.reason));
        Statement::new(self.books.store_quarantine(), params)
    }

    fn move_quarantine(&self, consumer: &str, table: &TableId, next: Option<u64>) -> Statement<Self::Param> {
        let who = Self::who(consumer, table);
        match next {
            Some(n) => {
                let mut params = vec![mysql_async::Value::UInt(n)];
                params.extend(who);
                Statement::new(self.books.move_quarantine(), params)
            }
            None => Statement::new(self.books.lift_quarantine(), who),
        }
    }

    fn target_table(&self, source: &TableId) -> TableId {
        TableId::new(self.config.target_database(&source.schema), source.name.clone())
    }

    /// Columns keep their source names.
    fn target_column(&self, _source: &TableId, column: &str) -> String {
        column.to_string()
    }

    fn is_own_table(&self, target: &TableId) -> bool {
        target.schema == self.config.offsets_database && sql::OWN_TABLES.contains(&target.name.as_str())
    }

    async fn describe(&self, conn: &mut Conn, target: &TableId) -> Result<Option<()>, Self::Error> {
        let found: Option<u8> = conn
            .exec_first(sql::TABLE_EXISTS, (&target.schema, &target.name))
            .await?;
        Ok(found.map(|_| ()))
    }

    fn create_table(&self, target: &TableId, schema: &TableSchema) -> Result<Vec<String>, (String, String)> {
        Ok(vec![
            sql::create_database_sql(&target.schema),
            sql::create_table_sql(target, schema, self.flavor)?,
        ])
    }

    fn table(&self, target: &TableId, schema: &Arc<TableSchema>, _: &()) -> Result<MysqlTable, String> {
        Ok(MysqlTable {
            update_one: sql::update_one_sql(target, schema, self.flavor).into(),
            delete_one: sql::delete_one_sql(target, schema, self.flavor).into(),
            multi: HashMap::new(),
        })
    }

    /// 65,535 parameters per statement.
    fn max_rows(&self, table: &TargetTable<MysqlTable>, kind: RowsKind) -> usize {
        let width = match kind {
            RowsKind::Delete => table.schema.primary_key.len(),
            _ => table.schema.columns.len(),
        };
        sql::MAX_PARAMS / width.max(1)
    }

    /// Upserts and deletes by key are padded to a power of two rows (at most
    /// the statement's row limit), so a table has a handful of shapes.
    fn rows(
        &self,
        table: &mut TargetTable<MysqlTable>,
        kind: RowsKind,
        rows: &[&Row],
    ) -> Result<Statement<Self::Param>, ValueError> {
        let per_statement = self
            .max_rows(table, kind)
            .min(self.config.max_rows_per_statement)
            .max(1);
        let t = &table.schema;
        let (cols, shape): (Vec<usize>, usize) = match kind {
            RowsKind::Insert => ((0..t.columns.len()).collect(), rows.len()),
            RowsKind::Upsert | RowsKind::Delete => {
                let cols = match kind {
                    RowsKind::Delete => t.primary_key.clone(),
                    _ => (0..t.columns.len()).collect(),
                };
                let shape = rows.len().next_power_of_two().min(per_statement).max(rows.len());
                (cols, shape)
            }
        };
        let params = Self::values(t, &cols, rows, shape)?;
        let sql = table
            .engine
            .multi
            .entry((kind, shape))
            .or_insert_with(|| {
                match kind {
                    RowsKind::Upsert => sql::upsert_sql(&table.id, t, shape),
                    RowsKind::Delete => sql::delete_sql(&table.id, t, shape),
                    RowsKind::Insert => sql::insert_sql(&table.id, t, shape),
                }
                .into()
            })
            .clone();
        Ok(Statement::new(sql, params))
    }

    /// Parameters: the after image, then the before image.
    fn update_one(
        &self,
        table: &mut TargetTable<MysqlTable>,
        before: &Row,
        after: &Row,
    ) -> Result<Statement<Self::Param>, ValueError> {
        let t = &table.schema;
        let all: Vec<usize> = (0..t.columns.len()).collect();
        let mut params = Self::values(t, &all, &[after], 1)?;
        params.extend(Self::values(t, &all, &[before], 1)?);
        Ok(Statement::new(table.engine.update_one.clone(), params))
    }

    fn delete_one(
        &self,
        table: &mut TargetTable<MysqlTable>,
        before: &Row,
    ) -> Result<Statement<Self::Param>, ValueError> {
        let t = &table.schema;
        let all: Vec<usize> = (0..t.columns.len()).collect();
        Ok(Statement::new(
            table.engine.delete_one.clone(),
            Self::values(t, &all, &[before], 1)?,
        ))
    }

    fn truncate(&self, target: &TableId) -> Statement<Self::Param> {
        Statement::text(sql::truncate_sql(target))
    }

    fn read_pending(&self, consumer: &str) -> Statement<Self::Param> {
        Statement::new(self.books.read_pending(), vec![Self::text(consumer)])
    }

    fn store_pending(&self, consumer: &str, table: &TableId, run: u64) -> Statement<Self::Param> {
        let mut params = Self::who(consumer, table);
        params.push(mysql_async::Value::UInt(run));
        Statement::new(self.books.store_pending(), params)
    }

    fn drop_pending(&self, consumer: &str, table: &TableId) -> Statement<Self::Param> {
        Statement::new(self.books.drop_pending(), Self::who(consumer, table))
    }

    fn drop_schema_state(&self, consumer: &str, schema: &str) -> Vec<Statement<Self::Param>> {
        self.books
            .drop_schema_state()
            .into_iter()
            .map(|s| Statement::new(s, vec![Self::text(consumer), Self::text(schema)]))
            .collect()
    }

    fn clear_state(&self, consumer: &str) -> Vec<Statement<Self::Param>> {
        self.books
            .clear_state()
            .into_iter()
            .map(|s| Statement::new(s, vec![Self::text(consumer)]))
            .collect()
    }

    /// On a MariaDB replica, the source's own `CREATE TABLE` (indexes,
    /// defaults and all) with its database mapped; otherwise, or when it
    /// cannot be rewritten, one generated from the definition.
    fn recreate_table(
        &self,
        target: &TableId,
        schema: &TableSchema,
        source: &TableSchema,
        create: Option<&str>,
    ) -> Result<Vec<String>, (String, String)> {
        let config = &self.config;
        let map = |db: &str| config.target_database(db).to_string();
        let replayed = create
            .filter(|_| self.flavor == Flavor::MariaDb)
            .and_then(|text| super::ddl::rewrite(text, &source.id.schema, &map).ok());
        let create = match replayed {
            Some(c) => c,
            None => sql::create_table_sql(target, schema, self.flavor)?,
        };
        Ok(vec![
            sql::create_database_sql(&target.schema),
            format!("DROP TABLE IF EXISTS {}", sql::quote_table(target)),
            create,
        ])
    }

    fn read_ddl_note(&self, consumer: &str) -> Option<Statement<Self::Param>> {
        Some(Statement::new(
            self.books.read_ddl_note(),
            vec![Self::text(consumer)],
        ))
    }

    fn store_ddl_note(&self, consumer: &str, seq: u64, statement: &str) -> Option<Statement<Self::Param>> {
        Some(Statement::new(
            self.books.store_ddl_note(),
            vec![
                Self::text(consumer),
                mysql_async::Value::UInt(seq),
                Self::text(statement),
            ],
        ))
    }

    fn clear_ddl_note(&self, consumer: &str) -> Option<Statement<Self::Param>> {
        Some(Statement::new(
            self.books.clear_ddl_note(),
            vec![Self::text(consumer)],
        ))
    }

    /// [`MysqlEngine::ddl_statements`] at the source's commit time (`SET
    /// TIMESTAMP`, so `DEFAULT CURRENT_TIMESTAMP` columns a change adds get
    /// the source's values).
    async fn schema_change(
        &self,
        conn: &mut Conn,
        source: &TableSchema,
        _renamed: &TableSchema,
        change: &SchemaChange,
        commit_ts_us: i64,
        retried: bool,
    ) -> Result<(), DdlError<Self::Error>> {
        let statements = self.ddl_statements(source, change).map_err(DdlError::Refused)?;
        conn.query_drop(format!(
            "SET TIMESTAMP = {}.{:06}",
            commit_ts_us.div_euclid(1_000_000),
            commit_ts_us.rem_euclid(1_000_000)
        ))
        .await
        .map_err(DdlError::Driver)?;
        for st in &statements {
            match conn.query_drop(st).await {
                Ok(()) => {}
                Err(mysql_async::Error::Server(e)) if retried && DDL_ALREADY_DONE.contains(&e.code) => {
                    tracing::info!(table = %source.id, code = e.code,
                        "schema change had already taken effect before a restart");
                }
                Err(e) => return Err(DdlError::Driver(e)),
            }
        }
        conn.query_drop("SET TIMESTAMP = DEFAULT")
            .await
            .map_err(DdlError::Driver)
    }

    fn param(&self, column: &ColumnDef, value: &Value) -> Result<Self::Param, String> {
        sql::to_param(value, column)
    }

    fn null() -> Self::Param {
        mysql_async::Value::NULL
    }

    fn is_null(p: &Self::Param) -> bool {
        matches!(p, mysql_async::Value::NULL)
    }

    /// Rows are matched with `=` under the replica column's collation, as
    /// InnoDB matches them on the source; keys in statements of 500.
    fn cascade(
        &self,
        target: &TableId,
        _: &(),
        op: CascadeOp<'_, Self::Param>,
    ) -> Result<Vec<Statement<Self::Param>>, String> {
        let keys = match op {
            CascadeOp::Select { keys, .. }
            | CascadeOp::Delete { keys, .. }
            | CascadeOp::Update { keys, .. } => keys,
        };
        Ok(keys
            .chunks(CASCADE_KEYS_PER_STATEMENT)
            .map(|part| {
                let key_params = part.iter().flatten().cloned();
                match op {
                    CascadeOp::Select { cols, want, .. } => Statement::new(
                        sql::cascade_select_sql(target, cols, part.len(), want),
                        key_params.collect(),
                    ),
                    CascadeOp::Delete { cols, .. } => Statement::new(
                        sql::cascade_delete_sql(target, cols, part.len()),
                        key_params.collect(),
                    ),
                    CascadeOp::Update { cols, new, .. } => {
                        let mut params: Vec<mysql_async::Value> = new.map(<[_]>::to_vec).unwrap_or_default();
                        params.extend(key_params);
                        Statement::new(
                            sql::cascade_update_sql(target, cols, part.len(), new.is_none()),
                            params,
                        )
                    }
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::retry::Classify;

    #[test]
    fn config_defaults_validation_and_redaction() {
        let c: MysqlSinkConfig = serde_json::from_str(r#"{"url": "mysql://u:secret@h:3306/app"}"#).unwrap();
        assert_eq!(c.offsets_database, "dbmux");
        assert_eq!(c.max_rows_per_statement, DEFAULT_MAX_ROWS_PER_STATEMENT);
        assert_eq!(c.target_database("app"), "app");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret") && dbg.contains("***"), "{dbg}");

        let err =
            serde_json::from_str::<MysqlSinkConfig>(r#"{"url": "mysql://h/a", "uurl": 1}"#).unwrap_err();
        assert!(err.to_string().contains("uurl"), "{err}");

        let c: MysqlSinkConfig = serde_json::from_str(
            r#"{"url": "postgres://u:secret@h/app", "databases": {"app": ""}, "offsets_database": "",
                "max_rows_per_statement": 0, "max_statement_bytes": 10}"#,
        )
        .unwrap();
        let problems = c.validate();
        for field in [
            "url:",
            "databases.app:",
            "offsets_database:",
            "max_rows_per_statement:",
            "max_statement_bytes:",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field} in {problems:?}"
            );
        }
        assert!(!problems.iter().any(|p| p.contains("secret")), "{problems:?}");
        let mapped = MysqlSinkConfig {
            databases: [("app".to_string(), "app_copy".to_string())].into(),
            ..MysqlSinkConfig::new("mysql://h/x")
        };
        assert_eq!(mapped.target_database("app"), "app_copy");
        assert_eq!(mapped.target_database("other"), "other");
    }

    #[test]
    fn classification() {
        let server = |code| {
            mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: String::new(),
                state: String::new(),
            })
        };
        assert_eq!(classify_driver(&server(1213)), ErrorClass::Transient);
        assert_eq!(classify_driver(&server(1205)), ErrorClass::Transient);
        assert_eq!(classify_driver(&server(1927)), ErrorClass::Transient);
        assert_eq!(classify_driver(&server(1366)), ErrorClass::Definite);
        assert_eq!(
            classify_driver(&mysql_async::Error::Driver(
                mysql_async::DriverError::ConnectionClosed
            )),
            ErrorClass::Transient
        );
        let io = mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )));
        assert!(MysqlApplyError::driver("x")(io).is_transient());
        assert!(!MysqlApplyError::Diverged {
            table: "t".into(),
            op: "delete",
            seq: 1
        }
        .is_transient());
    }

    fn engine(config: MysqlSinkConfig) -> MysqlEngine {
        MysqlEngine::from(config)
    }

    fn col(name: &str, ty: pipeline::schema::ColumnType) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            ty,
            nullable: true,
            charset: None,
            collation: None,
            source_type: String::new(),
        }
    }

    fn target(engine: &MysqlEngine, pk: Vec<usize>) -> TargetTable<MysqlTable> {
        use pipeline::schema::ColumnType;
        let int = ColumnType::Integer {
            bytes: 4,
            unsigned: false,
        };
        let source = TableSchema::new(
            TableId::new("app", "t"),
            vec![
                col("id", int.clone()),
                col("k", int),
                col("v", ColumnType::VarChar { length: 10 }),
            ],
            pk,
        );
        let id = engine.target_table(&source.id);
        let schema = Arc::new(TableSchema {
            id: id.clone(),
            ..source
        });
        let state = engine.table(&id, &schema, &()).unwrap();
        TargetTable {
            id,
            schema,
            engine: state,
        }
    }

    fn row(i: i64) -> Row {
        vec![Value::Int(i), Value::Int(-i), Value::Text(format!("v{i}"))]
    }

    /// Upserts and deletes go in power-of-two shapes (the last row repeated),
    /// capped by `max_rows_per_statement`; plain inserts are not padded; a
    /// shape's text is built once per table.
    #[test]
    fn padded_shapes_and_cached_texts() {
        let e = engine(MysqlSinkConfig {
            max_rows_per_statement: 6,
            databases: [("app".to_string(), "copy".to_string())].into(),
            ..MysqlSinkConfig::new("mysql://h/x")
        });
        let mut t = target(&e, vec![0, 1]);
        assert_eq!(t.id, TableId::new("copy", "t"));
        let rows: Vec<Row> = (1..=6).map(row).collect();
        let refs: Vec<&Row> = rows.iter().collect();

        let up = e.rows(&mut t, RowsKind::Upsert, &refs[..3]).unwrap();
        assert_eq!(up.sql.matches("(?,?,?)").count(), 4, "{}", up.sql);
        assert!(up.sql.starts_with("INSERT INTO `copy`.`t`"), "{}", up.sql);
        assert!(up.sql.contains("ON DUPLICATE KEY UPDATE"), "{}", up.sql);
        assert_eq!(up.params.len(), 12);
        assert_eq!(up.params[9..], up.params[6..9], "the last row repeated");
        let again = e.rows(&mut t, RowsKind::Upsert, &refs[1..4]).unwrap();
        assert!(Arc::ptr_eq(&up.sql, &again.sql), "one text per shape");
        // 5 rows: 8 would pass the configured 6, so 6.
        let five = e.rows(&mut t, RowsKind::Upsert, &refs[..5]).unwrap();
        assert_eq!(five.sql.matches("(?,?,?)").count(), 6, "{}", five.sql);

        let del = e.rows(&mut t, RowsKind::Delete, &refs[..3]).unwrap();
        assert_eq!(del.sql.matches("(`id`=? AND `k`=?)").count(), 4, "{}", del.sql);
        assert_eq!(
            del.params,
            [1, -1, 2, -2, 3, -3, 3, -3].map(mysql_async::Value::Int).to_vec(),
            "keys only, padded"
        );

        let mut keyless = target(&e, vec![]);
        let ins = e.rows(&mut keyless, RowsKind::Insert, &refs[..3]).unwrap();
        assert_eq!(ins.sql.matches("(?,?,?)").count(), 3, "{}", ins.sql);
        assert_eq!(ins.params.len(), 9);
        assert_eq!(e.max_rows(&keyless, RowsKind::Insert), sql::MAX_PARAMS / 3);
        assert_eq!(e.max_rows(&t, RowsKind::Delete), sql::MAX_PARAMS / 2);

        let upd = e.update_one(&mut keyless, &rows[0], &rows[1]).unwrap();
        assert!(upd.sql.ends_with("LIMIT 1"), "{}", upd.sql);
        assert_eq!(upd.params[0], mysql_async::Value::Int(2), "after image first");
        assert_eq!(upd.params[3], mysql_async::Value::Int(1), "then the before image");
        let del = e.delete_one(&mut keyless, &rows[0]).unwrap();
        assert_eq!(del.params.len(), 3);

        // A value the column cannot take names the column.
        let bad = vec![Value::Int(1), Value::Int(1), Value::Timestamp(i64::MAX)];
        let err = e.rows(&mut t, RowsKind::Upsert, &[&bad]).unwrap_err();
        assert_eq!(err.column, "v");
    }

    #[test]
    fn bookkeeping_statements() {
        let e = engine(MysqlSinkConfig {
            offsets_database: "books".into(),
            ..MysqlSinkConfig::new("mysql://h/x")
        });
        assert_eq!(e.setup().len(), 5, "the database and four tables");
        assert!(e
            .setup()
            .iter()
            .all(|s| s.params.is_empty() && s.sql.contains("IF NOT EXISTS")));
        let lock = e.read_offset("c", true);
        assert!(lock.sql.contains("`books`.`dbmux_offsets`") && lock.sql.ends_with("FOR UPDATE"));
        assert!(!e.read_offset("c", false).sql.contains("FOR UPDATE"));
        let w = e.write_offset("c", 7, None).unwrap();
        assert_eq!(
            w.params,
            [
                mysql_async::Value::UInt(7),
                mysql_async::Value::NULL,
                mysql_async::Value::from("c")
            ]
        );
        for t in sql::OWN_TABLES {
            assert!(e.is_own_table(&TableId::new("books", *t)), "{t}");
            assert!(!e.is_own_table(&TableId::new("app", *t)), "{t}");
        }
        let cleared: Vec<String> = e.clear_state("c").iter().map(|s| s.sql.to_string()).collect();
        for t in [QUARANTINE_TABLE, SNAPSHOT_TABLE, DDL_TABLE] {
            assert!(cleared.iter().any(|s| s.contains(t)), "{t} in {cleared:?}");
        }
        assert_eq!(e.drop_schema_state("c", "app").len(), 2);
        let moved = e.move_quarantine("c", &TableId::new("app", "t"), Some(9));
        assert!(moved.sql.starts_with("UPDATE") && moved.params[0] == mysql_async::Value::UInt(9));
        assert!(e
            .move_quarantine("c", &TableId::new("app", "t"), None)
            .sql
            .starts_with("DELETE"));
        assert!(e.read_ddl_note("c").is_some() && e.store_ddl_note("c", 3, "DROP TABLE t").is_some());
        assert_eq!(e.offsets_table(), "books.dbmux_offsets");
        // Text results (no parameters) come back as digits.
        assert_eq!(MysqlEngine::as_u64(&mysql_async::Value::from("42")), Some(42));
        assert_eq!(MysqlEngine::as_u64(&mysql_async::Value::UInt(42)), Some(42));
    }

    /// A snapshot's table: the source's own CREATE TABLE on a MariaDB
    /// replica (database mapped), a generated one on MySQL.
    #[test]
    fn recreate_replays_the_source_create_on_mariadb() {
        let mut e = engine(MysqlSinkConfig {
            databases: [("app".to_string(), "copy".to_string())].into(),
            ..MysqlSinkConfig::new("mysql://h/x")
        });
        let t = target(&e, vec![0]);
        let source = TableSchema {
            id: TableId::new("app", "t"),
            ..(*t.schema).clone()
        };
        let create = "CREATE TABLE `t` (`id` int NOT NULL, `k` int DEFAULT 5, `v` varchar(10), \
                      PRIMARY KEY (`id`), KEY `kk` (`k`)) ENGINE=InnoDB";
        let ddl = e.recreate_table(&t.id, &t.schema, &source, Some(create)).unwrap();
        assert_eq!(ddl[1], "DROP TABLE IF EXISTS `copy`.`t`");
        assert!(
            ddl[2].contains("`copy`") && ddl[2].contains("DEFAULT 5"),
            "{}",
            ddl[2]
        );
        e.flavor = Flavor::Mysql;
        let ddl = e.recreate_table(&t.id, &t.schema, &source, Some(create)).unwrap();
        assert!(
            ddl[2].starts_with("CREATE TABLE IF NOT EXISTS `copy`.`t`") && !ddl[2].contains("DEFAULT 5"),
            "{}",
            ddl[2]
        );
    }

    #[test]
    fn schema_change_statements() {
        let e = engine(MysqlSinkConfig {
            databases: [("app".to_string(), "copy".to_string())].into(),
            offsets_database: "books".into(),
            ..MysqlSinkConfig::new("mysql://h/x")
        });
        let change = |kind: DdlKind, statement: &str| SchemaChange {
            statement: statement.into(),
            default_schema: "app".into(),
            kind,
            unique_key_names: vec![],
        };
        let t = TableSchema::new(TableId::new("app", "t"), vec![], vec![]);
        assert_eq!(
            e.ddl_statements(&t, &change(DdlKind::DropTable, "DROP TABLE t, u"))
                .unwrap(),
            ["DROP TABLE IF EXISTS `copy`.`t`"]
        );
        let alter = e
            .ddl_statements(
                &t,
                &change(
                    DdlKind::AlterTable { actions: vec![] },
                    "ALTER TABLE t ADD COLUMN x INT",
                ),
            )
            .unwrap();
        assert_eq!(alter.len(), 1);
        assert!(alter[0].contains("`copy`"), "{alter:?}");
        let books = TableSchema::new(TableId::new("books", ""), vec![], vec![]);
        let refused = e
            .ddl_statements(&books, &change(DdlKind::DropDatabase, "DROP DATABASE books"))
            .unwrap_err();
        assert!(refused.contains("dbmux's own tables"), "{refused}");
    }
}
