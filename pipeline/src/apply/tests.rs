//! The applier against an in-memory engine: a small transactional store that
//! executes the statements the applier hands it (commands serialized as
//! JSON, values as parameters), with injected faults. It compares text keys
//! under `*_ci` collations case-insensitively, as a real server would, so
//! the set-based plan can trip a unique key the planner cannot see.

use super::*;
use crate::cascade::CascadeStore as _;
use crate::event::{sequence_transaction, Row};
use crate::position::Position;
use crate::retry::{Classify, ErrorClass};
use crate::schema::{ColumnDef, ColumnType, FkAction, ForeignKey};
use crate::sink::TableScoped;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct MemError {
    class: ErrorClass,
    /// A unique-key violation.
    constraint: bool,
    message: String,
}

impl MemError {
    fn transient(m: &str) -> Self {
        MemError {
            class: ErrorClass::Transient,
            constraint: false,
            message: m.into(),
        }
    }
    fn definite(m: String) -> Self {
        MemError {
            class: ErrorClass::Definite,
            constraint: false,
            message: m,
        }
    }
}

/// What a statement asks the store to do.
#[derive(Debug, Serialize, Deserialize)]
enum Cmd {
    Setup,
    Register,
    ReadOffset,
    WriteOffset,
    ReadQuarantines,
    StoreQuarantine,
    MoveQuarantine,
    Create {
        schema: TableSchema,
    },
    Drop {
        target: TableId,
    },
    ReadPending,
    StorePending,
    DropPending,
    DropSchemaState,
    ClearState,
    ReadNote,
    StoreNote,
    ClearNote,
    /// A schema change: the table's definition becomes `schema` (rows padded
    /// with NULL or cut); with `create`, it must not exist yet unless `retried`.
    Alter {
        schema: TableSchema,
        create: bool,
        retried: bool,
    },
    Rows {
        target: TableId,
        kind: u8,
    },
    UpdateOne {
        target: TableId,
    },
    DeleteOne {
        target: TableId,
    },
    Truncate {
        target: TableId,
    },
    Select {
        target: TableId,
        cols: Vec<String>,
        want: Vec<String>,
    },
    Delete {
        target: TableId,
        cols: Vec<String>,
    },
    Update {
        target: TableId,
        cols: Vec<String>,
        null: bool,
    },
}

#[derive(Clone, Default)]
struct Db {
    tables: BTreeMap<TableId, (TableSchema, Vec<Vec<Value>>)>,
    offsets: BTreeMap<String, u64>,
    quarantine: BTreeMap<(String, TableId), (u64, String)>,
    /// Pending snapshots: run per (consumer, source table).
    pending: BTreeMap<(String, TableId), u64>,
    /// Schema-change notes: seq per consumer.
    notes: BTreeMap<String, u64>,
}

/// Injected faults (counted over every `execute` of every connection).
#[derive(Default)]
struct Faults {
    executes: u64,
    /// Fail these executes (1-based) with this class.
    fail_at: BTreeMap<u64, ErrorClass>,
    /// Commit, then report a lost connection (the ambiguous commit).
    lose_commit_reply: u32,
    /// Fail an execute of this command (its JSON tag) as transient, after
    /// letting this many of them pass.
    fail_cmd: Option<(String, u32)>,
}

#[derive(Clone, Default)]
struct Server {
    db: Arc<Mutex<Db>>,
    faults: Arc<Mutex<Faults>>,
}

struct MemConn {
    server: Server,
    txn: Option<Db>,
}

impl MemConn {
    fn with_db<R>(&mut self, f: impl FnOnce(&mut Db) -> R) -> R {
        match &mut self.txn {
            Some(db) => f(db),
            None => f(&mut self.server.db.lock().unwrap()),
        }
    }
}

/// `AUTO`: schema changes commit by themselves (like MySQL's).
struct Mem<const AUTO: bool = false> {
    server: Server,
    limits: Limits,
    /// Text values the engine refuses (a value error).
    refuse: Option<String>,
    /// Source table → replica table name.
    rename: BTreeMap<String, String>,
}

impl<const AUTO: bool> Mem<AUTO> {
    fn new(server: &Server) -> Self {
        Mem {
            server: server.clone(),
            limits: Limits {
                max_rows_per_statement: 3,
                max_statement_bytes: 1 << 20,
                max_transactions_per_commit: 0,
            },
            refuse: None,
            rename: BTreeMap::new(),
        }
    }
}

fn cmd(c: Cmd, params: Vec<Value>) -> Statement<Value> {
    Statement::new(serde_json::to_string(&c).unwrap(), params)
}

/// Equal under the column's comparison: `*_ci` text ignores case.
fn eq_under(col: &ColumnDef, a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Text(x), Value::Text(y)) if col.collation.as_deref().is_some_and(|c| c.ends_with("_ci")) => {
            x.to_lowercase() == y.to_lowercase()
        }
        _ => a == b,
    }
}

fn same_key(schema: &TableSchema, cols: &[usize], a: &[Value], b: &[Value]) -> bool {
    cols.iter().all(|&i| eq_under(&schema.columns[i], &a[i], &b[i]))
}

