//! The SQL Server applier against a live server, when there is one.
//!
//! No SQL Server can run on the build machine (no Linux package in the
//! registries this project may use, no Docker engine), so these tests run only
//! when `DBMUX_TEST_MSSQL_URL` names a server
//! (`sqlserver://sa:Password1!@host:1433/dbmux_test?trust_server_certificate=true`),
//! They are `#[ignore]`d, so a run without a server reports them as ignored,
//! never as passed; `scripts/test` runs them (`--ignored`) when the variable
//! is set, and run by hand without it they fail saying why. The generated T-SQL and the type mapping are
//! unit-tested in `connectors/src/sqlserver/sql/tests.rs` whatever the machine.

use crate::support::unique_name;
use connectors::sqlserver::{SqlServerEngine, SqlServerSinkConfig};
use pipeline::apply::{Engine, Statement};
use pipeline::event::sequence_transaction;
use pipeline::retry::{Classify, ErrorClass};
use pipeline::schema::{ColumnDef, ColumnType, TableId, TableSchema};
use pipeline::sink::Sink;
use pipeline::value::{Date, DateTime, Time};
use pipeline::{Op, Position, Transaction, Value};
use std::sync::Arc;

const URL_VAR: &str = "DBMUX_TEST_MSSQL_URL";

fn url(test: &str) -> String {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "{test}: no SQL Server to test against; set {URL_VAR}=sqlserver://user:password@host:1433/db\
             ?trust_server_certificate=true to run it (see README, \"What is tested here\")"
        ),
    }
}

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

/// A table of every mapped type, keyed by `id`.
fn matrix(db: &str) -> Arc<TableSchema> {
    use ColumnType as T;
    let mut cols = vec![col(
        "id",
        T::Integer {
            bytes: 4,
            unsigned: false,
        },
    )];
    cols[0].nullable = false;
    cols.extend([
        col("b", T::Bool),
        col(
            "u64",
            T::Integer {
                bytes: 8,
                unsigned: true,
            },
        ),
        col(
            "dec",
            T::Decimal {
                precision: 12,
                scale: 3,
            },
        ),
        col(
            "wide",
            T::Decimal {
                precision: 65,
                scale: 30,
            },
        ),
        col("f", T::Float),
        col("d", T::Double),
        col("day", T::Date),
        col("tod", T::Time { fsp: 6 }),
        col("dt", T::DateTime { fsp: 6 }),
        col("ts", T::TimestampTz { fsp: 6 }),
        col("y", T::Year),
        col("s", T::VarChar { length: 50 }),
        col("txt", T::Text { max_bytes: 65535 }),
        col("bin", T::VarBinary { length: 20 }),
        col("js", T::Json),
        col(
            "e",
            T::Enum {
                labels: vec!["small".into(), "big".into()],
            },
        ),
        col(
            "st",
            T::Set {
                labels: vec!["a".into(), "b".into()],
            },
        ),
        col("bits", T::Bit { width: 12 }),
        col("uid", T::Uuid),
        col(
            "odd]name",
            T::Integer {
                bytes: 2,
                unsigned: false,
            },
        ),
    ]);
    Arc::new(TableSchema::new(TableId::new(db, "matrix"), cols, vec![0]))
}

fn row(id: i64, text: &str) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Int(1),
        Value::UInt(u64::MAX),
        Value::Decimal("-12345.678".into()),
        Value::Decimal("123456789012345678901234567890.5".into()),
        Value::Float(1.5),
        Value::Double(-2.25e100),
        Value::Date(Date {
            year: 2024,
            month: 2,
            day: 29,
        }),
        Value::Time(Time {
            negative: false,
            hours: 23,
            minutes: 59,
            seconds: 58,
            micros: 999_999,
        }),
        Value::DateTime(DateTime {
            date: Date {
                year: 1,
                month: 1,
                day: 1,
            },
            hour: 0,
            minute: 0,
            second: 0,
            micros: 1,
        }),
        Value::Timestamp(1_700_000_000_123_456),
        Value::Year(2155),
        Value::Text(text.into()),
        Value::Text("x".repeat(10_000)),
        Value::Bytes(vec![0, 1, 255, 0]),
        Value::Json("{\"k\": [1, 2]}".into()),
        Value::Enum("big".into()),
        Value::Set(vec!["a".into(), "b".into()]),
        Value::Bit(0xabc),
        Value::Text("67e55044-10b1-426f-9247-bb680e5fe0c8".into()),
        Value::Int(-3),
    ]
}

