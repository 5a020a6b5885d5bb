//! SQL Server's side of [`pipeline::apply::Engine`]: connection, statements
//! and error classes. The transaction protocol is the core's.
//!
//! # Session
//! Each connection sets `XACT_ABORT ON` (any run-time error rolls the whole
//! transaction back rather than leaving it open with part of a batch) and
//! the ANSI options filtered indexes need; `ANSI_WARNINGS ON` turns silent
//! truncation into an error.
//!
//! # Errors
//! [`classify`] reads the server's error number: deadlocks (1205), lock
//! timeouts (1222), a database that is starting, failing over or
//! throttling, login failures (18456: a server that is starting refuses
//! logins until recovery ends; a wrong password keeps failing, loudly, on
//! every retry) and lost connections are transient; constraint, conversion,
//! truncation and syntax errors are definite.

use super::config::{Encrypt, SqlServerSinkConfig, Target};
use super::sql::{self, Bookkeeping, Param, MAX_PARAMS, MAX_VALUES_ROWS};
use pipeline::apply::{Applier, CascadeOp, Engine, Limits, RowsKind, Statement, TargetTable, ValueError};
use pipeline::event::Row;
use pipeline::replica::Quarantine;
use pipeline::retry::ErrorClass;
use pipeline::schema::{ColumnDef, TableId, TableSchema};
use pipeline::value::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use tiberius::{Client, ColumnData, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

/// The SQL Server replica applier.
pub type SqlServerSink = Applier<SqlServerEngine>;

impl SqlServerEngine {
    /// The applier keyed `consumer` in the replica's `dbmux_offsets`.
    pub fn sink(consumer: &str, config: SqlServerSinkConfig) -> SqlServerSink {
        Applier::new(consumer, SqlServerEngine::new(config))
    }
}

/// Session options of every connection (see the module docs).
pub const SESSION_SETUP: &str = "SET XACT_ABORT ON; SET ANSI_NULLS ON; SET ANSI_PADDING ON; \
     SET ANSI_WARNINGS ON; SET ARITHABORT ON; SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; \
     SET NUMERIC_ROUNDABORT OFF; SET IMPLICIT_TRANSACTIONS OFF; SET NOCOUNT OFF";

/// SQL Server error numbers that a retry can outlive.
pub const TRANSIENT_ERRORS: &[u32] = &[
    1205,  // chosen as a deadlock victim
    1222,  // lock request time-out
    1204,  // out of lock resources
    701,   // insufficient memory
    8645,  // time-out waiting for memory
    3960,  // snapshot isolation update conflict
    4060,  // cannot open database (starting, restoring)
    18456, // login failed (also while the server starts)
    233,   // no process on the other end of the pipe
    10053, // connection aborted
    10054, // connection reset
    10060, // connection timed out
    64,    // the network name is no longer available
    40197, // Azure: service error processing the request
    40501, // Azure: service busy
    40613, // Azure: database unavailable
    49918, // Azure: not enough resources
    49919, 49920, 10928, // Azure: resource limit
    10929, 4221, // read-only secondary: login during redo
    983,  // availability database not accessible (failover)
    976, 978,
];

/// Errors a set-based plan may cause that the source's order avoids:
/// unique key (2627, 2601), foreign key / check (547), and MERGE touching
/// one target row twice (8672, two keys equal under a case-insensitive
/// collation).
pub const SOURCE_ORDER_ERRORS: &[u32] = &[2627, 2601, 547, 8672];

/// Errors of idempotent DDL racing a concurrent creator: object exists
/// (2714), index exists (1913), schema exists (2759).
pub const ALREADY_EXISTS_ERRORS: &[u32] = &[2714, 1913, 2759];

/// Transient or definite (see the module docs).
pub fn classify(e: &tiberius::error::Error) -> ErrorClass {
    use tiberius::error::Error as E;
    match e {
        E::Server(t) => class_of_number(t.code()),
        E::Io { .. } | E::Tls(_) | E::Routing { .. } => ErrorClass::Transient,
        // A connection cut in the middle of a message.
        E::Protocol(m) if m.contains("EOF") || m.contains("connection") => ErrorClass::Transient,
        _ => ErrorClass::Definite,
    }
}

/// The class of a SQL Server error number: transient when listed in
/// [`TRANSIENT_ERRORS`], definite otherwise (an unknown error stops the
/// replica loudly rather than retrying something that may never pass).
pub fn class_of_number(code: u32) -> ErrorClass {
    if TRANSIENT_ERRORS.contains(&code) {
        ErrorClass::Transient
    } else {
        ErrorClass::Definite
    }
}

/// One open connection.
pub type Conn = Client<Compat<TcpStream>>;

/// The replica columns of an existing table: name → SQL Server data type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub columns: Vec<(String, String)>,
}

