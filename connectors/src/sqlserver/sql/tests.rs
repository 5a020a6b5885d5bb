//! The generated T-SQL and the type mapping, exhaustively: no SQL Server can
//! run on the build machine, so these are the proof that what is sent is
//! what SQL Server expects.

use super::*;
use pipeline::schema::{FkAction, ForeignKey};

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

#[test]
fn identifiers_are_bracket_quoted_with_closing_brackets_doubled() {
    assert_eq!(quote("orders"), "[orders]");
    assert_eq!(quote("a]b"), "[a]]b]");
    assert_eq!(quote("]]"), "[]]]]]");
    assert_eq!(quote("x[y"), "[x[y]", "an opening bracket needs no escape");
    assert_eq!(quote("we'ird \"name\""), "[we'ird \"name\"]");
    assert_eq!(qualified(&TableId::new("app]", "t")), "[app]]].[t]");
    assert_eq!(literal("it's"), "N'it''s'");
    assert!(check_ident("").is_err());
    assert!(check_ident(&"x".repeat(128)).is_ok());
    assert!(check_ident(&"é".repeat(128)).is_ok(), "characters, not bytes");
    assert!(check_ident(&"x".repeat(129)).unwrap_err().contains("128"));
    assert!(check_ident("a\0b").is_err());
    // An injected closing bracket cannot leave the identifier.
    let t = TableSchema::new(
        TableId::new("s", "t]; DROP TABLE x; --"),
        vec![col("id", int())],
        vec![0],
    );
    assert!(merge(&t, 1).starts_with("MERGE INTO [s].[t]]; DROP TABLE x; --] WITH (HOLDLOCK)"));
    // Schema creation goes through EXEC(N'…'): quotes are doubled inside it.
    assert_eq!(
        create_schema("o'brien]"),
        "IF SCHEMA_ID(N'o''brien]') IS NULL EXEC(N'CREATE SCHEMA [o''brien]]]')"
    );
}

