//! Backend health: periodic pings (the "ping chart"), replica positions and lag.
//!
//! One task per backend keeps a dedicated connection, sends `COM_PING` every
//! `health_interval_ms` and keeps an exponentially weighted latency. For a
//! replica it also reads what the replica has applied:
//! - the applied GTID set, for read-your-writes: by default the `position`
//!   the dbmux applier named like the replica stored in `dbmux.dbmux_offsets`
//!   in the same transaction as the data (`mysql:file:offset:gtid-set`), and
//!   if that table or row does not exist, `@@gtid_slave_pos` (a natively
//!   replicating MariaDB replica); or `applied_gtid_query`;
//! - the applied pipeline `seq` (`seq` of the same row, or
//!   `applied_seq_query`), for lag, compared with the master stream's latest
//!   `seq` from a `watch` channel the runtime feeds.
//!
//! A query that fails (no such table yet) leaves that value unknown; a failed
//! ping marks the backend down at once, and so does a ping not answered
//! within `health_timeout_ms`: a frozen server (SIGSTOP, a hung host) keeps
//! its TCP connections open and would otherwise look alive forever.
//!
//! # Who may mark a backend down
//! Only evidence that the backend fails for everyone: a failed or
//! unanswered ping, a refused connection, a login the backend refuses for the
//! proxy's account, a "going away" error. A session whose own connection
//! breaks (the server closed it after a packet too big, a client too slow to
//! read, …) asks for an immediate ping instead ([`BackendHealth::probe`]):
//! one client cannot take a backend out of rotation for the others.
//!
//! Sessions waiting for a backend's reply also wait for it to be marked down
//! ([`BackendHealth::wait_down`]): a frozen backend releases them within
//! `health_interval_ms + health_timeout_ms`.

use super::backend::{BackendConn, Pool, PoolKey};
use super::handshake::{DEFAULT_COLLATION, SESSION_CAPABILITIES};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// A MariaDB GTID `domain-server-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl std::str::FromStr for Gtid {
    type Err = ();
    fn from_str(s: &str) -> Result<Gtid, ()> {
        let mut it = s.trim().split('-');
        let g = Gtid {
            domain: it.next().ok_or(())?.parse().map_err(|_| ())?,
            server: it.next().ok_or(())?.parse().map_err(|_| ())?,
            seq: it.next().ok_or(())?.parse().map_err(|_| ())?,
        };
        if it.next().is_some() {
            return Err(());
        }
        Ok(g)
    }
}

impl std::fmt::Display for Gtid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// Highest applied sequence number per GTID domain, from a MariaDB GTID set
/// (`0-1-100,1-2-7`) or a dbmux position text (`mysql:file:offset:0-1-100`).
pub fn parse_gtid_set(s: &str) -> HashMap<u32, u64> {
    let s = match s.strip_prefix("mysql:") {
        Some(rest) => rest.splitn(3, ':').nth(2).unwrap_or(""),
        None => s,
    };
    let mut m: HashMap<u32, u64> = HashMap::new();
    for g in s.split(',').filter_map(|p| p.parse::<Gtid>().ok()) {
        let e = m.entry(g.domain).or_default();
        *e = (*e).max(g.seq);
    }
    m
}

/// Has a replica applied a given commit?
///
/// Contract: `covers` returns true only when every change of the commit
/// `gtid` (and everything before it in its stream) is visible to reads on
/// `replica`. False when unknown: the caller then reads from the master.
pub trait AppliedPosition: Send + Sync + 'static {
    fn covers(&self, replica: &str, gtid: &Gtid) -> bool;
}

/// Maps a master commit to the pipeline `seq` of its last event, when known.
pub type GtidToSeq = Arc<dyn Fn(&Gtid) -> Option<u64> + Send + Sync>;

/// What is known about one backend.
#[derive(Debug)]
pub struct BackendHealth {
    pub name: String,
    up: AtomicBool,
    /// EWMA of ping round trips, microseconds.
    latency_us: AtomicU64,
    /// Last applied `seq`; `u64::MAX` = unknown.
    applied_seq: AtomicU64,
    applied_gtids: RwLock<HashMap<u32, u64>>,
    /// The server's default `sql_mode` has NO_BACKSLASH_ESCAPES.
    no_backslash_escapes: AtomicBool,
    /// Woken when the backend is marked down.
    down: Notify,
    /// Wakes the health task for a ping now.
    probe: Notify,
}

