//! The MySQL / MariaDB applier: a [`Sink`] that writes change events into a
//! replica server.
//!
//! # Exactly once
//! Each [`Sink::apply`] call is one target transaction:
//! `START TRANSACTION` → `SELECT seq … FOR UPDATE` on this applier's row of
//! `dbmux.dbmux_offsets` → the data statements → `UPDATE dbmux_offsets SET
//! seq = <last seq>` → `COMMIT`. Events at or below the stored `seq` are
//! skipped, so a batch retried after an ambiguous `COMMIT` failure (the
//! connection dropped, the commit may or may not have happened) is never
//! applied twice; the row lock makes a second applier with the same name wait
//! and then skip instead of applying concurrently.
//!
//! # Offsets table
//! `dbmux.dbmux_offsets` (database configurable with `offsets_database`), in
//! its own database so it never mixes with replicated ones:
//! ```sql
//! CREATE TABLE IF NOT EXISTS `dbmux`.`dbmux_offsets` (
//!   `consumer` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
//!   `seq` BIGINT UNSIGNED NOT NULL,
//!   `position` TEXT NULL,
//!   `updated_at` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
//! ) ENGINE=InnoDB
//! ```
//! `consumer` is the replica name given to [`MysqlSink::new`]; `position` is the
//! source position after the last applied transaction, for people.
//!
//! # Reconnection
//! Any error rolls the transaction back and drops the connection. The next
//! `open` or `apply` connects again, sets the session up and re-reads the
//! offset; nothing is cached across connections except which tables exist.
//!
//! # Statements
//! See [`pipeline::batch`] for how events become steps and
//! [`super::apply_sql`] for the SQL. Multi-row statements are padded to a
//! power-of-two row count by repeating their last row (harmless for an
//! upsert or a delete by key) so only a handful of prepared shapes exist per
//! table; the connection's statement cache keeps them prepared.

use super::apply_sql::{self as sql, Flavor};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params};
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

/// Default database of `dbmux_offsets` on the replica.
pub const DEFAULT_OFFSETS_DATABASE: &str = "dbmux";
/// The offsets table's name.
pub const OFFSETS_TABLE: &str = "dbmux_offsets";
/// The quarantine table's name (beside the offsets table).
pub const QUARANTINE_TABLE: &str = "dbmux_quarantine";
/// Tables waiting for a snapshot's first chunk (beside the offsets table).
pub const SNAPSHOT_TABLE: &str = "dbmux_snapshot";
/// A schema change that may have run but whose offset is not committed yet
/// (MariaDB/MySQL DDL commits by itself; beside the offsets table).
pub const DDL_TABLE: &str = "dbmux_ddl";

/// Server errors that mean a replayed schema change had already taken
/// effect: table/database exists or is unknown, duplicate or unknown column
/// or key, multiple primary keys.
const DDL_ALREADY_DONE: &[u16] = &[
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

/// Why applying to a MySQL / MariaDB replica failed.
#[derive(Debug, thiserror::Error)]
pub enum MysqlApplyError {
    #[error("replica URL: {0}")]
    Url(String),
    #[error("MySQL replica, {context}: {source}")]
    Driver {
        context: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{table}.{column}: {message}")]
    Value {
        table: String,
        column: String,
        message: String,
    },
    #[error("cannot create {table}: column {column}: {message}")]
    UnsupportedColumn {
        table: String,
        column: String,
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
    #[error(
        "replica table {target} already receives source table {other}; {table} cannot be written there too"
    )]
    TargetTaken {
        table: TableId,
        target: String,
        other: TableId,
    },
    #[error(
        "cannot apply the schema change `{statement}` to {table} on the MariaDB/MySQL replica: {message}"
    )]
    Ddl {
        table: String,
        statement: String,
        message: String,
    },
    /// A definite error while applying one source table's events.
    #[error("{source}")]
    InTable {
        table: TableId,
        source: Box<MysqlApplyError>,
    },
}

impl MysqlApplyError {
    /// Ties a definite error to the source table whose step failed (transient
    /// errors belong to the connection, not to a table).
    fn in_table(self, table: &TableId) -> Self {
        match self {
            e @ MysqlApplyError::InTable { .. } => e,
            e if e.is_transient() => e,
            e => MysqlApplyError::InTable {
                table: table.clone(),
                source: Box::new(e),
            },
        }
    }

    /// A constraint the set-based plan may have broken and source order may
    /// not: a duplicate unique value (1062), the upsert guard firing because
    /// a row collided on a key other than the primary key (1048), a foreign
    /// key of a table created by the user (1451, 1452).
    fn may_pass_in_source_order(&self) -> bool {
        let code = match self {
            MysqlApplyError::InTable { source, .. } => return source.may_pass_in_source_order(),
            MysqlApplyError::Driver {
                source: mysql_async::Error::Server(s),
                ..
            } => s.code,
            _ => return false,
        };
        matches!(code, 1062 | 1048 | 1451 | 1452)
    }
}

impl Classify for MysqlApplyError {
    fn class(&self) -> ErrorClass {
        match self {
            MysqlApplyError::Driver { source, .. } => classify_driver(source),
            MysqlApplyError::InTable { source, .. } => source.class(),
            _ => ErrorClass::Definite,
        }
    }
}