/// Every `ColumnType` variant, outside and inside a key.
#[test]
fn every_column_type_has_its_sql_server_type() {
    use ColumnType as T;
    let cases: Vec<(T, &str, Option<&str>)> = vec![
        (T::Bool, "BIT", Some("BIT")),
        (
            T::Integer {
                bytes: 1,
                unsigned: false,
            },
            "SMALLINT",
            Some("SMALLINT"),
        ),
        (
            T::Integer {
                bytes: 1,
                unsigned: true,
            },
            "TINYINT",
            Some("TINYINT"),
        ),
        (
            T::Integer {
                bytes: 2,
                unsigned: false,
            },
            "SMALLINT",
            Some("SMALLINT"),
        ),
        (
            T::Integer {
                bytes: 2,
                unsigned: true,
            },
            "INT",
            Some("INT"),
        ),
        (
            T::Integer {
                bytes: 3,
                unsigned: false,
            },
            "INT",
            Some("INT"),
        ),
        (
            T::Integer {
                bytes: 3,
                unsigned: true,
            },
            "INT",
            Some("INT"),
        ),
        (
            T::Integer {
                bytes: 4,
                unsigned: false,
            },
            "INT",
            Some("INT"),
        ),
        (
            T::Integer {
                bytes: 4,
                unsigned: true,
            },
            "BIGINT",
            Some("BIGINT"),
        ),
        (
            T::Integer {
                bytes: 8,
                unsigned: false,
            },
            "BIGINT",
            Some("BIGINT"),
        ),
        (
            T::Integer {
                bytes: 8,
                unsigned: true,
            },
            "DECIMAL(20, 0)",
            Some("DECIMAL(20, 0)"),
        ),
        (
            T::Decimal {
                precision: 10,
                scale: 2,
            },
            "DECIMAL(10, 2)",
            Some("DECIMAL(10, 2)"),
        ),
        (
            T::Decimal {
                precision: 38,
                scale: 38,
            },
            "DECIMAL(38, 38)",
            Some("DECIMAL(38, 38)"),
        ),
        (
            T::Decimal {
                precision: 65,
                scale: 30,
            },
            "VARCHAR(67) COLLATE Latin1_General_100_BIN2",
            Some("VARCHAR(67) COLLATE Latin1_General_100_BIN2"),
        ),
        (
            T::Numeric,
            "VARCHAR(MAX) COLLATE Latin1_General_100_BIN2",
            Some("VARCHAR(900) COLLATE Latin1_General_100_BIN2"),
        ),
        (T::Float, "REAL", Some("REAL")),
        (T::Double, "FLOAT(53)", Some("FLOAT(53)")),
        (T::Date, "DATE", Some("DATE")),
        (T::Time { fsp: 0 }, "TIME(0)", Some("TIME(0)")),
        (T::Time { fsp: 6 }, "TIME(6)", Some("TIME(6)")),
        (T::DateTime { fsp: 3 }, "DATETIME2(3)", Some("DATETIME2(3)")),
        (
            T::Timestamp { fsp: 6 },
            "DATETIMEOFFSET(6)",
            Some("DATETIMEOFFSET(6)"),
        ),
        (
            T::TimestampTz { fsp: 0 },
            "DATETIMEOFFSET(0)",
            Some("DATETIMEOFFSET(0)"),
        ),
        (T::Year, "SMALLINT", Some("SMALLINT")),
        (
            T::Char { length: 10 },
            "NVARCHAR(10) COLLATE Latin1_General_100_BIN2",
            Some("NVARCHAR(10) COLLATE Latin1_General_100_BIN2"),
        ),
        (
            T::Char { length: 0 },
            "NVARCHAR(1) COLLATE Latin1_General_100_BIN2",
            Some("NVARCHAR(1) COLLATE Latin1_General_100_BIN2"),
        ),
        (
            T::VarChar { length: 4000 },
            "NVARCHAR(4000) COLLATE Latin1_General_100_BIN2",
            Some("NVARCHAR(4000) COLLATE Latin1_General_100_BIN2"),
        ),
        (
            T::VarChar { length: 4001 },
            "NVARCHAR(MAX) COLLATE Latin1_General_100_BIN2",
            Some("NVARCHAR(450) COLLATE Latin1_General_100_BIN2"),
        ),
        (
            T::Text { max_bytes: 255 },
            "NVARCHAR(255) COLLATE Latin1_General_100_BIN2",
            Some("NVARCHAR(255) COLLATE Latin1_General_100_BIN2"),
        ),
        (
            T::Text { max_bytes: 65535 },
            "NVARCHAR(MAX) COLLATE Latin1_General_100_BIN2",
            Some("NVARCHAR(450) COLLATE Latin1_General_100_BIN2"),
        ),
        (T::Binary { length: 16 }, "BINARY(16)", Some("BINARY(16)")),
        (
            T::VarBinary { length: 8000 },
            "VARBINARY(8000)",
            Some("VARBINARY(8000)"),
        ),
        (
            T::VarBinary { length: 8001 },
            "VARBINARY(MAX)",
            Some("VARBINARY(900)"),
        ),
        (
            T::Blob { max_bytes: 255 },
            "VARBINARY(255)",
            Some("VARBINARY(255)"),
        ),
        (
            T::Blob { max_bytes: 1 << 32 },
            "VARBINARY(MAX)",
            Some("VARBINARY(900)"),
        ),
        (T::Json, "NVARCHAR(MAX) COLLATE Latin1_General_100_BIN2", None),
        (
            T::Enum {
                labels: vec!["small".into(), "medium".into()],
            },
            "NVARCHAR(6) COLLATE Latin1_General_100_BIN2",
            Some("NVARCHAR(6) COLLATE Latin1_General_100_BIN2"),
        ),
        (
            T::Set {
                labels: vec!["a".into(), "bb".into()],
            },
            "NVARCHAR(5) COLLATE Latin1_General_100_BIN2",
            Some("NVARCHAR(5) COLLATE Latin1_General_100_BIN2"),
        ),
        (T::Bit { width: 1 }, "BIT", Some("BIT")),
        (T::Bit { width: 9 }, "BINARY(2)", Some("BINARY(2)")),
        (T::Bit { width: 64 }, "BINARY(8)", Some("BINARY(8)")),
        (T::Uuid, "UNIQUEIDENTIFIER", Some("UNIQUEIDENTIFIER")),
        (
            T::Interval,
            "NVARCHAR(64) COLLATE Latin1_General_100_BIN2",
            Some("NVARCHAR(64) COLLATE Latin1_General_100_BIN2"),
        ),
    ];
    for (ty, plain, keyed) in cases {
        let c = col("c", ty.clone());
        assert_eq!(column_type(&c, false).as_deref(), Ok(plain), "{ty:?}");
        match keyed {
            Some(k) => assert_eq!(column_type(&c, true).as_deref(), Ok(k), "{ty:?} in a key"),
            None => assert!(
                column_type(&c, true).unwrap_err().contains("key"),
                "{ty:?} cannot be indexed"
            ),
        }
    }
    let other = col(
        "g",
        ColumnType::Other {
            name: "geometry".into(),
        },
    );
    assert!(column_type(&other, false)
        .unwrap_err()
        .contains("\"geometry\" has no SQL Server mapping"));
    assert!(column_type(
        &col(
            "i",
            T::Integer {
                bytes: 5,
                unsigned: false
            }
        ),
        false
    )
    .is_err());
}