/// Per replica table: statement texts by row count (the texts are stable,
/// so SQL Server reuses their plans).
#[derive(Debug, Default)]
pub struct Table {
    merge: HashMap<usize, Arc<str>>,
    insert: HashMap<usize, Arc<str>>,
    delete: HashMap<usize, Arc<str>>,
}

/// SQL Server for [`Applier`].
#[derive(Debug)]
pub struct SqlServerEngine {
    config: SqlServerSinkConfig,
    books: Bookkeeping,
}

impl SqlServerEngine {
    pub fn new(config: SqlServerSinkConfig) -> Self {
        let books = Bookkeeping::new(&config.offsets_schema);
        Self { config, books }
    }

    pub fn config(&self) -> &SqlServerSinkConfig {
        &self.config
    }

    fn tiberius_config(t: &Target) -> tiberius::Config {
        let mut c = tiberius::Config::new();
        c.host(&t.host);
        c.port(t.port);
        c.database(&t.database);
        c.application_name(&t.application_name);
        c.authentication(tiberius::AuthMethod::sql_server(&t.user, &t.password));
        c.encryption(match t.encrypt {
            Encrypt::Required => tiberius::EncryptionLevel::Required,
            Encrypt::Strict => tiberius::EncryptionLevel::Strict,
            Encrypt::On => tiberius::EncryptionLevel::On,
            Encrypt::Off => tiberius::EncryptionLevel::Off,
        });
        if t.trust_server_certificate {
            c.trust_cert();
        } else if let Some(ca) = &t.ca {
            c.trust_cert_ca(ca);
        }
        c
    }

    fn bind(params: &[Param]) -> Vec<&dyn ToSql> {
        params.iter().map(|p| p as &dyn ToSql).collect()
    }

    fn text(s: &str) -> Param {
        ColumnData::String(Some(Cow::Owned(s.to_string())))
    }

    fn seq(seq: u64) -> Result<Param, String> {
        i64::try_from(seq)
            .map(|s| ColumnData::I64(Some(s)))
            .map_err(|_| format!("seq {seq} does not fit SQL Server's BIGINT"))
    }

    fn values(t: &TableSchema, cols: &[usize], rows: &[&Row]) -> Result<Vec<Param>, ValueError> {
        let mut out = Vec::with_capacity(rows.len() * cols.len());
        for r in rows {
            for &i in cols {
                let c = &t.columns[i];
                out.push(sql::param(c, &r[i]).map_err(|message| ValueError {
                    column: c.name.clone(),
                    message,
                })?);
            }
        }
        Ok(out)
    }

    fn cached(cache: &mut HashMap<usize, Arc<str>>, n: usize, build: impl FnOnce() -> String) -> Arc<str> {
        cache.entry(n).or_insert_with(|| build().into()).clone()
    }
}

impl Engine for SqlServerEngine {
    type Param = Param;
    type Error = tiberius::error::Error;
    type Conn = Conn;
    type Described = Described;
    type Table = Table;

    const NAME: &'static str = "SQL Server";

    fn limits(&self) -> Limits {
        Limits {
            max_rows_per_statement: self.config.max_rows_per_statement,
            max_statement_bytes: self.config.max_statement_bytes,
            max_transactions_per_commit: self.config.max_transactions_per_commit,
        }
    }

    fn classify(e: &Self::Error) -> ErrorClass {
        classify(e)
    }

    fn may_pass_in_source_order(e: &Self::Error) -> bool {
        e.code().is_some_and(|c| SOURCE_ORDER_ERRORS.contains(&c))
    }

    fn already_exists(e: &Self::Error) -> bool {
        e.code().is_some_and(|c| ALREADY_EXISTS_ERRORS.contains(&c))
    }

    fn describe_error(e: &Self::Error) -> String {
        match e {
            tiberius::error::Error::Server(t) => {
                format!("error {} (state {}): {}", t.code(), t.state(), t.message())
            }
            e => e.to_string(),
        }
    }

