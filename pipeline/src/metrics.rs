//! Metric names (the spec) and the pipeline's metric handles.
//!
//! Names and labels are constants here and documented in `docs/operations.md`;
//! Grafana dashboards use exactly these names. Record per batch, not per row;
//! labels are of low cardinality (stream, replica, error class).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Committed source transactions captured into the log.
pub const CAPTURE_TRANSACTIONS: &str = "dbmux_capture_transactions";
/// Row change events captured into the log.
pub const CAPTURE_EVENTS: &str = "dbmux_capture_events";
/// 1 while capture is connected and streaming from the source, else 0.
pub const CAPTURE_CONNECTED: &str = "dbmux_capture_connected";
/// Last `seq` written to the log.
pub const LOG_LAST_SEQ: &str = "dbmux_log_last_seq";
/// Bytes appended to the log.
pub const LOG_APPENDED_BYTES: &str = "dbmux_log_appended_bytes";
/// Seconds spent in one log append (incl. fsync), histogram.
pub const LOG_APPEND_SECONDS: &str = "dbmux_log_append_seconds";
/// Last `seq` a replica committed (label `replica`).
pub const APPLY_LAST_SEQ: &str = "dbmux_apply_last_seq";
/// `log last seq - replica applied seq`, computed when scraped (label `replica`).
pub const APPLY_LAG_EVENTS: &str = "dbmux_apply_lag_events";
/// Age of the oldest transaction a replica has not applied (now − its source
/// commit time), computed when scraped; 0 when caught up (label `replica`).
pub const APPLY_LAG_SECONDS: &str = "dbmux_apply_lag_seconds";
/// Target transactions (batches) committed (label `replica`).
pub const APPLY_BATCHES: &str = "dbmux_apply_batches";
/// Row events applied (label `replica`).
pub const APPLY_EVENTS: &str = "dbmux_apply_events";
/// Seconds per applied batch, histogram (label `replica`).
pub const APPLY_BATCH_SECONDS: &str = "dbmux_apply_batch_seconds";
/// 1 while a replica is stopped for good or needs a snapshot (label `replica`).
pub const APPLY_STOPPED: &str = "dbmux_apply_stopped";
/// 1 while a replica cannot start from the log and needs a snapshot (label `replica`).
pub const APPLY_NEEDS_SNAPSHOT: &str = "dbmux_apply_needs_snapshot";
/// Tables quarantined on a replica (label `replica`).
pub const APPLY_QUARANTINED_TABLES: &str = "dbmux_apply_quarantined_tables";
/// Tables put into quarantine (label `replica`).
pub const APPLY_QUARANTINES: &str = "dbmux_apply_quarantines";
/// Errors by component and class (labels `component`, `class`).
pub const ERRORS: &str = "dbmux_errors";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    pub replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub component: String,
    pub class: String,
}

/// Handles for every pipeline metric; cheap to clone (all `Arc` inside).
#[derive(Clone)]
pub struct PipelineMetrics {
    pub capture_transactions: Counter,
    pub capture_events: Counter,
    pub capture_connected: Gauge,
    pub log_last_seq: Gauge<u64, AtomicU64>,
    pub log_appended_bytes: Counter,
    pub log_append_seconds: Histogram,
    pub apply_last_seq: Family<ReplicaLabel, Gauge<u64, AtomicU64>>,
    pub apply_lag_events: Family<ReplicaLabel, Gauge<u64, AtomicU64>>,
    pub apply_lag_seconds: Family<ReplicaLabel, Gauge<f64, AtomicU64>>,
    pub apply_batches: Family<ReplicaLabel, Counter>,
    pub apply_events: Family<ReplicaLabel, Counter>,
    pub apply_batch_seconds: Family<ReplicaLabel, Histogram>,
    pub apply_stopped: Family<ReplicaLabel, Gauge<u64, AtomicU64>>,
    pub apply_needs_snapshot: Family<ReplicaLabel, Gauge<u64, AtomicU64>>,
    pub apply_quarantined_tables: Family<ReplicaLabel, Gauge<u64, AtomicU64>>,
    pub apply_quarantines: Family<ReplicaLabel, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl PipelineMetrics {
    /// Creates the handles and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = PipelineMetrics {
            capture_transactions: Counter::default(),
            capture_events: Counter::default(),
            capture_connected: Gauge::default(),
            log_last_seq: Gauge::default(),
            log_appended_bytes: Counter::default(),
            log_append_seconds: seconds_histogram(),
            apply_last_seq: Family::default(),
            apply_lag_events: Family::default(),
            apply_lag_seconds: Family::default(),
            apply_batches: Family::default(),
            apply_events: Family::default(),
            apply_batch_seconds: Family::new_with_constructor(seconds_histogram),
            apply_stopped: Family::default(),
            apply_needs_snapshot: Family::default(),
            apply_quarantined_tables: Family::default(),
            apply_quarantines: Family::default(),
            errors: Family::default(),
        };
        registry.register(
            CAPTURE_TRANSACTIONS,
            "Committed source transactions captured",
            m.capture_transactions.clone(),
        );
        registry.register(
            CAPTURE_EVENTS,
            "Row change events captured",
            m.capture_events.clone(),
        );
        registry.register(
            LOG_LAST_SEQ,
            "Last seq written to the log",
            m.log_last_seq.clone(),
        );
        registry.register(
            LOG_APPENDED_BYTES,
            "Bytes appended to the log",
            m.log_appended_bytes.clone(),
        );
        registry.register(
            LOG_APPEND_SECONDS,
            "Seconds per log append incl. fsync",
            m.log_append_seconds.clone(),
        );
        registry.register(
            APPLY_LAST_SEQ,
            "Last seq committed by a replica",
            m.apply_last_seq.clone(),
        );
        registry.register(
            APPLY_LAG_EVENTS,
            "Events in the log not yet applied by a replica",
            m.apply_lag_events.clone(),
        );
        registry.register(
            APPLY_LAG_SECONDS,
            "Age of the oldest transaction the replica has not applied",
            m.apply_lag_seconds.clone(),
        );
        registry.register(
            APPLY_BATCHES,
            "Target transactions committed",
            m.apply_batches.clone(),
        );
        registry.register(APPLY_EVENTS, "Row events applied", m.apply_events.clone());
        registry.register(
            APPLY_BATCH_SECONDS,
            "Seconds per applied batch",
            m.apply_batch_seconds.clone(),
        );
        registry.register(
            APPLY_STOPPED,
            "1 while a replica is stopped for good or needs a snapshot",
            m.apply_stopped.clone(),
        );
        registry.register(
            APPLY_NEEDS_SNAPSHOT,
            "1 while a replica needs a snapshot to start",
            m.apply_needs_snapshot.clone(),
        );
        registry.register(
            APPLY_QUARANTINED_TABLES,
            "Tables quarantined on a replica",
            m.apply_quarantined_tables.clone(),
        );
        registry.register(
            APPLY_QUARANTINES,
            "Tables put into quarantine",
            m.apply_quarantines.clone(),
        );
        registry.register(ERRORS, "Errors by component and class", m.errors.clone());
        m
    }

    /// Handles registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
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
}