impl BackendHealth {
    pub fn new(name: &str) -> BackendHealth {
        BackendHealth {
            name: name.to_string(),
            up: AtomicBool::new(true),
            latency_us: AtomicU64::new(1000),
            applied_seq: AtomicU64::new(u64::MAX),
            applied_gtids: RwLock::new(HashMap::new()),
            no_backslash_escapes: AtomicBool::new(false),
            down: Notify::new(),
            probe: Notify::new(),
        }
    }
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
    pub fn mark_down(&self) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(backend = %self.name, "backend marked down");
        }
        self.down.notify_waiters();
    }
    /// Asks the health task to ping now: a session saw one of its
    /// connections fail and cannot tell whether the backend or only that
    /// connection is at fault.
    pub fn probe(&self) {
        self.probe.notify_one();
    }
    /// Resolves once the backend is marked down (at once if it is).
    pub async fn wait_down(&self) {
        loop {
            let n = self.down.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !self.is_up() {
                return;
            }
            n.await;
        }
    }
    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(backend = %self.name, "backend is up again");
        }
    }
    /// True when the server lexes strings without backslash escapes by
    /// default; the router's parser assumes escapes, so reads stay on the
    /// master.
    pub fn no_backslash_escapes(&self) -> bool {
        self.no_backslash_escapes.load(Ordering::Relaxed)
    }
    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }
    pub(crate) fn record_latency(&self, sample: Duration) {
        let s = sample.as_micros().min(u64::MAX as u128) as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        self.latency_us.store((old * 7 + s) / 8, Ordering::Relaxed);
    }
    pub fn applied_seq(&self) -> Option<u64> {
        match self.applied_seq.load(Ordering::Relaxed) {
            u64::MAX => None,
            s => Some(s),
        }
    }
    /// Sets the last applied `seq` (for tests and external feeds).
    pub fn set_applied_seq(&self, seq: u64) {
        self.applied_seq.store(seq, Ordering::Relaxed);
    }
    /// True when the replica's applied GTID set reaches `g` in its domain.
    pub fn has_gtid(&self, g: &Gtid) -> bool {
        self.applied_gtids
            .read()
            .unwrap()
            .get(&g.domain)
            .is_some_and(|&s| s >= g.seq)
    }
    /// Replaces the applied GTID set (for tests and external feeds).
    pub fn set_applied_gtids(&self, set: &str) {
        *self.applied_gtids.write().unwrap() = parse_gtid_set(set);
    }
}

/// The default [`AppliedPosition`]: compares a MariaDB GTID with the
/// replica's applied GTID set read by the health task, and — when the runtime
/// supplies a GTID → seq mapping — the commit's `seq` with the replica's
/// applied `seq` from `dbmux_offsets`.
pub struct HealthPositions {
    pub replicas: HashMap<String, Arc<BackendHealth>>,
    pub gtid_to_seq: Option<GtidToSeq>,
}

impl AppliedPosition for HealthPositions {
    fn covers(&self, replica: &str, gtid: &Gtid) -> bool {
        let Some(h) = self.replicas.get(replica) else {
            return false;
        };
        if h.has_gtid(gtid) {
            return true;
        }
        match (&self.gtid_to_seq, h.applied_seq()) {
            (Some(map), Some(applied)) => map(gtid).is_some_and(|s| applied >= s),
            _ => false,
        }
    }
}

/// Queries a replica's health task runs besides the ping.
#[derive(Debug, Clone)]
pub struct PositionQueries {
    /// Tried in order; the first that runs and returns a row wins.
    pub applied_gtid: Vec<String>,
    pub applied_seq: String,
}

/// Timing of the health task.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    /// A ping (or connect) not answered within this marks the backend down.
    pub timeout: Duration,
}

