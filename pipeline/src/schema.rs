//! Table and column definitions as captured from the source.
//!
//! Every change event points at the [`TableSchema`] that was in force when the
//! row was written, so an applier can create a missing target table and map
//! each value by column position without asking the source again.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `database.table` (MySQL) or `schema.table` (PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    /// The source's own spelling of the type (`decimal(65,30) unsigned`), for people.
    pub source_type: String,
}

/// The definition of one source table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableSchema {
    pub id: TableId,
    pub columns: Vec<ColumnDef>,
    /// Indexes into `columns` of the primary key, in key order; empty when the table has none.
    pub primary_key: Vec<usize>,
}

impl TableSchema {
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
    std::sync::Arc::new(TableSchema {
        id: TableId::new("app", "t"),
        columns: vec![ColumnDef {
            name: "id".into(),
            ty: ColumnType::Integer {
                bytes: 4,
                unsigned: false,
            },
            nullable: false,
            charset: None,
            source_type: "int".into(),
        }],
        primary_key: vec![0],
    })
}
