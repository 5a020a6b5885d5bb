//! SQL text and parameter values for the MySQL / MariaDB applier.
//!
//! Pure functions, no connection: the applier in [`super::apply`] executes
//! what this module writes. The type and value rules are documented in
//! `docs/type-mapping.md`.
//!
//! # Values travel as parameters
//! Row values are never spliced into SQL: statements are prepared (binary
//! protocol) and values are bound as typed parameters, so there is no escaping
//! to get wrong and floats, dates and times keep every bit. The only literals
//! in SQL text are ENUM/SET labels in `CREATE TABLE`, written by
//! [`quote_string`] for a session whose `sql_mode` the applier sets itself
//! (backslash escapes on, see [`SESSION_SETUP`]).

use mysql_async::Value as My;
use pipeline::schema::{ColumnDef, ColumnType, TableId, TableSchema};
use pipeline::value::{civil_from_days, Value};

/// Statements run on every new connection, before anything else.
///
/// - `time_zone = '+00:00'`: `TIMESTAMP` values are bound as UTC wall-clock
///   values and read back in UTC, so `Value::Timestamp` round-trips exactly.
/// - `sql_mode`: strict (a value the column cannot hold is an error, never a
///   silent truncation); zero dates allowed (the source has them);
///   `NO_AUTO_VALUE_ON_ZERO` so a replicated `0` in an AUTO_INCREMENT column
///   stays `0`; no `NO_BACKSLASH_ESCAPES`, which [`quote_string`] relies on.
/// - `foreign_key_checks = 0`: foreign keys a replayed `CREATE`/`ALTER TABLE`
///   or a snapshot's `SHOW CREATE TABLE` brings to the replica are never
///   checked and never cascade there: tables are loaded in any order by
///   snapshots, and the applier performs the source's cascades itself (see
///   architecture.md), which InnoDB would otherwise repeat.
pub const SESSION_SETUP: &[&str] = &[
    "SET NAMES utf8mb4",
    "SET SESSION time_zone = '+00:00', \
     sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO', \
     foreign_key_checks = 0",
];

/// The most parameters one prepared statement may carry (a protocol limit).
pub const MAX_PARAMS: usize = 65_535;

/// Which server the replica runs: a few types and functions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MariaDb,
    Mysql,
}

impl Flavor {
    /// From `SELECT VERSION()`.
    pub fn from_version(version: &str) -> Self {
        if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb
        } else {
            Flavor::Mysql
        }
    }
}

/// `` `name` `` with backticks doubled.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `` `db`.`table` ``.
pub fn quote_table(t: &TableId) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name))
}

/// A string literal for a session without `NO_BACKSLASH_ESCAPES` and with a
/// utf8mb4 connection: `\` and `'` are escaped, NUL becomes `\0`.
pub fn quote_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A character-set name from the source, checked to be a plain word (it is
/// spliced into DDL unquoted).
fn charset_name(col: &ColumnDef) -> Result<&str, String> {
    let cs = col.charset.as_deref().unwrap_or("utf8mb4");
    if !cs.is_empty() && cs.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(cs)
    } else {
        Err(format!("character set {cs:?} is not a valid name"))
    }
}

/// The source column's collation, checked to be a plain word (spliced into DDL).
fn collation_name(col: &ColumnDef) -> Result<Option<&str>, String> {
    match col.collation.as_deref() {
        None => Ok(None),
        Some(c) if !c.is_empty() && c.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => Ok(Some(c)),
        Some(c) => Err(format!("collation {c:?} is not a valid name")),
    }
}

