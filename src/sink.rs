//! The one place that turns a `[replica.*]` section into a running [`Sink`].
//!
//! `AnySink` dispatches to the engine's own applier with an enum (no boxed
//! trait objects), so the runtime sees one concrete type whatever the kind.

use crate::config::{ReplicaConfig, ReplicaKind};
use connectors::mysql::apply::{MysqlApplyError, MysqlSink};
use connectors::postgres::apply::{PostgresApplyError, PostgresSink};
#[cfg(feature = "sqlserver")]
use connectors::sqlserver::{SqlServerEngine, SqlServerSink};
use pipeline::event::Transaction;
use pipeline::replica::Quarantine;
use pipeline::retry::{Classify, ErrorClass};
use pipeline::schema::TableId;
use pipeline::sink::{Opened, Sink, TableScoped};
use std::collections::HashSet;

/// A configured replica of any kind.
pub enum AnySink {
    Mysql(MysqlSink),
    Postgres(PostgresSink),
    #[cfg(feature = "sqlserver")]
    SqlServer(SqlServerSink),
}

/// The error of whichever replica runs.
#[derive(Debug, thiserror::Error)]
pub enum AnySinkError {
    #[error(transparent)]
    Mysql(#[from] MysqlApplyError),
    #[error(transparent)]
    Postgres(#[from] PostgresApplyError),
    #[cfg(feature = "sqlserver")]
    #[error(transparent)]
    SqlServer(#[from] pipeline::apply::ApplyError<SqlServerEngine>),
}

impl Classify for AnySinkError {
    fn class(&self) -> ErrorClass {
        match self {
            AnySinkError::Mysql(e) => e.class(),
            AnySinkError::Postgres(e) => e.class(),
            #[cfg(feature = "sqlserver")]
            AnySinkError::SqlServer(e) => e.class(),
        }
    }
}

impl TableScoped for AnySinkError {
    fn table(&self) -> Option<&TableId> {
        match self {
            AnySinkError::Mysql(e) => e.table(),
            AnySinkError::Postgres(e) => e.table(),
            #[cfg(feature = "sqlserver")]
            AnySinkError::SqlServer(e) => e.table(),
        }
    }
}

/// The replica's row in `dbmux_offsets`: unique per pipeline and replica.
pub fn consumer(pipeline: &str, replica: &ReplicaConfig) -> String {
    format!("{pipeline}/{}", replica.name)
}

/// Builds the applier a replica section describes (connects only on use).
pub fn build(pipeline: &str, replica: &ReplicaConfig) -> AnySink {
    let consumer = consumer(pipeline, replica);
    match &replica.kind {
        ReplicaKind::Mysql(m) => AnySink::Mysql(MysqlSink::new(&consumer, m.clone())),
        ReplicaKind::Postgres(p) => AnySink::Postgres(PostgresSink::new(&consumer, p.clone())),
        #[cfg(feature = "sqlserver")]
        ReplicaKind::SqlServer(s) => AnySink::SqlServer(SqlServerEngine::sink(&consumer, s.clone())),
    }
}

impl Sink for AnySink {
    type Error = AnySinkError;

    async fn open(&mut self) -> Result<Opened, AnySinkError> {
        match self {
            AnySink::Mysql(s) => Ok(s.open().await?),
            AnySink::Postgres(s) => Ok(s.open().await?),
            #[cfg(feature = "sqlserver")]
            AnySink::SqlServer(s) => Ok(s.open().await?),
        }
    }

    async fn apply(&mut self, txns: &[Transaction], skip: &HashSet<TableId>) -> Result<(), AnySinkError> {
        match self {
            AnySink::Mysql(s) => Ok(s.apply(txns, skip).await?),
            AnySink::Postgres(s) => Ok(s.apply(txns, skip).await?),
            #[cfg(feature = "sqlserver")]
            AnySink::SqlServer(s) => Ok(s.apply(txns, skip).await?),
        }
    }

    async fn quarantine(&mut self, q: &Quarantine) -> Result<(), AnySinkError> {
        match self {
            AnySink::Mysql(s) => Ok(s.quarantine(q).await?),
            AnySink::Postgres(s) => Ok(s.quarantine(q).await?),
            #[cfg(feature = "sqlserver")]
            AnySink::SqlServer(s) => Ok(s.quarantine(q).await?),
        }
    }

    async fn reset(&mut self, from_seq: u64) -> Result<(), AnySinkError> {
        match self {
            AnySink::Mysql(s) => Ok(s.reset(from_seq).await?),
            AnySink::Postgres(s) => Ok(s.reset(from_seq).await?),
            #[cfg(feature = "sqlserver")]
            AnySink::SqlServer(s) => Ok(s.reset(from_seq).await?),
        }
    }

    async fn resume(
        &mut self,
        table: &TableId,
        txns: &[Transaction],
        from_seq: u64,
        next_seq: Option<u64>,
    ) -> Result<(), AnySinkError> {
        match self {
            AnySink::Mysql(s) => Ok(s.resume(table, txns, from_seq, next_seq).await?),
            AnySink::Postgres(s) => Ok(s.resume(table, txns, from_seq, next_seq).await?),
            #[cfg(feature = "sqlserver")]
            AnySink::SqlServer(s) => Ok(s.resume(table, txns, from_seq, next_seq).await?),
        }
    }
}
