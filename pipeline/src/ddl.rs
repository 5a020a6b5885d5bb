//! Schema changes (DDL) as they travel in the stream.
//!
//! # What an event carries
//! A DDL event ([`crate::Op::Ddl`]) is one table's part of one source
//! statement: the statement as the source logged it (so a replica of the same
//! engine can replay it), what dbmux understood of it ([`DdlKind`], engine
//! neutral, so a replica of another engine can translate it), and — in the
//! event's `table` — the table's definition **after** the change. A
//! `RENAME TABLE a TO b, c TO d` is two events of one transaction; a
//! `DROP TABLE a, b` too.
//!
//! # Why both the statement and a parsed form
//! A replica of the source's engine replays the statement: nothing is lost in
//! translation (defaults, comments, index options). A replica of another
//! engine cannot, so capture also describes the change as a list of
//! [`AlterAction`]s whose column definitions are in the definition after the
//! change. Whatever capture could not model becomes
//! [`AlterAction::Unsupported`] or [`DdlKind::Unknown`]: a translating
//! replica then stops that table (quarantine) with the statement in the
//! reason, instead of guessing.
//!
//! # Schema history
//! The definition after each change is also capture's schema history: a
//! restarted capture rebuilds the newest definition of every table from the
//! log (see [`crate::capture_state`]), so an old row event is always decoded
//! with the definition it was written under, never with today's catalog.

use crate::schema::TableId;
use crate::value::Value;
use serde::{Deserialize, Serialize};

/// One table's (or database's) part of a source DDL statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaChange {
    /// The statement as the source logged it.
    pub statement: String,
    /// The session's default database when it ran: unqualified names in
    /// `statement` belong to it.
    pub default_schema: String,
    pub kind: DdlKind,
    /// Names of the table's UNIQUE keys after the change, pairwise with the
    /// definition's `unique_keys` (empty when unknown): capture's history
    /// needs them to follow a later `DROP INDEX name`.
    pub unique_key_names: Vec<String>,
}

impl SchemaChange {
    /// True when a replica that translates (rather than replays) the
    /// statement cannot: the reason, naming the clause.
    pub fn untranslatable(&self) -> Option<String> {
        match &self.kind {
            DdlKind::Unknown { reason } => Some(reason.clone()),
            DdlKind::AlterTable { actions } => actions.iter().find_map(|a| match a {
                AlterAction::Unsupported { clause } => Some(format!("clause `{clause}` is not translated")),
                AlterAction::AddColumn {
                    fill: Fill::Unknown(why),
                    name,
                } => Some(format!("column {name}: {why}")),
                _ => None,
            }),
            _ => None,
        }
    }
}

/// What kind of change, engine-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DdlKind {
    /// The table was created (the event's table is its definition).
    CreateTable {
        /// `IF NOT EXISTS`: nothing happens when the table exists.
        if_not_exists: bool,
        /// MariaDB `CREATE OR REPLACE`: an existing table is dropped first.
        or_replace: bool,
    },
    /// The table was altered; the actions in statement order.
    AlterTable { actions: Vec<AlterAction> },
    /// The table `from` is now the event's table (same columns and rows).
    RenameTable { from: TableId },
    /// The table was dropped (the event's table names it).
    DropTable,
    /// A database was created (the event's table id has the database as
    /// `schema` and an empty `name`).
    CreateDatabase,
    /// A database was dropped, with every table in it.
    DropDatabase,
    /// A statement capture could not read, or could not apply to the table's
    /// definition; the event's table is the definition as the catalog shows it
    /// (or the name only).
    Unknown { reason: String },
}

/// One clause of an `ALTER TABLE` (or the equivalent `CREATE INDEX` /
/// `DROP INDEX`). Column definitions are in the definition after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AlterAction {
    /// The table was renamed from `from` (an `ALTER TABLE … RENAME TO` with
    /// other clauses; the actions after it apply to the new name).
    RenameTable {
        from: TableId,
    },
    /// A column was added; `fill` is the value every existing row got.
    AddColumn {
        name: String,
        fill: Fill,
    },
    DropColumn {
        name: String,
    },
    RenameColumn {
        from: String,
        to: String,
    },
    /// `CHANGE` / `MODIFY`: column `from` is now column `to` with the
    /// definition the table has after the change.
    ModifyColumn {
        from: String,
        to: String,
    },
    /// The column's default changed (rows are unaffected).
    SetDefault {
        column: String,
    },
    DropDefault {
        column: String,
    },
    /// The primary key or a UNIQUE key was added or dropped: the keys are
    /// those of the definition after the change.
    Keys,
    /// A plain (non-unique) index was added.
    AddIndex {
        name: String,
        columns: Vec<String>,
    },
    /// An index was dropped (a UNIQUE one also shows as [`AlterAction::Keys`]).
    DropIndex {
        name: String,
    },
    RenameIndex {
        from: String,
        to: String,
    },
    /// A foreign key was added or dropped (replicas carry no enforced
    /// foreign keys; the definition after the change lists them).
    ForeignKeys,
    /// Table options, algorithm/lock clauses, comments, CHECK constraints,
    /// full-text/spatial indexes: nothing a replica's rows depend on.
    Options {
        clause: String,
    },
    /// A clause dbmux cannot reproduce on a replica of another engine
    /// (partitioning, a column filled by an expression, …).
    Unsupported {
        clause: String,
    },
}

/// The value existing rows took when a column was added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Fill {
    Value(Value),
    /// Not known to dbmux (an expression, AUTO_INCREMENT numbering, …): why.
    Unknown(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untranslatable_names_the_clause() {
        let mut c = SchemaChange {
            statement: "ALTER TABLE t ADD PARTITION …".into(),
            default_schema: "app".into(),
            kind: DdlKind::AlterTable {
                actions: vec![
                    AlterAction::DropColumn { name: "x".into() },
                    AlterAction::Unsupported {
                        clause: "ADD PARTITION".into(),
                    },
                ],
            },
            unique_key_names: vec![],
        };
        assert!(c.untranslatable().unwrap().contains("ADD PARTITION"));
        c.kind = DdlKind::AlterTable {
            actions: vec![AlterAction::AddColumn {
                name: "u".into(),
                fill: Fill::Unknown("filled by UUID()".into()),
            }],
        };
        assert!(c.untranslatable().unwrap().contains("UUID()"));
        c.kind = DdlKind::DropTable;
        assert_eq!(c.untranslatable(), None);
    }
}
