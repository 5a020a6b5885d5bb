//! The appliers against real replicas: MariaDB (`DBMUX_TEST_MYSQL_REPLICA_URL`)
//! and PostgreSQL (`DBMUX_TEST_PG_URL`).
//!
//! Every test body runs against both engines. Each run uses a fresh source
//! database name: on MariaDB it becomes the replica database (which also holds
//! that run's `dbmux_offsets`), on PostgreSQL the schema (likewise).
//! Transactions are built by hand with `sequence_transaction`.

use crate::support::{mysql_replica_url, pg_url, unique_name};
use connectors::mysql::apply::{MysqlSink, MysqlSinkConfig};
use connectors::postgres::apply::{PostgresSink, PostgresSinkConfig};
use connectors::postgres::apply_sql::ZeroDates;
use mysql_async::prelude::Queryable;
use pipeline::event::sequence_transaction;
use pipeline::retry::{Classify, ErrorClass};
use pipeline::schema::{ColumnDef, ColumnType, TableId, TableSchema};
use pipeline::sink::Sink;
use pipeline::value::{Date, DateTime, Time};
use pipeline::{MysqlPosition, Op, Position, Transaction, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Mariadb,
    Postgres,
}

const ENGINES: [Engine; 2] = [Engine::Mariadb, Engine::Postgres];

/// Either sink, with errors flattened to (class, message).
enum AnySink {
    My(MysqlSink),
    Pg(PostgresSink),
}

type SinkResult<T> = Result<T, (ErrorClass, String)>;

fn flat<E: Classify + std::fmt::Display>(e: E) -> (ErrorClass, String) {
    (e.class(), e.to_string())
}

impl AnySink {
    async fn open(&mut self) -> SinkResult<u64> {
        match self {
            AnySink::My(s) => s.open().await.map(|o| o.applied).map_err(flat),
            AnySink::Pg(s) => s.open().await.map(|o| o.applied).map_err(flat),
        }
    }

    async fn apply(&mut self, txns: &[Transaction]) -> SinkResult<()> {
        match self {
            AnySink::My(s) => s.apply(txns, &Default::default()).await.map_err(flat),
            AnySink::Pg(s) => s.apply(txns, &Default::default()).await.map_err(flat),
        }
    }
}

/// A fresh replica namespace plus a reader connection to check what landed.
struct Target {
    engine: Engine,
    /// Source database name = replica database (MariaDB) / schema (PostgreSQL).
    db: String,
    my: Option<mysql_async::Conn>,
    pg: Option<tokio_postgres::Client>,
}

impl Target {
    async fn new(engine: Engine) -> Target {
        let db = unique_name("apply");
        let mut t = Target {
            engine,
            db,
            my: None,
            pg: None,
        };
        match engine {
            Engine::Mariadb => {
                let mut c = mysql_async::Conn::from_url(mysql_replica_url()).await.unwrap();
                c.query_drop("SET time_zone = '+00:00'").await.unwrap();
                t.my = Some(c);
            }
            Engine::Postgres => {
                let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
                t.pg = Some(client);
            }
        }
        t
    }

    fn mysql_config(&self) -> MysqlSinkConfig {
        MysqlSinkConfig {
            offsets_database: self.db.clone(),
            ..MysqlSinkConfig::new(mysql_replica_url())
        }
    }

    fn pg_config(&self) -> PostgresSinkConfig {
        PostgresSinkConfig {
            offsets_schema: self.db.clone(),
            ..PostgresSinkConfig::new(pg_url())
        }
    }

    fn sink(&self) -> AnySink {
        match self.engine {
            Engine::Mariadb => AnySink::My(MysqlSink::new("r1", self.mysql_config())),
            Engine::Postgres => AnySink::Pg(PostgresSink::new("r1", self.pg_config())),
        }
    }

    /// Qualified name of a replica table.
    fn table(&self, name: &str) -> String {
        match self.engine {
            Engine::Mariadb => format!("`{}`.`{name}`", self.db),
            Engine::Postgres => format!("\"{}\".\"{name}\"", self.db),
        }
    }

    async fn exec(&mut self, sql: &str) {
        match self.engine {
            Engine::Mariadb => self.my.as_mut().unwrap().query_drop(sql).await.unwrap(),
            Engine::Postgres => self.pg.as_ref().unwrap().batch_execute(sql).await.unwrap(),
        }
    }

    /// Rows as canonical text: MariaDB through the binary protocol (floats
    /// exact, printed with `{:e}`), PostgreSQL through the simple protocol (the
    /// server's own text output).
    async fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self.engine {
            Engine::Mariadb => {
                let rows: Vec<mysql_async::Row> = self.my.as_mut().unwrap().exec(sql, ()).await.unwrap();
                rows.into_iter()
                    .map(|r| r.unwrap().into_iter().map(my_text).collect())
                    .collect()
            }
            Engine::Postgres => {
                let msgs = self.pg.as_ref().unwrap().simple_query(sql).await.unwrap();
                msgs.into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                        }
                        _ => None,
                    })
                    .collect()
            }
        }
    }

    async fn count(&mut self, table: &str) -> u64 {
        let sql = format!("SELECT COUNT(*) FROM {}", self.table(table));
        self.rows(&sql).await[0][0].as_ref().unwrap().parse().unwrap()
    }

    /// The stored offset of replica `r1`.
    async fn stored_offset(&mut self) -> u64 {
        let sql = format!(
            "SELECT seq FROM {} WHERE consumer = 'r1'",
            self.table("dbmux_offsets")
        );
        self.rows(&sql).await[0][0].as_ref().unwrap().parse().unwrap()
    }

    /// (id, v) pairs of a two-column table, by id.
    async fn pairs(&mut self, table: &str) -> Vec<(i64, i64)> {
        let sql = format!("SELECT id, v FROM {} ORDER BY id", self.table(table));
        self.rows(&sql)
            .await
            .into_iter()
            .map(|r| {
                (
                    r[0].as_ref().unwrap().parse().unwrap(),
                    r[1].as_ref().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    async fn drop_all(mut self) {
        let sql = match self.engine {
            Engine::Mariadb => format!("DROP DATABASE IF EXISTS `{}`", self.db),
            Engine::Postgres => format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.db),
        };
        self.exec(&sql).await;
    }
}

fn my_text(v: mysql_async::Value) -> Option<String> {
    use mysql_async::Value as V;
    match v {
        V::NULL => None,
        V::Int(x) => Some(x.to_string()),
        V::UInt(x) => Some(x.to_string()),
        V::Float(x) => Some(format!("{x:e}")),
        V::Double(x) => Some(format!("{x:e}")),
        V::Bytes(b) => Some(String::from_utf8(b).expect("utf8 text from the reader")),
        other => Some(format!("{other:?}")),
    }
}

fn position(n: u64) -> Position {
    Position::Mysql(MysqlPosition {
        file: "mysql-bin.000001".into(),
        offset: n,
        gtid_set: None,
    })
}

fn txn(seq: u64, changes: Vec<(Arc<TableSchema>, Op)>) -> Transaction {
    sequence_transaction(
        seq,
        format!("0-1-{seq}"),
        1_700_000_000_000_000,
        position(seq),
        changes,
    )
}

/// Builds consecutive transactions, handing out `seq`s.
struct Seq(u64);

impl Seq {
    fn txn(&mut self, changes: Vec<(Arc<TableSchema>, Op)>) -> Transaction {
        let t = txn(self.0, changes);
        self.0 += t.len() as u64;
        t
    }
}

fn column(name: &str, ty: ColumnType, charset: Option<&str>, nullable: bool) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        ty,
        nullable,
        charset: charset.map(str::to_string),
        collation: None,
        source_type: String::new(),
    }
}