#[test]
fn text_collations_follow_the_source_collation() {
    let with = |c: Option<&str>| {
        let mut d = col("s", ColumnType::VarChar { length: 20 });
        d.collation = c.map(str::to_string);
        collation(&d)
    };
    assert_eq!(with(None), COLLATION_BINARY);
    assert_eq!(with(Some("utf8mb4_bin")), COLLATION_BINARY);
    assert_eq!(with(Some("binary")), COLLATION_BINARY);
    assert_eq!(with(Some("C")), COLLATION_BINARY);
    assert_eq!(with(Some("utf8mb4_general_ci")), COLLATION_CI_AI);
    assert_eq!(with(Some("utf8mb4_0900_ai_ci")), COLLATION_CI_AI);
    assert_eq!(with(Some("latin1_swedish_ci")), COLLATION_CI_AI);
    assert_eq!(with(Some("utf8mb4_0900_as_ci")), COLLATION_CI_AS);
    assert_eq!(with(Some("utf8mb4_0900_as_cs")), COLLATION_CS_AS);
    assert_eq!(with(Some("latin1_general_cs")), COLLATION_CS_AS);
    let mut d = col("s", ColumnType::Char { length: 3 });
    d.collation = Some("utf8mb4_unicode_ci".into());
    assert_eq!(
        column_type(&d, true).unwrap(),
        "NVARCHAR(3) COLLATE Latin1_General_100_CI_AI_SC"
    );
}

fn date(year: u16, month: u8, day: u8) -> Date {
    Date { year, month, day }
}

