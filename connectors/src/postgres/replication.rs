//! The replication connection: PostgreSQL's streaming replication protocol in
//! logical mode, on `postgres-protocol` (tokio-postgres's own wire layer).
//!
//! # Why not tokio-postgres or pg_walstream
//! tokio-postgres has no replication protocol (no `CopyBoth`). pg_walstream
//! 0.9 (the newest that resolves here) pulls in aws-lc-rs (a C build) and runs
//! its own feedback and retry loop. What capture needs from the connection is
//! small and must be exact: start streaming at an LSN, hand over each
//! `XLogData` payload, answer keepalives, and report a flush LSN *only* when
//! told to. So this module speaks the protocol itself: startup, password /
//! MD5 / SCRAM-SHA-256 authentication (hashing from `postgres-protocol`),
//! simple queries (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`), and the
//! `CopyBoth` stream. No TLS yet (the appliers' connections have none either).
//!
//! # Framing
//! Backend messages are read into one growing buffer and split off as
//! `Bytes` without copying; a WAL payload is a slice of that buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Largest backend message accepted (a WAL payload carries one change, which
/// may hold several TOASTed values of up to 1 GB each; 1.5 GiB is the cap).
const MAX_MESSAGE: usize = 1536 << 20;

/// What went wrong on the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("I/O on the replication connection: {0}")]
    Io(#[from] std::io::Error),
    /// An `ErrorResponse`: SQLSTATE, message and detail/hint when given.
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error("replication protocol: {0}")]
    Protocol(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("the server closed the replication connection")]
    Closed,
}

/// One message of the `CopyBoth` stream.
#[derive(Debug)]
pub enum CopyMessage {
    /// `XLogData`: a pgoutput message starting at `start`.
    XLogData { start: u64, wal_end: u64, data: Bytes },
    /// Primary keepalive: the server's WAL end, and whether it wants a reply now.
    Keepalive { wal_end: u64, reply: bool },
    /// `CopyDone` from the server: the stream ended.
    Done,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// A connection in `replication=database` mode.
pub struct ReplicationConn {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// `ParameterStatus` values reported by the server.
    pub parameters: Vec<(String, String)>,
}

impl std::fmt::Debug for ReplicationConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConn").finish_non_exhaustive()
    }
}

fn cstr(buf: &mut Bytes) -> Result<String, ReplicationError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| ReplicationError::Protocol("unterminated string".into()))?;
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    Ok(s)
}

/// Parses an `ErrorResponse`/`NoticeResponse` body into (SQLSTATE, text).
fn error_fields(mut body: Bytes) -> (String, String) {
    let (mut code, mut message, mut detail, mut hint) = (String::new(), String::new(), None, None);
    while body.has_remaining() {
        let field = body.get_u8();
        if field == 0 {
            break;
        }
        let Ok(v) = cstr(&mut body) else { break };
        match field {
            b'C' => code = v,
            b'M' => message = v,
            b'D' => detail = Some(v),
            b'H' => hint = Some(v),
            _ => {}
        }
    }
    if let Some(d) = detail {
        message.push_str(&format!(" ({d})"));
    }
    if let Some(h) = hint {
        message.push_str(&format!(" hint: {h}"));
    }
    (code, message)
}