impl TableScoped for MysqlApplyError {
    fn table(&self) -> Option<&TableId> {
        match self {
            MysqlApplyError::InTable { table, .. } | MysqlApplyError::TargetTaken { table, .. } => {
                Some(table)
            }
            MysqlApplyError::Plan(p) => p.table(),
            _ => None,
        }
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

type Result<T, E = MysqlApplyError> = std::result::Result<T, E>;

fn driver(context: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> MysqlApplyError {
    let context = context.into();
    move |source| MysqlApplyError::Driver { context, source }
}

/// SQL for one source table definition, built once.
struct TableSql {
    target: TableId,
    target_text: String,
    update_one: String,
    delete_one: String,
    truncate: String,
    /// Row counts per statement shape, by kind (0 upsert, 1 delete, 2 insert).
    multi: HashMap<(u8, usize), Arc<str>>,
}

/// Applies change events to a MySQL or MariaDB server.
pub struct MysqlSink {
    name: String,
    config: MysqlSinkConfig,
    conn: Option<Conn>,
    flavor: Flavor,
    /// The offset read at the last (re)connection or written by the last commit.
    applied: u64,
    /// Replica tables known to exist.
    known_tables: HashSet<TableId>,
    /// Generated SQL per source table definition.
    tables: HashMap<Arc<TableSchema>, TableSql>,
    /// Which source table each replica table receives (two never share one).
    targets: HashMap<TableId, TableId>,
    offsets_table: String,
    quarantine_table: String,
    snapshot_table: String,
    ddl_table: String,
}

/// What one target transaction does.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// Apply after the offset, leaving out `skip`, and move the offset.
    Stream { skip: &'a HashSet<TableId> },
    /// Apply the events of a quarantined table from `from` (all at or below
    /// the offset) and move its quarantine to `next` or lift it.
    Resume {
        table: &'a TableId,
        from: u64,
        next: Option<u64>,
    },
}

impl MysqlSink {
    /// A sink for replica `name` (the key of its row in `dbmux_offsets`). Connects on `open`.
    pub fn new(name: &str, config: MysqlSinkConfig) -> Self {
        let offsets_table = format!(
            "{}.{}",
            sql::quote_ident(&config.offsets_database),
            sql::quote_ident(OFFSETS_TABLE)
        );
        let quarantine_table = format!(
            "{}.{}",
            sql::quote_ident(&config.offsets_database),
            sql::quote_ident(QUARANTINE_TABLE)
        );
        let own = |t: &str| {
            format!(
                "{}.{}",
                sql::quote_ident(&config.offsets_database),
                sql::quote_ident(t)
            )
        };
        let snapshot_table = own(SNAPSHOT_TABLE);
        let ddl_table = own(DDL_TABLE);
        Self {
            name: name.to_string(),
            config,
            conn: None,
            flavor: Flavor::MariaDb,
            applied: 0,
            known_tables: HashSet::new(),
            tables: HashMap::new(),
            targets: HashMap::new(),
            quarantine_table,
            offsets_table,
            snapshot_table,
            ddl_table,
        }
    }

    /// The offset as of the last `open` or successful `apply`.
    pub fn applied_seq(&self) -> u64 {
        self.applied
    }

    /// The configuration.
    pub fn config(&self) -> &MysqlSinkConfig {
        &self.config
    }

    async fn connect(&mut self) -> Result<()> {
        if let Some(old) = self.conn.take() {
            let _ = old.disconnect().await;
        }
        let opts = Opts::from_url(&self.config.url).map_err(|e| MysqlApplyError::Url(e.to_string()))?;
        let opts = OptsBuilder::from_opts(opts)
            .client_found_rows(true)
            .stmt_cache_size(STMT_CACHE_SIZE);
        let mut conn = Conn::new(opts).await.map_err(driver("connecting"))?;
        for stmt in sql::SESSION_SETUP {
            conn.query_drop(*stmt)
                .await
                .map_err(driver("setting up the session"))?;
        }
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(driver("reading the server version"))?;
        self.flavor = Flavor::from_version(version.as_deref().unwrap_or(""));
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {} DEFAULT CHARACTER SET utf8mb4",
            sql::quote_ident(&self.config.offsets_database)
        ))
        .await
        .map_err(driver("creating the offsets database"))?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             `consumer` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
             `seq` BIGINT UNSIGNED NOT NULL, \
             `position` TEXT NULL, \
             `updated_at` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
            self.offsets_table
        ))
        .await
        .map_err(driver("creating the offsets table"))?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             `consumer` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
             `table_schema` VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
             `table_name` VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
             `first_seq` BIGINT UNSIGNED NOT NULL, \
             `reason` TEXT NOT NULL, \
             `since` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
             PRIMARY KEY (`consumer`, `table_schema`, `table_name`)) ENGINE=InnoDB",
            self.quarantine_table
        ))
        .await
        .map_err(driver("creating the quarantine table"))?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             `consumer` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
             `table_schema` VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
             `table_name` VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
             `run` BIGINT UNSIGNED NOT NULL, \
             `since` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
             PRIMARY KEY (`consumer`, `table_schema`, `table_name`)) ENGINE=InnoDB",
            self.snapshot_table
        ))
        .await
        .map_err(driver("creating the snapshot table"))?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             `consumer` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
             `seq` BIGINT UNSIGNED NOT NULL, \
             `statement` LONGTEXT NOT NULL, \
             `since` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
            self.ddl_table
        ))
        .await
        .map_err(driver("creating the schema-change table"))?;
        conn.exec_drop(
            format!(
                "INSERT INTO {} (`consumer`, `seq`) VALUES (?, 0) ON DUPLICATE KEY UPDATE `consumer` = `consumer`",
                self.offsets_table
            ),
            (self.name.as_str(),),
        )
        .await
        .map_err(driver("registering in the offsets table"))?;
        let seq: Option<u64> = conn
            .exec_first(
                format!("SELECT `seq` FROM {} WHERE `consumer` = ?", self.offsets_table),
                (self.name.as_str(),),
            )
            .await
            .map_err(driver("reading the offset"))?;
        self.applied = seq.ok_or_else(|| self.offset_missing())?;
        self.conn = Some(conn);
        Ok(())
    }

    fn offset_missing(&self) -> MysqlApplyError {
        MysqlApplyError::OffsetRowMissing {
            table: format!("{}.{}", self.config.offsets_database, OFFSETS_TABLE),
            consumer: self.name.clone(),
        }
    }

    /// Creates every replica database and table the plan needs that is not known
    /// to exist. Runs outside the data transaction: DDL commits implicitly in MySQL.
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
                        self.recreate(ev, m).await.map_err(|e| e.in_table(&ev.table.id))?;
                        seen.insert(Arc::as_ptr(&ev.table) as usize);
                    }
                    continue;
                }
                pipeline::Op::Ddl(_) => continue,
                _ => {}
            }
            if !seen.insert(Arc::as_ptr(&ev.table) as usize) {
                continue;
            }
            self.ensure_table(ev)
                .await
                .map_err(|e| e.in_table(&ev.table.id))?;
        }
        Ok(())
    }

    /// The replica table a source table is written to, checked: never
    /// dbmux's own tables, never one another source table already feeds.
    fn claim_target(&mut self, source: &TableId) -> Result<TableId> {
        let target = TableId::new(self.config.target_database(&source.schema), source.name.clone());
        if target.schema == self.config.offsets_database
            && [OFFSETS_TABLE, QUARANTINE_TABLE, SNAPSHOT_TABLE, DDL_TABLE].contains(&target.name.as_str())
        {
            return Err(MysqlApplyError::TargetTaken {
                table: source.clone(),
                target: target.to_string(),
                other: TableId::new("dbmux", "itself"),
            });
        }
        match self.targets.get(&target) {
            Some(other) if other != source => {
                return Err(MysqlApplyError::TargetTaken {
                    table: source.clone(),
                    target: target.to_string(),
                    other: other.clone(),
                })
            }
            Some(_) => {}
            None => {
                self.targets.insert(target.clone(), source.clone());
            }
        }
        Ok(target)
    }

    /// A snapshot's first chunk: the replica table is dropped and created
    /// again as the source has it at the chunk's position — from the source's
    /// own `CREATE TABLE` on a MariaDB replica (indexes, defaults and all),
    /// from the definition otherwise. Runs before the data transaction (DDL
    /// commits by itself); running it twice is harmless.
    async fn recreate(
        &mut self,
        ev: &pipeline::ChangeEvent,
        mark: &pipeline::snapshot::SnapshotMark,
    ) -> Result<()> {
        let target = self.claim_target(&ev.table.id)?;
        let source_statement = match &mark.phase {
            pipeline::snapshot::SnapshotPhase::Chunk { create, .. } => create.clone(),
            _ => None,
        };
        let config = self.config.clone();
        let map = |db: &str| config.target_database(db).to_string();
        let create = match source_statement.filter(|_| self.flavor == Flavor::MariaDb) {
            Some(text) => super::ddl::rewrite(&text, &ev.table.id.schema, &map).ok(),
            None => None,
        };
        let create = match create {
            Some(c) => c,
            None => sql::create_table_sql(&target, &ev.table, self.flavor).map_err(|(column, message)| {
                MysqlApplyError::UnsupportedColumn {
                    table: target.to_string(),
                    column,
                    message,
                }
            })?,
        };
        let conn = self.conn.as_mut().expect("connected");
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {} DEFAULT CHARACTER SET utf8mb4",
            sql::quote_ident(&target.schema)
        ))
        .await
        .map_err(driver(format!("creating database {}", target.schema)))?;
        conn.query_drop(format!("DROP TABLE IF EXISTS {}", sql::quote_table(&target)))
            .await
            .map_err(driver(format!("dropping {target} to reload it")))?;
        conn.query_drop(&create)
            .await
            .map_err(driver(format!("creating table {target}")))?;
        self.tables.retain(|k, _| k.id != ev.table.id);
        self.known_tables.insert(target);
        Ok(())
    }

    async fn ensure_table(&mut self, ev: &pipeline::ChangeEvent) -> Result<()> {
        if matches!(ev.op, pipeline::Op::Ddl(_) | pipeline::Op::Snapshot(_)) {
            return Ok(());
        }
        let target = self.claim_target(&ev.table.id)?;
        if self.known_tables.contains(&target) {
            return Ok(());
        }
        if ev.table.columns_unknown() {
            // A TRUNCATE of a table capture has no definition for (its first
            // event after a restart, or a table created while dbmux runs):
            // truncate it if the replica has it; a missing table is empty,
            // and `apply_in` skips the truncate.
            let conn = self.conn.as_mut().expect("connected");
            let exists: Option<u8> = conn
                .exec_first(
                    "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (&target.schema, &target.name),
                )
                .await
                .map_err(driver(format!("looking for table {target}")))?;
            if exists.is_some() {
                self.known_tables.insert(target);
            }
            return Ok(());
        }
        if let Some(f) = pipeline::cascade::uncaptured_parent(&ev.table) {
            return Err(MysqlApplyError::Internal(
                pipeline::cascade::uncaptured_parent_message(f),
            ));
        }
        let create =
            sql::create_table_sql(&target, &ev.table, self.flavor).map_err(|(column, message)| {
                MysqlApplyError::UnsupportedColumn {
                    table: target.to_string(),
                    column,
                    message,
                }
            })?;
        let conn = self.conn.as_mut().expect("connected");
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {} DEFAULT CHARACTER SET utf8mb4",
            sql::quote_ident(&target.schema)
        ))
        .await
        .map_err(driver(format!("creating database {}", target.schema)))?;
        conn.query_drop(create)
            .await
            .map_err(driver(format!("creating table {target}")))?;
        self.known_tables.insert(target);
        Ok(())
    }

    fn table_sql(&mut self, schema: &Arc<TableSchema>) -> &mut TableSql {
        let config = &self.config;
        let flavor = self.flavor;
        self.tables.entry(schema.clone()).or_insert_with(|| {
            let target = TableId::new(config.target_database(&schema.id.schema), schema.id.name.clone());
            TableSql {
                target_text: target.to_string(),
                update_one: sql::update_one_sql(&target, schema, flavor),
                delete_one: sql::delete_one_sql(&target, schema, flavor),
                truncate: sql::truncate_sql(&target),
                target,
                multi: HashMap::new(),
            }
        })
    }

    /// Applies `txns` in one target transaction as `mode` says. A set-based
    /// plan that trips a constraint (a unique key other than the primary key,
    /// a foreign key the user created) is rolled back and applied again in
    /// source order, which the source itself proved valid.
    async fn apply_group(&mut self, txns: &[Transaction], mode: Mode<'_>) -> Result<()> {
        let mut conn = self.conn.take().expect("connected");
        let mut result = self.apply_in(&mut conn, txns, mode, false).await;
        if result
            .as_ref()
            .is_err_and(MysqlApplyError::may_pass_in_source_order)
        {
            let e = result.as_ref().expect_err("an error");
            tracing::info!(replica = %self.name, error = %e, "set-based batch broke a constraint; applying it in source order");
            let _ = conn.query_drop("ROLLBACK").await;
            result = self.apply_in(&mut conn, txns, mode, true).await;
        }
        match result {
            Ok(applied) => {
                self.applied = applied;
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                // Roll back what is open; the connection is dropped either way so
                // the next call starts clean and re-reads the offset.
                let _ = conn.query_drop("ROLLBACK").await;
                let _ = conn.disconnect().await;
                self.known_tables.clear();
                Err(e)
            }
        }
    }

    async fn apply_in(
        &mut self,
        conn: &mut Conn,
        txns: &[Transaction],
        mode: Mode<'_>,
        source_order: bool,
    ) -> Result<u64> {
        conn.query_drop("START TRANSACTION")
            .await
            .map_err(driver("starting a transaction"))?;
        let stored: Option<u64> = conn
            .exec_first(
                format!(
                    "SELECT `seq` FROM {} WHERE `consumer` = ? FOR UPDATE",
                    self.offsets_table
                ),
                (self.name.as_str(),),
            )
            .await
            .map_err(driver("locking the offset"))?;
        let applied = stored.ok_or_else(|| self.offset_missing())?;
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
                    return Err(MysqlApplyError::Internal(format!(
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
            let done = match next {
                Some(n) => conn.exec_drop(
                    format!(
                        "UPDATE {} SET `first_seq` = ? WHERE `consumer` = ? AND `table_schema` = ? AND `table_name` = ?",
                        self.quarantine_table
                    ),
                    (n, self.name.as_str(), &table.schema, &table.name),
                ),
                None => conn.exec_drop(
                    format!(
                        "DELETE FROM {} WHERE `consumer` = ? AND `table_schema` = ? AND `table_name` = ?",
                        self.quarantine_table
                    ),
                    (self.name.as_str(), &table.schema, &table.name),
                ),
            };
            done.await.map_err(driver("moving the quarantine"))?;
            conn.query_drop("COMMIT").await.map_err(driver("committing"))?;
            return Ok(applied);
        }
        let Some(last) = plan.last_seq else {
            conn.query_drop("COMMIT").await.map_err(driver("committing"))?;
            return Ok(applied);
        };
        let first = txns
            .iter()
            .flat_map(|t| &t.events)
            .map(|e| e.seq)
            .find(|&s| s > applied)
            .unwrap_or(last);
        if applied > 0 && first > applied + 1 {
            return Err(MysqlApplyError::Gap {
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
        conn.exec_drop(
            format!(
                "UPDATE {} SET `seq` = ?, `position` = ?, `updated_at` = CURRENT_TIMESTAMP(6) WHERE `consumer` = ?",
                self.offsets_table
            ),
            (last, position, self.name.as_str()),
        )
        .await
        .map_err(driver("writing the offset"))?;
        conn.query_drop("COMMIT").await.map_err(driver("committing"))?;
        Ok(last)
    }

    /// Executes one step of a plan inside the open transaction.
    async fn run_step(&mut self, conn: &mut Conn, step: &batch::Step<'_>, skip: &Skip<'_>) -> Result<()> {
        let max_rows = self.config.max_rows_per_statement;
        let max_bytes = self.config.max_statement_bytes;
        let width = step.table.columns.len();
        let per_stmt = max_rows.min(sql::MAX_PARAMS / width.max(1)).max(1);
        match &step.action {
            Action::Upsert(rows) | Action::Delete(rows) | Action::Insert(rows) | Action::Load(rows) => {
                let (kind, pad) = match &step.action {
                    Action::Upsert(_) => (0u8, true),
                    Action::Load(_) if step.table.has_primary_key() => (0u8, true),
                    Action::Delete(_) => (1, true),
                    _ => (2, false),
                };
                let key_only = kind == 1;
                let per_stmt = if key_only {
                    max_rows.min(sql::MAX_PARAMS / step.table.primary_key.len().max(1))
                } else {
                    per_stmt
                };
                for chunk in batch::chunks(rows, per_stmt, max_bytes) {
                    let shape = if pad {
                        chunk.len().next_power_of_two().min(per_stmt).max(chunk.len())
                    } else {
                        chunk.len()
                    };
                    let params = self.params(step.table, chunk, shape, key_only)?;
                    let t = self.table_sql(step.table);
                    let stmt = t
                        .multi
                        .entry((kind, shape))
                        .or_insert_with(|| {
                            match kind {
                                0 => sql::upsert_sql(&t.target, step.table, shape),
                                1 => sql::delete_sql(&t.target, step.table, shape),
                                _ => sql::insert_sql(&t.target, step.table, shape),
                            }
                            .into()
                        })
                        .clone();
                    let what = ["upserting into", "deleting from", "inserting into"][kind as usize];
                    let context = format!("{what} {}", t.target_text);
                    conn.exec_drop(&*stmt, Params::Positional(params))
                        .await
                        .map_err(driver(context))?;
                }
            }
            Action::UpdateOne { seq, before, after } => {
                let mut params = self.row_params(step.table, after)?;
                params.extend(self.row_params(step.table, before)?);
                let t = self.table_sql(step.table);
                let (stmt, table) = (t.update_one.clone(), t.target_text.clone());
                conn.exec_drop(stmt, Params::Positional(params))
                    .await
                    .map_err(driver(format!("updating {table}")))?;
                if conn.affected_rows() != 1 {
                    return Err(MysqlApplyError::Diverged {
                        table,
                        op: "update",
                        seq: *seq,
                    });
                }
            }
            Action::DeleteOne { seq, before } => {
                let params = self.row_params(step.table, before)?;
                let t = self.table_sql(step.table);
                let (stmt, table) = (t.delete_one.clone(), t.target_text.clone());
                conn.exec_drop(stmt, Params::Positional(params))
                    .await
                    .map_err(driver(format!("deleting from {table}")))?;
                if conn.affected_rows() != 1 {
                    return Err(MysqlApplyError::Diverged {
                        table,
                        op: "delete",
                        seq: *seq,
                    });
                }
            }
            Action::Truncate => {
                let target = self.table_sql(step.table).target.clone();
                if step.table.columns_unknown() && !self.known_tables.contains(&target) {
                    return Ok(()); // the replica has no such table: nothing to truncate
                }
                let t = self.table_sql(step.table);
                let (stmt, table) = (t.truncate.clone(), t.target_text.clone());
                conn.query_drop(stmt)
                    .await
                    .map_err(driver(format!("truncating {table}")))?;
            }
            Action::Snapshot { seq, mark } => self.record_snapshot(conn, step.table, *seq, mark).await?,
            // Executed before this transaction (see `apply_ddl`).
            Action::Ddl { .. } => {}
            Action::Cascade(change) => {
                let mut store = MysqlCascade {
                    conn,
                    config: &self.config,
                    known: &mut self.known_tables,
                };
                pipeline::cascade::cascade(&mut store, step.table, change, skip)
                    .await
                    .map_err(|e| match e {
                        CascadeError::Store(e) => e,
                        e => MysqlApplyError::Internal(e.to_string()),
                    })?;
            }
        }
        Ok(())
    }

    /// Parameters for `shape` rows (the chunk, then its last row repeated), of
    /// whole rows or of key columns only.
    fn params(
        &self,
        table: &TableSchema,
        chunk: &[&Row],
        shape: usize,
        key_only: bool,
    ) -> Result<Vec<mysql_async::Value>> {
        let cols: Vec<usize> = if key_only {
            table.primary_key.clone()
        } else {
            (0..table.columns.len()).collect()
        };
        let mut out = Vec::with_capacity(cols.len() * shape);
        for row in chunk {
            for &i in &cols {
                out.push(self.param(table, i, &row[i])?);
            }
        }
        let last = out.len() - cols.len();
        for _ in chunk.len()..shape {
            out.extend_from_within(last..last + cols.len());
        }
        Ok(out)
    }

    fn row_params(&self, table: &TableSchema, row: &Row) -> Result<Vec<mysql_async::Value>> {
        row.iter()
            .enumerate()
            .map(|(i, v)| self.param(table, i, v))
            .collect()
    }

    fn param(&self, table: &TableSchema, i: usize, v: &pipeline::Value) -> Result<mysql_async::Value> {
        let col = &table.columns[i];
        sql::to_param(v, col).map_err(|message| MysqlApplyError::Value {
            table: format!(
                "{}.{}",
                self.config.target_database(&table.id.schema),
                table.id.name
            ),
            column: col.name.clone(),
            message,
        })
    }
}

impl MysqlSink {
    async fn read_pending(&mut self) -> Result<Vec<TableId>> {
        let conn = self.conn.as_mut().expect("connected");
        let rows: Vec<(String, String)> = conn
            .exec(
                format!(
                    "SELECT `table_schema`, `table_name` FROM {} WHERE `consumer` = ? ORDER BY 1, 2",
                    self.snapshot_table
                ),
                (self.name.as_str(),),
            )
            .await
            .map_err(driver("reading the snapshot table"))?;
        Ok(rows.into_iter().map(|(s, n)| TableId::new(s, n)).collect())
    }

    /// What a snapshot mark changes in the replica's own tables, inside the
    /// data transaction (see `pipeline::sink`).
    async fn record_snapshot(
        &self,
        conn: &mut Conn,
        table: &TableSchema,
        seq: u64,
        mark: &pipeline::snapshot::SnapshotMark,
    ) -> Result<()> {
        use pipeline::snapshot::SnapshotPhase;
        let id = &table.id;
        let who = (self.name.as_str(), id.schema.as_str(), id.name.as_str());
        let delete_pending = format!(
            "DELETE FROM {} WHERE `consumer` = ? AND `table_schema` = ? AND `table_name` = ?",
            self.snapshot_table
        );
        let delete_quarantine = format!(
            "DELETE FROM {} WHERE `consumer` = ? AND `table_schema` = ? AND `table_name` = ?",
            self.quarantine_table
        );
        let ctx = || driver(format!("recording the snapshot of {id}"));
        match &mark.phase {
            SnapshotPhase::Begin { .. } => conn
                .exec_drop(
                    format!(
                        "INSERT INTO {} (`consumer`, `table_schema`, `table_name`, `run`) VALUES (?, ?, ?, ?) \
                         ON DUPLICATE KEY UPDATE `run` = VALUES(`run`), `since` = CURRENT_TIMESTAMP(6)",
                        self.snapshot_table
                    ),
                    (who.0, who.1, who.2, mark.id),
                )
                .await
                .map_err(ctx())?,
            SnapshotPhase::Chunk { .. } => {
                if mark.phase.recreates() {
                    conn.exec_drop(&delete_quarantine, who).await.map_err(ctx())?;
                }
                if mark.phase.ends_pending() {
                    conn.exec_drop(&delete_pending, who).await.map_err(ctx())?;
                }
            }
            SnapshotPhase::End { reason } => {
                conn.exec_drop(&delete_pending, who).await.map_err(ctx())?;
                conn.exec_drop(
                    format!(
                        "INSERT INTO {} (`consumer`, `table_schema`, `table_name`, `first_seq`, `reason`) \
                         VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE `first_seq` = VALUES(`first_seq`), \
                         `reason` = VALUES(`reason`), `since` = CURRENT_TIMESTAMP(6)",
                        self.quarantine_table
                    ),
                    (who.0, who.1, who.2, seq, reason.as_str()),
                )
                .await
                .map_err(ctx())?;
            }
        }
        Ok(())
    }

    /// The statements that make one schema change on this replica: the
    /// source's statement with its table names qualified and mapped, or a
    /// generated one where the statement would do more than this table's
    /// part (a multi-table `DROP`/`RENAME`).
    fn ddl_statements(
        &self,
        table: &TableSchema,
        change: &pipeline::ddl::SchemaChange,
    ) -> std::result::Result<Vec<String>, String> {
        use pipeline::ddl::DdlKind;
        let config = &self.config;
        let map = |db: &str| config.target_database(db).to_string();
        let target = TableId::new(map(&table.id.schema), table.id.name.clone());
        let replay = || -> std::result::Result<Vec<String>, String> {
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
        let ensure_db = |target: &TableId| {
            format!(
                "CREATE DATABASE IF NOT EXISTS {} DEFAULT CHARACTER SET utf8mb4",
                sql::quote_ident(&target.schema)
            )
        };
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

    /// Applies one schema-change transaction. MariaDB/MySQL DDL commits by
    /// itself, so: (1) with the offset row locked, note the change as
    /// possibly running (`dbmux_ddl`) and commit; (2) run it; (3) move the
    /// offset and forget the note in one transaction. A crash between (1)
    /// and (3) leaves the note: the retry runs the statement again and takes
    /// "already exists / does not exist" answers as done (MariaDB's DDL is
    /// atomic: all of a statement happened or none).
    async fn apply_ddl(&mut self, txn: &Transaction, skip: &HashSet<TableId>) -> Result<()> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let mut conn = self.conn.take().expect("connected");
        let r = self.apply_ddl_in(&mut conn, txn, skip).await;
        match r {
            Ok(()) => {
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                let _ = conn.query_drop("ROLLBACK").await;
                let _ = conn.disconnect().await;
                Err(e)
            }
        }
    }

    async fn apply_ddl_in(
        &mut self,
        conn: &mut Conn,
        txn: &Transaction,
        skip: &HashSet<TableId>,
    ) -> Result<()> {
        use pipeline::ddl::DdlKind;
        let (first, last) = (txn.first_seq(), txn.last_seq());
        let lock = format!(
            "SELECT `seq` FROM {} WHERE `consumer` = ? FOR UPDATE",
            self.offsets_table
        );
        conn.query_drop("START TRANSACTION")
            .await
            .map_err(driver("starting a transaction"))?;
        let applied: u64 = conn
            .exec_first(&lock, (self.name.as_str(),))
            .await
            .map_err(driver("locking the offset"))?
            .ok_or_else(|| self.offset_missing())?;
        if last <= applied {
            conn.query_drop("COMMIT").await.map_err(driver("committing"))?;
            self.applied = applied;
            return Ok(());
        }
        if applied > 0 && first > applied + 1 {
            return Err(MysqlApplyError::Gap {
                applied,
                next: first,
                missing: applied + 1,
            });
        }
        let noted: Option<u64> = conn
            .exec_first(
                format!("SELECT `seq` FROM {} WHERE `consumer` = ?", self.ddl_table),
                (self.name.as_str(),),
            )
            .await
            .map_err(driver("reading the schema-change note"))?;
        let maybe_ran = noted == Some(first);
        let statement = txn
            .events
            .iter()
            .find_map(|e| match &e.op {
                pipeline::Op::Ddl(c) => Some(c.statement.clone()),
                _ => None,
            })
            .unwrap_or_default();
        conn.exec_drop(
            format!(
                "INSERT INTO {} (`consumer`, `seq`, `statement`) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE \
                 `seq` = VALUES(`seq`), `statement` = VALUES(`statement`), `since` = CURRENT_TIMESTAMP(6)",
                self.ddl_table
            ),
            (self.name.as_str(), first, statement.as_str()),
        )
        .await
        .map_err(driver("noting the schema change"))?;
        conn.query_drop("COMMIT").await.map_err(driver("committing"))?;
        // (2) The statements.
        let mut bookkeeping: Vec<(String, Vec<mysql_async::Value>)> = Vec::new();
        for ev in &txn.events {
            let pipeline::Op::Ddl(change) = &ev.op else {
                continue;
            };
            if skip.contains(&ev.table.id) {
                continue;
            }
            let in_table = |message: String| {
                MysqlApplyError::Ddl {
                    table: ev.table.id.to_string(),
                    statement: change.statement.clone(),
                    message,
                }
                .in_table(&ev.table.id)
            };
            let statements = self.ddl_statements(&ev.table, change).map_err(in_table)?;
            let ts = ev.txn.commit_ts_us;
            conn.query_drop(format!(
                "SET TIMESTAMP = {}.{:06}",
                ts.div_euclid(1_000_000),
                ts.rem_euclid(1_000_000)
            ))
            .await
            .map_err(driver("setting the statement time"))?;
            for st in &statements {
                match conn.query_drop(st).await {
                    Ok(()) => {}
                    Err(mysql_async::Error::Server(e)) if maybe_ran && DDL_ALREADY_DONE.contains(&e.code) => {
                        tracing::info!(replica = %self.name, seq = ev.seq, code = e.code,
                            "schema change had already taken effect before a restart");
                    }
                    Err(e) if classify_driver(&e) == ErrorClass::Transient => {
                        return Err(driver("applying a schema change")(e));
                    }
                    Err(e) => return Err(in_table(e.to_string())),
                }
            }
            conn.query_drop("SET TIMESTAMP = DEFAULT")
                .await
                .map_err(driver("resetting the statement time"))?;
            let who = |id: &TableId| -> Vec<mysql_async::Value> {
                vec![
                    self.name.as_str().into(),
                    id.schema.as_str().into(),
                    id.name.as_str().into(),
                ]
            };
            match &change.kind {
                DdlKind::DropTable => {
                    for t in [&self.snapshot_table, &self.quarantine_table] {
                        bookkeeping.push((
                            format!("DELETE FROM {t} WHERE `consumer` = ? AND `table_schema` = ? AND `table_name` = ?"),
                            who(&ev.table.id),
                        ));
                    }
                }
                DdlKind::DropDatabase => {
                    for t in [&self.snapshot_table, &self.quarantine_table] {
                        bookkeeping.push((
                            format!("DELETE FROM {t} WHERE `consumer` = ? AND `table_schema` = ?"),
                            vec![self.name.as_str().into(), ev.table.id.schema.as_str().into()],
                        ));
                    }
                }
                _ => {}
            }
        }
        // Definitions changed: forget what was learned about tables.
        self.known_tables.clear();
        self.tables.clear();
        self.targets.clear();
        // (3) The offset, with the note gone.
        conn.query_drop("START TRANSACTION")
            .await
            .map_err(driver("starting a transaction"))?;
        conn.exec_drop(&lock, (self.name.as_str(),))
            .await
            .map_err(driver("locking the offset"))?;
        for (st, params) in bookkeeping {
            conn.exec_drop(st, Params::Positional(params))
                .await
                .map_err(driver("updating dbmux's own tables"))?;
        }
        conn.exec_drop(
            format!("DELETE FROM {} WHERE `consumer` = ?", self.ddl_table),
            (self.name.as_str(),),
        )
        .await
        .map_err(driver("clearing the schema-change note"))?;
        let position = txn.position().map(|p| p.to_string());
        conn.exec_drop(
            format!(
                "UPDATE {} SET `seq` = ?, `position` = ?, `updated_at` = CURRENT_TIMESTAMP(6) WHERE `consumer` = ?",
                self.offsets_table
            ),
            (last, position, self.name.as_str()),
        )
        .await
        .map_err(driver("writing the offset"))?;
        conn.query_drop("COMMIT").await.map_err(driver("committing"))?;
        self.applied = last;
        Ok(())
    }

    async fn read_quarantines(&mut self) -> Result<Vec<Quarantine>> {
        let conn = self.conn.as_mut().expect("connected");
        let rows: Vec<(String, String, u64, String)> = conn
            .exec(
                format!(
                    "SELECT `table_schema`, `table_name`, `first_seq`, `reason` FROM {} WHERE `consumer` = ? \
                     ORDER BY `table_schema`, `table_name`",
                    self.quarantine_table
                ),
                (self.name.as_str(),),
            )
            .await
            .map_err(driver("reading the quarantine table"))?;
        Ok(rows
            .into_iter()
            .map(|(schema, name, first_seq, reason)| Quarantine {
                table: TableId::new(schema, name),
                first_seq,
                reason,
            })
            .collect())
    }

    async fn prepare(&mut self, txns: &[Transaction], mode: Mode<'_>) -> Result<()> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        if let Err(e) = self.ensure_tables(txns, mode).await {
            if let Some(conn) = self.conn.take() {
                let _ = conn.disconnect().await;
            }
            return Err(e);
        }
        Ok(())
    }
}

impl Sink for MysqlSink {
    type Error = MysqlApplyError;

    async fn open(&mut self) -> Result<Opened> {
        let r = async {
            self.connect().await?;
            let q = self.read_quarantines().await?;
            Ok::<_, MysqlApplyError>((q, self.read_pending().await?))
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
        // Schema changes commit by themselves here: each is applied on its
        // own, between the data before and after it.
        let mut rest = txns;
        while !rest.is_empty() {
            let n = rest.iter().position(Transaction::is_ddl).unwrap_or(rest.len());
            if n == 0 {
                self.apply_ddl(&rest[0], skip).await?;
                rest = &rest[1..];
                continue;
            }
            let (part, tail) = rest.split_at(n);
            rest = tail;
            let mode = Mode::Stream { skip };
            self.prepare(part, mode).await?;
            let group = match self.config.max_transactions_per_commit {
                0 => part.len().max(1),
                n => n,
            };
            for g in part.chunks(group) {
                if self.conn.is_none() {
                    self.connect().await?;
                }
                self.apply_group(g, mode).await?;
            }
        }
        Ok(())
    }

    async fn reset(&mut self, from_seq: u64) -> Result<()> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let mut conn = self.conn.take().expect("connected");
        let r = async {
            conn.query_drop("START TRANSACTION")
                .await
                .map_err(driver("starting a transaction"))?;
            conn.exec_drop(
                format!("SELECT `seq` FROM {} WHERE `consumer` = ? FOR UPDATE", self.offsets_table),
                (self.name.as_str(),),
            )
            .await
            .map_err(driver("locking the offset"))?;
            conn.exec_drop(
                format!(
                    "UPDATE {} SET `seq` = ?, `position` = NULL, `updated_at` = CURRENT_TIMESTAMP(6) WHERE `consumer` = ?",
                    self.offsets_table
                ),
                (from_seq.saturating_sub(1), self.name.as_str()),
            )
            .await
            .map_err(driver("moving the offset"))?;
            for t in [&self.quarantine_table, &self.snapshot_table, &self.ddl_table] {
                conn.exec_drop(format!("DELETE FROM {t} WHERE `consumer` = ?"), (self.name.as_str(),))
                    .await
                    .map_err(driver("clearing the replica's state"))?;
            }
            conn.query_drop("COMMIT").await.map_err(driver("committing"))
        }
        .await;
        match r {
            Ok(()) => {
                self.applied = from_seq.saturating_sub(1);
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                let _ = conn.disconnect().await;
                Err(e)
            }
        }
    }

    async fn quarantine(&mut self, q: &Quarantine) -> Result<()> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let conn = self.conn.as_mut().expect("connected");
        let r = conn
            .exec_drop(
                format!(
                    "INSERT INTO {} (`consumer`, `table_schema`, `table_name`, `first_seq`, `reason`) \
                     VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE `first_seq` = VALUES(`first_seq`), \
                     `reason` = VALUES(`reason`), `since` = CURRENT_TIMESTAMP(6)",
                    self.quarantine_table
                ),
                (
                    self.name.as_str(),
                    &q.table.schema,
                    &q.table.name,
                    q.first_seq,
                    q.reason.as_str(),
                ),
            )
            .await
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

/// Foreign-key cascades on a MySQL / MariaDB replica (see [`pipeline::cascade`]),
/// inside the applier's open transaction. Values travel as typed parameters;
/// rows are matched with `=` under the replica column's collation, as InnoDB
/// matches them on the source.
struct MysqlCascade<'a> {
    conn: &'a mut Conn,
    config: &'a MysqlSinkConfig,
    /// Replica tables known to exist.
    known: &'a mut HashSet<TableId>,
}

/// Keys per cascade statement.
const CASCADE_KEYS_PER_STATEMENT: usize = 500;

impl MysqlCascade<'_> {
    fn target(&self, table: &TableId) -> TableId {
        TableId::new(self.config.target_database(&table.schema), table.name.clone())
    }

    /// Whether the replica has the table (a table it does not have has no rows to change).
    async fn exists(&mut self, target: &TableId) -> Result<bool> {
        if self.known.contains(target) {
            return Ok(true);
        }
        let found: Option<u8> = self
            .conn
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&target.schema, &target.name),
            )
            .await
            .map_err(driver(format!("looking for table {target}")))?;
        if found.is_some() {
            self.known.insert(target.clone());
        }
        Ok(found.is_some())
    }

    /// `(a = ? AND b = ?) OR …` for `n` keys, and its parameters.
    fn condition(cols: &[String], keys: &[Vec<mysql_async::Value>]) -> (String, Vec<mysql_async::Value>) {
        let one = cols
            .iter()
            .map(|c| format!("{} = ?", sql::quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let cond = vec![format!("({one})"); keys.len()].join(" OR ");
        (cond, keys.iter().flatten().cloned().collect())
    }
}

impl CascadeStore for MysqlCascade<'_> {
    type Val = mysql_async::Value;
    type Error = MysqlApplyError;

    fn value(&self, table: &TableSchema, col: usize, v: &pipeline::Value) -> Result<Self::Val> {
        let c = &table.columns[col];
        sql::to_param(v, c).map_err(|message| MysqlApplyError::Value {
            table: table.id.to_string(),
            column: c.name.clone(),
            message,
        })
    }

    fn is_null(v: &Self::Val) -> bool {
        matches!(v, mysql_async::Value::NULL)
    }

    fn null() -> Self::Val {
        mysql_async::Value::NULL
    }

    async fn select(
        &mut self,
        table: &TableId,
        cols: &[String],
        keys: &[Vec<Self::Val>],
        want: &[String],
    ) -> Result<Vec<Vec<Self::Val>>> {
        let target = self.target(table);
        if !self.exists(&target).await? {
            return Ok(Vec::new());
        }
        let list = want
            .iter()
            .map(|c| sql::quote_ident(c))
            .collect::<Vec<_>>()
            .join(",");
        let mut out = Vec::new();
        for chunk in keys.chunks(CASCADE_KEYS_PER_STATEMENT) {
            let (cond, params) = Self::condition(cols, chunk);
            let rows: Vec<mysql_async::Row> = self
                .conn
                .exec(
                    format!("SELECT {list} FROM {} WHERE {cond}", sql::quote_table(&target)),
                    Params::Positional(params),
                )
                .await
                .map_err(driver(format!("reading rows a cascade reaches in {target}")))?;
            out.extend(rows.into_iter().map(|r| r.unwrap()));
        }
        Ok(out)
    }

    async fn delete(&mut self, table: &TableId, cols: &[String], keys: &[Vec<Self::Val>]) -> Result<()> {
        let target = self.target(table);
        if !self.exists(&target).await? {
            return Ok(());
        }
        for chunk in keys.chunks(CASCADE_KEYS_PER_STATEMENT) {
            let (cond, params) = Self::condition(cols, chunk);
            self.conn
                .exec_drop(
                    format!("DELETE FROM {} WHERE {cond}", sql::quote_table(&target)),
                    Params::Positional(params),
                )
                .await
                .map_err(driver(format!("cascading a delete into {target}")))?;
        }
        Ok(())
    }

    async fn update(
        &mut self,
        table: &TableId,
        cols: &[String],
        keys: &[Vec<Self::Val>],
        new: Option<&[Self::Val]>,
    ) -> Result<()> {
        let target = self.target(table);
        if !self.exists(&target).await? {
            return Ok(());
        }
        let set = cols
            .iter()
            .map(|c| match new {
                Some(_) => format!("{} = ?", sql::quote_ident(c)),
                None => format!("{} = NULL", sql::quote_ident(c)),
            })
            .collect::<Vec<_>>()
            .join(", ");
        for chunk in keys.chunks(CASCADE_KEYS_PER_STATEMENT) {
            let (cond, key_params) = Self::condition(cols, chunk);
            let mut params: Vec<mysql_async::Value> = new.map(<[_]>::to_vec).unwrap_or_default();
            params.extend(key_params);
            self.conn
                .exec_drop(
                    format!("UPDATE {} SET {set} WHERE {cond}", sql::quote_table(&target)),
                    Params::Positional(params),
                )
                .await
                .map_err(driver(format!("cascading an update into {target}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(MysqlApplyError::Driver {
            context: "x".into(),
            source: io
        }
        .is_transient());
        assert!(!MysqlApplyError::Diverged {
            table: "t".into(),
            op: "delete",
            seq: 1
        }
        .is_transient());
    }
}
