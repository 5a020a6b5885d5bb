//! Metric names (the spec) and the pipeline's metric handles.
//!
//! Every metric dbmux exports lives in one `prometheus_client` registry (this
//! crate's [`PipelineMetrics`], the proxy's `connectors::proxy::metrics`, and
//! whatever is added later: cache, Kafka). Names, labels and units are
//! constants here and documented in `docs/operations.md`, the spec; Grafana
//! dashboards and alert rules use exactly these names (a test scrapes
//! `/metrics` and checks every name they use exists).
//!
//! Rules that keep the registry cheap and the names stable:
//! - record per batch, not per row;
//! - labels come from small closed sets ([`COMPONENTS`], [`ERROR_CLASSES`]) or
//!   from configuration (replica and backend names), never from data (SQL
//!   text, table names, client addresses);
//! - series of known label values are created at start, so a query over them
//!   returns zeros instead of nothing before the first event;
//! - the unit is the last word of the name (`_seconds`, `_bytes`); counters are
//!   registered without `_total`, which the encoder appends on the wire.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Gauge, always 1, label `version`: which dbmux is running.
pub const BUILD_INFO: &str = "dbmux_build_info";

/// Counter: committed source transactions captured into the log.
pub const CAPTURE_TRANSACTIONS: &str = "dbmux_capture_transactions";
/// Counter: row change events captured into the log.
pub const CAPTURE_EVENTS: &str = "dbmux_capture_events";
/// Gauge: 1 while capture is connected and streaming from the source, else 0.
pub const CAPTURE_CONNECTED: &str = "dbmux_capture_connected";
/// Gauge (Unix seconds): source commit time of the newest captured transaction.
pub const CAPTURE_LAST_COMMIT_TIMESTAMP: &str = "dbmux_capture_last_commit_timestamp_seconds";
/// Gauge: numeric suffix of the binlog file capture has reached (`mysql-bin.000042` → 42).
pub const CAPTURE_POSITION_FILE: &str = "dbmux_capture_position_file";
/// Gauge (bytes): offset in that binlog file.
pub const CAPTURE_POSITION_OFFSET: &str = "dbmux_capture_position_offset_bytes";
/// Gauge (bytes): binlog the master has written beyond capture's position.
pub const CAPTURE_BINLOG_BYTES_BEHIND: &str = "dbmux_capture_binlog_bytes_behind";

/// Gauge: last `seq` written to the log.
pub const LOG_LAST_SEQ: &str = "dbmux_log_last_seq";
/// Gauge: oldest `seq` still in the log (moves up when the log is truncated).
pub const LOG_FIRST_SEQ: &str = "dbmux_log_first_seq";
/// Gauge (bytes): disk space the log uses.
pub const LOG_DISK_BYTES: &str = "dbmux_log_disk_bytes";
/// Counter (bytes): bytes appended to the log.
pub const LOG_APPENDED_BYTES: &str = "dbmux_log_appended_bytes";
/// Histogram (seconds): one group append, incl. fsync.
pub const LOG_APPEND_SECONDS: &str = "dbmux_log_append_seconds";

