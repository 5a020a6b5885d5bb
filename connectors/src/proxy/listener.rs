//! The accept loop: allowlist, connection limits, login throttling, accept
//! backoff, file descriptors.
//!
//! A refused client still gets a proper MySQL ERR packet as its first packet
//! (what a server sends instead of the greeting), never a silent close:
//! - address not in `allow` → ER_HOST_NOT_PRIVILEGED (1130);
//! - `max_connections` sessions already open, `max_prelogin_per_address`
//!   connections of its address still logging in, or no file descriptor
//!   left → ER_CON_COUNT_ERROR (1040);
//! - `max_login_failures` failed logins from its address within
//!   `login_block_secs` → ER_HOST_IS_BLOCKED (1129) until that time passed
//!   (a successful login does not clear the count: with an account of its
//!   own an attacker could otherwise reset it between guesses).
//!
//! # File descriptors
//! At start the proxy raises its soft `RLIMIT_NOFILE` to the hard limit and
//! warns when `max_connections` cannot be served within it (each session
//! needs its client socket and up to two backend connections). When
//! `accept` fails for lack of descriptors (EMFILE/ENFILE) the loop closes a
//! descriptor it keeps in reserve, accepts the waiting client, sends it 1040
//! and closes it, then takes the reserve again: clients are told, not left
//! hanging in the backlog. Other accept errors back off exponentially from
//! 5 ms to 1 s instead of spinning.
//!
//! # Panics
//! Each session runs in its own task and a panic in it is caught there: it
//! ends that session, is logged and counted, and nothing else stops (the
//! release profile unwinds; `panic = "abort"` would turn any such bug into
//! the loss of every session and, under `dbmux run`, of the pipeline).

use super::connection;
use super::handshake::{ER_CON_COUNT, ER_HOST_NOT_PRIVILEGED};
use super::packet::{err_payload, put_packet};
use super::Shared;
use bytes::BytesMut;
use futures_util::FutureExt;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Time a client has to finish the connection phase.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub const ER_HOST_IS_BLOCKED: u16 = 1129;

/// Addresses remembered for login throttling, at most.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// True when `ip` is inside one of the allowed CIDR blocks. IPv4-mapped IPv6
/// addresses are checked as IPv4.
pub fn allowed(allow: &[ipnet::IpNet], ip: IpAddr) -> bool {
    allow.iter().any(|net| net.contains(&canonical(ip)))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Per-address state of the door: failed logins (throttling) and
/// connections in the login phase.
pub struct Door {
    max_failures: u32,
    block: Duration,
    max_prelogin: usize,
    /// Failures and the start of their window, per address.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    prelogin: Mutex<HashMap<IpAddr, usize>>,
}

impl Door {
    pub fn new(cfg: &super::config::ProxyConfig) -> Door {
        Door {
            max_failures: cfg.max_login_failures,
            block: Duration::from_secs(cfg.login_block_secs),
            max_prelogin: cfg.max_prelogin_per_address,
            failures: Mutex::new(HashMap::new()),
            prelogin: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while `ip` has too many recent failed logins.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let mut f = self.failures();
        match f.get(&ip) {
            Some(&(_, since)) if since.elapsed() >= self.block => {
                f.remove(&ip);
                false
            }
            Some(&(n, _)) => n >= self.max_failures,
            None => false,
        }
    }

    /// Counts a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let ip = canonical(ip);
        let mut f = self.failures();
        if f.len() >= MAX_TRACKED_ADDRESSES {
            let block = self.block;
            f.retain(|_, (_, since)| since.elapsed() < block);
            if f.len() >= MAX_TRACKED_ADDRESSES {
                // Still full of live entries: forget the oldest half rather
                // than grow without bound.
                let mut ages: Vec<Instant> = f.values().map(|v| v.1).collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                f.retain(|_, (_, since)| *since > cut);
            }
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= self.block {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    /// A slot for one more connection of `ip` in the login phase, or `None`
    /// when the address holds `max_prelogin_per_address` already.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<PreLogin> {
        let ip = canonical(ip);
        let mut p = self.prelogin.lock().unwrap_or_else(|e| e.into_inner());
        let n = p.entry(ip).or_insert(0);
        if *n >= self.max_prelogin {
            return None;
        }
        *n += 1;
        Some(PreLogin {
            door: self.clone(),
            ip,
        })
    }
}

/// A connection of one address in the login phase; released when dropped.
pub struct PreLogin {
    door: Arc<Door>,
    ip: IpAddr,
}

impl Drop for PreLogin {
    fn drop(&mut self) {
        let mut p = self.door.prelogin.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = p.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.ip);
            }
        }
    }
}

