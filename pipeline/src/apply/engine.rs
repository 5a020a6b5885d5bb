//! The narrow trait one replica engine implements: its SQL, its connection,
//! its errors. Everything else (the transaction protocol, planning, tables,
//! quarantine, cascades) is [`super::Applier`]'s.
//!
//! The engine never decides *what* to apply or *when* to commit; it only
//! says how a thing is written in its dialect and runs statements it is
//! given. Methods that build SQL are pure (no connection) so each engine's
//! generated SQL can be unit-tested without a server.

use crate::ddl::SchemaChange;
use crate::event::Row;
use crate::replica::Quarantine;
use crate::retry::ErrorClass;
use crate::schema::{ColumnDef, TableId, TableSchema};
use crate::value::Value;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// One SQL statement and its parameters, in the engine's own parameter form.
#[derive(Clone, PartialEq)]
pub struct Statement<P> {
    /// The text; shared, so an engine can cache the texts it builds.
    pub sql: Arc<str>,
    pub params: Vec<P>,
}

impl<P> Statement<P> {
    pub fn new(sql: impl Into<Arc<str>>, params: Vec<P>) -> Self {
        Self {
            sql: sql.into(),
            params,
        }
    }

    /// A statement without parameters.
    pub fn text(sql: impl Into<Arc<str>>) -> Self {
        Self::new(sql, Vec::new())
    }
}

impl<P> fmt::Debug for Statement<P> {
    /// The text and the parameter count: parameters are row values, which
    /// do not belong in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Statement")
            .field("sql", &self.sql)
            .field("params", &self.params.len())
            .finish()
    }
}

/// What a multi-row step does to its rows (see [`crate::batch::Action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowsKind {
    /// Insert or replace whole rows by primary key; keys are distinct.
    Upsert,
    /// Delete the rows with these primary keys; keys are distinct.
    Delete,
    /// Plain inserts into a table without a primary key.
    Insert,
}

impl RowsKind {
    /// For error contexts: "upserting into `t`".
    pub fn verb(self) -> &'static str {
        match self {
            RowsKind::Upsert => "upserting into",
            RowsKind::Delete => "deleting from",
            RowsKind::Insert => "inserting into",
        }
    }
}

/// Size limits of the statements and transactions an applier sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows per multi-row statement (the engine may lower it per table, e.g.
    /// for a parameter-count limit: [`Engine::max_rows`]).
    pub max_rows_per_statement: usize,
    /// Approximate bytes of values per statement ([`crate::batch::chunks`]).
    pub max_statement_bytes: usize,
    /// Source transactions per target transaction; 0 = every transaction of
    /// one `apply` call in one target transaction. When a call carries more,
    /// it is applied as several consecutive target transactions, each
    /// committed with its own offset (a failure keeps the earlier ones, and
    /// the offset says so).
    pub max_transactions_per_commit: usize,
}

/// A value the engine cannot write into a column (the applier adds the table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    /// The replica column.
    pub column: String,
    pub message: String,
}

/// A replica table the engine writes, as the applier prepared it.
pub struct TargetTable<T> {
    /// The replica table (after renames and name rules).
    pub id: TableId,
    /// The source table definition with every column named as on the replica
    /// (values are by position, so the row images of the events fit it).
    pub schema: Arc<TableSchema>,
    /// The engine's own per-table state (statement texts, column types…).
    pub engine: T,
}

/// The three row-level operations a foreign-key cascade performs on the
/// replica (see [`crate::cascade::CascadeStore`]). Tables and columns are
/// the replica's names; keys are values of `cols`, NULL-free and distinct.
#[derive(Debug, Clone, Copy)]
pub enum CascadeOp<'a, P> {
    /// The `want` columns of the rows whose `cols` equal one of `keys`.
    Select {
        cols: &'a [String],
        keys: &'a [Vec<P>],
        want: &'a [String],
    },
    /// Delete the rows whose `cols` equal one of `keys`.
    Delete { cols: &'a [String], keys: &'a [Vec<P>] },
    /// Set `cols` to `new` (NULL when `None`) in the rows whose `cols` equal one of `keys`.
    Update {
        cols: &'a [String],
        keys: &'a [Vec<P>],
        new: Option<&'a [P]>,
    },
}

