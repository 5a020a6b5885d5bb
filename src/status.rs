//! The live status page (`GET /` on the admin server) and what feeds it.
//!
//! The page itself is one static file, `status.html` (HTML, CSS and a small
//! script, no framework, nothing fetched from elsewhere), built into the binary.
//! It reads `/status/history` once, then `/status` every second, and draws the
//! figures and the ping chart itself.
//!
//! - [`StatusBoard`] holds what `/status` reports beyond the log and the
//!   metrics: the source, the proxy's backends, a short history (one sample a
//!   second for [`HISTORY`] samples) so a freshly opened page shows the last
//!   minutes, and the recent warnings and errors.
//! - [`ErrorLayer`] is a `tracing` layer that keeps the last [`MAX_ERRORS`]
//!   WARN and ERROR events: everything the process logs as a problem shows on
//!   the page, with no separate error plumbing.

use pipeline::log::Log;
use pipeline::metrics::{PipelineMetrics, ReplicaLabel};
use pipeline::replica::ReplicaBoard;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The page, served at `/`.
pub const PAGE: &str = include_str!("status.html");

/// Samples kept: ten minutes at one a second.
pub const HISTORY: usize = 600;
/// Time between samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Warnings and errors kept for the page.
pub const MAX_ERRORS: usize = 50;
/// A replica with a warning this recent, and no progress since, is "retrying".
const RETRY_WINDOW_MS: u64 = 15_000;
/// A replica that is behind and has not moved for this long is "stalled".
const STALL_AFTER: Duration = Duration::from_secs(10);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One proxy backend, as sampled.
#[derive(Debug, Clone, Serialize)]
pub struct BackendSample {
    pub name: String,
    /// `master` or `replica`.
    pub role: &'static str,
    pub up: bool,
    pub ping_ms: f64,
    pub applied_seq: Option<u64>,
    pub open_connections: u64,
    pub idle_connections: u64,
}

/// The proxy as the page sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ProxySample {
    pub listen: String,
    pub sessions: i64,
    pub queries: u64,
    pub backends: Vec<BackendSample>,
    /// The result cache (`None`: not configured).
    pub cache: Option<CacheSample>,
}

/// The proxy's result cache, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct CacheSample {
    /// Hits are served now (Redis answers, the invalidator's heartbeat is fresh).
    pub available: bool,
    pub hits: u64,
    pub misses: u64,
    pub fills: u64,
    pub fills_refused_stale: u64,
    pub redis_errors: u64,
}

/// Reads the proxy's state (the binary wires it when a proxy runs).
pub type ProxyFn = Box<dyn Fn() -> ProxySample + Send + Sync>;

/// One second of history.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t: u64,
    pub last_seq: u64,
    /// Replica → events behind.
    pub lag: HashMap<String, u64>,
    /// Backend → ping in ms (absent while the backend is down).
    pub ping_ms: HashMap<String, Option<f64>>,
}

/// A warning or error the process logged.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedProblem {
    pub time_ms: u64,
    pub level: &'static str,
    pub target: String,
    pub message: String,
    /// The `replica` field of the event, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// The process-wide list of recent problems (filled by [`ErrorLayer`]).
pub fn recent_problems() -> &'static Mutex<VecDeque<LoggedProblem>> {
    static LIST: OnceLock<Mutex<VecDeque<LoggedProblem>>> = OnceLock::new();
    LIST.get_or_init(|| Mutex::new(VecDeque::with_capacity(MAX_ERRORS)))
}

/// Keeps WARN and ERROR events for the status page.
pub struct ErrorLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warn",
            _ => return,
        };
        let mut v = MessageVisitor::default();
        event.record(&mut v);
        let problem = LoggedProblem {
            time_ms: unix_ms(),
            level,
            target: event.metadata().target().to_string(),
            message: v.text,
            replica: v.replica,
        };
        let mut list = recent_problems().lock().unwrap();
        if list.len() == MAX_ERRORS {
            list.pop_front();
        }
        list.push_back(problem);
    }
}

/// "message field=value …", like the log line.
#[derive(Default)]
struct MessageVisitor {
    text: String,
    replica: Option<String>,
}

impl tracing::field::Visit for MessageVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let value = format!("{value:?}");
        if field.name() == "replica" {
            self.replica = Some(value.clone());
        }
        if field.name() == "message" {
            self.text.insert_str(0, &value);
        } else {
            let _ = write!(self.text, " {}={}", field.name(), value);
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "replica" {
            self.replica = Some(value.to_string());
        }
        self.record_debug(field, &format_args!("{value}"));
    }
}

