//! Proxy metric names (the spec) and the handles behind them.
//!
//! They live in the process's one `prometheus_client` registry (see
//! `pipeline::metrics` for the rules): [`Metrics::register`] adds the
//! per-statement counters and histograms, the session and hardening
//! counters, and collectors that read the backends' health and pools and the
//! client memory budget at scrape time. Names are documented in
//! `docs/operations.md`; counters are registered without `_total`, which the
//! encoder appends on the wire.
//!
//! The hot path (one record per statement) touches only atomics: the
//! per-route and per-outcome handles are created once, and the latency
//! histogram is lock-free.

use super::backend::Pool;
use super::health::BackendHealth;
use super::memory::Budget;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counter, labels `route` ([`ROUTES`]) and `outcome` ([`OUTCOMES`]).
pub const QUERIES: &str = "dbmux_proxy_queries";
/// Histogram (seconds), label `route`: command received → reply sent.
pub const QUERY_DURATION_SECONDS: &str = "dbmux_proxy_query_duration_seconds";
/// Gauge: client sessions open now.
pub const CONNECTIONS: &str = "dbmux_proxy_connections";
/// Counter: clients refused by the allowlist or the connection limit.
pub const REFUSED: &str = "dbmux_proxy_refused";
/// Counter: failed logins.
pub const AUTH_FAILURES: &str = "dbmux_proxy_auth_failures";
/// Counter: reads sent to the master because the replica had not applied the
/// session's last write yet (read-your-writes).
pub const RYW_MASTER_READS: &str = "dbmux_proxy_ryw_master_reads";
/// Counter: reads retried on the master after a replica failed.
pub const REPLICA_FAILOVERS: &str = "dbmux_proxy_replica_failovers";

/// Gauge: bytes of client data held now under `max_memory` (big packets,
/// long data, prepared statement texts); read from the budget at scrape time.
pub const CLIENT_MEMORY_BYTES: &str = "dbmux_proxy_client_memory_bytes";
/// Counter: client packets refused for `max_allowed_packet` or `max_memory`
/// (before or after login, long data included).
pub const PACKETS_REFUSED: &str = "dbmux_proxy_packets_refused";
/// Counter: sessions ended by a panic in the proxy (a bug; the process and
/// the other sessions go on).
pub const SESSION_PANICS: &str = "dbmux_proxy_session_panics";
/// Counter: `KILL` statements the proxy carried out (refused ones are not
/// counted here; they are `error` outcomes of route `local`).
pub const KILLS: &str = "dbmux_proxy_kills";

/// Gauge (seconds), label `backend`: smoothed ping round trip (the ping chart).
pub const BACKEND_PING_SECONDS: &str = "dbmux_proxy_backend_ping_seconds";
/// Gauge, label `backend`: 1 when the last ping was answered.
pub const BACKEND_UP: &str = "dbmux_proxy_backend_up";
/// Gauge, label `backend`: the replica's last applied `seq` (absent = unknown).
pub const BACKEND_APPLIED_SEQ: &str = "dbmux_proxy_backend_applied_seq";
/// Gauge, label `backend`: connections the session pools hold open to the
/// backend (in use by a session or idle).
pub const BACKEND_CONNECTIONS: &str = "dbmux_proxy_backend_connections";
/// Gauge, label `backend`: idle pooled connections, ready for the next session.
pub const POOL_IDLE_CONNECTIONS: &str = "dbmux_proxy_pool_idle_connections";
/// Counter, label `backend`: new backend connections opened for sessions
/// (a pool that works opens few: the rate against queries shows reuse).
pub const BACKEND_CONNECTS: &str = "dbmux_proxy_backend_connects";

/// Values of the `route` label: where a command ran.
pub const ROUTES: [&str; 5] = ["master", "replica", "session", "local", "cache"];
/// Values of the `outcome` label: `ok` (OK or a result set), `error` (an SQL
/// error reached the client, from the server or from dbmux), `failed` (the
/// backend broke or could not be reached).
pub const OUTCOMES: [&str; 3] = ["ok", "error", "failed"];
/// Indexes into [`OUTCOMES`].
pub const OK: usize = 0;
pub const ERROR: usize = 1;
pub const FAILED: usize = 2;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    route: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

