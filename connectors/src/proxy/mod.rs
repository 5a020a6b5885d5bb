//! The front door: a MySQL-protocol proxy with read/write split,
//! read-your-writes, an IP allowlist and TLS.
//!
//! # Shape
//! `listener` accepts and filters clients → `handshake` authenticates them
//! against the users in [`config::ProxyConfig`] → `connection` runs one
//! session: each command is decoded (`command`), SQL is classified
//! (`router`), and the command is sent on one of the session's backend
//! connections (`backend`), whose reply is forwarded to the client frame by
//! frame, untouched (`packet`). `health` pings every backend and reads the
//! replicas' applied positions.
//!
//! # Sessions and backend connections
//! A session takes a master connection the first time it needs the master and
//! keeps it until it ends, so transactions, locks, temporary tables and user
//! variables behave as on a direct connection. It takes one replica
//! connection for reads and keeps it while that replica is healthy. Both come
//! from pools keyed by the client's capability flags and collation. When the
//! session ends, a replica connection it left no state on goes back to its
//! pool; master connections and connections with session settings or
//! prepared statements are closed (`COM_RESET_CONNECTION` would restore the
//! server's global character set, not the pool key's).
//!
//! # Read-your-writes
//! After a statement that may have written has committed on the master (the
//! master's status flags say no transaction is open), the session reads
//! `@@last_gtid` on the same connection. Until the chosen replica's applied
//! position covers that GTID ([`health::AppliedPosition`]), the session's
//! reads go to the master. Users configured `consistency = "eventual"` skip
//! this.
//!
//! # Failure
//! A replica whose connection breaks, or that answers with a "going away"
//! error before any byte reached the client, is marked down and the read is
//! retried on the master: the client sees no error. A broken master
//! connection ends the client session with an error (its state is lost).

pub mod backend;
pub mod cache;
pub mod command;
pub mod config;
pub mod connection;
pub mod handshake;
pub mod health;
pub mod lexer;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod packet;
pub mod router;

use backend::{Pool, PoolKey};
use config::{BackendAddr, ProxyConfig};
use health::{AppliedPosition, BackendHealth, GtidToSeq, HealthPositions, PositionQueries};
use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Errors starting the proxy. All are definite: fix the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid proxy configuration:\n  {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Config(Vec<config::ConfigProblem>),
    #[error("TLS setup: {0}")]
    Tls(#[from] handshake::HandshakeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// A replica as the sessions see it.
pub struct Replica {
    pub name: String,
    pub pool: Arc<Pool>,
    pub health: Arc<BackendHealth>,
}

/// State shared by every session.
pub struct Shared {
    pub cfg: ProxyConfig,
    pub master: Arc<Pool>,
    pub master_health: Arc<BackendHealth>,
    pub replicas: Vec<Replica>,
    pub positions: Arc<dyn AppliedPosition>,
    pub latest_seq: watch::Receiver<u64>,
    pub version: String,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub metrics: metrics::Metrics,
    pub next_conn_id: AtomicU32,
    /// Open sessions by proxy thread id (for `KILL`).
    pub sessions: std::sync::Mutex<HashMap<u32, Arc<connection::SessionHandle>>>,
    /// Client bytes all sessions may hold (`max_memory`).
    pub memory: Arc<memory::Budget>,
    /// Backend accounts per proxy user: (master, replica) [`PoolKey::account`].
    pub accounts: HashMap<String, (u16, u16)>,
    /// Failed logins and login-phase connections per client address.
    pub door: Arc<listener::Door>,
    /// The result cache, when `[proxy.cache]` is configured and enabled.
    pub cache: Option<Arc<cache::Cache>>,
}

impl Shared {
    /// The open session with proxy thread id `id`.
    pub fn session(&self, id: u32) -> Option<Arc<connection::SessionHandle>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }
}

/// The per-user backend accounts of `cfg` for one backend at `base`:
/// `(user name, account)` in [`PoolKey::account`] order (from 1).
fn user_accounts(cfg: &ProxyConfig, base: &BackendAddr, replica: bool) -> Vec<(String, BackendAddr)> {
    cfg.users
        .iter()
        .filter_map(|u| {
            let (user, password) = if replica {
                u.replica_account()?
            } else {
                u.master_account()?
            };
            Some((
                u.name.clone(),
                BackendAddr {
                    user: user.to_string(),
                    password: password.to_string(),
                    ..base.clone()
                },
            ))
        })
        .collect()
}

/// One backend's health now (for the admin status page).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendStatus {
    pub name: String,
    /// `master` or `replica`.
    pub role: &'static str,
    pub up: bool,
    /// Smoothed ping round trip.
    pub ping_seconds: f64,
    /// The replica's last applied `seq`, when known.
    pub applied_seq: Option<u64>,
    pub open_connections: u64,
    pub idle_connections: u64,
}