    async fn connect(&mut self) -> Result<Conn, Self::Error> {
        let target = self
            .config
            .target()
            .map_err(|e| tiberius::error::Error::Conversion(e.into()))?;
        let mut config = Self::tiberius_config(&target);
        // Azure SQL may redirect the login to another node, once.
        let mut redirected = false;
        let mut client = loop {
            let tcp = TcpStream::connect(config.get_addr()).await?;
            tcp.set_nodelay(true)?;
            match Client::connect(config.clone(), tcp.compat_write()).await {
                Ok(c) => break c,
                Err(tiberius::error::Error::Routing { host, port }) if !redirected => {
                    redirected = true;
                    config.host(&host);
                    config.port(port);
                }
                Err(e) => return Err(e),
            }
        };
        client.simple_query(SESSION_SETUP).await?.into_results().await?;
        Ok(client)
    }

    async fn execute(conn: &mut Conn, s: &Statement<Param>) -> Result<u64, Self::Error> {
        let params = Self::bind(&s.params);
        Ok(conn.execute(&*s.sql, &params).await?.total())
    }

    async fn query(conn: &mut Conn, s: &Statement<Param>) -> Result<Vec<Vec<Param>>, Self::Error> {
        let params = Self::bind(&s.params);
        let rows = conn.query(&*s.sql, &params).await?.into_first_result().await?;
        Ok(rows.into_iter().map(|r| r.into_iter().collect()).collect())
    }

    // Transactions through TDS Transaction Manager requests (not `BEGIN
    // TRAN` batches): the server's transaction descriptor is then attached
    // by the driver to every request of the transaction.
    async fn begin(conn: &mut Conn) -> Result<(), Self::Error> {
        conn.begin_transaction().await
    }

    async fn commit(conn: &mut Conn) -> Result<(), Self::Error> {
        conn.commit_transaction().await
    }

    async fn rollback(conn: &mut Conn) -> Result<(), Self::Error> {
        // XACT_ABORT may have rolled back already; the error then says so
        // and the applier drops the connection either way.
        conn.rollback_transaction().await
    }

    fn as_u64(p: &Param) -> Option<u64> {
        match p {
            ColumnData::I64(Some(v)) => u64::try_from(*v).ok(),
            ColumnData::I32(Some(v)) => u64::try_from(*v).ok(),
            ColumnData::I16(Some(v)) => u64::try_from(*v).ok(),
            ColumnData::U8(Some(v)) => Some(u64::from(*v)),
            _ => None,
        }
    }

