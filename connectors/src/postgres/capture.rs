//! PostgreSQL logical-replication capture: a [`Source`] over a `pgoutput` slot.
//!
//! # Connections
//! A *replication* connection ([`super::replication`], `replication=database`)
//! creates the slot and streams it; a plain tokio-postgres *catalog*
//! connection runs preflight, creates the publication and describes each
//! relation once per `Relation` message (never per row).
//!
//! # Publication and slot
//! The publication (default `dbmux`) is created `FOR ALL TABLES` when missing
//! (needs superuser; or create it yourself), so tables created while dbmux runs
//! are published too; `include`/`exclude` choose what is captured. The slot
//! (default `dbmux`) is created on the very first start only — when the log is
//! empty — with `EXPORT_SNAPSHOT`; its consistent point is the start position
//! the runtime stores. Afterwards a missing slot is a definite error: creating
//! a new one would silently skip everything that committed in between.
//!
//! # Initial snapshot
//! The snapshot exported at slot creation shows the database exactly as of the
//! consistent point, and it stays usable while the creating connection is idle:
//! that connection is kept from `current_position` until `start`, and
//! [`PostgresSource::snapshot_export`] publishes it meanwhile. The initial copy
//! ([`super::snapshot`]) reads every table with it (`SET TRANSACTION SNAPSHOT`)
//! before the runtime calls `start` (a single-view snapshot source: capture
//! does not stream until the copy is in the log). A copy cut short cannot be
//! continued (the snapshot died with the process): the runtime then calls
//! [`Source::discard_start`], which drops the slot, and `current_position`
//! creates it anew with a new snapshot. Later snapshots read a temporary
//! slot's exported snapshot per chunk ([`super::snapshot`]); to place each
//! chunk at its position, [`Source::read_position`] says how far the stream
//! was read (transactions handed out or dropped, walsender keepalives), and
//! [`Source::want_read_past`] makes capture ask for a keepalive while a
//! chunk waits.
//!
//! # Transactions and positions
//! pgoutput (protocol 1) sends whole transactions at commit, in commit order:
//! `Begin`, changes, `Commit`. A transaction's [`Position`] is the end LSN of
//! its commit record; `START_REPLICATION … LOGICAL <lsn>` skips every
//! transaction whose commit record starts before `<lsn>`, so resuming at the
//! last transaction handed to the log neither skips nor repeats. Transactions
//! with no change of a captured table are dropped.
//!
//! # Confirmed flush LSN: advance only after durable
//! The slot's `confirmed_flush_lsn` is what the server may forget. It is
//! reported (standby status update) from the runtime's view of what the log
//! holds durably ([`Source::watch_durable`]) and never beyond it, with one
//! safe exception: the end of a transaction that was dropped (nothing
//! captured) once everything handed over before it is durable.
//!
//! # Keepalives and liveness
//! A keepalive that asks for a reply is answered at once. Every
//! `status_interval_secs` a status update asking for a reply is sent; when
//! nothing arrives for three intervals the connection is presumed dead
//! (transient: the runtime reconnects from the last handed position).
//!
//! # TOAST
//! An UPDATE that leaves a TOASTed value unchanged sends no value for it. With
//! `REPLICA IDENTITY FULL` the old row has it and capture fills it in; without,
//! capture stops with a definite error naming the table (a replica must never
//! get a wrong value). Preflight warns about such tables.

use super::pgoutput::{self, Message, Relation, TupleValue};
use super::replication::{
    format_lsn, parse_lsn, CopyMessage, ReplicationConn, ReplicationError, PG_EPOCH_OFFSET_US,
};
use super::source_types::{self, Decoder, TypeFacts};
use pipeline::event::Row;
use pipeline::filter::{TableFilter, TablePattern};
use pipeline::retry::{Classify, ErrorClass};
use pipeline::schema::{ColumnDef, ColumnType, TableId, TableSchema};
use pipeline::source::{CapturedTransaction, DurablePosition, Source};
use pipeline::{Op, Position, Value};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// Default publication name.
pub const DEFAULT_PUBLICATION: &str = "dbmux";
/// Default replication slot name.
pub const DEFAULT_SLOT: &str = "dbmux";
/// Default seconds between standby status updates (each asks for a reply).
pub const DEFAULT_STATUS_INTERVAL_SECS: u64 = 10;
/// The connection is presumed dead after this many silent status intervals.
pub const STATUS_MISSES: u32 = 3;
/// Schemas never captured unless an include pattern names them literally.
pub const SYSTEM_SCHEMAS: &[&str] = &["pg_catalog", "information_schema", "pg_toast"];
/// While a snapshot chunk waits for the stream to reach its position, a
/// keepalive is asked for this often.
pub const PROGRESS_REQUEST_EVERY: Duration = Duration::from_millis(100);
/// Connect timeout of both connections.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Session settings of the replication connection: the text forms
/// [`super::source_types`] parses.
pub const STREAM_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, YMD"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("application_name", "dbmux"),
];

fn default_publication() -> String {
    DEFAULT_PUBLICATION.into()
}
fn default_slot() -> String {
    DEFAULT_SLOT.into()
}
fn default_status_interval() -> u64 {
    DEFAULT_STATUS_INTERVAL_SECS
}
fn default_true() -> bool {
    true
}

/// `[source.postgres]`.
///
/// ```toml
/// [source.postgres]
/// url = "postgres://dbmux:secret@db1:5432/shop"
/// slot = "dbmux"                 # logical replication slot (pgoutput)
/// publication = "dbmux"          # created FOR ALL TABLES when missing
/// include = ["public"]           # `schema` or `schema.table`; empty = all
/// exclude = ["public.sessions"]
/// status_interval_secs = 10
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// `postgres://user:password@host:port/database` of the source database.
    pub url: String,
    #[serde(default = "default_slot")]
    pub slot: String,
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Create the publication (`FOR ALL TABLES`) when it does not exist.
    #[serde(default = "default_true")]
    pub create_publication: bool,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_status_interval")]
    pub status_interval_secs: u64,
}