/// Gauge, label `replica`: last `seq` the replica committed.
pub const APPLY_LAST_SEQ: &str = "dbmux_apply_last_seq";
/// Gauge, label `replica`: log events not yet applied (`log last seq - applied
/// seq`), computed when scraped, so it grows while a replica is down.
pub const APPLY_LAG_EVENTS: &str = "dbmux_apply_lag_events";
/// Gauge (seconds), label `replica`: age of the oldest transaction the replica
/// has not applied (now − its source commit time), computed when scraped; 0
/// when caught up.
pub const APPLY_LAG_SECONDS: &str = "dbmux_apply_lag_seconds";
/// Counter, label `replica`: target transactions (batches) committed.
pub const APPLY_BATCHES: &str = "dbmux_apply_batches";
/// Counter, label `replica`: row events applied.
pub const APPLY_EVENTS: &str = "dbmux_apply_events";
/// Histogram (seconds), label `replica`: time to apply and commit one batch.
pub const APPLY_BATCH_SECONDS: &str = "dbmux_apply_batch_seconds";
/// Histogram (events), label `replica`: row events per applied batch.
pub const APPLY_BATCH_EVENTS: &str = "dbmux_apply_batch_events";
/// Gauge, label `replica`: 1 while the replica is stopped for good or needs a snapshot.
pub const APPLY_STOPPED: &str = "dbmux_apply_stopped";
/// Gauge, label `replica`: 1 while the replica cannot start from the log and needs a snapshot.
pub const APPLY_NEEDS_SNAPSHOT: &str = "dbmux_apply_needs_snapshot";
/// Gauge, label `replica`: tables quarantined on the replica.
pub const APPLY_QUARANTINED_TABLES: &str = "dbmux_apply_quarantined_tables";
/// Counter, label `replica`: tables put into quarantine.
pub const APPLY_QUARANTINES: &str = "dbmux_apply_quarantines";

/// Counter, label `replica`: schema changes (DDL) applied.
pub const APPLY_DDL: &str = "dbmux_apply_ddl";
/// Counter, label `replica`: schema changes the replica could not apply
/// (the table is quarantined, the statement named in the reason).
pub const APPLY_DDL_FAILURES: &str = "dbmux_apply_ddl_failures";

/// Counter: snapshot rows placed in the log.
pub const SNAPSHOT_ROWS: &str = "dbmux_snapshot_rows";
/// Counter: snapshot chunks placed in the log.
pub const SNAPSHOT_CHUNKS: &str = "dbmux_snapshot_chunks";
/// Gauge, label `state` ([`SNAPSHOT_STATES`]): tables of unfinished snapshots.
pub const SNAPSHOT_TABLES: &str = "dbmux_snapshot_tables";
/// Gauge: rows the source estimates the tables of unfinished snapshots hold.
pub const SNAPSHOT_ROWS_ESTIMATED: &str = "dbmux_snapshot_rows_estimated";
/// Histogram (seconds): time capture held the stream for one chunk read.
pub const SNAPSHOT_HOLD_SECONDS: &str = "dbmux_snapshot_hold_seconds";

/// Values of the `state` label of [`SNAPSHOT_TABLES`].
pub const SNAPSHOT_STATES: [&str; 2] = ["waiting", "copying"];

/// Counter, labels `component` ([`COMPONENTS`]) and `class` ([`ERROR_CLASSES`]).
pub const ERRORS: &str = "dbmux_errors";

