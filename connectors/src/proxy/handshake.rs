//! Connection phase: greeting, optional TLS upgrade, authentication.
//!
//! # Plugins
//! The greeting offers `default_auth_plugin`. When the client answers with
//! another plugin than the user's, the proxy sends an AuthSwitchRequest with
//! a fresh nonce.
//! - `mysql_native_password`: SHA1 challenge-response against the stored
//!   SHA1(SHA1(pw)).
//! - `caching_sha2_password`: the fast path checks the SHA256 scramble against
//!   the stored SHA256(SHA256(pw)) and answers `fast_auth_success` (0x03). A
//!   user with `require_full_auth` gets `perform_full_authentication` (0x04)
//!   instead: over TLS the client then sends its password in clear, which is
//!   checked against the same hash. Without TLS a client would ask for the
//!   server's RSA key (0x02); dbmux has no RSA key exchange and refuses with
//!   ER_ACCESS_DENIED saying that TLS is required (validation already rejects
//!   `require_full_auth` without `[proxy.tls]`).
//!
//! Unknown users and wrong passwords get the same "Access denied" error; no
//! backend is contacted before authentication succeeds.
//!
//! # No user-name probing
//! A known user whose plugin differs from the one the client answered with
//! gets an AuthSwitchRequest; if an unknown user got an immediate refusal
//! instead, the difference would tell which names exist. An unknown name is
//! therefore handled as a user of a plugin chosen by a keyed hash of the
//! name (keyed with the configured password hashes: stable across restarts
//! with the same users, unpredictable without them), goes through the same
//! switch and verification against a hash nobody knows, and is refused the
//! same way.
//!
//! # Limits
//! Packets before login may be at most [`MAX_LOGIN_PACKET`] bytes; a bigger
//! frame header is refused before its bytes are read. Client-supplied
//! names appear in logs and messages clipped to [`MAX_NAME_IN_MESSAGES`]
//! characters.

use super::config::{parse_native_hash, parse_sha2_hash, AuthPlugin, ProxyConfig, UserConfig};
use super::packet::{err_payload, get_lenenc_bytes, get_null_str, ok_payload, PacketIo, STATUS_AUTOCOMMIT};
use bytes::{BufMut, BytesMut};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub const CLIENT_LONG_PASSWORD: u32 = 0x0000_0001;
pub const CLIENT_FOUND_ROWS: u32 = 0x0000_0002;
pub const CLIENT_LONG_FLAG: u32 = 0x0000_0004;
pub const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
pub const CLIENT_LOCAL_FILES: u32 = 0x0000_0080;
pub const CLIENT_IGNORE_SPACE: u32 = 0x0000_0100;
pub const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
pub const CLIENT_INTERACTIVE: u32 = 0x0000_0400;
pub const CLIENT_SSL: u32 = 0x0000_0800;
pub const CLIENT_TRANSACTIONS: u32 = 0x0000_2000;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
pub const CLIENT_MULTI_STATEMENTS: u32 = 0x0001_0000;
pub const CLIENT_MULTI_RESULTS: u32 = 0x0002_0000;
pub const CLIENT_PS_MULTI_RESULTS: u32 = 0x0004_0000;
pub const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
pub const CLIENT_CONNECT_ATTRS: u32 = 0x0010_0000;
pub const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x0020_0000;
pub const CLIENT_SESSION_TRACK: u32 = 0x0080_0000;
pub const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;

/// What the proxy offers clients. No LOCAL INFILE (a file read on the proxy's
/// host would be a hole), no session tracking, no compression.
pub const SERVER_CAPABILITIES: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_IGNORE_SPACE
    | CLIENT_PROTOCOL_41
    | CLIENT_INTERACTIVE
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC
    | CLIENT_DEPRECATE_EOF;

/// Capabilities that change what the server sends or how it behaves; backend
/// connections are opened (and pooled) with the client's choice of these so
/// that responses can be forwarded byte for byte.
pub const SESSION_CAPABILITIES: u32 = CLIENT_FOUND_ROWS
    | CLIENT_IGNORE_SPACE
    | CLIENT_INTERACTIVE
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_DEPRECATE_EOF;