    fn as_text(p: &Param) -> Option<String> {
        match p {
            ColumnData::String(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    fn setup(&self) -> Vec<Statement<Param>> {
        self.books.setup().into_iter().map(Statement::text).collect()
    }

    fn offsets_table(&self) -> String {
        self.books.offsets_table().to_string()
    }

    fn register(&self, consumer: &str) -> Statement<Param> {
        Statement::new(self.books.register(), vec![Self::text(consumer)])
    }

    fn read_offset(&self, consumer: &str, lock: bool) -> Statement<Param> {
        Statement::new(self.books.read_offset(lock), vec![Self::text(consumer)])
    }

    fn write_offset(
        &self,
        consumer: &str,
        seq: u64,
        position: Option<&str>,
    ) -> Result<Statement<Param>, String> {
        Ok(Statement::new(
            self.books.write_offset(),
            vec![
                Self::text(consumer),
                Self::seq(seq)?,
                ColumnData::String(position.map(|p| Cow::Owned(p.to_string()))),
            ],
        ))
    }

    fn read_quarantines(&self, consumer: &str) -> Statement<Param> {
        Statement::new(self.books.read_quarantines(), vec![Self::text(consumer)])
    }

    fn store_quarantine(&self, consumer: &str, q: &Quarantine) -> Statement<Param> {
        Statement::new(
            self.books.store_quarantine(),
            vec![
                Self::text(consumer),
                Self::text(&q.table.schema),
                Self::text(&q.table.name),
                ColumnData::I64(Some(i64::try_from(q.first_seq).unwrap_or(i64::MAX))),
                Self::text(&q.reason),
            ],
        )
    }

    fn move_quarantine(&self, consumer: &str, table: &TableId, next: Option<u64>) -> Statement<Param> {
        let mut params = vec![
            Self::text(consumer),
            Self::text(&table.schema),
            Self::text(&table.name),
        ];
        match next {
            Some(n) => {
                params.push(ColumnData::I64(Some(i64::try_from(n).unwrap_or(i64::MAX))));
                Statement::new(self.books.move_quarantine(), params)
            }
            None => Statement::new(self.books.lift_quarantine(), params),
        }
    }

    fn read_pending(&self, consumer: &str) -> Statement<Param> {
        Statement::new(self.books.read_pending(), vec![Self::text(consumer)])
    }

    fn store_pending(&self, consumer: &str, table: &TableId, run: u64) -> Statement<Param> {
        Statement::new(
            self.books.store_pending(),
            vec![
                Self::text(consumer),
                Self::text(&table.schema),
                Self::text(&table.name),
                ColumnData::I64(Some(i64::try_from(run).unwrap_or(i64::MAX))),
            ],
        )
    }

    fn drop_pending(&self, consumer: &str, table: &TableId) -> Statement<Param> {
        Statement::new(
            self.books.drop_pending(),
            vec![
                Self::text(consumer),
                Self::text(&table.schema),
                Self::text(&table.name),
            ],
        )
    }

    fn drop_schema_state(&self, consumer: &str, schema: &str) -> Vec<Statement<Param>> {
        self.books
            .drop_schema_state()
            .into_iter()
            .map(|s| Statement::new(s, vec![Self::text(consumer), Self::text(schema)]))
            .collect()
    }

    fn clear_state(&self, consumer: &str) -> Vec<Statement<Param>> {
        self.books
            .clear_state()
            .into_iter()
            .map(|s| Statement::new(s, vec![Self::text(consumer)]))
            .collect()
    }

    /// Snapshots load into a table created from the event's definition
    /// (the source's own `CREATE TABLE` is another engine's dialect).
    fn recreate_table(
        &self,
        target: &TableId,
        schema: &TableSchema,
        _source: &TableSchema,
        _create: Option<&str>,
    ) -> Result<Vec<String>, (String, String)> {
        let mut v = vec![sql::drop_table(target)];
        v.extend(self.create_table(target, schema)?);
        Ok(v)
    }

    fn target_table(&self, source: &TableId) -> TableId {
        let name = self
            .config
            .rename_tables
            .get(&source.to_string())
            .cloned()
            .unwrap_or_else(|| source.name.clone());
        let schema = self
            .config
            .schema
            .clone()
            .unwrap_or_else(|| source.schema.clone());
        TableId::new(schema, name)
    }

    fn target_column(&self, source: &TableId, column: &str) -> String {
        self.config
            .rename_columns
            .get(&source.to_string())
            .and_then(|m| m.get(column))
            .cloned()
            .unwrap_or_else(|| column.to_string())
    }

    fn is_own_table(&self, target: &TableId) -> bool {
        target.schema == self.books.schema() && sql::OWN_TABLES.contains(&target.name.as_str())
    }

    async fn describe(&self, conn: &mut Conn, target: &TableId) -> Result<Option<Described>, Self::Error> {
        let params = [Self::text(&target.schema), Self::text(&target.name)];
        let rows = conn
            .query(sql::describe_table(), &Self::bind(&params))
            .await?
            .into_first_result()
            .await?;
        let columns: Vec<(String, String)> = rows
            .into_iter()
            .filter_map(|r| {
                let mut it = r.into_iter();
                match (it.next(), it.next()) {
                    (Some(ColumnData::String(Some(n))), Some(ColumnData::String(Some(t)))) => {
                        Some((n.into_owned(), t.into_owned()))
                    }
                    _ => None,
                }
            })
            .collect();
        Ok((!columns.is_empty()).then_some(Described { columns }))
    }

    fn create_table(&self, target: &TableId, schema: &TableSchema) -> Result<Vec<String>, (String, String)> {
        debug_assert_eq!(&schema.id, target);
        sql::create_table(schema)
    }

    fn table(&self, _: &TableId, schema: &Arc<TableSchema>, described: &Described) -> Result<Table, String> {
        for c in &schema.columns {
            if !described
                .columns
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(&c.name))
            {
                return Err(format!(
                    "the replica table has no column {:?} (it was created otherwise; add the column or drop the table \
                     to have it created again)",
                    c.name
                ));
            }
            sql::check_ident(&c.name)?;
        }
        Ok(Table::default())
    }

    fn max_rows(&self, table: &TargetTable<Table>, kind: RowsKind) -> usize {
        let width = match kind {
            RowsKind::Delete => table.schema.primary_key.len(),
            _ => table.schema.columns.len(),
        }
        .max(1);
        let by_params = (MAX_PARAMS / width).max(1);
        match kind {
            RowsKind::Insert => by_params.min(MAX_VALUES_ROWS),
            _ => by_params,
        }
    }

    fn rows(
        &self,
        table: &mut TargetTable<Table>,
        kind: RowsKind,
        rows: &[&Row],
    ) -> Result<Statement<Param>, ValueError> {
        let t = &table.schema;
        let n = rows.len();
        let (sql, cols): (Arc<str>, Vec<usize>) = match kind {
            RowsKind::Upsert => (
                Self::cached(&mut table.engine.merge, n, || sql::merge(t, n)),
                (0..t.columns.len()).collect(),
            ),
            RowsKind::Insert => (
                Self::cached(&mut table.engine.insert, n, || sql::insert(t, n)),
                (0..t.columns.len()).collect(),
            ),
            RowsKind::Delete => (
                Self::cached(&mut table.engine.delete, n, || sql::delete_keys(t, n)),
                t.primary_key.clone(),
            ),
        };
        Ok(Statement::new(sql, Self::values(t, &cols, rows)?))
    }

    fn update_one(
        &self,
        table: &mut TargetTable<Table>,
        before: &Row,
        after: &Row,
    ) -> Result<Statement<Param>, ValueError> {
        let t = &table.schema;
        let nulls: Vec<bool> = before.iter().map(Value::is_null).collect();
        let present: Vec<usize> = (0..t.columns.len()).filter(|&i| !nulls[i]).collect();
        let mut params = Self::values(t, &present, &[before])?;
        params.extend(Self::values(
            t,
            &(0..t.columns.len()).collect::<Vec<_>>(),
            &[after],
        )?);
        Ok(Statement::new(sql::update_one(t, &nulls), params))
    }

    fn delete_one(
        &self,
        table: &mut TargetTable<Table>,
        before: &Row,
    ) -> Result<Statement<Param>, ValueError> {
        let t = &table.schema;
        let nulls: Vec<bool> = before.iter().map(Value::is_null).collect();
        let present: Vec<usize> = (0..t.columns.len()).filter(|&i| !nulls[i]).collect();
        Ok(Statement::new(
            sql::delete_one(t, &nulls),
            Self::values(t, &present, &[before])?,
        ))
    }

    fn truncate(&self, target: &TableId) -> Statement<Param> {
        Statement::text(sql::truncate(target))
    }

    fn param(&self, column: &ColumnDef, value: &Value) -> Result<Param, String> {
        sql::param(column, value)
    }

    fn null() -> Param {
        ColumnData::String(None)
    }

    fn is_null(p: &Param) -> bool {
        matches!(
            p,
            ColumnData::U8(None)
                | ColumnData::I16(None)
                | ColumnData::I32(None)
                | ColumnData::I64(None)
                | ColumnData::F32(None)
                | ColumnData::F64(None)
                | ColumnData::Bit(None)
                | ColumnData::String(None)
                | ColumnData::Guid(None)
                | ColumnData::Binary(None)
                | ColumnData::Numeric(None)
                | ColumnData::Xml(None)
                | ColumnData::DateTime(None)
                | ColumnData::SmallDateTime(None)
                | ColumnData::Time(None)
                | ColumnData::Date(None)
                | ColumnData::DateTime2(None)
                | ColumnData::DateTimeOffset(None)
        )
    }

    fn cascade(
        &self,
        target: &TableId,
        described: &Described,
        op: CascadeOp<'_, Param>,
    ) -> Result<Vec<Statement<Param>>, String> {
        let missing = |cols: &[String]| {
            cols.iter()
                .find(|c| !described.columns.iter().any(|(n, _)| n.eq_ignore_ascii_case(c)))
                .map(|c| format!("the replica table has no column {c:?}, which a foreign-key cascade needs"))
        };
        let chunk = |width: usize, extra: usize| ((MAX_PARAMS - extra) / width.max(1)).max(1);
        let mut out = Vec::new();
        match op {
            CascadeOp::Select { cols, keys, want } => {
                if let Some(e) = missing(cols).or_else(|| missing(want)) {
                    return Err(e);
                }
                for part in keys.chunks(chunk(cols.len(), 0)) {
                    out.push(Statement::new(
                        sql::cascade_select(target, cols, part.len(), want),
                        part.iter().flatten().cloned().collect(),
                    ));
                }
            }
            CascadeOp::Delete { cols, keys } => {
                if let Some(e) = missing(cols) {
                    return Err(e);
                }
                for part in keys.chunks(chunk(cols.len(), 0)) {
                    out.push(Statement::new(
                        sql::cascade_delete(target, cols, part.len()),
                        part.iter().flatten().cloned().collect(),
                    ));
                }
            }
            CascadeOp::Update { cols, keys, new } => {
                if let Some(e) = missing(cols) {
                    return Err(e);
                }
                for part in keys.chunks(chunk(cols.len(), cols.len())) {
                    let mut params: Vec<Param> = new.map(|n| n.to_vec()).unwrap_or_default();
                    params.extend(part.iter().flatten().cloned());
                    out.push(Statement::new(
                        sql::cascade_update(target, cols, part.len(), new.is_none()),
                        params,
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_numbers_are_classified_once_and_consistently() {
        for c in SOURCE_ORDER_ERRORS.iter().chain(ALREADY_EXISTS_ERRORS) {
            assert!(
                !TRANSIENT_ERRORS.contains(c),
                "{c} is both transient and definite"
            );
        }
        // Deadlock, lock timeout, login failed, Azure database unavailable, cannot open database.
        for c in [1205, 1222, 18456, 40613, 4060] {
            assert_eq!(class_of_number(c), ErrorClass::Transient, "{c}");
        }
        // Unique key, duplicate index key, FK, NULL into NOT NULL, truncation (old and new), syntax,
        // unknown column and object, conversion, arithmetic overflow, MERGE twice, and an unknown number.
        for c in [
            2627, 2601, 547, 515, 8152, 2628, 102, 156, 207, 208, 245, 8114, 8115, 8672, 99999,
        ] {
            assert_eq!(class_of_number(c), ErrorClass::Definite, "{c} is definite");
        }
        let reset = tiberius::error::Error::Io {
            kind: std::io::ErrorKind::ConnectionReset,
            message: "reset".into(),
        };
        assert_eq!(classify(&reset), ErrorClass::Transient, "a reset connection");
        for e in [
            tiberius::error::Error::Conversion("bad".into()),
            tiberius::error::Error::Utf16,
            tiberius::error::Error::BulkInput("x".into()),
        ] {
            assert_eq!(classify(&e), ErrorClass::Definite, "{e}");
        }
        assert_eq!(
            classify(&tiberius::error::Error::Routing {
                host: "h".into(),
                port: 1
            }),
            ErrorClass::Transient
        );
    }

    fn engine() -> SqlServerEngine {
        let mut c = SqlServerSinkConfig::new("sqlserver://u:p@h/db");
        c.rename_tables.insert("app.Odd".into(), "renamed".into());
        c.rename_columns
            .insert("app.t".into(), [("from".to_string(), "to".to_string())].into());
        SqlServerEngine::new(c)
    }

    fn int() -> pipeline::schema::ColumnType {
        pipeline::schema::ColumnType::Integer {
            bytes: 4,
            unsigned: false,
        }
    }

    fn table(keyed: bool) -> TargetTable<Table> {
        let cols = ["a", "b", "c"]
            .iter()
            .map(|n| ColumnDef {
                name: n.to_string(),
                ty: int(),
                nullable: true,
                charset: None,
                collation: None,
                source_type: String::new(),
            })
            .collect();
        let schema = TableSchema::new(
            TableId::new("app", "t"),
            cols,
            if keyed { vec![1] } else { vec![] },
        );
        TargetTable {
            id: schema.id.clone(),
            schema: Arc::new(schema),
            engine: Table::default(),
        }
    }

    fn i(v: i64) -> Param {
        ColumnData::I64(Some(v))
    }

    #[test]
    fn names_renames_and_own_tables() {
        let e = engine();
        assert_eq!(
            e.target_table(&TableId::new("app", "Odd")),
            TableId::new("app", "renamed")
        );
        assert_eq!(
            e.target_table(&TableId::new("shop", "t")),
            TableId::new("shop", "t")
        );
        assert_eq!(e.target_column(&TableId::new("app", "t"), "from"), "to");
        assert_eq!(e.target_column(&TableId::new("app", "u"), "from"), "from");
        assert!(e.is_own_table(&TableId::new("dbmux", "dbmux_offsets")));
        assert!(e.is_own_table(&TableId::new("dbmux", "dbmux_quarantine")));
        assert!(e.is_own_table(&TableId::new("dbmux", "dbmux_snapshot")));
        assert!(!e.is_own_table(&TableId::new("app", "dbmux_offsets")));
        let mut c = SqlServerSinkConfig::new("sqlserver://u:p@h/db");
        c.schema = Some("one".into());
        assert_eq!(
            SqlServerEngine::new(c).target_table(&TableId::new("shop", "t")),
            TableId::new("one", "t")
        );
    }

    /// The parameters line up with the placeholders of the SQL they go with.
    #[test]
    fn parameters_follow_the_placeholders() {
        let e = engine();
        let mut t = table(true);
        let r1 = vec![Value::Int(1), Value::Int(2), Value::Null];
        let r2 = vec![Value::Int(4), Value::Int(5), Value::Int(6)];
        let s = e.rows(&mut t, RowsKind::Upsert, &[&r1, &r2]).unwrap();
        assert!(s.sql.starts_with("MERGE INTO [app].[t]"));
        assert_eq!(
            s.params,
            vec![i(1), i(2), ColumnData::I64(None), i(4), i(5), i(6)]
        );
        let d = e.rows(&mut t, RowsKind::Delete, &[&r1, &r2]).unwrap();
        assert_eq!(d.params, vec![i(2), i(5)], "only the key column (b)");
        assert!(d.sql.contains("(VALUES (@P1), (@P2)) AS s ([b])"), "{}", d.sql);
        // The text is built once per row count and shared.
        let again = e.rows(&mut t, RowsKind::Upsert, &[&r2, &r1]).unwrap();
        assert!(Arc::ptr_eq(&s.sql, &again.sql));

        let mut k = table(false);
        let u = e.update_one(&mut k, &r1, &r2).unwrap();
        assert_eq!(
            u.params,
            vec![i(1), i(2), i(4), i(5), i(6)],
            "non-NULL before values, then the after image"
        );
        assert!(u.sql.contains("[c] IS NULL"), "{}", u.sql);
        let d = e.delete_one(&mut k, &r1).unwrap();
        assert_eq!(d.params, vec![i(1), i(2)]);
        // A value error names the replica column.
        let bad = vec![Value::Text("x".into()), Value::Int(1), Value::Int(1)];
        assert_eq!(e.rows(&mut t, RowsKind::Insert, &[&bad]).unwrap_err().column, "a");
    }

    #[test]
    fn row_limits_keep_under_2100_parameters_and_1000_values_rows() {
        let e = engine();
        let t = table(true);
        assert_eq!(e.max_rows(&t, RowsKind::Upsert), 2098 / 3);
        assert_eq!(e.max_rows(&t, RowsKind::Delete), 2098, "one key column");
        assert_eq!(e.max_rows(&t, RowsKind::Insert), 2098 / 3);
        let narrow = {
            let mut t = table(true);
            let mut s = (*t.schema).clone();
            s.columns.truncate(1);
            s.primary_key = vec![0];
            t.schema = Arc::new(s);
            t
        };
        assert_eq!(
            e.max_rows(&narrow, RowsKind::Insert),
            1000,
            "INSERT … VALUES takes 1,000 rows at most"
        );
    }

    #[test]
    fn offsets_and_quarantines_bind_their_parameters() {
        let e = engine();
        let w = e.write_offset("p/r", 42, Some("mariadb-bin.000001:4")).unwrap();
        assert_eq!(
            w.params,
            vec![
                ColumnData::String(Some("p/r".into())),
                i(42),
                ColumnData::String(Some("mariadb-bin.000001:4".into()))
            ]
        );
        assert!(e
            .write_offset("p/r", u64::MAX, None)
            .unwrap_err()
            .contains("BIGINT"));
        let t = TableId::new("app", "t");
        let lift = e.move_quarantine("p/r", &t, None);
        assert!(lift.sql.starts_with("DELETE FROM [dbmux].[dbmux_quarantine]"));
        assert_eq!(lift.params.len(), 3);
        let moved = e.move_quarantine("p/r", &t, Some(9));
        assert_eq!(moved.params[3], i(9));
        assert_eq!(SqlServerEngine::as_u64(&i(7)), Some(7));
        assert_eq!(SqlServerEngine::as_u64(&i(-1)), None);
        assert_eq!(
            SqlServerEngine::as_text(&ColumnData::String(Some("x".into()))).as_deref(),
            Some("x")
        );
    }

    #[test]
    fn snapshot_bookkeeping_binds_its_parameters_and_recreates_tables() {
        let e = engine();
        let t = TableId::new("app", "t");
        assert!(e
            .setup()
            .iter()
            .any(|s| s.sql.contains("[dbmux].[dbmux_snapshot]")));
        let read = e.read_pending("p/r");
        assert!(read
            .sql
            .starts_with("SELECT [table_schema], [table_name] FROM [dbmux].[dbmux_snapshot]"));
        assert_eq!(read.params, vec![ColumnData::String(Some("p/r".into()))]);
        let store = e.store_pending("p/r", &t, 7);
        assert!(store
            .sql
            .starts_with("MERGE INTO [dbmux].[dbmux_snapshot] WITH (HOLDLOCK)"));
        assert_eq!(store.params.len(), 4);
        assert_eq!(store.params[3], i(7));
        assert!(store.sql.contains("@P4") && !store.sql.contains("@P5"));
        let dropped = e.drop_pending("p/r", &t);
        assert!(dropped.sql.starts_with("DELETE FROM [dbmux].[dbmux_snapshot]"));
        assert_eq!(dropped.params.len(), 3);
        let schema = e.drop_schema_state("p/r", "app");
        assert_eq!(schema.len(), 2);
        assert!(schema
            .iter()
            .all(|s| s.params.len() == 2 && s.sql.contains("[table_schema] = @P2")));
        let clear = e.clear_state("p/r");
        assert!(clear.iter().any(|s| s.sql.contains("[dbmux_quarantine]")));
        assert!(clear.iter().any(|s| s.sql.contains("[dbmux_snapshot]")));
        let k = table(true);
        let ddl = e
            .recreate_table(&k.id, &k.schema, &k.schema, Some("CREATE TABLE t (a INT)"))
            .unwrap();
        assert_eq!(ddl[0], format!("DROP TABLE IF EXISTS {}", sql::qualified(&k.id)));
        assert_eq!(&ddl[1..], &e.create_table(&k.id, &k.schema).unwrap()[..]);
    }

    #[test]
    fn cascades_put_new_values_first_and_split_by_the_parameter_limit() {
        let e = engine();
        let d = Described {
            columns: vec![("a".into(), "int".into()), ("b".into(), "int".into())],
        };
        let t = TableId::new("app", "t");
        let cols = vec!["a".to_string()];
        let keys: Vec<Vec<Param>> = (0..3000).map(|k| vec![i(k)]).collect();
        let s = e
            .cascade(
                &t,
                &d,
                CascadeOp::Update {
                    cols: &cols,
                    keys: &keys,
                    new: Some(&[i(-1)]),
                },
            )
            .unwrap();
        assert_eq!(s.len(), 2, "3,000 keys + 1 new value need two statements");
        assert_eq!(s[0].params[0], i(-1));
        assert_eq!(s[0].params.len(), 2098);
        assert_eq!(s[0].params[1], i(0));
        assert_eq!(s[1].params[0], i(-1));
        let del = e
            .cascade(
                &t,
                &d,
                CascadeOp::Delete {
                    cols: &cols,
                    keys: &keys[..2],
                },
            )
            .unwrap();
        assert_eq!(del[0].params, vec![i(0), i(1)]);
        let missing = vec!["zz".to_string()];
        assert!(e
            .cascade(
                &t,
                &d,
                CascadeOp::Delete {
                    cols: &missing,
                    keys: &keys[..1]
                }
            )
            .unwrap_err()
            .contains("\"zz\""));
        assert!(SqlServerEngine::is_null(&ColumnData::Binary(None)));
        assert!(!SqlServerEngine::is_null(&i(0)));
    }
}
