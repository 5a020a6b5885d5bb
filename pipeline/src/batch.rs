//! Engine-neutral batching: turning whole source transactions into the few
//! set-based statements an applier sends to its target.
//!
//! # What a plan is
//! [`plan`] walks the events of one `apply` call in `seq` order (skipping those
//! at or below the replica's stored offset) and produces [`Step`]s, each one
//! statement's worth of work on one table: upsert rows by primary key, delete
//! rows by primary key, insert/update/delete rows of a table without a key,
//! truncate. Appliers execute the steps in order inside one target transaction.
//!
//! # Why the result equals applying every event one by one
//! For a table with a primary key, every row change becomes one of two
//! *key operations*: `Upsert(row)` (insert or replace the whole row image) or
//! `Delete(key)`. An insert and an update that keeps the key are an upsert of
//! the after image; an update that **changes** the key is `Delete(old key)`
//! followed by `Upsert(new row)`; a delete is `Delete(key)`. With full row
//! images, two key operations on *different* keys of one table commute, and
//! of two upserts of the *same* key only the later one matters.
//!
//! A run of consecutive key operations on one table is therefore emitted as
//! one delete step followed by one upsert step, provided no delete has to move
//! in front of an earlier upsert of the same key. [`plan`] keeps exactly that
//! invariant: a `Delete(k)` arriving after an `Upsert(k)` in the open run
//! closes the run and starts a new one. Repeated upserts of a key keep the
//! last image (in the earlier slot); repeated deletes of a key keep one.
//! Nothing is reordered across tables, across a truncate, or across events of
//! a table without a primary key.
//!
//! The argument assumes the target compares keys the way the source does
//! (replica columns carry the source collation) and has no triggers.
//!
//! # Unique keys
//! Other UNIQUE keys make the order of writes matter: upserting row A to a
//! value row B still holds collides, though the end state is valid. A run
//! therefore never writes a unique value that another row of the run held when
//! the run started (its before image): such an upsert starts a new run. Rows
//! not in the run keep their values and the run's end state is the source's,
//! so no other collision is possible. Equality under a collation (`'A'` = `'a'`)
//! is invisible here; the appliers catch it and re-plan with
//! [`PlanOptions::source_order`].
//!
//! # Foreign-key cascades
//! A delete from a table other tables' foreign keys reference with a cascading
//! action becomes a [`Action::Cascade`] step followed by the delete step
//! (consecutive deletes of the table share them); an update that changes
//! referenced columns closes the run and is followed by its cascade step. So
//! every cascade happens exactly where the source's did, relative to every
//! other table's changes (see [`crate::cascade`]).
//!
//! # Tables without a primary key
//! Rows cannot be named, so nothing is merged or reordered: consecutive inserts
//! form one insert step; every update and delete is its own step, which the
//! applier must execute against exactly one row equal to the before image.

use crate::event::{Op, Row, Transaction};
use crate::schema::{TableId, TableSchema};
use crate::value::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A transaction cannot be planned; retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("event seq {seq} on {table}: row image has {got} values but the table has {expected} columns")]
    RowWidth {
        seq: u64,
        table: TableId,
        got: usize,
        expected: usize,
    },
    #[error("table {table}: primary key column index {index} is out of range")]
    BadPrimaryKey { table: TableId, index: usize },
    #[error("event seq {seq} follows seq {previous}: events must arrive in increasing seq order")]
    OutOfOrder { seq: u64, previous: u64 },
}

impl PlanError {
    /// The source table the error belongs to (all but `OutOfOrder`).
    pub fn table(&self) -> Option<&TableId> {
        match self {
            PlanError::RowWidth { table, .. } | PlanError::BadPrimaryKey { table, .. } => Some(table),
            PlanError::OutOfOrder { .. } => None,
        }
    }
}

/// What to plan (see [`plan_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions<'a> {
    /// Events at or below this `seq` are already in the target: left out.
    pub applied: u64,
    /// Tables whose events are left out (quarantined or excluded); they still
    /// count for `last_seq`, so the offset moves past them.
    pub skip: Option<&'a HashSet<TableId>>,
    /// When set, only the events of these tables are planned (resuming
    /// quarantined tables).
    pub only: Option<&'a HashSet<TableId>>,
    /// Every event its own step, in source order: nothing merged or moved.
    /// The fallback when a set-based plan would break a constraint of the
    /// target (see "Unique keys" in the module documentation).
    pub source_order: bool,
}

/// One statement's worth of work on one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<'a> {
    pub table: &'a Arc<TableSchema>,
    pub action: Action<'a>,
}

