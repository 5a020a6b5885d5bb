//! The engine-neutral exactly-once applier: one [`Sink`] for every replica
//! engine, which supplies only its SQL through the narrow [`Engine`] trait.
//!
//! # Exactly once
//! Each target transaction is:
//! `BEGIN` → read and lock this applier's row of `dbmux_offsets`
//! ([`Engine::read_offset`] with `lock`) → plan the events after it
//! ([`crate::batch`]) → check that they follow it without a gap → execute the
//! plan's steps → write the offset ([`Engine::write_offset`]) → `COMMIT`.
//! Events at or below the stored `seq` are skipped, so a batch retried after
//! an ambiguous commit (the connection dropped, the commit may or may not have
//! happened) is never applied twice; the row lock makes a second applier of the
//! same name wait and then skip instead of applying concurrently. Any error
//! rolls back, drops the connection and forgets every cache: the next call
//! connects again and re-reads the offset.
//!
//! # Grouping
//! One `apply` call (whole source transactions, consecutive `seq`) is one
//! target transaction, or, with [`Limits::max_transactions_per_commit`], a
//! few consecutive ones, each with its own offset.
//!
//! # Tables
//! Before the data transaction (MySQL commits implicitly on DDL), every table
//! the batch writes is prepared: its replica name ([`Engine::target_table`],
//! renames), a refusal when it is one of dbmux's own tables or a table
//! another source table already writes, creation from the event's definition
//! when missing ([`Engine::create_table`]), then the engine's per-table state
//! ([`Engine::table`]). A definition without columns (a TRUNCATE of a table
//! capture has not seen a row of) only truncates, and only a table that
//! exists: a missing table is empty.
//!
//! # Constraints: set-based first, source order as the fallback
//! A set-based plan can trip a unique key on values the planner cannot see as
//! equal (`'a'` and `'A'` under a case-insensitive collation, see
//! [`crate::batch`]). Such an error ([`Engine::may_pass_in_source_order`])
//! rolls the transaction back and applies the same events again in source
//! order, which the source itself proved valid; if that fails too, the error
//! stands (and quarantines the table, see below).
//!
//! # Quarantine and resume
//! Every definite error of a step is tied to the step's source table
//! ([`ApplyError::in_table`]), so the runtime quarantines that (replica,
//! table) and retries without it ([`crate::replica`]). Events of tables in
//! `skip` (quarantined or excluded) are left out of the data but count for
//! the offset. The quarantine rows live in the replica
//! ([`Engine::store_quarantine`]); [`Sink::resume`] re-applies a quarantined
//! table's skipped events (all at or below the offset) and moves or lifts its
//! quarantine in the same target transaction, without moving the offset.
//!
//! # Foreign-key cascades
//! Replica tables carry no foreign keys; the plan's cascade steps are
//! performed here from the replica's own data ([`crate::cascade`]), with the
//! engine's statements for selecting, deleting and updating rows by the
//! values of some columns ([`Engine::cascade`]). Quarantined tables are left
//! alone; while resuming a table, cascades change that table only.
//!
//! # How each engine maps onto it
//! | | MySQL / MariaDB | PostgreSQL | SQL Server |
//! |---|---|---|---|
//! | upsert | `INSERT … ON DUPLICATE KEY UPDATE`, rows padded to a power of two | `INSERT … SELECT * FROM unnest($1::t[], …) ON CONFLICT` | `MERGE … WITH (HOLDLOCK)` over `VALUES` |
//! | parameters | typed binary values, ≤ 65,535 | one text array per column | typed TDS values, ≤ 2,098 |
//! | offset lock | `SELECT … FOR UPDATE` | `SELECT … FOR UPDATE` | `SELECT … WITH (UPDLOCK, HOLDLOCK)` |
//! | keyless row | `<=>` on utf8mb4 bytes, `LIMIT 1` | `ctid = (… IS NOT DISTINCT FROM … LIMIT 1)` | `TOP (1)`, bytes and lengths |
//! | set-based fallback | 1062, 1048, 1451, 1452 | 23505, 23503 | 2627, 2601, 547, 8672 |
//!
//! # Snapshots
//! A snapshot's chunk 0 recreates the replica table before the data
//! transaction ([`Engine::recreate_table`]); its rows are `Load` steps, which
//! an engine may write through a bulk path ([`Engine::load`], PostgreSQL's
//! `COPY`) and otherwise go as upserts. The marks change the replica's own
//! tables in the same target transaction as the rows and the offset: `Begin`
//! notes the table as pending ([`Engine::store_pending`]), the chunk that ends
//! the wait forgets it, `End` (the table could not be copied) quarantines it.
//! [`Sink::open`] reports the pending tables, so a restarted runtime keeps
//! skipping their changes until their first chunk.
//!
//! # Schema changes
//! A transaction holding a schema change is a target transaction of its own,
//! and every table definition learned before it is forgotten after it.
//! Engines whose DDL is transactional (PostgreSQL, SQL Server) run it as a step
//! inside the data transaction, with the offset and the bookkeeping of a
//! dropped table. On MySQL DDL commits by itself ([`Engine::AUTOCOMMIT_DDL`]):
//! the applier notes the change as possibly running and commits, runs it,
//! then moves the offset and removes the note in one transaction; a crash in
//! between leaves the note, and the retry runs the change again telling the
//! engine so (`retried`), which takes "already exists" answers as done.
//!
//! # Room for what comes next
//! - *Bulk streaming inserts*: a straight `COPY` halves PostgreSQL's work
//!   against the `unnest` upserts, but only for keys not there yet (a staged
//!   `COPY` plus one upsert costs the same as the upserts; docs/benchmarks.md).
//!   The planner would mark runs of rows inserted at the source, and the
//!   engine's [`Engine::load`] path (with its fallback) would take them.