pub const ER_ACCESS_DENIED: u16 = 1045;
pub const ER_HOST_NOT_PRIVILEGED: u16 = 1130;
pub const ER_CON_COUNT: u16 = 1040;
pub const ER_HANDSHAKE: u16 = 1043;

/// utf8mb4_general_ci, the greeting's default collation.
pub const DEFAULT_COLLATION: u8 = 45;

pub const ER_NET_PACKET_TOO_LARGE: u16 = 1153;

/// The largest packet a client may send before it is logged in (a
/// handshake response with connection attributes is a few KiB).
pub const MAX_LOGIN_PACKET: usize = 128 * 1024;

/// Characters of a client-supplied name shown in logs and error messages.
pub const MAX_NAME_IN_MESSAGES: usize = 64;

/// `s` cut to `max` characters (with `…` when cut), for logs and messages.
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]).into(),
        None => s.into(),
    }
}

/// The plugin an unknown user name is handled with (see the module doc).
fn decoy_plugin(cfg: &ProxyConfig, name: &str) -> AuthPlugin {
    let plugins: Vec<AuthPlugin> = {
        let mut v: Vec<AuthPlugin> = cfg.users.iter().map(|u| u.auth_plugin).collect();
        v.dedup();
        if v.is_empty() {
            vec![cfg.default_auth_plugin]
        } else {
            v
        }
    };
    let mut h = Sha256::new();
    for u in &cfg.users {
        h.update(u.mysql_native_password.as_deref().unwrap_or("").as_bytes());
        h.update(u.caching_sha2_password.as_deref().unwrap_or("").as_bytes());
    }
    h.update(name.as_bytes());
    let d = h.finalize();
    plugins[d[0] as usize % plugins.len()]
}

/// A client connection before or after the TLS upgrade.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<Rewind>>),
    /// Only while the TLS handshake owns the socket.
    Detached,
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

/// A socket with bytes already read off it put back in front: a client may
/// send its TLS ClientHello in the same segment as the SSLRequest.
pub struct Rewind {
    pre: BytesMut,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.pre.is_empty() {
            let n = me.pre.len().min(buf.remaining());
            buf.put_slice(&me.pre.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream detached")
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Detached => Poll::Ready(Ok(())),
        }
    }
}

/// Errors of the connection phase.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("client closed the connection during the handshake")]
    Closed,
    #[error("malformed handshake response")]
    Malformed,
    /// Already reported to the client with an ERR packet.
    #[error("refused: {0}")]
    Refused(String),
    #[error("tls: {0}")]
    Tls(String),
}

/// Loads the PEM certificate chain and key into a TLS acceptor.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, HandshakeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| HandshakeError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(HandshakeError::Tls(format!("{}: no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| HandshakeError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HandshakeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| HandshakeError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// A 20-byte nonce of printable, non-NUL bytes (what MySQL servers send).
pub fn nonce() -> [u8; 20] {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut n = [0u8; 20];
    for b in &mut n {
        *b = rng.gen_range(0x21..0x7F);
    }
    n
}

/// The server greeting (HandshakeV10) payload.
pub fn greeting(version: &str, conn_id: u32, nonce: &[u8; 20], plugin: AuthPlugin, tls: bool) -> BytesMut {
    let caps = SERVER_CAPABILITIES | if tls { CLIENT_SSL } else { 0 };
    let mut p = BytesMut::with_capacity(128);
    p.put_u8(10);
    p.put_slice(version.as_bytes());
    p.put_u8(0);
    p.put_u32_le(conn_id);
    p.put_slice(&nonce[..8]);
    p.put_u8(0);
    p.put_u16_le(caps as u16);
    p.put_u8(DEFAULT_COLLATION);
    p.put_u16_le(STATUS_AUTOCOMMIT);
    p.put_u16_le((caps >> 16) as u16);
    p.put_u8(21);
    p.put_slice(&[0; 10]);
    p.put_slice(&nonce[8..]);
    p.put_u8(0);
    p.put_slice(plugin.name().as_bytes());
    p.put_u8(0);
    p
}

