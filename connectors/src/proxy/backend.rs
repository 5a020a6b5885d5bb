//! Backend connections: raw MySQL-protocol client connections to the master
//! and the replicas, pooled.
//!
//! # Why raw connections and not mysql_async
//! The proxy forwards result sets frame by frame, untouched: no decoding into
//! rows and re-encoding, no copies beyond the socket buffers. That needs a
//! backend connection whose protocol state we drive ourselves (sequence ids,
//! capability flags identical to the client's). A driver such as mysql_async
//! parses every row into values, which is exactly the work a proxy must not
//! do. The client side of the handshake is small (`mysql_native_password`
//! and the `caching_sha2_password` fast path).
//!
//! # Pool keys
//! The capability flags that change what a server sends (`DEPRECATE_EOF`,
//! `FOUND_ROWS`, `MULTI_STATEMENTS`, …) and the connection collation must be
//! the client's, so connections are pooled per [`PoolKey`]. A connection on
//! which a session left state is closed, not pooled.

use super::command::{COM_INIT_DB, COM_PING, COM_QUERY, COM_RESET_CONNECTION, COM_SET_OPTION};
use super::config::BackendAddr;
use super::handshake::{
    scramble_native, scramble_sha2, CLIENT_DEPRECATE_EOF, CLIENT_LONG_FLAG, CLIENT_LONG_PASSWORD,
    CLIENT_MULTI_STATEMENTS, CLIENT_PLUGIN_AUTH, CLIENT_PLUGIN_AUTH_LENENC, CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION, CLIENT_TRANSACTIONS,
};
use super::packet::{
    eof_status, get_lenenc_bytes, get_lenenc_int, get_null_str, ok_status, parse_err, ErrPacket, Frame,
    PacketIo, HEADER_LEN, MAX_FRAME, STATUS_MORE_RESULTS,
};
use bytes::{BufMut, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// Errors talking to a backend. All are transient from the proxy's view: the
/// backend may come back; the session falls back or reports the error.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect to {0} timed out")]
    Timeout(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("backend refused login: {} {}", .0.code, .0.message)]
    Login(ErrPacket),
    /// The server says it is going away (shutdown, killed connection).
    #[error("backend is going away: {} {}", .0.code, .0.message)]
    Gone(ErrPacket),
    /// Writing the relayed reply to the *client* failed: the backend is
    /// fine, the client went away.
    #[error("client write: {0}")]
    Client(std::io::Error),
    /// The health check found the backend frozen (pings unanswered) while
    /// this connection waited for it.
    #[error("backend stopped answering (health check timed out)")]
    Frozen,
}

/// Login errors that say the backend refuses the proxy's account or is
/// full: every session would get them. Any other error at login is about
/// what this session asked for (a character set the server refuses as a
/// client character set, …) and is that session's alone.
const BACKEND_LOGIN_CODES: &[u16] = &[
    1040, 1043, 1045, 1129, 1130, 1203, 1226, 1251, 1275, 1698, 1862, 4151,
];

impl BackendError {
    /// True when the backend itself is unusable for everyone: it refuses
    /// connections or the proxy's account, it is going away, it stopped
    /// answering. False for failures one session can cause on its own
    /// connection (a setting the server refuses, a connection the server
    /// closed because of what the session sent or how slowly its client
    /// read, the client leaving) and for running out of file descriptors.
    pub fn is_backend_down(&self) -> bool {
        match self {
            BackendError::Io(e) => !matches!(e.raw_os_error(), Some(23 | 24)),
            BackendError::Timeout(_) | BackendError::Gone(_) | BackendError::Frozen => true,
            BackendError::Protocol(_) => true,
            BackendError::Login(e) => BACKEND_LOGIN_CODES.contains(&e.code),
            BackendError::Client(_) => false,
        }
    }
}

fn proto(msg: impl Into<String>) -> BackendError {
    BackendError::Protocol(msg.into())
}

