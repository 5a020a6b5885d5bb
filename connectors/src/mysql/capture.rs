//! MariaDB / MySQL row-binlog capture: a [`Source`] over `COM_BINLOG_DUMP`.
//!
//! # Connections
//! Two connections to the master: the *dump* connection, turned into a binlog
//! stream by `mysql_async` (`Conn::get_binlog_stream`), and a *metadata*
//! connection for preflight, `SHOW MASTER STATUS` and `information_schema`
//! lookups (one per new table map, never per row). The dump registers with
//! [`MysqlSourceConfig::server_id`]; a server kills an older dump that
//! registered with the same id, so every capture of one master needs its own.
//!
//! # Transactions
//! A transaction starts at a GTID event (MariaDB type 162, MySQL 33/42), an
//! anonymous GTID or a `BEGIN` query, and ends at an XID event or a `COMMIT`
//! query (non-transactional tables). MariaDB GTID events flagged
//! `FL_STANDALONE` (DDL) have no BEGIN/COMMIT: the one query that follows ends
//! them. Row changes are buffered until the commit and only committed
//! transactions with at least one change of a captured table are returned;
//! `ROLLBACK` discards the buffer. XA transactions touching captured tables are
//! refused (definite error) rather than emitted before their outcome is known.
//! `TRUNCATE` of a captured table becomes an [`Op::Truncate`] transaction; other
//! DDL is not captured (it only refreshes the schema facts, see below), and a
//! statement-based DML in a captured database is a definite error.
//!
//! # Resumption
//! A transaction's [`Position`] is the binlog file and the offset right after
//! its commit event (the event header's `log_pos`; for a MySQL compressed
//! transaction, the end of its payload event) plus the GTID state after it
//! (MariaDB: the latest `domain-server-seq` per domain; MySQL: the executed
//! set). `start(Some(p))` dumps from exactly that file and offset, which is
//! always a transaction boundary; `start(None)` from the master's current end.
//! ROTATE events move the stream to the next file.
//!
//! # Schema
//! Each change carries an `Arc<TableSchema>` built from the table map (see
//! [`super::binlog_table`]); the same `Arc` is reused while the table map is
//! unchanged, and a table created while capture runs is described from its first
//! row. After any DDL the `information_schema` facts are re-read at the next
//! table map, keeping the `Arc` when nothing changed.
//!
//! # Failures
//! The dump asks for heartbeats every [`MysqlSourceConfig::heartbeat_secs`];
//! when neither an event nor a heartbeat arrives for three periods, the
//! connection is presumed dead. Connection loss, I/O errors and timeouts are
//! transient (the runtime calls `start` again with the last position); bad
//! settings, purged positions, unsupported types and undecodable values are
//! definite.
//!
//! # mysql_async / mysql_common rough edges handled here
//! - MariaDB event types 160–163 arrive untyped: GTID (162) and GTID_LIST (163)
//!   are parsed by hand in [`super::gtid`].
//! - The first (artificial) ROTATE arrives before the format description, so
//!   mysql_common does not know checksums are on and leaves the 4 CRC32 bytes at
//!   the end of the file name: we strip them when they are a valid CRC of the event.
//! - Row images are decoded by [`super::binlog_values`], not mysql_common's
//!   `BinlogRow` (negative `TIME(1)`/`TIME(2)` bug, per-row allocations).
//! - `get_binlog_stream` overrides `@master_binlog_checksum` with `'ALL'`; the
//!   servers accept it and send checksummed events, which mysql_common verifies.

use super::binlog_table::{
    build_plan, facts_of, schema_from_facts, CollationInfo, InfoColumn, ServerCharsets, TableFacts, TablePlan,
};
use super::binlog_values::{Charset, Cursor, DecodeError};
use super::catalog_read::{CatalogReads, ReadError};
use super::ddl::{self, Clause, Statement};
use super::gtid::{parse_gtid_list, GtidState, MariaGtid, FL_PREPARED_XA};
use super::preflight;
// Configuration and errors live in their own modules; re-exported here, where
// users of the source have always found them.
use super::capture_error::driver;
pub use super::capture_error::MysqlCaptureError;
pub use super::source_config::*;
use super::statement::{
    ddl_target_guess, starts_with_word, statement_tables, strip_comments, truncate_target,
};
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};
use mysql_common::binlog::events::{Event, EventData, GtidEvent, QueryEvent, TableMapEvent};
use pipeline::capture_state::HistoryEntry;
use pipeline::ddl::{AlterAction, DdlKind, SchemaChange};
use pipeline::filter::TableFilter;
use pipeline::position::MysqlPosition;
use pipeline::schema::{FkAction, ForeignKey, TableId, TableSchema};
use pipeline::source::{CapturedTransaction, Source};
use pipeline::value::format_uuid;
use pipeline::{Op, Position, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

// Binlog event type codes.
const QUERY: u8 = 2;
const ROTATE: u8 = 4;
const FORMAT_DESCRIPTION: u8 = 15;
const XID: u8 = 16;
const TABLE_MAP: u8 = 19;
const WRITE_ROWS_V1: u8 = 23;
const UPDATE_ROWS_V1: u8 = 24;
const DELETE_ROWS_V1: u8 = 25;
const WRITE_ROWS: u8 = 30;
const UPDATE_ROWS: u8 = 31;
const DELETE_ROWS: u8 = 32;
const MYSQL_GTID: u8 = 33;
const MYSQL_ANONYMOUS_GTID: u8 = 34;
const XA_PREPARE: u8 = 38;
const PARTIAL_UPDATE_ROWS: u8 = 39;
const TRANSACTION_PAYLOAD: u8 = 40;
const MYSQL_GTID_TAGGED: u8 = 42;
const MARIA_GTID: u8 = 162;
const MARIA_GTID_LIST: u8 = 163;
/// MariaDB `log_bin_compress` events: QUERY_COMPRESSED and the compressed rows events.
const MARIA_COMPRESSED: std::ops::RangeInclusive<u8> = 165..=171;

/// The master as seen on connect.
#[derive(Debug, Clone)]
pub(crate) struct ServerInfo {
    pub(crate) mariadb: bool,
    pub(crate) charsets: Arc<ServerCharsets>,
}

/// A cached table map: its raw bytes, and the plan when the table is captured.
struct TableEntry {
    tme: Vec<u8>,
    plan: Option<Arc<TablePlan>>,
    /// `ddl_epoch` when the plan was built; older plans re-read information_schema.
    epoch: u64,
}

enum TxnGtid {
    None,
    Maria { domain: u32, server: u32, seq: u64 },
    MySql { sid: String, gno: u64 },
}

struct OpenTxn {
    id: Option<String>,
    gtid: TxnGtid,
    /// MariaDB `FL_STANDALONE`: one statement, no BEGIN/COMMIT.
    standalone: bool,
    /// A `BEGIN` query was seen (MySQL groups DDL without one).
    saw_begin: bool,
    xa_prepare: bool,
    start: String,
    payload_end: Option<u64>,
    commit_ts_us: Option<i64>,
    changes: Vec<(Arc<TableSchema>, Op)>,
}

/// `information_schema.COLUMNS`: name, data type, column type, nullable, charset, max length, collation.
type InfoRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<u64>,
    Option<String>,
);

/// `information_schema.STATISTICS` rows (index, column, prefix length) of
/// unique indexes → keys as column names with the index name, without keys
/// that have a prefix column or an expression part.
fn unique_keys(rows: Vec<(String, Option<String>, Option<u64>)>) -> Vec<(Vec<String>, String)> {
    let mut out: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for (index, column, sub_part) in rows {
        if out.last().is_none_or(|(n, _)| *n != index) {
            out.push((index, Some(Vec::new())));
        }
        let key = &mut out.last_mut().expect("pushed").1;
        match (column, sub_part, key.as_mut()) {
            (Some(c), None, Some(k)) => k.push(c),
            _ => *key = None,
        }
    }
    out.into_iter()
        .filter_map(|(name, k)| k.map(|k| (k, name)))
        .collect()
}

/// `REFERENTIAL_CONSTRAINTS.UPDATE_RULE` / `DELETE_RULE` text.
fn fk_action(rule: &str) -> FkAction {
    match rule.to_ascii_uppercase().as_str() {
        "CASCADE" => FkAction::Cascade,
        "SET NULL" => FkAction::SetNull,
        "SET DEFAULT" => FkAction::SetDefault,
        _ => FkAction::Restrict,
    }
}

/// The foreign keys whose actions change rows when rows of `table` change:
/// those referencing it with a row-changing action, then those referencing
/// the tables they change, and so on (each once). Keys from tables capture
/// does not read are left out: a replica has no such table to change.
fn cascade_closure(all: &[ForeignKey], table: &TableId) -> Vec<ForeignKey> {
    let mut out: Vec<ForeignKey> = Vec::new();
    let mut frontier = vec![table.clone()];
    let mut seen = std::collections::HashSet::new();
    seen.insert(table.clone());
    while let Some(t) = frontier.pop() {
        for f in all.iter().filter(|f| f.referenced_table == t) {
            if !f.table_captured || !(f.on_delete.changes_rows() || f.on_update.changes_rows()) {
                continue;
            }
            if !out.contains(f) {
                out.push(f.clone());
            }
            if seen.insert(f.table.clone()) {
                frontier.push(f.table.clone());
            }
        }
    }
    out
}