/// A latency histogram on atomics (no lock per observation), encoded like
/// `prometheus_client`'s own.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Debug, Default)]
pub struct HistogramCells {
    /// Non-cumulative counts; the last one is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| s <= b).unwrap_or(BUCKETS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }
    /// Non-cumulative counts per bucket (the last one is +Inf).
    pub fn counts(&self) -> Vec<u64> {
        self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let counts = self.counts();
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts.iter().copied())
            .collect();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The proxy's statement and session metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Indexed like [`ROUTES`], then [`OUTCOMES`].
    queries: [[Counter; OUTCOMES.len()]; ROUTES.len()],
    /// Indexed like [`ROUTES`].
    durations: [Histogram; ROUTES.len()],
    query_family: Family<QueryLabels, Counter>,
    duration_family: Family<RouteLabel, Histogram>,
    pub connections: Gauge,
    pub refused_total: Counter,
    pub auth_failures: Counter,
    pub ryw_master_reads: Counter,
    pub replica_failovers: Counter,
    pub packets_refused: Counter,
    pub session_panics: Counter,
    pub kills: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let query_family: Family<QueryLabels, Counter> = Family::default();
        let duration_family: Family<RouteLabel, Histogram> = Family::default();
        let queries = std::array::from_fn(|r| {
            std::array::from_fn(|o| {
                query_family
                    .get_or_create(&QueryLabels {
                        route: ROUTES[r],
                        outcome: OUTCOMES[o],
                    })
                    .clone()
            })
        });
        let durations = std::array::from_fn(|r| {
            duration_family
                .get_or_create(&RouteLabel { route: ROUTES[r] })
                .clone()
        });
        Metrics {
            queries,
            durations,
            query_family,
            duration_family,
            connections: Gauge::default(),
            refused_total: Counter::default(),
            auth_failures: Counter::default(),
            ryw_master_reads: Counter::default(),
            replica_failovers: Counter::default(),
            packets_refused: Counter::default(),
            session_panics: Counter::default(),
            kills: Counter::default(),
        }
    }
}

impl Metrics {
    /// One command: where it ran (`route`, an index into [`ROUTES`]), how it
    /// ended (an index into [`OUTCOMES`]) and how long it took.
    pub fn record(&self, route: usize, outcome: usize, d: std::time::Duration) {
        self.queries[route][outcome].inc();
        self.durations[route].observe(d);
    }

    /// Commands counted for a route and outcome so far.
    pub fn queries(&self, route: usize, outcome: usize) -> u64 {
        self.queries[route][outcome].get()
    }

    /// Registers these handles, and collectors reading `backends` and the
    /// client memory budget at scrape time, in `registry`.
    pub fn register(&self, registry: &mut Registry, backends: Vec<BackendView>, memory: Arc<Budget>) {
        registry.register(
            QUERIES,
            "Commands by where they ran and how they ended",
            self.query_family.clone(),
        );
        registry.register(
            QUERY_DURATION_SECONDS,
            "Seconds from a command's arrival to its reply",
            self.duration_family.clone(),
        );
        registry.register(CONNECTIONS, "Client sessions open", self.connections.clone());
        registry.register(
            REFUSED,
            "Clients refused by the allowlist or the connection limit",
            self.refused_total.clone(),
        );
        registry.register(AUTH_FAILURES, "Failed logins", self.auth_failures.clone());
        registry.register(
            RYW_MASTER_READS,
            "Reads sent to the master for read-your-writes",
            self.ryw_master_reads.clone(),
        );
        registry.register(
            REPLICA_FAILOVERS,
            "Reads retried on the master after a replica failed",
            self.replica_failovers.clone(),
        );
        registry.register(
            PACKETS_REFUSED,
            "Client packets refused for max_allowed_packet or max_memory",
            self.packets_refused.clone(),
        );
        registry.register(
            SESSION_PANICS,
            "Sessions ended by a panic in the proxy (a bug; the others go on)",
            self.session_panics.clone(),
        );
        registry.register(KILLS, "KILL statements the proxy carried out", self.kills.clone());
        registry.register_collector(Box::new(MemoryCollector(memory)));
        registry.register_collector(Box::new(BackendCollector { backends }));
    }
}

/// One backend as the metrics see it.
#[derive(Clone)]
pub struct BackendView {
    pub health: Arc<BackendHealth>,
    pub pool: Arc<Pool>,
}

impl std::fmt::Debug for BackendView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendView")
            .field("backend", &self.health.name)
            .finish_non_exhaustive()
    }
}