/// Why a schema change could not be made on the replica.
#[derive(Debug)]
pub enum DdlError<E> {
    /// The server refused a statement (the engine's error; the applier asks
    /// [`Engine::classify`] whether to retry).
    Driver(E),
    /// The engine will not make this change (a statement it cannot translate,
    /// a database holding dbmux's own tables…): why, for the operator.
    Refused(String),
}

/// A bulk load could not be done.
#[derive(Debug)]
pub enum LoadError<E> {
    Driver(E),
    Value(ValueError),
}

/// One replica engine (MySQL / MariaDB, PostgreSQL, SQL Server…): its SQL,
/// connection and error classification, for [`super::Applier`].
///
/// # Contract
/// - Statements are built by pure methods (`&self`, no connection) and run
///   by [`Engine::execute`] / [`Engine::query`] on a connection from
///   [`Engine::connect`]. Row values always travel as parameters.
/// - `execute` returns the rows the statement affected (found, for an
///   update that changes nothing): `update_one` / `delete_one` must affect
///   exactly one row when the replica holds the before image.
/// - DDL (`setup`, `create_table`) is idempotent and runs outside data
///   transactions (MySQL commits implicitly on DDL).
/// - Errors carry the server's own code; [`Engine::classify`] says which are
///   transient (retry) and which definite, [`Engine::may_pass_in_source_order`]
///   which ones a set-based plan may cause that source order avoids.
pub trait Engine: Send + Sync + 'static {
    /// A statement parameter, as the driver binds it.
    type Param: Clone + PartialEq + Send + Sync + 'static;
    /// The driver's error.
    type Error: std::error::Error + Send + Sync + 'static;
    /// One open connection.
    type Conn: Send + Sync;
    /// What the engine learned of an existing replica table (its column
    /// types…), read by [`Engine::describe`].
    type Described: Clone + Send + Sync;
    /// Per replica table: statement texts and whatever the engine caches.
    type Table: Send + Sync;

    /// The engine's name in messages ("SQL Server").
    const NAME: &'static str;

    fn limits(&self) -> Limits;

    // ---------------------------------------------------------------- errors

    fn classify(e: &Self::Error) -> ErrorClass;

    /// A unique- or foreign-key violation (or the engine's equivalent, e.g.
    /// SQL Server's MERGE touching one row twice): a set-based plan may cause
    /// one that applying the same events in source order does not.
    fn may_pass_in_source_order(e: &Self::Error) -> bool;

    /// A concurrent creator of the same object beat this DDL: running it
    /// again sees the object.
    fn already_exists(e: &Self::Error) -> bool {
        let _ = e;
        false
    }

    /// The error as the operator should read it (code, message, detail).
    fn describe_error(e: &Self::Error) -> String {
        e.to_string()
    }

    // ------------------------------------------------ connection, transactions

    /// Connects and sets the session up (time zone, strictness…).
    fn connect(&mut self) -> impl Future<Output = Result<Self::Conn, Self::Error>> + Send;

    /// Runs a statement; returns the rows it affected.
    fn execute(
        conn: &mut Self::Conn,
        statement: &Statement<Self::Param>,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Runs a query; returns its rows.
    fn query(
        conn: &mut Self::Conn,
        statement: &Statement<Self::Param>,
    ) -> impl Future<Output = Result<Vec<Vec<Self::Param>>, Self::Error>> + Send;

    fn begin(conn: &mut Self::Conn) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn commit(conn: &mut Self::Conn) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn rollback(conn: &mut Self::Conn) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Reads an integer (`seq`, `first_seq`) back from a query result.
    fn as_u64(p: &Self::Param) -> Option<u64>;
    /// Reads text back from a query result.
    fn as_text(p: &Self::Param) -> Option<String>;

    // ------------------------------------- bookkeeping: dbmux_offsets, dbmux_quarantine

    /// Idempotent DDL creating the offsets and quarantine tables (and their
    /// database or schema).
    fn setup(&self) -> Vec<Statement<Self::Param>>;
    /// The offsets table's name, for messages.
    fn offsets_table(&self) -> String;
    /// Inserts `consumer`'s offsets row with `seq` 0 unless it exists.
    fn register(&self, consumer: &str) -> Statement<Self::Param>;
    /// One row, one column: `consumer`'s stored `seq`. With `lock`, the row
    /// stays locked until the current transaction ends (`FOR UPDATE`), so a
    /// second applier of the same name waits and then skips.
    fn read_offset(&self, consumer: &str, lock: bool) -> Statement<Self::Param>;
    /// Sets `consumer`'s `seq` (and the source position after it, for people).
    fn write_offset(
        &self,
        consumer: &str,
        seq: u64,
        position: Option<&str>,
    ) -> Result<Statement<Self::Param>, String>;
    /// Rows `(table_schema, table_name, first_seq, reason)` of `consumer`.
    fn read_quarantines(&self, consumer: &str) -> Statement<Self::Param>;
    /// Inserts or replaces the quarantine of `q.table`.
    fn store_quarantine(&self, consumer: &str, q: &Quarantine) -> Statement<Self::Param>;
    /// Moves the quarantine of `table` to start at `next`, or deletes it.
    fn move_quarantine(&self, consumer: &str, table: &TableId, next: Option<u64>) -> Statement<Self::Param>;

    // ------------------------------------------------------------ replica tables

    /// Where a source table goes (configured renames, the database or schema
    /// mapping, names the engine can hold).
    fn target_table(&self, source: &TableId) -> TableId;
    /// The replica column of a source column.
    fn target_column(&self, source: &TableId, column: &str) -> String;
    /// True for the engine's own bookkeeping tables.
    fn is_own_table(&self, target: &TableId) -> bool;
    /// The table as it exists on the replica; `None` when it does not.
    fn describe(
        &self,
        conn: &mut Self::Conn,
        target: &TableId,
    ) -> impl Future<Output = Result<Option<Self::Described>, Self::Error>> + Send;
    /// Idempotent DDL creating `target` (and its database or schema, and an
    /// index on every foreign key's columns) from `schema` (replica names).
    /// `Err((column, message))` names the column that cannot be created
    /// (empty when none is to blame).
    fn create_table(&self, target: &TableId, schema: &TableSchema) -> Result<Vec<String>, (String, String)>;
    /// The engine's state for writing `target` (it exists as `described`);
    /// an error when the table cannot receive `schema`'s rows.
    fn table(
        &self,
        target: &TableId,
        schema: &Arc<TableSchema>,
        described: &Self::Described,
    ) -> Result<Self::Table, String>;

    // ------------------------------------------------------------ statements

    /// The most rows one statement of `kind` may carry for `table` (a
    /// parameter-count limit); the applier also applies
    /// [`Limits::max_rows_per_statement`].
    fn max_rows(&self, table: &TargetTable<Self::Table>, kind: RowsKind) -> usize;
    /// One statement writing `rows` (at most [`Engine::max_rows`]): whole
    /// rows for `Upsert`/`Insert`, their primary keys for `Delete`.
    fn rows(
        &self,
        table: &mut TargetTable<Self::Table>,
        kind: RowsKind,
        rows: &[&Row],
    ) -> Result<Statement<Self::Param>, ValueError>;
    /// Changes one row equal to `before` in every column into `after`
    /// (tables without a primary key; must affect exactly one row).
    fn update_one(
        &self,
        table: &mut TargetTable<Self::Table>,
        before: &Row,
        after: &Row,
    ) -> Result<Statement<Self::Param>, ValueError>;
    /// Deletes one row equal to `before` in every column.
    fn delete_one(
        &self,
        table: &mut TargetTable<Self::Table>,
        before: &Row,
    ) -> Result<Statement<Self::Param>, ValueError>;
    /// Deletes every row, inside the current transaction.
    fn truncate(&self, target: &TableId) -> Statement<Self::Param>;

    // ------------------------------------------------------------ snapshots

    /// Rows `(table_schema, table_name)`: the source tables whose snapshot
    /// `consumer` is waiting for (begun, first chunk not applied yet).
    fn read_pending(&self, consumer: &str) -> Statement<Self::Param>;
    /// Notes that a snapshot run `run` of source table `table` has begun
    /// (inserts or replaces).
    fn store_pending(&self, consumer: &str, table: &TableId, run: u64) -> Statement<Self::Param>;
    /// Forgets the pending snapshot of source table `table`, if any.
    fn drop_pending(&self, consumer: &str, table: &TableId) -> Statement<Self::Param>;
    /// Forgets every pending snapshot and quarantine of the source tables
    /// of database (schema) `schema`: it was dropped.
    fn drop_schema_state(&self, consumer: &str, schema: &str) -> Vec<Statement<Self::Param>>;
    /// Forgets every quarantine, pending snapshot and schema-change note of
    /// `consumer` ([`crate::sink::Sink::reset`]).
    fn clear_state(&self, consumer: &str) -> Vec<Statement<Self::Param>>;
    /// Idempotent DDL for a snapshot's first chunk: drop `target` and create
    /// it again for `schema` (replica names; `source` is the same definition
    /// with the source's names). `create` is the source's own `CREATE TABLE`
    /// at the chunk's position, which an engine of the same kind may replay
    /// (indexes, defaults). `Err((column, message))` as [`Engine::create_table`].
    fn recreate_table(
        &self,
        target: &TableId,
        schema: &TableSchema,
        source: &TableSchema,
        create: Option<&str>,
    ) -> Result<Vec<String>, (String, String)>;
    /// A bulk path for snapshot rows (`COPY`…) inside the open transaction:
    /// `Ok(false)` when the engine has none, and the applier then writes the
    /// rows as upserts (a table with a primary key) or inserts. Rows of a
    /// table with a key may already be there (changes applied since the
    /// table's first chunk): they must end equal to these.
    fn load(
        &self,
        conn: &mut Self::Conn,
        table: &mut TargetTable<Self::Table>,
        rows: &[&Row],
    ) -> impl Future<Output = Result<bool, LoadError<Self::Error>>> + Send {
        let _ = (conn, table, rows);
        std::future::ready(Ok(false))
    }

    // ------------------------------------------------------------ schema changes

    /// DDL commits by itself on this engine (MySQL): the applier runs a
    /// schema change between two transactions, with a note
    /// ([`Engine::store_ddl_note`]) saying it may have run. Otherwise the
    /// change runs inside the data transaction with the offset.
    const AUTOCOMMIT_DDL: bool = false;
    /// One row, one column: the `seq` of the schema change `consumer` noted
    /// as possibly run (no row: none). Used only with [`Engine::AUTOCOMMIT_DDL`].
    fn read_ddl_note(&self, consumer: &str) -> Option<Statement<Self::Param>> {
        let _ = consumer;
        None
    }
    /// Notes (inserts or replaces) that the schema change at `seq` may run.
    fn store_ddl_note(&self, consumer: &str, seq: u64, statement: &str) -> Option<Statement<Self::Param>> {
        let _ = (consumer, seq, statement);
        None
    }
    /// Removes `consumer`'s note.
    fn clear_ddl_note(&self, consumer: &str) -> Option<Statement<Self::Param>> {
        let _ = consumer;
        None
    }
    /// Makes one captured schema change on the replica: `source` is the
    /// table's definition after the change with source names, `renamed` the
    /// same with replica names ([`Engine::target_table`],
    /// [`Engine::target_column`]); `commit_ts_us` the source commit time.
    /// `retried`: the change may already have taken effect (an
    /// [`Engine::AUTOCOMMIT_DDL`] engine crashed between running and
    /// recording it), so "already exists / does not exist" answers mean done.
    /// The default refuses every change.
    fn schema_change(
        &self,
        conn: &mut Self::Conn,
        source: &TableSchema,
        renamed: &TableSchema,
        change: &SchemaChange,
        commit_ts_us: i64,
        retried: bool,
    ) -> impl Future<Output = Result<(), DdlError<Self::Error>>> + Send {
        let _ = (conn, source, renamed, commit_ts_us, retried);
        let message = format!(
            "{} replicas do not apply schema changes yet ({:?})",
            Self::NAME,
            change.statement
        );
        std::future::ready(Err(DdlError::Refused(message)))
    }
    /// Table definitions changed on `conn`: forget what is cached on it
    /// (prepared statements whose result shape may have changed).
    fn schema_changed(conn: &mut Self::Conn) {
        let _ = conn;
    }

    // ------------------------------------------------------------ cascades

    /// One value of `column` as a parameter (cascades bind event values).
    fn param(&self, column: &ColumnDef, value: &Value) -> Result<Self::Param, String>;
    fn null() -> Self::Param;
    fn is_null(p: &Self::Param) -> bool;
    /// The statements performing `op` on `target` (split as the engine's
    /// limits need); `Err` when the replica table cannot take it (a column
    /// the cascade needs is missing).
    fn cascade(
        &self,
        target: &TableId,
        described: &Self::Described,
        op: CascadeOp<'_, Self::Param>,
    ) -> Result<Vec<Statement<Self::Param>>, String>;
}