/// The master's flavour, collations, character set widths, and the byte →
/// character tables of its single-byte charsets (registered for decoding).
pub(crate) async fn read_server_info(conn: &mut Conn) -> Result<ServerInfo, MysqlCaptureError> {
    let version: Option<String> = conn
        .query_first("SELECT @@version")
        .await
        .map_err(driver("reading @@version"))?;
    let mariadb = version
        .unwrap_or_default()
        .to_ascii_lowercase()
        .contains("mariadb");
    let mut charsets = ServerCharsets::default();
    let rows: Vec<(u64, String, String)> = conn
        .query(
            "SELECT ID, COLLATION_NAME, CHARACTER_SET_NAME FROM information_schema.COLLATIONS \
             WHERE ID IS NOT NULL",
        )
        .await
        .map_err(driver("reading information_schema.COLLATIONS"))?;
    for (id, name, charset) in rows {
        charsets
            .collations
            .insert(id as u16, CollationInfo { name, charset });
    }
    if mariadb {
        // MariaDB 10.10+ lists the ids (and full names) of its UCA-14 collations only here.
        if let Ok(rows) = conn
            .query::<(u64, String, String), _>(
                "SELECT ID, FULL_COLLATION_NAME, CHARACTER_SET_NAME \
                 FROM information_schema.COLLATION_CHARACTER_SET_APPLICABILITY WHERE ID IS NOT NULL",
            )
            .await
        {
            for (id, name, charset) in rows {
                charsets
                    .collations
                    .insert(id as u16, CollationInfo { name, charset });
            }
        }
    }
    let defaults: Vec<(String, String)> = conn
        .query("SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLLATIONS WHERE IS_DEFAULT = 'Yes'")
        .await
        .map_err(driver("reading information_schema.COLLATIONS"))?;
    charsets.default_collation.extend(defaults);
    let sets: Vec<(String, u64)> = conn
        .query("SELECT CHARACTER_SET_NAME, MAXLEN FROM information_schema.CHARACTER_SETS")
        .await
        .map_err(driver("reading information_schema.CHARACTER_SETS"))?;
    for (name, max_len) in &sets {
        charsets.max_len.insert(name.clone(), *max_len as u32);
    }
    // Single-byte charsets without a built-in decoder: ask the server for its
    // own byte → character table, once (256 conversions in one query).
    for (name, max_len) in sets {
        if max_len != 1 || Charset::is_native(&name) || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let exprs: Vec<String> = (0..=255u8)
            .map(|b| format!("HEX(CONVERT(CONVERT(UNHEX('{b:02X}') USING {name}) USING utf8mb4))"))
            .collect();
        let row: Option<mysql_async::Row> = conn
            .query_first(format!("SELECT {}", exprs.join(",")))
            .await
            .map_err(driver(format!("reading the {name} character table")))?;
        let Some(row) = row else { continue };
        let chars = (0..=255usize)
            .map(|b| {
                let hex: Option<String> = row.get(b);
                let text = hex
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|bytes| String::from_utf8(bytes).ok())?;
                let mut it = text.chars();
                let c = it.next()?;
                // The server writes `?` for a byte it has no character for.
                (it.next().is_none() && (c != '?' || b == 0x3F)).then_some(c)
            })
            .collect();
        Charset::register_single_byte(&name, chars);
    }
    Ok(ServerInfo {
        mariadb,
        charsets: Arc::new(charsets),
    })
}

/// `information_schema`'s view of one table (without foreign keys): its
/// columns, primary key, UNIQUE keys and, on MariaDB, JSON checks.
pub(crate) async fn read_table_facts(
    conn: &mut Conn,
    db: &str,
    table: &str,
    mariadb: bool,
) -> Result<TableFacts, mysql_async::Error> {
    let rows: Vec<InfoRow> = conn
        .exec(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME, \
             CHARACTER_MAXIMUM_LENGTH, COLLATION_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (db, table),
        )
        .await?;
    let checks: Vec<String> = if mariadb {
        conn.exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (db, table),
        )
        .await?
    } else {
        Vec::new()
    };
    let keys: Vec<(String, Option<String>, Option<u64>)> = conn
        .exec(
            "SELECT INDEX_NAME, COLUMN_NAME, SUB_PART FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
             ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX",
            (db, table),
        )
        .await?;
    let (primary, unique): (Vec<_>, Vec<_>) = keys.into_iter().partition(|(index, ..)| index == "PRIMARY");
    let columns = rows
        .into_iter()
        .map(
            |(name, data_type, column_type, nullable, charset, char_max_len, collation)| {
                let json_clause = format!("json_valid(`{}`)", name.replace('`', "``"));
                InfoColumn {
                    json_check: checks.iter().any(|c| c.trim() == json_clause),
                    name,
                    data_type,
                    column_type,
                    nullable: nullable.eq_ignore_ascii_case("YES"),
                    charset,
                    char_max_len,
                    collation,
                }
            },
        )
        .collect();
    let (unique_keys, unique_key_names) = unique_keys(unique).into_iter().unzip();
    Ok(TableFacts {
        columns,
        primary_key: primary.into_iter().filter_map(|(_, c, _)| c).collect(),
        unique_keys,
        unique_key_names,
        foreign_keys: Vec::new(),
        cascades: Vec::new(),
    })
}

/// Every foreign key whose referencing table is in a database `filter` may
/// capture (one restricted query per such database: cheap for the server,
/// `information_schema` opens only that database's tables).
pub(crate) async fn read_foreign_keys(
    conn: &mut Conn,
    filter: &TableFilter,
) -> Result<Vec<ForeignKey>, mysql_async::Error> {
    type FkRow = (
        String,
        String,
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    );
    let schemas: Vec<String> = conn
        .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY 1")
        .await?;
    let mut rows = Vec::new();
    for schema in schemas.iter().filter(|s| filter.may_match_schema(s)) {
        let part: Vec<FkRow> = conn
            .exec(
                "SELECT rc.CONSTRAINT_SCHEMA, rc.TABLE_NAME, rc.CONSTRAINT_NAME, rc.UPDATE_RULE, \
                 rc.DELETE_RULE, k.COLUMN_NAME, k.REFERENCED_TABLE_SCHEMA, k.REFERENCED_TABLE_NAME, \
                 k.REFERENCED_COLUMN_NAME \
                 FROM information_schema.REFERENTIAL_CONSTRAINTS rc \
                 JOIN information_schema.KEY_COLUMN_USAGE k ON k.CONSTRAINT_SCHEMA = rc.CONSTRAINT_SCHEMA \
                 AND k.CONSTRAINT_NAME = rc.CONSTRAINT_NAME AND k.TABLE_NAME = rc.TABLE_NAME \
                 WHERE rc.CONSTRAINT_SCHEMA = ? AND k.TABLE_SCHEMA = ? AND k.REFERENCED_TABLE_NAME IS NOT NULL \
                 ORDER BY rc.TABLE_NAME, rc.CONSTRAINT_NAME, k.ORDINAL_POSITION",
                (schema, schema),
            )
            .await?;
        rows.extend(part);
    }
    let mut fks: Vec<ForeignKey> = Vec::new();
    for (schema, table, name, update, delete, column, ref_schema, ref_table, ref_column) in rows {
        let id = TableId::new(schema, table);
        match fks.last_mut() {
            Some(f) if f.table == id && f.name == name => {
                f.columns.push(column);
                f.referenced_columns.push(ref_column);
            }
            _ => {
                let referenced_table = TableId::new(ref_schema, ref_table);
                fks.push(ForeignKey {
                    referenced_captured: filter.matches(&referenced_table.schema, &referenced_table.name),
                    table_captured: filter.matches(&id.schema, &id.name),
                    name,
                    table: id,
                    columns: vec![column],
                    referenced_table,
                    referenced_columns: vec![ref_column],
                    on_delete: fk_action(&delete),
                    on_update: fk_action(&update),
                })
            }
        }
    }
    Ok(fks)
}

/// The foreign keys of `table`, and those whose actions change rows when its
/// rows change (see [`cascade_closure`]), from every key of the master.
pub(crate) fn with_foreign_keys(mut facts: TableFacts, all: &[ForeignKey], table: &TableId) -> TableFacts {
    facts.foreign_keys = all.iter().filter(|f| f.table == *table).cloned().collect();
    facts.cascades = cascade_closure(all, table);
    facts
}

/// A definition naming only the table.
fn name_only(id: &TableId) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: id.clone(),
        ..TableSchema::default()
    })
}

/// The catalog-like facts of a history entry.
fn history_facts(h: &HistoryEntry) -> TableFacts {
    facts_of(&h.schema, &h.unique_key_names)
}

/// Same columns (names, types, nullability) and keys: two definitions of a
/// table that describe the same rows (the catalog's may add spelling and
/// exact collations).
fn same_shape(a: &TableSchema, b: &TableSchema) -> bool {
    let keys = |s: &TableSchema| {
        let mut k = s.unique_keys.clone();
        k.sort();
        k
    };
    a.columns.len() == b.columns.len()
        && a.columns
            .iter()
            .zip(&b.columns)
            .all(|(x, y)| x.name.eq_ignore_ascii_case(&y.name) && x.ty == y.ty && x.nullable == y.nullable)
        && a.primary_key == b.primary_key
        && keys(a) == keys(b)
}