/// [`monitor`], started again (after a second) if it ever panics: a backend
/// must not stay unwatched because of one bad answer.
pub async fn supervised(
    pool: Arc<Pool>,
    health: Arc<BackendHealth>,
    queries: Option<PositionQueries>,
    timing: Timing,
) {
    use futures_util::FutureExt;
    loop {
        let run = monitor(pool.clone(), health.clone(), queries.clone(), timing);
        if std::panic::AssertUnwindSafe(run).catch_unwind().await.is_err() {
            tracing::error!(backend = %health.name, "the health check panicked; restarting it");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Runs forever: ping, read positions, sleep (or wake up early for a
/// [`BackendHealth::probe`]). Cancel by dropping the task.
pub async fn monitor(
    pool: Arc<Pool>,
    health: Arc<BackendHealth>,
    queries: Option<PositionQueries>,
    timing: Timing,
) {
    let key = PoolKey {
        caps: SESSION_CAPABILITIES & !super::handshake::CLIENT_MULTI_STATEMENTS,
        collation: DEFAULT_COLLATION,
        account: 0,
    };
    let mut conn: Option<BackendConn> = None;
    let down = |why: &str| {
        tracing::debug!(backend = %health.name, error = %why, "health check failed");
        health.mark_down();
        pool.clear();
    };
    loop {
        if conn.is_none() {
            match BackendConn::connect(&pool.addr, key, timing.timeout).await {
                Ok(c) => {
                    let nbe = c.login_status & super::packet::STATUS_NO_BACKSLASH_ESCAPES != 0;
                    health.no_backslash_escapes.store(nbe, Ordering::Relaxed);
                    conn = Some(c);
                }
                // Out of file descriptors here is not the backend's fault.
                Err(e) if !e.is_backend_down() => {
                    tracing::warn!(backend = %health.name, error = %e, "health check cannot connect")
                }
                Err(e) => down(&e.to_string()),
            }
        }
        if let Some(c) = conn.as_mut() {
            let t = Instant::now();
            let checked = tokio::time::timeout(timing.timeout, async {
                c.ping().await?;
                let latency = t.elapsed();
                let mut applied = String::new();
                let mut seq = u64::MAX;
                if let Some(q) = &queries {
                    for query in &q.applied_gtid {
                        if let Ok(Some(v)) = c.query_value(query).await? {
                            applied = v;
                            break;
                        }
                    }
                    if let Ok(Some(v)) = c.query_value(&q.applied_seq).await? {
                        seq = v.trim().parse().unwrap_or(u64::MAX);
                    }
                }
                Ok::<_, super::backend::BackendError>((latency, applied, seq))
            })
            .await;
            match checked {
                Ok(Ok((latency, applied, seq))) => {
                    health.record_latency(latency);
                    if queries.is_some() {
                        // The seq first: it was read after the GTID set, so
                        // whoever sees the new set and then reads the seq
                        // gets one that includes the set (the cache's
                        // read-your-writes floor relies on it).
                        health.applied_seq.store(seq, Ordering::SeqCst);
                        health.set_applied_gtids(&applied);
                    }
                    health.mark_up();
                }
                Ok(Err(e)) => {
                    down(&e.to_string());
                    conn = None;
                }
                Err(_) => {
                    tracing::warn!(backend = %health.name, timeout = ?timing.timeout, "backend did not answer the health check in time");
                    down("timed out");
                    conn = None;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(timing.interval) => {}
            // A probe asked for by a session; not more often than this.
            () = health.probe.notified() => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// True when a replica is close enough to the master's latest `seq`. Unknown
/// on either side counts as close: lag is a load-balancing signal, while
/// read-your-writes never relies on it.
pub fn lag_ok(health: &BackendHealth, latest: &watch::Receiver<u64>, max_lag: u64) -> bool {
    let latest = *latest.borrow();
    match health.applied_seq() {
        Some(applied) if latest > 0 => latest.saturating_sub(applied) <= max_lag,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_sets_and_coverage() {
        let g: Gtid = "0-1-42".parse().unwrap();
        assert_eq!(
            g,
            Gtid {
                domain: 0,
                server: 1,
                seq: 42
            }
        );
        assert_eq!(g.to_string(), "0-1-42");
        assert!("".parse::<Gtid>().is_err());
        assert!("0-1".parse::<Gtid>().is_err());
        let h = Arc::new(BackendHealth::new("r1"));
        let pos = HealthPositions {
            replicas: [("r1".to_string(), h.clone())].into(),
            gtid_to_seq: None,
        };
        assert!(!pos.covers("r1", &g));
        h.set_applied_gtids("0-1-41,1-1-100");
        assert!(!pos.covers("r1", &g));
        h.set_applied_gtids("0-2-42, 1-1-100");
        assert!(pos.covers("r1", &g));
        // The applier's position text.
        h.set_applied_gtids("mysql:mysql-bin.000003:4711:0-1-42");
        assert!(pos.covers("r1", &g));
        h.set_applied_gtids("mysql:mysql-bin.000003:4711");
        assert!(!pos.covers("r1", &g));
        assert!(!pos.covers("r2", &g));
        // seq mapping path
        h.set_applied_gtids("");
        h.applied_seq.store(10, Ordering::Relaxed);
        let pos = HealthPositions {
            replicas: [("r1".to_string(), h.clone())].into(),
            gtid_to_seq: Some(Arc::new(|g: &Gtid| Some(g.seq / 4))),
        };
        assert!(pos.covers("r1", &g));
        assert!(!pos.covers("r1", &Gtid { seq: 44, ..g }));
    }

    #[test]
    fn lag_rule() {
        let h = BackendHealth::new("r");
        let (tx, rx) = watch::channel(0u64);
        assert!(lag_ok(&h, &rx, 5));
        h.applied_seq.store(100, Ordering::Relaxed);
        assert!(lag_ok(&h, &rx, 5));
        tx.send(106).unwrap();
        assert!(!lag_ok(&h, &rx, 5));
        tx.send(105).unwrap();
        assert!(lag_ok(&h, &rx, 5));
    }
}