async fn scalar_text(engine: &mut SqlServerEngine, sql: &str) -> Vec<Vec<String>> {
    let mut conn = engine.connect().await.expect("connect");
    let rows = SqlServerEngine::query(&mut conn, &Statement::text(sql.to_string()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter()
        .map(|r| r.into_iter().map(|c| format!("{c:?}")).collect())
        .collect()
}

#[tokio::test]
#[ignore = "needs a SQL Server: set DBMUX_TEST_MSSQL_URL (scripts/test then runs it)"]
async fn sqlserver_applies_every_type_exactly_once() {
    let url = url("sqlserver_applies_every_type_exactly_once");
    let db = unique_name("ms");
    let t = matrix(&db);
    let config = SqlServerSinkConfig::new(&url);
    let mut sink = SqlServerEngine::sink(&format!("{db}/test"), config.clone());
    assert_eq!(sink.open().await.unwrap().applied, 0);
    let pos = |n| Position::Postgres(n);
    let t1 = sequence_transaction(
        1,
        "t1".into(),
        0,
        pos(1),
        vec![
            (
                t.clone(),
                Op::Insert {
                    after: row(1, "héllo wörld ☃"),
                },
            ),
            (t.clone(), Op::Insert { after: row(2, "two") }),
        ],
    );
    let t2 = sequence_transaction(
        3,
        "t2".into(),
        0,
        pos(2),
        vec![
            (
                t.clone(),
                Op::Update {
                    before: row(1, "héllo wörld ☃"),
                    after: row(1, "changed"),
                },
            ),
            (
                t.clone(),
                Op::Delete {
                    before: row(2, "two"),
                },
            ),
        ],
    );
    sink.apply(std::slice::from_ref(&t1), &Default::default())
        .await
        .unwrap();
    // Handing over the applied transaction again applies only what is new.
    let txns: Vec<Transaction> = vec![t1, t2];
    sink.apply(&txns, &Default::default()).await.unwrap();
    sink.apply(&txns, &Default::default()).await.unwrap();

    let mut engine = SqlServerEngine::new(config);
    let rows = scalar_text(
        &mut engine,
        &format!("SELECT [id], [s], [u64], [dec], [wide], [day], [bits], [odd]]name] FROM [{db}].[matrix] ORDER BY [id]"),
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = rows[0].join(" ");
    for want in [
        "I32(Some(1))",
        "\"changed\"",
        "18446744073709551615",
        "-12345678",
        "123456789012345678901234567890.5",
    ] {
        assert!(r.contains(want), "{want} in {r}");
    }
    let off = scalar_text(
        &mut engine,
        &format!("SELECT [seq] FROM [dbmux].[dbmux_offsets] WHERE [consumer] = N'{db}/test'"),
    )
    .await;
    assert_eq!(off, vec![vec!["I64(Some(4))".to_string()]]);
}

#[tokio::test]
#[ignore = "needs a SQL Server: set DBMUX_TEST_MSSQL_URL (scripts/test then runs it)"]
async fn sqlserver_constraint_errors_are_definite_and_name_the_table() {
    let url = url("sqlserver_constraint_errors_are_definite_and_name_the_table");
    let db = unique_name("msuk");
    let mut t = TableSchema::new(
        TableId::new(&db, "u"),
        vec![
            col(
                "id",
                ColumnType::Integer {
                    bytes: 4,
                    unsigned: false,
                },
            ),
            col("email", ColumnType::VarChar { length: 50 }),
        ],
        vec![0],
    );
    t.unique_keys = vec![vec![1]];
    let t = Arc::new(t);
    let mut sink = SqlServerEngine::sink(&format!("{db}/test"), SqlServerSinkConfig::new(&url));
    sink.open().await.unwrap();
    let ins = |id: i64, e: &str| {
        (
            t.clone(),
            Op::Insert {
                after: vec![Value::Int(id), Value::Text(e.into())],
            },
        )
    };
    let bad = sequence_transaction(
        1,
        "t".into(),
        0,
        Position::Postgres(1),
        vec![ins(1, "a"), ins(2, "a")],
    );
    let e = sink.apply(&[bad], &Default::default()).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Definite, "{e}");
    assert!(
        e.to_string().contains("2627") || e.to_string().contains("2601"),
        "{e}"
    );
    assert_eq!(pipeline::sink::TableScoped::table(&e), Some(&t.id));
    // Nothing of the failed transaction landed; NULLs do not collide in the unique key.
    let nulls = sequence_transaction(
        1,
        "t".into(),
        0,
        Position::Postgres(1),
        vec![
            (
                t.clone(),
                Op::Insert {
                    after: vec![Value::Int(1), Value::Null],
                },
            ),
            (
                t.clone(),
                Op::Insert {
                    after: vec![Value::Int(2), Value::Null],
                },
            ),
        ],
    );
    sink.apply(&[nulls], &Default::default()).await.unwrap();
}

#[tokio::test]
#[ignore = "needs a SQL Server: set DBMUX_TEST_MSSQL_URL (scripts/test then runs it)"]
async fn sqlserver_snapshots_recreate_load_and_keep_their_bookkeeping() {
    use pipeline::snapshot::{SnapshotMark, SnapshotPhase};
    let url = url("sqlserver_snapshots_recreate_load_and_keep_their_bookkeeping");
    let db = unique_name("mssnap");
    let int = || ColumnType::Integer {
        bytes: 4,
        unsigned: false,
    };
    let t = Arc::new(TableSchema::new(
        TableId::new(&db, "t"),
        vec![col("id", int()), col("v", int())],
        vec![0],
    ));
    let consumer = format!("{db}/test");
    let config = SqlServerSinkConfig::new(&url);
    let mut sink = SqlServerEngine::sink(&consumer, config.clone());
    sink.open().await.unwrap();
    let iv = |id: i64, v: i64| vec![Value::Int(id), Value::Int(v)];
    let mark = |phase| {
        Op::Snapshot(Box::new(SnapshotMark {
            id: 1,
            targets: vec![],
            reset: false,
            phase,
        }))
    };
    let chunk = |index, last| SnapshotPhase::Chunk {
        index,
        upto: None,
        rows: 0,
        last,
        whole: false,
        create: Some("CREATE TABLE `t` (`id` int PRIMARY KEY, `v` int)".into()),
    };
    let txn = |first: u64, changes: Vec<(Arc<TableSchema>, Op)>| {
        sequence_transaction(first, format!("t{first}"), 0, Position::Postgres(first), changes)
    };
    // A row the snapshot replaces, then the table's Begin mark.
    let t1 = txn(1, vec![(t.clone(), Op::Insert { after: iv(9, 9) })]);
    let begin = txn(
        2,
        vec![(
            t.clone(),
            mark(SnapshotPhase::Begin {
                estimated_rows: 3,
                request: None,
            }),
        )],
    );
    sink.apply(&[t1, begin], &Default::default()).await.unwrap();
    let mut again = SqlServerEngine::sink(&consumer, config.clone());
    assert_eq!(again.open().await.unwrap().pending, vec![t.id.clone()]);
    // Chunk 0 recreates the table from the neutral definition (the source's
    // MySQL statement is another dialect) and loads; a streamed update lands
    // between the chunks, and chunk 1 overlaps it.
    let read = |id, v| (t.clone(), Op::Read { after: iv(id, v) });
    let c0 = txn(
        3,
        vec![(t.clone(), mark(chunk(0, false))), read(1, 1), read(2, 2)],
    );
    let upd = txn(
        6,
        vec![(
            t.clone(),
            Op::Update {
                before: iv(2, 2),
                after: iv(2, 20),
            },
        )],
    );
    let c1 = txn(
        7,
        vec![(t.clone(), mark(chunk(1, true))), read(2, 20), read(3, 3)],
    );
    again.apply(&[c0, upd, c1], &Default::default()).await.unwrap();
    let mut engine = SqlServerEngine::new(config.clone());
    let rows = scalar_text(
        &mut engine,
        &format!("SELECT [id], [v] FROM [{db}].[t] ORDER BY [id]"),
    )
    .await;
    let want: Vec<Vec<String>> = [(1, 1), (2, 20), (3, 3)]
        .iter()
        .map(|(a, b)| vec![format!("I32(Some({a}))"), format!("I32(Some({b}))")])
        .collect();
    assert_eq!(rows, want);
    let pending = scalar_text(
        &mut engine,
        &format!("SELECT COUNT(*) FROM [dbmux].[dbmux_snapshot] WHERE [consumer] = N'{consumer}'"),
    )
    .await;
    assert_eq!(pending, vec![vec!["I32(Some(0))".to_string()]]);
    // A schema change is refused as a definite error of its table.
    let ddl = txn(
        10,
        vec![(
            t.clone(),
            Op::Ddl(Box::new(pipeline::ddl::SchemaChange {
                statement: "ALTER TABLE t ADD w INT".into(),
                default_schema: db.clone(),
                kind: pipeline::ddl::DdlKind::AlterTable { actions: vec![] },
                unique_key_names: vec![],
            })),
        )],
    );
    let e = again.apply(&[ddl], &Default::default()).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Definite, "{e}");
    assert_eq!(pipeline::sink::TableScoped::table(&e), Some(&t.id));
    assert!(e.to_string().contains("do not apply schema changes yet"), "{e}");
}

/// Runs on every machine: `dbmux check-config` accepts the SQL Server example
/// (describing the replica without its password) and reports a broken
/// `[replica.sqlserver]` section with every problem at once.
#[test]
fn sqlserver_example_and_bad_sections_through_check_config() {
    let run = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
            .arg("check-config")
            .arg(file)
            .env(
                "MSSQL_URL",
                "sqlserver://dbmux:s3cret-pw@mssql.example:1433/replica",
            )
            .output()
            .unwrap()
    };
    let out = run(&crate::support::repo_root().join("examples/sqlserver-replica.toml"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("replica mssql: sqlserver sqlserver://dbmux:***@mssql.example:1433/replica"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[source.mysql]\nurl = \"mysql://u@127.0.0.1:1/\"\ninclude = [\"app.*\"]\n\
         [[replica]]\nname = \"ms\"\n[replica.sqlserver]\nurl = \"sqlserver://u:s3cret-pw@h/db?encrypt=maybe\"\n\
         max_statement_bytes = 0\nrename_tables = { \"app.t\" = \"\" }\n",
    )
    .unwrap();
    let out = run(&bad);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for want in [
        "3 problem(s)",
        "replica[0].sqlserver.url: ",
        "replica[0].sqlserver.max_statement_bytes: must be > 0",
        "replica[0].sqlserver.rename_tables.\"app.t\": an empty name",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert!(!text.contains("s3cret"), "{text}");
}

/// Runs on every machine: a SQL Server that does not answer is a transient
/// error (the runtime retries with backoff), and the message names the engine
/// and what was being done, without the password.
#[tokio::test]
async fn sqlserver_unreachable_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener); // nothing listens there now
    let mut sink = SqlServerEngine::sink(
        "p/r",
        SqlServerSinkConfig::new(format!("sqlserver://sa:s3cret@127.0.0.1:{port}/db")),
    );
    let e = sink.open().await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    let text = e.to_string();
    assert!(text.starts_with("SQL Server replica, connecting: "), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}