/// Capture from a MariaDB / MySQL master's row binlog.
pub struct MysqlSource {
    config: MysqlSourceConfig,
    filter: TableFilter,
    opts: Opts,
    meta: Option<Conn>,
    server: Option<ServerInfo>,
    stream: Option<BinlogStream>,
    /// Current binlog file of the stream.
    file: String,
    /// Where the current stream was asked to start (`file:offset`), for error messages.
    requested: String,
    seen_fde: bool,
    gtid: GtidState,
    tables: HashMap<u64, TableEntry>,
    /// Latest plan per table, to hand out the same `Arc` when a new table map is equivalent.
    plans: HashMap<TableId, Arc<TablePlan>>,
    ddl_epoch: u64,
    txn: Option<OpenTxn>,
    /// An event whose processing was interrupted (e.g. the future was dropped during a lookup).
    pending: Option<Event>,
    /// Every foreign key of the master, read once per `ddl_epoch` (the epoch it was read at).
    foreign_keys: Option<(u64, Arc<Vec<ForeignKey>>)>,
    /// Schema history: each captured table's definition as of the stream's
    /// position, with its UNIQUE keys' names (restored from the log on start,
    /// then kept by table maps and DDL).
    history: HashMap<TableId, HistoryEntry>,
    /// The boundary after the last transaction read (handed out or not).
    boundary: Option<MysqlPosition>,
    /// The DDL events computed for the query event being processed (async
    /// catalog reads happen before `handle`, which is synchronous).
    ddl_ready: Option<Vec<(Arc<TableSchema>, Op)>>,
    /// Tables that entered the captured set by a rename (they need a copy).
    entered: Vec<TableId>,
    /// Catalog reads of the event being handled, cancel-safe.
    catalog: CatalogReads,
    /// What a DDL event's handling changes, as it was before its first try:
    /// a try cut short (cancelled, or failed) starts again from it.
    ddl_undo: Option<DdlUndo>,
}

/// The state [`MysqlSource::schema_changes`] changes as it goes (a rename of
/// several tables forgets one before it reads the catalog for the next).
struct DdlUndo {
    history: HashMap<TableId, HistoryEntry>,
    entered: usize,
    ddl_epoch: u64,
}