/// What a [`Step`] does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<'a> {
    /// Insert or replace whole rows by primary key. Keys are distinct within the step.
    Upsert(Vec<&'a Row>),
    /// Delete the rows whose primary key equals that of these row images.
    /// Keys are distinct within the step.
    Delete(Vec<&'a Row>),
    /// Table without a primary key: plain inserts, in source order.
    Insert(Vec<&'a Row>),
    /// Table without a primary key: change exactly one row equal to `before`
    /// into `after`. Zero matching rows means the replica has diverged.
    /// `seq` names the event in error messages.
    UpdateOne {
        seq: u64,
        before: &'a Row,
        after: &'a Row,
    },
    /// Table without a primary key: delete exactly one row equal to `before`.
    DeleteOne { seq: u64, before: &'a Row },
    /// Delete every row of the table.
    Truncate,
    /// Perform the foreign-key cascades of this change of the table's rows
    /// (see [`crate::cascade`]): placed right before the deletes, or right
    /// after the update, it belongs to.
    Cascade(crate::cascade::Change<'a>),
    /// Rows of a snapshot chunk: insert or replace them by primary key (a
    /// table without one: insert). Keys are distinct within the step.
    Load(Vec<&'a Row>),
    /// Snapshot control (see [`crate::snapshot`]): what the replica records
    /// or prepares for the chunk rows that follow.
    Snapshot {
        seq: u64,
        mark: &'a crate::snapshot::SnapshotMark,
    },
    /// A schema change of the table (see [`crate::ddl`]); `commit_ts_us` is
    /// when it ran on the source.
    Ddl {
        seq: u64,
        commit_ts_us: i64,
        change: &'a crate::ddl::SchemaChange,
    },
}

impl Action<'_> {
    /// Rows this step touches (1 for single-row steps, 0 for truncate).
    pub fn rows(&self) -> usize {
        match self {
            Action::Upsert(r) | Action::Delete(r) | Action::Insert(r) | Action::Load(r) => r.len(),
            Action::UpdateOne { .. } | Action::DeleteOne { .. } => 1,
            Action::Truncate | Action::Cascade(_) | Action::Snapshot { .. } | Action::Ddl { .. } => 0,
        }
    }
}

/// The steps of one `apply` call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan<'a> {
    pub steps: Vec<Step<'a>>,
    /// `seq` of the last event taken into the plan; `None` when every event
    /// was at or below the stored offset (nothing to do).
    pub last_seq: Option<u64>,
    /// Events taken into the plan.
    pub events: usize,
}

/// Plans `txns`, skipping every event with `seq <= applied` (already in the target).
pub fn plan(txns: &[Transaction], applied: u64) -> Result<Plan<'_>, PlanError> {
    plan_with(
        txns,
        &PlanOptions {
            applied,
            ..PlanOptions::default()
        },
    )
}

/// Plans `txns` as `options` say.
pub fn plan_with<'a>(txns: &'a [Transaction], options: &PlanOptions<'_>) -> Result<Plan<'a>, PlanError> {
    let applied = options.applied;
    let mut b = Builder::default();
    let mut previous: Option<u64> = None;
    for ev in txns.iter().flat_map(|t| t.events.iter()) {
        if let Some(p) = previous {
            if ev.seq <= p {
                return Err(PlanError::OutOfOrder {
                    seq: ev.seq,
                    previous: p,
                });
            }
        }
        previous = Some(ev.seq);
        if ev.seq <= applied {
            continue;
        }
        let table = &ev.table;
        let skipped = options.skip.is_some_and(|s| s.contains(&table.id))
            || options.only.is_some_and(|o| !o.contains(&table.id));
        if skipped {
            b.last_seq = Some(ev.seq);
            continue;
        }
        let width = table.columns.len();
        let check = |row: &Row| {
            if row.len() == width {
                Ok(())
            } else {
                Err(PlanError::RowWidth {
                    seq: ev.seq,
                    table: table.id.clone(),
                    got: row.len(),
                    expected: width,
                })
            }
        };
        if let Some(&index) = table.primary_key.iter().find(|&&i| i >= width) {
            return Err(PlanError::BadPrimaryKey {
                table: table.id.clone(),
                index,
            });
        }
        match &ev.op {
            Op::Ddl(change) => {
                b.close();
                b.steps.push(Step {
                    table,
                    action: Action::Ddl {
                        seq: ev.seq,
                        commit_ts_us: ev.txn.commit_ts_us,
                        change,
                    },
                });
            }
            Op::Snapshot(mark) => {
                b.close();
                b.steps.push(Step {
                    table,
                    action: Action::Snapshot { seq: ev.seq, mark },
                });
            }
            Op::Read { after } => {
                check(after)?;
                b.load(table, after);
            }
            Op::Truncate => {
                b.close();
                b.steps.push(Step {
                    table,
                    action: Action::Truncate,
                });
            }
            Op::Insert { after } => {
                check(after)?;
                if table.has_primary_key() {
                    b.upsert(table, after, None);
                } else {
                    b.insert_no_key(table, after);
                }
            }
            Op::Update { before, after } => {
                check(before)?;
                check(after)?;
                if table.has_primary_key() {
                    let cascades = changes_referenced(table, before, after);
                    if cascades {
                        b.close();
                    }
                    if key_of(table, before) != key_of(table, after) {
                        b.delete(table, before);
                        b.upsert(table, after, None);
                    } else {
                        b.upsert(table, after, Some(before));
                    }
                    if cascades {
                        b.close();
                        b.steps.push(Step {
                            table,
                            action: Action::Cascade(crate::cascade::Change::Update { before, after }),
                        });
                    }
                } else {
                    b.close();
                    b.steps.push(Step {
                        table,
                        action: Action::UpdateOne {
                            seq: ev.seq,
                            before,
                            after,
                        },
                    });
                    if changes_referenced(table, before, after) {
                        b.steps.push(Step {
                            table,
                            action: Action::Cascade(crate::cascade::Change::Update { before, after }),
                        });
                    }
                }
            }
            Op::Delete { before } => {
                check(before)?;
                if table.has_primary_key() && is_cascade_parent(table) {
                    b.cascading_delete(table, before);
                } else if table.has_primary_key() {
                    b.delete(table, before);
                } else {
                    b.close();
                    if is_cascade_parent(table) {
                        b.steps.push(Step {
                            table,
                            action: Action::Cascade(crate::cascade::Change::Delete(vec![before.as_slice()])),
                        });
                    }
                    b.steps.push(Step {
                        table,
                        action: Action::DeleteOne { seq: ev.seq, before },
                    });
                }
            }
        }
        b.last_seq = Some(ev.seq);
        b.events += 1;
        if options.source_order {
            b.close();
        }
    }
    b.close();
    Ok(Plan {
        steps: b.steps,
        last_seq: b.last_seq,
        events: b.events,
    })
}

/// True when other tables' foreign keys reference `table` with an action that
/// changes their rows.
fn is_cascade_parent(table: &TableSchema) -> bool {
    table.cascades.iter().any(|e| e.referenced_table == table.id)
}

/// True when an update from `before` to `after` changes columns that a
/// foreign key with an `ON UPDATE` action references.
fn changes_referenced(table: &TableSchema, before: &Row, after: &Row) -> bool {
    table
        .cascades
        .iter()
        .filter(|e| e.referenced_table == table.id && e.on_update.changes_rows())
        .flat_map(|e| &e.referenced_columns)
        .filter_map(|c| table.column_index(c))
        .any(|i| before.get(i) != after.get(i))
}

/// Same table: the same definition (pointer equality first, it is the common case).
fn same_table(a: &Arc<TableSchema>, b: &Arc<TableSchema>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// The open run of key operations on one table.
struct Run<'a> {
    table: &'a Arc<TableSchema>,
    deletes: Vec<&'a Row>,
    delete_keys: HashSet<Vec<u8>>,
    upserts: Vec<&'a Row>,
    upsert_slots: HashMap<Vec<u8>, usize>,
    /// Unique-key values (key index, encoded values) that rows updated in this
    /// run held when it started, with the primary key of the row holding each.
    initial_unique: HashMap<(usize, Vec<u8>), Vec<u8>>,
}

/// The open run of plain inserts into one table without a key.
struct Inserts<'a> {
    table: &'a Arc<TableSchema>,
    rows: Vec<&'a Row>,
}

/// Deletes from one cascade parent: the table, the rows, their keys.
type CascadingDeletes<'a> = (&'a Arc<TableSchema>, Vec<&'a Row>, HashSet<Vec<u8>>);

/// Snapshot rows of one table, with each key's slot.
type Loads<'a> = (&'a Arc<TableSchema>, Vec<&'a Row>, HashMap<Vec<u8>, usize>);

#[derive(Default)]
struct Builder<'a> {
    steps: Vec<Step<'a>>,
    run: Option<Run<'a>>,
    inserts: Option<Inserts<'a>>,
    /// Consecutive deletes from a table whose rows other tables' foreign keys
    /// reference with a cascading action: emitted as one cascade step and
    /// one delete step.
    cascading_deletes: Option<CascadingDeletes<'a>>,
    /// Snapshot rows of one table (a key read twice keeps its last image).
    loads: Option<Loads<'a>>,
    last_seq: Option<u64>,
    events: usize,
}