/// Checks the primary key and every unique key (NULLs never collide).
fn check_unique(schema: &TableSchema, rows: &[Vec<Value>]) -> Result<(), MemError> {
    let mut keys = vec![schema.primary_key.clone()];
    keys.extend(schema.unique_keys.iter().cloned());
    for k in keys.iter().filter(|k| !k.is_empty()) {
        for (i, a) in rows.iter().enumerate() {
            if k.iter().any(|&c| a[c].is_null()) {
                continue;
            }
            if rows[i + 1..].iter().any(|b| same_key(schema, k, a, b)) {
                return Err(MemError {
                    class: ErrorClass::Definite,
                    constraint: true,
                    message: format!("duplicate key {k:?} in {}", schema.id),
                });
            }
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        other => panic!("not text: {other:?}"),
    }
}

fn uint(v: &Value) -> u64 {
    match v {
        Value::UInt(x) => *x,
        other => panic!("not an integer: {other:?}"),
    }
}

fn run(db: &mut Db, c: Cmd, p: &[Value]) -> Result<(u64, Vec<Vec<Value>>), MemError> {
    let table = |db: &mut Db, t: &TableId| -> Result<(TableSchema, Vec<Vec<Value>>), MemError> {
        db.tables
            .get(t)
            .cloned()
            .ok_or_else(|| MemError::definite(format!("no table {t}")))
    };
    Ok(match c {
        Cmd::Setup => (0, vec![]),
        Cmd::Register => {
            db.offsets.entry(text(&p[0])).or_insert(0);
            (1, vec![])
        }
        Cmd::ReadOffset => (
            0,
            db.offsets
                .get(&text(&p[0]))
                .map(|s| vec![vec![Value::UInt(*s)]])
                .unwrap_or_default(),
        ),
        Cmd::WriteOffset => match db.offsets.get_mut(&text(&p[0])) {
            Some(s) => {
                *s = uint(&p[1]);
                (1, vec![])
            }
            None => (0, vec![]),
        },
        Cmd::ReadQuarantines => (
            0,
            db.quarantine
                .iter()
                .filter(|((c, _), _)| *c == text(&p[0]))
                .map(|((_, t), (first, reason))| {
                    vec![
                        Value::Text(t.schema.clone()),
                        Value::Text(t.name.clone()),
                        Value::UInt(*first),
                        Value::Text(reason.clone()),
                    ]
                })
                .collect(),
        ),
        Cmd::StoreQuarantine => {
            let t = TableId::new(text(&p[1]), text(&p[2]));
            db.quarantine.insert((text(&p[0]), t), (uint(&p[3]), text(&p[4])));
            (1, vec![])
        }
        Cmd::MoveQuarantine => {
            let key = (text(&p[0]), TableId::new(text(&p[1]), text(&p[2])));
            match &p[3] {
                Value::Null => db.quarantine.remove(&key),
                v => db.quarantine.get_mut(&key).map(|q| {
                    q.0 = uint(v);
                    q.clone()
                }),
            };
            (1, vec![])
        }
        Cmd::Drop { target } => {
            db.tables.remove(&target);
            (0, vec![])
        }
        Cmd::ReadPending => (
            0,
            db.pending
                .keys()
                .filter(|(c, _)| *c == text(&p[0]))
                .map(|(_, t)| vec![Value::Text(t.schema.clone()), Value::Text(t.name.clone())])
                .collect(),
        ),
        Cmd::StorePending => {
            let t = TableId::new(text(&p[1]), text(&p[2]));
            db.pending.insert((text(&p[0]), t), uint(&p[3]));
            (1, vec![])
        }
        Cmd::DropPending => {
            let t = TableId::new(text(&p[1]), text(&p[2]));
            (db.pending.remove(&(text(&p[0]), t)).is_some() as u64, vec![])
        }
        Cmd::DropSchemaState => {
            let (c, schema) = (text(&p[0]), text(&p[1]));
            db.pending.retain(|(k, t), _| !(*k == c && t.schema == schema));
            db.quarantine.retain(|(k, t), _| !(*k == c && t.schema == schema));
            (0, vec![])
        }
        Cmd::ClearState => {
            let c = text(&p[0]);
            db.pending.retain(|(k, _), _| *k != c);
            db.quarantine.retain(|(k, _), _| *k != c);
            (0, vec![])
        }
        Cmd::ReadNote => (
            0,
            db.notes
                .get(&text(&p[0]))
                .map(|s| vec![vec![Value::UInt(*s)]])
                .unwrap_or_default(),
        ),
        Cmd::StoreNote => {
            db.notes.insert(text(&p[0]), uint(&p[1]));
            (1, vec![])
        }
        Cmd::ClearNote => (db.notes.remove(&text(&p[0])).is_some() as u64, vec![]),
        Cmd::Alter {
            schema,
            create,
            retried,
        } => {
            let width = schema.columns.len();
            match db.tables.remove(&schema.id) {
                Some(_) if create && !retried => {
                    return Err(MemError::definite(format!("table {} already exists", schema.id)))
                }
                Some((_, mut rows)) => {
                    for r in &mut rows {
                        r.resize(width, Value::Null);
                    }
                    db.tables.insert(schema.id.clone(), (schema, rows));
                }
                None => {
                    db.tables.insert(schema.id.clone(), (schema, vec![]));
                }
            }
            (0, vec![])
        }
        Cmd::Create { schema } => {
            db.tables.entry(schema.id.clone()).or_insert((schema, vec![]));
            (0, vec![])
        }
        Cmd::Rows { target, kind } => {
            let (schema, mut rows) = table(db, &target)?;
            let width = if kind == 1 {
                schema.primary_key.len()
            } else {
                schema.columns.len()
            };
            for values in p.chunks(width) {
                match kind {
                    0 => {
                        // Row by row, as MySQL's ON DUPLICATE KEY UPDATE does.
                        let row = values.to_vec();
                        match rows
                            .iter()
                            .position(|r| same_key(&schema, &schema.primary_key, r, &row))
                        {
                            Some(i) => rows[i] = row,
                            None => rows.push(row),
                        }
                        check_unique(&schema, &rows)?;
                    }
                    1 => rows.retain(|r| {
                        !schema
                            .primary_key
                            .iter()
                            .zip(values)
                            .all(|(&i, v)| eq_under(&schema.columns[i], &r[i], v))
                    }),
                    _ => rows.push(values.to_vec()),
                }
            }
            check_unique(&schema, &rows)?;
            db.tables.insert(target, (schema, rows));
            (p.len() as u64 / width as u64, vec![])
        }
        Cmd::UpdateOne { target } => {
            let (schema, mut rows) = table(db, &target)?;
            let n = schema.columns.len();
            let (after, before) = p.split_at(n);
            let found = rows.iter().position(|r| r.as_slice() == before);
            if let Some(i) = found {
                rows[i] = after.to_vec();
            }
            db.tables.insert(target, (schema, rows));
            (u64::from(found.is_some()), vec![])
        }
        Cmd::DeleteOne { target } => {
            let (schema, mut rows) = table(db, &target)?;
            let found = rows.iter().position(|r| r.as_slice() == p);
            if let Some(i) = found {
                rows.remove(i);
            }
            db.tables.insert(target, (schema, rows));
            (u64::from(found.is_some()), vec![])
        }
        Cmd::Truncate { target } => {
            let (schema, rows) = table(db, &target)?;
            db.tables.insert(target, (schema, vec![]));
            (rows.len() as u64, vec![])
        }
        Cmd::Select { target, cols, want } => {
            let (schema, rows) = table(db, &target)?;
            let idx = |c: &String| schema.column_index(c).unwrap();
            let ci: Vec<usize> = cols.iter().map(idx).collect();
            let wi: Vec<usize> = want.iter().map(idx).collect();
            let out = rows
                .iter()
                .filter(|r| {
                    p.chunks(ci.len()).any(|k| {
                        ci.iter()
                            .zip(k)
                            .all(|(&i, v)| eq_under(&schema.columns[i], &r[i], v))
                    })
                })
                .map(|r| wi.iter().map(|&i| r[i].clone()).collect())
                .collect();
            (0, out)
        }
        Cmd::Delete { target, cols } => {
            let (schema, mut rows) = table(db, &target)?;
            let ci: Vec<usize> = cols.iter().map(|c| schema.column_index(c).unwrap()).collect();
            let before = rows.len();
            rows.retain(|r| {
                !p.chunks(ci.len()).any(|k| {
                    ci.iter()
                        .zip(k)
                        .all(|(&i, v)| eq_under(&schema.columns[i], &r[i], v))
                })
            });
            let n = (before - rows.len()) as u64;
            db.tables.insert(target, (schema, rows));
            (n, vec![])
        }
        Cmd::Update { target, cols, null } => {
            let (schema, mut rows) = table(db, &target)?;
            let ci: Vec<usize> = cols.iter().map(|c| schema.column_index(c).unwrap()).collect();
            let (new, keys) = if null {
                (None, p)
            } else {
                (Some(&p[..ci.len()]), &p[ci.len()..])
            };
            let mut n = 0;
            for r in &mut rows {
                if keys.chunks(ci.len()).any(|k| {
                    ci.iter()
                        .zip(k)
                        .all(|(&i, v)| eq_under(&schema.columns[i], &r[i], v))
                }) {
                    for (j, &i) in ci.iter().enumerate() {
                        r[i] = new.map_or(Value::Null, |n| n[j].clone());
                    }
                    n += 1;
                }
            }
            db.tables.insert(target, (schema, rows));
            (n, vec![])
        }
    })
}

impl<const AUTO: bool> Engine for Mem<AUTO> {
    type Param = Value;
    type Error = MemError;
    type Conn = MemConn;
    type Described = Vec<String>;
    type Table = ();
    const NAME: &'static str = "Memory";

    fn limits(&self) -> Limits {
        self.limits
    }
    fn classify(e: &MemError) -> ErrorClass {
        e.class
    }
    fn may_pass_in_source_order(e: &MemError) -> bool {
        e.constraint
    }
    async fn connect(&mut self) -> Result<MemConn, MemError> {
        Ok(MemConn {
            server: self.server.clone(),
            txn: None,
        })
    }
    async fn execute(conn: &mut MemConn, s: &Statement<Value>) -> Result<u64, MemError> {
        Self::query_or_execute(conn, s).map(|(n, _)| n)
    }
    async fn query(conn: &mut MemConn, s: &Statement<Value>) -> Result<Vec<Vec<Value>>, MemError> {
        Self::query_or_execute(conn, s).map(|(_, rows)| rows)
    }
    async fn begin(conn: &mut MemConn) -> Result<(), MemError> {
        conn.txn = Some(conn.server.db.lock().unwrap().clone());
        Ok(())
    }
    async fn commit(conn: &mut MemConn) -> Result<(), MemError> {
        let db = conn.txn.take().expect("in a transaction");
        *conn.server.db.lock().unwrap() = db;
        let mut f = conn.server.faults.lock().unwrap();
        if f.lose_commit_reply > 0 {
            f.lose_commit_reply -= 1;
            return Err(MemError::transient("connection lost while committing"));
        }
        Ok(())
    }
    async fn rollback(conn: &mut MemConn) -> Result<(), MemError> {
        conn.txn = None;
        Ok(())
    }
    fn as_u64(p: &Value) -> Option<u64> {
        match p {
            Value::UInt(x) => Some(*x),
            _ => None,
        }
    }
    fn as_text(p: &Value) -> Option<String> {
        match p {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn setup(&self) -> Vec<Statement<Value>> {
        vec![cmd(Cmd::Setup, vec![])]
    }
    fn offsets_table(&self) -> String {
        "mem.dbmux_offsets".into()
    }
    fn register(&self, consumer: &str) -> Statement<Value> {
        cmd(Cmd::Register, vec![Value::Text(consumer.into())])
    }
    fn read_offset(&self, consumer: &str, _lock: bool) -> Statement<Value> {
        cmd(Cmd::ReadOffset, vec![Value::Text(consumer.into())])
    }
    fn write_offset(&self, consumer: &str, seq: u64, _: Option<&str>) -> Result<Statement<Value>, String> {
        Ok(cmd(
            Cmd::WriteOffset,
            vec![Value::Text(consumer.into()), Value::UInt(seq)],
        ))
    }
    fn read_quarantines(&self, consumer: &str) -> Statement<Value> {
        cmd(Cmd::ReadQuarantines, vec![Value::Text(consumer.into())])
    }
    fn store_quarantine(&self, consumer: &str, q: &Quarantine) -> Statement<Value> {
        cmd(
            Cmd::StoreQuarantine,
            vec![
                Value::Text(consumer.into()),
                Value::Text(q.table.schema.clone()),
                Value::Text(q.table.name.clone()),
                Value::UInt(q.first_seq),
                Value::Text(q.reason.clone()),
            ],
        )
    }
    fn move_quarantine(&self, consumer: &str, table: &TableId, next: Option<u64>) -> Statement<Value> {
        cmd(
            Cmd::MoveQuarantine,
            vec![
                Value::Text(consumer.into()),
                Value::Text(table.schema.clone()),
                Value::Text(table.name.clone()),
                next.map_or(Value::Null, Value::UInt),
            ],
        )
    }
    const AUTOCOMMIT_DDL: bool = AUTO;
    fn read_ddl_note(&self, consumer: &str) -> Option<Statement<Value>> {
        AUTO.then(|| cmd(Cmd::ReadNote, vec![Value::Text(consumer.into())]))
    }
    fn store_ddl_note(&self, consumer: &str, seq: u64, _statement: &str) -> Option<Statement<Value>> {
        AUTO.then(|| {
            cmd(
                Cmd::StoreNote,
                vec![Value::Text(consumer.into()), Value::UInt(seq)],
            )
        })
    }
    fn clear_ddl_note(&self, consumer: &str) -> Option<Statement<Value>> {
        AUTO.then(|| cmd(Cmd::ClearNote, vec![Value::Text(consumer.into())]))
    }
    async fn schema_change(
        &self,
        conn: &mut MemConn,
        _source: &TableSchema,
        renamed: &TableSchema,
        change: &crate::ddl::SchemaChange,
        _commit_ts_us: i64,
        retried: bool,
    ) -> Result<(), DdlError<MemError>> {
        use crate::ddl::DdlKind;
        if AUTO {
            // Self-committing DDL never runs inside a transaction.
            assert!(conn.txn.is_none(), "autocommit DDL inside a transaction");
        }
        let c = match &change.kind {
            DdlKind::CreateTable { .. } | DdlKind::AlterTable { .. } => Cmd::Alter {
                schema: renamed.clone(),
                create: matches!(change.kind, DdlKind::CreateTable { .. }),
                retried,
            },
            DdlKind::DropTable => Cmd::Drop {
                target: renamed.id.clone(),
            },
            _ => {
                return Err(DdlError::Refused(format!(
                    "{:?} is not supported here",
                    change.kind
                )))
            }
        };
        Self::query_or_execute(conn, &cmd(c, vec![]))
            .map(|_| ())
            .map_err(DdlError::Driver)
    }
    fn read_pending(&self, consumer: &str) -> Statement<Value> {
        cmd(Cmd::ReadPending, vec![Value::Text(consumer.into())])
    }
    fn store_pending(&self, consumer: &str, table: &TableId, run: u64) -> Statement<Value> {
        cmd(
            Cmd::StorePending,
            vec![
                Value::Text(consumer.into()),
                Value::Text(table.schema.clone()),
                Value::Text(table.name.clone()),
                Value::UInt(run),
            ],
        )
    }
    fn drop_pending(&self, consumer: &str, table: &TableId) -> Statement<Value> {
        cmd(
            Cmd::DropPending,
            vec![
                Value::Text(consumer.into()),
                Value::Text(table.schema.clone()),
                Value::Text(table.name.clone()),
            ],
        )
    }
    fn drop_schema_state(&self, consumer: &str, schema: &str) -> Vec<Statement<Value>> {
        vec![cmd(
            Cmd::DropSchemaState,
            vec![Value::Text(consumer.into()), Value::Text(schema.into())],
        )]
    }
    fn clear_state(&self, consumer: &str) -> Vec<Statement<Value>> {
        vec![cmd(Cmd::ClearState, vec![Value::Text(consumer.into())])]
    }
    fn recreate_table(
        &self,
        target: &TableId,
        schema: &TableSchema,
        _source: &TableSchema,
        _create: Option<&str>,
    ) -> Result<Vec<String>, (String, String)> {
        let mut v = vec![serde_json::to_string(&Cmd::Drop {
            target: target.clone(),
        })
        .unwrap()];
        v.extend(self.create_table(target, schema)?);
        Ok(v)
    }
    fn target_table(&self, source: &TableId) -> TableId {
        let name = self
            .rename
            .get(&source.to_string())
            .cloned()
            .unwrap_or_else(|| source.name.clone());
        TableId::new(format!("r_{}", source.schema), name)
    }
    fn target_column(&self, _: &TableId, column: &str) -> String {
        format!("c_{column}")
    }
    fn is_own_table(&self, target: &TableId) -> bool {
        target.name == "dbmux_offsets"
    }
    async fn describe(&self, conn: &mut MemConn, target: &TableId) -> Result<Option<Vec<String>>, MemError> {
        Ok(conn.with_db(|db| {
            db.tables
                .get(target)
                .map(|(s, _)| s.columns.iter().map(|c| c.name.clone()).collect())
        }))
    }
    fn create_table(&self, target: &TableId, schema: &TableSchema) -> Result<Vec<String>, (String, String)> {
        assert_eq!(&schema.id, target);
        if let Some(c) = schema
            .columns
            .iter()
            .find(|c| matches!(c.ty, ColumnType::Other { .. }))
        {
            return Err((c.name.clone(), "no mapping".into()));
        }
        Ok(vec![serde_json::to_string(&Cmd::Create {
            schema: schema.clone(),
        })
        .unwrap()])
    }
    fn table(&self, _: &TableId, schema: &Arc<TableSchema>, described: &Vec<String>) -> Result<(), String> {
        match schema.columns.iter().find(|c| !described.contains(&c.name)) {
            Some(c) => Err(format!("it has no column {:?}", c.name)),
            None => Ok(()),
        }
    }
    fn max_rows(&self, _: &TargetTable<()>, _: RowsKind) -> usize {
        usize::MAX
    }
    fn rows(
        &self,
        t: &mut TargetTable<()>,
        kind: RowsKind,
        rows: &[&Row],
    ) -> Result<Statement<Value>, ValueError> {
        assert!(rows.len() <= self.limits.max_rows_per_statement);
        let cols: Vec<usize> = match kind {
            RowsKind::Delete => t.schema.primary_key.clone(),
            _ => (0..t.schema.columns.len()).collect(),
        };
        let mut params = Vec::new();
        for r in rows {
            for &i in &cols {
                params.push(
                    self.param(&t.schema.columns[i], &r[i])
                        .map_err(|message| ValueError {
                            column: t.schema.columns[i].name.clone(),
                            message,
                        })?,
                );
            }
        }
        let kind = match kind {
            RowsKind::Upsert => 0,
            RowsKind::Delete => 1,
            RowsKind::Insert => 2,
        };
        Ok(cmd(
            Cmd::Rows {
                target: t.id.clone(),
                kind,
            },
            params,
        ))
    }
    fn update_one(
        &self,
        t: &mut TargetTable<()>,
        before: &Row,
        after: &Row,
    ) -> Result<Statement<Value>, ValueError> {
        let mut p = after.clone();
        p.extend(before.iter().cloned());
        Ok(cmd(Cmd::UpdateOne { target: t.id.clone() }, p))
    }
    fn delete_one(&self, t: &mut TargetTable<()>, before: &Row) -> Result<Statement<Value>, ValueError> {
        Ok(cmd(Cmd::DeleteOne { target: t.id.clone() }, before.clone()))
    }
    fn truncate(&self, target: &TableId) -> Statement<Value> {
        cmd(
            Cmd::Truncate {
                target: target.clone(),
            },
            vec![],
        )
    }
    fn param(&self, _: &ColumnDef, value: &Value) -> Result<Value, String> {
        match (value, &self.refuse) {
            (Value::Text(s), Some(r)) if s == r => Err(format!("{s:?} is refused")),
            _ => Ok(value.clone()),
        }
    }
    fn null() -> Value {
        Value::Null
    }
    fn is_null(p: &Value) -> bool {
        p.is_null()
    }
    fn cascade(
        &self,
        target: &TableId,
        described: &Vec<String>,
        op: CascadeOp<'_, Value>,
    ) -> Result<Vec<Statement<Value>>, String> {
        let check = |cols: &[String]| match cols.iter().find(|c| !described.contains(c)) {
            Some(c) => Err(format!(
                "a cascade needs column {c:?}, which the replica table lacks"
            )),
            None => Ok(()),
        };
        let target = target.clone();
        Ok(vec![match op {
            CascadeOp::Select { cols, keys, want } => {
                check(cols)?;
                check(want)?;
                cmd(
                    Cmd::Select {
                        target,
                        cols: cols.to_vec(),
                        want: want.to_vec(),
                    },
                    keys.concat(),
                )
            }
            CascadeOp::Delete { cols, keys } => {
                check(cols)?;
                cmd(
                    Cmd::Delete {
                        target,
                        cols: cols.to_vec(),
                    },
                    keys.concat(),
                )
            }
            CascadeOp::Update { cols, keys, new } => {
                check(cols)?;
                let mut p = new.map(<[Value]>::to_vec).unwrap_or_default();
                p.extend(keys.concat());
                cmd(
                    Cmd::Update {
                        target,
                        cols: cols.to_vec(),
                        null: new.is_none(),
                    },
                    p,
                )
            }
        }])
    }
}

impl<const AUTO: bool> Mem<AUTO> {
    fn query_or_execute(
        conn: &mut MemConn,
        s: &Statement<Value>,
    ) -> Result<(u64, Vec<Vec<Value>>), MemError> {
        {
            let mut f = conn.server.faults.lock().unwrap();
            f.executes += 1;
            let n = f.executes;
            let tag = s.sql.split('"').nth(1).unwrap_or(&s.sql).to_string();
            if let Some((t, pass)) = &mut f.fail_cmd {
                if *t == tag {
                    if *pass == 0 {
                        f.fail_cmd = None;
                        conn.txn = None;
                        return Err(MemError::transient(&format!("injected loss at {tag}")));
                    }
                    *pass -= 1;
                }
            }
            if let Some(class) = f.fail_at.remove(&n) {
                if class == ErrorClass::Transient {
                    // A lost connection ends the transaction.
                    conn.txn = None;
                }
                return Err(MemError {
                    class,
                    constraint: false,
                    message: format!("injected failure of execute #{n}"),
                });
            }
        }
        let c: Cmd = serde_json::from_str(&s.sql).unwrap();
        let params = s.params.clone();
        conn.with_db(|db| run(db, c, &params))
    }
}

// ---------------------------------------------------------------- helpers

fn col(name: &str, ty: ColumnType) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        ty,
        nullable: true,
        charset: None,
        collation: None,
        source_type: String::new(),
    }
}

fn int() -> ColumnType {
    ColumnType::Integer {
        bytes: 4,
        unsigned: false,
    }
}

/// `app.<name> (id INT PRIMARY KEY, v INT)`, or without a key.
fn table(name: &str, keyed: bool) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::new("app", name),
        columns: vec![col("id", int()), col("v", int())],
        primary_key: if keyed { vec![0] } else { vec![] },
        ..Default::default()
    })
}