/// Every `Value` variant into every column type it can reach, and the
/// refusals with their reasons.
#[test]
fn values_become_typed_tds_parameters() {
    use ColumnData as D;
    use ColumnType as T;
    let ok =
        |ty: T, v: Value| param(&col("c", ty.clone()), &v).unwrap_or_else(|e| panic!("{ty:?} {v:?}: {e}"));
    let err = |ty: T, v: Value| param(&col("c", ty.clone()), &v).expect_err(&format!("{ty:?} {v:?}"));
    let s = |x: &str| D::String(Some(Cow::Owned(x.to_string())));

    assert_eq!(ok(T::Bool, Value::Int(1)), D::Bit(Some(true)));
    assert_eq!(ok(T::Bool, Value::UInt(0)), D::Bit(Some(false)));
    assert_eq!(ok(int(), Value::Int(-7)), D::I64(Some(-7)));
    assert_eq!(ok(int(), Value::UInt(7)), D::I64(Some(7)));
    let u64t = T::Integer {
        bytes: 8,
        unsigned: true,
    };
    assert_eq!(
        ok(u64t.clone(), Value::UInt(u64::MAX)),
        D::Numeric(Some(Numeric::new_with_scale(18_446_744_073_709_551_615, 0)))
    );
    assert!(err(
        T::Integer {
            bytes: 8,
            unsigned: false
        },
        Value::UInt(u64::MAX)
    )
    .contains("does not fit"));
    assert_eq!(ok(T::Year, Value::Year(2024)), D::I64(Some(2024)));
    let dec = T::Decimal {
        precision: 10,
        scale: 3,
    };
    assert_eq!(
        ok(dec.clone(), Value::Decimal("-12.34".into())),
        D::Numeric(Some(Numeric::new_with_scale(-12340, 3)))
    );
    assert_eq!(
        ok(dec.clone(), Value::Decimal("0.000".into())),
        D::Numeric(Some(Numeric::new_with_scale(0, 3)))
    );
    assert_eq!(
        ok(dec.clone(), Value::Decimal("5".into())),
        D::Numeric(Some(Numeric::new_with_scale(5000, 3)))
    );
    assert_eq!(
        ok(dec.clone(), Value::Decimal(".5".into())),
        D::Numeric(Some(Numeric::new_with_scale(500, 3)))
    );
    assert!(err(dec.clone(), Value::Decimal("1.2345".into())).contains("more than 3 digits"));
    assert!(err(dec.clone(), Value::Decimal("1e5".into())).contains("not a decimal"));
    let d38 = T::Decimal {
        precision: 38,
        scale: 0,
    };
    let nines = "9".repeat(38);
    assert_eq!(
        ok(d38.clone(), Value::Decimal(nines.clone())),
        D::Numeric(Some(Numeric::new_with_scale(nines.parse().unwrap(), 0)))
    );
    assert!(err(d38, Value::Decimal("1".repeat(39))).contains("more than 38 digits"));
    let wide = T::Decimal {
        precision: 65,
        scale: 30,
    };
    assert_eq!(ok(wide.clone(), Value::Decimal("-1.5".into())), s("-1.5"));
    assert_eq!(
        ok(
            T::Numeric,
            Value::Decimal("123456789012345678901234567890123456789012.5".into())
        ),
        s("123456789012345678901234567890123456789012.5")
    );
    assert!(err(T::Numeric, Value::Decimal("NaN".into())).contains("not a finite decimal"));
    assert_eq!(ok(T::Float, Value::Float(1.5)), D::F32(Some(1.5)));
    assert_eq!(ok(T::Double, Value::Double(-2.25)), D::F64(Some(-2.25)));
    assert!(err(T::Double, Value::Double(f64::NAN)).contains("not a finite"));
    assert!(err(T::Float, Value::Float(f32::INFINITY)).contains("not a finite"));

    // Dates count days from 0001-01-01.
    assert_eq!(
        ok(T::Date, Value::Date(date(1, 1, 1))),
        D::Date(Some(MsDate::new(0)))
    );
    assert_eq!(
        ok(T::Date, Value::Date(date(1970, 1, 1))),
        D::Date(Some(MsDate::new(719_162)))
    );
    assert_eq!(
        ok(T::Date, Value::Date(date(2000, 3, 1))),
        D::Date(Some(MsDate::new(730_179)))
    );
    assert_eq!(
        ok(T::Date, Value::Date(date(9999, 12, 31))),
        D::Date(Some(MsDate::new(3_652_058)))
    );
    assert!(err(T::Date, Value::Date(date(0, 0, 0))).contains("zero date"));
    assert!(err(T::Date, Value::Date(date(2023, 2, 29))).contains("not a calendar date"));
    assert!(err(T::Date, Value::Date(date(2023, 13, 1))).contains("not a calendar date"));
    // Times in increments of the column's scale.
    let t = |negative, hours, minutes, seconds, micros| Time {
        negative,
        hours,
        minutes,
        seconds,
        micros,
    };
    let D::Time(Some(x)) = ok(T::Time { fsp: 6 }, Value::Time(t(false, 23, 59, 59, 999_999))) else {
        panic!()
    };
    assert_eq!((x.increments(), x.scale()), (86_399_999_999, 6));
    let D::Time(Some(x)) = ok(T::Time { fsp: 2 }, Value::Time(t(false, 1, 0, 0, 120_000))) else {
        panic!()
    };
    assert_eq!((x.increments(), x.scale()), (360_012, 2));
    assert!(err(T::Time { fsp: 0 }, Value::Time(t(false, 24, 0, 0, 0)))
        .contains("outside SQL Server's TIME range"));
    assert!(err(T::Time { fsp: 0 }, Value::Time(t(true, 1, 0, 0, 0))).contains("-01:00:00"));
    let dt = DateTime {
        date: date(1970, 1, 2),
        hour: 0,
        minute: 0,
        second: 1,
        micros: 500_000,
    };
    let D::DateTime2(Some(x)) = ok(T::DateTime { fsp: 1 }, Value::DateTime(dt)) else {
        panic!()
    };
    assert_eq!(
        (x.date().days(), x.time().increments(), x.time().scale()),
        (719_163, 15, 1)
    );
    // Instants at +00:00.
    let D::DateTimeOffset(Some(x)) = ok(T::TimestampTz { fsp: 6 }, Value::Timestamp(-1)) else {
        panic!()
    };
    assert_eq!(x.offset(), 0);
    assert_eq!(
        x.datetime2().date().days(),
        719_161,
        "one µs before 1970 is 1969-12-31"
    );
    assert_eq!(x.datetime2().time().increments(), 86_399_999_999);
    let D::DateTimeOffset(Some(x)) = ok(T::TimestampTz { fsp: 0 }, Value::Timestamp(0)) else {
        panic!()
    };
    assert_eq!(
        x.datetime2().date().days(),
        719_162,
        "0 is an ordinary instant for timestamptz"
    );
    assert!(err(T::Timestamp { fsp: 0 }, Value::Timestamp(0)).contains("zero timestamp"));

    // Text, JSON, ENUM, SET, intervals.
    assert_eq!(
        ok(T::VarChar { length: 5 }, Value::Text("héllo".into())),
        s("héllo")
    );
    assert_eq!(
        ok(T::Text { max_bytes: 65535 }, Value::Text(String::new())),
        s("")
    );
    assert_eq!(ok(T::Json, Value::Json("{\"a\": 1}".into())), s("{\"a\": 1}"));
    assert_eq!(
        ok(
            T::Enum {
                labels: vec!["x".into()]
            },
            Value::Enum("x".into())
        ),
        s("x")
    );
    assert_eq!(
        ok(
            T::Set {
                labels: vec!["a".into(), "b".into()]
            },
            Value::Set(vec!["a".into(), "b".into()])
        ),
        s("a,b")
    );
    assert_eq!(ok(T::Interval, Value::Text("P1D".into())), s("P1D"));
    // Bytes, BIT, UUID.
    assert_eq!(
        ok(T::Blob { max_bytes: 65535 }, Value::Bytes(vec![0, 255])),
        D::Binary(Some(Cow::Owned(vec![0, 255])))
    );
    assert_eq!(ok(T::Bit { width: 1 }, Value::Bit(1)), D::Bit(Some(true)));
    assert_eq!(
        ok(T::Bit { width: 10 }, Value::Bit(0x2ff)),
        D::Binary(Some(Cow::Owned(vec![0x02, 0xff])))
    );
    let id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    assert_eq!(
        ok(T::Uuid, Value::Text(id.into())),
        D::Guid(Some(id.parse().unwrap()))
    );
    assert!(err(T::Uuid, Value::Text("nope".into())).contains("not a UUID"));
    // Mismatches name both sides.
    assert!(err(int(), Value::Text("1".into())).contains("a text value cannot be written"));
    assert!(err(T::Date, Value::Int(1)).contains("integer"));
}