impl fmt::Debug for MysqlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlSource")
            .field("config", &self.config)
            .field("file", &self.file)
            .field("started", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

impl MysqlSource {
    /// Checks the configuration (all problems at once); connects only on use.
    pub fn new(config: MysqlSourceConfig) -> Result<Self, MysqlCaptureError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(MysqlCaptureError::Config(problems));
        }
        let filter = config.filter()?;
        let opts = Opts::from_url(&config.url)
            .map_err(|e| MysqlCaptureError::Config(vec![format!("source.url: {e}")]))?;
        Ok(Self {
            config,
            filter,
            opts,
            meta: None,
            server: None,
            stream: None,
            file: String::new(),
            requested: String::new(),
            seen_fde: false,
            gtid: GtidState::MariaDb(Default::default()),
            tables: HashMap::new(),
            plans: HashMap::new(),
            ddl_epoch: 0,
            txn: None,
            pending: None,
            foreign_keys: None,
            history: HashMap::new(),
            boundary: None,
            ddl_ready: None,
            entered: Vec::new(),
            catalog: CatalogReads::default(),
            ddl_undo: None,
        })
    }

    pub fn config(&self) -> &MysqlSourceConfig {
        &self.config
    }

    /// The metadata connection, (re)connected on demand.
    async fn meta(&mut self) -> Result<&mut Conn, MysqlCaptureError> {
        if self.meta.is_none() {
            let conn = Conn::new(self.opts.clone())
                .await
                .map_err(driver(format!("connecting to {}", self.config.redacted_url())))?;
            self.meta = Some(conn);
        }
        Ok(self.meta.as_mut().expect("just connected"))
    }

    /// Flavour and collations of the master, read once.
    async fn server_info(&mut self) -> Result<ServerInfo, MysqlCaptureError> {
        if let Some(s) = &self.server {
            return Ok(s.clone());
        }
        let conn = self.meta().await?;
        let info = read_server_info(conn).await?;
        self.gtid = if info.mariadb {
            GtidState::MariaDb(Default::default())
        } else {
            GtidState::MySql(Default::default())
        };
        self.server = Some(info.clone());
        Ok(info)
    }

    /// The master's current end of binlog, with its GTID state.
    pub async fn master_position(&mut self) -> Result<Position, MysqlCaptureError> {
        let r = self.read_master_position().await;
        self.forget_meta_on_driver_error(&r);
        r
    }

    /// A connection error leaves the metadata connection unusable: reconnect next time.
    fn forget_meta_on_driver_error<T>(&mut self, r: &Result<T, MysqlCaptureError>) {
        if let Err(MysqlCaptureError::Driver { .. }) = r {
            self.meta = None;
        }
    }

    async fn read_master_position(&mut self) -> Result<Position, MysqlCaptureError> {
        let info = self.server_info().await?;
        let conn = self.meta().await?;
        let row: Option<mysql_async::Row> = match conn.query_first("SHOW MASTER STATUS").await {
            Ok(r) => r,
            // MySQL 8.4 removed SHOW MASTER STATUS.
            Err(mysql_async::Error::Server(e)) if e.code == 1064 => conn
                .query_first("SHOW BINARY LOG STATUS")
                .await
                .map_err(driver("SHOW BINARY LOG STATUS"))?,
            Err(e) => return Err(driver("SHOW MASTER STATUS")(e)),
        };
        let row = row.ok_or(MysqlCaptureError::NoBinlog)?;
        let file: String = row.get(0).ok_or(MysqlCaptureError::NoBinlog)?;
        let offset: u64 = row.get(1).ok_or(MysqlCaptureError::NoBinlog)?;
        let gtid_set = if info.mariadb {
            self.mariadb_gtid_at(&file, offset).await?
        } else {
            row.get::<Option<String>, _>(4)
                .flatten()
                .map(|s| s.replace(['\n', ' '], ""))
        };
        Ok(Position::Mysql(MysqlPosition {
            file,
            offset,
            gtid_set: gtid_set.filter(|s| !s.is_empty()),
        }))
    }

    async fn mariadb_gtid_at(
        &mut self,
        file: &str,
        offset: u64,
    ) -> Result<Option<String>, MysqlCaptureError> {
        let conn = self.meta().await?;
        conn.exec_first::<Option<String>, _, _>("SELECT BINLOG_GTID_POS(?, ?)", (file, offset))
            .await
            .map(Option::flatten)
            .map_err(driver("SELECT BINLOG_GTID_POS"))
    }

    /// Closes the binlog stream (if any); `start` opens a new one.
    pub async fn stop(&mut self) {
        if let Some(stream) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
        }
    }

    fn idle_limit(&self) -> Duration {
        Duration::from_secs(self.config.heartbeat_secs) * HEARTBEAT_MISSES
    }

    fn here(&self, header_log_pos: u32, size: u32) -> String {
        format!("{}:{}", self.file, header_log_pos.saturating_sub(size))
    }

    /// The next event of the stream, with dead-connection detection.
    async fn next_event(&mut self) -> Result<Event, MysqlCaptureError> {
        let limit = self.idle_limit();
        let stream = self.stream.as_mut().ok_or(MysqlCaptureError::NotStarted)?;
        let res = tokio::time::timeout(limit, stream.next()).await;
        let err = match res {
            Ok(Some(Ok(ev))) => return Ok(ev),
            Err(_) => MysqlCaptureError::HeartbeatTimeout(limit),
            Ok(None) => MysqlCaptureError::StreamEnded,
            Ok(Some(Err(mysql_async::Error::Server(e)))) if e.code == 1236 => {
                MysqlCaptureError::PositionUnavailable {
                    position: self.requested.clone(),
                    message: e.message,
                }
            }
            Ok(Some(Err(e))) => driver("reading the binlog stream")(e),
        };
        self.stream = None;
        Err(err)
    }

    async fn table_info(
        &mut self,
        db: &str,
        table: &str,
        mariadb: bool,
    ) -> Result<TableFacts, MysqlCaptureError> {
        let all_fks = self.all_foreign_keys().await?;
        let (d, t) = (db.to_owned(), table.to_owned());
        let mut facts: TableFacts = self
            .catalog_read(
                format!("table {db}.{table}"),
                format!("reading information_schema for {db}.{table}"),
                move |mut c| async move {
                    let r = read_table_facts(&mut c, &d, &t, mariadb).await;
                    (c, r)
                },
            )
            .await?;
        let id = TableId::new(db, table);
        facts.foreign_keys = all_fks.iter().filter(|f| f.table == id).cloned().collect();
        facts.cascades = cascade_closure(&all_fks, &id);
        Ok(facts)
    }

    /// Every foreign key of the master, re-read after DDL. Whether each side is
    /// captured comes from the filter.
    async fn all_foreign_keys(&mut self) -> Result<Arc<Vec<ForeignKey>>, MysqlCaptureError> {
        if let Some((epoch, fks)) = &self.foreign_keys {
            if *epoch == self.ddl_epoch {
                return Ok(fks.clone());
            }
        }
        let epoch = self.ddl_epoch;
        let filter = self.filter.clone();
        let fks: Vec<ForeignKey> = self
            .catalog_read(
                "foreign keys".into(),
                "reading the master's foreign keys".into(),
                move |mut c| async move {
                    let r = read_foreign_keys(&mut c, &filter).await;
                    (c, r)
                },
            )
            .await?;
        let fks = Arc::new(fks);
        self.foreign_keys = Some((epoch, fks.clone()));
        Ok(fks)
    }

    /// Whether a table map needs an `information_schema` lookup; records skipped tables.
    fn table_map_needs_lookup(&mut self, ev: &Event) -> Result<Option<(String, String)>, MysqlCaptureError> {
        let data = ev.data();
        let table_id = table_id_of(data);
        if let Some(e) = self.tables.get(&table_id) {
            if e.tme == data && (e.plan.is_none() || e.epoch == self.ddl_epoch) {
                return Ok(None);
            }
        }
        let tme = ev
            .read_event::<TableMapEvent<'_>>()
            .map_err(|e| self.event_error(ev, e.to_string()))?;
        let (db, table) = (tme.database_name().into_owned(), tme.table_name().into_owned());
        if self.filter.matches(&db, &table) {
            Ok(Some((db, table)))
        } else {
            self.tables.insert(
                table_id,
                TableEntry {
                    tme: data.to_vec(),
                    plan: None,
                    epoch: self.ddl_epoch,
                },
            );
            Ok(None)
        }
    }

    /// Builds and installs the plan of a table map: from the schema history
    /// when it describes the table map (the definition the row was written
    /// under), else from `information_schema` (read now).
    async fn plan_table_map(&mut self, ev: &Event, db: &str, table: &str) -> Result<(), MysqlCaptureError> {
        let mariadb = self.server.as_ref().is_some_and(|s| s.mariadb);
        let id = TableId::new(db, table);
        if let Some(h) = self.history.get(&id).cloned() {
            let fks = self.all_foreign_keys().await?;
            let facts = with_foreign_keys(history_facts(&h), &fks, &id);
            if self.try_install_plan(ev, &facts)? {
                return Ok(());
            }
        }
        let info = self.table_info(db, table, mariadb).await?;
        self.install_plan(ev, &info)
    }

    /// Installs the plan when `facts` describe the table map; false otherwise.
    fn try_install_plan(&mut self, ev: &Event, facts: &TableFacts) -> Result<bool, MysqlCaptureError> {
        let tme = ev
            .read_event::<TableMapEvent<'_>>()
            .map_err(|e| self.event_error(ev, e.to_string()))?;
        let charsets = self
            .server
            .as_ref()
            .map(|s| s.charsets.clone())
            .unwrap_or_default();
        if !super::binlog_table::describes(&tme, facts, &charsets)? {
            return Ok(false);
        }
        self.install_plan(ev, facts)?;
        Ok(true)
    }

    fn install_plan(&mut self, ev: &Event, info: &TableFacts) -> Result<(), MysqlCaptureError> {
        let tme = ev
            .read_event::<TableMapEvent<'_>>()
            .map_err(|e| self.event_error(ev, e.to_string()))?;
        let charsets = self
            .server
            .as_ref()
            .map(|s| s.charsets.clone())
            .unwrap_or_default();
        let plan = build_plan(&tme, info, &charsets)?;
        if plan.consistent {
            self.history.insert(
                plan.schema.id.clone(),
                HistoryEntry {
                    schema: plan.schema.clone(),
                    unique_key_names: plan.unique_key_names.clone(),
                },
            );
        }
        let plan = match self.plans.get(&plan.schema.id) {
            Some(old) if old.schema == plan.schema && old.decoders == plan.decoders => old.clone(),
            _ => {
                let plan = Arc::new(plan);
                self.plans.insert(plan.schema.id.clone(), plan.clone());
                plan
            }
        };
        self.tables.insert(
            tme.table_id(),
            TableEntry {
                tme: ev.data().to_vec(),
                plan: Some(plan),
                epoch: self.ddl_epoch,
            },
        );
        Ok(())
    }

    /// A table's definition as the catalog shows it now (`None`: no such
    /// table), with its UNIQUE keys' names.
    async fn catalog_definition(
        &mut self,
        id: &TableId,
    ) -> Result<Option<ddl::Definition>, MysqlCaptureError> {
        let info = self.server_info().await?;
        let facts = self.table_info(&id.schema, &id.name, info.mariadb).await?;
        if facts.columns.is_empty() {
            return Ok(None);
        }
        match schema_from_facts(id.clone(), &facts, &info.charsets) {
            Ok((schema, unique_key_names)) => Ok(Some(ddl::Definition {
                schema,
                unique_key_names,
            })),
            // A type capture cannot carry: the table map of its first row
            // says so loudly; the DDL event names the table only.
            Err(_) => Ok(None),
        }
    }

    /// The default collation of a new text column of `table` (its table's,
    /// else its database's), as the catalog shows it now.
    async fn default_collation(&mut self, table: &TableId) -> Result<Option<String>, MysqlCaptureError> {
        let id = table.clone();
        self.catalog_read(
            format!("default collation {table}"),
            format!("reading the default collation of {table}"),
            move |mut conn| async move {
                let r: Result<Option<Option<String>>, mysql_async::Error> = async {
                    let t: Option<Option<String>> = conn
                        .exec_first(
                            "SELECT TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                            (&id.schema, &id.name),
                        )
                        .await?;
                    if let Some(Some(c)) = t {
                        return Ok(Some(Some(c)));
                    }
                    conn.exec_first(
                        "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                        (&id.schema,),
                    )
                    .await
                }
                .await;
                (conn, r.map(Option::flatten))
            },
        )
        .await
    }

    /// A catalog read on the metadata connection that a cancelled
    /// `next_transaction` does not cut short (see [`super::catalog_read`]).
    /// `key` names the read within the event being handled; `what` is the
    /// error context.
    async fn catalog_read<T, F, Fut>(
        &mut self,
        key: String,
        what: String,
        read: F,
    ) -> Result<T, MysqlCaptureError>
    where
        T: Clone + Send + 'static,
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (Conn, Result<T, mysql_async::Error>)> + Send + 'static,
    {
        match self.catalog.read(&mut self.meta, &self.opts, key, read).await {
            Ok(v) => Ok(v),
            Err(ReadError::Connect(e)) => {
                Err(driver(format!("connecting to {}", self.config.redacted_url()))(e))
            }
            Err(ReadError::Read(e)) => Err(driver(what)(e)),
        }
    }

    /// The definition after a statement: what applying the statement to the
    /// definition before gives (`parsed`), checked against the catalog: when
    /// the catalog shows the same columns and keys, its definition (exact
    /// spelling and collations) is taken; when it is ahead (capture behind a
    /// later change, or re-reading old events after a restart), the parsed
    /// one. Without a parsed definition, the catalog's (the change is then
    /// `Unknown` unless `catalog_ok`).
    async fn settle(
        &mut self,
        id: &TableId,
        parsed: Result<(ddl::Definition, DdlKind), String>,
        catalog_ok: bool,
    ) -> Result<(Arc<TableSchema>, Vec<String>, DdlKind), MysqlCaptureError> {
        let catalog = self.catalog_definition(id).await?;
        Ok(match (parsed, catalog) {
            (Ok((p, kind)), Some(c)) if same_shape(&p.schema, &c.schema) => {
                (Arc::new(c.schema), c.unique_key_names, kind)
            }
            (Ok((p, kind)), _) => {
                tracing::debug!(table = %id, "information_schema is ahead of this schema change; using the statement's definition");
                (Arc::new(p.schema), p.unique_key_names, kind)
            }
            (Err(e), Some(c)) if catalog_ok => {
                tracing::debug!(table = %id, reason = %e, "schema change read from information_schema");
                let kind = DdlKind::CreateTable {
                    if_not_exists: false,
                    or_replace: false,
                };
                (Arc::new(c.schema), c.unique_key_names, kind)
            }
            (Err(e), c) => {
                tracing::warn!(table = %id, reason = %e,
                    "schema change dbmux cannot follow; replicas that translate DDL stop this table");
                let schema = c.map_or_else(|| name_only(id), |c| Arc::new(c.schema));
                (
                    schema,
                    Vec::new(),
                    DdlKind::Unknown {
                        reason: format!("dbmux cannot follow this schema change: {e}"),
                    },
                )
            }
        })
    }

    /// The DDL events of a query event: one per captured table it changes
    /// (empty for anything else). Updates the schema history.
    async fn schema_changes(&mut self, ev: &Event) -> Result<Vec<(Arc<TableSchema>, Op)>, MysqlCaptureError> {
        let q = ev
            .read_event::<QueryEvent<'_>>()
            .map_err(|e| self.event_error(ev, e.to_string()))?;
        let raw = q.query_raw().to_vec();
        let default_db = q.schema().into_owned();
        drop(q);
        let text = strip_comments(&raw);
        let is_ddl = ["CREATE", "ALTER", "DROP", "RENAME"]
            .iter()
            .any(|w| starts_with_word(text, w))
            || text.starts_with(b"/*!");
        if !is_ddl {
            return Ok(Vec::new());
        }
        let statement = String::from_utf8_lossy(&raw).into_owned();
        // What this handling changes, saved before its first change (taken
        // back by `next_transaction` once the event is handled).
        self.ddl_undo = Some(DdlUndo {
            history: self.history.clone(),
            entered: self.entered.len(),
            ddl_epoch: self.ddl_epoch,
        });
        // Foreign keys and other catalog facts may change with any DDL.
        self.ddl_epoch += 1;
        let commit_ts_us = ev.header().timestamp() as i64 * 1_000_000;
        let change = |kind: DdlKind, names: Vec<String>| {
            Op::Ddl(Box::new(SchemaChange {
                statement: statement.clone(),
                default_schema: default_db.clone(),
                kind,
                unique_key_names: names,
            }))
        };
        let captured = |f: &TableFilter, id: &TableId| f.matches(&id.schema, &id.name);
        let filter = self.filter.clone();
        let st = match ddl::parse(&statement) {
            Ok(st) => st,
            Err(e) => {
                // Unreadable: the table it names (when a light reading finds
                // one that is captured) gets an Unknown change.
                let Some(id) = ddl_target_guess(text, &default_db).filter(|id| captured(&filter, id)) else {
                    tracing::warn!(statement = %statement, error = %e, "a DDL statement dbmux cannot read; it names no captured table");
                    return Ok(Vec::new());
                };
                let (schema, names, kind) = self.settle(&id, Err(e), false).await?;
                self.history.remove(&id);
                return Ok(vec![(schema, change(kind, names))]);
            }
        };
        let charsets = self.server_info().await?.charsets;
        let mut out = Vec::new();
        match st {
            Statement::CreateTable(ct) => {
                let id = ct.table.id(&default_db);
                if !captured(&filter, &id) {
                    return Ok(out);
                }
                let default_collation = match (&ct.collation, &ct.charset) {
                    (Some(c), _) => Some(c.clone()),
                    (None, Some(cs)) => charsets.default_collation.get(cs).cloned(),
                    (None, None) => self.default_collation(&id).await?,
                };
                let ctx = ddl::Context {
                    server: &charsets,
                    default_collation,
                    commit_ts_us,
                };
                let kind = DdlKind::CreateTable {
                    if_not_exists: ct.if_not_exists,
                    or_replace: ct.or_replace,
                };
                let parsed = ddl::create_definition(&ct, id.clone(), &ctx).map(|d| (d, kind));
                let (schema, names, kind) = self.settle(&id, parsed, true).await?;
                self.remember(&schema, &names, &kind);
                out.push((schema, change(kind, names)));
            }
            Statement::CreateTableLike {
                table,
                like,
                if_not_exists,
                or_replace,
            } => {
                let id = table.id(&default_db);
                if !captured(&filter, &id) {
                    return Ok(out);
                }
                let like = like.id(&default_db);
                let base = match self.history.get(&like) {
                    Some(h) => Some(ddl::Definition {
                        schema: (*h.schema).clone(),
                        unique_key_names: h.unique_key_names.clone(),
                    }),
                    None => self.catalog_definition(&like).await?,
                };
                let kind = DdlKind::CreateTable {
                    if_not_exists,
                    or_replace,
                };
                let parsed = base
                    .map(|mut d| {
                        d.schema.id = id.clone();
                        (d, kind)
                    })
                    .ok_or_else(|| format!("the definition of {like} is not known"));
                let (schema, names, kind) = self.settle(&id, parsed, true).await?;
                self.remember(&schema, &names, &kind);
                out.push((schema, change(kind, names)));
            }
            Statement::Alter { table, clauses } => {
                let id = table.id(&default_db);
                let rename_to = clauses.iter().find_map(|c| match c {
                    Clause::RenameTo(n) => Some(n.id(&default_db)),
                    _ => None,
                });
                let new_id = rename_to.clone().unwrap_or_else(|| id.clone());
                match (captured(&filter, &id), captured(&filter, &new_id)) {
                    (false, false) => return Ok(out),
                    (false, true) => {
                        tracing::info!(table = %new_id, "a table entered the captured set by a rename; it will be copied");
                        self.entered.push(new_id);
                        return Ok(out);
                    }
                    (true, false) => {
                        let schema = self.forget_table(&id);
                        out.push((schema, change(DdlKind::DropTable, Vec::new())));
                        return Ok(out);
                    }
                    (true, true) => {}
                }
                let before = match self.history.get(&id) {
                    Some(h) => Some(ddl::Definition {
                        schema: (*h.schema).clone(),
                        unique_key_names: h.unique_key_names.clone(),
                    }),
                    None => self.catalog_definition(&new_id).await?,
                };
                let default_collation = self.default_collation(&new_id).await?;
                let ctx = ddl::Context {
                    server: &charsets,
                    default_collation,
                    commit_ts_us,
                };
                let only_rename = clauses.len() == 1 && rename_to.is_some();
                let parsed = match before {
                    None => Err(format!("the definition of {id} before the change is not known")),
                    Some(b) => ddl::alter_definition(&b, &clauses, rename_to.clone(), &ctx).map(
                        |(d, mut actions)| {
                            let kind = if only_rename {
                                DdlKind::RenameTable { from: id.clone() }
                            } else {
                                if rename_to.is_some() {
                                    actions.insert(0, AlterAction::RenameTable { from: id.clone() });
                                }
                                DdlKind::AlterTable { actions }
                            };
                            (d, kind)
                        },
                    ),
                };
                let (schema, names, kind) = self.settle(&new_id, parsed, false).await?;
                if new_id != id {
                    self.history.remove(&id);
                }
                self.remember(&schema, &names, &kind);
                out.push((schema, change(kind, names)));
            }
            Statement::Rename(pairs) => {
                for (from, to) in pairs {
                    let (f, t) = (from.id(&default_db), to.id(&default_db));
                    match (captured(&filter, &f), captured(&filter, &t)) {
                        (true, true) => {
                            let before = self.history.get(&f).map(|h| ddl::Definition {
                                schema: TableSchema {
                                    id: t.clone(),
                                    ..(*h.schema).clone()
                                },
                                unique_key_names: h.unique_key_names.clone(),
                            });
                            let kind = DdlKind::RenameTable { from: f.clone() };
                            let parsed = before
                                .map(|d| (d, kind))
                                .ok_or_else(|| format!("the definition of {f} is not known"));
                            let (schema, names, kind) = self.settle(&t, parsed, false).await?;
                            let kind = match kind {
                                DdlKind::Unknown { .. } => DdlKind::RenameTable { from: f.clone() },
                                k => k,
                            };
                            self.history.remove(&f);
                            self.remember(&schema, &names, &kind);
                            out.push((schema, change(kind, names)));
                        }
                        (true, false) => {
                            let schema = self.forget_table(&f);
                            out.push((schema, change(DdlKind::DropTable, Vec::new())));
                        }
                        (false, true) => {
                            tracing::info!(table = %t, "a table entered the captured set by a rename; it will be copied");
                            self.entered.push(t);
                        }
                        (false, false) => {}
                    }
                }
            }
            Statement::Drop { tables } => {
                for n in tables {
                    let id = n.id(&default_db);
                    if captured(&filter, &id) {
                        let schema = self.forget_table(&id);
                        out.push((schema, change(DdlKind::DropTable, Vec::new())));
                    }
                }
            }
            Statement::CreateDatabase { name, .. } => {
                if filter.may_match_schema(&name) {
                    out.push((
                        name_only(&TableId::new(name, "")),
                        change(DdlKind::CreateDatabase, Vec::new()),
                    ));
                }
            }
            Statement::DropDatabase { name, .. } => {
                if filter.covers_schema(&name) {
                    self.history.retain(|id, _| id.schema != name);
                    out.push((
                        name_only(&TableId::new(name, "")),
                        change(DdlKind::DropDatabase, Vec::new()),
                    ));
                } else {
                    // Only some of its tables are captured: they are dropped,
                    // the replica's database stays.
                    let mut gone: Vec<TableId> = self
                        .history
                        .keys()
                        .filter(|id| id.schema == name)
                        .cloned()
                        .collect();
                    gone.sort();
                    for id in gone {
                        let schema = self.forget_table(&id);
                        out.push((schema, change(DdlKind::DropTable, Vec::new())));
                    }
                }
            }
            Statement::Other => {}
        }
        Ok(out)
    }

    /// Records a definition after a schema change in the history.
    fn remember(&mut self, schema: &Arc<TableSchema>, names: &[String], kind: &DdlKind) {
        if matches!(kind, DdlKind::Unknown { .. }) || schema.columns_unknown() {
            self.history.remove(&schema.id);
            return;
        }
        self.history.insert(
            schema.id.clone(),
            HistoryEntry {
                schema: schema.clone(),
                unique_key_names: names.to_vec(),
            },
        );
    }

    /// Forgets a dropped table; its last known definition (or its name).
    fn forget_table(&mut self, id: &TableId) -> Arc<TableSchema> {
        self.plans.remove(id);
        self.history
            .remove(id)
            .map(|h| h.schema)
            .unwrap_or_else(|| name_only(id))
    }

    fn event_error(&self, ev: &Event, message: String) -> MysqlCaptureError {
        let h = ev.header();
        MysqlCaptureError::Event {
            position: self.here(h.log_pos(), h.event_size()),
            message,
        }
    }

    fn begin(&mut self, ev: &Event, id: Option<String>, gtid: TxnGtid, standalone: bool) {
        if let Some(old) = self.txn.take() {
            if !old.changes.is_empty() {
                tracing::warn!(
                    txn = old.id.as_deref().unwrap_or("?"),
                    "a transaction without commit was followed by a new one; dropping its changes"
                );
            }
        }
        let h = ev.header();
        self.txn = Some(OpenTxn {
            id,
            gtid,
            standalone,
            saw_begin: false,
            xa_prepare: false,
            start: self.here(h.log_pos(), h.event_size()),
            payload_end: None,
            commit_ts_us: None,
            changes: Vec::new(),
        });
    }

    fn commit(&mut self, ev: &Event) -> Option<CapturedTransaction> {
        let txn = self.txn.take()?;
        match &txn.gtid {
            TxnGtid::Maria { domain, server, seq } => self.gtid.add_mariadb(*domain, *server, *seq),
            TxnGtid::MySql { sid, gno } => self.gtid.add_mysql(sid, *gno),
            TxnGtid::None => {}
        }
        if txn.changes.is_empty() {
            return None;
        }
        let h = ev.header();
        let offset = txn.payload_end.unwrap_or(h.log_pos() as u64);
        Some(CapturedTransaction {
            id: txn.id.unwrap_or(txn.start),
            commit_ts_us: txn.commit_ts_us.unwrap_or(h.timestamp() as i64 * 1_000_000),
            position: Position::Mysql(MysqlPosition {
                file: self.file.clone(),
                offset,
                gtid_set: (!self.gtid.is_empty()).then(|| self.gtid.to_string()),
            }),
            changes: txn.changes,
        })
    }

    /// Processes one event (table maps are handled before); returns a committed transaction.
    fn handle(&mut self, ev: &Event) -> Result<Option<CapturedTransaction>, MysqlCaptureError> {
        let h = ev.header();
        let ty = h.event_type_raw();
        match ty {
            ROTATE => {
                let data = ev.data();
                let mut name: &[u8] = data.get(8..).unwrap_or_default();
                if !self.seen_fde && name.len() > 4 && has_trailing_crc(ev) {
                    name = &name[..name.len() - 4];
                }
                self.file = String::from_utf8_lossy(name).into_owned();
                // Table ids are only meaningful within a stretch of binlog; keep the cache bounded.
                self.tables.clear();
            }
            FORMAT_DESCRIPTION => self.seen_fde = true,
            MARIA_GTID => {
                let g = MariaGtid::parse(ev.data())
                    .ok_or_else(|| self.event_error(ev, "short MariaDB GTID event".into()))?;
                let server = h.server_id();
                self.begin(
                    ev,
                    Some(format!("{}-{}-{}", g.domain_id, server, g.seq_no)),
                    TxnGtid::Maria {
                        domain: g.domain_id,
                        server,
                        seq: g.seq_no,
                    },
                    g.standalone(),
                );
                if g.flags & FL_PREPARED_XA != 0 {
                    if let Some(t) = self.txn.as_mut() {
                        t.xa_prepare = true;
                    }
                }
            }
            MARIA_GTID_LIST if self.gtid.is_empty() => {
                if let Some(list) = parse_gtid_list(ev.data()) {
                    for (d, s, q) in list {
                        self.gtid.add_mariadb(d, s, q);
                    }
                }
            }
            MYSQL_GTID | MYSQL_GTID_TAGGED => {
                let g = ev
                    .read_event::<GtidEvent>()
                    .map_err(|e| self.event_error(ev, e.to_string()))?;
                let mut sid = format_uuid(&g.sid());
                if let Some(tag) = g.tag() {
                    sid = format!("{sid}:{}", tag.as_str());
                }
                let gno = g.gno();
                let ts = g.immediate_commit_timestamp();
                self.begin(
                    ev,
                    Some(format!("{sid}:{gno}")),
                    TxnGtid::MySql { sid, gno },
                    false,
                );
                if let (Some(t), true) = (self.txn.as_mut(), ts > 0) {
                    t.commit_ts_us = Some(ts as i64);
                }
            }
            MYSQL_ANONYMOUS_GTID => self.begin(ev, None, TxnGtid::None, false),
            TRANSACTION_PAYLOAD => {
                if let Some(t) = self.txn.as_mut() {
                    t.payload_end = Some(h.log_pos() as u64);
                }
            }
            QUERY => return self.on_query(ev),
            XID => return self.finish(ev),
            WRITE_ROWS_V1 | UPDATE_ROWS_V1 | DELETE_ROWS_V1 | WRITE_ROWS | UPDATE_ROWS | DELETE_ROWS => {
                self.on_rows(ev)?;
            }
            PARTIAL_UPDATE_ROWS => {
                return Err(self.event_error(
                    ev,
                    "partial JSON update rows event: set binlog_row_value_options='' on the master".into(),
                ))
            }
            XA_PREPARE => {
                if self.txn.as_ref().is_some_and(|t| !t.changes.is_empty()) {
                    return Err(self.event_error(
                        ev,
                        "XA PREPARE of a transaction that changed captured tables: XA transactions are not \
                         supported; exclude those tables or avoid XA"
                            .into(),
                    ));
                }
                // Nothing of ours in it; its GTID is consumed all the same.
                self.commit(ev);
            }
            t if MARIA_COMPRESSED.contains(&t) => {
                return Err(self.event_error(
                    ev,
                    format!("compressed event type {t}: set log_bin_compress=OFF on the master"),
                ))
            }
            // Heartbeats, FDE-adjacent, checkpoints, annotations, intvar/rand/user var
            // (statement-based helpers) and anything new carry nothing to capture.
            _ => {}
        }
        Ok(None)
    }

    /// XID or COMMIT: the end of a transaction.
    fn finish(&mut self, ev: &Event) -> Result<Option<CapturedTransaction>, MysqlCaptureError> {
        if self
            .txn
            .as_ref()
            .is_some_and(|t| t.xa_prepare && !t.changes.is_empty())
        {
            return Err(self.event_error(
                ev,
                "XA transaction changed captured tables: XA transactions are not supported".into(),
            ));
        }
        Ok(self.commit(ev))
    }

    fn on_query(&mut self, ev: &Event) -> Result<Option<CapturedTransaction>, MysqlCaptureError> {
        let q = ev
            .read_event::<QueryEvent<'_>>()
            .map_err(|e| self.event_error(ev, e.to_string()))?;
        let text = strip_comments(q.query_raw());
        let word = |w: &str| starts_with_word(text, w);
        if word("BEGIN") || word("XA START") || word("XA BEGIN") {
            if self.txn.is_none() {
                self.begin(ev, None, TxnGtid::None, false);
            }
            if let Some(t) = self.txn.as_mut() {
                t.saw_begin = true;
            }
            return Ok(None);
        }
        if word("COMMIT") || word("XA COMMIT") {
            return self.finish(ev);
        }
        if word("ROLLBACK TO") || word("SAVEPOINT") || word("RELEASE SAVEPOINT") || word("XA END") {
            return Ok(None);
        }
        if word("ROLLBACK") || word("XA ROLLBACK") {
            // Also what a transaction mixing non-transactional tables logs when it rolls back.
            if let Some(t) = self.txn.take() {
                if !t.changes.is_empty() {
                    tracing::warn!(
                        txn = t.id.as_deref().unwrap_or("?"),
                        changes = t.changes.len(),
                        "transaction logged with ROLLBACK (non-transactional tables?): its changes are dropped"
                    );
                }
                // Its GTID was still consumed by the master.
                self.txn = Some(OpenTxn {
                    changes: Vec::new(),
                    ..t
                });
                self.commit(ev);
            }
            return Ok(None);
        }
        let schema = q.schema().into_owned();
        let dml = ["INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD", "WITH"]
            .iter()
            .any(|w| word(w));
        if dml {
            // A statement-based row change (a session wrote with
            // binlog_format=STATEMENT or MIXED): its rows are not in the binlog.
            // Harmless only when it certainly writes no captured table.
            let captured = match statement_tables(text, &schema) {
                Some(tables) => tables
                    .into_iter()
                    .find(|(db, t)| self.filter.matches(db, t))
                    .map(|(db, t)| format!("it writes {db}.{t}, which is captured")),
                None => Some("dbmux cannot tell which tables it writes".into()),
            };
            if let Some(why) = captured {
                return Err(self.event_error(
                    ev,
                    format!(
                        "statement-based change in the binlog (default database {schema:?}; {why}): a session \
                         wrote with binlog_format=STATEMENT or MIXED, so its rows cannot be captured; keep \
                         binlog_format=ROW for every session"
                    ),
                ));
            }
        }
        match truncate_target(text).filter(|_| !dml) {
            Some((db, table)) => {
                let id = TableId::new(db.unwrap_or(schema), table);
                if self.filter.matches(&id.schema, &id.name) {
                    // The schema as last captured; a table never captured yet is named only.
                    let table = match self.plans.get(&id) {
                        Some(p) => p.schema.clone(),
                        None => Arc::new(TableSchema {
                            id,
                            columns: Vec::new(),
                            primary_key: Vec::new(),
                            ..Default::default()
                        }),
                    };
                    if self.txn.is_none() {
                        self.begin(ev, None, TxnGtid::None, false);
                    }
                    if let Some(t) = self.txn.as_mut() {
                        t.changes.push((table, Op::Truncate));
                    }
                }
            }
            // Other DDL: the events computed before (`schema_changes`); the
            // catalog's facts (foreign keys) may have changed.
            None if !dml => {
                self.ddl_epoch += 1;
                let changes = self.ddl_ready.take().unwrap_or_default();
                if !changes.is_empty() {
                    if self.txn.is_none() {
                        self.begin(ev, None, TxnGtid::None, false);
                    }
                    if let Some(t) = self.txn.as_mut() {
                        t.changes.extend(changes);
                    }
                }
            }
            None => {}
        }
        // A DDL group ends with its statement: MariaDB flags it standalone, MySQL has no BEGIN.
        let mariadb = self.server.as_ref().is_none_or(|s| s.mariadb);
        if self
            .txn
            .as_ref()
            .is_some_and(|t| t.standalone || (!mariadb && !t.saw_begin))
        {
            return self.finish(ev);
        }
        Ok(None)
    }

    fn on_rows(&mut self, ev: &Event) -> Result<(), MysqlCaptureError> {
        let data = match ev.read_data() {
            Ok(Some(EventData::RowsEvent(r))) => r,
            Ok(_) => return Err(self.event_error(ev, "not a rows event".into())),
            Err(e) => return Err(self.event_error(ev, e.to_string())),
        };
        let table_id = data.table_id();
        let plan = match self.tables.get(&table_id) {
            Some(TableEntry { plan: Some(p), .. }) => p.clone(),
            Some(_) => return Ok(()),
            None => {
                return Err(self.event_error(
                    ev,
                    format!("rows event for table id {table_id} without a preceding table map"),
                ))
            }
        };
        if self.txn.is_none() {
            self.begin(ev, None, TxnGtid::None, false);
        }
        let n = plan.decoders.len();
        let complete = |bits: Option<usize>| bits.is_none_or(|ones| ones == n);
        let before_ones = data.columns_before_image().map(|b| b.count_ones());
        let after_ones = data.columns_after_image().map(|b| b.count_ones());
        if data.num_columns() as usize != n || !complete(before_ones) || !complete(after_ones) {
            return Err(MysqlCaptureError::Event {
                position: self.here(ev.header().log_pos(), ev.header().event_size()),
                message: format!(
                    "rows of {} carry {} of {} columns: the row image is not FULL (a session set \
                     binlog_row_image to MINIMAL or NOBLOB); keep binlog_row_image=FULL",
                    plan.schema.id,
                    before_ones.or(after_ones).unwrap_or(0),
                    n
                ),
            });
        }
        let kind = match ev.header().event_type_raw() {
            WRITE_ROWS_V1 | WRITE_ROWS => 0,
            UPDATE_ROWS_V1 | UPDATE_ROWS => 1,
            _ => 2,
        };
        // A session with foreign_key_checks=0 changed these rows: InnoDB ran no
        // cascades for them, so neither may the appliers.
        let schema = if data
            .flags()
            .contains(mysql_common::binlog::consts::RowsEventFlags::NO_FOREIGN_KEY_CHECKS)
            && !plan.schema.cascades.is_empty()
        {
            Arc::new(TableSchema {
                cascades: Vec::new(),
                ..(*plan.schema).clone()
            })
        } else {
            plan.schema.clone()
        };
        let position = || self.here(ev.header().log_pos(), ev.header().event_size());
        let decode_err = |(col, e): (Option<usize>, DecodeError)| MysqlCaptureError::Decode {
            table: plan.schema.id.to_string(),
            column: col.map_or_else(
                || "(null bitmap)".to_owned(),
                |i| plan.schema.columns[i].name.clone(),
            ),
            position: position(),
            message: e.0,
        };
        let mut cur = Cursor::new(data.rows_data());
        let mut ops = Vec::new();
        while !cur.is_empty() {
            let op = match kind {
                0 => Op::Insert {
                    after: decode_image(&plan, &mut cur).map_err(decode_err)?,
                },
                1 => {
                    let before = decode_image(&plan, &mut cur).map_err(decode_err)?;
                    Op::Update {
                        before,
                        after: decode_image(&plan, &mut cur).map_err(decode_err)?,
                    }
                }
                _ => Op::Delete {
                    before: decode_image(&plan, &mut cur).map_err(decode_err)?,
                },
            };
            ops.push((schema.clone(), op));
        }
        let txn = self.txn.as_mut().expect("begun above");
        if txn.changes.is_empty() {
            txn.changes = ops;
        } else {
            txn.changes.append(&mut ops);
        }
        Ok(())
    }
}