struct Seq(u64);

impl Seq {
    fn txn(&mut self, changes: Vec<(Arc<TableSchema>, Op)>) -> Transaction {
        let t = sequence_transaction(
            self.0,
            format!("t{}", self.0),
            0,
            Position::Postgres(self.0),
            changes,
        );
        self.0 += t.len() as u64;
        t
    }
}

fn ins(t: &Arc<TableSchema>, row: Vec<Value>) -> (Arc<TableSchema>, Op) {
    (t.clone(), Op::Insert { after: row })
}
fn upd(t: &Arc<TableSchema>, before: Vec<Value>, after: Vec<Value>) -> (Arc<TableSchema>, Op) {
    (t.clone(), Op::Update { before, after })
}
fn del(t: &Arc<TableSchema>, before: Vec<Value>) -> (Arc<TableSchema>, Op) {
    (t.clone(), Op::Delete { before })
}
fn iv(id: i64, v: i64) -> Vec<Value> {
    vec![Value::Int(id), Value::Int(v)]
}

/// The rows of replica table `r_app.<name>`, sorted.
fn rows(server: &Server, name: &str) -> Vec<Vec<Value>> {
    let db = server.db.lock().unwrap();
    let mut r = db
        .tables
        .get(&TableId::new("r_app", name))
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    r.sort_by_key(|r| format!("{r:?}"));
    r
}