/// Values of the `component` label of [`ERRORS`].
pub const COMPONENTS: [&str; 3] = ["capture", "apply", "snapshot"];
/// Values of the `class` label of [`ERRORS`] (see `retry::ErrorClass`).
pub const ERROR_CLASSES: [&str; 2] = ["transient", "definite"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    pub replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub component: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Handles for every pipeline metric; cheap to clone (all `Arc` inside).
#[derive(Clone)]
pub struct PipelineMetrics {
    pub capture_transactions: Counter,
    pub capture_events: Counter,
    pub capture_connected: Gauge,
    pub capture_last_commit_timestamp: Gauge<f64, AtomicU64>,
    pub capture_position_file: Gauge,
    pub capture_position_offset: Gauge,
    pub capture_binlog_bytes_behind: Gauge,
    pub log_last_seq: Gauge<u64, AtomicU64>,
    pub log_first_seq: Gauge<u64, AtomicU64>,
    pub log_disk_bytes: Gauge<u64, AtomicU64>,
    pub log_appended_bytes: Counter,
    pub log_append_seconds: Histogram,
    pub apply_last_seq: Family<ReplicaLabel, Gauge<u64, AtomicU64>>,
    pub apply_lag_events: Family<ReplicaLabel, Gauge<u64, AtomicU64>>,
    pub apply_lag_seconds: Family<ReplicaLabel, Gauge<f64, AtomicU64>>,
    pub apply_batches: Family<ReplicaLabel, Counter>,
    pub apply_events: Family<ReplicaLabel, Counter>,
    pub apply_batch_seconds: Family<ReplicaLabel, Histogram>,
    pub apply_batch_events: Family<ReplicaLabel, Histogram>,
    pub apply_stopped: Family<ReplicaLabel, Gauge<u64, AtomicU64>>,
    pub apply_needs_snapshot: Family<ReplicaLabel, Gauge<u64, AtomicU64>>,
    pub apply_quarantined_tables: Family<ReplicaLabel, Gauge<u64, AtomicU64>>,
    pub apply_quarantines: Family<ReplicaLabel, Counter>,
    pub apply_ddl: Family<ReplicaLabel, Counter>,
    pub apply_ddl_failures: Family<ReplicaLabel, Counter>,
    pub snapshot_rows: Counter,
    pub snapshot_chunks: Counter,
    pub snapshot_tables: Family<StateLabel, Gauge<u64, AtomicU64>>,
    pub snapshot_rows_estimated: Gauge<u64, AtomicU64>,
    pub snapshot_hold_seconds: Histogram,
    pub errors: Family<ErrorLabels, Counter>,
}

/// 0.5 ms … 16 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// 1 … 32768 events.
fn events_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

impl PipelineMetrics {
    /// Creates the handles and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = PipelineMetrics {
            capture_transactions: Counter::default(),
            capture_events: Counter::default(),
            capture_connected: Gauge::default(),
            capture_last_commit_timestamp: Gauge::default(),
            capture_position_file: Gauge::default(),
            capture_position_offset: Gauge::default(),
            capture_binlog_bytes_behind: Gauge::default(),
            log_last_seq: Gauge::default(),
            log_first_seq: Gauge::default(),
            log_disk_bytes: Gauge::default(),
            log_appended_bytes: Counter::default(),
            log_append_seconds: seconds_histogram(),
            apply_last_seq: Family::default(),
            apply_lag_events: Family::default(),
            apply_lag_seconds: Family::default(),
            apply_batches: Family::default(),
            apply_events: Family::default(),
            apply_batch_seconds: Family::new_with_constructor(seconds_histogram),
            apply_batch_events: Family::new_with_constructor(events_histogram),
            apply_stopped: Family::default(),
            apply_needs_snapshot: Family::default(),
            apply_quarantined_tables: Family::default(),
            apply_quarantines: Family::default(),
            apply_ddl: Family::default(),
            apply_ddl_failures: Family::default(),
            snapshot_rows: Counter::default(),
            snapshot_chunks: Counter::default(),
            snapshot_tables: Family::default(),
            snapshot_rows_estimated: Gauge::default(),
            snapshot_hold_seconds: seconds_histogram(),
            errors: Family::default(),
        };
        let r = registry;
        r.register(
            CAPTURE_TRANSACTIONS,
            "Committed source transactions captured",
            m.capture_transactions.clone(),
        );
        r.register(
            CAPTURE_EVENTS,
            "Row change events captured",
            m.capture_events.clone(),
        );
        r.register(
            CAPTURE_CONNECTED,
            "1 while capture streams from the source",
            m.capture_connected.clone(),
        );
        r.register(
            CAPTURE_LAST_COMMIT_TIMESTAMP,
            "Source commit time of the newest captured transaction (Unix seconds)",
            m.capture_last_commit_timestamp.clone(),
        );
        r.register(
            CAPTURE_POSITION_FILE,
            "Numeric suffix of the binlog file capture has reached",
            m.capture_position_file.clone(),
        );
        r.register(
            CAPTURE_POSITION_OFFSET,
            "Byte offset capture has reached in its binlog file",
            m.capture_position_offset.clone(),
        );
        r.register(
            CAPTURE_BINLOG_BYTES_BEHIND,
            "Binlog bytes the master wrote beyond capture's position",
            m.capture_binlog_bytes_behind.clone(),
        );
        r.register(
            LOG_LAST_SEQ,
            "Last seq written to the log",
            m.log_last_seq.clone(),
        );
        r.register(
            LOG_FIRST_SEQ,
            "Oldest seq still in the log",
            m.log_first_seq.clone(),
        );
        r.register(
            LOG_DISK_BYTES,
            "Disk space used by the log",
            m.log_disk_bytes.clone(),
        );
        r.register(
            LOG_APPENDED_BYTES,
            "Bytes appended to the log",
            m.log_appended_bytes.clone(),
        );
        r.register(
            LOG_APPEND_SECONDS,
            "Seconds per log append incl. fsync",
            m.log_append_seconds.clone(),
        );
        r.register(
            APPLY_LAST_SEQ,
            "Last seq committed by a replica",
            m.apply_last_seq.clone(),
        );
        r.register(
            APPLY_LAG_EVENTS,
            "Events in the log not yet applied by a replica",
            m.apply_lag_events.clone(),
        );
        r.register(
            APPLY_LAG_SECONDS,
            "Age of the oldest transaction the replica has not applied",
            m.apply_lag_seconds.clone(),
        );
        r.register(
            APPLY_BATCHES,
            "Target transactions committed",
            m.apply_batches.clone(),
        );
        r.register(APPLY_EVENTS, "Row events applied", m.apply_events.clone());
        r.register(
            APPLY_BATCH_SECONDS,
            "Seconds per applied batch",
            m.apply_batch_seconds.clone(),
        );
        r.register(
            APPLY_BATCH_EVENTS,
            "Row events per applied batch",
            m.apply_batch_events.clone(),
        );
        r.register(
            APPLY_STOPPED,
            "1 while a replica is stopped for good or needs a snapshot",
            m.apply_stopped.clone(),
        );
        r.register(
            APPLY_NEEDS_SNAPSHOT,
            "1 while a replica needs a snapshot to start",
            m.apply_needs_snapshot.clone(),
        );
        r.register(
            APPLY_QUARANTINED_TABLES,
            "Tables quarantined on a replica",
            m.apply_quarantined_tables.clone(),
        );
        r.register(
            APPLY_QUARANTINES,
            "Tables put into quarantine",
            m.apply_quarantines.clone(),
        );
        r.register(
            APPLY_DDL,
            "Schema changes applied to a replica",
            m.apply_ddl.clone(),
        );
        r.register(
            APPLY_DDL_FAILURES,
            "Schema changes a replica could not apply (the table is quarantined)",
            m.apply_ddl_failures.clone(),
        );
        r.register(
            SNAPSHOT_ROWS,
            "Snapshot rows placed in the log",
            m.snapshot_rows.clone(),
        );
        r.register(
            SNAPSHOT_CHUNKS,
            "Snapshot chunks placed in the log",
            m.snapshot_chunks.clone(),
        );
        r.register(
            SNAPSHOT_TABLES,
            "Tables of unfinished snapshots, by state",
            m.snapshot_tables.clone(),
        );
        r.register(
            SNAPSHOT_ROWS_ESTIMATED,
            "Rows the source estimates the tables of unfinished snapshots hold",
            m.snapshot_rows_estimated.clone(),
        );
        r.register(
            SNAPSHOT_HOLD_SECONDS,
            "Seconds capture held the stream for one snapshot chunk",
            m.snapshot_hold_seconds.clone(),
        );
        for state in SNAPSHOT_STATES {
            let _ = m
                .snapshot_tables
                .get_or_create(&StateLabel { state: state.into() });
        }
        r.register(ERRORS, "Errors by component and class", m.errors.clone());
        for component in COMPONENTS {
            for class in ERROR_CLASSES {
                let _ = m.errors.get_or_create(&ErrorLabels {
                    component: component.into(),
                    class: class.into(),
                });
            }
        }
        m
    }

    /// Handles registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }

    /// Creates the series of one configured replica, so dashboards show it
    /// (at zero) before its first batch.
    pub fn init_replica(&self, replica: &str) {
        let label = ReplicaLabel {
            replica: replica.into(),
        };
        let _ = self.apply_last_seq.get_or_create(&label);
        let _ = self.apply_lag_events.get_or_create(&label);
        let _ = self.apply_lag_seconds.get_or_create(&label);
        let _ = self.apply_batches.get_or_create(&label);
        let _ = self.apply_events.get_or_create(&label);
        let _ = self.apply_batch_seconds.get_or_create(&label);
        let _ = self.apply_batch_events.get_or_create(&label);
        let _ = self.apply_stopped.get_or_create(&label);
        let _ = self.apply_needs_snapshot.get_or_create(&label);
        let _ = self.apply_quarantined_tables.get_or_create(&label);
        let _ = self.apply_quarantines.get_or_create(&label);
        let _ = self.apply_ddl.get_or_create(&label);
        let _ = self.apply_ddl_failures.get_or_create(&label);
    }

    pub fn error(&self, component: &str, class: crate::retry::ErrorClass) {
        let class = match class {
            crate::retry::ErrorClass::Transient => "transient",
            crate::retry::ErrorClass::Definite => "definite",
        };
        self.errors
            .get_or_create(&ErrorLabels {
                component: component.into(),
                class: class.into(),
            })
            .inc();
    }

    /// The error counter of one component and class (0 if never counted).
    pub fn errors_of(&self, component: &str, class: &str) -> u64 {
        self.errors
            .get(&ErrorLabels {
                component: component.into(),
                class: class.into(),
            })
            .map_or(0, |c| c.get())
    }
}