/// The client bytes held under `max_memory`, read from the budget on each
/// scrape (the budget is the one count; no second one to keep in step).
#[derive(Debug)]
struct MemoryCollector(Arc<Budget>);

impl Collector for MemoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let metric = encoder.encode_descriptor(
            CLIENT_MEMORY_BYTES,
            "Bytes of client data held under max_memory.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.used() as i64).encode(metric)
    }
}

/// Per-backend gauges, read from the health checks and the pools on each scrape.
#[derive(Debug)]
struct BackendCollector {
    backends: Vec<BackendView>,
}

impl BackendCollector {
    fn family<N: EncodeGaugeValue>(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: impl Fn(&BackendView) -> Option<N>,
    ) -> Result<(), std::fmt::Error> {
        let values: Vec<(&str, N)> = self
            .backends
            .iter()
            .filter_map(|b| Some((b.health.name.as_str(), value(b)?)))
            .collect();
        if values.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (backend, v) in values {
            let labels = [("backend", backend)];
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for BackendCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.family(
            &mut encoder,
            BACKEND_UP,
            "1 when the backend answered its last ping.",
            |b| Some(b.health.is_up() as i64),
        )?;
        self.family(
            &mut encoder,
            BACKEND_PING_SECONDS,
            "Smoothed ping round trip to the backend.",
            |b| Some(b.health.latency_us() as f64 / 1e6),
        )?;
        self.family(
            &mut encoder,
            BACKEND_APPLIED_SEQ,
            "Last pipeline seq the replica applied.",
            |b| b.health.applied_seq().map(|s| s as i64),
        )?;
        self.family(
            &mut encoder,
            BACKEND_CONNECTIONS,
            "Session connections open to the backend (in use or idle).",
            |b| Some(b.pool.open_connections() as i64),
        )?;
        self.family(
            &mut encoder,
            POOL_IDLE_CONNECTIONS,
            "Idle pooled connections to the backend.",
            |b| Some(b.pool.idle_connections() as i64),
        )?;
        let mut family = encoder.encode_descriptor(
            BACKEND_CONNECTS,
            "New backend connections opened for sessions.",
            None,
            MetricType::Counter,
        )?;
        for b in &self.backends {
            let labels = [("backend", b.health.name.as_str())];
            let connects = prometheus_client::metrics::counter::ConstCounter::new(b.pool.connects());
            connects.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_encodes_cumulative_buckets_and_the_sum() {
        let m = Metrics::default();
        m.record(1, OK, std::time::Duration::from_micros(300));
        m.record(1, ERROR, std::time::Duration::from_millis(20));
        let mut registry = Registry::default();
        let budget = Budget::new(1 << 20);
        let _lease = budget.take(70_000).unwrap();
        m.register(&mut registry, Vec::new(), budget.clone());
        m.kills.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("dbmux_proxy_queries_total{route=\"replica\",outcome=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("dbmux_proxy_queries_total{route=\"replica\",outcome=\"error\"} 1\n"));
        // Every route and outcome exists from the start.
        assert!(text.contains("dbmux_proxy_queries_total{route=\"local\",outcome=\"failed\"} 0\n"));
        assert!(
            text.contains("dbmux_proxy_query_duration_seconds_bucket{le=\"0.00025\",route=\"replica\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("dbmux_proxy_query_duration_seconds_bucket{le=\"0.0005\",route=\"replica\"} 1\n")
        );
        assert!(text.contains("dbmux_proxy_query_duration_seconds_bucket{le=\"+Inf\",route=\"replica\"} 2\n"));
        assert!(text.contains("dbmux_proxy_query_duration_seconds_count{route=\"replica\"} 2\n"));
        assert!(text.contains("dbmux_proxy_query_duration_seconds_sum{route=\"replica\"} 0.0203\n"));
        assert_eq!(m.queries(1, OK), 1);
        // The hardening counters and the memory gauge, under their documented names.
        assert!(text.contains("dbmux_proxy_kills_total 1\n"), "{text}");
        assert!(text.contains("dbmux_proxy_packets_refused_total 0\n"));
        assert!(text.contains("dbmux_proxy_session_panics_total 0\n"));
        assert!(text.contains("# TYPE dbmux_proxy_client_memory_bytes gauge\n"));
        assert!(text.contains("dbmux_proxy_client_memory_bytes 70000\n"), "{text}");
    }
}