fn offset(server: &Server) -> u64 {
    server.db.lock().unwrap().offsets["r1"]
}

fn none() -> HashSet<TableId> {
    HashSet::new()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn applies_once_skips_what_is_applied_and_refuses_gaps() {
    let server = Server::default();
    let t = table("t", true);
    let log = table("log", false);
    let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
    assert_eq!(a.open().await.unwrap().applied, 0);
    let mut seq = Seq(1);
    let t1 = seq.txn(vec![ins(&t, iv(1, 1)), ins(&log, iv(1, 1)), ins(&log, iv(1, 1))]);
    let t2 = seq.txn(vec![upd(&t, iv(1, 1), iv(1, 2)), ins(&log, iv(2, 2))]);
    a.apply(std::slice::from_ref(&t1), &none()).await.unwrap();
    assert_eq!(offset(&server), 3);
    // Already-applied transactions handed over again apply only what is new.
    a.apply(&[t1.clone(), t2.clone()], &none()).await.unwrap();
    a.apply(&[t1, t2], &none()).await.unwrap();
    assert_eq!(offset(&server), 5);
    assert_eq!(rows(&server, "t"), [iv(1, 2)]);
    assert_eq!(
        rows(&server, "log").len(),
        3,
        "no double apply of the key-less table"
    );
    // Columns are renamed as the engine says.
    let db = server.db.lock().unwrap().clone();
    let names: Vec<&str> = db.tables[&TableId::new("r_app", "t")]
        .0
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["c_id", "c_v"]);
    // A gap (seq 6 missing) is a definite error, nothing applied.
    let gap = Seq(7).txn(vec![ins(&t, iv(7, 7))]);
    let e = a.apply(&[gap], &none()).await.unwrap_err();
    assert!(!e.is_transient() && e.to_string().contains("skip seq 6"), "{e}");
    assert_eq!(offset(&server), 5);
    // A schema change the engine refuses is a definite error of its table.
    let ddl = Seq(6).txn(vec![(
        t.clone(),
        Op::Ddl(Box::new(crate::ddl::SchemaChange {
            statement: "ALTER TABLE t ADD w INT".into(),
            default_schema: "app".into(),
            kind: crate::ddl::DdlKind::Unknown {
                reason: "test".into(),
            },
            unique_key_names: Vec::new(),
        })),
    )]);
    let e = a.apply(&[ddl], &none()).await.unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(e.table(), Some(&t.id));
    assert!(
        e.to_string()
            .contains("cannot apply the schema change `ALTER TABLE t ADD w INT`")
            && e.to_string().contains("not supported here"),
        "{e}"
    );
    assert_eq!(offset(&server), 5, "nothing moved");
}

