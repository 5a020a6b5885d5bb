//! Foreign-key cascades, performed by the applier from the replica's own data.
//!
//! # Why the applier does it
//! MariaDB and MySQL 8 change rows in InnoDB when a foreign key cascades
//! (`ON DELETE CASCADE`, `ON UPDATE CASCADE`, `SET NULL`) and never write those
//! rows to the binlog: the binlog has the parent's change only. Replica tables
//! carry no foreign keys (a replica built from a stream that starts after the
//! source's first row, or loaded table by table, could never satisfy them), so
//! an applier that replays the binlog alone would keep the child rows the
//! source deleted or changed. Capture therefore records, with every table, the
//! foreign keys whose actions change rows when its rows change, transitively
//! ([`crate::schema::TableSchema::cascades`]); the planner places a cascade step
//! right where the parent's change happens ([`crate::batch`]); and this module
//! performs the same actions the source did, on the replica, with the same
//! matching rule (`=` under the column's comparison).
//!
//! # What it does
//! - a parent row deleted: for each key referencing it with `ON DELETE
//!   CASCADE`, the referencing rows are deleted (first their own referencing
//!   rows, recursively); with `ON DELETE SET NULL` their referencing columns
//!   become NULL (and keys referencing those columns follow as an update);
//! - a parent row's referenced columns changed: with `ON UPDATE CASCADE` the
//!   referencing columns take the new values, with `SET NULL` they become NULL;
//!   recursively for keys referencing the changed columns, one parent row at a
//!   time in source order;
//! - `RESTRICT` / `NO ACTION`: nothing (the source refused the change while
//!   referencing rows existed, so none existed);
//! - `SET DEFAULT` (which InnoDB refuses to create) and chains deeper than
//!   InnoDB's limit of 15 are definite errors.
//!
//! A key whose referenced values contain NULL references nothing. Tables in
//! `skip` (quarantined on this replica) are not changed.

use crate::schema::{FkAction, ForeignKey, TableId, TableSchema};
use crate::value::Value;
use std::future::Future;

/// Which tables a cascade must leave alone (quarantined on this replica).
pub type Skip<'a> = dyn Fn(&TableId) -> bool + Send + Sync + 'a;

/// A boxed step of the recursion.
type Level<'a, E> = std::pin::Pin<Box<dyn Future<Output = Result<(), CascadeError<E>>> + Send + 'a>>;

/// InnoDB's limit on cascade depth (`FK_MAX_CASCADE_DEL`).
pub const MAX_DEPTH: usize = 15;

/// A foreign key of `table` whose referenced table capture does not read
/// while its action changes rows: the source changes rows of `table` that no
/// event will ever show (`None` when there is none).
pub fn uncaptured_parent(table: &TableSchema) -> Option<&ForeignKey> {
    table
        .foreign_keys
        .iter()
        .find(|f| !f.referenced_captured && (f.on_delete.changes_rows() || f.on_update.changes_rows()))
}

/// The message for [`uncaptured_parent`].
pub fn uncaptured_parent_message(f: &ForeignKey) -> String {
    format!(
        "foreign key {} references {}, which is not captured, with a cascading action: the source changes \
         this table's rows through it without any event reaching the replica; include {} in the capture, \
         or exclude this table",
        f.name, f.referenced_table, f.referenced_table
    )
}

/// What happened to the parent rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<'a> {
    /// These rows (full images) were deleted.
    Delete(Vec<&'a [Value]>),
    /// This row changed from `before` to `after`.
    Update { before: &'a [Value], after: &'a [Value] },
}

/// Why a cascade could not be performed.
#[derive(Debug, thiserror::Error)]
pub enum CascadeError<E> {
    #[error("foreign key {key} on {table}: ON {on} SET DEFAULT is not supported (InnoDB does not support it either)")]
    SetDefault {
        key: String,
        table: TableId,
        on: &'static str,
    },
    #[error("foreign key cascade from {table} is deeper than {MAX_DEPTH} levels")]
    TooDeep { table: TableId },
    #[error(transparent)]
    Store(E),
}

/// Rows of one table, as values of some of its columns (by source name).
#[derive(Debug, Clone)]
struct RowSet<V> {
    columns: Vec<String>,
    rows: Vec<Vec<V>>,
}

impl<V: Clone> RowSet<V> {
    /// The values of `cols` in each row; `None` when a column is not in the set.
    fn project(&self, cols: &[String]) -> Option<Vec<Vec<V>>> {
        let idx: Vec<usize> = cols
            .iter()
            .map(|c| self.columns.iter().position(|x| x == c))
            .collect::<Option<_>>()?;
        Some(
            self.rows
                .iter()
                .map(|r| idx.iter().map(|&i| r[i].clone()).collect())
                .collect(),
        )
    }
}