/// The client's HandshakeResponse41.
#[derive(Debug, Clone, Default)]
pub struct HandshakeResponse {
    pub caps: u32,
    pub collation: u8,
    pub user: String,
    pub auth: Vec<u8>,
    pub db: Option<String>,
    pub plugin: Option<Vec<u8>>,
}

/// True when the packet is an SSLRequest (the first 32 bytes of a response).
pub fn is_ssl_request(p: &[u8]) -> bool {
    p.len() == 32 && u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & CLIENT_SSL != 0
}

pub fn parse_response(p: &[u8]) -> Option<HandshakeResponse> {
    if p.len() < 32 {
        return None;
    }
    let caps = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    if caps & CLIENT_PROTOCOL_41 == 0 {
        return None;
    }
    let collation = p[8];
    let mut s = &p[32..];
    let user = String::from_utf8_lossy(get_null_str(&mut s)?).into_owned();
    let auth = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
        get_lenenc_bytes(&mut s)?.to_vec()
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        let n = *s.first()? as usize;
        let a = s.get(1..1 + n)?.to_vec();
        s = &s[1 + n..];
        a
    } else {
        get_null_str(&mut s)?.to_vec()
    };
    let mut db = None;
    if caps & CLIENT_CONNECT_WITH_DB != 0 && !s.is_empty() {
        let d = get_null_str(&mut s).unwrap_or(s);
        if !d.is_empty() {
            db = Some(String::from_utf8_lossy(d).into_owned());
        }
    }
    let mut plugin = None;
    if caps & CLIENT_PLUGIN_AUTH != 0 && !s.is_empty() {
        plugin = Some(get_null_str(&mut s).unwrap_or(s).to_vec());
    }
    Some(HandshakeResponse {
        caps,
        collation,
        user,
        auth,
        db,
        plugin,
    })
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Client side of `mysql_native_password`: SHA1(pw) ⊕ SHA1(nonce ‖ SHA1(SHA1(pw))).
pub fn scramble_native(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let h1 = Sha1::digest(password);
    let h2 = Sha1::digest(h1);
    let mut m = Sha1::new();
    m.update(nonce);
    m.update(h2);
    xor(&h1, &m.finalize())
}

/// Client side of the `caching_sha2_password` fast path:
/// SHA256(pw) ⊕ SHA256(SHA256(SHA256(pw)) ‖ nonce).
pub fn scramble_sha2(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let h1 = Sha256::digest(password);
    let h2 = Sha256::digest(h1);
    let mut m = Sha256::new();
    m.update(h2);
    m.update(nonce);
    xor(&h1, &m.finalize())
}

/// Checks a `mysql_native_password` scramble against SHA1(SHA1(pw)).
pub fn verify_native(stored: &[u8; 20], nonce: &[u8], scramble: &[u8]) -> bool {
    if scramble.is_empty() {
        return *stored == <[u8; 20]>::from(Sha1::digest(Sha1::digest(b"")));
    }
    if scramble.len() != 20 {
        return false;
    }
    let mut m = Sha1::new();
    m.update(nonce);
    m.update(stored);
    let h1 = xor(scramble, &m.finalize());
    ct_eq(&Sha1::digest(&h1), stored)
}

/// Checks a `caching_sha2_password` fast-path scramble against SHA256(SHA256(pw)).
pub fn verify_sha2(stored: &[u8; 32], nonce: &[u8], scramble: &[u8]) -> bool {
    if scramble.is_empty() {
        return *stored == <[u8; 32]>::from(Sha256::digest(Sha256::digest(b"")));
    }
    if scramble.len() != 32 {
        return false;
    }
    let mut m = Sha256::new();
    m.update(stored);
    m.update(nonce);
    let h1 = xor(scramble, &m.finalize());
    ct_eq(&Sha256::digest(&h1), stored)
}