mod engine;
mod error;
#[cfg(test)]
mod tests;

pub use engine::{
    CascadeOp, DdlError, Engine, Limits, LoadError, RowsKind, Statement, TargetTable, ValueError,
};
pub use error::ApplyError;

use crate::batch::{self, Action, PlanOptions, Step};
use crate::cascade::{CascadeError, CascadeStore, Skip};
use crate::ddl::{DdlKind, SchemaChange};
use crate::event::{ChangeEvent, Op, Transaction};
use crate::replica::Quarantine;
use crate::schema::{TableId, TableSchema};
use crate::sink::{Opened, Sink};
use crate::snapshot::{SnapshotMark, SnapshotPhase};
use crate::value::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

type ApplyResult<T, G> = std::result::Result<T, ApplyError<G>>;

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

impl Mode<'_> {
    /// Whether `ev` is written by this transaction (offset aside).
    fn wants(&self, ev: &ChangeEvent, applied: u64) -> bool {
        match self {
            Mode::Stream { skip } => ev.seq > applied && !skip.contains(&ev.table.id),
            Mode::Resume { table, from, .. } => ev.seq >= *from && ev.table.id == **table,
        }
    }
}

/// A source table definition as the applier writes it.
struct Prepared<T> {
    /// The replica table.
    target: TableId,
    /// `None` for a definition without columns: it only truncates.
    table: Option<TargetTable<T>>,
    /// Whether the replica table exists (always, when `table` is `Some`).
    exists: bool,
}

/// Applies change events to a replica of engine `G` (see the module docs).
pub struct Applier<G: Engine> {
    /// This applier's key in `dbmux_offsets` and `dbmux_quarantine`.
    name: String,
    engine: G,
    conn: Option<G::Conn>,
    /// The offset read at the last (re)connection or written by the last commit.
    applied: u64,
    /// Replica tables known to exist, as the engine described them.
    known: HashMap<TableId, Arc<G::Described>>,
    /// Per source table definition.
    tables: HashMap<Arc<TableSchema>, Prepared<G::Table>>,
    /// Which source table each replica table receives (two never share one).
    targets: HashMap<TableId, TableId>,
}

impl<G: Engine> Applier<G> {
    /// An applier keyed `name` in the replica's bookkeeping tables, for
    /// `engine` (or what builds one, e.g. the engine's configuration).
    /// Connects on first use.
    pub fn new(name: &str, engine: impl Into<G>) -> Self {
        Self {
            name: name.to_string(),
            engine: engine.into(),
            conn: None,
            applied: 0,
            known: HashMap::new(),
            tables: HashMap::new(),
            targets: HashMap::new(),
        }
    }

    /// The offset as of the last `open` or successful `apply`.
    pub fn applied_seq(&self) -> u64 {
        self.applied
    }

    pub fn engine(&self) -> &G {
        &self.engine
    }

    /// Forgets the connection and everything learned on it.
    fn forget(&mut self) {
        self.conn = None;
        self.known.clear();
        self.tables.clear();
    }

    fn offset_missing(&self) -> ApplyError<G> {
        ApplyError::OffsetRowMissing {
            table: self.engine.offsets_table(),
            consumer: self.name.clone(),
        }
    }

    /// Runs idempotent DDL; a concurrent creator of the same object makes the
    /// first attempt fail, and the second then sees the object.
    async fn ddl(conn: &mut G::Conn, statement: &Statement<G::Param>, context: &str) -> ApplyResult<(), G> {
        match G::execute(conn, statement).await {
            Ok(_) => Ok(()),
            Err(e) if G::already_exists(&e) => G::execute(conn, statement)
                .await
                .map(|_| ())
                .map_err(ApplyError::driver(context)),
            Err(e) => Err(ApplyError::driver(context)(e)),
        }
    }

    async fn connect(&mut self) -> ApplyResult<(), G> {
        self.forget();
        let mut conn = self
            .engine
            .connect()
            .await
            .map_err(ApplyError::driver("connecting"))?;
        for s in self.engine.setup() {
            Self::ddl(&mut conn, &s, "creating the offsets and quarantine tables").await?;
        }
        G::execute(&mut conn, &self.engine.register(&self.name))
            .await
            .map_err(ApplyError::driver("registering in the offsets table"))?;
        let rows = G::query(&mut conn, &self.engine.read_offset(&self.name, false))
            .await
            .map_err(ApplyError::driver("reading the offset"))?;
        self.applied = first_u64::<G>(&rows).ok_or_else(|| self.offset_missing())?;
        self.conn = Some(conn);
        Ok(())
    }