/// Server error codes that mean "this connection is dead", not "your query failed".
const GONE_CODES: &[u16] = &[1053, 1077, 1078, 1079, 1080, 1152, 1927, 4031];

/// The connection settings backend connections are opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The client's [`super::handshake::SESSION_CAPABILITIES`] bits.
    pub caps: u32,
    pub collation: u8,
    /// Which backend account the connection logs in with: 0 is the one of
    /// the backend URL, `i` the `i`-th of the pool's per-user accounts.
    pub account: u16,
}

/// What kind of response a command gets, so the relay knows where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// OK, ERR or result sets (COM_QUERY, COM_STMT_EXECUTE).
    ResultSets,
    /// COM_STMT_PREPARE: OK + parameter and column definitions, or ERR.
    Prepare,
    /// Column definitions up to EOF (COM_FIELD_LIST).
    UntilEof,
    /// Exactly one packet (COM_STATISTICS, COM_INIT_DB, COM_SET_OPTION, …).
    One,
}

/// What the relay learned about a response.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Status flags of the final OK/EOF.
    pub status: Option<u16>,
    pub err: Option<ErrPacket>,
    /// For [`Reply::Prepare`]: backend statement id, columns, parameters.
    pub prepared: Option<(u32, u16, u16)>,
    /// The first column of the first text row, when asked for.
    pub first_value: Option<Option<String>>,
    /// Bytes were already flushed to the client: the response cannot be retried.
    pub flushed: bool,
}

/// One backend connection.
pub struct BackendConn {
    pub io: PacketIo<TcpStream>,
    pub key: PoolKey,
    /// Negotiated capability flags.
    pub caps: u32,
    /// Current database, as far as this side knows.
    pub db: Option<String>,
    /// Multi-statements currently enabled (capability or COM_SET_OPTION).
    pub multi_statements: bool,
    /// Left session state behind: reset before reuse.
    pub dirty: bool,
    pub server_version: String,
    pub connection_id: u32,
    /// When the last command was sent.
    pub last_used: std::time::Instant,
    /// The pool epoch this connection belongs to (see [`Pool::clear`]).
    pub epoch: u64,
    /// Status flags of the login OK (e.g. a global NO_BACKSLASH_ESCAPES).
    pub login_status: u16,
    /// The backend account this connection logged in with, and the proxy
    /// user whose name replaces it in error messages relayed to a client
    /// (`… denied to user 'dbmux'@'10.0.0.5'` names neither the backend
    /// account nor its host to clients).
    pub account: std::sync::Arc<str>,
    pub mask_as: Option<std::sync::Arc<str>>,
    /// `SET SESSION TRANSACTION READ ONLY` ran on it (replica connections).
    pub read_only: bool,
    /// Counts this connection in its pool's open connections until dropped.
    pub open: Option<OpenGuard>,
}