#[test]
fn nulls_are_typed_like_their_column() {
    use ColumnData as D;
    use ColumnType as T;
    for (ty, null) in [
        (T::Bool, D::Bit(None)),
        (int(), D::I64(None)),
        (
            T::Integer {
                bytes: 8,
                unsigned: true,
            },
            D::Numeric(None),
        ),
        (
            T::Decimal {
                precision: 5,
                scale: 1,
            },
            D::Numeric(None),
        ),
        (
            T::Decimal {
                precision: 50,
                scale: 1,
            },
            D::String(None),
        ),
        (T::Numeric, D::String(None)),
        (T::Float, D::F32(None)),
        (T::Double, D::F64(None)),
        (T::Date, D::Date(None)),
        (T::Time { fsp: 0 }, D::Time(None)),
        (T::DateTime { fsp: 0 }, D::DateTime2(None)),
        (T::Timestamp { fsp: 0 }, D::DateTimeOffset(None)),
        (T::TimestampTz { fsp: 0 }, D::DateTimeOffset(None)),
        (T::Year, D::I64(None)),
        (T::VarChar { length: 1 }, D::String(None)),
        (T::Json, D::String(None)),
        (T::VarBinary { length: 1 }, D::Binary(None)),
        (T::Blob { max_bytes: 10 }, D::Binary(None)),
        (T::Bit { width: 1 }, D::Bit(None)),
        (T::Bit { width: 3 }, D::Binary(None)),
        (T::Uuid, D::Guid(None)),
    ] {
        assert_eq!(param(&col("c", ty.clone()), &Value::Null), Ok(null), "{ty:?}");
    }
}