    async fn read_quarantines(&mut self) -> ApplyResult<Vec<Quarantine>, G> {
        let statement = self.engine.read_quarantines(&self.name);
        let conn = self.conn.as_mut().expect("connected");
        let rows = G::query(conn, &statement)
            .await
            .map_err(ApplyError::driver("reading the quarantine table"))?;
        rows.iter()
            .map(|r| match r.as_slice() {
                [schema, name, first, reason] => Some(Quarantine {
                    table: TableId::new(G::as_text(schema)?, G::as_text(name)?),
                    first_seq: G::as_u64(first)?,
                    reason: G::as_text(reason)?,
                }),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApplyError::Internal("the quarantine table has a row dbmux cannot read".into()))
    }

    /// Connects when needed and prepares every table `txns` writes.
    async fn prepare(&mut self, txns: &[Transaction], mode: Mode<'_>) -> ApplyResult<(), G> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        if let Err(e) = self.ensure_tables(txns, mode).await {
            self.forget();
            return Err(e);
        }
        Ok(())
    }

    async fn ensure_tables(&mut self, txns: &[Transaction], mode: Mode<'_>) -> ApplyResult<(), G> {
        let mut seen: HashSet<usize> = HashSet::new();
        for ev in txns.iter().flat_map(|t| &t.events) {
            if !mode.wants(ev, self.applied) {
                continue;
            }
            match &ev.op {
                Op::Ddl(_) => continue,
                Op::Snapshot(mark) => {
                    if mark.phase.recreates() {
                        self.recreate(&ev.table, mark)
                            .await
                            .map_err(|e| e.in_table(&ev.table.id))?;
                        seen.insert(Arc::as_ptr(&ev.table) as usize);
                    }
                    continue;
                }
                _ => {}
            }
            if !seen.insert(Arc::as_ptr(&ev.table) as usize)
                || (self.tables.contains_key(&ev.table) && !ev.table.columns_unknown())
            {
                continue;
            }
            self.ensure_table(&ev.table, false)
                .await
                .map_err(|e| e.in_table(&ev.table.id))?;
        }
        Ok(())
    }

    /// A snapshot's first chunk: the replica table is dropped and created
    /// again as the source has it at the chunk's position (before the data
    /// transaction, like any table creation; running it twice is harmless).
    async fn recreate(&mut self, source: &Arc<TableSchema>, mark: &SnapshotMark) -> ApplyResult<(), G> {
        let target = self.claim(source)?;
        let table_err = |message: String| ApplyError::Table {
            table: target.to_string(),
            message,
        };
        let renamed = self.renamed(source, &target).map_err(table_err)?;
        let create = match &mark.phase {
            SnapshotPhase::Chunk { create, .. } => create.as_deref(),
            _ => None,
        };
        let ddl = self
            .engine
            .recreate_table(&target, &renamed, source, create)
            .map_err(|(column, m)| column_err(&target, column, m))?;
        let conn = self.conn.as_mut().expect("connected");
        for s in ddl {
            Self::ddl(
                conn,
                &Statement::text(s),
                &format!("recreating table {target} for its snapshot"),
            )
            .await?;
        }
        self.known.remove(&target);
        self.tables.retain(|k, _| k.id != source.id);
        self.ensure_table(source, true).await
    }

    async fn describe(&mut self, target: &TableId) -> ApplyResult<Option<Arc<G::Described>>, G> {
        if let Some(d) = self.known.get(target) {
            return Ok(Some(d.clone()));
        }
        let conn = self.conn.as_mut().expect("connected");
        let found = self
            .engine
            .describe(conn, target)
            .await
            .map_err(ApplyError::driver(format!("reading the definition of {target}")))?
            .map(Arc::new);
        if let Some(d) = &found {
            self.known.insert(target.clone(), d.clone());
        }
        Ok(found)
    }

    /// The replica table `source` is written to, checked: never one of
    /// dbmux's own tables, never one another source table already writes.
    fn claim(&mut self, source: &TableSchema) -> ApplyResult<TableId, G> {
        let target = self.engine.target_table(&source.id);
        if self.engine.is_own_table(&target) {
            return Err(ApplyError::Table {
                table: target.to_string(),
                message: "it is one of dbmux's own tables".into(),
            });
        }
        match self.targets.get(&target) {
            Some(other) if *other != source.id => {
                return Err(ApplyError::TargetTaken {
                    table: source.id.clone(),
                    target: target.to_string(),
                    other: other.clone(),
                })
            }
            Some(_) => {}
            None => {
                self.targets.insert(target.clone(), source.id.clone());
            }
        }
        Ok(target)
    }

    /// Prepares `source` for writing; `created`: its replica table was just
    /// (re)created, so no `CREATE` is needed.
    async fn ensure_table(&mut self, source: &Arc<TableSchema>, created: bool) -> ApplyResult<(), G> {
        let target = self.claim(source)?;
        let table_err = |message: String| ApplyError::Table {
            table: target.to_string(),
            message,
        };
        if source.columns_unknown() {
            // A TRUNCATE of a table capture has no definition for (its first
            // event after a restart, or a table created while dbmux runs):
            // truncate it if the replica has it; a missing table is empty.
            let exists = self.describe(&target).await?.is_some();
            self.tables.insert(
                source.clone(),
                Prepared {
                    target,
                    table: None,
                    exists,
                },
            );
            return Ok(());
        }
        if let Some(f) = crate::cascade::uncaptured_parent(source) {
            return Err(table_err(crate::cascade::uncaptured_parent_message(f)));
        }
        let renamed = self.renamed(source, &target).map_err(table_err)?;
        if !created && !self.known.contains_key(&target) {
            let ddl = self
                .engine
                .create_table(&target, &renamed)
                .map_err(|(column, m)| column_err(&target, column, m))?;
            let conn = self.conn.as_mut().expect("connected");
            for s in ddl {
                Self::ddl(conn, &Statement::text(s), &format!("creating table {target}")).await?;
            }
        }
        let described = self
            .describe(&target)
            .await?
            .ok_or_else(|| table_err("it does not exist right after CREATE TABLE".into()))?;
        let engine_table = self
            .engine
            .table(&target, &renamed, &described)
            .map_err(table_err)?;
        self.tables.insert(
            source.clone(),
            Prepared {
                target: target.clone(),
                table: Some(TargetTable {
                    id: target,
                    schema: renamed,
                    engine: engine_table,
                }),
                exists: true,
            },
        );
        Ok(())
    }

