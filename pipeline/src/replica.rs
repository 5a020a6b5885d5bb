//! What each replica's applier is doing, shared with `/status` and `/metrics`.
//!
//! # States
//! - `running`: applying (or waiting for) the log;
//! - `stopped`: a definite error that no single table explains (the replica is
//!   ahead of the log, its offsets row vanished…): this replica stops alone,
//!   loudly; capture and the other replicas keep flowing;
//! - `needs_snapshot`: the first `seq` this replica needs was truncated from the
//!   log (a replica added after truncation): it cannot start from the log and
//!   waits for a snapshot (the snapshot feature starts it from there).
//!
//! # Quarantine
//! A definite error that belongs to one table (a value the replica refuses, an
//! identifier it cannot hold, a divergence) quarantines that (replica, table):
//! its events are skipped from `first_seq` on while everything else flows. The
//! quarantine is stored in the replica itself (`dbmux_quarantine`), the log is
//! kept from `first_seq` on, and `dbmux resume-table` re-applies exactly the
//! skipped events of the table, then lifts the quarantine in the same replica
//! transaction (see `docs/operations.md`).

use crate::schema::TableId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A table one replica does not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quarantine {
    /// The source table.
    pub table: TableId,
    /// The first `seq` of the table not applied: every event of the table from
    /// here on is skipped until the quarantine is lifted.
    pub first_seq: u64,
    /// Why, as the error said it.
    pub reason: String,
}

/// A replica's state (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ReplicaState {
    Running,
    Stopped {
        reason: String,
    },
    NeedsSnapshot {
        /// The first `seq` the replica needs.
        needed_seq: u64,
        /// The oldest `seq` the log still has.
        log_first_seq: u64,
    },
}

/// One replica as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaReport {
    /// Last `seq` the replica committed (`None` before it was first opened).
    pub applied_seq: Option<u64>,
    #[serde(flatten)]
    pub state: ReplicaState,
    pub quarantined: Vec<Quarantine>,
    /// Tables waiting for the first chunk of a snapshot meant for this
    /// replica (their changes are skipped until then).
    pub snapshot_pending: Vec<TableId>,
}

impl Default for ReplicaReport {
    fn default() -> Self {
        Self {
            applied_seq: None,
            state: ReplicaState::Running,
            quarantined: Vec::new(),
            snapshot_pending: Vec::new(),
        }
    }
}

/// Every replica's report; cheap to clone, shared by the appliers, the admin
/// server and the lag computation.
#[derive(Debug, Clone, Default)]
pub struct ReplicaBoard(Arc<Mutex<BTreeMap<String, ReplicaReport>>>);

impl ReplicaBoard {
    /// A board listing `names`, each running with nothing applied yet.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        let b = ReplicaBoard::default();
        for n in names {
            b.update(n.as_ref(), |_| {});
        }
        b
    }

    /// Changes one replica's report.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut ReplicaReport)) {
        let mut m = self.0.lock().expect("replica board");
        f(m.entry(name.to_string()).or_default());
    }

    pub fn get(&self, name: &str) -> Option<ReplicaReport> {
        self.0.lock().expect("replica board").get(name).cloned()
    }

    /// All reports by replica name.
    pub fn all(&self) -> BTreeMap<String, ReplicaReport> {
        self.0.lock().expect("replica board").clone()
    }
}