fn int(bytes: u8, unsigned: bool) -> ColumnType {
    ColumnType::Integer { bytes, unsigned }
}

/// `db.name (id INT PRIMARY KEY, v INT)`, or without a key.
fn id_v_table(db: &str, name: &str, keyed: bool) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::new(db, name),
        columns: vec![
            column("id", int(4, false), None, false),
            column("v", int(8, false), None, true),
        ],
        primary_key: if keyed { vec![0] } else { vec![] },
        ..Default::default()
    })
}

fn row(id: i64, v: i64) -> Vec<Value> {
    vec![Value::Int(id), Value::Int(v)]
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

// ---------------------------------------------------------------- type matrix

/// How a read-back value is compared.
#[derive(Clone)]
enum Expect {
    /// Exact text: (MariaDB, PostgreSQL).
    Text(String, String),
    /// Same text on both.
    Same(String),
    F32(f32),
    F64(f64),
    Null,
}

struct Case {
    value: Value,
    expect: Expect,
}

struct MatrixColumn {
    def: ColumnDef,
    /// Read expression on MariaDB (`{c}` = the quoted column).
    my_read: &'static str,
    /// Exactly three cases: the rows with id 1, 2 and 3 (id 4 is all NULL).
    cases: [Case; 3],
}

fn same(v: Value, s: &str) -> Case {
    Case {
        value: v,
        expect: Expect::Same(s.into()),
    }
}
fn both(v: Value, my: &str, pg: &str) -> Case {
    Case {
        value: v,
        expect: Expect::Text(my.into(), pg.into()),
    }
}
fn f32c(x: f32) -> Case {
    Case {
        value: Value::Float(x),
        expect: Expect::F32(x),
    }
}
fn f64c(x: f64) -> Case {
    Case {
        value: Value::Double(x),
        expect: Expect::F64(x),
    }
}
fn date(year: u16, month: u8, day: u8) -> Date {
    Date { year, month, day }
}
fn datetime(d: Date, hour: u8, minute: u8, second: u8, micros: u32) -> Value {
    Value::DateTime(DateTime {
        date: d,
        hour,
        minute,
        second,
        micros,
    })
}
fn time(negative: bool, hours: u32, minutes: u8, seconds: u8, micros: u32) -> Value {
    Value::Time(Time {
        negative,
        hours,
        minutes,
        seconds,
        micros,
    })
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn matrix_columns() -> Vec<MatrixColumn> {
    let c = |name: &str, ty: ColumnType, my_read: &'static str, cases: [Case; 3]| MatrixColumn {
        def: column(name, ty, None, true),
        my_read,
        cases,
    };
    let text = |name: &str, ty: ColumnType, charset: &str, cases: [Case; 3]| MatrixColumn {
        def: column(name, ty, Some(charset), true),
        my_read: "{c}",
        cases,
    };
    let s = |x: &str| Value::Text(x.into());
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let all_hex = to_hex(&all_bytes);
    let rev_bytes: Vec<u8> = (0..=255u8).rev().collect();
    let rev_hex = to_hex(&rev_bytes);
    let long_text: String = "a😀é\u{10FFFF}".repeat(2500);
    let nines = format!("{}.{}", "9".repeat(35), "9".repeat(30));
    let tiny = format!("0.{}1", "0".repeat(29));
    let json = r#"{"a":[1,2,{"b":null}],"c":"é😀","d":1.5}"#;
    vec![
        c(
            "i8",
            int(1, false),
            "{c}",
            [
                same(Value::Int(-128), "-128"),
                same(Value::Int(127), "127"),
                same(Value::Int(0), "0"),
            ],
        ),
        c(
            "u8",
            int(1, true),
            "{c}",
            [
                same(Value::UInt(0), "0"),
                same(Value::UInt(255), "255"),
                same(Value::UInt(1), "1"),
            ],
        ),
        c(
            "i16",
            int(2, false),
            "{c}",
            [
                same(Value::Int(-32768), "-32768"),
                same(Value::Int(32767), "32767"),
                same(Value::Int(-1), "-1"),
            ],
        ),
        c(
            "u16",
            int(2, true),
            "{c}",
            [
                same(Value::UInt(0), "0"),
                same(Value::UInt(65535), "65535"),
                same(Value::UInt(256), "256"),
            ],
        ),
        c(
            "i24",
            int(3, false),
            "{c}",
            [
                same(Value::Int(-8_388_608), "-8388608"),
                same(Value::Int(8_388_607), "8388607"),
                same(Value::Int(5), "5"),
            ],
        ),
        c(
            "u24",
            int(3, true),
            "{c}",
            [
                same(Value::UInt(0), "0"),
                same(Value::UInt(16_777_215), "16777215"),
                same(Value::UInt(7), "7"),
            ],
        ),
        c(
            "i32",
            int(4, false),
            "{c}",
            [
                same(Value::Int(i32::MIN as i64), "-2147483648"),
                same(Value::Int(i32::MAX as i64), "2147483647"),
                same(Value::Int(42), "42"),
            ],
        ),
        c(
            "u32",
            int(4, true),
            "{c}",
            [
                same(Value::UInt(0), "0"),
                same(Value::UInt(u32::MAX as u64), "4294967295"),
                same(Value::UInt(3), "3"),
            ],
        ),
        c(
            "i64",
            int(8, false),
            "{c}",
            [
                same(Value::Int(i64::MIN), "-9223372036854775808"),
                same(Value::Int(i64::MAX), "9223372036854775807"),
                same(Value::Int(-7), "-7"),
            ],
        ),
        c(
            "u64",
            int(8, true),
            "{c}",
            [
                same(Value::UInt(0), "0"),
                same(Value::UInt(u64::MAX), "18446744073709551615"),
                same(Value::UInt(1 << 63), "9223372036854775808"),
            ],
        ),
        c(
            "dec",
            ColumnType::Decimal {
                precision: 65,
                scale: 30,
            },
            "{c}",
            [
                same(Value::Decimal(format!("-{nines}")), &format!("-{nines}")),
                same(Value::Decimal(nines.clone()), &nines),
                same(Value::Decimal(tiny.clone()), &tiny),
            ],
        ),
        c(
            "f32",
            ColumnType::Float,
            "{c}",
            [f32c(f32::MAX), f32c(f32::MIN_POSITIVE), f32c(-0.1)],
        ),
        c(
            "f64",
            ColumnType::Double,
            "{c}",
            [f64c(f64::MAX), f64c(f64::MIN_POSITIVE), f64c(-2.5e-300)],
        ),
        c(
            "d",
            ColumnType::Date,
            "CAST({c} AS CHAR)",
            [
                same(Value::Date(date(1000, 1, 1)), "1000-01-01"),
                same(Value::Date(date(9999, 12, 31)), "9999-12-31"),
                same(Value::Date(date(2024, 2, 29)), "2024-02-29"),
            ],
        ),
        c(
            "dt",
            ColumnType::DateTime { fsp: 6 },
            "CAST({c} AS CHAR)",
            [
                both(
                    datetime(date(1000, 1, 1), 0, 0, 0, 0),
                    "1000-01-01 00:00:00.000000",
                    "1000-01-01 00:00:00",
                ),
                same(
                    datetime(date(9999, 12, 31), 23, 59, 59, 999_999),
                    "9999-12-31 23:59:59.999999",
                ),
                same(
                    datetime(date(2024, 2, 29), 12, 34, 56, 1),
                    "2024-02-29 12:34:56.000001",
                ),
            ],
        ),
        c(
            "ts",
            ColumnType::Timestamp { fsp: 6 },
            "CAST({c} AS CHAR)",
            [
                both(
                    Value::Timestamp(1_000_000),
                    "1970-01-01 00:00:01.000000",
                    "1970-01-01 00:00:01+00",
                ),
                both(
                    Value::Timestamp(2_147_483_647_999_999),
                    "2038-01-19 03:14:07.999999",
                    "2038-01-19 03:14:07.999999+00",
                ),
                both(
                    Value::Timestamp(1_700_000_000_123_456),
                    "2023-11-14 22:13:20.123456",
                    "2023-11-14 22:13:20.123456+00",
                ),
            ],
        ),
        c(
            "tm",
            ColumnType::Time { fsp: 6 },
            "CAST({c} AS CHAR)",
            [
                both(time(true, 838, 59, 59, 0), "-838:59:59.000000", "-838:59:59"),
                both(time(false, 838, 59, 59, 0), "838:59:59.000000", "838:59:59"),
                same(time(true, 0, 0, 0, 1), "-00:00:00.000001"),
            ],
        ),
        c(
            "y",
            ColumnType::Year,
            "CAST({c} AS CHAR)",
            [
                same(Value::Year(1901), "1901"),
                same(Value::Year(2155), "2155"),
                both(Value::Year(0), "0000", "0"),
            ],
        ),
        c(
            "b1",
            ColumnType::Bit { width: 1 },
            "{c}+0",
            [
                same(Value::Bit(0), "0"),
                same(Value::Bit(1), "1"),
                same(Value::Bit(1), "1"),
            ],
        ),
        c(
            "b64",
            ColumnType::Bit { width: 64 },
            "{c}+0",
            [
                both(Value::Bit(0), "0", &"0".repeat(64)),
                both(Value::Bit(u64::MAX), "18446744073709551615", &"1".repeat(64)),
                both(
                    Value::Bit((1 << 63) | 1),
                    "9223372036854775809",
                    &format!("1{}1", "0".repeat(62)),
                ),
            ],
        ),
        c(
            "bo",
            ColumnType::Bool,
            "{c}",
            [
                both(Value::Int(0), "0", "f"),
                both(Value::Int(1), "1", "t"),
                both(Value::Int(1), "1", "t"),
            ],
        ),
        text(
            "e",
            ColumnType::Enum {
                labels: vec!["a".into(), "b".into(), "c d'\"".into()],
            },
            "utf8mb4",
            [
                same(Value::Enum("a".into()), "a"),
                same(Value::Enum("c d'\"".into()), "c d'\""),
                same(Value::Enum("b".into()), "b"),
            ],
        ),
        text(
            "st",
            ColumnType::Set {
                labels: vec!["x".into(), "y".into(), "z".into()],
            },
            "utf8mb4",
            [
                same(Value::Set(vec![]), ""),
                same(Value::Set(vec!["x".into(), "y".into(), "z".into()]), "x,y,z"),
                same(Value::Set(vec!["y".into()]), "y"),
            ],
        ),
        c(
            "j",
            ColumnType::Json,
            "{c}",
            [
                both(
                    Value::Json(json.into()),
                    json,
                    r#"{"a": [1, 2, {"b": null}], "c": "é😀", "d": 1.5}"#,
                ),
                same(Value::Json("[]".into()), "[]"),
                same(Value::Json(r#""s""#.into()), r#""s""#),
            ],
        ),
        text(
            "t",
            ColumnType::VarChar { length: 40 },
            "utf8mb4",
            [
                same(s("emoji 😀 ü 中"), "emoji 😀 ü 中"),
                same(s(""), ""),
                same(s("quote ' \" \\ % _ \n\t"), "quote ' \" \\ % _ \n\t"),
            ],
        ),
        text(
            "tl",
            ColumnType::VarChar { length: 20 },
            "latin1",
            [
                same(s("café ÿ ß"), "café ÿ ß"),
                same(s(""), ""),
                same(s("ÀÉÎ €"), "ÀÉÎ €"),
            ],
        ),
        text(
            "tx",
            ColumnType::Text { max_bytes: 65535 },
            "utf8mb4",
            [
                same(s(&long_text), &long_text),
                same(s(""), ""),
                same(s("line\nbreak\ttab"), "line\nbreak\ttab"),
            ],
        ),
        text(
            "ch",
            ColumnType::Char { length: 5 },
            "utf8mb4",
            [same(s("ab"), "ab"), same(s("abcde"), "abcde"), same(s(""), "")],
        ),
        c(
            "vb",
            ColumnType::VarBinary { length: 300 },
            "HEX({c})",
            [
                same(Value::Bytes(all_bytes.clone()), &all_hex),
                same(Value::Bytes(vec![]), ""),
                same(Value::Bytes(vec![0]), "00"),
            ],
        ),
        c(
            "bl",
            ColumnType::Blob { max_bytes: 65535 },
            "HEX({c})",
            [
                same(Value::Bytes(rev_bytes.clone()), &rev_hex),
                same(Value::Bytes(b"\0\0".to_vec()), "0000"),
                same(Value::Bytes(vec![0x27, 0x5c]), "275c"),
            ],
        ),
        c(
            "bn",
            ColumnType::Binary { length: 4 },
            "HEX({c})",
            [
                same(Value::Bytes(vec![1, 2]), "01020000"),
                same(Value::Bytes(vec![0xff; 4]), "ffffffff"),
                same(Value::Bytes(vec![0; 4]), "00000000"),
            ],
        ),
        c(
            "u",
            ColumnType::Uuid,
            "CAST({c} AS CHAR)",
            [
                same(
                    s("123e4567-e89b-12d3-a456-426614174000"),
                    "123e4567-e89b-12d3-a456-426614174000",
                ),
                same(
                    s("ffffffff-ffff-ffff-ffff-ffffffffffff"),
                    "ffffffff-ffff-ffff-ffff-ffffffffffff",
                ),
                same(
                    Value::Bytes((0u8..16).collect()),
                    "00010203-0405-0607-0809-0a0b0c0d0e0f",
                ),
            ],
        ),
    ]
}

fn matrix_schema(db: &str, columns: &[MatrixColumn], keyed: bool) -> Arc<TableSchema> {
    let mut defs = vec![column("id", int(4, false), None, false)];
    defs.extend(columns.iter().map(|c| c.def.clone()));
    Arc::new(TableSchema {
        id: TableId::new(db, "matrix"),
        columns: defs,
        primary_key: if keyed { vec![0] } else { vec![] },
        ..Default::default()
    })
}

/// Row `id` from case `case` of every column (`None`: all NULL).
fn matrix_row(columns: &[MatrixColumn], id: i64, case: Option<usize>) -> (Vec<Value>, Vec<Expect>) {
    let mut values = vec![Value::Int(id)];
    let mut expect = vec![Expect::Same(id.to_string())];
    for c in columns {
        match case {
            Some(i) => {
                values.push(c.cases[i].value.clone());
                expect.push(c.cases[i].expect.clone());
            }
            None => {
                values.push(Value::Null);
                expect.push(Expect::Null);
            }
        }
    }
    (values, expect)
}

fn check_value(engine: Engine, what: &str, got: &Option<String>, want: &Expect) {
    let hexish = what.ends_with(".vb") || what.ends_with(".bl") || what.ends_with(".bn");
    let norm = |s: &str| {
        if hexish {
            s.trim_start_matches("\\x").to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    match (want, got) {
        (Expect::Null, None) => {}
        (Expect::Null, Some(g)) => panic!("{engine:?} {what}: expected NULL, got {g:?}"),
        (_, None) => panic!("{engine:?} {what}: got NULL"),
        (Expect::F32(x), Some(g)) => {
            let y: f32 = g
                .parse()
                .unwrap_or_else(|_| panic!("{engine:?} {what}: {g:?} is not a float"));
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "{engine:?} {what}: {x:e} read back as {g}"
            );
        }
        (Expect::F64(x), Some(g)) => {
            let y: f64 = g
                .parse()
                .unwrap_or_else(|_| panic!("{engine:?} {what}: {g:?} is not a double"));
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "{engine:?} {what}: {x:e} read back as {g}"
            );
        }
        (Expect::Same(s), Some(g)) => assert_eq!(norm(g), norm(s), "{engine:?} {what}"),
        (Expect::Text(my, pg), Some(g)) => {
            let s = if engine == Engine::Mariadb { my } else { pg };
            assert_eq!(norm(g), norm(s), "{engine:?} {what}");
        }
    }
}

async fn assert_matrix(t: &mut Target, columns: &[MatrixColumn], expected: &BTreeMap<i64, Vec<Expect>>) {
    let mut select = vec!["id".to_string()];
    for c in columns {
        let q = match t.engine {
            Engine::Mariadb => format!("`{}`", c.def.name),
            Engine::Postgres => format!("\"{}\"", c.def.name),
        };
        select.push(match t.engine {
            Engine::Mariadb => c.my_read.replace("{c}", &q),
            Engine::Postgres => q,
        });
    }
    let sql = format!(
        "SELECT {} FROM {} ORDER BY id",
        select.join(", "),
        t.table("matrix")
    );
    let rows = t.rows(&sql).await;
    let ids: Vec<i64> = expected.keys().copied().collect();
    let got_ids: Vec<i64> = rows
        .iter()
        .map(|r| r[0].as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got_ids, ids, "{:?}: row ids", t.engine);
    for (row, (id, want)) in rows.iter().zip(expected) {
        for (i, (g, w)) in row.iter().zip(want).enumerate() {
            let name = if i == 0 { "id" } else { &columns[i - 1].def.name };
            check_value(t.engine, &format!("row {id}.{name}"), g, w);
        }
    }
}

/// With `keyed = false` the table has no primary key, so every update and
/// delete below must find its row by comparing every column: the row match
/// is exercised for every type.
async fn type_matrix(engine: Engine, keyed: bool) {
    let mut t = Target::new(engine).await;
    let columns = matrix_columns();
    let schema = matrix_schema(&t.db, &columns, keyed);
    let mut sink = t.sink();
    assert_eq!(sink.open().await.unwrap(), 0);

    // Insert rows 1-3 (one case each) and row 4 (all NULL), two transactions in one call.
    let mut expected = BTreeMap::new();
    let mut seq = Seq(1);
    let mut first = Vec::new();
    for (id, case) in [(1, Some(0)), (2, Some(1)), (3, Some(2)), (4, None)] {
        let (values, expect) = matrix_row(&columns, id, case);
        first.push((schema.clone(), Op::Insert { after: values }));
        expected.insert(id, expect);
    }
    let second = first.split_off(2);
    let txns = vec![seq.txn(first), seq.txn(second)];
    sink.apply(&txns).await.unwrap();
    assert_matrix(&mut t, &columns, &expected).await;

    // Updates: row 1 takes case 2's values, row 4 (NULLs) becomes case 0, row 2
    // becomes all NULL and moves to id 20 (key change); row 3 is deleted.
    let r = |id, case| matrix_row(&columns, id, case);
    let changes = vec![
        (
            schema.clone(),
            Op::Update {
                before: r(1, Some(0)).0,
                after: r(1, Some(2)).0,
            },
        ),
        (
            schema.clone(),
            Op::Update {
                before: r(4, None).0,
                after: r(4, Some(0)).0,
            },
        ),
        (
            schema.clone(),
            Op::Update {
                before: r(2, Some(1)).0,
                after: r(20, None).0,
            },
        ),
        (
            schema.clone(),
            Op::Delete {
                before: r(3, Some(2)).0,
            },
        ),
    ];
    sink.apply(&[seq.txn(changes)]).await.unwrap();
    expected.insert(1, r(1, Some(2)).1);
    expected.insert(4, r(4, Some(0)).1);
    expected.remove(&2);
    expected.insert(20, r(20, None).1);
    expected.remove(&3);
    assert_matrix(&mut t, &columns, &expected).await;
    assert_eq!(t.stored_offset().await, seq.0 - 1);
    t.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_matrix_mariadb() {
    type_matrix(Engine::Mariadb, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_matrix_no_key_mariadb() {
    type_matrix(Engine::Mariadb, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_matrix_postgres() {
    type_matrix(Engine::Postgres, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_matrix_no_key_postgres() {
    type_matrix(Engine::Postgres, false).await;
}

/// Values only one side can hold: zero dates (MariaDB keeps them; PostgreSQL
/// refuses by default, or maps them as configured) and NUL in text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_dates_and_nul_text() {
    let zero = date(0, 0, 0);
    let columns = |db: &str| {
        Arc::new(TableSchema {
            id: TableId::new(db, "z"),
            columns: vec![
                column("id", int(4, false), None, false),
                column("d", ColumnType::Date, None, true),
                column("dt", ColumnType::DateTime { fsp: 6 }, None, true),
                column("ts", ColumnType::Timestamp { fsp: 6 }, None, true),
                column("half", ColumnType::Date, None, true),
                column("t", ColumnType::Text { max_bytes: 65535 }, Some("utf8mb4"), true),
            ],
            primary_key: vec![0],
            ..Default::default()
        })
    };
    let row = |t: Value| Op::Insert {
        after: vec![
            Value::Int(1),
            Value::Date(zero),
            datetime(zero, 0, 0, 0, 0),
            Value::Timestamp(0),
            Value::Date(date(2024, 0, 15)),
            t,
        ],
    };

    // MariaDB keeps all of it.
    let mut t = Target::new(Engine::Mariadb).await;
    let schema = columns(&t.db);
    let mut sink = t.sink();
    sink.open().await.unwrap();
    sink.apply(&[txn(1, vec![(schema.clone(), row(Value::Text("a\0b".into())))])])
        .await
        .unwrap();
    let got = t
        .rows(&format!(
            "SELECT CAST(d AS CHAR), CAST(dt AS CHAR), CAST(ts AS CHAR), CAST(half AS CHAR), HEX(t) FROM {}",
            t.table("z")
        ))
        .await;
    assert_eq!(
        got[0],
        [
            "0000-00-00",
            "0000-00-00 00:00:00.000000",
            "0000-00-00 00:00:00.000000",
            "2024-00-15",
            "610062"
        ]
        .map(|s| Some(s.to_string()))
    );
    t.drop_all().await;

    // PostgreSQL: a definite error naming table and column, nothing applied.
    let mut t = Target::new(Engine::Postgres).await;
    let schema = columns(&t.db);
    let mut sink = t.sink();
    sink.open().await.unwrap();
    let (class, msg) = sink
        .apply(&[txn(1, vec![(schema.clone(), row(Value::Null))])])
        .await
        .unwrap_err();
    assert_eq!(class, ErrorClass::Definite, "{msg}");
    assert!(
        msg.contains(&format!("{}.z", t.db)) && msg.contains(".d:") && msg.contains("zero date"),
        "{msg}"
    );
    assert_eq!(t.count("z").await, 0);
    assert_eq!(t.stored_offset().await, 0);
    // NUL in text: definite, names the column.
    let nul = Op::Insert {
        after: vec![
            Value::Int(1),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Text("a\0b".into()),
        ],
    };
    let mut sink = t.sink();
    sink.open().await.unwrap();
    let (class, msg) = sink
        .apply(&[txn(1, vec![(schema.clone(), nul)])])
        .await
        .unwrap_err();
    assert_eq!(class, ErrorClass::Definite, "{msg}");
    assert!(msg.contains(".t:") && msg.contains("NUL"), "{msg}");

    // Configured to map zero dates to -infinity.
    let mut sink = PostgresSink::new(
        "r1",
        PostgresSinkConfig {
            zero_dates: ZeroDates::NegInfinity,
            ..t.pg_config()
        },
    );
    sink.open().await.unwrap();
    sink.apply(
        &[txn(1, vec![(schema.clone(), row(Value::Null))])],
        &Default::default(),
    )
    .await
    .unwrap();
    let got = t
        .rows(&format!("SELECT d, dt, ts, half FROM {}", t.table("z")))
        .await;
    assert_eq!(got[0], ["-infinity"; 4].map(|s| Some(s.to_string())));
    t.drop_all().await;
}

// ---------------------------------------------------------------- offsets

async fn offsets(engine: Engine) {
    let mut t = Target::new(engine).await;
    let keyed = id_v_table(&t.db, "counter", true);
    let log = id_v_table(&t.db, "log", false);
    let mut sink = t.sink();
    assert_eq!(sink.open().await.unwrap(), 0);

    let mut seq = Seq(1);
    let t1 = seq.txn(vec![ins(&keyed, 1, 1), ins(&log, 1, 1), ins(&log, 1, 1)]);
    let t2 = seq.txn(vec![upd(&keyed, (1, 1), (1, 2)), ins(&log, 2, 2)]);
    sink.apply(std::slice::from_ref(&t1)).await.unwrap();
    assert_eq!(t.stored_offset().await, 3);

    // A new sink resumes from the stored offset.
    let mut again = t.sink();
    assert_eq!(again.open().await.unwrap(), 3);
    // Handing it already-applied transactions again applies only what is new.
    again.apply(&[t1.clone(), t2.clone()]).await.unwrap();
    assert_eq!(t.stored_offset().await, 5);
    assert_eq!(
        t.count("log").await,
        3,
        "the key-less table shows no double apply"
    );
    assert_eq!(t.pairs("counter").await, [(1, 2)]);
    // The first sink's cached offset is stale; it re-reads the stored one under lock.
    sink.apply(&[t1.clone(), t2.clone()]).await.unwrap();
    assert_eq!(t.count("log").await, 3);
    assert_eq!(t.stored_offset().await, 5);

    // A batch the replica rejects leaves data and offset as they were: a
    // deliberately broken table (its column too small for the value).
    let broken = id_v_table(&t.db, "broken", true);
    let small = match engine {
        Engine::Mariadb => "TINYINT",
        Engine::Postgres => "smallint",
    };
    let sql = format!(
        "CREATE TABLE {} (id INT PRIMARY KEY, v {small})",
        t.table("broken")
    );
    t.exec(&sql).await;
    let t3 = seq.txn(vec![upd(&keyed, (1, 2), (1, 3)), ins(&log, 3, 3)]);
    let t4 = seq.txn(vec![ins(&broken, 1, 1_000_000)]);
    let (class, msg) = again.apply(&[t3.clone(), t4.clone()]).await.unwrap_err();
    assert_eq!(class, ErrorClass::Definite, "{msg}");
    assert!(msg.contains("broken"), "{msg}");
    assert_eq!(t.stored_offset().await, 5);
    assert_eq!(t.count("log").await, 3);
    assert_eq!(t.pairs("counter").await, [(1, 2)]);
    assert_eq!(t.count("broken").await, 0);

    // Retried without the bad transaction (after the operator "fixed" it), it applies once.
    again.apply(std::slice::from_ref(&t3)).await.unwrap();
    again.apply(std::slice::from_ref(&t3)).await.unwrap();
    assert_eq!(t.stored_offset().await, 7);
    assert_eq!(t.count("log").await, 4);
    assert_eq!(t.pairs("counter").await, [(1, 3)]);

    // A gap (seq 8 missing) is refused.
    let gap = txn(9, vec![ins(&keyed, 9, 9)]);
    let (class, msg) = again.apply(&[gap]).await.unwrap_err();
    assert_eq!(class, ErrorClass::Definite, "{msg}");
    assert!(msg.contains("skip seq 8"), "{msg}");
    // A schema change the replica cannot make is a definite error naming the
    // statement, and the offset stays.
    let statement = "ALTER TABLE counter ADD PARTITION (PARTITION p9 VALUES LESS THAN (10))";
    let ddl = txn(
        8,
        vec![(
            keyed.clone(),
            Op::Ddl(Box::new(pipeline::ddl::SchemaChange {
                statement: statement.into(),
                default_schema: keyed.id.schema.clone(),
                kind: pipeline::ddl::DdlKind::AlterTable {
                    actions: vec![pipeline::ddl::AlterAction::Unsupported {
                        clause: "ADD PARTITION (PARTITION p9 VALUES LESS THAN (10))".into(),
                    }],
                },
                unique_key_names: vec![],
            })),
        )],
    );
    let (class, msg) = again.apply(&[ddl]).await.unwrap_err();
    assert_eq!(class, ErrorClass::Definite, "{msg}");
    assert!(msg.contains(statement), "{msg}");
    assert_eq!(t.stored_offset().await, 7);

    // max_transactions_per_commit = 1: each source transaction commits on its
    // own, so a failure keeps the ones before it, and the offset says so.
    let mut per_txn = match engine {
        Engine::Mariadb => AnySink::My(MysqlSink::new(
            "r1",
            MysqlSinkConfig {
                max_transactions_per_commit: 1,
                ..t.mysql_config()
            },
        )),
        Engine::Postgres => AnySink::Pg(PostgresSink::new(
            "r1",
            PostgresSinkConfig {
                max_transactions_per_commit: 1,
                ..t.pg_config()
            },
        )),
    };
    assert_eq!(per_txn.open().await.unwrap(), 7);
    let mut seq = Seq(8);
    let t8 = seq.txn(vec![ins(&log, 8, 8)]);
    let t9 = seq.txn(vec![ins(&log, 9, 9)]);
    let t10 = seq.txn(vec![ins(&broken, 2, 1_000_000)]);
    let (class, _) = per_txn.apply(&[t8, t9, t10]).await.unwrap_err();
    assert_eq!(class, ErrorClass::Definite);
    assert_eq!(t.stored_offset().await, 9);
    assert_eq!(t.count("log").await, 6);
    t.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_mariadb() {
    offsets(Engine::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_postgres() {
    offsets(Engine::Postgres).await;
}

/// The connection dies between two applies (the server killed it): the next
/// apply reports a transient error or reconnects, and a retry succeeds once.
async fn reconnects(engine: Engine) {
    let mut t = Target::new(engine).await;
    let keyed = id_v_table(&t.db, "k", true);
    let log = id_v_table(&t.db, "log", false);
    // Connect the sink with a recognisable default database / application name.
    let mut sink = match engine {
        Engine::Mariadb => {
            t.exec(&format!("CREATE DATABASE `{}`", t.db)).await;
            AnySink::My(MysqlSink::new(
                "r1",
                MysqlSinkConfig {
                    url: crate::support::with_db(&mysql_replica_url(), &t.db),
                    ..t.mysql_config()
                },
            ))
        }
        Engine::Postgres => AnySink::Pg(PostgresSink::new(
            "r1",
            PostgresSinkConfig {
                url: format!("{}?application_name={}", pg_url(), t.db),
                ..t.pg_config()
            },
        )),
    };
    sink.open().await.unwrap();
    let mut seq = Seq(1);
    sink.apply(&[seq.txn(vec![ins(&keyed, 1, 1), ins(&log, 1, 1)])])
        .await
        .unwrap();
    let kill = match engine {
        Engine::Mariadb => {
            let ids = t
                .rows(&format!(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{}' AND ID <> CONNECTION_ID()",
                    t.db
                ))
                .await;
            assert_eq!(ids.len(), 1, "the sink's connection");
            format!("KILL {}", ids[0][0].as_ref().unwrap())
        }
        Engine::Postgres => format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{}'",
            t.db
        ),
    };
    t.exec(&kill).await;
    let next = seq.txn(vec![upd(&keyed, (1, 1), (1, 2)), ins(&log, 2, 2)]);
    if let Err((class, msg)) = sink.apply(std::slice::from_ref(&next)).await {
        assert_eq!(class, ErrorClass::Transient, "{msg}");
        sink.apply(std::slice::from_ref(&next)).await.unwrap();
    }
    // Once more, as a caller unsure whether the last commit happened would.
    sink.apply(std::slice::from_ref(&next)).await.unwrap();
    assert_eq!(t.pairs("k").await, [(1, 2)]);
    assert_eq!(t.count("log").await, 2);
    assert_eq!(t.stored_offset().await, 4);
    assert_eq!(sink.open().await.unwrap(), 4);
    t.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_mariadb() {
    reconnects(Engine::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_postgres() {
    reconnects(Engine::Postgres).await;
}

// ---------------------------------------------------------------- batching

/// Key changes, delete + re-insert of a key in one transaction, many
/// transactions per call, and thousands of rows per statement, against a
/// model of the expected final state.
async fn batching(engine: Engine) {
    let mut t = Target::new(engine).await;
    let a = id_v_table(&t.db, "a", true);
    let b = Arc::new(TableSchema {
        id: TableId::new(&t.db, "b"),
        columns: vec![
            column("k1", int(4, false), None, false),
            column("k2", ColumnType::VarChar { length: 10 }, Some("utf8mb4"), false),
            column("v", int(8, false), None, true),
        ],
        primary_key: vec![0, 1],
        ..Default::default()
    });
    let mut sink = t.sink();
    sink.open().await.unwrap();
    let mut model: BTreeMap<i64, i64> = BTreeMap::new();
    let mut seq = Seq(1);

    // 1. Thousands of rows in one transaction (several statements per run).
    let big: Vec<_> = (1..=12_000).map(|i| ins(&a, i, i * 10)).collect();
    for i in 1..=12_000 {
        model.insert(i, i * 10);
    }
    let t1 = seq.txn(big);
    // 2. Key changes: shift 1..=100 up by 100_000, then a chain 200 → 100_200 → 200.
    let mut shift = Vec::new();
    for i in (1..=100).rev() {
        shift.push(upd(&a, (i, i * 10), (i + 100_000, i * 10)));
        model.remove(&i);
        model.insert(i + 100_000, i * 10);
    }
    shift.push(upd(&a, (200, 2000), (100_200, 2000)));
    shift.push(upd(&a, (100_200, 2000), (200, 2001)));
    model.insert(200, 2001);
    let t2 = seq.txn(shift);
    // 3. Delete then re-insert the same key, and insert then delete, in one transaction.
    let t3 = seq.txn(vec![
        del(&a, 300, 3000),
        ins(&a, 300, -1),
        ins(&a, 999_999, 1),
        del(&a, 999_999, 1),
        upd(&a, (300, -1), (300, -2)),
        del(&a, 301, 3010),
        ins(&a, 301, -3),
    ]);
    model.insert(300, -2);
    model.insert(301, -3);
    // 4. Many small transactions in the same call, across two tables.
    let mut many = vec![t1, t2, t3];
    for i in 0..300i64 {
        let id = 5000 + i;
        let v = model[&id];
        let mut changes = vec![upd(&a, (id, v), (id, v + 1))];
        model.insert(id, v + 1);
        changes.push((
            b.clone(),
            Op::Insert {
                after: vec![Value::Int(i), Value::Text(format!("k{}", i % 7)), Value::Int(i)],
            },
        ));
        if i % 3 == 0 {
            changes.push(del(&a, 7000 + i, (7000 + i) * 10));
            model.remove(&(7000 + i));
        }
        many.push(seq.txn(changes));
    }
    sink.apply(&many).await.unwrap();

    // 5. A second call: composite-key deletes and key changes.
    let mut changes = Vec::new();
    for i in 0..300i64 {
        let before = vec![Value::Int(i), Value::Text(format!("k{}", i % 7)), Value::Int(i)];
        if i % 2 == 0 {
            changes.push((b.clone(), Op::Delete { before }));
        } else {
            let after = vec![
                Value::Int(i),
                Value::Text(format!("moved{}", i % 7)),
                Value::Int(-i),
            ];
            changes.push((b.clone(), Op::Update { before, after }));
        }
    }
    sink.apply(&[seq.txn(changes)]).await.unwrap();

    let got = t.pairs("a").await;
    let want: Vec<(i64, i64)> = model.into_iter().collect();
    assert_eq!(got.len(), want.len(), "{engine:?}: row count of a");
    assert!(got == want, "{engine:?}: table a differs from the model");
    let rows = t
        .rows(&format!("SELECT k1, k2, v FROM {} ORDER BY k1", t.table("b")))
        .await;
    assert_eq!(rows.len(), 150);
    for r in rows {
        let k1: i64 = r[0].as_ref().unwrap().parse().unwrap();
        assert_eq!(k1 % 2, 1);
        assert_eq!(r[1].as_deref(), Some(format!("moved{}", k1 % 7).as_str()));
        assert_eq!(r[2].as_deref(), Some((-k1).to_string().as_str()));
    }
    assert_eq!(t.stored_offset().await, seq.0 - 1);
    t.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_mariadb() {
    batching(Engine::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_postgres() {
    batching(Engine::Postgres).await;
}

// ---------------------------------------------------------------- no primary key

/// Tables without a primary key: the whole row is the key; updates and
/// deletes change exactly one matching row; no match is a definite
/// "diverged" error and nothing of the batch is applied.
async fn no_primary_key(engine: Engine) {
    let mut t = Target::new(engine).await;
    let n = Arc::new(TableSchema {
        id: TableId::new(&t.db, "n"),
        columns: vec![
            column("name", ColumnType::VarChar { length: 10 }, Some("utf8mb4"), true),
            column("f", ColumnType::Float, None, true),
            column("b", ColumnType::VarBinary { length: 10 }, None, true),
            column(
                "d",
                ColumnType::Decimal {
                    precision: 40,
                    scale: 20,
                },
                None,
                true,
            ),
        ],
        primary_key: vec![],
        ..Default::default()
    });
    let r = |name: Option<&str>, f: f32, b: &[u8], d: &str| {
        vec![
            name.map_or(Value::Null, |s| Value::Text(s.into())),
            Value::Float(f),
            Value::Bytes(b.to_vec()),
            Value::Decimal(d.into()),
        ]
    };
    // Decimals that are equal as doubles but not as decimals.
    let d1 = "1.00000000000000000001";
    let d2 = "1.00000000000000000002";
    let mut sink = t.sink();
    sink.open().await.unwrap();
    let mut seq = Seq(1);
    let rows = [
        r(Some("a"), 0.1, b"\0\xff", d1),
        r(Some("a"), 0.1, b"\0\xff", d1),
        r(Some("A"), 0.1, b"\0\xff", d1),
        r(Some("a "), 0.1, b"\0\xff", d1),
        r(Some("a"), 0.1, b"\0\xff", d2),
        r(None, 0.1, b"", d1),
    ];
    let inserts = rows
        .iter()
        .map(|after| (n.clone(), Op::Insert { after: after.clone() }))
        .collect();
    sink.apply(&[seq.txn(inserts)]).await.unwrap();
    assert_eq!(t.count("n").await, 6);

    // Update one of the two identical rows; delete the 'A' row (not 'a'), the
    // 'a ' row (not 'a'), the d2 row (not d1) and the NULL-named row.
    let changes = vec![
        (
            n.clone(),
            Op::Update {
                before: rows[0].clone(),
                after: r(Some("b"), 0.1, b"\0\xff", d1),
            },
        ),
        (
            n.clone(),
            Op::Delete {
                before: rows[2].clone(),
            },
        ),
        (
            n.clone(),
            Op::Delete {
                before: rows[3].clone(),
            },
        ),
        (
            n.clone(),
            Op::Delete {
                before: rows[4].clone(),
            },
        ),
        (
            n.clone(),
            Op::Delete {
                before: rows[5].clone(),
            },
        ),
    ];
    sink.apply(&[seq.txn(changes)]).await.unwrap();
    let name_sql = match engine {
        Engine::Mariadb => format!("SELECT name, HEX(b), d FROM {} ORDER BY name", t.table("n")),
        Engine::Postgres => format!(
            "SELECT name, encode(b, 'hex'), d FROM {} ORDER BY name",
            t.table("n")
        ),
    };
    let got = t.rows(&name_sql).await;
    let want = |name: &str| {
        vec![
            Some(name.to_string()),
            Some("00ff".to_string()),
            Some(d1.to_string()),
        ]
    };
    let got: Vec<Vec<Option<String>>> = got
        .into_iter()
        .map(|mut r| {
            r[1] = r[1].as_ref().map(|s| s.to_ascii_lowercase());
            r
        })
        .collect();
    assert_eq!(got, vec![want("a"), want("b")], "{engine:?}");

    // Divergence: deleting a row that is not there fails loudly and rolls back
    // the whole batch, including the valid insert before it.
    let bad = vec![
        (
            n.clone(),
            Op::Insert {
                after: r(Some("c"), 1.0, b"", d1),
            },
        ),
        (
            n.clone(),
            Op::Delete {
                before: r(Some("zzz"), 0.1, b"", d1),
            },
        ),
    ];
    let offset = t.stored_offset().await;
    let (class, msg) = sink.apply(&[seq.txn(bad)]).await.unwrap_err();
    assert_eq!(class, ErrorClass::Definite, "{msg}");
    assert!(
        msg.contains("diverged") && msg.contains(&format!("{}.n", t.db)),
        "{msg}"
    );
    assert_eq!(t.count("n").await, 2);
    assert_eq!(t.stored_offset().await, offset);
    // An update that matches nothing diverges just the same.
    let mut sink = t.sink();
    sink.open().await.unwrap();
    let bad = vec![(
        n.clone(),
        Op::Update {
            before: r(Some("a"), 0.2, b"\0\xff", d1),
            after: r(Some("x"), 0.2, b"", d1),
        },
    )];
    let (class, msg) = sink.apply(&[txn(offset + 1, bad)]).await.unwrap_err();
    assert_eq!(class, ErrorClass::Definite, "{msg}");
    assert!(msg.contains("diverged") && msg.contains("update"), "{msg}");
    // Truncate empties it, in the same transaction as what follows.
    let tr = vec![
        (n.clone(), Op::Truncate),
        (
            n.clone(),
            Op::Insert {
                after: r(Some("z"), 2.0, b"", d2),
            },
        ),
    ];
    sink.apply(&[txn(offset + 1, tr)]).await.unwrap();
    assert_eq!(t.count("n").await, 1);
    t.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_primary_key_mariadb() {
    no_primary_key(Engine::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_primary_key_postgres() {
    no_primary_key(Engine::Postgres).await;
}

// ---------------------------------------------------------------- snapshot loads

/// A snapshot mark of table `t` in run 1.
fn mark(t: &Arc<TableSchema>, phase: pipeline::snapshot::SnapshotPhase) -> (Arc<TableSchema>, Op) {
    (
        t.clone(),
        Op::Snapshot(Box::new(pipeline::snapshot::SnapshotMark {
            id: 1,
            targets: Vec::new(),
            reset: false,
            phase,
        })),
    )
}

fn chunk(t: &Arc<TableSchema>, index: u64, rows: &[(i64, i64)], last: bool) -> Vec<(Arc<TableSchema>, Op)> {
    let mut out = vec![mark(
        t,
        pipeline::snapshot::SnapshotPhase::Chunk {
            index,
            upto: rows.last().map(|&(id, v)| row(id, v)),
            rows: rows.len() as u64,
            last,
            whole: false,
            create: None,
        },
    )];
    out.extend(
        rows.iter()
            .map(|&(id, v)| (t.clone(), Op::Read { after: row(id, v) })),
    );
    out
}

/// Snapshot chunks into a table whose name needs quoting (capitals, a
/// space): the first chunk recreates the table (dropping what was there),
/// a later chunk whose keys are partly there already (a change applied since
/// the first chunk) ends with the chunk's rows; the pending mark is gone.
async fn snapshot_loads(engine: Engine) {
    let mut t = Target::new(engine).await;
    let name = "Odd Name";
    let table = id_v_table(&t.db, name, true);
    let mut sink = t.sink();
    sink.open().await.unwrap();
    let mut seq = Seq(1);
    let stale = seq.txn(vec![ins(&table, 99, 99)]);
    let begin = seq.txn(vec![mark(
        &table,
        pipeline::snapshot::SnapshotPhase::Begin {
            estimated_rows: 4,
            request: None,
        },
    )]);
    let first = seq.txn(chunk(&table, 0, &[(1, 10), (2, 20)], false));
    let change = seq.txn(vec![ins(&table, 3, 3), upd(&table, (1, 10), (1, 11))]);
    let second = seq.txn(chunk(&table, 1, &[(3, 30), (4, 40)], true));
    sink.apply(&[stale, begin]).await.unwrap();
    let pending = format!(
        "SELECT COUNT(*) FROM {} WHERE consumer = 'r1'",
        t.table("dbmux_snapshot")
    );
    assert_eq!(
        t.rows(&pending).await[0][0].as_deref(),
        Some("1"),
        "Begin notes the table"
    );
    sink.apply(&[first, change, second]).await.unwrap();
    assert_eq!(
        t.pairs(name).await,
        vec![(1, 11), (2, 20), (3, 30), (4, 40)],
        "chunk 0 dropped row 99; the second chunk's rows won over the streamed insert of 3"
    );
    assert_eq!(
        t.rows(&pending).await[0][0].as_deref(),
        Some("0"),
        "chunk 0 ended the wait"
    );
    assert_eq!(t.stored_offset().await, seq.0 - 1);
    t.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_loads_mariadb() {
    snapshot_loads(Engine::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_loads_postgres() {
    snapshot_loads(Engine::Postgres).await;
}

// ---------------------------------------------------------------- throughput

/// Rows per second for 50k-row upserts (inserts, then updates of the same
/// keys), 50 transactions of 1,000 rows per call. A measurement, not a
/// pass/fail test: `cargo test --test integration apply::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    for engine in ENGINES {
        let t = Target::new(engine).await;
        let table = Arc::new(TableSchema {
            id: TableId::new(&t.db, "bench"),
            columns: vec![
                column("id", int(8, false), None, false),
                column("n", int(4, false), None, true),
                column("s", ColumnType::VarChar { length: 64 }, Some("utf8mb4"), true),
                column(
                    "d",
                    ColumnType::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                    None,
                    true,
                ),
                column("ts", ColumnType::Timestamp { fsp: 6 }, None, true),
            ],
            primary_key: vec![0],
            ..Default::default()
        });
        let mut sink = t.sink();
        sink.open().await.unwrap();
        let mut seq = Seq(1);
        for round in 0..2 {
            let txns: Vec<Transaction> = (0..50)
                .map(|tx| {
                    seq.txn(
                        (0..1000)
                            .map(|i| {
                                let id = tx * 1000 + i;
                                (
                                    table.clone(),
                                    Op::Insert {
                                        after: vec![
                                            Value::Int(id),
                                            Value::Int(round),
                                            Value::Text(format!("row {id} round {round} ✓")),
                                            Value::Decimal(format!("{id}.{:02}", id % 100)),
                                            Value::Timestamp(1_700_000_000_000_000 + id),
                                        ],
                                    },
                                )
                            })
                            .collect(),
                    )
                })
                .collect();
            let started = Instant::now();
            sink.apply(&txns).await.unwrap();
            let secs = started.elapsed().as_secs_f64();
            let what = if round == 0 { "insert" } else { "update" };
            println!(
                "apply throughput {engine:?} {what}: 50000 rows in {secs:.2} s = {:.0} rows/s",
                50_000.0 / secs
            );
        }
        t.drop_all().await;
    }
}