fn orders() -> TableSchema {
    let mut t = TableSchema::new(
        TableId::new("app", "orders"),
        vec![
            col("id", int()),
            col("email", ColumnType::VarChar { length: 100 }),
            col("note", ColumnType::Text { max_bytes: 65535 }),
            col("customer", int()),
        ],
        vec![0],
    );
    t.columns[0].nullable = false;
    t.unique_keys = vec![vec![1]];
    t.foreign_keys = vec![ForeignKey {
        name: "fk".into(),
        table: t.id.clone(),
        columns: vec!["customer".into()],
        referenced_table: TableId::new("app", "customers"),
        referenced_columns: vec!["id".into()],
        on_delete: FkAction::Cascade,
        on_update: FkAction::Restrict,
        referenced_captured: true,
        table_captured: true,
    }];
    t
}

#[test]
fn create_table_makes_schema_table_key_filtered_unique_index_and_fk_index() {
    let ddl = create_table(&orders()).unwrap();
    assert_eq!(
        ddl,
        vec![
            "IF SCHEMA_ID(N'app') IS NULL EXEC(N'CREATE SCHEMA [app]')".to_string(),
            "IF OBJECT_ID(N'[app].[orders]', N'U') IS NULL CREATE TABLE [app].[orders] (\
             [id] INT NOT NULL, \
             [email] NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NULL, \
             [note] NVARCHAR(MAX) COLLATE Latin1_General_100_BIN2 NULL, \
             [customer] INT NULL, \
             PRIMARY KEY ([id]))"
                .to_string(),
            "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE [name] = N'dbmux_uk_1' AND [object_id] = \
             OBJECT_ID(N'[app].[orders]')) CREATE UNIQUE INDEX [dbmux_uk_1] ON [app].[orders] ([email]) \
             WHERE [email] IS NOT NULL"
                .to_string(),
            "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE [name] = N'dbmux_fk_1' AND [object_id] = \
             OBJECT_ID(N'[app].[orders]')) CREATE INDEX [dbmux_fk_1] ON [app].[orders] ([customer])"
                .to_string(),
        ]
    );
    // A long text in a key gets SQL Server's index key limit; a JSON key
    // cannot be indexed, and an unmapped type is refused: both named.
    let mut t = orders();
    t.unique_keys = vec![vec![2]];
    assert!(
        create_table(&t).unwrap()[1].contains("[note] NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NULL")
    );
    t.columns[2].ty = ColumnType::Json;
    let (c, m) = create_table(&t).unwrap_err();
    assert_eq!(c, "note");
    assert!(m.contains("JSON"), "{m}");
    t.unique_keys.clear();
    t.columns[3].ty = ColumnType::Other {
        name: "geometry".into(),
    };
    assert_eq!(create_table(&t).unwrap_err().0, "customer");
    t.columns[3].name = "x".repeat(129);
    assert!(create_table(&t).unwrap_err().1.contains("128"));
    // A primary key column is NOT NULL even where the source said nullable.
    let mut t = orders();
    t.columns[0].nullable = true;
    assert!(create_table(&t).unwrap()[1].contains("[id] INT NOT NULL"));
}