/// A configured proxy, ready to [`Proxy::run`].
pub struct Proxy {
    pub shared: Arc<Shared>,
}

/// Idle connections kept per backend and pool key.
const MAX_IDLE_PER_KEY: usize = 256;

impl Proxy {
    /// Validates the configuration, loads TLS material and asks the master
    /// for its version (best effort: a master that is down now may be up by
    /// the time clients arrive).
    ///
    /// `latest_seq` carries the master stream's latest captured `seq` (0 =
    /// unknown); `gtid_to_seq` maps a commit to its `seq` when the pipeline
    /// can (see [`health::HealthPositions`]).
    pub async fn new(
        cfg: ProxyConfig,
        latest_seq: watch::Receiver<u64>,
        gtid_to_seq: Option<GtidToSeq>,
    ) -> Result<Proxy, ProxyError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(ProxyError::Config(problems));
        }
        let tls = match &cfg.tls {
            Some(t) => Some(handshake::tls_acceptor(&t.cert, &t.key)?),
            None => None,
        };
        let master_addr: BackendAddr = cfg
            .master
            .parse()
            .map_err(|_| ProxyError::Config(cfg.validate()))?;
        let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let mut accounts: HashMap<String, (u16, u16)> = HashMap::new();
        let master_accounts = user_accounts(&cfg, &master_addr, false);
        for (i, (user, _)) in master_accounts.iter().enumerate() {
            accounts.entry(user.clone()).or_default().0 = i as u16 + 1;
        }
        let master = Arc::new(
            Pool::new("master", master_addr, MAX_IDLE_PER_KEY)
                .with_accounts(master_accounts.into_iter().map(|a| a.1).collect())
                .with_connect_timeout(connect_timeout),
        );
        let mut replicas = Vec::new();
        for r in &cfg.replicas {
            let Ok(addr) = r.url.parse() else { continue };
            let list = user_accounts(&cfg, &addr, true);
            for (i, (user, _)) in list.iter().enumerate() {
                // Every replica lists the same users in the same order.
                accounts.entry(user.clone()).or_default().1 = i as u16 + 1;
            }
            replicas.push(Replica {
                name: r.name.clone(),
                pool: Arc::new(
                    Pool::new(&r.name, addr, MAX_IDLE_PER_KEY)
                        .with_accounts(list.into_iter().map(|a| a.1).collect())
                        .with_connect_timeout(connect_timeout),
                ),
                health: Arc::new(BackendHealth::new(&r.name)),
            });
        }
        let positions = Arc::new(HealthPositions {
            replicas: replicas
                .iter()
                .map(|r| (r.name.clone(), r.health.clone()))
                .collect(),
            gtid_to_seq,
        });
        let version = match &cfg.server_version {
            Some(v) => v.clone(),
            None => {
                let key = PoolKey {
                    caps: 0,
                    collation: handshake::DEFAULT_COLLATION,
                    account: 0,
                };
                match backend::BackendConn::connect(&master.addr, key, Duration::from_secs(2)).await {
                    Ok(c) => format!("{}-dbmux", c.server_version),
                    Err(e) => {
                        tracing::warn!(error = %e, "master not reachable at start-up");
                        "5.5.5-10.11.0-MariaDB-dbmux".to_string()
                    }
                }
            }
        };
        let cache = match cfg.cache.as_ref().filter(|c| c.enabled) {
            Some(c) => Some(Arc::new(cache::Cache::new(c.clone()).map_err(|e| {
                ProxyError::Config(vec![config::ConfigProblem {
                    path: "proxy.cache.redis".into(),
                    message: e.to_string(),
                }])
            })?)),
            None => None,
        };
        let memory = memory::Budget::new(cfg.max_memory);
        let door = Arc::new(listener::Door::new(&cfg));
        Ok(Proxy {
            shared: Arc::new(Shared {
                sessions: std::sync::Mutex::new(HashMap::new()),
                memory,
                accounts,
                door,
                cache,
                cfg,
                master,
                master_health: Arc::new(BackendHealth::new("master")),
                replicas,
                positions,
                latest_seq,
                version,
                tls,
                metrics: metrics::Metrics::default(),
                next_conn_id: AtomicU32::new(1),
            }),
        })
    }

    /// Everything in one call, for the runtime: validate, bind, serve until
    /// `shutdown`. Errors are definite (configuration, TLS files, address in
    /// use).
    pub async fn serve(
        cfg: ProxyConfig,
        latest_seq: watch::Receiver<u64>,
        gtid_to_seq: Option<GtidToSeq>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProxyError> {
        let proxy = Proxy::new(cfg, latest_seq, gtid_to_seq).await?;
        let listener = proxy.bind().await?;
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "proxy listening");
        proxy.run(listener, shutdown).await;
        Ok(())
    }

    /// Registers the proxy's metrics in the process's registry: statement
    /// counters and latency by route and outcome, session and hardening
    /// counters (refused packets, panics, kills), and — read at scrape time —
    /// the client memory in use and per-backend health, ping latency, applied
    /// seq and pool use (the pools of every backend account together).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let s = &self.shared;
        let backends = std::iter::once((&s.master_health, &s.master))
            .chain(s.replicas.iter().map(|r| (&r.health, &r.pool)))
            .map(|(health, pool)| metrics::BackendView {
                health: health.clone(),
                pool: pool.clone(),
            })
            .collect();
        s.metrics.register(registry, backends, s.memory.clone());
        if let Some(c) = &s.cache {
            c.metrics.register(registry);
        }
    }

    /// The backends as the status page shows them: the master first.
    pub fn backends(&self) -> Vec<BackendStatus> {
        let s = &self.shared;
        std::iter::once(("master", &s.master_health, &s.master))
            .chain(s.replicas.iter().map(|r| ("replica", &r.health, &r.pool)))
            .map(|(role, h, pool)| BackendStatus {
                name: h.name.clone(),
                role,
                up: h.is_up(),
                ping_seconds: h.latency_us() as f64 / 1e6,
                applied_seq: h.applied_seq(),
                open_connections: pool.open_connections(),
                idle_connections: pool.idle_connections() as u64,
            })
            .collect()
    }

    /// Raises the open files limit (see [`listener::raise_fd_limit`]) and
    /// binds the configured listen address: once the address is known (and
    /// announced), the limit is the one clients will meet.
    pub async fn bind(&self) -> Result<TcpListener, ProxyError> {
        listener::raise_fd_limit(self.shared.cfg.max_connections);
        let addr = self.shared.cfg.listen.clone();
        TcpListener::bind(&addr)
            .await
            .map_err(|source| ProxyError::Bind { addr, source })
    }

    /// Runs health checks and the accept loop until `shutdown` resolves.
    /// Sessions already open finish on their own.
    pub async fn run(self, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
        let s = &self.shared;
        let timing = health::Timing {
            interval: Duration::from_millis(s.cfg.health_interval_ms),
            timeout: Duration::from_millis(s.cfg.health_timeout_ms),
        };
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(health::supervised(
            s.master.clone(),
            s.master_health.clone(),
            None,
            timing,
        )));
        for (r, rc) in s.replicas.iter().zip(&s.cfg.replicas) {
            let q = PositionQueries {
                applied_gtid: rc.gtid_queries(),
                applied_seq: rc.seq_query(),
            };
            tasks.push(tokio::spawn(health::supervised(
                r.pool.clone(),
                r.health.clone(),
                Some(q),
                timing,
            )));
        }
        if let Some(c) = &s.cache {
            tasks.push(tokio::spawn(c.clone().watch()));
        }
        listener::serve(listener, s.clone(), shutdown).await;
        for t in tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_name_routes_and_backends() {
        let (native, _) = config::hash_password("pw");
        let cfg: ProxyConfig = toml::from_str(&format!(
            r#"
server_version = "10.11.0-test"
master = "mysql://u:p@127.0.0.1:1/"
[[replicas]]
name = "r1"
url = "mysql://u:p@127.0.0.1:2/"
[[users]]
name = "app"
mysql_native_password = "{native}"
"#
        ))
        .unwrap();
        let (_tx, rx) = watch::channel(0);
        let p = Proxy::new(cfg, rx, None).await.unwrap();
        p.shared
            .metrics
            .record(1, metrics::OK, Duration::from_micros(300));
        let mut registry = prometheus_client::registry::Registry::default();
        p.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("dbmux_proxy_queries_total{route=\"replica\",outcome=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("dbmux_proxy_backend_up{backend=\"r1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("dbmux_proxy_backend_ping_seconds{backend=\"master\"}"));
        assert!(text.contains("dbmux_proxy_pool_idle_connections{backend=\"master\"} 0\n"));
        assert!(text.contains("dbmux_proxy_backend_connects_total{backend=\"r1\"} 0\n"));
        // Unknown applied seq: no sample rather than a made-up one.
        assert!(!text.contains("dbmux_proxy_backend_applied_seq{"), "{text}");
        let b = p.backends();
        assert_eq!((b[0].name.as_str(), b[0].role), ("master", "master"));
        assert_eq!((b[1].name.as_str(), b[1].role), ("r1", "replica"));
        // An invalid section is refused with every problem listed.
        let bad: ProxyConfig = toml::from_str("master = \"nope\"\n").unwrap();
        let err = Proxy::new(bad, watch::channel(0).1, None)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("proxy.master") && err.contains("proxy.users"),
            "{err}"
        );
    }
}