/// The replica side of cascades: reads and changes rows of a table by the
/// values of some of its columns. Tables and columns are named as at the
/// source; the store maps them to the replica's names. A table the replica
/// does not have holds no rows: `select` returns none and the changes change
/// none.
pub trait CascadeStore: Send {
    /// A value as the store binds and reads it.
    type Val: Clone + PartialEq + Send + Sync;
    type Error: Send;

    /// The value of column `col` of `table` for `v` (from an event image).
    fn value(&self, table: &TableSchema, col: usize, v: &Value) -> Result<Self::Val, Self::Error>;

    fn is_null(v: &Self::Val) -> bool;

    /// NULL.
    fn null() -> Self::Val;

    /// The `want` columns of the rows of `table` whose `cols` equal one of `keys`.
    fn select(
        &mut self,
        table: &TableId,
        cols: &[String],
        keys: &[Vec<Self::Val>],
        want: &[String],
    ) -> impl Future<Output = Result<Vec<Vec<Self::Val>>, Self::Error>> + Send;

    /// Deletes the rows of `table` whose `cols` equal one of `keys`.
    fn delete(
        &mut self,
        table: &TableId,
        cols: &[String],
        keys: &[Vec<Self::Val>],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Sets `cols` to `new` (NULL when `None`) in the rows of `table` whose
    /// `cols` equal one of `keys`.
    fn update(
        &mut self,
        table: &TableId,
        cols: &[String],
        keys: &[Vec<Self::Val>],
        new: Option<&[Self::Val]>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Performs the cascades of `change` to rows of `table` (see the module
/// documentation). `skip`: tables not to change.
pub async fn cascade<S: CascadeStore>(
    store: &mut S,
    table: &TableSchema,
    change: &Change<'_>,
    skip: &Skip<'_>,
) -> Result<(), CascadeError<S::Error>> {
    let edges = &table.cascades;
    if !edges.iter().any(|e| e.referenced_table == table.id) {
        return Ok(());
    }
    let columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
    let image = |row: &[Value]| -> Result<Vec<S::Val>, CascadeError<S::Error>> {
        row.iter()
            .enumerate()
            .map(|(i, v)| store.value(table, i, v).map_err(CascadeError::Store))
            .collect()
    };
    match change {
        Change::Delete(rows) => {
            let rows = rows.iter().map(|r| image(r)).collect::<Result<Vec<_>, _>>()?;
            let set = RowSet { columns, rows };
            deleted(store, edges, &table.id, set, skip, 1).await
        }
        Change::Update { before, after } => {
            let old = RowSet {
                columns: columns.clone(),
                rows: vec![image(before)?],
            };
            let new = RowSet {
                columns,
                rows: vec![image(after)?],
            };
            updated(store, edges, &table.id, old, new, skip, 1).await
        }
    }
}

/// Keys (deduplicated, without NULL parts) from projected rows.
fn keys<S: CascadeStore>(rows: Vec<Vec<S::Val>>) -> Vec<Vec<S::Val>> {
    let mut out: Vec<Vec<S::Val>> = Vec::new();
    for r in rows {
        if !r.iter().any(S::is_null) && !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// Columns of `child` that keys referencing it need (for the next level),
/// optionally only for keys whose referenced columns intersect `changed`.
fn wanted(edges: &[ForeignKey], child: &TableId, changed: Option<&[String]>, on_delete: bool) -> Vec<String> {
    let mut want: Vec<String> = Vec::new();
    for e in edges.iter().filter(|e| e.referenced_table == *child) {
        let action = if on_delete { e.on_delete } else { e.on_update };
        if !action.changes_rows() {
            continue;
        }
        if let Some(ch) = changed {
            if !e.referenced_columns.iter().any(|c| ch.contains(c)) {
                continue;
            }
        }
        for c in &e.referenced_columns {
            if !want.contains(c) {
                want.push(c.clone());
            }
        }
    }
    want
}

/// Rows of `table` (values of `set.columns`) were deleted.
fn deleted<'a, S: CascadeStore>(
    store: &'a mut S,
    edges: &'a [ForeignKey],
    table: &'a TableId,
    set: RowSet<S::Val>,
    skip: &'a Skip<'a>,
    depth: usize,
) -> Level<'a, S::Error> {
    Box::pin(async move {
        if set.rows.is_empty() {
            return Ok(());
        }
        if depth > MAX_DEPTH {
            return Err(CascadeError::TooDeep { table: table.clone() });
        }
        for e in edges.iter().filter(|e| e.referenced_table == *table) {
            if skip(&e.table) {
                continue;
            }
            let Some(projected) = set.project(&e.referenced_columns) else {
                continue;
            };
            let k = keys::<S>(projected);
            if k.is_empty() {
                continue;
            }
            match e.on_delete {
                FkAction::Restrict => {}
                FkAction::SetDefault => {
                    return Err(CascadeError::SetDefault {
                        key: e.name.clone(),
                        table: e.table.clone(),
                        on: "DELETE",
                    })
                }
                FkAction::Cascade => {
                    let want = wanted(edges, &e.table, None, true);
                    if !want.is_empty() {
                        let rows = store
                            .select(&e.table, &e.columns, &k, &want)
                            .await
                            .map_err(CascadeError::Store)?;
                        let child = RowSet { columns: want, rows };
                        deleted(store, edges, &e.table, child, skip, depth + 1).await?;
                    }
                    store
                        .delete(&e.table, &e.columns, &k)
                        .await
                        .map_err(CascadeError::Store)?;
                }
                FkAction::SetNull => {
                    let want = wanted(edges, &e.table, Some(&e.columns), false);
                    let before = if want.is_empty() {
                        None
                    } else {
                        Some(
                            store
                                .select(&e.table, &e.columns, &k, &want)
                                .await
                                .map_err(CascadeError::Store)?,
                        )
                    };
                    store
                        .update(&e.table, &e.columns, &k, None)
                        .await
                        .map_err(CascadeError::Store)?;
                    if let Some(rows) = before {
                        let (old, new) = changed::<S>(&want, rows, &e.columns, None);
                        updated(store, edges, &e.table, old, new, skip, depth + 1).await?;
                    }
                }
            }
        }
        Ok(())
    })
}

/// `rows` (values of `want`) before and after `cols` took `values` (NULL when `None`).
fn changed<S: CascadeStore>(
    want: &[String],
    rows: Vec<Vec<S::Val>>,
    cols: &[String],
    values: Option<&[S::Val]>,
) -> (RowSet<S::Val>, RowSet<S::Val>) {
    let new_rows = rows
        .iter()
        .map(|r| {
            want.iter()
                .zip(r)
                .map(|(c, v)| match cols.iter().position(|x| x == c) {
                    Some(j) => values.map_or_else(S::null, |t| t[j].clone()),
                    None => v.clone(),
                })
                .collect()
        })
        .collect();
    (
        RowSet {
            columns: want.to_vec(),
            rows,
        },
        RowSet {
            columns: want.to_vec(),
            rows: new_rows,
        },
    )
}

/// Rows of `table` changed from `old` to `new` (pairwise; values of the same columns).
fn updated<'a, S: CascadeStore>(
    store: &'a mut S,
    edges: &'a [ForeignKey],
    table: &'a TableId,
    old: RowSet<S::Val>,
    new: RowSet<S::Val>,
    skip: &'a Skip<'a>,
    depth: usize,
) -> Level<'a, S::Error> {
    Box::pin(async move {
        if old.rows.is_empty() {
            return Ok(());
        }
        if depth > MAX_DEPTH {
            return Err(CascadeError::TooDeep { table: table.clone() });
        }
        for e in edges.iter().filter(|e| e.referenced_table == *table) {
            if skip(&e.table) || !e.on_update.changes_rows() {
                continue;
            }
            let Some(old_keys) = old.project(&e.referenced_columns) else {
                continue;
            };
            let Some(new_keys) = new.project(&e.referenced_columns) else {
                continue;
            };
            for (ok, nk) in old_keys.into_iter().zip(new_keys) {
                if ok.iter().any(S::is_null) || nk == ok {
                    continue;
                }
                // The new values: the parent's (CASCADE) or NULL (SET NULL).
                let target = match e.on_update {
                    FkAction::Cascade => Some(nk),
                    FkAction::SetNull => None,
                    FkAction::SetDefault => {
                        return Err(CascadeError::SetDefault {
                            key: e.name.clone(),
                            table: e.table.clone(),
                            on: "UPDATE",
                        })
                    }
                    FkAction::Restrict => continue,
                };
                let key = vec![ok];
                let want = wanted(edges, &e.table, Some(&e.columns), false);
                let before = if want.is_empty() {
                    None
                } else {
                    Some(
                        store
                            .select(&e.table, &e.columns, &key, &want)
                            .await
                            .map_err(CascadeError::Store)?,
                    )
                };
                store
                    .update(&e.table, &e.columns, &key, target.as_deref())
                    .await
                    .map_err(CascadeError::Store)?;
                if let Some(rows) = before {
                    let (child_old, child_new) = changed::<S>(&want, rows, &e.columns, target.as_deref());
                    updated(store, edges, &e.table, child_old, child_new, skip, depth + 1).await?;
                }
            }
        }
        Ok(())
    })
}