/// Checks a clear-text password against whichever hashes the user has.
pub fn verify_clear(user: &UserConfig, password: &[u8]) -> bool {
    let sha2_ok = user
        .caching_sha2_password
        .as_deref()
        .and_then(parse_sha2_hash)
        .map(|h| ct_eq(&Sha256::digest(Sha256::digest(password)), &h));
    let native_ok = user
        .mysql_native_password
        .as_deref()
        .and_then(parse_native_hash)
        .map(|h| ct_eq(&Sha1::digest(Sha1::digest(password)), &h));
    sha2_ok.or(native_ok).unwrap_or(false)
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The outcome of a successful connection phase.
pub struct Authenticated {
    pub io: PacketIo<ClientStream>,
    pub user: UserConfig,
    pub caps: u32,
    pub collation: u8,
    pub db: Option<String>,
}

/// Runs the whole connection phase on an accepted socket. On refusal the
/// client has already received an ERR packet.
pub async fn accept(
    socket: TcpStream,
    cfg: &ProxyConfig,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    version: &str,
    conn_id: u32,
) -> Result<Authenticated, HandshakeError> {
    let mut io = PacketIo::new(ClientStream::Plain(socket));
    io.max_packet = MAX_LOGIN_PACKET;
    let challenge = nonce();
    io.send(
        0,
        &greeting(
            version,
            conn_id,
            &challenge,
            cfg.default_auth_plugin,
            tls.is_some(),
        ),
    )
    .await?;
    let mut pkt = match io.read_packet().await {
        Ok(p) => p.ok_or(HandshakeError::Closed)?,
        Err(e) => return Err(too_large(&mut io, e).await),
    };
    if is_ssl_request(&pkt.payload) {
        let acceptor = tls.ok_or(HandshakeError::Malformed)?;
        let ClientStream::Plain(tcp) = std::mem::replace(&mut io.stream, ClientStream::Detached) else {
            return Err(HandshakeError::Malformed);
        };
        let pre = io.rbuf.split();
        let stream = acceptor
            .accept(Rewind { pre, inner: tcp })
            .await
            .map_err(|e| HandshakeError::Tls(e.to_string()))?;
        io.stream = ClientStream::Tls(Box::new(stream));
        pkt = match io.read_packet().await {
            Ok(p) => p.ok_or(HandshakeError::Closed)?,
            Err(e) => return Err(too_large(&mut io, e).await),
        };
    }
    let seq = pkt.seq.wrapping_add(1);
    let Some(resp) = parse_response(&pkt.payload) else {
        tracing::debug!(len = pkt.payload.len(), head = ?&pkt.payload[..pkt.payload.len().min(40)], tls = io.stream.is_tls(), "unreadable handshake response");
        io.send(seq, &err_payload(ER_HANDSHAKE, "08S01", "Bad handshake"))
            .await?;
        return Err(HandshakeError::Malformed);
    };
    let login = Login {
        user: &resp.user,
        caps: resp.caps,
        plugin: resp.plugin.as_deref(),
        auth: resp.auth.clone(),
    };
    let user = authenticate(&mut io, cfg, login, challenge, seq, false).await?;
    Ok(Authenticated {
        io,
        user,
        caps: resp.caps,
        collation: resp.collation,
        db: resp.db,
    })
}

/// Tells the client its packet was too big, when that is what `e` says.
async fn too_large(io: &mut PacketIo<ClientStream>, e: io::Error) -> HandshakeError {
    if super::packet::ReadLimit::of(&e).is_some() {
        let _ = io
            .send(
                2,
                &err_payload(
                    ER_NET_PACKET_TOO_LARGE,
                    "08S01",
                    "Got a packet bigger than 'max_allowed_packet' bytes",
                ),
            )
            .await;
        super::packet::drain(io).await;
    }
    HandshakeError::Io(e)
}

/// What a client sent to log in: from a HandshakeResponse or a COM_CHANGE_USER.
pub struct Login<'a> {
    pub user: &'a str,
    pub caps: u32,
    pub plugin: Option<&'a [u8]>,
    pub auth: Vec<u8>,
}