impl Source for MysqlSource {
    type Error = MysqlCaptureError;

    fn read_position(&self) -> Option<Position> {
        self.boundary.clone().map(Position::Mysql)
    }

    fn restore_history(&mut self, history: std::collections::BTreeMap<TableId, HistoryEntry>) {
        self.history = history.into_iter().collect();
    }

    fn take_entered_tables(&mut self) -> Vec<TableId> {
        std::mem::take(&mut self.entered)
    }

    async fn current_position(&mut self) -> Result<Position, MysqlCaptureError> {
        self.master_position().await
    }

    async fn preflight(&mut self) -> Result<(), MysqlCaptureError> {
        let server_id = self.config.server_id;
        let conn = self.meta().await?;
        let facts = match preflight::gather(conn, server_id).await {
            Ok(f) => f,
            Err(e) => {
                self.meta = None;
                return Err(driver("reading server settings for preflight")(e));
            }
        };
        let problems = preflight::check(&facts);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(MysqlCaptureError::Preflight(problems))
        }
    }

    async fn start(&mut self, resume: Option<Position>) -> Result<(), MysqlCaptureError> {
        let r = self.open_stream(resume).await;
        self.forget_meta_on_driver_error(&r);
        r
    }

    async fn next_transaction(&mut self) -> Result<CapturedTransaction, MysqlCaptureError> {
        loop {
            let ev = match self.pending.take() {
                Some(ev) => ev,
                None => self.next_event().await?,
            };
            if ev.header().event_type_raw() == TABLE_MAP {
                if let Some((db, table)) = self.table_map_needs_lookup(&ev)? {
                    // Kept until installed, so a dropped future does not lose the table map.
                    self.pending = Some(ev.clone());
                    self.plan_table_map(&ev, &db, &table).await?;
                    self.pending = None;
                    self.catalog.event_done();
                }
                continue;
            }
            if ev.header().event_type_raw() == QUERY && self.ddl_ready.is_none() {
                // Kept until handled: the catalog reads below may be cancelled.
                self.pending = Some(ev.clone());
                // A try cut short starts again from the state it began with.
                self.undo_ddl_try();
                let changes = self.schema_changes(&ev).await?;
                self.pending = None;
                self.ddl_undo = None;
                self.catalog.event_done();
                self.ddl_ready = Some(changes);
            }
            let handled = self.handle(&ev);
            self.ddl_ready = None;
            let handled = handled?;
            let h = ev.header();
            if self.txn.is_none() && h.log_pos() > 0 && h.event_type_raw() != ROTATE {
                self.boundary = Some(MysqlPosition {
                    file: self.file.clone(),
                    offset: h.log_pos() as u64,
                    gtid_set: (!self.gtid.is_empty()).then(|| self.gtid.to_string()),
                });
            }
            if let Some(txn) = handled {
                return Ok(txn);
            }
        }
    }
}