impl<'a> Builder<'a> {
    /// Emits whatever is open.
    fn close(&mut self) {
        if let Some((table, rows, _)) = self.cascading_deletes.take() {
            self.steps.push(Step {
                table,
                action: Action::Cascade(crate::cascade::Change::Delete(
                    rows.iter().map(|r| r.as_slice()).collect(),
                )),
            });
            self.steps.push(Step {
                table,
                action: Action::Delete(rows),
            });
        }
        if let Some(run) = self.run.take() {
            if !run.deletes.is_empty() {
                self.steps.push(Step {
                    table: run.table,
                    action: Action::Delete(run.deletes),
                });
            }
            if !run.upserts.is_empty() {
                self.steps.push(Step {
                    table: run.table,
                    action: Action::Upsert(run.upserts),
                });
            }
        }
        if let Some(ins) = self.inserts.take() {
            self.steps.push(Step {
                table: ins.table,
                action: Action::Insert(ins.rows),
            });
        }
        if let Some((table, rows, _)) = self.loads.take() {
            self.steps.push(Step {
                table,
                action: Action::Load(rows),
            });
        }
    }

    /// A snapshot row.
    fn load(&mut self, table: &'a Arc<TableSchema>, row: &'a Row) {
        let reuse = matches!(&self.loads, Some((t, _, _)) if same_table(t, table))
            && self.run.is_none()
            && self.inserts.is_none()
            && self.cascading_deletes.is_none();
        if !reuse {
            self.close();
            self.loads = Some((table, Vec::new(), HashMap::new()));
        }
        let (_, rows, slots) = self.loads.as_mut().expect("just opened");
        if !table.has_primary_key() {
            rows.push(row);
            return;
        }
        match slots.get(&key_of(table, row)) {
            Some(&slot) => rows[slot] = row,
            None => {
                slots.insert(key_of(table, row), rows.len());
                rows.push(row);
            }
        }
    }

    /// The open key run for `table`, closing anything else that is open.
    fn run_for(&mut self, table: &'a Arc<TableSchema>) -> &mut Run<'a> {
        let reuse = matches!(&self.run, Some(r) if same_table(r.table, table))
            && self.inserts.is_none()
            && self.loads.is_none();
        if !reuse {
            self.close();
            self.run = Some(Run {
                table,
                deletes: Vec::new(),
                delete_keys: HashSet::new(),
                upserts: Vec::new(),
                upsert_slots: HashMap::new(),
                initial_unique: HashMap::new(),
            });
        }
        self.run.as_mut().expect("just opened")
    }

    /// Upserts `row`; `before` is the row's image before this event when the
    /// event is an update that keeps the key.
    fn upsert(&mut self, table: &'a Arc<TableSchema>, row: &'a Row, before: Option<&'a Row>) {
        let key = key_of(table, row);
        if !table.unique_keys.is_empty() {
            // Would this row, written at its slot, take a unique value that
            // another row of the run still holds from before the run? Then the
            // run cannot be executed set-based: start a new one here.
            let conflict = matches!(&self.run, Some(r) if same_table(r.table, table)
                && unique_values(table, row).any(|v| r.initial_unique.get(&v).is_some_and(|k| *k != key)));
            if conflict {
                self.close();
            }
        }
        let run = self.run_for(table);
        if let Some(before) = before {
            if !table.unique_keys.is_empty() && !run.upsert_slots.contains_key(&key) {
                for v in unique_values(table, before) {
                    run.initial_unique.entry(v).or_insert_with(|| key.clone());
                }
            }
        }
        match run.upsert_slots.get(&key) {
            Some(&slot) => run.upserts[slot] = row,
            None => {
                run.upsert_slots.insert(key, run.upserts.len());
                run.upserts.push(row);
            }
        }
    }

    fn delete(&mut self, table: &'a Arc<TableSchema>, row: &'a Row) {
        let key = key_of(table, row);
        if matches!(&self.run, Some(r) if same_table(r.table, table) && r.upsert_slots.contains_key(&key)) {
            // Moving this delete in front of the earlier upsert of the same key
            // would change the result: start a new run after it.
            self.close();
        }
        let run = self.run_for(table);
        if run.delete_keys.insert(key) {
            run.deletes.push(row);
        }
    }

    /// A delete from a cascade parent (a table with a primary key).
    fn cascading_delete(&mut self, table: &'a Arc<TableSchema>, row: &'a Row) {
        let reuse = matches!(&self.cascading_deletes, Some((t, _, _)) if same_table(t, table))
            && self.run.is_none()
            && self.inserts.is_none()
            && self.loads.is_none();
        if !reuse {
            self.close();
            self.cascading_deletes = Some((table, Vec::new(), HashSet::new()));
        }
        let (_, rows, keys) = self.cascading_deletes.as_mut().expect("just opened");
        if keys.insert(key_of(table, row)) {
            rows.push(row);
        }
    }

    fn insert_no_key(&mut self, table: &'a Arc<TableSchema>, row: &'a Row) {
        let reuse = matches!(&self.inserts, Some(i) if same_table(i.table, table)) && self.loads.is_none();
        if !reuse {
            self.close();
            self.inserts = Some(Inserts {
                table,
                rows: Vec::new(),
            });
        }
        self.inserts.as_mut().expect("just opened").rows.push(row);
    }
}

/// The values of `row` in each unique key of `table` (key index, encoded
/// values), leaving out keys with a NULL part (they never collide).
fn unique_values<'r>(table: &'r TableSchema, row: &'r Row) -> impl Iterator<Item = (usize, Vec<u8>)> + 'r {
    table.unique_keys.iter().enumerate().filter_map(move |(i, cols)| {
        if cols.iter().any(|&c| row.get(c).is_none_or(Value::is_null)) {
            return None;
        }
        let mut out = Vec::new();
        for &c in cols {
            encode_key_value(&row[c], &mut out);
        }
        Some((i, out))
    })
}

/// The primary-key values of `row`, encoded so that equal bytes mean equal
/// source values (a tag per variant, lengths before variable parts).
pub fn key_of(table: &TableSchema, row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * table.primary_key.len());
    for &i in &table.primary_key {
        encode_key_value(&row[i], &mut out);
    }
    out
}