#[tokio::test]
async fn failures_roll_back_and_ambiguous_commits_are_not_applied_twice() {
    let server = Server::default();
    let log = table("log", false);
    let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
    a.open().await.unwrap();
    let mut seq = Seq(1);
    let txns: Vec<Transaction> = (0..40)
        .map(|i| seq.txn(vec![ins(&log, iv(i, 0)), ins(&log, iv(i, 1))]))
        .collect();
    // A transient failure in the middle of a batch, then a commit whose reply is lost.
    server
        .faults
        .lock()
        .unwrap()
        .fail_at
        .insert(9, ErrorClass::Transient);
    let mut applied_calls = 0;
    let mut errors = 0;
    let mut lost_once = false;
    for chunk in txns.chunks(7) {
        loop {
            if chunk[0].first_seq() == 29 && !lost_once {
                lost_once = true;
                server.faults.lock().unwrap().lose_commit_reply = 1;
            }
            match a.apply(chunk, &none()).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    errors += 1;
                    // What the runtime does: re-open (re-reading the offset), retry.
                    a.open().await.unwrap();
                }
            }
        }
        applied_calls += 1;
    }
    assert_eq!(errors, 2);
    assert_eq!(applied_calls, 6);
    assert_eq!(offset(&server), 80);
    let got = rows(&server, "log");
    assert_eq!(got.len(), 80, "every insert exactly once");
}

#[tokio::test]
async fn transactions_per_commit_keeps_what_committed_before_a_failure() {
    let server = Server::default();
    let log = table("log", false);
    let mut engine = Mem::new(&server);
    engine.limits.max_transactions_per_commit = 1;
    engine.refuse = Some("bad".into());
    let wide = Arc::new(TableSchema {
        id: TableId::new("app", "wide"),
        columns: vec![col("id", int()), col("s", ColumnType::Text { max_bytes: 10 })],
        primary_key: vec![0],
        ..Default::default()
    });
    let mut a = Applier::<Mem>::new("r1", engine);
    a.open().await.unwrap();
    let mut seq = Seq(1);
    let t1 = seq.txn(vec![ins(&log, iv(1, 1))]);
    let t2 = seq.txn(vec![ins(&log, iv(2, 2))]);
    let t3 = seq.txn(vec![ins(&wide, vec![Value::Int(1), Value::Text("bad".into())])]);
    let e = a.apply(&[t1, t2, t3], &none()).await.unwrap_err();
    assert!(!e.is_transient());
    // The value error names the replica table and column, and belongs to the source table.
    assert_eq!(e.to_string(), "r_app.wide.c_s: \"bad\" is refused");
    assert_eq!(e.table(), Some(&wide.id));
    assert_eq!(offset(&server), 2);
    assert_eq!(rows(&server, "log").len(), 2);
}

/// A unique key under a case-insensitive collation: the set-based plan
/// writes row 2's `'A'` while row 1 still holds `'a'`; source order does not.
#[tokio::test]
async fn a_set_based_plan_that_trips_a_unique_key_is_applied_in_source_order() {
    let server = Server::default();
    let mut schema = TableSchema {
        id: TableId::new("app", "u"),
        columns: vec![
            col("id", int()),
            ColumnDef {
                collation: Some("utf8mb4_general_ci".into()),
                ..col("s", ColumnType::VarChar { length: 5 })
            },
        ],
        primary_key: vec![0],
        ..Default::default()
    };
    schema.unique_keys = vec![vec![1]];
    let u = Arc::new(schema);
    let s = |id: i64, v: &str| vec![Value::Int(id), Value::Text(v.into())];
    let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
    a.open().await.unwrap();
    let mut seq = Seq(1);
    a.apply(&[seq.txn(vec![ins(&u, s(1, "a"))])], &none())
        .await
        .unwrap();
    let swap = seq.txn(vec![
        ins(&u, s(2, "x")),
        upd(&u, s(1, "a"), s(1, "y")),
        upd(&u, s(2, "x"), s(2, "A")),
    ]);
    // The plan really is one set-based run that breaks the key when executed in slot order.
    let plan = batch::plan(std::slice::from_ref(&swap), 1).unwrap();
    assert_eq!(plan.steps.len(), 1);
    let e = run_rows_in_slot_order(&u, &plan);
    assert!(e.is_some(), "the set-based plan must trip the key in this test");
    a.apply(&[swap], &none()).await.unwrap();
    assert_eq!(rows(&server, "u"), [s(1, "y"), s(2, "A")]);
    assert_eq!(offset(&server), 4);
}

/// Executes the single upsert step of `plan` on a store holding `(1, 'a')`.
fn run_rows_in_slot_order(u: &Arc<TableSchema>, plan: &batch::Plan<'_>) -> Option<MemError> {
    let mut db = Db::default();
    db.tables.insert(
        u.id.clone(),
        ((**u).clone(), vec![vec![Value::Int(1), Value::Text("a".into())]]),
    );
    let Action::Upsert(rs) = &plan.steps[0].action else {
        panic!("{:?}", plan.steps[0].action)
    };
    let params: Vec<Value> = rs.iter().flat_map(|r| r.iter().cloned()).collect();
    run(
        &mut db,
        Cmd::Rows {
            target: u.id.clone(),
            kind: 0,
        },
        &params,
    )
    .err()
}

#[tokio::test]
async fn quarantined_tables_are_skipped_then_resumed_exactly() {
    let server = Server::default();
    let t = table("t", true);
    let q = table("q", false);
    let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
    a.open().await.unwrap();
    let mut seq = Seq(1);
    let t1 = seq.txn(vec![ins(&t, iv(1, 1)), ins(&q, iv(1, 1))]);
    a.apply(std::slice::from_ref(&t1), &none()).await.unwrap();
    // q is quarantined from seq 3 on: its events are skipped, t's applied.
    let quarantine = Quarantine {
        table: q.id.clone(),
        first_seq: 3,
        reason: "test".into(),
    };
    a.quarantine(&quarantine).await.unwrap();
    let skip: HashSet<TableId> = [q.id.clone()].into();
    let t2 = seq.txn(vec![ins(&q, iv(2, 2)), ins(&t, iv(2, 2))]);
    let t3 = seq.txn(vec![upd(&q, iv(1, 1), iv(1, 10)), ins(&q, iv(3, 3))]);
    a.apply(&[t2.clone(), t3.clone()], &skip).await.unwrap();
    assert_eq!(offset(&server), 6);
    assert_eq!(rows(&server, "q"), [iv(1, 1)]);
    assert_eq!(rows(&server, "t"), [iv(1, 1), iv(2, 2)]);
    let opened = a.open().await.unwrap();
    assert_eq!(opened.quarantined, vec![quarantine]);
    // Resume in two parts: the quarantine moves with the first, is lifted with the second.
    a.resume(&q.id, std::slice::from_ref(&t2), 3, Some(5))
        .await
        .unwrap();
    assert_eq!(a.open().await.unwrap().quarantined[0].first_seq, 5);
    assert_eq!(rows(&server, "q"), [iv(1, 1), iv(2, 2)]);
    // A resume of events beyond the offset is refused.
    let beyond = Seq(7).txn(vec![ins(&q, iv(9, 9))]);
    let e = a.resume(&q.id, &[beyond], 5, None).await.unwrap_err();
    assert!(e.to_string().contains("beyond the replica's offset 6"), "{e}");
    a.resume(&q.id, &[t2, t3], 5, None).await.unwrap();
    assert!(a.open().await.unwrap().quarantined.is_empty());
    assert_eq!(rows(&server, "q"), [iv(1, 10), iv(2, 2), iv(3, 3)]);
    assert_eq!(
        rows(&server, "t"),
        [iv(1, 1), iv(2, 2)],
        "t untouched by the resume"
    );
    assert_eq!(offset(&server), 6, "resuming does not move the offset");
}

