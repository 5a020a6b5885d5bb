//! The capture side's contract.

use crate::capture_state::HistoryEntry;
use crate::event::Op;
use crate::position::Position;
use crate::retry::Classify;
use crate::schema::{TableId, TableSchema};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// One committed source transaction as capture read it, before sequencing.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedTransaction {
    /// GTID / XID / LSN text.
    pub id: String,
    pub commit_ts_us: i64,
    /// Where to resume to read what follows this transaction.
    pub position: Position,
    /// Row changes of the configured tables, in source order (never empty).
    pub changes: Vec<(Arc<TableSchema>, Op)>,
}

/// The newest source position the log holds durably, published by the
/// runtime after every log append (`None` before the first one).
pub type DurablePosition = tokio::sync::watch::Receiver<Option<Position>>;

/// A source of committed transactions (binlog, WAL).
///
/// Contract: `next_transaction` returns only *committed* transactions, whole,
/// in commit order, each at most once per `start`. Transactions touching no
/// configured table are skipped. After `start(Some(p))`, the first transaction
/// returned is the first one that committed after `p`.
pub trait Source: Send {
    type Error: std::error::Error + Classify + Send + Sync + 'static;

    /// Checks server settings and permissions; each failure names the setting,
    /// the expected and the actual value. Errors here are definite.
    fn preflight(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The source's current end: where a capture that starts now begins. The
    /// runtime stores it before the first start, so a crash before the first
    /// transaction reaches the log cannot skip what committed meanwhile.
    fn current_position(&mut self) -> impl Future<Output = Result<Position, Self::Error>> + Send;

    /// Begins streaming after `resume`, or from the source's current end when `None`.
    fn start(&mut self, resume: Option<Position>) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The next committed transaction. Waits while there is none.
    ///
    /// Must be cancel-safe: capture drops a pending call to look at its
    /// snapshot holds, and calls it again; nothing read may be lost.
    fn next_transaction(&mut self) -> impl Future<Output = Result<CapturedTransaction, Self::Error>> + Send;

    /// The position up to which the source has read the stream completely:
    /// the boundary after the last transaction it read (handed out or not —
    /// transactions of tables not captured move it too). Snapshot chunks are
    /// placed by it when the source is idle; `None` when unknown.
    fn read_position(&self) -> Option<Position> {
        None
    }

    /// A snapshot chunk waits for [`Source::read_position`] to reach
    /// `position` (capture calls this again while it waits). A source that
    /// learns its read position from its server (a PostgreSQL walsender's
    /// keepalives) asks the server for it promptly; others ignore it.
    fn want_read_past(&mut self, position: &Position) {
        let _ = position;
    }

    /// Gives the source the newest definition of every table as of the
    /// position it resumes from (before `start`): old row events are decoded
    /// with the definition they were written under.
    fn restore_history(&mut self, history: BTreeMap<TableId, HistoryEntry>) {
        let _ = history;
    }

    /// Tables that entered the captured set while streaming (a rename from a
    /// table not captured): their existing rows need a snapshot. Taken after
    /// each transaction.
    fn take_entered_tables(&mut self) -> Vec<TableId> {
        Vec::new()
    }

    /// Called once, before `start`, with a view of what the log holds
    /// durably. A source that acknowledges progress to its server (a
    /// PostgreSQL slot's confirmed flush LSN) acknowledges from this and never
    /// beyond it, so a crash makes the server resend, never skip. Sources
    /// whose server keeps no such state (a binlog) ignore it.
    fn watch_durable(&mut self, durable: DurablePosition) {
        let _ = durable;
    }

    /// The start position stored on a first start is abandoned, before
    /// `current_position` is asked for a new one: the first start's initial
    /// snapshot was cut short before any streamed transaction reached the
    /// log, and the source can no longer show its rows as of that position
    /// (a PostgreSQL slot's exported snapshot dies with the connection that
    /// created the slot). The source forgets what it set up for that
    /// position (a PostgreSQL source drops its slot) so that
    /// `current_position` sets up anew. Only called while the log holds no
    /// streamed transaction. Sources without such state do nothing.
    fn discard_start(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
}