    /// `source` as the replica names it: the replica table, every column
    /// renamed (values stay by position); an error when two columns would get
    /// one name.
    fn renamed(
        &self,
        source: &Arc<TableSchema>,
        target: &TableId,
    ) -> std::result::Result<Arc<TableSchema>, String> {
        let mut t = (**source).clone();
        t.id = target.clone();
        let mut seen = HashSet::new();
        for c in &mut t.columns {
            let to = self.engine.target_column(&source.id, &c.name);
            if !seen.insert(to.clone()) {
                return Err(format!(
                    "two columns would be named {to:?} on {}; rename one with rename_columns",
                    G::NAME
                ));
            }
            c.name = to;
        }
        for f in &mut t.foreign_keys {
            for c in &mut f.columns {
                *c = self.engine.target_column(&source.id, c);
            }
        }
        Ok(Arc::new(t))
    }

    /// Applies `txns` in one target transaction as `mode` says; a set-based
    /// plan that trips a constraint is rolled back and applied again in
    /// source order.
    async fn apply_group(&mut self, txns: &[Transaction], mode: Mode<'_>) -> ApplyResult<(), G> {
        let mut conn = self.conn.take().expect("connected");
        let mut result = self.apply_in(&mut conn, txns, mode, false).await;
        if result.as_ref().is_err_and(ApplyError::may_pass_in_source_order) {
            let e = result.as_ref().expect_err("an error");
            tracing::info!(replica = %self.name, error = %e, "set-based batch broke a constraint; applying it in source order");
            let _ = G::rollback(&mut conn).await;
            result = self.apply_in(&mut conn, txns, mode, true).await;
        }
        match result {
            Ok(applied) => {
                self.applied = applied;
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                // Roll back what is open; the connection is dropped either way
                // so the next call starts clean and re-reads the offset.
                let _ = G::rollback(&mut conn).await;
                drop(conn);
                self.forget();
                Err(e)
            }
        }
    }

