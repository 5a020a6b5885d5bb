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
/// `log last seq - replica applied seq` (label `replica`).
pub const APPLY_LAG_EVENTS: &str = "dbmux_apply_lag_events";
/// Seconds between the source commit of the last applied transaction and its apply (label `replica`).
pub const APPLY_LAG_SECONDS: &str = "dbmux_apply_lag_seconds";
/// Target transactions (batches) committed (label `replica`).
pub const APPLY_BATCHES: &str = "dbmux_apply_batches";
/// Row events applied (label `replica`).
pub const APPLY_EVENTS: &str = "dbmux_apply_events";
/// Seconds per applied batch, histogram (label `replica`).
pub const APPLY_BATCH_SECONDS: &str = "dbmux_apply_batch_seconds";
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
            CAPTURE_CONNECTED,
            "1 while capture is connected and streaming from the source",
            m.capture_connected.clone(),
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
            "Source commit to replica commit delay of the last batch",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every documented pipeline metric is on the page (dbmux_capture_connected was documented but never
    /// registered, so `/metrics` lacked it).
    #[test]
    fn every_metric_name_is_exposed() {
        let mut registry = Registry::default();
        let m = PipelineMetrics::new(&mut registry);
        let label = ReplicaLabel { replica: "r".into() };
        m.apply_last_seq.get_or_create(&label).set(1);
        m.apply_lag_events.get_or_create(&label).set(1);
        m.apply_lag_seconds.get_or_create(&label).set(1.0);
        m.apply_batches.get_or_create(&label).inc();
        m.apply_events.get_or_create(&label).inc();
        m.apply_batch_seconds.get_or_create(&label).observe(0.1);
        m.error("capture", crate::retry::ErrorClass::Transient);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            CAPTURE_TRANSACTIONS,
            CAPTURE_EVENTS,
            CAPTURE_CONNECTED,
            LOG_LAST_SEQ,
            LOG_APPENDED_BYTES,
            LOG_APPEND_SECONDS,
            APPLY_LAST_SEQ,
            APPLY_LAG_EVENTS,
            APPLY_LAG_SECONDS,
            APPLY_BATCHES,
            APPLY_EVENTS,
            APPLY_BATCH_SECONDS,
            ERRORS,
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} missing from /metrics:\n{text}"
            );
        }
    }
}