impl MysqlSource {
    /// Puts back what an unfinished try of a DDL event's handling changed.
    fn undo_ddl_try(&mut self) {
        if let Some(u) = self.ddl_undo.take() {
            self.history = u.history;
            self.entered.truncate(u.entered);
            self.ddl_epoch = u.ddl_epoch;
        }
    }

    /// `start` without the connection bookkeeping.
    async fn open_stream(&mut self, resume: Option<Position>) -> Result<(), MysqlCaptureError> {
        self.stop().await;
        self.txn = None;
        self.pending = None;
        // The stream starts again before the event a failed or cancelled
        // DDL handling had begun: it is read and handled again from scratch.
        self.undo_ddl_try();
        self.catalog.reset();
        let info = self.server_info().await?;
        let p = match resume {
            Some(Position::Mysql(p)) => p,
            Some(other) => {
                return Err(MysqlCaptureError::Config(vec![format!(
                    "cannot resume a MySQL capture from {other}"
                )]))
            }
            None => match self.master_position().await? {
                Position::Mysql(p) => p,
                Position::Postgres(_) => unreachable!("master_position returns a MySQL position"),
            },
        };
        let gtid_text = match p.gtid_set.clone() {
            Some(g) => Some(g),
            None if info.mariadb => self.mariadb_gtid_at(&p.file, p.offset).await?,
            None => None,
        };
        let gtid_text = gtid_text.unwrap_or_default();
        let parsed = if info.mariadb {
            GtidState::parse_mariadb(&gtid_text)
        } else {
            GtidState::parse_mysql(&gtid_text)
        };
        self.gtid = parsed.map_err(|e| MysqlCaptureError::Config(vec![format!("resume position: {e}")]))?;

        let mut conn = Conn::new(self.opts.clone())
            .await
            .map_err(driver(format!("connecting to {}", self.config.redacted_url())))?;
        let hb_ns = self.config.heartbeat_secs * 1_000_000_000;
        let setup = if info.mariadb {
            // Capability 4 (GTID): the master sends real GTID events instead of BEGIN queries.
            format!(
                "SET @mariadb_slave_capability=4, @master_binlog_checksum=@@global.binlog_checksum, \
                 @master_heartbeat_period={hb_ns}"
            )
        } else {
            let uuid = format!("00000000-0000-0000-0000-{:012x}", self.config.server_id);
            format!(
                "SET @master_binlog_checksum=@@global.binlog_checksum, @source_binlog_checksum=@@global.binlog_checksum, \
                 @master_heartbeat_period={hb_ns}, @source_heartbeat_period={hb_ns}, \
                 @slave_uuid='{uuid}', @replica_uuid='{uuid}'"
            )
        };
        conn.query_drop(setup)
            .await
            .map_err(driver("preparing the binlog dump session"))?;
        let request = BinlogStreamRequest::new(self.config.server_id)
            .with_filename(p.file.as_bytes())
            .with_pos(p.offset);
        let stream = conn.get_binlog_stream(request).await.map_err(driver(format!(
            "requesting the binlog from {}:{}",
            p.file, p.offset
        )))?;
        tracing::info!(file = %p.file, offset = p.offset, gtid = %gtid_text, server_id = self.config.server_id, "binlog capture started");
        self.stream = Some(stream);
        self.requested = format!("{}:{}", p.file, p.offset);
        self.boundary = Some(MysqlPosition {
            file: p.file.clone(),
            offset: p.offset,
            gtid_set: (!gtid_text.is_empty()).then(|| gtid_text.clone()),
        });
        self.file = p.file;
        self.seen_fde = false;
        Ok(())
    }
}