#[test]
fn upserts_are_one_merge_with_holdlock_over_values() {
    let t = orders();
    assert_eq!(
        merge(&t, 2),
        "MERGE INTO [app].[orders] WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2, @P3, @P4), (@P5, @P6, @P7, @P8)) \
         AS s ([id], [email], [note], [customer]) ON t.[id] = s.[id] \
         WHEN MATCHED THEN UPDATE SET t.[email] = s.[email], t.[note] = s.[note], t.[customer] = s.[customer] \
         WHEN NOT MATCHED THEN INSERT ([id], [email], [note], [customer]) \
         VALUES (s.[id], s.[email], s.[note], s.[customer]);"
    );
    // Every column in the key: nothing to update, no WHEN MATCHED clause (it would be invalid).
    let link = TableSchema::new(
        TableId::new("app", "link"),
        vec![col("a", int()), col("b", int())],
        vec![0, 1],
    );
    assert_eq!(
        merge(&link, 1),
        "MERGE INTO [app].[link] WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2)) AS s ([a], [b]) \
         ON t.[a] = s.[a] AND t.[b] = s.[b] WHEN NOT MATCHED THEN INSERT ([a], [b]) VALUES (s.[a], s.[b]);"
    );
}

#[test]
fn deletes_inserts_and_truncates() {
    let link = TableSchema::new(
        TableId::new("app", "link"),
        vec![col("a", int()), col("b", int())],
        vec![0, 1],
    );
    assert_eq!(
        delete_keys(&link, 2),
        "DELETE t FROM [app].[link] AS t INNER JOIN (VALUES (@P1, @P2), (@P3, @P4)) AS s ([a], [b]) \
         ON t.[a] = s.[a] AND t.[b] = s.[b]"
    );
    assert_eq!(
        insert(&link, 3),
        "INSERT INTO [app].[link] ([a], [b]) VALUES (@P1, @P2), (@P3, @P4), (@P5, @P6)"
    );
    assert_eq!(truncate(&link.id), "DELETE FROM [app].[link]");
}

#[test]
fn keyless_rows_are_matched_exactly_one_at_a_time() {
    let t = TableSchema::new(
        TableId::new("app", "log"),
        vec![
            col("n", int()),
            col("s", ColumnType::VarChar { length: 10 }),
            col("b", ColumnType::VarBinary { length: 10 }),
            col("f", ColumnType::Binary { length: 4 }),
        ],
        vec![],
    );
    assert_eq!(
        update_one(&t, &[false, false, true, false]),
        "UPDATE TOP (1) [app].[log] SET [n] = @P4, [s] = @P5, [b] = @P6, [f] = @P7 WHERE [n] = @P1 AND \
         [s] = @P2 COLLATE Latin1_General_100_BIN2 AND DATALENGTH([s]) = DATALENGTH(CAST(@P2 AS NVARCHAR(MAX))) AND \
         [b] IS NULL AND [f] = @P3"
    );
    assert_eq!(
        delete_one(&t, &[true, false, false, true]),
        "DELETE TOP (1) FROM [app].[log] WHERE [n] IS NULL AND [s] = @P1 COLLATE Latin1_General_100_BIN2 AND \
         DATALENGTH([s]) = DATALENGTH(CAST(@P1 AS NVARCHAR(MAX))) AND [b] = @P2 AND DATALENGTH([b]) = DATALENGTH(@P2) \
         AND [f] IS NULL"
    );
}

#[test]
fn cascade_statements_match_keys_and_set_values_or_null() {
    let t = TableId::new("app", "orders");
    let cols = vec!["a".to_string(), "b".to_string()];
    assert_eq!(
        cascade_select(&t, &cols, 2, &["id".to_string()]),
        "SELECT [id] FROM [app].[orders] WHERE ([a] = @P1 AND [b] = @P2) OR ([a] = @P3 AND [b] = @P4)"
    );
    assert_eq!(
        cascade_delete(&t, &cols[..1], 2),
        "DELETE FROM [app].[orders] WHERE ([a] = @P1) OR ([a] = @P2)"
    );
    assert_eq!(
        cascade_update(&t, &cols, 1, false),
        "UPDATE [app].[orders] SET [a] = @P1, [b] = @P2 WHERE ([a] = @P3 AND [b] = @P4)"
    );
    assert_eq!(
        cascade_update(&t, &cols, 1, true),
        "UPDATE [app].[orders] SET [a] = NULL, [b] = NULL WHERE ([a] = @P1 AND [b] = @P2)"
    );
}

