//! Proxy metric names (the spec) and the in-process counters behind them.
//!
//! The counters are plain atomics updated per statement; the observability
//! work exports them under these names (see `docs/operations.md`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counter, label `route` = `master` | `replica` | `session` | `local`.
pub const QUERIES_TOTAL: &str = "dbmux_proxy_queries_total";
/// Histogram (seconds), label `route`.
pub const QUERY_DURATION_SECONDS: &str = "dbmux_proxy_query_duration_seconds";
/// Gauge: client sessions open now.
pub const CONNECTIONS: &str = "dbmux_proxy_connections";
/// Counter: clients refused by the allowlist or the connection limit.
pub const REFUSED_TOTAL: &str = "dbmux_proxy_refused_total";
/// Counter: failed logins.
pub const AUTH_FAILURES_TOTAL: &str = "dbmux_proxy_auth_failures_total";
/// Counter: reads sent to the master because the replica had not applied the
/// session's last write yet (read-your-writes).
pub const RYW_MASTER_READS_TOTAL: &str = "dbmux_proxy_ryw_master_reads_total";
/// Counter: reads retried on the master after a replica failed.
pub const REPLICA_FAILOVERS_TOTAL: &str = "dbmux_proxy_replica_failovers_total";

/// Gauge: bytes of client data held now under `max_memory` (big packets,
/// long data, prepared statement texts).
pub const CLIENT_MEMORY_BYTES: &str = "dbmux_proxy_client_memory_bytes";
/// Counter: client packets refused for `max_allowed_packet` or `max_memory`.
pub const PACKETS_REFUSED_TOTAL: &str = "dbmux_proxy_packets_refused_total";
/// Counter: sessions ended by a panic in the proxy (a bug; the process and
/// the other sessions go on).
pub const SESSION_PANICS_TOTAL: &str = "dbmux_proxy_session_panics_total";
/// Counter: `KILL` statements the proxy carried out.
pub const KILLS_TOTAL: &str = "dbmux_proxy_kills_total";

/// Gauge (seconds), label `backend`: smoothed ping round trip (the ping chart).
pub const BACKEND_PING_SECONDS: &str = "dbmux_proxy_backend_ping_seconds";
/// Gauge, label `backend`: 1 when the last ping was answered.
pub const BACKEND_UP: &str = "dbmux_proxy_backend_up";
/// Gauge, label `backend`: the replica's last applied `seq` (absent = unknown).
pub const BACKEND_APPLIED_SEQ: &str = "dbmux_proxy_backend_applied_seq";

/// Label values of `route`.
pub const ROUTES: [&str; 4] = ["master", "replica", "session", "local"];

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 13],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| s <= b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
    /// Non-cumulative counts per bucket (the last one is +Inf).
    pub fn counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Indexed like [`ROUTES`].
    pub queries: [Counter; 4],
    pub durations: [Histogram; 4],
    pub connections: Counter,
    pub refused_total: Counter,
    pub auth_failures: Counter,
    pub ryw_master_reads: Counter,
    pub replica_failovers: Counter,
    pub packets_refused: Counter,
    pub session_panics: Counter,
    pub kills: Counter,
}

impl Metrics {
    pub fn record(&self, route: usize, d: std::time::Duration) {
        self.queries[route].inc();
        self.durations[route].observe(d);
    }

    /// Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (i, r) in ROUTES.iter().enumerate() {
            s += &format!("{QUERIES_TOTAL}{{route=\"{r}\"}} {}\n", self.queries[i].get());
            let counts = self.durations[i].counts();
            let mut acc = 0;
            for (b, c) in BUCKETS.iter().zip(&counts) {
                acc += c;
                s += &format!("{QUERY_DURATION_SECONDS}_bucket{{route=\"{r}\",le=\"{b}\"}} {acc}\n");
            }
            acc += counts[BUCKETS.len()];
            s += &format!("{QUERY_DURATION_SECONDS}_bucket{{route=\"{r}\",le=\"+Inf\"}} {acc}\n");
            s += &format!("{QUERY_DURATION_SECONDS}_count{{route=\"{r}\"}} {acc}\n");
            let sum = self.durations[i].sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            s += &format!("{QUERY_DURATION_SECONDS}_sum{{route=\"{r}\"}} {sum}\n");
        }
        s += &format!("{CONNECTIONS} {}\n", self.connections.get());
        s += &format!("{REFUSED_TOTAL} {}\n", self.refused_total.get());
        s += &format!("{AUTH_FAILURES_TOTAL} {}\n", self.auth_failures.get());
        s += &format!("{RYW_MASTER_READS_TOTAL} {}\n", self.ryw_master_reads.get());
        s += &format!("{REPLICA_FAILOVERS_TOTAL} {}\n", self.replica_failovers.get());
        s += &format!("{PACKETS_REFUSED_TOTAL} {}\n", self.packets_refused.get());
        s += &format!("{SESSION_PANICS_TOTAL} {}\n", self.session_panics.get());
        s += &format!("{KILLS_TOTAL} {}\n", self.kills.get());
        s
    }
}