/// Verifies a login, switching plugins when needed, and sends the final OK
/// (or ERR). `challenge` is the nonce the client answered; `switch` forces
/// an AuthSwitchRequest with a fresh nonce (COM_CHANGE_USER, whose answer
/// was computed from the greeting's nonce).
pub async fn authenticate(
    io: &mut PacketIo<ClientStream>,
    cfg: &ProxyConfig,
    login: Login<'_>,
    mut challenge: [u8; 20],
    mut seq: u8,
    switch: bool,
) -> Result<UserConfig, HandshakeError> {
    let is_tls = io.stream.is_tls();
    let shown = clip(login.user, MAX_NAME_IN_MESSAGES);
    let deny = |msg: &str| {
        let using = if login.auth.is_empty() { "NO" } else { "YES" };
        err_payload(
            ER_ACCESS_DENIED,
            "28000",
            &format!("Access denied for user '{shown}' (using password: {using}){msg}"),
        )
    };
    if cfg.tls.as_ref().is_some_and(|t| t.require) && !is_tls {
        io.send(seq, &deny(": TLS is required")).await?;
        return Err(HandshakeError::Refused("TLS required".into()));
    }
    // An unknown name goes the way of a known one up to the refusal.
    let known = cfg.user(login.user).cloned();
    let wanted = match &known {
        Some(u) => u.auth_plugin,
        None => decoy_plugin(cfg, login.user),
    };
    let user = known.clone().unwrap_or_else(|| UserConfig {
        name: login.user.to_string(),
        mysql_native_password: Some(format!("*{}", hex::encode_upper(nonce()))),
        caching_sha2_password: Some(hex::encode([nonce(), nonce()].concat())[..64].to_string()),
        auth_plugin: wanted,
        consistency: Default::default(),
        require_full_auth: false,
        backend_user: None,
        backend_password: None,
        replica_user: None,
        replica_password: None,
    });

    // Switch to the user's plugin when the client answered for another one.
    let mut auth = login.auth.clone();
    let offered = if login.caps & CLIENT_PLUGIN_AUTH != 0 {
        login.plugin.and_then(AuthPlugin::from_name)
    } else {
        Some(AuthPlugin::MysqlNativePassword)
    };
    if switch || offered != Some(wanted) {
        if login.caps & CLIENT_PLUGIN_AUTH == 0 {
            io.send(seq, &deny(": client does not support plugin authentication"))
                .await?;
            return Err(HandshakeError::Refused("no plugin auth".into()));
        }
        challenge = nonce();
        let mut p = BytesMut::new();
        p.put_u8(0xFE);
        p.put_slice(wanted.name().as_bytes());
        p.put_u8(0);
        p.put_slice(&challenge);
        p.put_u8(0);
        io.send(seq, &p).await?;
        let r = io.read_packet().await?.ok_or(HandshakeError::Closed)?;
        seq = r.seq.wrapping_add(1);
        auth = r.payload.to_vec();
    }

    let ok = match wanted {
        AuthPlugin::MysqlNativePassword => {
            let stored = user.mysql_native_password.as_deref().and_then(parse_native_hash);
            stored.is_some_and(|h| verify_native(&h, &challenge, &auth))
        }
        AuthPlugin::CachingSha2Password => {
            let stored = user.caching_sha2_password.as_deref().and_then(parse_sha2_hash);
            let Some(h) = stored else {
                io.send(seq, &deny("")).await?;
                return Err(HandshakeError::Refused("no sha2 hash".into()));
            };
            if !user.require_full_auth {
                // Some clients (PyMySQL ≤ 1.0) hash the auth-switch nonce with
                // its trailing NUL; accept both readings of the same nonce.
                let with_nul: Vec<u8> = challenge.iter().copied().chain([0]).collect();
                let fast = verify_sha2(&h, &challenge, &auth) || verify_sha2(&h, &with_nul, &auth);
                if fast {
                    seq = io.send(seq, &[0x01, 0x03]).await?;
                }
                fast
            } else {
                // perform_full_authentication
                io.send(seq, &[0x01, 0x04]).await?;
                let r = io.read_packet().await?.ok_or(HandshakeError::Closed)?;
                seq = r.seq.wrapping_add(1);
                if !is_tls {
                    io.send(
                        seq,
                        &deny(": caching_sha2_password full authentication requires TLS"),
                    )
                    .await?;
                    return Err(HandshakeError::Refused("full auth without TLS".into()));
                }
                let pw = r.payload.strip_suffix(&[0]).unwrap_or(&r.payload);
                verify_clear(&user, pw)
            }
        }
    };
    if !ok || known.is_none() {
        io.send(seq, &deny("")).await?;
        return Err(HandshakeError::Refused(match known {
            Some(_) => format!("wrong password for {shown:?}"),
            None => format!("unknown user {shown:?}"),
        }));
    }
    io.send(seq, &ok_payload(0, STATUS_AUTOCOMMIT)).await?;
    Ok(user)
}