async fn refuse(mut socket: TcpStream, code: u16, message: String) {
    let mut out = BytesMut::new();
    put_packet(&mut out, 0, &err_payload(code, "HY000", &message));
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = socket.write_all(&out).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

/// Raises the soft limit of open files to the hard limit and warns when
/// `max_connections` needs more than it allows.
pub fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum) {
        if cur < max {
            lim.current = Some(max);
            match setrlimit(Resource::Nofile, lim) {
                Ok(()) => tracing::info!(from = cur, to = max, "raised the open files limit"),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
            }
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    // A client socket and up to two backend connections per session, plus
    // health checks, pools and the rest of the process.
    let needed = max_connections as u64 * 3 + 256;
    if let Some(limit) = now {
        if limit < needed {
            tracing::warn!(
                max_connections,
                needed,
                limit,
                "the open files limit is too low for proxy.max_connections: raise `ulimit -n` (LimitNOFILE=) \
                 or lower max_connections; clients beyond the limit get error 1040"
            );
        }
    }
}

fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Accepts clients until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let allow: Vec<ipnet::IpNet> = shared
        .cfg
        .allow
        .iter()
        .filter_map(|c| super::config::parse_cidr(c))
        .collect();
    let slots = Arc::new(Semaphore::new(shared.cfg.max_connections));
    let door = shared.door.clone();
    // One descriptor kept in reserve, so that a client can still be told
    // "too many connections" when the process has none left.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) if out_of_fds(&e) && reserve.is_some() => {
                shared.metrics.refused_total.inc();
                // Frees one descriptor for the waiting client.
                drop(reserve.take());
                if let Ok((socket, peer)) = listener.accept().await {
                    tracing::warn!(%peer, "out of file descriptors; refusing a client with 1040");
                    refuse(socket, ER_CON_COUNT, "Too many connections".into()).await;
                }
                reserve = std::fs::File::open("/dev/null").ok();
                if reserve.is_none() {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                if reserve.is_none() {
                    reserve = std::fs::File::open("/dev/null").ok();
                }
                continue;
            }
        };
        if !allowed(&allow, peer.ip()) {
            shared.metrics.refused_total.inc();
            tracing::info!(%peer, "client address not in the allowlist");
            let msg = format!("Host '{}' is not allowed to connect to this server", peer.ip());
            tokio::spawn(refuse(socket, ER_HOST_NOT_PRIVILEGED, msg));
            continue;
        }
        if door.blocked(peer.ip()) {
            shared.metrics.refused_total.inc();
            tracing::info!(%peer, "client address blocked after failed logins");
            let msg = format!(
                "Host '{}' is blocked because of many failed logins; try again later",
                peer.ip()
            );
            tokio::spawn(refuse(socket, ER_HOST_IS_BLOCKED, msg));
            continue;
        }
        let Some(prelogin) = door.enter(peer.ip()) else {
            shared.metrics.refused_total.inc();
            tracing::info!(%peer, "too many connections of this address in the login phase");
            tokio::spawn(refuse(socket, ER_CON_COUNT, "Too many connections".into()));
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared.metrics.refused_total.inc();
            tokio::spawn(refuse(socket, ER_CON_COUNT, "Too many connections".into()));
            continue;
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let session = connection::run(socket, peer, shared.clone(), prelogin);
            // A panic ends this session only (its guards give back the
            // connection slot and the gauges).
            if let Err(panic) = std::panic::AssertUnwindSafe(session).catch_unwind().await {
                shared.metrics.session_panics.inc();
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(%peer, panic = %connection::clip(&what, 200), "a session panicked; it was closed");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::config::parse_cidr;

    #[test]
    fn allowlist_matches_cidrs() {
        let allow: Vec<_> = ["127.0.0.1/32", "10.1.0.0/16", "::1"]
            .iter()
            .map(|c| parse_cidr(c).unwrap())
            .collect();
        assert!(allowed(&allow, "127.0.0.1".parse().unwrap()));
        assert!(!allowed(&allow, "127.0.0.2".parse().unwrap()));
        assert!(allowed(&allow, "10.1.200.3".parse().unwrap()));
        assert!(!allowed(&allow, "10.2.0.1".parse().unwrap()));
        assert!(allowed(&allow, "::1".parse().unwrap()));
        assert!(allowed(&allow, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!allowed(&[], "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn door_throttles_failures_and_prelogin_per_address() {
        let cfg: crate::proxy::config::ProxyConfig = toml::from_str(
            "master = \"mysql://u:p@127.0.0.1:1/\"\nmax_login_failures = 3\nmax_prelogin_per_address = 2\n",
        )
        .unwrap();
        let door = Arc::new(Door::new(&cfg));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!door.blocked(a));
            door.failed(a);
        }
        assert!(door.blocked(a));
        assert!(!door.blocked(b));
        let x = door.enter(a).unwrap();
        let _y = door.enter(a).unwrap();
        assert!(door.enter(a).is_none());
        assert!(door.enter(b).is_some());
        drop(x);
        assert!(door.enter(a).is_some());
    }
}
