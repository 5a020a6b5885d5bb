//! The accept loop: allowlist, connection limit, accept backoff.
//!
//! A refused client still gets a proper MySQL ERR packet as its first packet
//! (what a server sends instead of the greeting), never a silent close:
//! - address not in `allow` → ER_HOST_NOT_PRIVILEGED (1130);
//! - `max_connections` sessions already open → ER_CON_COUNT_ERROR (1040).
//!
//! Accept errors (EMFILE, ENFILE, ECONNABORTED, …) back off exponentially
//! from 5 ms to 1 s instead of spinning.

use super::connection;
use super::handshake::{ER_CON_COUNT, ER_HOST_NOT_PRIVILEGED};
use super::packet::{err_payload, put_packet};
use super::Shared;
use bytes::BytesMut;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Time a client has to finish the connection phase.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// True when `ip` is inside one of the allowed CIDR blocks. IPv4-mapped IPv6
/// addresses are checked as IPv4.
pub fn allowed(allow: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    allow.iter().any(|net| net.contains(&ip))
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
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared.metrics.refused_total.inc();
            tokio::spawn(refuse(socket, ER_CON_COUNT, "Too many connections".into()));
            continue;
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            connection::run(socket, peer, shared).await;
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
}
