//! Table and column definitions as captured from the source.
//!
//! Every change event points at the [`TableSchema`] that was in force when the
//! row was written, so an applier can create a missing target table and map
//! each value by column position without asking the source again.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `database.table` (MySQL) or `schema.table` (PostgreSQL).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableId {
    pub schema: String,
    pub name: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Source column type, engine-neutral but precise enough to create an
/// equivalent column in another dialect.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ColumnType {
    Bool,
    /// Integer of `bytes` width (1, 2, 3, 4 or 8).
    Integer {
        bytes: u8,
        unsigned: bool,
    },
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// An exact decimal without a declared precision and scale, or one wider
    /// than `Decimal` holds (PostgreSQL `numeric`, `numeric(100,40)`); values
    /// are `Value::Decimal` text.
    Numeric,
    Float,
    Double,
    Date,
    /// `fsp` = fractional-second digits (0..=6).
    Time {
        fsp: u8,
    },
    DateTime {
        fsp: u8,
    },
    Timestamp {
        fsp: u8,
    },
    /// An instant with a wide range (PostgreSQL `timestamptz`, years 1–9999
    /// here): unlike MySQL `TIMESTAMP` (1970–2038, `0` = the zero timestamp),
    /// every `Value::Timestamp`, including 0, is an ordinary instant.
    TimestampTz {
        fsp: u8,
    },
    Year,
    /// Fixed-length text of `length` characters.
    Char {
        length: u32,
    },
    /// Variable-length text of at most `length` characters.
    VarChar {
        length: u32,
    },
    /// TEXT family; `max_bytes` is the storage limit (255, 65535, 16777215, 4294967295).
    Text {
        max_bytes: u64,
    },
    Binary {
        length: u32,
    },
    VarBinary {
        length: u32,
    },
    Blob {
        max_bytes: u64,
    },
    Json,
    Enum {
        labels: Vec<String>,
    },
    Set {
        labels: Vec<String>,
    },
    Bit {
        width: u16,
    },
    Uuid,
    /// A calendar interval (PostgreSQL `interval`: months, days and
    /// microseconds); values are `Value::Text` in ISO 8601 form (`P1Y2M3DT4H5M6.5S`).
    Interval,
    /// A type this build cannot map; appliers refuse to create such a column.
    Other {
        name: String,
    },
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    /// Character set of text columns as the source names it (`utf8mb4`, `latin1`).
    pub charset: Option<String>,
    /// Collation of text columns as the source names it (`utf8mb4_bin`,
    /// `latin1_swedish_ci`); `None` for other columns or when unknown. Replicas
    /// compare keys the way this collation does (see `docs/type-mapping.md`).
    pub collation: Option<String>,
    /// The source's own spelling of the type (`decimal(65,30) unsigned`), for people.
    pub source_type: String,
}

/// What a foreign key does to the referencing rows when the referenced row
/// is deleted or its referenced columns change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FkAction {
    /// `NO ACTION` / `RESTRICT`: the source refuses the change while
    /// referencing rows exist, so a committed change never had any.
    Restrict,
    /// Delete the referencing rows / copy the new values into them.
    Cascade,
    /// Set the referencing columns to NULL.
    SetNull,
    /// Set the referencing columns to their default (InnoDB refuses it; kept
    /// so that an applier can refuse it loudly rather than guess).
    SetDefault,
}

impl FkAction {
    /// True when the action changes referencing rows.
    pub fn changes_rows(self) -> bool {
        !matches!(self, FkAction::Restrict)
    }
}

/// One foreign key: `table(columns)` references `referenced_table(referenced_columns)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ForeignKey {
    /// The constraint's name at the source.
    pub name: String,
    /// The referencing (child) table.
    pub table: TableId,
    /// Referencing columns, in key order.
    pub columns: Vec<String>,
    /// The referenced (parent) table.
    pub referenced_table: TableId,
    /// Referenced columns, pairwise with `columns`.
    pub referenced_columns: Vec<String>,
    pub on_delete: FkAction,
    pub on_update: FkAction,
    /// Whether capture reads the referenced table (a cascade from a table
    /// that is not captured can never reach a replica).
    pub referenced_captured: bool,
    /// Whether capture reads the referencing table.
    pub table_captured: bool,
}

/// The definition of one source table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableSchema {
    pub id: TableId,
    pub columns: Vec<ColumnDef>,
    /// Indexes into `columns` of the primary key, in key order; empty when the table has none.
    pub primary_key: Vec<usize>,
    /// Other UNIQUE keys of the source table, each as indexes into `columns` in
    /// key order. Key columns with a prefix length at the source are left out
    /// of this list (a prefix makes the source key stricter than any replica
    /// key over whole columns).
    pub unique_keys: Vec<Vec<usize>>,
    /// Foreign keys of this table (this table is the referencing one).
    pub foreign_keys: Vec<ForeignKey>,
    /// Foreign keys whose actions change rows when rows of this table change:
    /// those referencing this table with a cascading action, and, transitively,
    /// those referencing the tables they change. Sources that do not log
    /// cascaded changes (MariaDB, MySQL 8) fill it so that appliers can
    /// perform the cascades themselves (see `pipeline::cascade`).
    pub cascades: Vec<ForeignKey>,
}

impl TableSchema {
    /// A table with columns and a primary key and nothing else.
    pub fn new(id: TableId, columns: Vec<ColumnDef>, primary_key: Vec<usize>) -> Self {
        Self {
            id,
            columns,
            primary_key,
            ..Self::default()
        }
    }

    /// True when the columns of this definition are unknown (a TRUNCATE of a
    /// table capture has not seen a row of yet): such a definition names a
    /// table and can never be used to create one.
    pub fn columns_unknown(&self) -> bool {
        self.columns.is_empty()
    }

    pub fn has_primary_key(&self) -> bool {
        !self.primary_key.is_empty()
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// A test table `app.t` with one `int` primary-key column `id`.
#[cfg(test)]
pub(crate) fn test_table() -> std::sync::Arc<TableSchema> {
    std::sync::Arc::new(TableSchema::new(
        TableId::new("app", "t"),
        vec![ColumnDef {
            name: "id".into(),
            ty: ColumnType::Integer {
                bytes: 4,
                unsigned: false,
            },
            nullable: false,
            charset: None,
            collation: None,
            source_type: "int".into(),
        }],
        vec![0],
    ))
}