/// A decoded COM_CHANGE_USER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeUser {
    pub user: String,
    pub auth: Vec<u8>,
    pub db: Option<String>,
    pub collation: Option<u8>,
    pub plugin: Option<Vec<u8>>,
}

/// Parses a COM_CHANGE_USER payload (first byte 0x11) sent by a client with
/// capabilities `caps`.
pub fn parse_change_user(p: &[u8], caps: u32) -> Option<ChangeUser> {
    let mut s = p.get(1..)?;
    let user = String::from_utf8_lossy(get_null_str(&mut s)?).into_owned();
    let auth = if caps & CLIENT_SECURE_CONNECTION != 0 {
        let n = *s.first()? as usize;
        let a = s.get(1..1 + n)?.to_vec();
        s = &s[1 + n..];
        a
    } else {
        get_null_str(&mut s)?.to_vec()
    };
    let db = get_null_str(&mut s)
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .filter(|d| !d.is_empty());
    let mut collation = None;
    if s.len() >= 2 {
        collation = Some(s[0]);
        s = &s[2..];
    }
    let mut plugin = None;
    if caps & CLIENT_PLUGIN_AUTH != 0 && !s.is_empty() {
        plugin = Some(get_null_str(&mut s).unwrap_or(s).to_vec());
    }
    Some(ChangeUser {
        user,
        auth,
        db,
        collation,
        plugin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::config::hash_password;

    #[test]
    fn scrambles_verify_against_stored_hashes() {
        let (native, sha2) = hash_password("app-password");
        let native = parse_native_hash(&native).unwrap();
        let sha2 = parse_sha2_hash(&sha2).unwrap();
        let n = nonce();
        assert!(verify_native(&native, &n, &scramble_native(b"app-password", &n)));
        assert!(!verify_native(&native, &n, &scramble_native(b"wrong", &n)));
        assert!(!verify_native(&native, &n, b""));
        assert!(verify_sha2(&sha2, &n, &scramble_sha2(b"app-password", &n)));
        assert!(!verify_sha2(&sha2, &n, &scramble_sha2(b"wrong", &n)));
        let (e1, e2) = hash_password("");
        assert!(verify_native(&parse_native_hash(&e1).unwrap(), &n, b""));
        assert!(verify_sha2(&parse_sha2_hash(&e2).unwrap(), &n, b""));
    }

    #[test]
    fn greeting_and_response_round_trip() {
        let n = nonce();
        let g = greeting("10.11.0-dbmux", 7, &n, AuthPlugin::CachingSha2Password, true);
        assert_eq!(g[0], 10);
        assert!(g.ends_with(b"caching_sha2_password\0"));
        let mut r = BytesMut::new();
        r.put_u32_le(
            CLIENT_PROTOCOL_41 | CLIENT_PLUGIN_AUTH | CLIENT_PLUGIN_AUTH_LENENC | CLIENT_CONNECT_WITH_DB,
        );
        r.put_u32_le(1 << 24);
        r.put_u8(45);
        r.put_slice(&[0; 23]);
        r.put_slice(b"app\0");
        r.put_u8(3);
        r.put_slice(b"abc");
        r.put_slice(b"shop\0mysql_native_password\0");
        let p = parse_response(&r).unwrap();
        assert_eq!(p.user, "app");
        assert_eq!(p.auth, b"abc");
        assert_eq!(p.db.as_deref(), Some("shop"));
        assert_eq!(p.plugin.as_deref(), Some(&b"mysql_native_password"[..]));
        assert!(!is_ssl_request(&r));
        assert!(is_ssl_request(&{
            let mut s = r[..32].to_vec();
            s[1] |= (CLIENT_SSL >> 8) as u8;
            s
        }));
    }
}