/// Reads one row image: the NULL bitmap, then every non-NULL value.
fn decode_image(plan: &TablePlan, cur: &mut Cursor<'_>) -> Result<Vec<Value>, (Option<usize>, DecodeError)> {
    let nulls = cur.take(plan.null_bitmap_len).map_err(|e| (None, e))?;
    let mut row = Vec::with_capacity(plan.decoders.len());
    for (i, d) in plan.decoders.iter().enumerate() {
        if nulls[i >> 3] & (1 << (i & 7)) != 0 {
            row.push(Value::Null);
        } else {
            row.push(d.decode(cur).map_err(|e| (Some(i), e))?);
        }
    }
    Ok(row)
}

/// The table id at the start of a TABLE_MAP body (6 bytes, little-endian).
fn table_id_of(data: &[u8]) -> u64 {
    data.iter().take(6).rev().fold(0, |acc, &b| (acc << 8) | b as u64)
}

/// True when the event's last 4 bytes are the CRC32 of everything before them.
fn has_trailing_crc(ev: &Event) -> bool {
    let h = ev.header();
    let mut header = Vec::with_capacity(19);
    header.extend_from_slice(&h.timestamp().to_le_bytes());
    header.push(h.event_type_raw());
    header.extend_from_slice(&h.server_id().to_le_bytes());
    header.extend_from_slice(&h.event_size().to_le_bytes());
    header.extend_from_slice(&h.log_pos().to_le_bytes());
    header.extend_from_slice(&h.flags_raw().to_le_bytes());
    let data = ev.data();
    let (body, crc) = data.split_at(data.len() - 4);
    crc32(&[&header, body]) == u32::from_le_bytes(crc.try_into().expect("4 bytes"))
}