/// Registers [`BUILD_INFO`] with the running binary's version.
pub fn register_build_info(registry: &mut Registry, version: &str) {
    let info: Family<BuildLabels, Gauge> = Family::default();
    info.get_or_create(&BuildLabels {
        version: version.into(),
    })
    .set(1);
    registry.register(BUILD_INFO, "Which dbmux is running (always 1)", info);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_registered_once_with_its_spec_name() {
        let mut registry = Registry::default();
        let m = PipelineMetrics::new(&mut registry);
        register_build_info(&mut registry, "9.9.9");
        m.init_replica("r1");
        m.capture_events.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let mut unique = families.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), families.len(), "a family twice:\n{text}");
        for name in [
            BUILD_INFO,
            CAPTURE_TRANSACTIONS,
            CAPTURE_EVENTS,
            CAPTURE_CONNECTED,
            CAPTURE_BINLOG_BYTES_BEHIND,
            LOG_FIRST_SEQ,
            LOG_DISK_BYTES,
            APPLY_LAG_EVENTS,
            APPLY_BATCH_EVENTS,
            APPLY_STOPPED,
            APPLY_NEEDS_SNAPSHOT,
            APPLY_QUARANTINED_TABLES,
            APPLY_QUARANTINES,
            ERRORS,
        ] {
            assert!(families.contains(&name), "{name} missing:\n{text}");
        }
        assert!(text.contains("dbmux_capture_events_total 1\n"), "{text}");
        assert!(text.contains("dbmux_build_info{version=\"9.9.9\"} 1\n"), "{text}");
        // Known label values exist before anything happened.
        assert!(text.contains("dbmux_errors_total{component=\"apply\",class=\"definite\"} 0\n"));
        assert!(text.contains("dbmux_apply_lag_events{replica=\"r1\"} 0\n"));
        assert_eq!(m.errors_of("capture", "transient"), 0);
        m.error("capture", crate::retry::ErrorClass::Transient);
        assert_eq!(m.errors_of("capture", "transient"), 1);
    }
}