/// Per replica: when its applied seq last moved.
struct Progress {
    applied: u64,
    moved: Instant,
}

/// What `/status` and `/status/history` report beyond the log and the metrics.
pub struct StatusBoard {
    pub name: String,
    pub version: &'static str,
    /// `embedded` or `kafka`.
    pub log_kind: &'static str,
    started: Instant,
    /// The source, password redacted.
    pub source: Option<String>,
    pub replicas: Vec<String>,
    proxy: Option<ProxyFn>,
    history: Mutex<VecDeque<Sample>>,
    progress: Mutex<HashMap<String, Progress>>,
    snapshots: Option<pipeline::snapshot::SnapshotBoard>,
}

impl StatusBoard {
    pub fn new(
        name: &str,
        log_kind: &'static str,
        source: Option<String>,
        replicas: Vec<String>,
        proxy: Option<ProxyFn>,
    ) -> Self {
        StatusBoard {
            name: name.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            log_kind,
            started: Instant::now(),
            source,
            replicas,
            proxy,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            progress: Mutex::new(HashMap::new()),
            snapshots: None,
        }
    }

    /// Reports snapshot progress too.
    pub fn with_snapshots(mut self, board: pipeline::snapshot::SnapshotBoard) -> Self {
        self.snapshots = Some(board);
        self
    }

    pub fn proxy(&self) -> Option<ProxySample> {
        self.proxy.as_ref().map(|f| f())
    }

    async fn lag_of<L: Log>(log: &L, replica: &str) -> (Option<u64>, u64) {
        let applied = log.acked(replica).await.ok().flatten();
        (applied, log.last_seq().saturating_sub(applied.unwrap_or(0)))
    }

    /// Takes one sample (the sampler task calls this every [`SAMPLE_EVERY`]).
    pub async fn sample<L: Log>(&self, log: &L) {
        let mut lags = Vec::with_capacity(self.replicas.len());
        for r in &self.replicas {
            lags.push(Self::lag_of(log, r).await);
        }
        let mut lag = HashMap::new();
        {
            let mut progress = self.progress.lock().unwrap();
            for (r, (applied, behind)) in self.replicas.iter().zip(lags) {
                lag.insert(r.clone(), behind);
                let applied = applied.unwrap_or(0);
                let p = progress.entry(r.clone()).or_insert(Progress {
                    applied,
                    moved: Instant::now(),
                });
                if applied != p.applied {
                    p.applied = applied;
                    p.moved = Instant::now();
                }
            }
        }
        let ping_ms = self
            .proxy()
            .map(|p| {
                p.backends
                    .into_iter()
                    .map(|b| (b.name, b.up.then_some(b.ping_ms)))
                    .collect()
            })
            .unwrap_or_default();
        let mut h = self.history.lock().unwrap();
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(Sample {
            t: unix_ms(),
            last_seq: log.last_seq(),
            lag,
            ping_ms,
        });
    }