impl PostgresSourceConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            slot: default_slot(),
            publication: default_publication(),
            create_publication: true,
            include: Vec::new(),
            exclude: Vec::new(),
            status_interval_secs: DEFAULT_STATUS_INTERVAL_SECS,
        }
    }

    /// All problems, with field paths under `prefix.`.
    pub fn validate_at(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        match url::Url::parse(&self.url) {
            Err(e) => out.push(format!("{prefix}.url: not a URL ({e})")),
            Ok(u) if !matches!(u.scheme(), "postgres" | "postgresql") => out.push(format!(
                "{prefix}.url: scheme must be postgres:// (found {}://)",
                u.scheme()
            )),
            Ok(u) if u.path().trim_start_matches('/').is_empty() => {
                out.push(format!("{prefix}.url: name the source database in the path"))
            }
            Ok(_) => match tokio_postgres::Config::from_str(&self.url) {
                Err(e) => out.push(format!("{prefix}.url: {e}")),
                Ok(c) if c.get_ssl_mode() == tokio_postgres::config::SslMode::Require => out.push(format!(
                    "{prefix}.url: sslmode=require is not supported for capture yet (no TLS)"
                )),
                Ok(_) => {}
            },
        }
        // Slot names: lower-case letters, digits and underscores (the server's rule).
        if self.slot.is_empty()
            || self.slot.len() > 63
            || !self
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            out.push(format!(
                "{prefix}.slot: {:?} must be 1-63 characters of [a-z0-9_]",
                self.slot
            ));
        }
        if self.publication.is_empty() || self.publication.len() > 63 || self.publication.contains('\0') {
            out.push(format!("{prefix}.publication: must be 1-63 bytes"));
        }
        if !(1..=600).contains(&self.status_interval_secs) {
            out.push(format!(
                "{prefix}.status_interval_secs: must be between 1 and 600 (found {})",
                self.status_interval_secs
            ));
        }
        for (field, list) in [("include", &self.include), ("exclude", &self.exclude)] {
            for (i, p) in list.iter().enumerate() {
                if let Err(e) = TablePattern::parse(p) {
                    out.push(format!("{prefix}.{field}[{i}]: {e}"));
                }
            }
        }
        out
    }

    pub fn filter(&self) -> Result<TableFilter, PostgresCaptureError> {
        TableFilter::new(&self.include, &self.exclude)
            .map(|f| f.with_system_schemas(SYSTEM_SCHEMAS))
            .map_err(|errs| PostgresCaptureError::Config(errs.iter().map(ToString::to_string).collect()))
    }

    pub fn redacted_url(&self) -> String {
        pipeline::secret::redact_url(&self.url)
    }
}

impl fmt::Debug for PostgresSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSourceConfig")
            .field("url", &self.redacted_url())
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("create_publication", &self.create_publication)
            .field("include", &self.include)
            .field("exclude", &self.exclude)
            .field("status_interval_secs", &self.status_interval_secs)
            .finish()
    }
}

/// Everything that can go wrong in PostgreSQL capture.
#[derive(Debug, thiserror::Error)]
pub enum PostgresCaptureError {
    #[error("invalid PostgreSQL source configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("{context}: {source}")]
    Replication {
        context: String,
        #[source]
        source: ReplicationError,
    },
    #[error("{context}: {message}")]
    Catalog {
        context: String,
        message: String,
        class: ErrorClass,
    },
    #[error("PostgreSQL preflight failed:\n  - {}", .0.join("\n  - "))]
    Preflight(Vec<String>),
    #[error(
        "replication slot {slot:?} does not exist (dropped?). Changes after {position} may be gone from the \
         server; dbmux does not create a new slot over a non-empty log because that would skip whatever \
         committed in between. Re-create the replicas from a fresh start (empty data_dir) or restore the slot"
    )]
    SlotMissing { slot: String, position: String },
    #[error(
        "publication {publication:?} does not exist in the source database (dropped?): create it \
         (CREATE PUBLICATION \"{publication}\" FOR ALL TABLES) or set create_publication = true; {detail}"
    )]
    PublicationMissing { publication: String, detail: String },
    #[error("{table}.{column}: unsupported column type {ty} ({reason}); exclude the table or change the column type")]
    UnsupportedType {
        table: String,
        column: String,
        ty: String,
        reason: String,
    },
    #[error(
        "{table}.{column}: an UPDATE at {position} left this TOASTed value unchanged and the table does not \
         send its old row, so its value is unknown; run ALTER TABLE {table} REPLICA IDENTITY FULL (capture \
         stopped rather than write a wrong value to the replicas)"
    )]
    ToastUnchanged {
        table: String,
        column: String,
        position: String,
    },
    #[error("row of {table} at {position}, column {column}: {message}")]
    Value {
        table: String,
        column: String,
        position: String,
        message: String,
    },
    #[error("WAL message at {position}: {message}")]
    Stream { position: String, message: String },
    #[error("no message from the server for {0:?} although replies were requested: the connection is presumed dead")]
    HeartbeatTimeout(Duration),
    #[error("the server ended the replication stream")]
    StreamEnded,
    #[error("cannot resume PostgreSQL capture from {0}: not a PostgreSQL position (the log belongs to another source)")]
    WrongPosition(String),
    #[error("capture is not started (call start first)")]
    NotStarted,
    #[error(
        "the replication slot's exported snapshot is no longer available (capture started streaming, or the \
         connection that created the slot was lost): the initial snapshot is taken again on the next start"
    )]
    SnapshotGone,
    #[error("{0} does not exist (any more)")]
    TableGone(String),
}

impl Classify for PostgresCaptureError {
    fn class(&self) -> ErrorClass {
        use PostgresCaptureError::*;
        match self {
            Replication { source, .. } => replication_class(source),
            Catalog { class, .. } => *class,
            HeartbeatTimeout(_) | StreamEnded => ErrorClass::Transient,
            Config(_)
            | Preflight(_)
            | SlotMissing { .. }
            | PublicationMissing { .. }
            | UnsupportedType { .. }
            | ToastUnchanged { .. }
            | Value { .. }
            | Stream { .. }
            | WrongPosition(_)
            | NotStarted
            | SnapshotGone
            | TableGone(_) => ErrorClass::Definite,
        }
    }
}

/// Lost connections, shutdowns, a slot still held by a dying walsender and
/// resource shortages are transient; what the server says about names,
/// permissions and settings is definite.
fn replication_class(e: &ReplicationError) -> ErrorClass {
    match e {
        ReplicationError::Io(_) | ReplicationError::Closed => ErrorClass::Transient,
        ReplicationError::Server { code, .. } => {
            if code.starts_with("08")
                || code.starts_with("57")
                || matches!(code.as_str(), "53300" | "55006" | "40001" | "40P01")
            {
                ErrorClass::Transient
            } else {
                ErrorClass::Definite
            }
        }
        ReplicationError::Protocol(_) | ReplicationError::Auth(_) => ErrorClass::Definite,
    }
}

/// A plain (non-replication) connection, within [`CONNECT_TIMEOUT`]; its
/// connection task ends with a debug line naming `role`.
pub(super) async fn connect_plain(
    pg: &tokio_postgres::Config,
    what: String,
    role: &'static str,
) -> Result<Client, PostgresCaptureError> {
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(NoTls))
        .await
        .map_err(|_| PostgresCaptureError::Catalog {
            context: what.clone(),
            message: "timed out".into(),
            class: ErrorClass::Transient,
        })?
        .map_err(catalog(what))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "{role} connection closed");
        }
    });
    Ok(client)
}