/// Held by a pooled connection: the pool's count of open connections goes
/// down when the connection is dropped, wherever that happens.
#[derive(Debug)]
pub struct OpenGuard(Arc<AtomicU64>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Frames at least this big are streamed to the client in chunks instead of
/// being read whole, so a huge row costs the proxy a chunk of memory, not its
/// size.
const STREAM_FRAME_AT: usize = 256 * 1024;

/// A frame read whole, or the length and first byte of one already streamed.
enum Next {
    Whole(Frame),
    Streamed { len: usize },
}

/// Idle time after which [`BackendConn::is_stale`] probes the socket.
pub const PROBE_AFTER_IDLE: Duration = Duration::from_millis(500);

/// Bytes buffered for the client before a flush mid-response.
const CLIENT_FLUSH_AT: usize = 256 * 1024;

impl BackendConn {
    /// Opens and authenticates a connection with the proxy's own credentials.
    pub async fn connect(
        addr: &BackendAddr,
        key: PoolKey,
        timeout: Duration,
    ) -> Result<BackendConn, BackendError> {
        let what = format!("{}:{}", addr.host, addr.port);
        tokio::time::timeout(timeout, Self::connect_inner(addr, key))
            .await
            .map_err(|_| BackendError::Timeout(what))?
    }

    async fn connect_inner(addr: &BackendAddr, key: PoolKey) -> Result<BackendConn, BackendError> {
        let tcp = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
        tcp.set_nodelay(true)?;
        let mut io = PacketIo::new(tcp);
        let g = io
            .read_packet()
            .await?
            .ok_or_else(|| proto("closed before greeting"))?;
        if let Some(e) = parse_err(&g.payload) {
            return Err(BackendError::Login(e));
        }
        let mut s = &g.payload[..];
        if s.first() != Some(&10) {
            return Err(proto("unsupported protocol version"));
        }
        s = &s[1..];
        let version =
            String::from_utf8_lossy(get_null_str(&mut s).ok_or_else(|| proto("greeting"))?).into_owned();
        if s.len() < 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10 {
            return Err(proto("short greeting"));
        }
        let connection_id = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let mut nonce = s[4..12].to_vec();
        let caps_lo = u16::from_le_bytes([s[13], s[14]]) as u32;
        let caps_hi = u16::from_le_bytes([s[18], s[19]]) as u32;
        let server_caps = caps_lo | caps_hi << 16;
        let auth_len = s[20] as usize;
        s = &s[31..];
        let part2 = auth_len.saturating_sub(8).max(13).min(s.len());
        nonce.extend_from_slice(&s[..part2]);
        s = &s[part2..];
        while nonce.last() == Some(&0) {
            nonce.pop();
        }
        let mut plugin = get_null_str(&mut s).unwrap_or(s).to_vec();
        if plugin.is_empty() {
            plugin = b"mysql_native_password".to_vec();
        }
        let base = CLIENT_LONG_PASSWORD
            | CLIENT_LONG_FLAG
            | CLIENT_PROTOCOL_41
            | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION
            | CLIENT_PLUGIN_AUTH
            | CLIENT_PLUGIN_AUTH_LENENC;
        if key.caps & !server_caps != 0 {
            return Err(proto(format!(
                "backend lacks capabilities 0x{:08x}",
                key.caps & !server_caps
            )));
        }
        let caps = (base & server_caps) | key.caps;
        let auth = scramble_for(&plugin, addr.password.as_bytes(), &nonce)?;
        let mut p = BytesMut::with_capacity(128);
        p.put_u32_le(caps);
        p.put_u32_le(1 << 30);
        p.put_u8(key.collation);
        p.put_slice(&[0; 23]);
        p.put_slice(addr.user.as_bytes());
        p.put_u8(0);
        super::packet::put_lenenc_bytes(&mut p, &auth);
        p.put_slice(&plugin);
        p.put_u8(0);
        io.send(g.seq.wrapping_add(1), &p).await?;
        let login_status;
        loop {
            let r = io
                .read_packet()
                .await?
                .ok_or_else(|| proto("closed during login"))?;
            let seq = r.seq.wrapping_add(1);
            match r.payload.first() {
                Some(0x00) => {
                    login_status = ok_status(&r.payload).unwrap_or(0);
                    break;
                }
                Some(0xFF) => {
                    return Err(BackendError::Login(parse_err(&r.payload).unwrap_or(ErrPacket {
                        code: 0,
                        message: "unreadable error".into(),
                    })))
                }
                Some(0xFE) => {
                    // Auth switch: plugin name, then the new nonce.
                    let mut s = &r.payload[1..];
                    plugin = get_null_str(&mut s).unwrap_or(s).to_vec();
                    let mut n = s.to_vec();
                    while n.last() == Some(&0) {
                        n.pop();
                    }
                    nonce = n;
                    let auth = scramble_for(&plugin, addr.password.as_bytes(), &nonce)?;
                    io.send(seq, &auth).await?;
                }
                Some(0x01) => match r.payload.get(1) {
                    Some(0x03) => {} // fast auth success; OK follows
                    Some(0x04) => return Err(proto(
                        "backend wants caching_sha2_password full authentication, which needs TLS or RSA; \
                             log the proxy user in once with the mysql client so the server caches it",
                    )),
                    _ => return Err(proto("unexpected auth-more-data")),
                },
                _ => return Err(proto("unexpected packet during login")),
            }
        }
        Ok(BackendConn {
            io,
            key,
            caps,
            db: None,
            multi_statements: caps & CLIENT_MULTI_STATEMENTS != 0,
            dirty: false,
            server_version: version,
            connection_id,
            last_used: std::time::Instant::now(),
            epoch: 0,
            login_status,
            account: addr.user.as_str().into(),
            mask_as: None,
            read_only: false,
            open: None,
        })
    }

    fn deprecate_eof(&self) -> bool {
        self.caps & CLIENT_DEPRECATE_EOF != 0
    }

    /// True when the server has sent something unasked (an error before
    /// closing) or closed the socket: the connection must not be used.
    ///
    /// The socket is only probed (one non-blocking read) after the
    /// connection sat idle for [`PROBE_AFTER_IDLE`]: on a busy connection a
    /// dead server shows up as a failed command, which the session handles
    /// the same way, and the hot path saves a system call.
    pub fn is_stale(&self) -> bool {
        if !self.io.rbuf.is_empty() {
            return true;
        }
        if self.last_used.elapsed() < PROBE_AFTER_IDLE {
            return false;
        }
        let mut b = [0u8; 1];
        match self.io.stream.try_read(&mut b) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// Sends one command (sequence id 0), without waiting.
    pub async fn send_command(&mut self, payload: &[u8]) -> Result<(), BackendError> {
        self.last_used = std::time::Instant::now();
        self.io.send(0, payload).await?;
        Ok(())
    }

    /// Sends one `COM_STMT_*` command (sequence id 0) with its statement id
    /// replaced by `id`, without waiting.
    pub async fn send_command_with_stmt_id(&mut self, payload: &[u8], id: u32) -> Result<(), BackendError> {
        self.last_used = std::time::Instant::now();
        self.io.put_with_stmt_id(0, payload, id);
        self.io.flush().await?;
        Ok(())
    }

    /// Sends a command and reads its whole reply without forwarding it.
    pub async fn command(&mut self, payload: &[u8], reply: Reply) -> Result<Summary, BackendError> {
        self.send_command(payload).await?;
        self.relay::<TcpStream>(reply, None, false, None).await
    }

    /// Runs an internal query; returns the first column of the first row, or
    /// the server's error.
    pub async fn query_value(
        &mut self,
        sql: &str,
    ) -> Result<Result<Option<String>, ErrPacket>, BackendError> {
        let mut p = Vec::with_capacity(sql.len() + 1);
        p.push(COM_QUERY);
        p.extend_from_slice(sql.as_bytes());
        self.send_command(&p).await?;
        let s = self
            .relay::<TcpStream>(Reply::ResultSets, None, true, None)
            .await?;
        Ok(match s.err {
            Some(e) => Err(e),
            None => Ok(s.first_value.flatten()),
        })
    }

    pub async fn ping(&mut self) -> Result<(), BackendError> {
        let s = self.command(&[COM_PING], Reply::One).await?;
        match s.err {
            Some(e) => Err(BackendError::Gone(e)),
            None => Ok(()),
        }
    }

    /// `COM_INIT_DB` when the connection is not already in `db`.
    pub async fn use_db(&mut self, db: &str) -> Result<Result<(), ErrPacket>, BackendError> {
        if self.db.as_deref() == Some(db) {
            return Ok(Ok(()));
        }
        let mut p = vec![COM_INIT_DB];
        p.extend_from_slice(db.as_bytes());
        let s = self.command(&p, Reply::One).await?;
        Ok(match s.err {
            Some(e) => Err(e),
            None => {
                self.db = Some(db.to_string());
                Ok(())
            }
        })
    }

    /// Turns multi-statements on or off with `COM_SET_OPTION` if needed.
    pub async fn set_multi_statements(&mut self, on: bool) -> Result<(), BackendError> {
        if self.multi_statements == on {
            return Ok(());
        }
        let opt: u16 = if on { 0 } else { 1 };
        let mut p = vec![COM_SET_OPTION];
        p.extend_from_slice(&opt.to_le_bytes());
        let s = self.command(&p, Reply::One).await?;
        if let Some(e) = s.err {
            return Err(BackendError::Protocol(format!(
                "COM_SET_OPTION failed: {}",
                e.message
            )));
        }
        self.multi_statements = on;
        Ok(())
    }

    /// `COM_RESET_CONNECTION`: drops session state, keeps the login.
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        let s = self.command(&[COM_RESET_CONNECTION], Reply::One).await?;
        if let Some(e) = s.err {
            return Err(BackendError::Gone(e));
        }
        self.multi_statements = self.caps & CLIENT_MULTI_STATEMENTS != 0;
        self.dirty = false;
        Ok(())
    }

    async fn next_frame(&mut self) -> Result<Frame, BackendError> {
        Ok(self.io.read_frame().await?)
    }

    /// The next frame, read whole; or, when it is [`STREAM_FRAME_AT`] bytes
    /// or more and not one the relay must look into (OK, ERR, EOF), passed
    /// to `out` (or dropped) in chunks as it arrives.
    async fn next_or_stream<W: AsyncWrite + tokio::io::AsyncRead + Unpin>(
        &mut self,
        out: &mut Option<&mut PacketIo<W>>,
        flushed: &mut bool,
    ) -> Result<Next, BackendError> {
        loop {
            let buf = &self.io.rbuf;
            if buf.len() > HEADER_LEN {
                let len = buf[0] as usize | (buf[1] as usize) << 8 | (buf[2] as usize) << 16;
                let head = buf[HEADER_LEN];
                let whole = buf.len() >= HEADER_LEN + len;
                let inspect = matches!(head, 0x00 | 0xFF) || (head == 0xFE && len < MAX_FRAME);
                if whole || len < STREAM_FRAME_AT || inspect {
                    return Ok(Next::Whole(self.next_frame().await?));
                }
                let mut left = HEADER_LEN + len;
                loop {
                    let n = left.min(self.io.rbuf.len());
                    let chunk = self.io.rbuf.split_to(n);
                    left -= n;
                    if let Some(o) = out.as_deref_mut() {
                        o.wbuf.extend_from_slice(&chunk);
                        if o.wbuf.len() >= CLIENT_FLUSH_AT {
                            o.flush().await.map_err(BackendError::Client)?;
                            *flushed = true;
                        }
                    }
                    if left == 0 {
                        return Ok(Next::Streamed { len });
                    }
                    if !self.io.fill_some().await? {
                        return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
            if !self.io.fill_some().await? {
                return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// An ERR frame with the backend account replaced by the client's user
    /// name, or `None` when the message does not name the account.
    fn masked_err(&self, f: &Frame) -> Option<BytesMut> {
        let client = self.mask_as.as_deref()?;
        let p = f.payload();
        let e = parse_err(p)?;
        let needle = format!("'{}'@'", self.account);
        let at = e.message.find(&needle)?;
        let host_end = e.message[at + needle.len()..].find('\'')? + at + needle.len() + 1;
        let msg = format!("{}'{client}'@'%'{}", &e.message[..at], &e.message[host_end..]);
        let state = if p.get(3) == Some(&b'#') && p.len() >= 9 {
            String::from_utf8_lossy(&p[4..9]).into_owned()
        } else {
            "HY000".to_string()
        };
        let mut out = BytesMut::new();
        super::packet::put_packet(&mut out, f.seq, &super::packet::err_payload(e.code, &state, &msg));
        Some(out)
    }

    /// Reads one whole response of kind `reply`, appending its frames
    /// untouched to `out` (the client) when given. `rewrite_stmt_id` replaces
    /// the statement id of a prepare OK. A first packet that is a "going
    /// away" error is not forwarded and returns [`BackendError::Gone`], so
    /// the caller can retry elsewhere. Error messages naming the backend
    /// account are rewritten (see [`BackendConn::mask_as`]); rows of
    /// [`STREAM_FRAME_AT`] bytes or more are streamed through in chunks.
    pub async fn relay<W: AsyncWrite + tokio::io::AsyncRead + Unpin>(
        &mut self,
        reply: Reply,
        mut out: Option<&mut PacketIo<W>>,
        want_value: bool,
        rewrite_stmt_id: Option<u32>,
    ) -> Result<Summary, BackendError> {
        let mut sum = Summary::default();
        let deprecate_eof = self.deprecate_eof();
        let mut first_packet = true;

        // Forwards a frame, flushing to the client when the buffer is large.
        macro_rules! fwd {
            ($f:expr) => {
                if let Some(o) = out.as_deref_mut() {
                    o.wbuf.extend_from_slice(&$f.raw);
                    if o.wbuf.len() >= CLIENT_FLUSH_AT {
                        o.flush().await.map_err(BackendError::Client)?;
                        sum.flushed = true;
                    }
                }
            };
        }
        // Forwards an ERR frame, masking the backend account.
        macro_rules! fwd_err {
            ($f:expr) => {
                match self.masked_err(&$f) {
                    Some(m) => {
                        if let Some(o) = out.as_deref_mut() {
                            o.wbuf.extend_from_slice(&m);
                        }
                    }
                    None => fwd!($f),
                }
            };
        }
        // Forwards the rest of a logical packet whose first frame was `f`.
        macro_rules! fwd_rest {
            ($cont:expr) => {{
                let mut cont = $cont;
                while cont {
                    cont = match self.next_or_stream(&mut out, &mut sum.flushed).await? {
                        Next::Whole(g) => {
                            fwd!(g);
                            g.continues()
                        }
                        Next::Streamed { len } => len == MAX_FRAME,
                    };
                }
            }};
        }
        // Forwards one whole logical packet of no interest (a definition).
        macro_rules! fwd_packet {
            () => {{
                let cont = match self.next_or_stream(&mut out, &mut sum.flushed).await? {
                    Next::Whole(g) => {
                        fwd!(g);
                        g.continues()
                    }
                    Next::Streamed { len } => len == MAX_FRAME,
                };
                fwd_rest!(cont);
            }};
        }

        loop {
            let f = self.next_frame().await?;
            let head = f.payload().first().copied();
            if head == Some(0xFF) {
                let e = parse_err(f.payload()).unwrap_or(ErrPacket {
                    code: 0,
                    message: String::new(),
                });
                if first_packet && GONE_CODES.contains(&e.code) {
                    return Err(BackendError::Gone(e));
                }
                fwd_err!(f);
                sum.err = Some(e);
                return Ok(sum);
            }
            first_packet = false;
            match reply {
                Reply::One => {
                    if matches!(head, Some(0x00) | Some(0xFE)) {
                        sum.status = if head == Some(0x00) || deprecate_eof {
                            ok_status(f.payload())
                        } else {
                            eof_status(f.payload())
                        };
                    }
                    fwd!(f);
                    fwd_rest!(f.continues());
                    return Ok(sum);
                }
                Reply::UntilEof => {
                    let end = head == Some(0xFE) && f.payload().len() < MAX_FRAME;
                    fwd!(f);
                    fwd_rest!(f.continues());
                    if end {
                        return Ok(sum);
                    }
                    continue;
                }
                Reply::Prepare => {
                    let p = f.payload();
                    if head != Some(0x00) || p.len() < 9 {
                        return Err(proto("bad prepare response"));
                    }
                    let id = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
                    let cols = u16::from_le_bytes([p[5], p[6]]);
                    let params = u16::from_le_bytes([p[7], p[8]]);
                    sum.prepared = Some((id, cols, params));
                    if let Some(o) = out.as_deref_mut() {
                        let at = o.wbuf.len();
                        o.wbuf.extend_from_slice(&f.raw);
                        if let Some(new_id) = rewrite_stmt_id {
                            o.wbuf[at + 5..at + 9].copy_from_slice(&new_id.to_le_bytes());
                        }
                    }
                    for n in [params, cols] {
                        let extra = if n > 0 && !deprecate_eof { 1 } else { 0 };
                        for _ in 0..(n as usize + extra) {
                            fwd_packet!();
                        }
                    }
                    return Ok(sum);
                }
                Reply::ResultSets => {}
            }
            // Result sets: OK, or a column count.
            if head == Some(0x00) {
                let status = ok_status(f.payload()).unwrap_or(0);
                sum.status = Some(status);
                fwd!(f);
                if status & STATUS_MORE_RESULTS != 0 {
                    continue;
                }
                return Ok(sum);
            }
            if head == Some(0xFB) {
                return Err(proto(
                    "LOCAL INFILE request although the capability was not offered",
                ));
            }
            let mut p = f.payload();
            let ncols = get_lenenc_int(&mut p).ok_or_else(|| proto("bad column count"))?;
            fwd!(f);
            for _ in 0..ncols {
                fwd_packet!();
            }
            if !deprecate_eof {
                let g = self.next_frame().await?;
                fwd!(g);
            }
            // Rows until the terminator.
            let mut at_start = true;
            let mut first_row = true;
            loop {
                let g = match self.next_or_stream(&mut out, &mut sum.flushed).await? {
                    Next::Whole(g) => g,
                    Next::Streamed { len } => {
                        // A big row, already passed on: its first frame
                        // cannot be a terminator (those are inspected).
                        at_start = len < MAX_FRAME;
                        first_row = false;
                        continue;
                    }
                };
                let len = g.payload().len();
                if at_start {
                    let h = g.payload().first().copied();
                    let eof = h == Some(0xFE) && if deprecate_eof { len < MAX_FRAME } else { len < 9 };
                    if eof {
                        let status = if deprecate_eof {
                            ok_status(g.payload())
                        } else {
                            eof_status(g.payload())
                        };
                        sum.status = status;
                        fwd!(g);
                        break;
                    }
                    if h == Some(0xFF) {
                        sum.err = parse_err(g.payload());
                        fwd_err!(g);
                        return Ok(sum);
                    }
                    if want_value && first_row {
                        let mut s = g.payload();
                        sum.first_value = Some(if s.first() == Some(&0xFB) {
                            None
                        } else {
                            get_lenenc_bytes(&mut s).map(|v| String::from_utf8_lossy(v).into_owned())
                        });
                    }
                    first_row = false;
                }
                at_start = len < MAX_FRAME;
                fwd!(g);
            }
            if sum.status.unwrap_or(0) & STATUS_MORE_RESULTS == 0 {
                return Ok(sum);
            }
        }
    }
}

fn scramble_for(plugin: &[u8], password: &[u8], nonce: &[u8]) -> Result<Vec<u8>, BackendError> {
    match plugin {
        b"mysql_native_password" => Ok(scramble_native(password, nonce)),
        b"caching_sha2_password" => Ok(scramble_sha2(password, nonce)),
        other => Err(proto(format!(
            "backend asks for auth plugin {}; the proxy user must use mysql_native_password or caching_sha2_password",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// Idle connections to one backend, per [`PoolKey`].
pub struct Pool {
    pub name: String,
    /// The backend with the account of its URL (health checks use it).
    pub addr: BackendAddr,
    /// Per-user accounts: [`PoolKey::account`] `i` ≥ 1 is `accounts[i - 1]`.
    accounts: Vec<BackendAddr>,
    idle: Mutex<HashMap<PoolKey, Vec<BackendConn>>>,
    /// Bumped by [`Pool::clear`]: connections of an older epoch are suspect.
    epoch: std::sync::atomic::AtomicU64,
    max_idle_per_key: usize,
    connect_timeout: Duration,
    /// Connections made by [`Pool::get`] and not dropped yet.
    open: Arc<AtomicU64>,
    /// Connections made by [`Pool::get`] since start.
    connects: AtomicU64,
}

impl Pool {
    pub fn new(name: &str, addr: BackendAddr, max_idle_per_key: usize) -> Pool {
        Pool {
            name: name.to_string(),
            addr,
            accounts: Vec::new(),
            idle: Mutex::new(HashMap::new()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            max_idle_per_key,
            connect_timeout: Duration::from_secs(5),
            open: Arc::new(AtomicU64::new(0)),
            connects: AtomicU64::new(0),
        }
    }

    /// Adds per-user backend accounts (in [`PoolKey::account`] order, from 1).
    pub fn with_accounts(mut self, accounts: Vec<BackendAddr>) -> Pool {
        self.accounts = accounts;
        self
    }

    pub fn with_connect_timeout(mut self, t: Duration) -> Pool {
        self.connect_timeout = t;
        self
    }

    /// Where and as whom connections of `account` log in.
    pub fn account(&self, account: u16) -> &BackendAddr {
        match account {
            0 => &self.addr,
            i => self.accounts.get(i as usize - 1).unwrap_or(&self.addr),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<BackendConn>>> {
        // A panic elsewhere while holding the lock leaves a consistent map.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A clean connection with `key`: an idle one that still looks alive, or
    /// a new one.
    pub async fn get(&self, key: PoolKey) -> Result<BackendConn, BackendError> {
        loop {
            let conn = self.idle().get_mut(&key).and_then(|v| v.pop());
            match conn {
                Some(c) if !c.is_stale() => return Ok(c),
                Some(_) => continue,
                None => {
                    let epoch = self.epoch();
                    let mut c =
                        BackendConn::connect(self.account(key.account), key, self.connect_timeout).await?;
                    c.epoch = epoch;
                    self.connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    c.open = Some(OpenGuard(self.open.clone()));
                    return Ok(c);
                }
            }
        }
    }

    /// Returns a connection. A dirty one (session settings, prepared
    /// statements, an open transaction) is closed rather than reset:
    /// `COM_RESET_CONNECTION` restores the *global* character set, not the
    /// one of the pool key.
    pub fn put(&self, mut conn: BackendConn) {
        if conn.dirty || !self.is_current(&conn) {
            return;
        }
        conn.mask_as = None;
        let mut idle = self.idle();
        let v = idle.entry(conn.key).or_default();
        if v.len() < self.max_idle_per_key {
            v.push(conn);
        }
    }

    /// Drops every idle connection and marks every connection handed out so
    /// far as suspect (the backend went away, or one of them broke).
    pub fn clear(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.idle().clear();
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// False for a connection made before the last [`Pool::clear`].
    pub fn is_current(&self, conn: &BackendConn) -> bool {
        conn.epoch == self.epoch()
    }

    /// Connections this pool made that are still open (in use or idle).
    pub fn open_connections(&self) -> u64 {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Idle connections ready for reuse (of every account).
    pub fn idle_connections(&self) -> usize {
        self.idle().values().map(Vec::len).sum()
    }

    /// Connections this pool made since start.
    pub fn connects(&self) -> u64 {
        self.connects.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_of_the_backend_itself_take_it_down() {
        let err = |code| ErrPacket {
            code,
            message: String::new(),
        };
        assert!(BackendError::Login(err(1045)).is_backend_down());
        assert!(BackendError::Login(err(1040)).is_backend_down());
        // utf32 as the client character set: the client's own choice.
        assert!(!BackendError::Login(err(1231)).is_backend_down());
        assert!(BackendError::Timeout("x".into()).is_backend_down());
        assert!(BackendError::Frozen.is_backend_down());
        assert!(!BackendError::Client(std::io::ErrorKind::BrokenPipe.into()).is_backend_down());
        assert!(!BackendError::Io(std::io::Error::from_raw_os_error(24)).is_backend_down());
        assert!(BackendError::Io(std::io::ErrorKind::ConnectionRefused.into()).is_backend_down());
    }
}