    async fn apply_in(
        &mut self,
        conn: &mut G::Conn,
        txns: &[Transaction],
        mode: Mode<'_>,
        source_order: bool,
    ) -> ApplyResult<u64, G> {
        G::begin(conn)
            .await
            .map_err(ApplyError::driver("starting a transaction"))?;
        let rows = G::query(conn, &self.engine.read_offset(&self.name, true))
            .await
            .map_err(ApplyError::driver("locking the offset"))?;
        let applied = first_u64::<G>(&rows).ok_or_else(|| self.offset_missing())?;
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
                    return Err(ApplyError::Internal(format!(
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
            G::execute(conn, &self.engine.move_quarantine(&self.name, table, next))
                .await
                .map_err(ApplyError::driver("moving the quarantine"))?;
            G::commit(conn).await.map_err(ApplyError::driver("committing"))?;
            return Ok(applied);
        }
        let Some(last) = plan.last_seq else {
            G::commit(conn).await.map_err(ApplyError::driver("committing"))?;
            return Ok(applied);
        };
        let first = txns
            .iter()
            .flat_map(|t| &t.events)
            .map(|e| e.seq)
            .find(|&s| s > applied)
            .unwrap_or(last);
        if applied > 0 && first > applied + 1 {
            return Err(ApplyError::Gap {
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
        self.commit_offset(conn, last, position.as_deref()).await?;
        Ok(last)
    }

    /// Executes one step of a plan inside the open transaction.
    async fn run_step(&mut self, conn: &mut G::Conn, step: &Step<'_>, skip: &Skip<'_>) -> ApplyResult<(), G> {
        match &step.action {
            Action::Snapshot { seq, mark } => {
                return self.record_snapshot(conn, step.table, *seq, mark).await
            }
            // Run between transactions (see `apply_autocommit_ddl`).
            Action::Ddl { .. } if G::AUTOCOMMIT_DDL => return Ok(()),
            Action::Ddl {
                change, commit_ts_us, ..
            } => {
                self.schema_change(conn, step.table, change, *commit_ts_us, false)
                    .await?;
                for s in self.after_schema_change(&step.table.id, change) {
                    G::execute(conn, &s)
                        .await
                        .map_err(ApplyError::driver("updating dbmux's own tables"))?;
                }
                return Ok(());
            }
            _ => {}
        }
        let limits = self.engine.limits();
        let prepared = self.tables.get_mut(step.table).ok_or_else(|| ApplyError::Table {
            table: step.table.id.to_string(),
            message: "the table was not prepared".into(),
        })?;
        let text = prepared.target.to_string();
        let value_err = |e: ValueError| ApplyError::Value {
            table: text.clone(),
            column: e.column,
            message: e.message,
        };
        match &step.action {
            Action::Load(rows) if rows.is_empty() => {}
            Action::Load(rows)
                if self
                    .engine
                    .load(conn, writes::<G>(prepared)?, rows)
                    .await
                    .map_err(|e| match e {
                        LoadError::Driver(e) => {
                            ApplyError::driver(format!("loading snapshot rows into {text}"))(e)
                        }
                        LoadError::Value(e) => value_err(e),
                    })? => {}
            Action::Upsert(rows) | Action::Delete(rows) | Action::Insert(rows) | Action::Load(rows) => {
                let kind = match &step.action {
                    Action::Upsert(_) => RowsKind::Upsert,
                    Action::Load(_) if step.table.has_primary_key() => RowsKind::Upsert,
                    Action::Delete(_) => RowsKind::Delete,
                    _ => RowsKind::Insert,
                };
                let table = writes::<G>(prepared)?;
                let max = self
                    .engine
                    .max_rows(table, kind)
                    .min(limits.max_rows_per_statement)
                    .max(1);
                for chunk in batch::chunks(rows, max, limits.max_statement_bytes) {
                    let statement = self.engine.rows(table, kind, chunk).map_err(&value_err)?;
                    G::execute(conn, &statement)
                        .await
                        .map_err(ApplyError::driver(format!("{} {text}", kind.verb())))?;
                }
            }
            Action::UpdateOne { seq, before, after } => {
                let table = writes::<G>(prepared)?;
                let statement = self.engine.update_one(table, before, after).map_err(&value_err)?;
                let n = G::execute(conn, &statement)
                    .await
                    .map_err(ApplyError::driver(format!("updating {text}")))?;
                if n != 1 {
                    return Err(ApplyError::Diverged {
                        table: text,
                        op: "update",
                        seq: *seq,
                    });
                }
            }
            Action::DeleteOne { seq, before } => {
                let table = writes::<G>(prepared)?;
                let statement = self.engine.delete_one(table, before).map_err(&value_err)?;
                let n = G::execute(conn, &statement)
                    .await
                    .map_err(ApplyError::driver(format!("deleting from {text}")))?;
                if n != 1 {
                    return Err(ApplyError::Diverged {
                        table: text,
                        op: "delete",
                        seq: *seq,
                    });
                }
            }
            Action::Snapshot { .. } | Action::Ddl { .. } => unreachable!("handled above"),
            Action::Truncate if !prepared.exists => {} // the replica has no such table
            Action::Truncate => {
                let statement = self.engine.truncate(&prepared.target);
                G::execute(conn, &statement)
                    .await
                    .map_err(ApplyError::driver(format!("truncating {text}")))?;
            }
            Action::Cascade(change) => {
                let mut store = Cascades::<G> {
                    engine: &self.engine,
                    conn,
                    known: &mut self.known,
                };
                crate::cascade::cascade(&mut store, step.table, change, skip)
                    .await
                    .map_err(|e| match e {
                        CascadeError::Store(e) => e,
                        e => ApplyError::Internal(e.to_string()),
                    })?;
            }
        }
        Ok(())
    }
}

impl<G: Engine> Applier<G> {
    /// Writes the offset (`seq`, and the source position after it) and
    /// commits the open transaction.
    async fn commit_offset(
        &self,
        conn: &mut G::Conn,
        seq: u64,
        position: Option<&str>,
    ) -> ApplyResult<(), G> {
        let write = self
            .engine
            .write_offset(&self.name, seq, position)
            .map_err(|message| ApplyError::Table {
                table: self.engine.offsets_table(),
                message,
            })?;
        G::execute(conn, &write)
            .await
            .map_err(ApplyError::driver("writing the offset"))?;
        G::commit(conn).await.map_err(ApplyError::driver("committing"))
    }

    /// What a snapshot mark changes in the replica's own tables, inside the
    /// data transaction (see [`crate::sink`]).
    async fn record_snapshot(
        &self,
        conn: &mut G::Conn,
        table: &TableSchema,
        seq: u64,
        mark: &SnapshotMark,
    ) -> ApplyResult<(), G> {
        let id = &table.id;
        let e = &self.engine;
        let name = self.name.as_str();
        let statements = match &mark.phase {
            SnapshotPhase::Begin { .. } => vec![e.store_pending(name, id, mark.id)],
            SnapshotPhase::Chunk { .. } => {
                let mut v = Vec::new();
                if mark.phase.recreates() {
                    v.push(e.move_quarantine(name, id, None));
                }
                if mark.phase.ends_pending() {
                    v.push(e.drop_pending(name, id));
                }
                v
            }
            SnapshotPhase::End { reason } => vec![
                e.drop_pending(name, id),
                e.store_quarantine(
                    name,
                    &Quarantine {
                        table: id.clone(),
                        first_seq: seq,
                        reason: reason.clone(),
                    },
                ),
            ],
        };
        for s in &statements {
            G::execute(conn, s)
                .await
                .map_err(ApplyError::driver(format!("recording the snapshot of {id}")))?;
        }
        Ok(())
    }

    /// Makes one schema change through the engine, its errors tied to the table.
    async fn schema_change(
        &self,
        conn: &mut G::Conn,
        source: &Arc<TableSchema>,
        change: &SchemaChange,
        commit_ts_us: i64,
        retried: bool,
    ) -> ApplyResult<(), G> {
        let target = self.engine.target_table(&source.id);
        let refused = |message: String| ApplyError::Ddl {
            table: source.id.to_string(),
            statement: change.statement.clone(),
            message,
        };
        let renamed = self.renamed(source, &target).map_err(refused)?;
        match self
            .engine
            .schema_change(conn, source, &renamed, change, commit_ts_us, retried)
            .await
        {
            Ok(()) => Ok(()),
            Err(DdlError::Driver(e)) if G::classify(&e) == crate::retry::ErrorClass::Transient => {
                Err(ApplyError::driver("applying a schema change")(e))
            }
            Err(DdlError::Driver(e)) => Err(refused(G::describe_error(&e))),
            Err(DdlError::Refused(m)) => Err(refused(m)),
        }
    }

    /// Bookkeeping after a schema change: a dropped table's (or database's)
    /// pending snapshot and quarantine end with it.
    fn after_schema_change(&self, table: &TableId, change: &SchemaChange) -> Vec<Statement<G::Param>> {
        let name = self.name.as_str();
        match change.kind {
            DdlKind::DropTable => vec![
                self.engine.drop_pending(name, table),
                self.engine.move_quarantine(name, table, None),
            ],
            DdlKind::DropDatabase => self.engine.drop_schema_state(name, &table.schema),
            _ => Vec::new(),
        }
    }

    /// Forgets every table definition learned (they changed).
    fn definitions_changed(&mut self) {
        self.known.clear();
        self.tables.clear();
        self.targets.clear();
        if let Some(conn) = self.conn.as_mut() {
            G::schema_changed(conn);
        }
    }

    /// One schema-change transaction on an engine whose DDL commits by
    /// itself ([`Engine::AUTOCOMMIT_DDL`]): (1) with the offset row locked,
    /// note the change as possibly running and commit; (2) run it; (3) move
    /// the offset and remove the note in one transaction. A crash between
    /// (1) and (3) leaves the note: the retry runs the change again and takes
    /// "already exists / does not exist" answers as done.
    async fn apply_autocommit_ddl(
        &mut self,
        txn: &Transaction,
        skip: &HashSet<TableId>,
    ) -> ApplyResult<(), G> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let mut conn = self.conn.take().expect("connected");
        let r = self.autocommit_ddl_in(&mut conn, txn, skip).await;
        match r {
            Ok(()) => {
                self.conn = Some(conn);
                self.definitions_changed();
                Ok(())
            }
            Err(e) => {
                let _ = G::rollback(&mut conn).await;
                drop(conn);
                self.forget();
                Err(e)
            }
        }
    }

    async fn autocommit_ddl_in(
        &mut self,
        conn: &mut G::Conn,
        txn: &Transaction,
        skip: &HashSet<TableId>,
    ) -> ApplyResult<(), G> {
        let (first, last) = (txn.first_seq(), txn.last_seq());
        let note_missing = || ApplyError::Internal(format!("{} has no schema-change note table", G::NAME));
        let lock = self.engine.read_offset(&self.name, true);
        G::begin(conn)
            .await
            .map_err(ApplyError::driver("starting a transaction"))?;
        let rows = G::query(conn, &lock)
            .await
            .map_err(ApplyError::driver("locking the offset"))?;
        let applied = first_u64::<G>(&rows).ok_or_else(|| self.offset_missing())?;
        if last <= applied {
            G::commit(conn).await.map_err(ApplyError::driver("committing"))?;
            self.applied = applied;
            return Ok(());
        }
        if applied > 0 && first > applied + 1 {
            return Err(ApplyError::Gap {
                applied,
                next: first,
                missing: applied + 1,
            });
        }
        let read = self.engine.read_ddl_note(&self.name).ok_or_else(note_missing)?;
        let noted = G::query(conn, &read)
            .await
            .map_err(ApplyError::driver("reading the schema-change note"))?;
        let retried = first_u64::<G>(&noted) == Some(first);
        let statement = txn
            .events
            .iter()
            .find_map(|e| match &e.op {
                Op::Ddl(c) => Some(c.statement.as_str()),
                _ => None,
            })
            .unwrap_or_default();
        let store = self
            .engine
            .store_ddl_note(&self.name, first, statement)
            .ok_or_else(note_missing)?;
        G::execute(conn, &store)
            .await
            .map_err(ApplyError::driver("noting the schema change"))?;
        G::commit(conn).await.map_err(ApplyError::driver("committing"))?;
        // (2) The changes.
        let mut bookkeeping = Vec::new();
        for ev in &txn.events {
            let Op::Ddl(change) = &ev.op else {
                continue;
            };
            if skip.contains(&ev.table.id) {
                continue;
            }
            self.schema_change(conn, &ev.table, change, ev.txn.commit_ts_us, retried)
                .await
                .map_err(|e| e.in_table(&ev.table.id))?;
            if retried {
                tracing::debug!(replica = %self.name, seq = ev.seq, "schema change run again after a restart");
            }
            bookkeeping.extend(self.after_schema_change(&ev.table.id, change));
        }
        // (3) The offset, with the note gone.
        G::begin(conn)
            .await
            .map_err(ApplyError::driver("starting a transaction"))?;
        G::query(conn, &lock)
            .await
            .map_err(ApplyError::driver("locking the offset"))?;
        for s in &bookkeeping {
            G::execute(conn, s)
                .await
                .map_err(ApplyError::driver("updating dbmux's own tables"))?;
        }
        let clear = self.engine.clear_ddl_note(&self.name).ok_or_else(note_missing)?;
        G::execute(conn, &clear)
            .await
            .map_err(ApplyError::driver("clearing the schema-change note"))?;
        let position = txn.position().map(|p| p.to_string());
        self.commit_offset(conn, last, position.as_deref()).await?;
        self.applied = last;
        Ok(())
    }

    /// Applies data transactions (no schema change among them).
    async fn apply_data(&mut self, txns: &[Transaction], skip: &HashSet<TableId>) -> ApplyResult<(), G> {
        let mode = Mode::Stream { skip };
        self.prepare(txns, mode).await?;
        let group = match self.engine.limits().max_transactions_per_commit {
            0 => txns.len().max(1),
            n => n,
        };
        for part in txns.chunks(group) {
            if self.conn.is_none() {
                self.prepare(part, mode).await?;
            }
            self.apply_group(part, mode).await?;
        }
        Ok(())
    }

    async fn read_pending(&mut self) -> ApplyResult<Vec<TableId>, G> {
        let statement = self.engine.read_pending(&self.name);
        let conn = self.conn.as_mut().expect("connected");
        let rows = G::query(conn, &statement)
            .await
            .map_err(ApplyError::driver("reading the snapshot table"))?;
        rows.iter()
            .map(|r| match r.as_slice() {
                [schema, name] => Some(TableId::new(G::as_text(schema)?, G::as_text(name)?)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApplyError::Internal("the snapshot table has a row dbmux cannot read".into()))
    }
}

impl<G: Engine> Applier<G> {
    /// One target transaction: every quarantine lifted, the offset set to
    /// `from_seq - 1` (see [`Sink::reset`]).
    async fn reset_in(&mut self, from_seq: u64) -> ApplyResult<(), G> {
        let quarantined = self.read_quarantines().await?;
        let mut conn = self.conn.take().expect("connected");
        let r = self.reset_txn(&mut conn, &quarantined, from_seq).await;
        // Back in place either way: on an error the caller rolls it back.
        self.conn = Some(conn);
        r
    }

    async fn reset_txn(
        &self,
        conn: &mut G::Conn,
        quarantined: &[Quarantine],
        from_seq: u64,
    ) -> ApplyResult<(), G> {
        G::begin(conn)
            .await
            .map_err(ApplyError::driver("starting a transaction"))?;
        G::query(conn, &self.engine.read_offset(&self.name, true))
            .await
            .map_err(ApplyError::driver("locking the offset"))?;
        for q in quarantined {
            G::execute(conn, &self.engine.move_quarantine(&self.name, &q.table, None))
                .await
                .map_err(ApplyError::driver("lifting a quarantine"))?;
        }
        for s in self.engine.clear_state(&self.name) {
            G::execute(conn, &s)
                .await
                .map_err(ApplyError::driver("clearing the replica's state"))?;
        }
        self.commit_offset(conn, from_seq.saturating_sub(1), None).await
    }
}

/// A column (or, unnamed, the table) the engine cannot create.
fn column_err<G: Engine>(target: &TableId, column: String, message: String) -> ApplyError<G> {
    ApplyError::Table {
        table: target.to_string(),
        message: if column.is_empty() {
            message
        } else {
            format!("column {column}: {message}")
        },
    }
}

/// The engine state of a table the step writes rows of.
fn writes<G: Engine>(p: &mut Prepared<G::Table>) -> ApplyResult<&mut TargetTable<G::Table>, G> {
    let target = &p.target;
    p.table.as_mut().ok_or_else(|| ApplyError::Table {
        table: target.to_string(),
        message: "its columns are unknown (only a TRUNCATE of it was captured)".into(),
    })
}

/// The first column of the first row, as an integer.
fn first_u64<G: Engine>(rows: &[Vec<G::Param>]) -> Option<u64> {
    rows.first().and_then(|r| r.first()).and_then(G::as_u64)
}

impl<G: Engine> Sink for Applier<G> {
    type Error = ApplyError<G>;

    async fn open(&mut self) -> ApplyResult<Opened, G> {
        let r = async {
            self.connect().await?;
            let quarantined = self.read_quarantines().await?;
            Ok::<_, ApplyError<G>>((quarantined, self.read_pending().await?))
        }
        .await;
        match r {
            Ok((quarantined, pending)) => Ok(Opened {
                applied: self.applied,
                quarantined,
                pending,
            }),
            Err(e) => {
                self.forget();
                Err(e)
            }
        }
    }

    async fn apply(&mut self, txns: &[Transaction], skip: &HashSet<TableId>) -> ApplyResult<(), G> {
        // A schema change is a target transaction of its own (with its
        // offset): the tables of what follows are prepared only after it.
        let mut rest = txns;
        while !rest.is_empty() {
            match rest.iter().position(Transaction::is_ddl) {
                Some(0) => {
                    if G::AUTOCOMMIT_DDL {
                        self.apply_autocommit_ddl(&rest[0], skip).await?;
                    } else {
                        self.apply_data(&rest[..1], skip).await?;
                        self.definitions_changed();
                    }
                    rest = &rest[1..];
                }
                n => {
                    let (part, tail) = rest.split_at(n.unwrap_or(rest.len()));
                    self.apply_data(part, skip).await?;
                    rest = tail;
                }
            }
        }
        Ok(())
    }

    async fn reset(&mut self, from_seq: u64) -> ApplyResult<(), G> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let r = self.reset_in(from_seq).await;
        match r {
            Ok(()) => {
                self.applied = from_seq.saturating_sub(1);
                Ok(())
            }
            Err(e) => {
                if let Some(conn) = self.conn.as_mut() {
                    let _ = G::rollback(conn).await;
                }
                self.forget();
                Err(e)
            }
        }
    }

    async fn quarantine(&mut self, q: &Quarantine) -> ApplyResult<(), G> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let statement = self.engine.store_quarantine(&self.name, q);
        let conn = self.conn.as_mut().expect("connected");
        let r = G::execute(conn, &statement)
            .await
            .map(|_| ())
            .map_err(ApplyError::driver("storing a quarantine"));
        if r.is_err() {
            self.forget();
        }
        r
    }

    async fn resume(
        &mut self,
        table: &TableId,
        txns: &[Transaction],
        from: u64,
        next: Option<u64>,
    ) -> ApplyResult<(), G> {
        let mode = Mode::Resume { table, from, next };
        self.prepare(txns, mode).await?;
        self.apply_group(txns, mode).await
    }
}

/// Foreign-key cascades on the replica (see [`crate::cascade`]), inside the
/// applier's open transaction, with the engine's statements. Tables and
/// columns arrive with their source names and are mapped here.
struct Cascades<'a, G: Engine> {
    engine: &'a G,
    conn: &'a mut G::Conn,
    known: &'a mut HashMap<TableId, Arc<G::Described>>,
}

impl<G: Engine> Cascades<'_, G> {
    /// The replica table of source table `table` and its description;
    /// `None` when the replica has no such table (it holds no rows to change).
    async fn target(&mut self, table: &TableId) -> ApplyResult<Option<(TableId, Arc<G::Described>)>, G> {
        let target = self.engine.target_table(table);
        if let Some(d) = self.known.get(&target) {
            return Ok(Some((target, d.clone())));
        }
        let found = self
            .engine
            .describe(self.conn, &target)
            .await
            .map_err(ApplyError::driver(format!("looking for table {target}")))?;
        Ok(found.map(|d| {
            let d = Arc::new(d);
            self.known.insert(target.clone(), d.clone());
            (target, d)
        }))
    }

    fn names(&self, table: &TableId, cols: &[String]) -> Vec<String> {
        cols.iter().map(|c| self.engine.target_column(table, c)).collect()
    }

    /// The statements of `op` on `target`.
    fn statements(
        &self,
        target: &TableId,
        described: &G::Described,
        op: CascadeOp<'_, G::Param>,
    ) -> ApplyResult<Vec<Statement<G::Param>>, G> {
        self.engine
            .cascade(target, described, op)
            .map_err(|message| ApplyError::Table {
                table: target.to_string(),
                message,
            })
    }
}

impl<G: Engine> CascadeStore for Cascades<'_, G> {
    type Val = G::Param;
    type Error = ApplyError<G>;

    fn value(&self, table: &TableSchema, col: usize, v: &Value) -> ApplyResult<G::Param, G> {
        let c = &table.columns[col];
        self.engine.param(c, v).map_err(|message| ApplyError::Value {
            table: table.id.to_string(),
            column: c.name.clone(),
            message,
        })
    }

    fn is_null(v: &G::Param) -> bool {
        G::is_null(v)
    }

    fn null() -> G::Param {
        G::null()
    }

    async fn select(
        &mut self,
        table: &TableId,
        cols: &[String],
        keys: &[Vec<G::Param>],
        want: &[String],
    ) -> ApplyResult<Vec<Vec<G::Param>>, G> {
        let Some((target, described)) = self.target(table).await? else {
            return Ok(Vec::new());
        };
        let (cols, want) = (self.names(table, cols), self.names(table, want));
        let op = CascadeOp::Select {
            cols: &cols,
            keys,
            want: &want,
        };
        let mut out = Vec::new();
        for s in self.statements(&target, &described, op)? {
            out.extend(G::query(self.conn, &s).await.map_err(ApplyError::driver(format!(
                "reading rows a cascade reaches in {target}"
            )))?);
        }
        Ok(out)
    }

    async fn delete(
        &mut self,
        table: &TableId,
        cols: &[String],
        keys: &[Vec<G::Param>],
    ) -> ApplyResult<(), G> {
        let Some((target, described)) = self.target(table).await? else {
            return Ok(());
        };
        let cols = self.names(table, cols);
        for s in self.statements(&target, &described, CascadeOp::Delete { cols: &cols, keys })? {
            G::execute(self.conn, &s)
                .await
                .map_err(ApplyError::driver(format!("cascading a delete into {target}")))?;
        }
        Ok(())
    }

    async fn update(
        &mut self,
        table: &TableId,
        cols: &[String],
        keys: &[Vec<G::Param>],
        new: Option<&[G::Param]>,
    ) -> ApplyResult<(), G> {
        let Some((target, described)) = self.target(table).await? else {
            return Ok(());
        };
        let cols = self.names(table, cols);
        let op = CascadeOp::Update {
            cols: &cols,
            keys,
            new,
        };
        for s in self.statements(&target, &described, op)? {
            G::execute(self.conn, &s)
                .await
                .map_err(ApplyError::driver(format!("cascading an update into {target}")))?;
        }
        Ok(())
    }
}
