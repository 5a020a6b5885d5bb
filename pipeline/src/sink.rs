//! The apply side's contract.

use crate::event::Transaction;
use crate::retry::Classify;
use std::future::Future;

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
pub trait Sink: Send {
    type Error: std::error::Error + Classify + Send + Sync + 'static;

    /// Connects, creates `dbmux_offsets` if missing, and returns the last applied `seq`.
    fn open(&mut self) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Applies whole transactions (consecutive `seq`) in order, atomically with the offset.
    fn apply(&mut self, txns: &[Transaction]) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