pub(super) fn catalog(
    context: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> PostgresCaptureError {
    let context = context.into();
    move |e| PostgresCaptureError::Catalog {
        context,
        class: super::apply::classify_driver(&e),
        message: match e.as_db_error() {
            Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
            None => e.to_string(),
        },
    }
}

/// `"name"` for SQL and replication commands.
pub(super) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` (standard_conforming_strings).
pub(super) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A relation as capture uses it: the table definition plus how to decode each column.
#[derive(Debug)]
pub(crate) struct RelPlan {
    pub(crate) schema: Arc<TableSchema>,
    pub(crate) decoders: Vec<Decoder>,
}

/// The snapshot exported when this process created the slot, and the
/// slot's consistent point it shows the database at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSnapshot {
    /// For `SET TRANSACTION SNAPSHOT '<name>'`.
    pub name: String,
    /// The start position (the slot's consistent point).
    pub lsn: u64,
}

/// What [`PostgresSource`] says about its exported snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// No slot set up by this source yet.
    Pending,
    /// Usable (from slot creation until `start`).
    Usable(ExportedSnapshot),
    /// Not (or no longer) available: streaming started, or the slot already
    /// existed, so nothing was exported.
    Unavailable,
}

/// Where [`PostgresSource`] publishes its exported snapshot.
pub type SnapshotExport = tokio::sync::watch::Receiver<Export>;

enum Rel {
    /// Not captured (filter) — its changes are dropped.
    Skipped,
    Captured(Arc<RelPlan>),
}

struct OpenTxn {
    xid: u32,
    commit_ts: i64,
    /// Already in the log (commit before the resume point): dropped at commit.
    replayed: bool,
    changes: Vec<(Arc<TableSchema>, Op)>,
}

/// The catalog's facts about one column.
struct CatalogColumn {
    not_null: bool,
    base_oid: u32,
    typmod: i32,
    facts: TypeFacts,
}

/// Capture from a PostgreSQL database through a logical replication slot.
pub struct PostgresSource {
    config: PostgresSourceConfig,
    filter: TableFilter,
    pg: tokio_postgres::Config,
    meta: Option<Arc<Client>>,
    /// The catalog read of the `Relation` message being handled (its start
    /// LSN and oid), on a task of its own: a dropped `next_transaction` does
    /// not cut it short, and the next call awaits it. (Started again on every
    /// call, a read slower than the 20 ms between the runtime's cancellations
    /// while a snapshot chunk waits would never finish.)
    describing: Option<Describing>,
    stream: Option<ReplicationConn>,
    /// The connection that created the slot, kept idle so its exported
    /// snapshot stays usable until `start`.
    creator: Option<ReplicationConn>,
    exported_snapshot: Option<String>,
    /// Publishes the exported snapshot while `creator` keeps it usable.
    export: tokio::sync::watch::Sender<Export>,
    relations: HashMap<u32, Rel>,
    /// Plans by table, so an equivalent `Relation` message reuses the same `Arc`.
    plans: HashMap<TableId, Arc<RelPlan>>,
    txn: Option<OpenTxn>,
    /// The start point of the current stream.
    resume_lsn: u64,
    /// End LSN of the last transaction handed out.
    handed_lsn: u64,
    /// (handed_lsn then, end LSN) of the last transaction dropped for having
    /// nothing to capture: confirmable once `handed_lsn then` is durable.
    skipped: Option<(u64, u64)>,
    /// The last flush LSN reported to the server.
    confirmed_lsn: u64,
    /// How far the stream has been read completely: every transaction whose
    /// commit record ends at or before it was handed out or dropped (see
    /// [`Source::read_position`] below).
    read_lsn: u64,
    /// The furthest position a snapshot chunk waits for the stream to reach.
    wanted_lsn: u64,
    /// When a reply was last asked for because a chunk waits.
    last_progress_request: Instant,
    /// A `Relation` message read from the stream whose handling has not
    /// completed: handling it awaits a catalog query, and `next_transaction`
    /// may be dropped there (capture looks at its snapshot holds); the
    /// message is handled again on the next call instead of being lost.
    unhandled: Option<(u64, Message)>,
    durable: Option<DurablePosition>,
    last_status: Instant,
    last_received: Instant,
    /// Where the current message starts, for error messages.
    at_lsn: u64,
}

/// A `Relation` message's catalog read in flight: (its start LSN, its oid)
/// and the task.
type Describing = (
    (u64, u32),
    tokio::task::JoinHandle<Result<RelPlan, PostgresCaptureError>>,
);

impl fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSource")
            .field("config", &self.config)
            .field("started", &self.stream.is_some())
            .field("handed_lsn", &format_lsn(self.handed_lsn))
            .finish_non_exhaustive()
    }
}

impl PostgresSource {
    /// Checks the configuration (all problems at once); connects only on use.
    pub fn new(config: PostgresSourceConfig) -> Result<Self, PostgresCaptureError> {
        let problems = config.validate_at("source.postgres");
        if !problems.is_empty() {
            return Err(PostgresCaptureError::Config(problems));
        }
        let filter = config.filter()?;
        let pg = tokio_postgres::Config::from_str(&config.url)
            .map_err(|e| PostgresCaptureError::Config(vec![format!("source.postgres.url: {e}")]))?;
        let now = Instant::now();
        Ok(Self {
            config,
            filter,
            pg,
            meta: None,
            describing: None,
            stream: None,
            creator: None,
            exported_snapshot: None,
            export: tokio::sync::watch::channel(Export::Pending).0,
            relations: HashMap::new(),
            plans: HashMap::new(),
            txn: None,
            resume_lsn: 0,
            handed_lsn: 0,
            skipped: None,
            confirmed_lsn: 0,
            read_lsn: 0,
            wanted_lsn: 0,
            last_progress_request: now,
            unhandled: None,
            durable: None,
            last_status: now,
            last_received: now,
            at_lsn: 0,
        })
    }

    pub fn config(&self) -> &PostgresSourceConfig {
        &self.config
    }

    /// The snapshot exported when this process created the slot, while it is
    /// still usable (until `start`): `SET TRANSACTION SNAPSHOT '<name>'` in a
    /// `REPEATABLE READ` transaction sees the database as of the start position.
    pub fn exported_snapshot(&self) -> Option<&str> {
        self.creator.as_ref().and(self.exported_snapshot.as_deref())
    }

    /// The exported snapshot as it comes and goes (for
    /// [`super::snapshot::PostgresSnapshots`], which copies tables with it).
    pub fn snapshot_export(&self) -> SnapshotExport {
        self.export.subscribe()
    }

    /// The catalog connection, (re)connected on demand.
    async fn meta(&mut self) -> Result<&Client, PostgresCaptureError> {
        if self.meta.as_ref().is_some_and(|c| c.is_closed()) {
            self.meta = None;
        }
        if self.meta.is_none() {
            let what = format!("connecting to {}", self.config.redacted_url());
            self.meta = Some(Arc::new(connect_plain(&self.pg, what, "catalog").await?));
        }
        Ok(self.meta.as_deref().expect("just connected"))
    }

    async fn replication_conn(&self, what: &str) -> Result<ReplicationConn, PostgresCaptureError> {
        ReplicationConn::connect(&self.pg, STREAM_SETTINGS, CONNECT_TIMEOUT)
            .await
            .map_err(|source| PostgresCaptureError::Replication {
                context: format!("{what} ({})", self.config.redacted_url()),
                source,
            })
    }

    /// The slot's `confirmed_flush_lsn`, or `None` when there is no such slot.
    /// Errors when the slot exists but is not a pgoutput slot of this database.
    pub async fn slot_confirmed_lsn(&mut self) -> Result<Option<u64>, PostgresCaptureError> {
        let slot = self.config.slot.clone();
        let row = self
            .meta()
            .await?
            .query_opt(
                "SELECT plugin::text, database::text, confirmed_flush_lsn::text, current_database()::text \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(catalog("reading pg_replication_slots"))?;
        let Some(row) = row else { return Ok(None) };
        let (plugin, db, lsn, here): (Option<String>, Option<String>, Option<String>, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(here.as_str()) {
            return Err(PostgresCaptureError::Preflight(vec![format!(
                "replication slot {slot:?} exists but is not a pgoutput slot of database {here:?} \
                 (plugin {plugin:?}, database {db:?}): choose another slot name"
            )]));
        }
        Ok(lsn.as_deref().and_then(parse_lsn))
    }

    async fn check_and_create_publication(
        &mut self,
        problems: &mut Vec<String>,
        superuser: bool,
    ) -> Result<(), PostgresCaptureError> {
        let publication = self.config.publication.clone();
        let row = self
            .meta()
            .await?
            .query_opt(
                "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(catalog("reading pg_publication"))?;
        match row {
            Some(r) => {
                let ops: Vec<&str> = [(1, "insert"), (2, "update"), (3, "delete"), (4, "truncate")]
                    .into_iter()
                    .filter(|(i, _)| !r.get::<_, bool>(*i))
                    .map(|(_, n)| n)
                    .collect();
                if !ops.is_empty() {
                    problems.push(format!(
                        "publication {publication:?} does not publish {}: expected publish = 'insert, update, delete, truncate' \
                         (ALTER PUBLICATION \"{publication}\" SET (publish = 'insert, update, delete, truncate'))",
                        ops.join(", ")
                    ));
                }
                if !r.get::<_, bool>(0) {
                    tracing::warn!(
                        publication = %publication,
                        "the publication is not FOR ALL TABLES: tables outside it are not captured, \
                         whatever include says"
                    );
                }
            }
            None if !self.config.create_publication => {
                return Err(PostgresCaptureError::PublicationMissing {
                    publication,
                    detail: "create_publication is false".into(),
                })
            }
            None if !superuser => problems.push(format!(
                "publication {publication:?} does not exist and creating it FOR ALL TABLES needs a superuser: \
                 expected a superuser or an existing publication, found neither (as a superuser: \
                 CREATE PUBLICATION \"{publication}\" FOR ALL TABLES)"
            )),
            None => {
                let sql = format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(&publication));
                self.meta()
                    .await?
                    .batch_execute(&sql)
                    .await
                    .map_err(catalog(format!("creating publication {publication:?}")))?;
                tracing::info!(publication = %publication, "publication created FOR ALL TABLES");
            }
        }
        Ok(())
    }

    /// Tables of the publication that this capture reads, with their problems.
    async fn check_tables(&mut self, problems: &mut Vec<String>) -> Result<(), PostgresCaptureError> {
        let publication = self.config.publication.clone();
        let rows = self
            .meta()
            .await?
            .query(
                "SELECT n.nspname::text, c.relname::text, c.relreplident::text, c.oid, \
                   EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                   EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                           AND NOT a.attisdropped AND a.attlen = -1 AND a.attstorage IN ('x', 'e')) \
                 FROM pg_publication_tables pt \
                 JOIN pg_namespace n ON n.nspname = pt.schemaname \
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
                 WHERE pt.pubname = $1 ORDER BY 1, 2",
                &[&publication],
            )
            .await
            .map_err(catalog("reading pg_publication_tables"))?;
        let mut toast_risk = Vec::new();
        for r in rows {
            let (schema, name, ident, oid, has_pk, toastable): (String, String, String, u32, bool, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
            if !self.filter.matches(&schema, &name) {
                continue;
            }
            let t = format!("{schema}.{name}");
            match ident.as_str() {
                "n" => problems.push(format!(
                    "{t}: REPLICA IDENTITY is NOTHING, so its updates and deletes cannot be captured: expected \
                     DEFAULT with a primary key, USING INDEX or FULL (ALTER TABLE {t} REPLICA IDENTITY FULL)"
                )),
                "d" if !has_pk => problems.push(format!(
                    "{t}: missing REPLICA IDENTITY (no primary key): expected a primary key or REPLICA IDENTITY \
                     FULL / USING INDEX (ALTER TABLE {t} REPLICA IDENTITY FULL)"
                )),
                _ => {}
            }
            if toastable && ident != "f" {
                toast_risk.push(t.clone());
            }
            match self.describe(oid, &schema, &name, None).await {
                Ok(_) => {}
                Err(e @ PostgresCaptureError::UnsupportedType { .. }) => problems.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        if !toast_risk.is_empty() {
            tracing::warn!(
                tables = %toast_risk.join(", "),
                "these captured tables have TOASTable columns and no REPLICA IDENTITY FULL: an UPDATE that leaves \
                 a large value unchanged will stop capture (its value is not sent); set REPLICA IDENTITY FULL"
            );
        }
        Ok(())
    }

    /// [`Self::describe`] for a `Relation` message of the stream, cancel-safe:
    /// see [`Self::describing`].
    async fn describe_streamed(&mut self, rel: &Relation) -> Result<RelPlan, PostgresCaptureError> {
        let key = (self.at_lsn, rel.oid);
        if self.describing.as_ref().is_none_or(|(k, _)| *k != key) {
            if let Some((_, task)) = self.describing.take() {
                task.abort();
            }
            self.meta().await?;
            let client = self.meta.clone().expect("connected just above");
            let rel = rel.clone();
            let task = tokio::spawn(async move {
                describe_relation(&client, rel.oid, &rel.namespace, &rel.name, Some(&rel)).await
            });
            self.describing = Some((key, task));
        }
        let (_, task) = self.describing.as_mut().expect("set above");
        let r = task.await;
        self.describing = None;
        r.unwrap_or_else(|e| {
            Err(PostgresCaptureError::Stream {
                position: format!("LSN {}", format_lsn(key.0)),
                message: format!("the catalog read of relation {} ended abnormally: {e}", rel.oid),
            })
        })
    }

    /// Builds the table definition of relation `oid` from the catalog (and
    /// the `Relation` message, which is authoritative for columns and order).
    async fn describe(
        &mut self,
        oid: u32,
        schema: &str,
        name: &str,
        rel: Option<&Relation>,
    ) -> Result<RelPlan, PostgresCaptureError> {
        let client = self.meta().await?;
        describe_relation(client, oid, schema, name, rel).await
    }

    fn here(&self) -> String {
        format!("LSN {}", format_lsn(self.at_lsn))
    }

    fn value_error(&self, plan: &RelPlan, i: usize, message: String) -> PostgresCaptureError {
        PostgresCaptureError::Value {
            table: plan.schema.id.to_string(),
            column: plan.schema.columns.get(i).map_or("?".into(), |c| c.name.clone()),
            position: self.here(),
            message,
        }
    }

    /// Decodes a tuple into a row; `fill` supplies values for unchanged TOAST columns.
    fn row(
        &self,
        plan: &RelPlan,
        tuple: &[TupleValue],
        fill: Option<&Row>,
    ) -> Result<Row, PostgresCaptureError> {
        if tuple.len() != plan.decoders.len() {
            return Err(PostgresCaptureError::Stream {
                position: self.here(),
                message: format!(
                    "{} has {} columns but the change carries {}",
                    plan.schema.id,
                    plan.decoders.len(),
                    tuple.len()
                ),
            });
        }
        tuple
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                TupleValue::Null => Ok(Value::Null),
                TupleValue::Text(raw) => plan.decoders[i]
                    .decode(raw)
                    .map_err(|m| self.value_error(plan, i, m)),
                TupleValue::UnchangedToast => match fill {
                    Some(old) => Ok(old[i].clone()),
                    None => Err(PostgresCaptureError::ToastUnchanged {
                        table: plan.schema.id.to_string(),
                        column: plan.schema.columns[i].name.clone(),
                        position: self.here(),
                    }),
                },
            })
            .collect()
    }

    fn plan(&self, oid: u32) -> Result<Option<Arc<RelPlan>>, PostgresCaptureError> {
        match self.relations.get(&oid) {
            Some(Rel::Captured(p)) => Ok(Some(p.clone())),
            Some(Rel::Skipped) => Ok(None),
            None => Err(PostgresCaptureError::Stream {
                position: self.here(),
                message: format!("change of relation {oid} before its Relation message"),
            }),
        }
    }

    fn push(&mut self, schema: Arc<TableSchema>, op: Op) -> Result<(), PostgresCaptureError> {
        let txn = self.txn.as_mut().ok_or_else(|| PostgresCaptureError::Stream {
            position: format!("LSN {}", format_lsn(self.at_lsn)),
            message: "row change outside a transaction".into(),
        })?;
        if !txn.replayed {
            txn.changes.push((schema, op));
        }
        Ok(())
    }

    /// Handles one pgoutput message; returns a committed transaction.
    async fn handle(&mut self, msg: Message) -> Result<Option<CapturedTransaction>, PostgresCaptureError> {
        match msg {
            Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                if self.txn.is_some() {
                    return Err(PostgresCaptureError::Stream {
                        position: self.here(),
                        message: "BEGIN inside a transaction".into(),
                    });
                }
                self.txn = Some(OpenTxn {
                    xid,
                    commit_ts,
                    replayed: final_lsn < self.resume_lsn,
                    changes: Vec::new(),
                });
            }
            Message::Commit {
                end_lsn, commit_ts, ..
            } => {
                let txn = self.txn.take().ok_or_else(|| PostgresCaptureError::Stream {
                    position: self.here(),
                    message: "COMMIT without BEGIN".into(),
                })?;
                if txn.replayed || end_lsn <= self.resume_lsn {
                    return Ok(None);
                }
                self.read_lsn = self.read_lsn.max(end_lsn);
                if txn.changes.is_empty() {
                    self.skipped = Some((self.handed_lsn, end_lsn));
                    return Ok(None);
                }
                self.handed_lsn = end_lsn;
                return Ok(Some(CapturedTransaction {
                    id: format!("{}@{}", txn.xid, format_lsn(end_lsn)),
                    commit_ts_us: commit_ts.max(txn.commit_ts) + PG_EPOCH_OFFSET_US,
                    position: Position::Postgres(end_lsn),
                    changes: txn.changes,
                }));
            }
            Message::Relation(rel) => {
                let entry = if self.filter.matches(&rel.namespace, &rel.name) {
                    let plan = self.describe_streamed(&rel).await?;
                    let plan = match self.plans.get(&plan.schema.id) {
                        Some(old) if old.schema == plan.schema => old.clone(),
                        _ => {
                            let plan = Arc::new(plan);
                            self.plans.insert(plan.schema.id.clone(), plan.clone());
                            plan
                        }
                    };
                    Rel::Captured(plan)
                } else {
                    Rel::Skipped
                };
                self.relations.insert(rel.oid, entry);
            }
            Message::Insert { oid, new } => {
                if let Some(plan) = self.plan(oid)? {
                    let after = self.row(&plan, &new, None)?;
                    self.push(plan.schema.clone(), Op::Insert { after })?;
                }
            }
            Message::Update {
                oid,
                old,
                old_is_key,
                new,
            } => {
                if let Some(plan) = self.plan(oid)? {
                    let before = match &old {
                        Some(t) => Some(self.row(&plan, t, None)?),
                        None => None,
                    };
                    let full_old = before.as_ref().filter(|_| !old_is_key);
                    let after = self.row(&plan, &new, full_old)?;
                    // Without an old row (REPLICA IDENTITY DEFAULT, key
                    // unchanged) the before image carries the key only.
                    let before = before.unwrap_or_else(|| {
                        after
                            .iter()
                            .enumerate()
                            .map(|(i, v)| {
                                if plan.schema.primary_key.contains(&i) {
                                    v.clone()
                                } else {
                                    Value::Null
                                }
                            })
                            .collect()
                    });
                    self.push(plan.schema.clone(), Op::Update { before, after })?;
                }
            }
            Message::Delete { oid, old, .. } => {
                if let Some(plan) = self.plan(oid)? {
                    let before = self.row(&plan, &old, None)?;
                    self.push(plan.schema.clone(), Op::Delete { before })?;
                }
            }
            Message::Truncate { oids, .. } => {
                for oid in oids {
                    if let Some(plan) = self.plan(oid)? {
                        self.push(plan.schema.clone(), Op::Truncate)?;
                    }
                }
            }
            Message::Origin | Message::Type | Message::LogicalMessage => {}
        }
        Ok(None)
    }

    /// The flush LSN the server may be told: what the log holds durably, or
    /// the end of a dropped transaction once everything before it is durable.
    fn confirmable(&self) -> u64 {
        let durable = match self.durable.as_ref().map(|d| d.borrow().clone()) {
            Some(Some(Position::Postgres(lsn))) => lsn,
            _ => 0,
        };
        match self.skipped {
            Some((before, end)) if durable >= before && before > 0 => durable.max(end),
            _ => durable,
        }
    }

    async fn send_status(&mut self, reply: bool) -> Result<(), PostgresCaptureError> {
        let lsn = self.confirmable().max(self.confirmed_lsn);
        let stream = self.stream.as_mut().ok_or(PostgresCaptureError::NotStarted)?;
        if let Err(source) = stream.send_status(lsn, reply).await {
            self.stream = None;
            return Err(PostgresCaptureError::Replication {
                context: "sending a status update".into(),
                source,
            });
        }
        self.confirmed_lsn = lsn;
        self.last_status = Instant::now();
        Ok(())
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.config.status_interval_secs)
    }

    /// Closes the stream (if any); `start` opens a new one.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stream.take() {
            s.close().await;
        }
    }

    fn map_stream_error(&self, source: ReplicationError) -> PostgresCaptureError {
        if let ReplicationError::Server { code, message } = &source {
            if code == "42704" && message.contains("publication") {
                return PostgresCaptureError::PublicationMissing {
                    publication: self.config.publication.clone(),
                    detail: message.clone(),
                };
            }
            if code == "42704" && message.contains("replication slot") {
                return PostgresCaptureError::SlotMissing {
                    slot: self.config.slot.clone(),
                    position: format!("LSN {}", format_lsn(self.handed_lsn)),
                };
            }
        }
        PostgresCaptureError::Replication {
            context: "reading the replication stream".into(),
            source,
        }
    }
}

/// Builds the table definition of relation `oid` from the catalog (and
/// the `Relation` message, which is authoritative for columns and order).
/// Shared by streaming and the initial snapshot, so both describe a table
/// (and decode its values) the same way.
pub(crate) async fn describe_relation(
    client: &Client,
    oid: u32,
    schema: &str,
    name: &str,
    rel: Option<&Relation>,
) -> Result<RelPlan, PostgresCaptureError> {
    let table = format!("{schema}.{name}");
    let rows = client
        .query(
                "SELECT a.attname::text, a.attnotnull, format_type(a.atttypid, a.atttypmod), t.typtype::text, \
                   COALESCE(NULLIF(t.typbasetype, 0), a.atttypid), \
                   CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END, \
                   COALESCE(bt.typtype, t.typtype)::text, \
                   ARRAY(SELECT e.enumlabel::text FROM pg_enum e \
                         WHERE e.enumtypid = COALESCE(NULLIF(t.typbasetype, 0), a.atttypid) ORDER BY e.enumsortorder), \
                   COALESCE((SELECT k.n FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                             WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.attnum = a.attnum), 0)::int4, \
                   a.attgenerated::text \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type bt ON bt.oid = t.typbasetype \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(catalog(format!("reading the catalog for {table}")))?;
    let mut catalog: HashMap<String, CatalogColumn> = HashMap::new();
    let mut order = Vec::new();
    let mut pk: Vec<(i32, String)> = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let generated: String = r.get(9);
        if !generated.is_empty() {
            continue; // pgoutput does not send generated columns
        }
        let pos: i32 = r.get(8);
        if pos > 0 {
            pk.push((pos, name.clone()));
        }
        order.push(name.clone());
        catalog.insert(
            name,
            CatalogColumn {
                not_null: r.get(1),
                facts: TypeFacts {
                    typtype: r.get::<_, String>(6).chars().next().unwrap_or('b'),
                    labels: r.get(7),
                    spelled: r.get(2),
                },
                base_oid: r.get(4),
                typmod: r.get(5),
            },
        );
    }
    pk.sort();
    // Columns: the Relation message's when there is one, else the catalog's.
    // (name, part of the replica identity key, WAL type oid and modifier)
    type WalColumn = (String, bool, Option<(u32, i32)>);
    let columns: Vec<WalColumn> = match rel {
        Some(rel) => rel
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.key, Some((c.type_oid, c.type_modifier))))
            .collect(),
        None => order.iter().map(|n| (n.clone(), false, None)).collect(),
    };
    if rel.is_some() && columns.iter().any(|(n, _, _)| !catalog.contains_key(n)) {
        tracing::warn!(
            table = %table,
            "the catalog no longer matches the replicated relation (altered or dropped since): \
             describing it from the WAL alone (all columns nullable)"
        );
    }
    let mut defs = Vec::with_capacity(columns.len());
    let mut decoders = Vec::with_capacity(columns.len());
    for (col_name, _, wal_type) in &columns {
        let (oid, typmod, facts, nullable) = match (catalog.get(col_name), wal_type) {
            (Some(c), _) => (c.base_oid, c.typmod, c.facts.clone(), !c.not_null),
            (None, Some((oid, typmod))) => (
                *oid,
                *typmod,
                TypeFacts {
                    typtype: 'b',
                    labels: Vec::new(),
                    spelled: format!("type oid {oid}"),
                },
                true,
            ),
            (None, None) => unreachable!("catalog columns come from the catalog"),
        };
        let ty = source_types::column_type(oid, typmod, &facts).map_err(|reason| {
            PostgresCaptureError::UnsupportedType {
                table: table.clone(),
                column: col_name.clone(),
                ty: facts.spelled.clone(),
                reason,
            }
        })?;
        decoders.push(Decoder::for_type(&ty));
        let text = matches!(
            ty,
            ColumnType::Char { .. }
                | ColumnType::VarChar { .. }
                | ColumnType::Text { .. }
                | ColumnType::Enum { .. }
        );
        defs.push(ColumnDef {
            name: col_name.clone(),
            ty,
            nullable,
            charset: text.then(|| "utf8mb4".to_string()),
            // PostgreSQL's collations are deterministic: values that differ
            // are different keys, trailing spaces included. A binary,
            // no-pad collation makes a MariaDB replica compare the same way
            // (and gives "C" on a PostgreSQL replica).
            collation: text.then(|| "utf8mb4_nopad_bin".to_string()),
            source_type: facts.spelled,
        });
    }
    // The key appliers use: the replica identity's columns (default =
    // the primary key, or the USING INDEX columns); with REPLICA IDENTITY
    // FULL every column is flagged, so the primary key, if any, is used.
    let primary_key: Vec<usize> = match rel {
        Some(r) if r.replica_identity != b'f' && columns.iter().any(|c| c.1) => columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.1)
            .map(|(i, _)| i)
            .collect(),
        _ => pk
            .iter()
            .filter_map(|(_, n)| columns.iter().position(|c| &c.0 == n))
            .collect(),
    };
    Ok(RelPlan {
        // Unique keys and foreign keys are not carried from a PostgreSQL
        // source: its WAL logs the rows that cascades change, so the
        // appliers need no cascade metadata, and replica tables get no
        // secondary unique keys that could collide.
        schema: Arc::new(TableSchema::new(TableId::new(schema, name), defs, primary_key)),
        decoders,
    })
}

/// The server settings and role attributes preflight checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub wal_level: String,
    pub max_replication_slots: i32,
    pub max_wal_senders: i32,
    pub server_encoding: String,
    pub version_num: i32,
    pub superuser: bool,
    pub replication: bool,
    /// Replication slots that exist, and WAL senders running, at preflight.
    pub slots_used: i32,
    pub senders_used: i32,
    /// Whether this source's own slot already exists (else it takes one more).
    pub own_slot_exists: bool,
}

impl ServerSettings {
    /// What does not stop capture but will stop a snapshot later: every
    /// later snapshot chunk takes a temporary slot and a WAL sender of its
    /// own (docs/snapshot.md), on top of the source's slot and stream.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let own = i32::from(!self.own_slot_exists);
        let free_slots = self.max_replication_slots - self.slots_used - own;
        if free_slots < 1 {
            w.push(format!(
                "max_replication_slots: {} with {} in use{}: later snapshots need at least one more \
                 (one temporary slot per table copied at a time); raise max_replication_slots",
                self.max_replication_slots,
                self.slots_used,
                if own == 1 {
                    " and this source's slot still to create"
                } else {
                    ""
                }
            ));
        }
        // This source's own stream is not running yet at preflight.
        let free_senders = self.max_wal_senders - self.senders_used - 1;
        if free_senders < 1 {
            w.push(format!(
                "max_wal_senders: {} with {} running and this source's stream to come: later snapshots need \
                 at least one more (one per table copied at a time); raise max_wal_senders",
                self.max_wal_senders, self.senders_used
            ));
        }
        w
    }

    /// Each problem names the setting, the value needed and the value found.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.wal_level != "logical" {
            problems.push(format!(
                "wal_level: expected logical, found {} (set wal_level = logical and restart PostgreSQL)",
                self.wal_level
            ));
        }
        if self.max_replication_slots < 1 {
            problems.push(format!(
                "max_replication_slots: expected at least 1, found {}",
                self.max_replication_slots
            ));
        }
        if self.max_wal_senders < 1 {
            problems.push(format!(
                "max_wal_senders: expected at least 1, found {}",
                self.max_wal_senders
            ));
        }
        if self.server_encoding != "UTF8" {
            problems.push(format!(
                "server_encoding: expected UTF8, found {}",
                self.server_encoding
            ));
        }
        if self.version_num < 100_000 {
            problems.push(format!(
                "server_version_num: expected PostgreSQL 10 or later, found {}",
                self.version_num
            ));
        }
        if !self.superuser && !self.replication {
            problems.push(
                "permissions: expected a role with the REPLICATION attribute (ALTER ROLE … REPLICATION) or a \
                 superuser, found neither"
                    .into(),
            );
        }
        problems
    }
}

impl Source for PostgresSource {
    type Error = PostgresCaptureError;

    async fn preflight(&mut self) -> Result<(), PostgresCaptureError> {
        let slot = self.config.slot.clone();
        let row = self
            .meta()
            .await?
            .query_one(
                "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int4, \
                   current_setting('max_wal_senders')::int4, current_setting('server_encoding'), \
                   current_setting('server_version_num')::int4, r.rolsuper, r.rolreplication, \
                   (SELECT count(*)::int4 FROM pg_replication_slots), \
                   (SELECT count(*)::int4 FROM pg_stat_replication), \
                   EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1) \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[&slot],
            )
            .await
            .map_err(catalog("reading server settings"))?;
        let settings = ServerSettings {
            wal_level: row.get(0),
            max_replication_slots: row.get(1),
            max_wal_senders: row.get(2),
            server_encoding: row.get(3),
            version_num: row.get(4),
            superuser: row.get(5),
            replication: row.get(6),
            slots_used: row.get(7),
            senders_used: row.get(8),
            own_slot_exists: row.get(9),
        };
        for w in settings.warnings() {
            tracing::warn!(slot = %self.config.slot, "PostgreSQL source preflight: {w}");
        }
        let mut problems = settings.problems();
        if problems.is_empty() {
            self.check_and_create_publication(&mut problems, settings.superuser)
                .await?;
        }
        if problems.is_empty() {
            self.check_tables(&mut problems).await?;
            self.slot_confirmed_lsn().await.map(|_| ()).or_else(|e| match e {
                PostgresCaptureError::Preflight(p) => {
                    problems.extend(p);
                    Ok(())
                }
                e => Err(e),
            })?;
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PostgresCaptureError::Preflight(problems))
        }
    }

    /// Creates the slot (first start) and returns its consistent point, or
    /// the existing slot's confirmed flush LSN.
    async fn current_position(&mut self) -> Result<Position, PostgresCaptureError> {
        if let Some(lsn) = self.slot_confirmed_lsn().await? {
            self.export.send_replace(Export::Unavailable);
            return Ok(Position::Postgres(lsn));
        }
        let mut conn = self
            .replication_conn("connecting to create the replication slot")
            .await?;
        let rows = conn
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                quote_ident(&self.config.slot)
            ))
            .await
            .map_err(|source| PostgresCaptureError::Replication {
                context: format!("creating replication slot {:?}", self.config.slot),
                source,
            })?;
        let row = rows.first().ok_or_else(|| PostgresCaptureError::Stream {
            position: "slot creation".into(),
            message: "CREATE_REPLICATION_SLOT returned no row".into(),
        })?;
        let lsn = row
            .get(1)
            .and_then(|v| v.as_deref())
            .and_then(parse_lsn)
            .ok_or_else(|| PostgresCaptureError::Stream {
                position: "slot creation".into(),
                message: format!("bad consistent point in {row:?}"),
            })?;
        self.exported_snapshot = row.get(2).cloned().flatten();
        tracing::info!(
            slot = %self.config.slot,
            consistent_point = %format_lsn(lsn),
            snapshot = ?self.exported_snapshot,
            "replication slot created"
        );
        self.creator = Some(conn);
        self.export.send_replace(match self.exported_snapshot.clone() {
            Some(name) => Export::Usable(ExportedSnapshot { name, lsn }),
            None => Export::Unavailable,
        });
        Ok(Position::Postgres(lsn))
    }

    async fn start(&mut self, resume: Option<Position>) -> Result<(), PostgresCaptureError> {
        // The exported snapshot ends here: nothing may read it any more.
        self.export.send_replace(Export::Unavailable);
        if let Some(c) = self.creator.take() {
            c.close().await;
        }
        self.stop().await;
        let lsn = match resume {
            Some(Position::Postgres(lsn)) => lsn,
            Some(other) => return Err(PostgresCaptureError::WrongPosition(other.to_string())),
            None => match self.current_position().await? {
                Position::Postgres(lsn) => lsn,
                other => return Err(PostgresCaptureError::WrongPosition(other.to_string())),
            },
        };
        if self.slot_confirmed_lsn().await?.is_none() {
            return Err(PostgresCaptureError::SlotMissing {
                slot: self.config.slot.clone(),
                position: format!("LSN {}", format_lsn(lsn)),
            });
        }
        let publication = self.config.publication.clone();
        let exists = self
            .meta()
            .await?
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication])
            .await
            .map_err(catalog("reading pg_publication"))?
            .is_some();
        if !exists {
            return Err(PostgresCaptureError::PublicationMissing {
                publication,
                detail: "it was there at preflight".into(),
            });
        }
        let mut conn = self.replication_conn("connecting for replication").await?;
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
            quote_ident(&self.config.slot),
            format_lsn(lsn),
            quote_literal(&quote_ident(&publication)),
        );
        self.relations.clear();
        self.txn = None;
        self.unhandled = None;
        if let Some((_, task)) = self.describing.take() {
            task.abort();
        }
        self.resume_lsn = lsn;
        self.handed_lsn = lsn;
        self.skipped = None;
        self.at_lsn = lsn;
        // Everything that commits at or before the resume point was handed
        // out by an earlier stream; nothing beyond it is read yet.
        self.read_lsn = lsn;
        if let Err(source) = conn.start_replication(&command).await {
            return Err(self.map_stream_error(source));
        }
        self.stream = Some(conn);
        self.last_received = Instant::now();
        self.send_status(false).await?;
        Ok(())
    }

    async fn next_transaction(&mut self) -> Result<CapturedTransaction, PostgresCaptureError> {
        loop {
            if let Some((start, msg)) = self.unhandled.clone() {
                // `handle` changes nothing before its last await, so running
                // it again after a cancellation is running it once.
                self.at_lsn = start;
                let done = self.handle(msg).await;
                self.unhandled = None;
                if let Some(t) = done? {
                    return Ok(t);
                }
                continue;
            }
            if self.wanted_lsn > self.read_lsn
                && self.last_progress_request.elapsed() >= PROGRESS_REQUEST_EVERY
            {
                // A snapshot chunk waits for the stream to reach its
                // position: ask for a keepalive (the walsender answers a
                // reply request with one carrying how far it decoded).
                self.last_progress_request = Instant::now();
                self.send_status(true).await?;
            }
            let interval = self.interval();
            let due = self.last_status + interval;
            let durable = self.durable.as_mut();
            let durable_changed = async move {
                match durable {
                    Some(d) => {
                        let _ = d.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let stream = self.stream.as_mut().ok_or(PostgresCaptureError::NotStarted)?;
            enum Next {
                Msg(Result<CopyMessage, ReplicationError>),
                Status,
                Durable,
            }
            let next = tokio::select! {
                m = stream.next_copy() => Next::Msg(m),
                _ = tokio::time::sleep_until(due.into()) => Next::Status,
                _ = durable_changed => Next::Durable,
            };
            match next {
                Next::Durable => {
                    // Tell the server promptly that it may forget what the log now holds.
                    if self.confirmable() > self.confirmed_lsn {
                        self.send_status(false).await?;
                    }
                }
                Next::Status => {
                    if self.last_received.elapsed() >= interval * STATUS_MISSES {
                        self.stream = None;
                        return Err(PostgresCaptureError::HeartbeatTimeout(interval * STATUS_MISSES));
                    }
                    self.send_status(true).await?;
                }
                Next::Msg(Err(e)) => {
                    self.stream = None;
                    return Err(self.map_stream_error(e));
                }
                Next::Msg(Ok(CopyMessage::Done)) => {
                    self.stream = None;
                    return Err(PostgresCaptureError::StreamEnded);
                }
                Next::Msg(Ok(CopyMessage::Keepalive { reply, wal_end })) => {
                    self.last_received = Instant::now();
                    // A logical walsender's keepalive carries `sentPtr`, the
                    // end of the last WAL record it decoded *completely*
                    // (walsender.c: `XLogSendLogical` sets it after
                    // `LogicalDecodingProcessRecord` returned, and
                    // `WalSndKeepalive` sends it); a transaction is sent
                    // while its commit record is decoded, before the
                    // keepalive on the same connection. So every transaction
                    // whose commit ends at or before `wal_end` came before
                    // this message (or was not published). That holds even
                    // in the middle of a later transaction (`sentPtr` is
                    // still the record before its commit), but only
                    // keepalives between transactions are used: cheap
                    // certainty, since another comes on request.
                    if self.txn.is_none() {
                        self.read_lsn = self.read_lsn.max(wal_end);
                    }
                    if reply {
                        self.send_status(false).await?;
                    }
                }
                Next::Msg(Ok(CopyMessage::XLogData { start, data, .. })) => {
                    self.last_received = Instant::now();
                    self.at_lsn = start;
                    let msg = pgoutput::decode(data).map_err(|e| PostgresCaptureError::Stream {
                        position: format!("LSN {}", format_lsn(start)),
                        message: e.to_string(),
                    })?;
                    if matches!(msg, Message::Relation(_)) {
                        // Its handling awaits: done at the top of the loop,
                        // where a cancellation does not lose it.
                        self.unhandled = Some((start, msg));
                        continue;
                    }
                    // (Handling any other message completes without waiting.)
                    if let Some(t) = self.handle(msg).await? {
                        return Ok(t);
                    }
                }
            }
        }
    }

    fn watch_durable(&mut self, durable: DurablePosition) {
        self.durable = Some(durable);
    }

    /// Every transaction whose commit ends at or before this LSN was handed
    /// out or dropped (commit end LSNs are what capture reports as
    /// positions); `None` until streaming.
    fn read_position(&self) -> Option<Position> {
        (self.stream.is_some() && self.read_lsn > 0).then_some(Position::Postgres(self.read_lsn))
    }

    fn want_read_past(&mut self, position: &Position) {
        if let Position::Postgres(lsn) = position {
            self.wanted_lsn = self.wanted_lsn.max(*lsn);
        }
    }

    /// Drops the slot (when it exists), so that `current_position` creates
    /// it anew with a new exported snapshot. The runtime calls this only
    /// while the log holds no streamed transaction (an initial snapshot was
    /// cut short, or a first start finds a slot left by an earlier attempt):
    /// nothing the slot kept is needed then, since the new snapshot shows it.
    async fn discard_start(&mut self) -> Result<(), PostgresCaptureError> {
        self.export.send_replace(Export::Pending);
        if let Some(c) = self.creator.take() {
            c.close().await;
        }
        if self.slot_confirmed_lsn().await?.is_none() {
            return Ok(());
        }
        let slot = self.config.slot.clone();
        let mut conn = self
            .replication_conn("connecting to drop the replication slot")
            .await?;
        let dropped = conn
            .simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(&slot)))
            .await;
        conn.close().await;
        match dropped {
            Ok(_) => {
                tracing::warn!(slot = %slot, "replication slot dropped: the initial snapshot starts over from a new slot");
                Ok(())
            }
            // Still active: the walsender of a process that just died may
            // not have noticed yet (55006 is transient); a live one is
            // another capture on the same slot, which the error names.
            Err(source) => Err(PostgresCaptureError::Replication {
                context: format!(
                    "dropping replication slot {slot:?} to take the initial snapshot again (is another dbmux using it?)"
                ),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_problems_are_all_reported() {
        let mut c = PostgresSourceConfig::new("mysql://x@h/db");
        c.slot = "Bad-Slot".into();
        c.status_interval_secs = 0;
        c.include = vec!["a.b.c".into()];
        let p = c.validate_at("source.postgres");
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].starts_with("source.postgres.url"));
        let ok = PostgresSourceConfig::new("postgres://u:p@127.0.0.1:5432/shop");
        assert!(ok.validate_at("s").is_empty());
        assert!(!PostgresSourceConfig::new("postgres://u@h/")
            .validate_at("s")
            .is_empty());
        assert!(!format!("{:?}", PostgresSourceConfig::new("postgres://u:secret@h/db")).contains("secret"));
    }

    #[test]
    fn preflight_settings() {
        let good = ServerSettings {
            wal_level: "logical".into(),
            max_replication_slots: 10,
            max_wal_senders: 10,
            server_encoding: "UTF8".into(),
            version_num: 150_000,
            superuser: false,
            replication: true,
            slots_used: 2,
            senders_used: 1,
            own_slot_exists: true,
        };
        assert!(good.problems().is_empty());
        assert!(good.warnings().is_empty());
        // No room for a later snapshot's temporary slot and WAL sender.
        let tight = ServerSettings {
            max_replication_slots: 3,
            max_wal_senders: 2,
            own_slot_exists: false,
            ..good.clone()
        };
        let w = tight.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("max_replication_slots: 3 with 2 in use and this source's slot"),
            "{w:?}"
        );
        assert!(w[1].starts_with("max_wal_senders: 2 with 1 running"), "{w:?}");
        // One free of each is enough.
        let just = ServerSettings {
            max_replication_slots: 3,
            max_wal_senders: 3,
            ..good.clone()
        };
        assert!(just.warnings().is_empty(), "{:?}", just.warnings());
        let bad = ServerSettings {
            wal_level: "replica".into(),
            max_replication_slots: 0,
            server_encoding: "LATIN1".into(),
            replication: false,
            ..good
        };
        let p = bad.problems();
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(
            p[0],
            "wal_level: expected logical, found replica (set wal_level = logical and restart PostgreSQL)"
        );
        assert!(p[3].contains("REPLICATION"));
    }

    #[test]
    fn error_classes() {
        let server = |code: &str| ReplicationError::Server {
            code: code.into(),
            message: String::new(),
        };
        assert_eq!(replication_class(&server("55006")), ErrorClass::Transient);
        assert_eq!(replication_class(&server("57P01")), ErrorClass::Transient);
        assert_eq!(replication_class(&server("42704")), ErrorClass::Definite);
        assert_eq!(replication_class(&server("28P01")), ErrorClass::Definite);
        assert_eq!(
            replication_class(&ReplicationError::Closed),
            ErrorClass::Transient
        );
        assert_eq!(quote_literal(&quote_ident("a'b\"c")), "'\"a''b\"\"c\"'");
    }
}