impl ReplicationConn {
    /// Connects and authenticates as `config` says, with `replication=database`
    /// and the extra startup `parameters` (GUCs such as `DateStyle`).
    pub async fn connect(
        config: &tokio_postgres::Config,
        parameters: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Self, ReplicationError> {
        tokio::time::timeout(timeout, Self::connect_inner(config, parameters))
            .await
            .map_err(|_| {
                ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting took longer than {timeout:?}"),
                ))
            })?
    }

    async fn connect_inner(
        config: &tokio_postgres::Config,
        parameters: &[(&str, &str)],
    ) -> Result<Self, ReplicationError> {
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let io: Box<dyn Io> = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => {
                let s = tokio::net::TcpStream::connect((h.as_str(), port)).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Some(tokio_postgres::config::Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(tokio::net::UnixStream::connect(path).await?)
            }
            None => {
                let s = tokio::net::TcpStream::connect(("localhost", port)).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        };
        let mut conn = ReplicationConn {
            io,
            rbuf: BytesMut::with_capacity(1 << 20),
            wbuf: BytesMut::with_capacity(4096),
            parameters: Vec::new(),
        };
        let user = config
            .get_user()
            .ok_or_else(|| ReplicationError::Auth("the URL names no user".into()))?;
        let dbname = config.get_dbname().unwrap_or(user);
        let mut params: Vec<(&str, &str)> = vec![
            ("user", user),
            ("database", dbname),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
        ];
        if let Some(app) = config.get_application_name() {
            params.push(("application_name", app));
        }
        if let Some(o) = config.get_options() {
            params.push(("options", o));
        }
        params.extend_from_slice(parameters);
        frontend::startup_message(params.iter().copied(), &mut conn.wbuf)?;
        conn.flush().await?;
        conn.authenticate(user, config.get_password()).await?;
        // Until ReadyForQuery: parameter status, key data, notices.
        loop {
            let (tag, mut body) = conn.read_message().await?;
            match tag {
                b'S' => {
                    let k = cstr(&mut body)?;
                    let v = cstr(&mut body)?;
                    conn.parameters.push((k, v));
                }
                b'Z' => return Ok(conn),
                b'K' | b'N' => {}
                b'E' => return Err(conn.server_error(body)),
                t => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected message {:?} during startup",
                        t as char
                    )))
                }
            }
        }
    }

    fn server_error(&self, body: Bytes) -> ReplicationError {
        let (code, message) = error_fields(body);
        ReplicationError::Server { code, message }
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<(), ReplicationError> {
        let need_password =
            || ReplicationError::Auth("the server asks for a password and the URL has none".into());
        loop {
            let (tag, mut body) = self.read_message().await?;
            if tag == b'E' {
                return Err(self.server_error(body));
            }
            if tag != b'R' || body.len() < 4 {
                return Err(ReplicationError::Protocol(format!(
                    "expected an authentication request, got {:?}",
                    tag as char
                )));
            }
            match body.get_i32() {
                0 => return Ok(()),
                3 => {
                    let pw = password.ok_or_else(need_password)?;
                    frontend::password_message(pw, &mut self.wbuf)?;
                    self.flush().await?;
                }
                5 => {
                    let pw = password.ok_or_else(need_password)?;
                    if body.len() < 4 {
                        return Err(ReplicationError::Protocol("short MD5 salt".into()));
                    }
                    let salt = [body[0], body[1], body[2], body[3]];
                    let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), pw, salt);
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                10 => {
                    let pw = password.ok_or_else(need_password)?;
                    let mut mechanisms = Vec::new();
                    while body.first().is_some_and(|&b| b != 0) {
                        mechanisms.push(cstr(&mut body)?);
                    }
                    if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(ReplicationError::Auth(format!(
                            "no supported SASL mechanism among {mechanisms:?}"
                        )));
                    }
                    let mut scram = ScramSha256::new(pw, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut self.wbuf)?;
                    self.flush().await?;
                    let (tag, mut body) = self.read_message().await?;
                    if tag == b'E' {
                        return Err(self.server_error(body));
                    }
                    if tag != b'R' || body.len() < 4 || body.get_i32() != 11 {
                        return Err(ReplicationError::Auth("expected SASL continue".into()));
                    }
                    scram
                        .update(&body)
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    frontend::sasl_response(scram.message(), &mut self.wbuf)?;
                    self.flush().await?;
                    let (tag, mut body) = self.read_message().await?;
                    if tag == b'E' {
                        return Err(self.server_error(body));
                    }
                    if tag != b'R' || body.len() < 4 || body.get_i32() != 12 {
                        return Err(ReplicationError::Auth("expected SASL final".into()));
                    }
                    scram
                        .finish(&body)
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                }
                other => {
                    return Err(ReplicationError::Auth(format!(
                        "unsupported authentication method {other} (use password, md5 or scram-sha-256)"
                    )))
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ReplicationError> {
        let buf = self.wbuf.split();
        self.io.write_all(&buf).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next backend message: its tag and body.
    async fn read_message(&mut self) -> Result<(u8, Bytes), ReplicationError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(ReplicationError::Protocol(format!(
                        "message length {len} out of range"
                    )));
                }
                if self.rbuf.len() > len {
                    let mut frame = self.rbuf.split_to(len + 1).freeze();
                    let tag = frame.get_u8();
                    frame.advance(4);
                    return Ok((tag, frame));
                }
                self.rbuf.reserve(len + 1 - self.rbuf.len());
            }
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                self.rbuf.reserve(1 << 20);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    /// Runs a simple query (a replication command or plain SQL) and returns
    /// its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, mut body) = self.read_message().await?;
            match tag {
                b'D' => {
                    if body.len() < 2 {
                        return Err(ReplicationError::Protocol("short data row".into()));
                    }
                    let n = body.get_u16() as usize;
                    let mut row = Vec::with_capacity(n);
                    for _ in 0..n {
                        if body.len() < 4 {
                            return Err(ReplicationError::Protocol("short data row".into()));
                        }
                        let len = body.get_i32();
                        if len < 0 {
                            row.push(None);
                        } else {
                            let len = len as usize;
                            if body.len() < len {
                                return Err(ReplicationError::Protocol("short data row".into()));
                            }
                            row.push(Some(String::from_utf8_lossy(&body[..len]).into_owned()));
                            body.advance(len);
                        }
                    }
                    rows.push(row);
                }
                b'E' => error = Some(self.server_error(body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                // Row description, command complete, notices, empty query.
                _ => {}
            }
        }
    }

    /// Sends `START_REPLICATION …` and waits for the `CopyBoth` response.
    pub async fn start_replication(&mut self, command: &str) -> Result<(), ReplicationError> {
        frontend::query(command, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => {
                    let e = self.server_error(body);
                    // Drain to ReadyForQuery so the error is the whole story.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok((t, _)) = self.read_message().await {
                            if t == b'Z' {
                                break;
                            }
                        }
                    })
                    .await;
                    return Err(e);
                }
                b'N' | b'S' => {}
                t => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        t as char
                    )))
                }
            }
        }
    }

    /// The next message of the replication stream.
    pub async fn next_copy(&mut self) -> Result<CopyMessage, ReplicationError> {
        loop {
            let (tag, mut body) = self.read_message().await?;
            match tag {
                b'd' => {
                    if body.is_empty() {
                        return Err(ReplicationError::Protocol("empty CopyData".into()));
                    }
                    match body.get_u8() {
                        b'w' => {
                            if body.len() < 24 {
                                return Err(ReplicationError::Protocol("short XLogData".into()));
                            }
                            let start = body.get_u64();
                            let wal_end = body.get_u64();
                            let _server_time = body.get_i64();
                            return Ok(CopyMessage::XLogData {
                                start,
                                wal_end,
                                data: body,
                            });
                        }
                        b'k' => {
                            if body.len() < 17 {
                                return Err(ReplicationError::Protocol("short keepalive".into()));
                            }
                            let wal_end = body.get_u64();
                            let _server_time = body.get_i64();
                            let reply = body.get_u8() == 1;
                            return Ok(CopyMessage::Keepalive { wal_end, reply });
                        }
                        t => {
                            return Err(ReplicationError::Protocol(format!(
                                "unknown replication message {:?}",
                                t as char
                            )))
                        }
                    }
                }
                b'c' => return Ok(CopyMessage::Done),
                b'E' => return Err(self.server_error(body)),
                b'N' | b'S' => {}
                t => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected message {:?} in the replication stream",
                        t as char
                    )))
                }
            }
        }
    }

    /// Standby status update: written/flushed/applied up to `lsn`.
    /// `reply` asks the server to answer at once with a keepalive.
    pub async fn send_status(&mut self, lsn: u64, reply: bool) -> Result<(), ReplicationError> {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
            - PG_EPOCH_OFFSET_US;
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(lsn);
        body.put_u64(lsn);
        body.put_u64(lsn);
        body.put_i64(now_us);
        body.put_u8(u8::from(reply));
        frontend::CopyData::new(body.freeze())?.write(&mut self.wbuf);
        self.flush().await
    }

    /// Ends the stream politely (CopyDone, Terminate); errors are ignored.
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.wbuf);
        frontend::terminate(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
    }
}

/// `X/Y` text of an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses `X/Y`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= 0xFFFF_FFFF && lo <= 0xFFFF_FFFF).then_some((hi << 32) | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text() {
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x/1"), None);
        assert_eq!(parse_lsn("1"), None);
        assert_eq!(parse_lsn("1/100000000"), None);
    }

    #[test]
    fn error_response_fields() {
        let mut b = BytesMut::new();
        for (f, v) in [
            (b'S', "ERROR"),
            (b'C', "42704"),
            (b'M', "slot \"x\" does not exist"),
        ] {
            b.put_u8(f);
            b.put_slice(v.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
        assert_eq!(
            error_fields(b.freeze()),
            ("42704".to_string(), "slot \"x\" does not exist".to_string())
        );
    }
}