fn encode_key_value(v: &Value, out: &mut Vec<u8>) {
    fn var(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    match v {
        Value::Null => out.push(0),
        Value::Int(x) => {
            out.push(1);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::UInt(x) => {
            out.push(2);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::Float(x) => {
            out.push(3);
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Value::Double(x) => {
            out.push(4);
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Value::Decimal(s) => var(5, s.as_bytes(), out),
        Value::Date(d) => {
            out.push(6);
            out.extend_from_slice(&d.year.to_le_bytes());
            out.extend_from_slice(&[d.month, d.day]);
        }
        Value::Time(t) => {
            out.push(7);
            out.extend_from_slice(&t.total_micros().to_le_bytes());
        }
        Value::DateTime(dt) => {
            out.push(8);
            out.extend_from_slice(&dt.date.year.to_le_bytes());
            out.extend_from_slice(&[dt.date.month, dt.date.day, dt.hour, dt.minute, dt.second]);
            out.extend_from_slice(&dt.micros.to_le_bytes());
        }
        Value::Timestamp(x) => {
            out.push(9);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::Year(y) => {
            out.push(10);
            out.extend_from_slice(&y.to_le_bytes());
        }
        Value::Text(s) => var(11, s.as_bytes(), out),
        Value::Bytes(b) => var(12, b, out),
        Value::Json(s) => var(13, s.as_bytes(), out),
        Value::Enum(s) => var(14, s.as_bytes(), out),
        Value::Set(members) => {
            out.push(15);
            out.extend_from_slice(&(members.len() as u64).to_le_bytes());
            for m in members {
                var(16, m.as_bytes(), out);
            }
        }
        Value::Bit(x) => {
            out.push(17);
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
}

/// A rough size in bytes of a value on the wire, for statement-size limits.
pub fn approx_size(v: &Value) -> usize {
    match v {
        Value::Null => 1,
        Value::Int(_) | Value::UInt(_) | Value::Double(_) | Value::Timestamp(_) | Value::Bit(_) => 8,
        Value::Float(_) => 4,
        Value::Year(_) => 2,
        Value::Date(_) => 4,
        Value::Time(_) | Value::DateTime(_) => 12,
        Value::Decimal(s) | Value::Text(s) | Value::Json(s) | Value::Enum(s) => s.len() + 2,
        Value::Bytes(b) => 2 * b.len() + 4,
        Value::Set(m) => m.iter().map(|s| s.len() + 1).sum::<usize>() + 2,
    }
}

/// Approximate size of a row (see [`approx_size`]).
pub fn row_size(row: &Row) -> usize {
    row.iter().map(approx_size).sum::<usize>() + 4
}

/// Splits `rows` into consecutive chunks of at most `max_rows` rows and, past
/// the first row of a chunk, at most `max_bytes` approximate bytes.
pub fn chunks<'r, 'a>(rows: &'r [&'a Row], max_rows: usize, max_bytes: usize) -> Vec<&'r [&'a Row]> {
    let max_rows = max_rows.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, row) in rows.iter().enumerate() {
        let size = row_size(row);
        if i > start && (i - start >= max_rows || bytes + size > max_bytes) {
            out.push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::sequence_transaction;
    use crate::position::Position;
    use crate::schema::{ColumnDef, ColumnType, TableId};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    fn table(name: &str, with_key: bool) -> Arc<TableSchema> {
        let col = |n: &str| ColumnDef {
            name: n.into(),
            ty: ColumnType::Integer {
                bytes: 4,
                unsigned: false,
            },
            nullable: false,
            charset: None,
            collation: None,
            source_type: "int".into(),
        };
        Arc::new(TableSchema {
            id: TableId::new("db", name),
            columns: vec![col("id"), col("v")],
            primary_key: if with_key { vec![0] } else { vec![] },
            ..Default::default()
        })
    }

    fn row(id: i64, v: i64) -> Row {
        vec![Value::Int(id), Value::Int(v)]
    }

    /// Table `u`: `id` primary key, `v` a UNIQUE key.
    fn unique_table() -> Arc<TableSchema> {
        let mut t = (*table("u", true)).clone();
        t.unique_keys = vec![vec![1]];
        Arc::new(t)
    }

    fn txn(seq: u64, changes: Vec<(Arc<TableSchema>, Op)>) -> Transaction {
        sequence_transaction(seq, format!("t{seq}"), 0, Position::Postgres(seq), changes)
    }

    fn ins(t: &Arc<TableSchema>, id: i64, v: i64) -> (Arc<TableSchema>, Op) {
        (t.clone(), Op::Insert { after: row(id, v) })
    }
    fn upd(t: &Arc<TableSchema>, b: (i64, i64), a: (i64, i64)) -> (Arc<TableSchema>, Op) {
        (
            t.clone(),
            Op::Update {
                before: row(b.0, b.1),
                after: row(a.0, a.1),
            },
        )
    }
    fn del(t: &Arc<TableSchema>, id: i64, v: i64) -> (Arc<TableSchema>, Op) {
        (t.clone(), Op::Delete { before: row(id, v) })
    }

    /// A compact picture of a plan: `U:t[1=10,2=20]`, `D:t[1]`, `I:t[..]`, ...
    fn show(p: &Plan<'_>) -> Vec<String> {
        let ids = |rows: &[&Row]| {
            rows.iter()
                .map(|r| match (&r[0], &r[1]) {
                    (Value::Int(a), Value::Int(b)) => format!("{a}={b}"),
                    _ => "?".into(),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        p.steps
            .iter()
            .map(|s| {
                let t = &s.table.id.name;
                match &s.action {
                    Action::Upsert(r) => format!("U:{t}[{}]", ids(r)),
                    Action::Delete(r) => format!("D:{t}[{}]", ids(r)),
                    Action::Insert(r) => format!("I:{t}[{}]", ids(r)),
                    Action::UpdateOne { before, after, .. } => {
                        format!("u:{t}[{}>{}]", ids(&[before]), ids(&[after]))
                    }
                    Action::DeleteOne { before, .. } => format!("d:{t}[{}]", ids(&[before])),
                    Action::Truncate => format!("T:{t}"),
                    Action::Cascade(_) => format!("C:{t}"),
                    Action::Load(r) => format!("L:{t}[{}]", ids(r)),
                    Action::Snapshot { .. } => format!("S:{t}"),
                    Action::Ddl { .. } => format!("DDL:{t}"),
                }
            })
            .collect()
    }

    #[test]
    fn groups_runs_per_table_in_order() {
        let a = table("a", true);
        let b = table("b", true);
        let txns = vec![
            txn(1, vec![ins(&a, 1, 10), ins(&a, 2, 20), upd(&a, (1, 10), (1, 11))]),
            txn(4, vec![ins(&b, 1, 1), del(&a, 2, 20), ins(&a, 3, 30)]),
        ];
        let p = plan(&txns, 0).unwrap();
        assert_eq!(p.last_seq, Some(6));
        assert_eq!(p.events, 6);
        assert_eq!(
            show(&p),
            ["U:a[1=11,2=20]", "U:b[1=1]", "D:a[2=20]", "U:a[3=30]"],
            "same-key upserts keep the last image; tables are never interleaved"
        );
    }

    #[test]
    fn skips_events_at_or_below_the_offset() {
        let a = table("a", true);
        let txns = vec![
            txn(1, vec![ins(&a, 1, 1), ins(&a, 2, 2)]),
            txn(3, vec![ins(&a, 3, 3)]),
        ];
        let p = plan(&txns, 2).unwrap();
        assert_eq!(show(&p), ["U:a[3=3]"]);
        assert_eq!(p.last_seq, Some(3));
        let p = plan(&txns, 3).unwrap();
        assert!(p.steps.is_empty());
        assert_eq!(p.last_seq, None);
        assert_eq!(p.events, 0);
    }

    #[test]
    fn key_change_is_delete_then_upsert() {
        let a = table("a", true);
        let txns = vec![txn(1, vec![upd(&a, (1, 5), (2, 5))])];
        assert_eq!(show(&plan(&txns, 0).unwrap()), ["D:a[1=5]", "U:a[2=5]"]);
    }

    #[test]
    fn chained_key_changes_batch_until_a_delete_would_overtake_its_upsert() {
        let a = table("a", true);
        // Shift ids up, highest first (`SET id = id + 1 ORDER BY id DESC`): no
        // delete targets a key upserted before it, so everything batches.
        let shift = vec![txn(
            1,
            vec![
                upd(&a, (3, 30), (4, 30)),
                upd(&a, (2, 20), (3, 20)),
                upd(&a, (1, 10), (2, 10)),
            ],
        )];
        assert_eq!(
            show(&plan(&shift, 0).unwrap()),
            ["D:a[3=30,2=20,1=10]", "U:a[4=30,3=20,2=10]"]
        );
        // One row moving twice: 2 is upserted by the first update and deleted by
        // the second; that delete must not move in front of the upsert.
        let moving = vec![txn(1, vec![upd(&a, (1, 10), (2, 10)), upd(&a, (2, 10), (3, 10))])];
        assert_eq!(
            show(&plan(&moving, 0).unwrap()),
            ["D:a[1=10]", "U:a[2=10]", "D:a[2=10]", "U:a[3=10]"]
        );
    }

    #[test]
    fn delete_then_reinsert_of_a_key_is_not_collapsed_wrongly() {
        let a = table("a", true);
        let txns = vec![txn(
            1,
            vec![ins(&a, 1, 1), del(&a, 1, 1), ins(&a, 1, 2), del(&a, 1, 2)],
        )];
        assert_eq!(
            show(&plan(&txns, 0).unwrap()),
            ["U:a[1=1]", "D:a[1=1]", "U:a[1=2]", "D:a[1=2]"]
        );
        let txns = vec![txn(1, vec![del(&a, 1, 1), ins(&a, 1, 2)])];
        assert_eq!(show(&plan(&txns, 0).unwrap()), ["D:a[1=1]", "U:a[1=2]"]);
    }

    #[test]
    fn tables_without_key_keep_every_event_in_order() {
        let n = table("n", false);
        let txns = vec![txn(
            1,
            vec![
                ins(&n, 1, 1),
                ins(&n, 1, 1),
                upd(&n, (1, 1), (1, 2)),
                del(&n, 1, 1),
                ins(&n, 5, 5),
            ],
        )];
        assert_eq!(
            show(&plan(&txns, 0).unwrap()),
            ["I:n[1=1,1=1]", "u:n[1=1>1=2]", "d:n[1=1]", "I:n[5=5]"]
        );
    }

    #[test]
    fn truncate_is_a_barrier() {
        let a = table("a", true);
        let txns = vec![txn(
            1,
            vec![ins(&a, 1, 1), (a.clone(), Op::Truncate), ins(&a, 1, 2)],
        )];
        assert_eq!(show(&plan(&txns, 0).unwrap()), ["U:a[1=1]", "T:a", "U:a[1=2]"]);
    }

    #[test]
    fn ddl_and_snapshot_events_are_barriers() {
        use crate::ddl::{DdlKind, SchemaChange};
        use crate::snapshot::{SnapshotMark, SnapshotPhase};
        let a = table("a", true);
        let n = table("n", false);
        let change = SchemaChange {
            statement: "ALTER TABLE a ADD c INT".into(),
            default_schema: "app".into(),
            kind: DdlKind::AlterTable { actions: vec![] },
            unique_key_names: vec![],
        };
        let mark = SnapshotMark {
            id: 1,
            targets: vec![],
            reset: false,
            phase: SnapshotPhase::Chunk {
                index: 0,
                upto: None,
                rows: 3,
                last: true,
                whole: false,
                create: None,
            },
        };
        let read = |t: &Arc<TableSchema>, id: i64, v: i64| (t.clone(), Op::Read { after: row(id, v) });
        let txns = vec![
            txn(
                1,
                vec![
                    ins(&a, 1, 1),
                    (a.clone(), Op::Ddl(Box::new(change))),
                    ins(&a, 2, 2),
                ],
            ),
            txn(
                4,
                vec![
                    (a.clone(), Op::Snapshot(Box::new(mark.clone()))),
                    read(&a, 5, 5),
                    read(&a, 6, 6),
                    read(&a, 5, 7),
                ],
            ),
            txn(
                8,
                vec![
                    (n.clone(), Op::Snapshot(Box::new(mark))),
                    read(&n, 1, 1),
                    read(&n, 1, 1),
                ],
            ),
        ];
        let p = plan(&txns, 0).unwrap();
        let kinds: Vec<String> = p
            .steps
            .iter()
            .map(|s| match &s.action {
                Action::Ddl { .. } => "DDL".to_string(),
                Action::Snapshot { .. } => "SNAP".to_string(),
                Action::Load(rows) => format!(
                    "L{}",
                    rows.iter().map(|r| format!("{:?}", pair(r))).collect::<String>()
                ),
                Action::Upsert(_) => "U".to_string(),
                _ => "?".to_string(),
            })
            .collect();
        // The last image of a key read twice wins; a table without a key keeps every row.
        assert_eq!(
            kinds,
            ["U", "DDL", "U", "SNAP", "L(5, 7)(6, 6)", "SNAP", "L(1, 1)(1, 1)"]
        );
        // Already applied: nothing.
        assert!(plan(&txns, 10).unwrap().steps.is_empty());
    }

    #[test]
    fn rejects_bad_rows_and_disorder() {
        let a = table("a", true);
        let narrow = vec![txn(
            1,
            vec![(
                a.clone(),
                Op::Insert {
                    after: vec![Value::Int(1)],
                },
            )],
        )];
        assert!(matches!(
            plan(&narrow, 0),
            Err(PlanError::RowWidth {
                got: 1,
                expected: 2,
                ..
            })
        ));
        let disorder = vec![txn(5, vec![ins(&a, 1, 1)]), txn(3, vec![ins(&a, 2, 2)])];
        assert!(matches!(
            plan(&disorder, 0),
            Err(PlanError::OutOfOrder { seq: 3, previous: 5 })
        ));
    }

    #[test]
    fn same_definition_in_another_arc_is_the_same_table() {
        let a1 = table("a", true);
        let a2 = table("a", true);
        let txns = vec![txn(1, vec![ins(&a1, 1, 1), ins(&a2, 2, 2)])];
        assert_eq!(show(&plan(&txns, 0).unwrap()), ["U:a[1=1,2=2]"]);
    }

    #[test]
    fn chunks_respect_rows_and_bytes() {
        let rows: Vec<Row> = (0..10).map(|i| row(i, i)).collect();
        let refs: Vec<&Row> = rows.iter().collect();
        let sizes: Vec<usize> = chunks(&refs, 4, usize::MAX).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let one = row_size(&rows[0]);
        let sizes: Vec<usize> = chunks(&refs, 100, 3 * one).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        // A single row larger than the byte limit still goes out alone.
        let sizes: Vec<usize> = chunks(&refs, 100, 1).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [1; 10]);
        assert!(chunks(&[], 10, 10).is_empty());
    }

    #[test]
    fn keys_distinguish_types_and_lengths() {
        let t = table("a", true);
        let k = |v: Value| key_of(&t, &vec![v, Value::Null]);
        assert_ne!(k(Value::Int(1)), k(Value::UInt(1)));
        assert_ne!(k(Value::Text("ab".into())), k(Value::Bytes(b"ab".to_vec())));
        assert_ne!(
            k(Value::Set(vec!["a".into(), "b".into()])),
            k(Value::Set(vec!["ab".into()]))
        );
        assert_eq!(k(Value::Text("x".into())), k(Value::Text("x".into())));
    }

    // ---- model check: executing the plan equals executing each event ----

    type Keyed = BTreeMap<i64, i64>;

    #[derive(Default, Clone, PartialEq, Debug)]
    struct State {
        keyed: BTreeMap<String, Keyed>,
        /// Rows of the key-less table, as a sorted multiset.
        bag: Vec<(i64, i64)>,
    }

    fn pair(r: &Row) -> (i64, i64) {
        match (&r[0], &r[1]) {
            (Value::Int(a), Value::Int(b)) => (*a, *b),
            _ => unreachable!(),
        }
    }

    fn run_events(state: &mut State, txns: &[Transaction], applied: u64) {
        for ev in txns.iter().flat_map(|t| &t.events).filter(|e| e.seq > applied) {
            let name = ev.table.id.name.clone();
            if !ev.table.has_primary_key() {
                match &ev.op {
                    Op::Insert { after } => state.bag.push(pair(after)),
                    Op::Update { before, after } => {
                        let i = state.bag.iter().position(|r| *r == pair(before)).unwrap();
                        state.bag[i] = pair(after);
                    }
                    Op::Delete { before } => {
                        let i = state.bag.iter().position(|r| *r == pair(before)).unwrap();
                        state.bag.remove(i);
                    }
                    Op::Truncate => state.bag.clear(),
                    Op::Ddl(_) | Op::Read { .. } | Op::Snapshot(_) => unreachable!(),
                }
                continue;
            }
            let unique = !ev.table.unique_keys.is_empty();
            let m = state.keyed.entry(name).or_default();
            match &ev.op {
                Op::Insert { after } => {
                    let (k, v) = pair(after);
                    m.insert(k, v);
                    assert!(
                        !unique || m.values().filter(|&&x| x == v).count() == 1,
                        "invalid history"
                    );
                }
                Op::Update { before, after } => {
                    m.remove(&pair(before).0);
                    let (k, v) = pair(after);
                    m.insert(k, v);
                }
                Op::Delete { before } => {
                    m.remove(&pair(before).0);
                }
                Op::Truncate => m.clear(),
                Op::Ddl(_) | Op::Read { .. } | Op::Snapshot(_) => unreachable!(),
            }
        }
        state.bag.sort();
    }

    fn run_plan(state: &mut State, p: &Plan<'_>) {
        for s in &p.steps {
            let name = s.table.id.name.clone();
            match &s.action {
                Action::Upsert(rows) => {
                    let mut seen = HashSet::new();
                    let unique = !s.table.unique_keys.is_empty();
                    let m = state.keyed.entry(name).or_default();
                    for r in rows {
                        let (k, v) = pair(r);
                        assert!(seen.insert(k), "duplicate key {k} in one upsert step");
                        // The replica's unique index checks every row as it is written.
                        assert!(
                            !unique || !m.iter().any(|(&k2, &v2)| k2 != k && v2 == v),
                            "upsert of {k}={v} collides with a unique value another row still holds"
                        );
                        m.insert(k, v);
                    }
                }
                Action::Delete(rows) => {
                    let mut seen = HashSet::new();
                    let m = state.keyed.entry(name).or_default();
                    for r in rows {
                        let k = pair(r).0;
                        assert!(seen.insert(k), "duplicate key {k} in one delete step");
                        m.remove(&k);
                    }
                }
                Action::Insert(rows) => state.bag.extend(rows.iter().map(|r| pair(r))),
                Action::UpdateOne { before, after, .. } => {
                    let i = state.bag.iter().position(|r| *r == pair(before)).unwrap();
                    state.bag[i] = pair(after);
                }
                Action::DeleteOne { before, .. } => {
                    let i = state.bag.iter().position(|r| *r == pair(before)).unwrap();
                    state.bag.remove(i);
                }
                Action::Cascade(_) | Action::Load(_) | Action::Snapshot { .. } | Action::Ddl { .. } => {}
                Action::Truncate => {
                    if s.table.has_primary_key() {
                        state.keyed.entry(name).or_default().clear();
                    } else {
                        state.bag.clear();
                    }
                }
            }
        }
        state.bag.sort();
    }

    /// Random valid histories over two keyed tables (keys 0..6, so collisions,
    /// key swaps and re-inserts are frequent) and one key-less table.
    fn random_history(rng: &mut StdRng, start: &State) -> Vec<Transaction> {
        let tables = [table("a", true), table("b", true)];
        let bag_table = table("n", false);
        let u = unique_table();
        let mut state = start.clone();
        let mut txns = Vec::new();
        let mut seq = 1;
        for _ in 0..rng.gen_range(1..6) {
            let mut changes = Vec::new();
            for _ in 0..rng.gen_range(1..12) {
                let v = rng.gen_range(0..100);
                if rng.gen_bool(0.3) {
                    // Table `u` with a UNIQUE `v` (values 0..6, so most are taken).
                    let m = state.keyed.entry("u".into()).or_default();
                    let free_v = |m: &BTreeMap<i64, i64>| {
                        (0..6)
                            .filter(|x| !m.values().any(|v| v == x))
                            .collect::<Vec<i64>>()
                    };
                    let free_k: Vec<i64> = (0..6).filter(|k| !m.contains_key(k)).collect();
                    let fv = free_v(m);
                    let keys: Vec<i64> = m.keys().copied().collect();
                    match rng.gen_range(0..6) {
                        0 if !free_k.is_empty() && !fv.is_empty() => {
                            let (k, nv) = (
                                free_k[rng.gen_range(0..free_k.len())],
                                fv[rng.gen_range(0..fv.len())],
                            );
                            m.insert(k, nv);
                            changes.push((u.clone(), Op::Insert { after: row(k, nv) }));
                        }
                        1 if !keys.is_empty() && !fv.is_empty() => {
                            let k = keys[rng.gen_range(0..keys.len())];
                            let (old, nv) = (m[&k], fv[rng.gen_range(0..fv.len())]);
                            m.insert(k, nv);
                            changes.push((
                                u.clone(),
                                Op::Update {
                                    before: row(k, old),
                                    after: row(k, nv),
                                },
                            ));
                        }
                        2 if keys.len() >= 2 && !fv.is_empty() => {
                            // Swap two rows' unique values through a temporary one.
                            let k1 = keys[rng.gen_range(0..keys.len())];
                            let k2 = *keys.iter().find(|&&k| k != k1).unwrap();
                            let (a, b, t) = (m[&k1], m[&k2], fv[0]);
                            changes.push((
                                u.clone(),
                                Op::Update {
                                    before: row(k1, a),
                                    after: row(k1, t),
                                },
                            ));
                            changes.push((
                                u.clone(),
                                Op::Update {
                                    before: row(k2, b),
                                    after: row(k2, a),
                                },
                            ));
                            changes.push((
                                u.clone(),
                                Op::Update {
                                    before: row(k1, t),
                                    after: row(k1, b),
                                },
                            ));
                            m.insert(k1, b);
                            m.insert(k2, a);
                        }
                        3 if !keys.is_empty() => {
                            let k = keys[rng.gen_range(0..keys.len())];
                            let old = m.remove(&k).unwrap();
                            changes.push((u.clone(), Op::Delete { before: row(k, old) }));
                        }
                        4 if !keys.is_empty() && !free_k.is_empty() => {
                            let k = keys[rng.gen_range(0..keys.len())];
                            let nk = free_k[rng.gen_range(0..free_k.len())];
                            let old = m.remove(&k).unwrap();
                            m.insert(nk, old);
                            changes.push((
                                u.clone(),
                                Op::Update {
                                    before: row(k, old),
                                    after: row(nk, old),
                                },
                            ));
                        }
                        _ => {}
                    }
                    continue;
                }
                if rng.gen_bool(0.2) {
                    // key-less table
                    let op = if state.bag.is_empty() || rng.gen_bool(0.4) {
                        let r = (rng.gen_range(0..3), rng.gen_range(0..3));
                        state.bag.push(r);
                        Op::Insert { after: row(r.0, r.1) }
                    } else {
                        let i = rng.gen_range(0..state.bag.len());
                        let old = state.bag[i];
                        if rng.gen_bool(0.5) {
                            state.bag.remove(i);
                            Op::Delete {
                                before: row(old.0, old.1),
                            }
                        } else if rng.gen_bool(0.05) {
                            state.bag.clear();
                            Op::Truncate
                        } else {
                            let new = (old.0, rng.gen_range(0..3));
                            state.bag[i] = new;
                            Op::Update {
                                before: row(old.0, old.1),
                                after: row(new.0, new.1),
                            }
                        }
                    };
                    changes.push((bag_table.clone(), op));
                    continue;
                }
                let t = &tables[rng.gen_range(0..2)];
                let m = state.keyed.entry(t.id.name.clone()).or_default();
                let k = rng.gen_range(0..6);
                let op = match m.get(&k).copied() {
                    None => {
                        m.insert(k, v);
                        Op::Insert { after: row(k, v) }
                    }
                    Some(old) => match rng.gen_range(0..10) {
                        0..=2 => {
                            m.remove(&k);
                            Op::Delete { before: row(k, old) }
                        }
                        3..=5 => {
                            let free: Vec<i64> = (0..6).filter(|x| !m.contains_key(x)).collect();
                            if free.is_empty() {
                                m.insert(k, v);
                                Op::Update {
                                    before: row(k, old),
                                    after: row(k, v),
                                }
                            } else {
                                let nk = free[rng.gen_range(0..free.len())];
                                m.remove(&k);
                                m.insert(nk, old);
                                Op::Update {
                                    before: row(k, old),
                                    after: row(nk, old),
                                }
                            }
                        }
                        6 => {
                            m.clear();
                            Op::Truncate
                        }
                        _ => {
                            m.insert(k, v);
                            Op::Update {
                                before: row(k, old),
                                after: row(k, v),
                            }
                        }
                    },
                };
                changes.push((t.clone(), op));
            }
            let n = changes.len() as u64;
            txns.push(txn(seq, changes));
            seq += n;
        }
        txns
    }

    #[test]
    fn plans_have_the_effect_of_their_events() {
        for seed in 0..3000u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut start = State::default();
            for name in ["a", "b"] {
                let m = start.keyed.entry(name.into()).or_default();
                for k in 0..6 {
                    if rng.gen_bool(0.5) {
                        m.insert(k, rng.gen_range(0..100));
                    }
                }
            }
            for _ in 0..rng.gen_range(0..4) {
                start.bag.push((rng.gen_range(0..3), rng.gen_range(0..3)));
            }
            let m = start.keyed.entry("u".into()).or_default();
            let mut vs: Vec<i64> = (0..6).collect();
            for k in 0..6 {
                if rng.gen_bool(0.6) {
                    let i = rng.gen_range(0..vs.len());
                    m.insert(k, vs.remove(i));
                }
            }
            start.bag.sort();
            let txns = random_history(&mut rng, &start);
            let total: u64 = txns.iter().map(|t| t.len() as u64).sum();
            let applied = if rng.gen_bool(0.3) {
                rng.gen_range(0..=total)
            } else {
                0
            };
            // Events up to `applied` are already in the replica.
            let mut expected = start.clone();
            run_events(&mut expected, &txns, 0);
            let mut prefix = start.clone();
            let head: Vec<Transaction> = txns
                .iter()
                .map(|t| Transaction {
                    events: t.events.iter().filter(|e| e.seq <= applied).cloned().collect(),
                })
                .collect();
            run_events(&mut prefix, &head, 0);
            let mut replica = prefix;
            let p = plan(&txns, applied).unwrap();
            run_plan(&mut replica, &p);
            for s in [&mut replica, &mut expected] {
                s.keyed.retain(|_, m| !m.is_empty());
            }
            assert_eq!(replica, expected, "seed {seed}: {:?}", show(&p));
            assert_eq!(p.events as u64, total - applied.min(total), "seed {seed}");
        }
    }
}