#[tokio::test]
async fn tables_that_cannot_be_written_are_refused_per_table() {
    let server = Server::default();
    let mut engine = Mem::new(&server);
    engine.rename.insert("app.b".into(), "a".into());
    engine.rename.insert("app.own".into(), "dbmux_offsets".into());
    let mut a = Applier::<Mem>::new("r1", engine);
    a.open().await.unwrap();
    let (ta, tb, own) = (table("a", true), table("b", true), table("own", true));
    let mut seq = Seq(1);
    a.apply(&[seq.txn(vec![ins(&ta, iv(1, 1))])], &none())
        .await
        .unwrap();
    // b is renamed onto a's replica table: refused, tied to b.
    let e = a
        .apply(&[seq.txn(vec![ins(&tb, iv(1, 2))])], &none())
        .await
        .unwrap_err();
    assert_eq!(e.table(), Some(&tb.id));
    assert!(
        e.to_string().contains("already receives source table app.a"),
        "{e}"
    );
    let e = a
        .apply(&[Seq(2).txn(vec![ins(&own, iv(1, 2))])], &none())
        .await
        .unwrap_err();
    assert_eq!(e.table(), Some(&own.id));
    assert!(e.to_string().contains("dbmux's own tables"), "{e}");
    let odd = Arc::new(TableSchema {
        id: TableId::new("app", "odd"),
        columns: vec![
            col("id", int()),
            col(
                "g",
                ColumnType::Other {
                    name: "geometry".into(),
                },
            ),
        ],
        primary_key: vec![0],
        ..Default::default()
    });
    let e = a
        .apply(
            &[Seq(2).txn(vec![ins(&odd, vec![Value::Int(1), Value::Null])])],
            &none(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.table(), Some(&odd.id));
    assert_eq!(
        e.to_string(),
        "cannot create or use r_app.odd: column c_g: no mapping"
    );
    assert_eq!(rows(&server, "a"), [iv(1, 1)]);
    assert_eq!(offset(&server), 1);
}

#[tokio::test]
async fn keyless_rows_must_match_exactly_one_row_and_truncate_needs_no_definition() {
    let server = Server::default();
    let n = table("n", false);
    let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
    a.open().await.unwrap();
    let mut seq = Seq(1);
    a.apply(
        &[seq.txn(vec![ins(&n, iv(1, 1)), ins(&n, iv(1, 1)), ins(&n, iv(2, 2))])],
        &none(),
    )
    .await
    .unwrap();
    a.apply(&[seq.txn(vec![upd(&n, iv(1, 1), iv(1, 5))])], &none())
        .await
        .unwrap();
    assert_eq!(rows(&server, "n"), [iv(1, 1), iv(1, 5), iv(2, 2)]);
    let bad = seq.txn(vec![ins(&n, iv(3, 3)), del(&n, iv(9, 9))]);
    let e = a.apply(&[bad], &none()).await.unwrap_err();
    assert!(
        e.to_string().contains("diverged") && e.to_string().contains("r_app.n"),
        "{e}"
    );
    assert_eq!(e.table(), Some(&n.id));
    assert_eq!(rows(&server, "n").len(), 3, "the batch rolled back");
    // A TRUNCATE of a definition without columns: truncates an existing
    // table, is a no-op for a missing one.
    let unknown = |name: &str| Arc::new(TableSchema::new(TableId::new("app", name), vec![], vec![]));
    let tr = Seq(5).txn(vec![
        (unknown("n"), Op::Truncate),
        (unknown("missing"), Op::Truncate),
    ]);
    a.apply(&[tr], &none()).await.unwrap();
    assert!(rows(&server, "n").is_empty());
    assert!(!server
        .db
        .lock()
        .unwrap()
        .tables
        .contains_key(&TableId::new("r_app", "missing")));
    assert_eq!(offset(&server), 6);
}

#[tokio::test]
async fn cascades_run_on_the_replica_and_leave_quarantined_tables_alone() {
    let server = Server::default();
    let fk = |child: &str, on_delete: FkAction| ForeignKey {
        name: format!("{child}_fk"),
        table: TableId::new("app", child),
        columns: vec!["p".into()],
        referenced_table: TableId::new("app", "parent"),
        referenced_columns: vec!["id".into()],
        on_delete,
        on_update: FkAction::Cascade,
        referenced_captured: true,
        table_captured: true,
    };
    let edges = vec![fk("child", FkAction::Cascade), fk("other", FkAction::SetNull)];
    let parent = Arc::new(TableSchema {
        cascades: edges.clone(),
        ..(*table("parent", true)).clone()
    });
    let child_schema = |name: &str| {
        Arc::new(TableSchema {
            id: TableId::new("app", name),
            columns: vec![col("id", int()), col("p", int())],
            primary_key: vec![0],
            foreign_keys: vec![edges.iter().find(|e| e.table.name == name).unwrap().clone()],
            ..Default::default()
        })
    };
    let (child, other) = (child_schema("child"), child_schema("other"));
    let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
    a.open().await.unwrap();
    let mut seq = Seq(1);
    a.apply(
        &[seq.txn(vec![
            ins(&parent, iv(1, 0)),
            ins(&parent, iv(2, 0)),
            ins(&child, iv(10, 1)),
            ins(&child, iv(11, 2)),
            ins(&other, iv(20, 1)),
        ])],
        &none(),
    )
    .await
    .unwrap();
    // Deleting parent 1: its child row goes, the other table's row gets NULL.
    a.apply(&[seq.txn(vec![del(&parent, iv(1, 0))])], &none())
        .await
        .unwrap();
    assert_eq!(rows(&server, "child"), [iv(11, 2)]);
    assert_eq!(rows(&server, "other"), [vec![Value::Int(20), Value::Null]]);
    // Changing parent 2's key cascades into child, unless child is quarantined.
    let skip: HashSet<TableId> = [child.id.clone()].into();
    a.apply(&[seq.txn(vec![upd(&parent, iv(2, 0), iv(3, 0))])], &skip)
        .await
        .unwrap();
    assert_eq!(rows(&server, "child"), [iv(11, 2)]);
    assert_eq!(
        rows(&server, "child"),
        [iv(11, 2)],
        "child still points at 2 (it was skipped)"
    );
    a.apply(&[seq.txn(vec![ins(&child, iv(12, 3))])], &none())
        .await
        .unwrap();
    a.apply(&[seq.txn(vec![upd(&parent, iv(3, 0), iv(4, 0))])], &none())
        .await
        .unwrap();
    assert_eq!(rows(&server, "parent"), [iv(4, 0)]);
    assert_eq!(
        rows(&server, "child"),
        [iv(11, 2), iv(12, 4)],
        "the update cascaded"
    );
    // A cascade store that lacks a needed column is a table error.
    let mut conn = MemConn {
        server: server.clone(),
        txn: None,
    };
    let mut known = HashMap::new();
    let mut store = Cascades::<Mem> {
        engine: a.engine(),
        conn: &mut conn,
        known: &mut known,
    };
    let e = store
        .select(
            &child.id,
            &["nope".to_string()],
            &[vec![Value::Int(1)]],
            &["id".to_string()],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a cascade needs column \"c_nope\""), "{e}");
    // A table the replica does not have holds no rows to change.
    let none_there = store
        .select(
            &TableId::new("app", "absent"),
            &["p".to_string()],
            &[vec![Value::Int(1)]],
            &["id".to_string()],
        )
        .await
        .unwrap();
    assert!(none_there.is_empty());
}