/// The column type to create on the replica: the source's own type, with the
/// source column's character set and collation for text (so keys compare as
/// on the source: `utf8mb4_bin` keeps `'a'` and `'A'` apart).
pub fn column_type_sql(col: &ColumnDef, flavor: Flavor) -> Result<String, String> {
    let text = |base: String| -> Result<String, String> {
        let mut t = format!("{base} CHARACTER SET {}", charset_name(col)?);
        if let Some(c) = collation_name(col)? {
            t.push_str(&format!(" COLLATE {c}"));
        }
        Ok(t)
    };
    let labels = |ls: &[String]| ls.iter().map(|l| quote_string(l)).collect::<Vec<_>>().join(",");
    Ok(match &col.ty {
        ColumnType::Bool => "TINYINT(1)".into(),
        ColumnType::Integer { bytes, unsigned } => {
            let base = match bytes {
                1 => "TINYINT",
                2 => "SMALLINT",
                3 => "MEDIUMINT",
                4 => "INT",
                8 => "BIGINT",
                other => return Err(format!("integer width of {other} bytes")),
            };
            if *unsigned {
                format!("{base} UNSIGNED")
            } else {
                base.into()
            }
        }
        ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
        // The widest exact DECIMAL; values that do not fit it exactly are refused in `to_param`.
        ColumnType::Numeric => "DECIMAL(65,30)".into(),
        ColumnType::Float => "FLOAT".into(),
        ColumnType::Double => "DOUBLE".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Time { fsp } => format!("TIME({fsp})"),
        ColumnType::DateTime { fsp } => format!("DATETIME({fsp})"),
        ColumnType::Timestamp { fsp } => format!("TIMESTAMP({fsp})"),
        // An instant of any year: the UTC wall-clock value (TIMESTAMP stops at 2038).
        ColumnType::TimestampTz { fsp } => format!("DATETIME({fsp})"),
        ColumnType::Interval => "VARCHAR(64) CHARACTER SET ascii".into(),
        ColumnType::Year => "YEAR".into(),
        ColumnType::Char { length } => text(format!("CHAR({length})"))?,
        ColumnType::VarChar { length } => text(format!("VARCHAR({length})"))?,
        ColumnType::Text { max_bytes } => text(
            match max_bytes {
                0..=255 => "TINYTEXT",
                256..=65_535 => "TEXT",
                65_536..=16_777_215 => "MEDIUMTEXT",
                _ => "LONGTEXT",
            }
            .into(),
        )?,
        ColumnType::Binary { length } => format!("BINARY({length})"),
        ColumnType::VarBinary { length } => format!("VARBINARY({length})"),
        ColumnType::Blob { max_bytes } => match max_bytes {
            0..=255 => "TINYBLOB",
            256..=65_535 => "BLOB",
            65_536..=16_777_215 => "MEDIUMBLOB",
            _ => "LONGBLOB",
        }
        .into(),
        ColumnType::Json => "JSON".into(),
        ColumnType::Enum { labels: ls } => text(format!("ENUM({})", labels(ls)))?,
        ColumnType::Set { labels: ls } => text(format!("SET({})", labels(ls)))?,
        ColumnType::Bit { width } => format!("BIT({width})"),
        ColumnType::Uuid => match flavor {
            Flavor::MariaDb => "UUID".into(),
            Flavor::Mysql => "CHAR(36) CHARACTER SET ascii".into(),
        },
        ColumnType::Other { name } => return Err(format!("source type {name:?} has no mapping")),
    })
}

/// `CREATE TABLE IF NOT EXISTS` for `target` from the source definition:
/// mapped types, nullability and the primary key; InnoDB (transactional).
pub fn create_table_sql(
    target: &TableId,
    schema: &TableSchema,
    flavor: Flavor,
) -> Result<String, (String, String)> {
    let mut parts = Vec::with_capacity(schema.columns.len() + 1);
    for col in &schema.columns {
        let ty = column_type_sql(col, flavor).map_err(|m| (col.name.clone(), m))?;
        // An explicit DEFAULT keeps a TIMESTAMP column free of the implicit
        // `DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP` servers add
        // when `explicit_defaults_for_timestamp` is off (every row we write
        // sets every column, so the default itself is never used).
        let null = match (&col.ty, col.nullable) {
            (ColumnType::Timestamp { .. }, true) => "NULL DEFAULT NULL",
            (ColumnType::Timestamp { .. }, false) => "NOT NULL DEFAULT '1970-01-01 00:00:01'",
            (_, true) => "NULL",
            (_, false) => "NOT NULL",
        };
        parts.push(format!("{} {ty} {null}", quote_ident(&col.name)));
    }
    if schema.has_primary_key() {
        let key: Vec<String> = schema
            .primary_key
            .iter()
            .map(|&i| quote_ident(&schema.columns[i].name))
            .collect();
        parts.push(format!("PRIMARY KEY ({})", key.join(",")));
    }
    // The source's other UNIQUE keys: rows stay as distinct as on the source,
    // and the applier's plans are checked against them (see pipeline::batch).
    for uk in &schema.unique_keys {
        let cols: Vec<String> = uk.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect();
        parts.push(format!("UNIQUE ({})", cols.join(",")));
    }
    // An index on every foreign key's columns: the applier finds the rows a
    // cascade reaches by them (the source has one for each key).
    for f in &schema.foreign_keys {
        let cols: Vec<String> = f.columns.iter().map(|c| quote_ident(c)).collect();
        parts.push(format!("KEY ({})", cols.join(",")));
    }
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        quote_table(target),
        parts.join(", ")
    ))
}

