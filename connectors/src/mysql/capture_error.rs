//! The errors of MySQL capture, with their transient/definite class.
//! Its own module so that the table-map decoder (`binlog_table`) and capture
//! share it without importing each other.

use pipeline::retry::{Classify, ErrorClass};
use std::time::Duration;

/// Everything that can go wrong in MySQL capture.
#[derive(Debug, thiserror::Error)]
pub enum MysqlCaptureError {
    #[error("invalid MySQL source configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("{context}: {source}")]
    Driver {
        context: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error("MySQL preflight failed:\n  - {}", .0.join("\n  - "))]
    Preflight(Vec<String>),
    #[error("no binlog event or heartbeat from the master for {0:?}: the connection is presumed dead")]
    HeartbeatTimeout(Duration),
    #[error("the master closed the binlog stream")]
    StreamEnded,
    #[error(
        "the master cannot stream from {position}: {message} (the binlog may have been purged; \
         re-snapshot the replicas or point capture at an existing position)"
    )]
    PositionUnavailable { position: String, message: String },
    #[error("the master has no binary log (SHOW MASTER STATUS is empty): enable log_bin")]
    NoBinlog,
    #[error("{table}.{column}: unsupported column type {ty}; exclude the table or change the column type")]
    UnsupportedType {
        table: String,
        column: String,
        ty: String,
    },
    #[error("table map of {table}: {message}")]
    TableMap { table: String, message: String },
    #[error("row of {table} at {position}, column {column}: {message}")]
    Decode {
        table: String,
        column: String,
        position: String,
        message: String,
    },
    #[error("binlog event at {position}: {message}")]
    Event { position: String, message: String },
    #[error("capture is not started (call start first)")]
    NotStarted,
}

impl Classify for MysqlCaptureError {
    fn class(&self) -> ErrorClass {
        use MysqlCaptureError::*;
        match self {
            Driver { source, .. } => driver_class(source),
            HeartbeatTimeout(_) | StreamEnded => ErrorClass::Transient,
            Config(_)
            | Preflight(_)
            | PositionUnavailable { .. }
            | NoBinlog
            | UnsupportedType { .. }
            | TableMap { .. }
            | Decode { .. }
            | Event { .. }
            | NotStarted => ErrorClass::Definite,
        }
    }
}

/// Server errors that retrying cannot fix; everything else (I/O, lost connections,
/// shutdowns, kills, lock waits) is transient.
fn driver_class(e: &mysql_async::Error) -> ErrorClass {
    match e {
        mysql_async::Error::Server(s) => match s.code {
            // access denied (db, user, specific privilege, table, column, proc), unknown database,
            // syntax, unknown system variable, fatal binlog read
            1044 | 1045 | 1049 | 1064 | 1142 | 1143 | 1193 | 1227 | 1236 | 1370 => ErrorClass::Definite,
            _ => ErrorClass::Transient,
        },
        mysql_async::Error::Url(_) => ErrorClass::Definite,
        mysql_async::Error::Driver(_) | mysql_async::Error::Io(_) | mysql_async::Error::Other(_) => {
            ErrorClass::Transient
        }
    }
}

pub(super) fn driver(context: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> MysqlCaptureError {
    let context = context.into();
    move |source| MysqlCaptureError::Driver { context, source }
}