/// CRC-32 (IEEE), bitwise: used once per connection, not worth a table.
fn crc32(chunks: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for chunk in chunks {
        for &b in *chunk {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::retry::Classify;

    #[test]
    fn config_defaults_validation_and_redaction() {
        let cfg: MysqlSourceConfig = toml_like(r#"{"url": "mysql://u:secret@db1:3306/app"}"#);
        assert_eq!(cfg.server_id, DEFAULT_SERVER_ID);
        assert_eq!(cfg.heartbeat_secs, DEFAULT_HEARTBEAT_SECS);
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("secret") && dbg.contains("***"), "{dbg}");
        assert!(MysqlSource::new(cfg.clone()).is_ok());

        let bad = MysqlSourceConfig {
            url: "postgres://x/".into(),
            server_id: 0,
            include: vec!["ok".into(), "a.".into()],
            exclude: vec!["".into()],
            heartbeat_secs: 0,
        };
        let errs = bad.validate();
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(
            errs[0].starts_with("source.url: scheme must be mysql://"),
            "{}",
            errs[0]
        );
        assert!(errs[1].starts_with("source.server_id:"));
        assert!(errs[2].starts_with("source.heartbeat_secs:"));
        assert!(errs[3].starts_with("source.include[1]:"));
        assert!(errs[4].starts_with("source.exclude[0]:"));
        let err = MysqlSource::new(bad).unwrap_err();
        assert!(!err.is_transient());
        assert!(serde_json::from_str::<MysqlSourceConfig>(r#"{"url": "mysql://h/", "colour": 1}"#).is_err());
    }

    fn toml_like(json: &str) -> MysqlSourceConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn error_classes() {
        let server = |code| {
            mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: String::new(),
                state: String::new(),
            })
        };
        let d = |e| MysqlCaptureError::Driver {
            context: "x".into(),
            source: e,
        };
        assert!(d(server(1927)).is_transient()); // connection killed
        assert!(d(server(1205)).is_transient()); // lock wait timeout
        assert!(!d(server(1045)).is_transient()); // access denied
        assert!(!d(server(1236)).is_transient()); // binlog gone
        assert!(d(mysql_async::Error::Driver(
            mysql_async::DriverError::ConnectionClosed
        ))
        .is_transient());
        assert!(MysqlCaptureError::HeartbeatTimeout(Duration::from_secs(3)).is_transient());
        assert!(MysqlCaptureError::StreamEnded.is_transient());
        assert!(!MysqlCaptureError::NotStarted.is_transient());
    }

    #[test]
    fn statement_words() {
        assert_eq!(strip_comments(b"  /* a */ /*b*/ BEGIN"), b"BEGIN");
        assert!(starts_with_word(b"BEGIN", "BEGIN"));
        assert!(starts_with_word(b"xa  commit 'x'", "XA COMMIT"));
        assert!(!starts_with_word(b"BEGINNING", "BEGIN"));
        assert!(starts_with_word(b"ROLLBACK TO SAVEPOINT s", "ROLLBACK TO"));
        assert!(starts_with_word(b"insert into t values (1)", "INSERT"));
        assert!(!starts_with_word(b"inserted", "INSERT"));
    }

    #[test]
    fn truncate_targets() {
        let t = |s: &str| truncate_target(s.as_bytes());
        assert_eq!(t("TRUNCATE TABLE t"), Some((None, "t".into())));
        assert_eq!(
            t("truncate `my db`.`we``ird`"),
            Some((Some("my db".into()), "we`ird".into()))
        );
        assert_eq!(
            t("TRUNCATE app . orders"),
            Some((Some("app".into()), "orders".into()))
        );
        assert_eq!(t("TRUNCATE TABLE tablex"), Some((None, "tablex".into())));
        assert_eq!(t("TRUNCATEX t"), None);
        assert_eq!(t("CREATE TABLE t (a int)"), None);
    }

    #[test]
    fn statement_targets() {
        let t = |s: &str, db: &str| statement_tables(s.as_bytes(), db);
        let pair = |d: &str, t: &str| (d.to_string(), t.to_string());
        assert_eq!(
            t("INSERT INTO app.t VALUES (1)", "other"),
            Some(vec![pair("app", "t")])
        );
        assert_eq!(
            t("insert into t values (1)", "other"),
            Some(vec![pair("other", "t")])
        );
        assert_eq!(
            t("INSERT IGNORE INTO `my db`.`t``x` (a) SELECT a FROM o", "d"),
            Some(vec![pair("my db", "t`x"), pair("d", "o")])
        );
        assert_eq!(
            t("UPDATE a JOIN app.b ON a.id = b.id SET b.v = 1", "d"),
            Some(vec![pair("d", "a"), pair("app", "b")])
        );
        assert_eq!(
            t("DELETE FROM app.t WHERE id = 1", "d"),
            Some(vec![pair("app", "t")])
        );
        assert_eq!(t("REPLACE INTO t VALUES (1) ", "d"), Some(vec![pair("d", "t")]));
        assert_eq!(
            t(
                "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE v = VALUES(v)",
                "d"
            ),
            Some(vec![pair("d", "t")])
        );
        assert_eq!(
            t(
                "LOAD DATA LOCAL INFILE '/x' REPLACE INTO TABLE app.t FIELDS TERMINATED BY ','",
                "d"
            ),
            Some(vec![pair("app", "t")])
        );
        // No default database for an unqualified name, or unreadable: unsure.
        assert_eq!(t("INSERT INTO t VALUES (1)", ""), None);
        assert_eq!(t("INSERT INTO t VALUES (", "d"), None);
        assert_eq!(t("INSERT INTO a.b.c VALUES (1)", "d"), None);
    }

    #[test]
    fn crc32_matches_the_reference() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[allow(dead_code)]
    fn futures_are_send(s: &mut MysqlSource) {
        fn send<T: Send>(_: T) {}
        send(s.preflight());
        send(s.start(None));
        send(s.next_transaction());
    }
}