fn column_list(schema: &TableSchema) -> String {
    schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(",")
}

fn placeholders_rows(width: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; width].join(","));
    vec![one; rows].join(",")
}

/// Multi-row upsert by primary key: `INSERT … ON DUPLICATE KEY UPDATE` of every
/// non-key column.
///
/// `ON DUPLICATE KEY UPDATE` fires on a collision with *any* unique key: a
/// new row whose primary key is free but whose other unique value another row
/// holds would silently update that other row. The first assignment is a
/// guard against it: it keeps the first key column when the colliding row has
/// the new row's primary key, and sets it to NULL otherwise, which a primary
/// key column refuses in strict mode (error 1048) — the applier then retries
/// the batch in source order instead of diverging.
pub fn upsert_sql(target: &TableId, schema: &TableSchema, rows: usize) -> String {
    let same_key = schema
        .primary_key
        .iter()
        .map(|&i| {
            let q = quote_ident(&schema.columns[i].name);
            format!("{q} <=> VALUES({q})")
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let first = quote_ident(&schema.columns[schema.primary_key[0]].name);
    let mut assignments = vec![format!("{first}=IF({same_key},{first},NULL)")];
    assignments.extend(
        schema
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !schema.primary_key.contains(i))
            .map(|(_, c)| {
                let q = quote_ident(&c.name);
                format!("{q}=VALUES({q})")
            }),
    );
    let update = assignments.join(",");
    format!(
        "INSERT INTO {} ({}) VALUES {} ON DUPLICATE KEY UPDATE {update}",
        quote_table(target),
        column_list(schema),
        placeholders_rows(schema.columns.len(), rows)
    )
}

/// Plain multi-row insert (tables without a primary key).
pub fn insert_sql(target: &TableId, schema: &TableSchema, rows: usize) -> String {
    format!(
        "INSERT INTO {} ({}) VALUES {}",
        quote_table(target),
        column_list(schema),
        placeholders_rows(schema.columns.len(), rows)
    )
}

/// Multi-row delete by primary key. One key column: `k IN (?,…)`; a composite
/// key: `(a=? AND b=?) OR …`, which every server version turns into index
/// lookups.
pub fn delete_sql(target: &TableId, schema: &TableSchema, rows: usize) -> String {
    let cond = if schema.primary_key.len() == 1 {
        format!(
            "{} IN ({})",
            quote_ident(&schema.columns[schema.primary_key[0]].name),
            vec!["?"; rows].join(",")
        )
    } else {
        let one = schema
            .primary_key
            .iter()
            .map(|&i| format!("{}=?", quote_ident(&schema.columns[i].name)))
            .collect::<Vec<_>>()
            .join(" AND ");
        vec![format!("({one})"); rows].join(" OR ")
    };
    format!("DELETE FROM {} WHERE {cond}", quote_table(target))
}

/// The condition "this row equals the before image", column by column, exact:
/// - text is compared as its utf8mb4 bytes, so neither a case-insensitive
///   collation nor PAD SPACE can match a different row;
/// - DECIMAL is compared as DECIMAL (a string would be compared as a double);
/// - binary strings byte for byte; JSON as text on MariaDB (it is LONGTEXT),
///   as JSON on MySQL;
/// - `<=>` everywhere, so NULL matches NULL.
fn row_match(schema: &TableSchema, flavor: Flavor) -> String {
    schema
        .columns
        .iter()
        .map(|c| {
            let q = quote_ident(&c.name);
            let exact_text = format!("CAST(CONVERT({q} USING utf8mb4) AS BINARY) <=> CAST(? AS BINARY)");
            match &c.ty {
                ColumnType::Char { .. }
                | ColumnType::VarChar { .. }
                | ColumnType::Text { .. }
                | ColumnType::Enum { .. }
                | ColumnType::Set { .. }
                | ColumnType::Interval => exact_text,
                ColumnType::Json => match flavor {
                    Flavor::MariaDb => exact_text,
                    Flavor::Mysql => format!("{q} <=> CAST(? AS JSON)"),
                },
                ColumnType::Decimal { precision, scale } => {
                    format!("{q} <=> CAST(? AS DECIMAL({precision},{scale}))")
                }
                ColumnType::Numeric => format!("{q} <=> CAST(? AS DECIMAL(65,30))"),
                ColumnType::Binary { .. } | ColumnType::VarBinary { .. } | ColumnType::Blob { .. } => {
                    format!("{q} <=> CAST(? AS BINARY)")
                }
                _ => format!("{q} <=> ?"),
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Update one row equal to the before image (tables without a primary key).
/// Parameters: the after image, then the before image. The connection uses
/// `CLIENT_FOUND_ROWS`, so the affected count is 1 when the row was found.
pub fn update_one_sql(target: &TableId, schema: &TableSchema, flavor: Flavor) -> String {
    let set = schema
        .columns
        .iter()
        .map(|c| format!("{}=?", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "UPDATE {} SET {set} WHERE {} LIMIT 1",
        quote_table(target),
        row_match(schema, flavor)
    )
}

/// Delete one row equal to the before image (tables without a primary key).
pub fn delete_one_sql(target: &TableId, schema: &TableSchema, flavor: Flavor) -> String {
    format!(
        "DELETE FROM {} WHERE {} LIMIT 1",
        quote_table(target),
        row_match(schema, flavor)
    )
}

/// Deletes every row inside the current transaction (`TRUNCATE` would commit it).
pub fn truncate_sql(target: &TableId) -> String {
    format!("DELETE FROM {}", quote_table(target))
}

/// The offsets table's name.
pub const OFFSETS_TABLE: &str = "dbmux_offsets";
/// The quarantine table's name (beside the offsets table).
pub const QUARANTINE_TABLE: &str = "dbmux_quarantine";
/// Tables waiting for a snapshot's first chunk (beside the offsets table).
pub const SNAPSHOT_TABLE: &str = "dbmux_snapshot";
/// A schema change that may have run but whose offset is not committed yet
/// (MariaDB/MySQL DDL commits by itself; beside the offsets table).
pub const DDL_TABLE: &str = "dbmux_ddl";
/// dbmux's own tables in the offsets database: never written as replicas.
pub const OWN_TABLES: &[&str] = &[OFFSETS_TABLE, QUARANTINE_TABLE, SNAPSHOT_TABLE, DDL_TABLE];

/// `CREATE DATABASE IF NOT EXISTS` with utf8mb4 (replicated tables without a
/// charset of their own then hold the same text as on the source).
pub fn create_database_sql(database: &str) -> String {
    format!(
        "CREATE DATABASE IF NOT EXISTS {} DEFAULT CHARACTER SET utf8mb4",
        quote_ident(database)
    )
}

/// The statement texts of dbmux's own tables in database `database`
/// (`offsets_database`), built once. Parameters are `?`, in the order each
/// method states; the consumer always comes first.
#[derive(Debug, Clone)]
pub struct Bookkeeping {
    database: String,
    offsets: String,
    quarantine: String,
    snapshot: String,
    ddl: String,
}

impl Bookkeeping {
    pub fn new(database: &str) -> Self {
        let own = |t: &str| format!("{}.{}", quote_ident(database), quote_ident(t));
        Self {
            database: database.to_string(),
            offsets: own(OFFSETS_TABLE),
            quarantine: own(QUARANTINE_TABLE),
            snapshot: own(SNAPSHOT_TABLE),
            ddl: own(DDL_TABLE),
        }
    }

    /// The database holding the tables.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Idempotent DDL: the database and the four tables.
    pub fn setup(&self) -> Vec<String> {
        vec![
            create_database_sql(&self.database),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 `consumer` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
                 `seq` BIGINT UNSIGNED NOT NULL, \
                 `position` TEXT NULL, \
                 `updated_at` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
                self.offsets
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 `consumer` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 `table_schema` VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 `table_name` VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 `first_seq` BIGINT UNSIGNED NOT NULL, \
                 `reason` TEXT NOT NULL, \
                 `since` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
                 PRIMARY KEY (`consumer`, `table_schema`, `table_name`)) ENGINE=InnoDB",
                self.quarantine
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 `consumer` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 `table_schema` VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 `table_name` VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 `run` BIGINT UNSIGNED NOT NULL, \
                 `since` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
                 PRIMARY KEY (`consumer`, `table_schema`, `table_name`)) ENGINE=InnoDB",
                self.snapshot
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 `consumer` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
                 `seq` BIGINT UNSIGNED NOT NULL, \
                 `statement` LONGTEXT NOT NULL, \
                 `since` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
                self.ddl
            ),
        ]
    }

    /// `(consumer)`: the offsets row at `seq` 0 unless it exists.
    pub fn register(&self) -> String {
        format!(
            "INSERT INTO {} (`consumer`, `seq`) VALUES (?, 0) ON DUPLICATE KEY UPDATE `consumer` = `consumer`",
            self.offsets
        )
    }

    /// `(consumer)`: its `seq`, locked until the transaction ends with `lock`.
    pub fn read_offset(&self, lock: bool) -> String {
        let lock = if lock { " FOR UPDATE" } else { "" };
        format!("SELECT `seq` FROM {} WHERE `consumer` = ?{lock}", self.offsets)
    }

    /// `(seq, position, consumer)`.
    pub fn write_offset(&self) -> String {
        format!(
            "UPDATE {} SET `seq` = ?, `position` = ?, `updated_at` = CURRENT_TIMESTAMP(6) WHERE `consumer` = ?",
            self.offsets
        )
    }

    /// `(consumer)`: rows `(table_schema, table_name, first_seq, reason)`.
    pub fn read_quarantines(&self) -> String {
        format!(
            "SELECT `table_schema`, `table_name`, `first_seq`, `reason` FROM {} WHERE `consumer` = ? \
             ORDER BY `table_schema`, `table_name`",
            self.quarantine
        )
    }

    /// `(consumer, table_schema, table_name, first_seq, reason)`: inserts or replaces.
    pub fn store_quarantine(&self) -> String {
        format!(
            "INSERT INTO {} (`consumer`, `table_schema`, `table_name`, `first_seq`, `reason`) \
             VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE `first_seq` = VALUES(`first_seq`), \
             `reason` = VALUES(`reason`), `since` = CURRENT_TIMESTAMP(6)",
            self.quarantine
        )
    }

    /// `(first_seq, consumer, table_schema, table_name)`.
    pub fn move_quarantine(&self) -> String {
        format!(
            "UPDATE {} SET `first_seq` = ? WHERE `consumer` = ? AND `table_schema` = ? AND `table_name` = ?",
            self.quarantine
        )
    }

    /// `(consumer, table_schema, table_name)`.
    pub fn lift_quarantine(&self) -> String {
        Self::delete_table_row(&self.quarantine)
    }

    /// `(consumer)`: rows `(table_schema, table_name)`.
    pub fn read_pending(&self) -> String {
        format!(
            "SELECT `table_schema`, `table_name` FROM {} WHERE `consumer` = ? ORDER BY 1, 2",
            self.snapshot
        )
    }

    /// `(consumer, table_schema, table_name, run)`: inserts or replaces.
    pub fn store_pending(&self) -> String {
        format!(
            "INSERT INTO {} (`consumer`, `table_schema`, `table_name`, `run`) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE `run` = VALUES(`run`), `since` = CURRENT_TIMESTAMP(6)",
            self.snapshot
        )
    }

    /// `(consumer, table_schema, table_name)`.
    pub fn drop_pending(&self) -> String {
        Self::delete_table_row(&self.snapshot)
    }

    /// `(consumer, table_schema)` each: the pending snapshots and quarantines
    /// of a dropped database.
    pub fn drop_schema_state(&self) -> Vec<String> {
        [&self.snapshot, &self.quarantine]
            .into_iter()
            .map(|t| format!("DELETE FROM {t} WHERE `consumer` = ? AND `table_schema` = ?"))
            .collect()
    }

    /// `(consumer)` each: every quarantine, pending snapshot and schema-change note.
    pub fn clear_state(&self) -> Vec<String> {
        [&self.quarantine, &self.snapshot, &self.ddl]
            .into_iter()
            .map(|t| format!("DELETE FROM {t} WHERE `consumer` = ?"))
            .collect()
    }

    /// `(consumer)`: the `seq` of the noted schema change.
    pub fn read_ddl_note(&self) -> String {
        format!("SELECT `seq` FROM {} WHERE `consumer` = ?", self.ddl)
    }

    /// `(consumer, seq, statement)`: inserts or replaces.
    pub fn store_ddl_note(&self) -> String {
        format!(
            "INSERT INTO {} (`consumer`, `seq`, `statement`) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE \
             `seq` = VALUES(`seq`), `statement` = VALUES(`statement`), `since` = CURRENT_TIMESTAMP(6)",
            self.ddl
        )
    }

    /// `(consumer)`.
    pub fn clear_ddl_note(&self) -> String {
        format!("DELETE FROM {} WHERE `consumer` = ?", self.ddl)
    }

    fn delete_table_row(table: &str) -> String {
        format!("DELETE FROM {table} WHERE `consumer` = ? AND `table_schema` = ? AND `table_name` = ?")
    }
}

/// `(schema, name)`: one row when the table exists.
pub const TABLE_EXISTS: &str =
    "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?";

/// `(a = ? AND b = ?) OR …` for `keys` keys of columns `cols` (foreign-key
/// cascades: rows are matched with `=` under the replica column's collation,
/// as InnoDB matches them on the source).
fn cascade_condition(cols: &[String], keys: usize) -> String {
    let one = cols
        .iter()
        .map(|c| format!("{} = ?", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    vec![format!("({one})"); keys].join(" OR ")
}

/// The `want` columns of the rows matching one of `keys` keys.
pub fn cascade_select_sql(target: &TableId, cols: &[String], keys: usize, want: &[String]) -> String {
    let list = want.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(",");
    format!(
        "SELECT {list} FROM {} WHERE {}",
        quote_table(target),
        cascade_condition(cols, keys)
    )
}

/// Deletes the rows matching one of `keys` keys.
pub fn cascade_delete_sql(target: &TableId, cols: &[String], keys: usize) -> String {
    format!(
        "DELETE FROM {} WHERE {}",
        quote_table(target),
        cascade_condition(cols, keys)
    )
}

/// Sets `cols` to parameters (or NULL with `to_null`) in the rows matching
/// one of `keys` keys; the new values' parameters come first.
pub fn cascade_update_sql(target: &TableId, cols: &[String], keys: usize, to_null: bool) -> String {
    let set = cols
        .iter()
        .map(|c| match to_null {
            false => format!("{} = ?", quote_ident(c)),
            true => format!("{} = NULL", quote_ident(c)),
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE {} SET {set} WHERE {}",
        quote_table(target),
        cascade_condition(cols, keys)
    )
}

/// Converts one value for binding to a parameter of a statement on column `col`.
/// Errors are definite: the message names what is wrong, the caller adds the
/// table and column.
pub fn to_param(v: &Value, col: &ColumnDef) -> Result<My, String> {
    Ok(match v {
        Value::Null => My::NULL,
        Value::Int(x) => My::Int(*x),
        Value::UInt(x) => My::UInt(*x),
        Value::Float(x) => My::Float(*x),
        Value::Double(x) => My::Double(*x),
        Value::Decimal(s) if col.ty == ColumnType::Numeric => {
            fits_decimal_65_30(s)?;
            My::Bytes(s.as_bytes().to_vec())
        }
        Value::Decimal(s) => My::Bytes(s.as_bytes().to_vec()),
        Value::Date(d) => My::Date(d.year, d.month, d.day, 0, 0, 0, 0),
        Value::Time(t) => My::Time(
            t.negative,
            t.hours / 24,
            (t.hours % 24) as u8,
            t.minutes,
            t.seconds,
            t.micros,
        ),
        Value::DateTime(dt) => My::Date(
            dt.date.year,
            dt.date.month,
            dt.date.day,
            dt.hour,
            dt.minute,
            dt.second,
            dt.micros,
        ),
        // 0 is MySQL's zero TIMESTAMP, but an ordinary instant in a `TimestampTz` column.
        Value::Timestamp(0) if !matches!(col.ty, ColumnType::TimestampTz { .. }) => {
            My::Date(0, 0, 0, 0, 0, 0, 0)
        }
        Value::Timestamp(us) => utc_parts(*us)?,
        Value::Year(y) => My::UInt(u64::from(*y)),
        Value::Text(s) => My::Bytes(s.as_bytes().to_vec()),
        Value::Bytes(b) => match &col.ty {
            ColumnType::Uuid => My::Bytes(pipeline::value::uuid_text(b)?.into_bytes()),
            ColumnType::Binary { length } if b.len() < *length as usize => {
                // MySQL stores and returns BINARY(n) right-padded with 0x00.
                let mut padded = b.clone();
                padded.resize(*length as usize, 0);
                My::Bytes(padded)
            }
            _ => My::Bytes(b.clone()),
        },
        Value::Json(s) => My::Bytes(s.as_bytes().to_vec()),
        Value::Enum(s) => {
            if s.is_empty()
                && matches!(&col.ty, ColumnType::Enum { labels } if !labels.iter().any(String::is_empty))
            {
                return Err("the ENUM invalid-value label '' cannot be written in strict mode".into());
            }
            My::Bytes(s.as_bytes().to_vec())
        }
        Value::Set(members) => My::Bytes(members.join(",").into_bytes()),
        Value::Bit(x) => My::UInt(*x),
    })
}

/// MariaDB/MySQL round extra fractional digits with only a note, even in
/// strict mode: a `Numeric` value that `DECIMAL(65,30)` cannot hold exactly
/// (more than 35 integer or 30 fractional digits, NaN, infinity) is refused.
fn fits_decimal_65_30(s: &str) -> Result<(), String> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && int.trim_start_matches('0').len() <= 35
        && frac.trim_end_matches('0').len() <= 30;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "numeric value {:?} does not fit DECIMAL(65,30) exactly (at most 35 integer and 30 fractional digits, no NaN or infinity)",
            &s[..s.len().min(80)]
        ))
    }
}

/// A `Timestamp` (µs since the epoch, UTC) as a UTC wall-clock value; the
/// session runs with `time_zone = '+00:00'`.
fn utc_parts(us: i64) -> Result<My, String> {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000) as u32;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let year = u16::try_from(y).map_err(|_| format!("timestamp {us} µs is outside years 0..=65535"))?;
    Ok(My::Date(
        year,
        m,
        d,
        (sod / 3600) as u8,
        (sod % 3600 / 60) as u8,
        (sod % 60) as u8,
        micros,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::value::{Date, DateTime, Time};

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

    fn schema(pk: Vec<usize>) -> TableSchema {
        TableSchema {
            id: TableId::new("src", "t"),
            columns: vec![
                col(
                    "id",
                    ColumnType::Integer {
                        bytes: 4,
                        unsigned: false,
                    },
                ),
                col("we`ird", ColumnType::VarChar { length: 10 }),
                col(
                    "d",
                    ColumnType::Decimal {
                        precision: 65,
                        scale: 30,
                    },
                ),
            ],
            primary_key: pk,
            ..Default::default()
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_table(&TableId::new("d`b", "t")), "`d``b`.`t`");
        assert_eq!(quote_string(r"it's a \ test"), r"'it''s a \\ test'");
        assert_eq!(quote_string("nul\0"), r"'nul\0'");
        assert_eq!(quote_string("é😀"), "'é😀'");
    }

    #[test]
    fn statements() {
        let t = TableId::new("db", "t");
        let s = schema(vec![0]);
        assert_eq!(
            upsert_sql(&t, &s, 2),
            "INSERT INTO `db`.`t` (`id`,`we``ird`,`d`) VALUES (?,?,?),(?,?,?) \
             ON DUPLICATE KEY UPDATE `id`=IF(`id` <=> VALUES(`id`),`id`,NULL),`we``ird`=VALUES(`we``ird`),`d`=VALUES(`d`)"
        );
        assert_eq!(
            delete_sql(&t, &s, 3),
            "DELETE FROM `db`.`t` WHERE `id` IN (?,?,?)"
        );
        let s2 = schema(vec![0, 1]);
        assert_eq!(
            delete_sql(&t, &s2, 2),
            "DELETE FROM `db`.`t` WHERE (`id`=? AND `we``ird`=?) OR (`id`=? AND `we``ird`=?)"
        );
        let all_key = TableSchema {
            primary_key: vec![0, 1, 2],
            ..schema(vec![])
        };
        assert!(upsert_sql(&t, &all_key, 1).ends_with(
            "ON DUPLICATE KEY UPDATE `id`=IF(`id` <=> VALUES(`id`) AND `we``ird` <=> VALUES(`we``ird`) \
             AND `d` <=> VALUES(`d`),`id`,NULL)"
        ));
        assert_eq!(
            update_one_sql(&t, &schema(vec![]), Flavor::MariaDb),
            "UPDATE `db`.`t` SET `id`=?,`we``ird`=?,`d`=? WHERE `id` <=> ? AND \
             CAST(CONVERT(`we``ird` USING utf8mb4) AS BINARY) <=> CAST(? AS BINARY) AND \
             `d` <=> CAST(? AS DECIMAL(65,30)) LIMIT 1"
        );
        assert_eq!(truncate_sql(&t), "DELETE FROM `db`.`t`");
    }

    #[test]
    fn create_table() {
        let mut s = schema(vec![0]);
        s.columns.push(ColumnDef {
            charset: Some("latin1".into()),
            collation: None,
            nullable: false,
            ..col(
                "e",
                ColumnType::Enum {
                    labels: vec!["a'b".into(), "c".into()],
                },
            )
        });
        assert_eq!(
            create_table_sql(&TableId::new("db", "t"), &s, Flavor::MariaDb).unwrap(),
            "CREATE TABLE IF NOT EXISTS `db`.`t` (`id` INT NULL, `we``ird` VARCHAR(10) CHARACTER SET utf8mb4 NULL, \
             `d` DECIMAL(65,30) NULL, `e` ENUM('a''b','c') CHARACTER SET latin1 NOT NULL, PRIMARY KEY (`id`)) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        );
        s.columns.push(col(
            "x",
            ColumnType::Other {
                name: "geometry".into(),
            },
        ));
        assert_eq!(
            create_table_sql(&TableId::new("db", "t"), &s, Flavor::MariaDb)
                .unwrap_err()
                .0,
            "x"
        );
        let bin = ColumnDef {
            charset: Some("utf8mb4".into()),
            collation: Some("utf8mb4_bin".into()),
            ..col("c", ColumnType::VarChar { length: 5 })
        };
        assert_eq!(
            column_type_sql(&bin, Flavor::MariaDb).unwrap(),
            "VARCHAR(5) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        );
        let bad_coll = ColumnDef {
            collation: Some("x; DROP".into()),
            ..bin
        };
        assert!(column_type_sql(&bad_coll, Flavor::MariaDb).is_err());
        let bad_cs = ColumnDef {
            charset: Some("latin1; DROP".into()),
            collation: None,
            ..col("c", ColumnType::Text { max_bytes: 65535 })
        };
        assert!(column_type_sql(&bad_cs, Flavor::Mysql).is_err());
    }

    #[test]
    fn column_types() {
        let t = |ty| column_type_sql(&col("c", ty), Flavor::MariaDb).unwrap();
        assert_eq!(
            t(ColumnType::Integer {
                bytes: 8,
                unsigned: true
            }),
            "BIGINT UNSIGNED"
        );
        assert_eq!(
            t(ColumnType::Integer {
                bytes: 3,
                unsigned: false
            }),
            "MEDIUMINT"
        );
        assert_eq!(
            t(ColumnType::Text {
                max_bytes: 4294967295
            }),
            "LONGTEXT CHARACTER SET utf8mb4"
        );
        assert_eq!(t(ColumnType::Blob { max_bytes: 65535 }), "BLOB");
        assert_eq!(t(ColumnType::Bit { width: 64 }), "BIT(64)");
        assert_eq!(t(ColumnType::Timestamp { fsp: 6 }), "TIMESTAMP(6)");
        let ts = ColumnDef {
            nullable: false,
            ..col("ts", ColumnType::Timestamp { fsp: 3 })
        };
        let s = TableSchema {
            id: TableId::new("d", "t"),
            columns: vec![ts],
            primary_key: vec![],
            ..Default::default()
        };
        assert!(create_table_sql(&TableId::new("d", "t"), &s, Flavor::Mysql)
            .unwrap()
            .contains("`ts` TIMESTAMP(3) NOT NULL DEFAULT '1970-01-01 00:00:01'"));
        assert_eq!(t(ColumnType::Uuid), "UUID");
        assert_eq!(
            column_type_sql(&col("c", ColumnType::Uuid), Flavor::Mysql).unwrap(),
            "CHAR(36) CHARACTER SET ascii"
        );
    }

    #[test]
    fn values() {
        let c = col("c", ColumnType::Json);
        assert_eq!(
            to_param(&Value::Timestamp(0), &c).unwrap(),
            My::Date(0, 0, 0, 0, 0, 0, 0)
        );
        assert_eq!(
            to_param(&Value::Timestamp(2_147_483_647_999_999), &c).unwrap(),
            My::Date(2038, 1, 19, 3, 14, 7, 999_999)
        );
        assert_eq!(
            to_param(
                &Value::Time(Time {
                    negative: true,
                    hours: 838,
                    minutes: 59,
                    seconds: 59,
                    micros: 1
                }),
                &c
            )
            .unwrap(),
            My::Time(true, 34, 22, 59, 59, 1)
        );
        let dt = DateTime {
            date: Date {
                year: 0,
                month: 0,
                day: 0,
            },
            hour: 0,
            minute: 0,
            second: 0,
            micros: 0,
        };
        assert_eq!(
            to_param(&Value::DateTime(dt), &c).unwrap(),
            My::Date(0, 0, 0, 0, 0, 0, 0)
        );
        let bin = col("b", ColumnType::Binary { length: 4 });
        assert_eq!(
            to_param(&Value::Bytes(vec![1]), &bin).unwrap(),
            My::Bytes(vec![1, 0, 0, 0])
        );
        let set = col("s", ColumnType::Set { labels: vec![] });
        assert_eq!(
            to_param(&Value::Set(vec!["a".into(), "b".into()]), &set).unwrap(),
            My::Bytes(b"a,b".to_vec())
        );
        let e = col(
            "e",
            ColumnType::Enum {
                labels: vec!["x".into()],
            },
        );
        assert!(to_param(&Value::Enum(String::new()), &e).is_err());
        let u = col("u", ColumnType::Uuid);
        assert_eq!(
            to_param(&Value::Bytes((0u8..16).collect()), &u).unwrap(),
            My::Bytes(b"00010203-0405-0607-0809-0a0b0c0d0e0f".to_vec())
        );
    }
}