#[test]
fn bookkeeping_statements() {
    let b = Bookkeeping::new("dbmux");
    assert_eq!(b.offsets_table(), "[dbmux].[dbmux_offsets]");
    let setup = b.setup();
    assert_eq!(
        setup[0],
        "IF SCHEMA_ID(N'dbmux') IS NULL EXEC(N'CREATE SCHEMA [dbmux]')"
    );
    assert!(setup[1].starts_with(
        "IF OBJECT_ID(N'[dbmux].[dbmux_offsets]', N'U') IS NULL CREATE TABLE [dbmux].[dbmux_offsets] ("
    ));
    assert!(setup[1].contains("[seq] BIGINT NOT NULL"));
    assert!(setup[2].contains("PRIMARY KEY ([consumer], [table_schema], [table_name])"));
    assert_eq!(
        b.read_offset(true),
        "SELECT [seq] FROM [dbmux].[dbmux_offsets] WITH (UPDLOCK, HOLDLOCK, ROWLOCK) WHERE [consumer] = @P1"
    );
    assert_eq!(
        b.read_offset(false),
        "SELECT [seq] FROM [dbmux].[dbmux_offsets] WHERE [consumer] = @P1"
    );
    assert_eq!(
        b.register(),
        "INSERT INTO [dbmux].[dbmux_offsets] ([consumer], [seq]) SELECT @P1, 0 WHERE NOT EXISTS \
         (SELECT 1 FROM [dbmux].[dbmux_offsets] WITH (UPDLOCK, HOLDLOCK) WHERE [consumer] = @P1)"
    );
    assert_eq!(
        b.write_offset(),
        "UPDATE [dbmux].[dbmux_offsets] SET [seq] = @P2, [position] = @P3, [updated_at] = SYSUTCDATETIME() \
         WHERE [consumer] = @P1"
    );
    assert!(b
        .store_quarantine()
        .starts_with("MERGE INTO [dbmux].[dbmux_quarantine] WITH (HOLDLOCK)"));
    assert!(
        b.store_quarantine().ends_with(';'),
        "MERGE must end with a semicolon"
    );
    assert!(b
        .lift_quarantine()
        .starts_with("DELETE FROM [dbmux].[dbmux_quarantine]"));
    assert!(b.move_quarantine().contains("SET [first_seq] = @P4"));
}

/// Every statement's placeholders run from @P1 to @Pn without holes, and
/// the SQL has no more than SQL Server's parameter limit at the row counts
/// the engine allows.
#[test]
fn placeholders_are_dense() {
    fn max_placeholder(sql: &str) -> usize {
        let mut seen = std::collections::BTreeSet::new();
        let mut rest = sql;
        while let Some(i) = rest.find("@P") {
            rest = &rest[i + 2..];
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            seen.insert(n.parse::<usize>().unwrap());
        }
        assert_eq!(
            seen.iter().copied().collect::<Vec<_>>(),
            (1..=seen.len()).collect::<Vec<_>>(),
            "{sql}"
        );
        seen.len()
    }
    let t = orders();
    let rows = MAX_PARAMS / t.columns.len();
    assert_eq!(max_placeholder(&merge(&t, rows)), rows * 4);
    assert!(rows * 4 <= 2100);
    assert_eq!(max_placeholder(&insert(&t, 3)), 12);
    assert_eq!(max_placeholder(&delete_keys(&t, 5)), 5);
    assert_eq!(
        max_placeholder(&update_one(&t, &[false, true, false, false])),
        3 + 4
    );
    assert_eq!(
        max_placeholder(&cascade_update(&t.id, &["a".into()], 4, false)),
        5
    );
}