#[tokio::test]
async fn a_vanished_offsets_row_is_a_definite_error() {
    let server = Server::default();
    let t = table("t", true);
    let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
    a.open().await.unwrap();
    server.db.lock().unwrap().offsets.clear();
    let e = a
        .apply(&[Seq(1).txn(vec![ins(&t, iv(1, 1))])], &none())
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(e.table(), None, "not a table's fault: the replica stops");
    assert!(
        e.to_string()
            .contains("mem.dbmux_offsets has no row for consumer \"r1\""),
        "{e}"
    );
}

/// Random histories with random faults, retried the way the runtime does:
/// the replica ends equal to applying every event once, in order.
#[tokio::test]
async fn random_histories_with_faults_end_equal_to_the_model() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let server = Server::default();
        let t = table("t", true);
        let n = table("n", false);
        let mut model_t: BTreeMap<i64, i64> = BTreeMap::new();
        let mut model_n: Vec<Vec<Value>> = Vec::new();
        let mut seq = Seq(1);
        let mut txns = Vec::new();
        for _ in 0..60 {
            let mut changes = Vec::new();
            for _ in 0..rng.gen_range(1..6) {
                let id = rng.gen_range(0..12);
                let v = rng.gen_range(0..100);
                match (model_t.get(&id).copied(), rng.gen_range(0..3)) {
                    (None, _) => {
                        changes.push(ins(&t, iv(id, v)));
                        model_t.insert(id, v);
                    }
                    (Some(old), 0) => {
                        changes.push(del(&t, iv(id, old)));
                        model_t.remove(&id);
                    }
                    (Some(old), 1) if !model_t.contains_key(&(id + 100)) => {
                        changes.push(upd(&t, iv(id, old), iv(id + 100, v)));
                        model_t.remove(&id);
                        model_t.insert(id + 100, v);
                    }
                    (Some(old), _) => {
                        changes.push(upd(&t, iv(id, old), iv(id, v)));
                        model_t.insert(id, v);
                    }
                }
                if rng.gen_bool(0.5) {
                    changes.push(ins(&n, iv(v, v)));
                    model_n.push(iv(v, v));
                }
            }
            txns.push(seq.txn(changes));
        }
        {
            let mut f = server.faults.lock().unwrap();
            for _ in 0..8 {
                let at = rng.gen_range(5..400);
                let class = ErrorClass::Transient;
                f.fail_at.insert(at, class);
            }
        }
        let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
        while a.open().await.is_err() {}
        let mut i = 0;
        while i < txns.len() {
            let k = rng.gen_range(1..8).min(txns.len() - i);
            if rng.gen_bool(0.1) {
                server.faults.lock().unwrap().lose_commit_reply = 1;
            }
            match a.apply(&txns[i..i + k], &none()).await {
                Ok(()) => i += k,
                Err(e) => {
                    assert!(e.is_transient(), "seed {seed}: {e}");
                    // Resume from what the replica says it has.
                    loop {
                        if let Ok(o) = a.open().await {
                            i = txns
                                .iter()
                                .position(|t| t.last_seq() > o.applied)
                                .unwrap_or(txns.len());
                            break;
                        }
                    }
                }
            }
        }
        let want_t: Vec<Vec<Value>> = {
            let mut v: Vec<Vec<Value>> = model_t.iter().map(|(k, v)| iv(*k, *v)).collect();
            v.sort_by_key(|r| format!("{r:?}"));
            v
        };
        assert_eq!(rows(&server, "t"), want_t, "seed {seed}");
        model_n.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(rows(&server, "n"), model_n, "seed {seed}");
        assert_eq!(offset(&server), seq.0 - 1, "seed {seed}");
    }
}

#[tokio::test]
async fn reset_sets_the_offset_and_lifts_every_quarantine_in_one_transaction() {
    let server = Server::default();
    let t = table("t", true);
    let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
    a.open().await.unwrap();
    a.apply(&[Seq(1).txn(vec![ins(&t, iv(1, 1)), ins(&t, iv(2, 2))])], &none())
        .await
        .unwrap();
    let q = Quarantine {
        table: t.id.clone(),
        first_seq: 2,
        reason: "test".into(),
    };
    a.quarantine(&q).await.unwrap();
    assert_eq!(a.open().await.unwrap().quarantined, vec![q]);
    // A failure inside the reset leaves everything as it was.
    let at = server.faults.lock().unwrap().executes + 2;
    server
        .faults
        .lock()
        .unwrap()
        .fail_at
        .insert(at, ErrorClass::Definite);
    assert!(a.reset(10).await.is_err());
    assert_eq!(offset(&server), 2);
    assert_eq!(a.open().await.unwrap().quarantined.len(), 1);
    a.reset(10).await.unwrap();
    assert_eq!(offset(&server), 9);
    let opened = a.open().await.unwrap();
    assert_eq!((opened.applied, opened.quarantined.len()), (9, 0));
    // The next event is 10.
    a.apply(&[Seq(10).txn(vec![ins(&t, iv(3, 3))])], &none())
        .await
        .unwrap();
    assert_eq!(offset(&server), 10);
}

// ---------------------------------------------------------------- snapshots and schema changes

fn mark(id: u64, phase: crate::snapshot::SnapshotPhase) -> Op {
    Op::Snapshot(Box::new(crate::snapshot::SnapshotMark {
        id,
        targets: vec![],
        reset: false,
        phase,
    }))
}

fn chunk(index: u64, last: bool) -> crate::snapshot::SnapshotPhase {
    crate::snapshot::SnapshotPhase::Chunk {
        index,
        upto: None,
        rows: 0,
        last,
        whole: false,
        create: None,
    }
}

fn read(t: &Arc<TableSchema>, row: Vec<Value>) -> (Arc<TableSchema>, Op) {
    (t.clone(), Op::Read { after: row })
}

fn change(statement: &str, kind: crate::ddl::DdlKind) -> Op {
    Op::Ddl(Box::new(crate::ddl::SchemaChange {
        statement: statement.into(),
        default_schema: "app".into(),
        kind,
        unique_key_names: Vec::new(),
    }))
}

fn pending(server: &Server) -> Vec<TableId> {
    server
        .db
        .lock()
        .unwrap()
        .pending
        .keys()
        .map(|(_, t)| t.clone())
        .collect()
}

