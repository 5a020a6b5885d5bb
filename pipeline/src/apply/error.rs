//! Why applying to a replica failed: one error type for every engine.

use super::engine::Engine;
use crate::batch::PlanError;
use crate::retry::{Classify, ErrorClass};
use crate::schema::TableId;
use crate::sink::TableScoped;
use std::fmt;

/// Why applying to a replica of engine `G` failed.
///
/// Only [`ApplyError::Driver`] can be transient (as the engine classifies
/// the server's error); everything else is definite.
pub enum ApplyError<G: Engine> {
    Driver {
        engine: &'static str,
        context: String,
        /// The server's message as the engine describes it.
        detail: String,
        source: G::Error,
    },
    Plan(PlanError),
    Value {
        table: String,
        column: String,
        message: String,
    },
    Table {
        table: String,
        message: String,
    },
    Diverged {
        table: String,
        op: &'static str,
        seq: u64,
    },
    OffsetRowMissing {
        table: String,
        consumer: String,
    },
    Gap {
        applied: u64,
        next: u64,
        missing: u64,
    },
    Internal(String),
    /// A schema change the replica did not take.
    Ddl {
        table: String,
        statement: String,
        message: String,
    },
    TargetTaken {
        table: TableId,
        target: String,
        other: TableId,
    },
    /// A definite error while applying one source table's events.
    InTable {
        table: TableId,
        source: Box<ApplyError<G>>,
    },
}

impl<G: Engine> fmt::Display for ApplyError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Driver {
                engine,
                context,
                detail,
                ..
            } => write!(f, "{engine} replica, {context}: {detail}"),
            ApplyError::Plan(p) => p.fmt(f),
            ApplyError::Value {
                table,
                column,
                message,
            } => write!(f, "{table}.{column}: {message}"),
            ApplyError::Table { table, message } => write!(f, "cannot create or use {table}: {message}"),
            ApplyError::Diverged { table, op, seq } => write!(
                f,
                "replica diverged: {table} (no primary key) has no row equal to the before image of the {op} \
                 of event seq {seq}; compare the table with the source and re-seed it"
            ),
            ApplyError::OffsetRowMissing { table, consumer } => write!(
                f,
                "{table} has no row for consumer {consumer:?}; it was deleted while dbmux ran"
            ),
            ApplyError::Gap {
                applied,
                next,
                missing,
            } => write!(
                f,
                "events would skip seq {missing}: the replica has applied up to {applied} and the next event \
                 given is {next}"
            ),
            ApplyError::Internal(m) => f.write_str(m),
            ApplyError::Ddl {
                table,
                statement,
                message,
            } => write!(
                f,
                "cannot apply the schema change `{statement}` to {table} on the {G} replica: {message}",
                G = G::NAME
            ),
            ApplyError::TargetTaken { table, target, other } => write!(
                f,
                "replica table {target} already receives source table {other}; {table} cannot be written there too"
            ),
            ApplyError::InTable { source, .. } => source.fmt(f),
        }
    }
}

impl<G: Engine> std::error::Error for ApplyError<G> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApplyError::Driver { source, .. } => Some(source),
            ApplyError::Plan(p) => Some(p),
            ApplyError::InTable { source, .. } => source.source(),
            _ => None,
        }
    }
}

impl<G: Engine> From<PlanError> for ApplyError<G> {
    fn from(e: PlanError) -> Self {
        ApplyError::Plan(e)
    }
}

impl<G: Engine> fmt::Debug for ApplyError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The Display text says everything (the driver error's own Debug is
        // not more useful, and G need not be Debug).
        write!(f, "ApplyError({self})")
    }
}

impl<G: Engine> ApplyError<G> {
    /// The error of a driver call, with what was being done.
    pub fn driver(context: impl Into<String>) -> impl FnOnce(G::Error) -> Self {
        let context = context.into();
        move |source| ApplyError::Driver {
            engine: G::NAME,
            context,
            detail: G::describe_error(&source),
            source,
        }
    }

    /// Ties a definite error to the source table whose step failed
    /// (transient errors belong to the connection, not to a table).
    pub fn in_table(self, table: &TableId) -> Self {
        match self {
            e @ ApplyError::InTable { .. } => e,
            e if e.is_transient() => e,
            e => ApplyError::InTable {
                table: table.clone(),
                source: Box::new(e),
            },
        }
    }

    /// A constraint the set-based plan may have broken and source order may
    /// not (see [`Engine::may_pass_in_source_order`]).
    pub fn may_pass_in_source_order(&self) -> bool {
        match self {
            ApplyError::InTable { source, .. } => source.may_pass_in_source_order(),
            ApplyError::Driver { source, .. } => G::may_pass_in_source_order(source),
            _ => false,
        }
    }

    /// The driver error, when this is one (through `InTable`).
    pub fn driver_error(&self) -> Option<&G::Error> {
        match self {
            ApplyError::InTable { source, .. } => source.driver_error(),
            ApplyError::Driver { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl<G: Engine> Classify for ApplyError<G> {
    fn class(&self) -> ErrorClass {
        match self {
            ApplyError::Driver { source, .. } => G::classify(source),
            ApplyError::InTable { source, .. } => source.class(),
            _ => ErrorClass::Definite,
        }
    }
}

impl<G: Engine> TableScoped for ApplyError<G> {
    fn table(&self) -> Option<&TableId> {
        match self {
            ApplyError::InTable { table, .. } | ApplyError::TargetTaken { table, .. } => Some(table),
            ApplyError::Plan(p) => p.table(),
            _ => None,
        }
    }
}
