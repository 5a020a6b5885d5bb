//! The one place that turns a `[source.*]` section into a running [`Source`].
//!
//! `AnySource` dispatches to the engine's own source with an enum (no boxed
//! trait objects), so the runtime sees one concrete type whatever the kind.

use crate::config::SourceConfig;
use connectors::mysql::capture::{MysqlCaptureError, MysqlSource};
use connectors::postgres::capture::{PostgresCaptureError, PostgresSource};
use pipeline::capture_state::HistoryEntry;
use pipeline::retry::{Classify, ErrorClass};
use pipeline::schema::TableId;
use pipeline::source::{CapturedTransaction, DurablePosition, Source};
use pipeline::Position;
use std::collections::BTreeMap;

/// A configured source of any kind.
#[derive(Debug)]
pub enum AnySource {
    Mysql(MysqlSource),
    Postgres(PostgresSource),
}

/// The snapshot coordinator's view of whichever source runs.
pub enum AnySnapshots {
    Mysql(pipeline::snapshot::Snapshots<connectors::mysql::snapshot::MysqlSnapshots>),
    Postgres(pipeline::snapshot::Snapshots<connectors::postgres::snapshot::PostgresSnapshots>),
}

/// The error of whichever source runs.
#[derive(Debug, thiserror::Error)]
pub enum AnySourceError {
    #[error(transparent)]
    Mysql(#[from] MysqlCaptureError),
    #[error(transparent)]
    Postgres(#[from] PostgresCaptureError),
}

impl Classify for AnySourceError {
    fn class(&self) -> ErrorClass {
        match self {
            AnySourceError::Mysql(e) => e.class(),
            AnySourceError::Postgres(e) => e.class(),
        }
    }
}

/// Builds the source a configuration describes (checks it; connects only on use).
pub fn build(config: &SourceConfig) -> Result<AnySource, AnySourceError> {
    Ok(match config {
        SourceConfig::Mysql(m) => AnySource::Mysql(MysqlSource::new(m.clone())?),
        SourceConfig::Postgres(p) => AnySource::Postgres(PostgresSource::new(p.clone())?),
    })
}

impl Source for AnySource {
    type Error = AnySourceError;

    async fn preflight(&mut self) -> Result<(), AnySourceError> {
        match self {
            AnySource::Mysql(s) => Ok(s.preflight().await?),
            AnySource::Postgres(s) => Ok(s.preflight().await?),
        }
    }

    async fn current_position(&mut self) -> Result<Position, AnySourceError> {
        match self {
            AnySource::Mysql(s) => Ok(s.current_position().await?),
            AnySource::Postgres(s) => Ok(s.current_position().await?),
        }
    }

    async fn start(&mut self, resume: Option<Position>) -> Result<(), AnySourceError> {
        match self {
            AnySource::Mysql(s) => Ok(s.start(resume).await?),
            AnySource::Postgres(s) => Ok(s.start(resume).await?),
        }
    }

    async fn next_transaction(&mut self) -> Result<CapturedTransaction, AnySourceError> {
        match self {
            AnySource::Mysql(s) => Ok(s.next_transaction().await?),
            AnySource::Postgres(s) => Ok(s.next_transaction().await?),
        }
    }

    fn watch_durable(&mut self, durable: DurablePosition) {
        match self {
            AnySource::Mysql(s) => s.watch_durable(durable),
            AnySource::Postgres(s) => s.watch_durable(durable),
        }
    }

    // The snapshot and schema-history hooks (see `pipeline::source`): every
    // one must reach the engine's source, or snapshots would place chunks
    // blind and restarts would decode old events with today's schema.
    fn read_position(&self) -> Option<Position> {
        match self {
            AnySource::Mysql(s) => s.read_position(),
            AnySource::Postgres(s) => s.read_position(),
        }
    }

    fn restore_history(&mut self, history: BTreeMap<TableId, HistoryEntry>) {
        match self {
            AnySource::Mysql(s) => s.restore_history(history),
            AnySource::Postgres(s) => s.restore_history(history),
        }
    }

    fn take_entered_tables(&mut self) -> Vec<TableId> {
        match self {
            AnySource::Mysql(s) => s.take_entered_tables(),
            AnySource::Postgres(s) => s.take_entered_tables(),
        }
    }

    async fn discard_start(&mut self) -> Result<(), AnySourceError> {
        match self {
            AnySource::Mysql(s) => Ok(s.discard_start().await?),
            AnySource::Postgres(s) => Ok(s.discard_start().await?),
        }
    }
}
