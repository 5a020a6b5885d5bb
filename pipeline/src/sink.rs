//! The apply side's contract.

use crate::event::Transaction;
use crate::replica::Quarantine;
use crate::retry::Classify;
use crate::schema::TableId;
use std::collections::HashSet;
use std::future::Future;

/// What a sink knows about itself when it opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// The last `seq` applied (0 when nothing was ever applied).
    pub applied: u64,
    /// The tables this replica has quarantined (stored in the replica).
    pub quarantined: Vec<Quarantine>,
    /// Tables waiting for the first chunk of a snapshot meant for this
    /// replica (stored in the replica): their changes are skipped until it.
    pub pending: Vec<TableId>,
}

/// An error that may belong to one source table: a value the replica refuses,
/// a table it cannot create, a divergence found in it. Such definite errors
/// quarantine that table on that replica instead of stopping the replica.
pub trait TableScoped {
    /// The source table the error belongs to, when it belongs to exactly one.
    fn table(&self) -> Option<&TableId>;
}

/// A replica that change events are applied to.
///
/// # Exactly-once contract
/// The sink stores the `seq` of the last event it applied in the target itself
/// (`dbmux_offsets`), **in the same target transaction as the data**. So:
/// - `open` returns that stored `seq` (0 when nothing was ever applied); the
///   caller feeds transactions starting right after it;
/// - `apply` makes the given whole transactions visible together with the new
///   offset, or — on any error — makes nothing visible; it never splits a source
///   transaction across target transactions;
/// - a sink may be handed transactions it already applied only after a failed
///   `apply`, never after a successful one.
///
/// # Snapshots and schema changes
/// A snapshot transaction's mark ([`crate::snapshot::SnapshotMark`]) is
/// recorded with the data: a `Begin` stores the table as pending, the first
/// chunk recreates the table, loads its rows and lifts the pending state and
/// any quarantine of it, an `End` quarantines it. A schema change is applied
/// (replayed or translated) with the offset, or — on an engine whose DDL
/// commits by itself — so that a crash between the two can only re-run it.
///
/// # Quarantine
/// Events of tables in `skip` (quarantined or excluded) are left out of the
/// data but still count for the offset. `quarantine` stores a quarantine in the
/// replica; `resume` applies the given events of quarantined tables (all at or
/// below the offset) and moves or lifts their quarantines in the same target
/// transaction, without moving the offset.
pub trait Sink: Send {
    type Error: std::error::Error + Classify + TableScoped + Send + Sync + 'static;

    /// Connects, creates `dbmux_offsets` and `dbmux_quarantine` if missing, and
    /// returns the last applied `seq` and the stored quarantines.
    fn open(&mut self) -> impl Future<Output = Result<Opened, Self::Error>> + Send;

    /// Applies whole transactions (consecutive `seq`) in order, atomically with
    /// the offset, leaving out the events of tables in `skip`.
    fn apply(
        &mut self,
        txns: &[Transaction],
        skip: &HashSet<TableId>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Stores `q` (replacing a quarantine of the same table).
    fn quarantine(&mut self, q: &Quarantine) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Starts the replica over at `from_seq` (the first event of a snapshot
    /// run that reloads every table): sets the offset to `from_seq - 1` and
    /// clears every quarantine and pending snapshot, in one target
    /// transaction. Only for a replica whose next `seq` was truncated.
    fn reset(&mut self, from_seq: u64) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Applies the events of `table` in `txns` with `seq >= from_seq`, then, in
    /// the same target transaction, sets the table's quarantine to start at
    /// `next_seq`, or lifts it when `next_seq` is `None`.
    fn resume(
        &mut self,
        table: &TableId,
        txns: &[Transaction],
        from_seq: u64,
        next_seq: Option<u64>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