#[tokio::test]
async fn snapshots_record_pending_recreate_load_and_end_in_quarantine() {
    use crate::snapshot::SnapshotPhase;
    let server = Server::default();
    let t = table("t", true);
    let u = table("u", false);
    let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
    a.open().await.unwrap();
    let mut seq = Seq(1);
    // A row the snapshot must replace, and a quarantine it must lift.
    let t1 = seq.txn(vec![ins(&t, iv(9, 9))]);
    a.apply(&[t1], &none()).await.unwrap();
    a.quarantine(&Quarantine {
        table: t.id.clone(),
        first_seq: 1,
        reason: "old".into(),
    })
    .await
    .unwrap();
    let begin = seq.txn(vec![(
        t.clone(),
        mark(
            1,
            SnapshotPhase::Begin {
                estimated_rows: 3,
                request: None,
            },
        ),
    )]);
    a.apply(&[begin], &none()).await.unwrap();
    assert_eq!(pending(&server), vec![t.id.clone()]);
    // A new applier (a restart) learns the pending table from the replica.
    let mut b = Applier::<Mem>::new("r1", Mem::new(&server));
    let opened = b.open().await.unwrap();
    assert_eq!(opened.pending, vec![t.id.clone()]);
    assert_eq!(opened.applied, 2);
    // Chunk 0 recreates the table (row 9 is gone), loads its rows (more
    // than one statement's worth: 3 rows per statement) and ends pending.
    let c0 = seq.txn(vec![
        (t.clone(), mark(1, chunk(0, false))),
        read(&t, iv(1, 1)),
        read(&t, iv(2, 2)),
        read(&t, iv(3, 3)),
        read(&t, iv(4, 4)),
    ]);
    // A change after the chunk, then chunk 1 whose rows overlap it.
    let after = seq.txn(vec![upd(&t, iv(2, 2), iv(2, 20))]);
    let c1 = seq.txn(vec![(t.clone(), mark(1, chunk(1, true))), read(&t, iv(5, 5))]);
    b.apply(&[c0, after, c1], &none()).await.unwrap();
    assert_eq!(
        rows(&server, "t"),
        [iv(1, 1), iv(2, 20), iv(3, 3), iv(4, 4), iv(5, 5)]
    );
    assert!(pending(&server).is_empty());
    assert!(
        server.db.lock().unwrap().quarantine.is_empty(),
        "chunk 0 lifts the old quarantine"
    );
    // A snapshot that could not finish (the table was dropped meanwhile):
    // the table's pending state ends in a quarantine at the End event.
    let begin_u = seq.txn(vec![(
        u.clone(),
        mark(
            2,
            SnapshotPhase::Begin {
                estimated_rows: 0,
                request: None,
            },
        ),
    )]);
    let end_u = seq.txn(vec![(
        u.clone(),
        mark(
            2,
            SnapshotPhase::End {
                reason: "dropped".into(),
            },
        ),
    )]);
    let end_seq = end_u.last_seq();
    b.apply(&[begin_u], &none()).await.unwrap();
    assert_eq!(pending(&server), vec![u.id.clone()]);
    b.apply(&[end_u], &none()).await.unwrap();
    assert!(pending(&server).is_empty());
    let q = server.db.lock().unwrap().quarantine.clone();
    assert_eq!(
        q.get(&("r1".to_string(), u.id.clone())),
        Some(&(end_seq, "dropped".to_string()))
    );
    assert_eq!(offset(&server), end_seq);
    // Reset forgets pending snapshots and quarantines.
    let begin_t = seq.txn(vec![(
        t.clone(),
        mark(
            3,
            SnapshotPhase::Begin {
                estimated_rows: 0,
                request: None,
            },
        ),
    )]);
    b.apply(&[begin_t], &none()).await.unwrap();
    b.reset(1).await.unwrap();
    assert!(pending(&server).is_empty());
    assert!(server.db.lock().unwrap().quarantine.is_empty());
    assert_eq!(offset(&server), 0);
}

/// `app.t` with a third column.
fn wide(name: &str) -> Arc<TableSchema> {
    let mut t = (*table(name, true)).clone();
    t.columns.push(col("w", int()));
    Arc::new(t)
}

#[tokio::test]
async fn transactional_schema_changes_commit_with_their_offset() {
    use crate::ddl::DdlKind;
    let server = Server::default();
    let t = table("t", true);
    let t2 = wide("t");
    let mut a = Applier::<Mem>::new("r1", Mem::new(&server));
    a.open().await.unwrap();
    let mut seq = Seq(1);
    let data = seq.txn(vec![ins(&t, iv(1, 1))]);
    let alter = seq.txn(vec![(
        t2.clone(),
        change("ALTER TABLE t ADD w INT", DdlKind::AlterTable { actions: vec![] }),
    )]);
    let after = seq.txn(vec![ins(&t2, vec![Value::Int(2), Value::Int(2), Value::Int(7)])]);
    // The schema-change transaction is lost at its offset write: nothing of
    // it stays (it ran inside the transaction), and the retry applies it once.
    server.faults.lock().unwrap().fail_cmd = Some(("WriteOffset".into(), 1));
    let batch = [data, alter, after];
    let e = a.apply(&batch, &none()).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(
        offset(&server),
        1,
        "the data before the change committed on its own"
    );
    assert_eq!(
        server.db.lock().unwrap().tables[&TableId::new("r_app", "t")]
            .0
            .columns
            .len(),
        2
    );
    a.apply(&batch, &none()).await.unwrap();
    assert_eq!(offset(&server), 3);
    assert_eq!(
        rows(&server, "t"),
        [
            vec![Value::Int(1), Value::Int(1), Value::Null],
            vec![Value::Int(2), Value::Int(2), Value::Int(7)]
        ]
    );
    // A dropped table's pending snapshot and quarantine go in the same transaction.
    a.quarantine(&Quarantine {
        table: t.id.clone(),
        first_seq: 3,
        reason: "x".into(),
    })
    .await
    .unwrap();
    server
        .db
        .lock()
        .unwrap()
        .pending
        .insert(("r1".into(), t.id.clone()), 1);
    let drop = seq.txn(vec![(t2.clone(), change("DROP TABLE t", DdlKind::DropTable))]);
    a.apply(&[drop], &none()).await.unwrap();
    let db = server.db.lock().unwrap().clone();
    assert!(!db.tables.contains_key(&TableId::new("r_app", "t")));
    assert!(db.pending.is_empty() && db.quarantine.is_empty());
    assert_eq!(db.offsets["r1"], 4);
    assert!(db.notes.is_empty(), "transactional engines keep no note");
}

#[tokio::test]
async fn autocommit_schema_changes_are_noted_and_rerun_after_a_crash() {
    use crate::ddl::DdlKind;
    let server = Server::default();
    let n = table("n", true);
    let mut a = Applier::<Mem<true>>::new("r1", Mem::<true>::new(&server));
    a.open().await.unwrap();
    let mut seq = Seq(1);
    let create = seq.txn(vec![(
        n.clone(),
        change(
            "CREATE TABLE n (id INT PRIMARY KEY, v INT)",
            DdlKind::CreateTable {
                if_not_exists: false,
                or_replace: false,
            },
        ),
    )]);
    let data = seq.txn(vec![ins(&n, iv(1, 1))]);
    // Lost after the change ran, before its offset moved: the note stays.
    server.faults.lock().unwrap().fail_cmd = Some(("WriteOffset".into(), 0));
    let batch = [create, data];
    let e = a.apply(&batch, &none()).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    {
        let db = server.db.lock().unwrap();
        assert!(
            db.tables.contains_key(&TableId::new("r_app", "n")),
            "the change ran"
        );
        assert_eq!(db.notes.get("r1"), Some(&1), "and is noted as possibly run");
        assert_eq!(db.offsets["r1"], 0);
    }
    // The retry runs it again as `retried` (the engine takes "already
    // exists" as done), moves the offset, clears the note, goes on.
    a.apply(&batch, &none()).await.unwrap();
    let db = server.db.lock().unwrap().clone();
    assert!(db.notes.is_empty());
    assert_eq!(db.offsets["r1"], 2);
    assert_eq!(rows(&server, "n"), [iv(1, 1)]);
    // Without a note, the same change on an existing table is the engine's
    // definite error, tied to the table, and nothing moves.
    let again = seq.txn(vec![(
        n.clone(),
        change(
            "CREATE TABLE n (id INT PRIMARY KEY, v INT)",
            DdlKind::CreateTable {
                if_not_exists: false,
                or_replace: false,
            },
        ),
    )]);
    let e = a.apply(&[again], &none()).await.unwrap_err();
    assert!(!e.is_transient() && e.table() == Some(&n.id), "{e}");
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(offset(&server), 2);
}