    /// `caught up`, `applying`, `retrying` or `stalled`.
    fn replica_state(&self, replica: &str, behind: u64) -> &'static str {
        let now = unix_ms();
        let progress = self.progress.lock().unwrap();
        let moved = progress.get(replica).map(|p| p.moved);
        let moved_ms_ago = moved.map_or(u64::MAX, |m| m.elapsed().as_millis() as u64);
        let warned_ms_ago = recent_problems()
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|p| p.replica.as_deref() == Some(replica))
            .map(|p| now.saturating_sub(p.time_ms));
        match warned_ms_ago {
            Some(w) if w < RETRY_WINDOW_MS && w < moved_ms_ago => return "retrying",
            _ => {}
        }
        if behind == 0 {
            "caught up"
        } else if moved_ms_ago < STALL_AFTER.as_millis() as u64 {
            "applying"
        } else {
            "stalled"
        }
    }

    /// The `/status` document. Each replica shows its applier's `state`
    /// (`running`, `stopped`, `needs_snapshot`, with the reason and its
    /// quarantined tables) and, while running, what it is doing (`activity`:
    /// `caught up`, `applying`, `retrying` or `stalled`). With a remote log
    /// (Kafka) this asks the brokers; an unreachable broker leaves the log's
    /// fields null rather than failing.
    pub async fn status<L: Log>(
        &self,
        log: &L,
        metrics: &PipelineMetrics,
        appliers: &ReplicaBoard,
    ) -> serde_json::Value {
        let mut replicas = serde_json::Map::new();
        for r in &self.replicas {
            let (applied, behind) = Self::lag_of(log, r).await;
            let label = ReplicaLabel { replica: r.clone() };
            let lag_seconds = metrics.apply_lag_seconds.get(&label).map(|g| g.get());
            let events = metrics.apply_events.get(&label).map_or(0, |c| c.get());
            let mut entry = serde_json::to_value(appliers.get(r).unwrap_or_default()).unwrap_or_default();
            if let Some(e) = entry.as_object_mut() {
                if e.get("applied_seq").is_none_or(|v| v.is_null()) {
                    e.insert("applied_seq".into(), applied.into());
                }
                e.insert("lag_events".into(), behind.into());
                e.insert("lag_seconds".into(), lag_seconds.into());
                e.insert("events_applied".into(), events.into());
                e.insert("activity".into(), self.replica_state(r, behind).into());
            }
            replicas.insert(r.clone(), entry);
        }
        let last = log.last().await.ok().flatten();
        let first_seq = log.first_seq().await.ok().flatten();
        let position = last.as_ref().map(|(_, p)| p.to_string());
        let mut errors = serde_json::Map::new();
        for c in pipeline::metrics::COMPONENTS {
            let mut by_class = serde_json::Map::new();
            for class in pipeline::metrics::ERROR_CLASSES {
                by_class.insert(class.into(), metrics.errors_of(c, class).into());
            }
            errors.insert(c.into(), by_class.into());
        }
        let problems: Vec<LoggedProblem> = recent_problems().lock().unwrap().iter().rev().cloned().collect();
        let commit_ts = metrics.capture_last_commit_timestamp.get();
        serde_json::json!({
            "name": self.name,
            "version": self.version,
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "time_ms": unix_ms(),
            "source": self.source,
            "capture": {
                "connected": metrics.capture_connected.get() == 1,
                "position": position,
                "binlog_bytes_behind": metrics.capture_binlog_bytes_behind.get(),
                "last_commit_ts": (commit_ts > 0.0).then_some(commit_ts),
                "transactions": metrics.capture_transactions.get(),
                "events": metrics.capture_events.get(),
            },
            "log": {
                "kind": self.log_kind,
                "first_seq": first_seq,
                "last_seq": log.last_seq(),
                "resume_position": position,
                "disk_bytes": metrics.log_disk_bytes.get(),
            },
            "replicas": replicas,
            "snapshot": self.snapshots.as_ref().map(|b| serde_json::json!({
                "active": b.active(),
                "tables": b.all(),
            })),
            "proxy": self.proxy(),
            "errors": errors,
            "recent_problems": problems,
        })
    }

    /// The `/status/history` document: the kept samples, oldest first.
    pub fn history(&self) -> serde_json::Value {
        let h = self.history.lock().unwrap();
        serde_json::json!({
            "interval_ms": SAMPLE_EVERY.as_millis() as u64,
            "samples": h.iter().collect::<Vec<_>>(),
        })
    }
}

/// Samples the board every [`SAMPLE_EVERY`] until `shutdown`.
pub async fn run_sampler<L: Log>(board: Arc<StatusBoard>, log: L, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => board.sample(&log).await,
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn warnings_are_kept_with_their_fields_and_info_is_not() {
        let subscriber = tracing_subscriber::registry().with(ErrorLayer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("all good");
            tracing::warn!(
                replica = "pg-test-7",
                attempt = 3,
                "replica unavailable; retrying"
            );
        });
        let list = recent_problems().lock().unwrap();
        let p = list
            .iter()
            .find(|p| p.replica.as_deref() == Some("pg-test-7"))
            .expect("the warning is kept");
        assert_eq!(p.level, "warn");
        assert_eq!(
            p.message,
            "replica unavailable; retrying replica=pg-test-7 attempt=3"
        );
        assert!(!list.iter().any(|p| p.message.contains("all good")));
    }

    #[tokio::test]
    async fn history_keeps_the_last_samples_and_states_follow_progress() {
        let dir = tempfile::tempdir().unwrap();
        let log = pipeline::log::EmbeddedLog::open(dir.path(), pipeline::log::FsyncPolicy::Never).unwrap();
        let board = StatusBoard::new("t", "embedded", None, vec!["r-hist".into()], None);
        for _ in 0..HISTORY + 5 {
            board.sample(&log).await;
        }
        let h = board.history();
        assert_eq!(h["samples"].as_array().unwrap().len(), HISTORY);
        assert_eq!(h["samples"][0]["lag"]["r-hist"], 0);
        // Nothing in the log, nothing applied: caught up.
        assert_eq!(board.replica_state("r-hist", 0), "caught up");
        assert_eq!(board.replica_state("r-hist", 5), "applying");
    }
}
