//! MySQL packet framing.
//!
//! Every MySQL packet is a 3-byte little-endian payload length, a 1-byte
//! sequence id and the payload. A payload of 2^24−1 bytes or more is split
//! into frames of exactly `MAX_FRAME` bytes followed by one shorter frame
//! (possibly empty); the receiver joins them back into one *logical* packet.
//!
//! # Two levels
//! - [`take_frame`] cuts one physical frame out of a buffer. The proxy forwards
//!   result sets frame by frame, untouched, which is the fast path.
//! - [`take_packet`] joins frames into a logical packet, for the packets the
//!   proxy must read (handshake, commands, OK/ERR).
//!
//! Both return `None` when the buffer does not hold enough bytes yet: "need
//! more bytes" is the normal state of a stream, never an error.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest payload one frame can carry (2^24 − 1).
pub const MAX_FRAME: usize = 0xFF_FFFF;

/// Header bytes before every frame's payload.
pub const HEADER_LEN: usize = 4;

/// One physical frame as it sits on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: u8,
    /// The whole frame including its 4-byte header, ready to forward.
    pub raw: Bytes,
}

impl Frame {
    /// The payload without the header.
    pub fn payload(&self) -> &[u8] {
        &self.raw[HEADER_LEN..]
    }

    /// True when another frame of the same logical packet follows.
    pub fn continues(&self) -> bool {
        self.payload().len() == MAX_FRAME
    }
}

/// Cuts one frame off the front of `buf`, or `None` when it is incomplete.
pub fn take_frame(buf: &mut BytesMut) -> Option<Frame> {
    let len = frame_len(buf)?;
    if buf.len() < HEADER_LEN + len {
        return None;
    }
    let seq = buf[3];
    let raw = buf.split_to(HEADER_LEN + len).freeze();
    Some(Frame { seq, raw })
}

fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    Some(buf[0] as usize | (buf[1] as usize) << 8 | (buf[2] as usize) << 16)
}

/// A logical packet: the payload joined from its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of the *last* frame; the reply continues from `seq + 1`.
    pub seq: u8,
    pub payload: Bytes,
}

/// Cuts one logical packet off the front of `buf` (joining frames of a packet
/// of 16 MiB or more), or `None` when the buffer does not hold all of it yet.
pub fn take_packet(buf: &mut BytesMut) -> Option<Packet> {
    // Find where the logical packet ends without consuming anything.
    let mut at = 0usize;
    let mut frames = 0usize;
    loop {
        let len = frame_len(&buf[at..])?;
        if buf.len() < at + HEADER_LEN + len {
            return None;
        }
        at += HEADER_LEN + len;
        frames += 1;
        if len < MAX_FRAME {
            break;
        }
    }
    if frames == 1 {
        let seq = buf[3];
        let mut raw = buf.split_to(at);
        raw.advance(HEADER_LEN);
        return Some(Packet {
            seq,
            payload: raw.freeze(),
        });
    }
    let mut raw = buf.split_to(at);
    let mut payload = BytesMut::with_capacity(at - frames * HEADER_LEN);
    let mut seq = 0;
    while !raw.is_empty() {
        let len = frame_len(&raw).unwrap_or(0);
        seq = raw[3];
        raw.advance(HEADER_LEN);
        payload.extend_from_slice(&raw.split_to(len));
    }
    Some(Packet {
        seq,
        payload: payload.freeze(),
    })
}

/// Appends `payload` to `out` as one logical packet starting at sequence id
/// `seq`, splitting it into frames as needed. Returns the sequence id of the
/// next packet.
pub fn put_packet(out: &mut BytesMut, seq: u8, payload: &[u8]) -> u8 {
    let mut seq = seq;
    let mut rest = payload;
    out.reserve(payload.len() + HEADER_LEN * (1 + payload.len() / MAX_FRAME));
    loop {
        let n = rest.len().min(MAX_FRAME);
        out.put_uint_le(n as u64, 3);
        out.put_u8(seq);
        out.put_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_FRAME {
            return seq;
        }
    }
}

// ---------------------------------------------------------------------------
// Payload helpers: length-encoded integers and strings.

/// Reads a length-encoded integer from the front of `buf`.
pub fn get_lenenc_int(buf: &mut &[u8]) -> Option<u64> {
    let first = *buf.first()?;
    let (n, skip) = match first {
        0..=0xFA => (first as u64, 1),
        0xFC if buf.len() >= 3 => (u16::from_le_bytes([buf[1], buf[2]]) as u64, 3),
        0xFD if buf.len() >= 4 => (u32::from_le_bytes([buf[1], buf[2], buf[3], 0]) as u64, 4),
        0xFE if buf.len() >= 9 => (u64::from_le_bytes(buf[1..9].try_into().ok()?), 9),
        _ => return None,
    };
    *buf = &buf[skip..];
    Some(n)
}

/// Reads a length-encoded string from the front of `buf`.
pub fn get_lenenc_bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = get_lenenc_int(buf)? as usize;
    if buf.len() < n {
        return None;
    }
    let (s, rest) = buf.split_at(n);
    *buf = rest;
    Some(s)
}

/// Reads a NUL-terminated string from the front of `buf` (the NUL is consumed).
pub fn get_null_str<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = &buf[..end];
    *buf = &buf[end + 1..];
    Some(s)
}

pub fn put_lenenc_int(out: &mut BytesMut, n: u64) {
    match n {
        0..=0xFA => out.put_u8(n as u8),
        0xFB..=0xFFFF => {
            out.put_u8(0xFC);
            out.put_u16_le(n as u16);
        }
        0x1_0000..=0xFF_FFFF => {
            out.put_u8(0xFD);
            out.put_uint_le(n, 3);
        }
        _ => {
            out.put_u8(0xFE);
            out.put_u64_le(n);
        }
    }
}

pub fn put_lenenc_bytes(out: &mut BytesMut, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.put_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_more_bytes_is_none() {
        let mut buf = BytesMut::from(&[5u8, 0][..]);
        assert!(take_frame(&mut buf).is_none());
        assert!(take_packet(&mut buf).is_none());
        buf.extend_from_slice(&[0, 3, b'a']);
        assert!(take_packet(&mut buf).is_none());
        buf.extend_from_slice(b"bcde");
        let p = take_packet(&mut buf).unwrap();
        assert_eq!((p.seq, &p.payload[..]), (3, &b"abcde"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn round_trip_small_and_empty() {
        let mut out = BytesMut::new();
        let next = put_packet(&mut out, 7, b"");
        assert_eq!(next, 8);
        put_packet(&mut out, next, b"hi");
        let a = take_packet(&mut out).unwrap();
        let b = take_packet(&mut out).unwrap();
        assert_eq!((a.seq, a.payload.len()), (7, 0));
        assert_eq!((b.seq, &b.payload[..]), (8, &b"hi"[..]));
    }

    #[test]
    fn sixteen_mib_packets_split_and_join() {
        for size in [
            MAX_FRAME - 1,
            MAX_FRAME,
            MAX_FRAME + 1,
            2 * MAX_FRAME,
            2 * MAX_FRAME + 5,
        ] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut out = BytesMut::new();
            let next = put_packet(&mut out, 0, &payload);
            let frames = size / MAX_FRAME + 1;
            assert_eq!(next as usize, frames, "size {size}");
            assert_eq!(out.len(), size + frames * HEADER_LEN);
            // Frame level: every frame but the last is full.
            let mut copy = out.clone();
            for i in 0..frames {
                let f = take_frame(&mut copy).unwrap();
                assert_eq!(f.continues(), i + 1 < frames);
            }
            // Incomplete until the last byte arrives.
            let last = out.split_off(out.len() - 1);
            assert!(take_packet(&mut out).is_none());
            out.unsplit(last);
            let p = take_packet(&mut out).unwrap();
            assert_eq!(p.payload.len(), size);
            assert!(p.payload[..] == payload[..]);
            assert_eq!(p.seq as usize, frames - 1);
        }
    }

    #[test]
    fn lenenc() {
        for n in [0u64, 250, 251, 65535, 65536, 0xFF_FFFF, 0x100_0000, u64::MAX] {
            let mut out = BytesMut::new();
            put_lenenc_int(&mut out, n);
            let mut s = &out[..];
            assert_eq!(get_lenenc_int(&mut s), Some(n));
            assert!(s.is_empty());
        }
        let mut out = BytesMut::new();
        put_lenenc_bytes(&mut out, b"abc");
        out.put_slice(b"x\0rest");
        let mut s = &out[..];
        assert_eq!(get_lenenc_bytes(&mut s), Some(&b"abc"[..]));
        assert_eq!(get_null_str(&mut s), Some(&b"x"[..]));
        assert_eq!(s, b"rest");
    }
}

// ---------------------------------------------------------------------------
// Buffered packet I/O over any async stream.

use super::memory::{Budget, Lease, UNCOUNTED};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A stream with a read buffer and a write buffer of MySQL packets.
///
/// Writes are buffered until [`PacketIo::flush`]; a whole response is
/// normally written with one system call.
///
/// # Limits
/// [`PacketIo::read_packet`] refuses a logical packet longer than
/// `max_packet` as soon as a frame header announces it, before buffering
/// its bytes, and leases packets bigger than [`UNCOUNTED`] bytes from the
/// proxy's memory [`Budget`] (held until the next read). Both failures are
/// [`ReadLimit`] errors.
pub struct PacketIo<S> {
    pub stream: S,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// Number of flushes so far: lets a caller tell whether bytes of a
    /// response already left.
    pub flushes: u64,
    /// The longest logical packet [`PacketIo::read_packet`] accepts.
    pub max_packet: usize,
    /// Where packets over [`UNCOUNTED`] bytes lease their memory.
    pub budget: Option<Arc<Budget>>,
    lease: Option<Lease>,
}

/// Why [`PacketIo::read_packet`] refused a packet (inside an
/// `io::Error` of kind `InvalidData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadLimit {
    #[error("packet bigger than max_allowed_packet ({0} bytes)")]
    TooLarge(usize),
    #[error("packet of {0} bytes does not fit in the proxy's memory budget")]
    OutOfMemory(usize),
}

impl ReadLimit {
    /// The limit an I/O error stands for, if it is one.
    pub fn of(e: &std::io::Error) -> Option<ReadLimit> {
        e.get_ref().and_then(|i| i.downcast_ref::<ReadLimit>()).copied()
    }
}

/// Read buffer growth step; one read can take a whole small result set.
const READ_CHUNK: usize = 64 * 1024;

/// Buffers grown past this for one big packet are replaced by small ones
/// once it is handled.
const SHRINK_AT: usize = 1 << 20;

/// Payload bytes of the logical packet at the front of `buf` that its
/// frame headers announce so far (the next header is visible only once the
/// frame before it is complete).
fn announced_len(buf: &[u8]) -> usize {
    let mut at = 0;
    let mut total = 0usize;
    while let Some(len) = frame_len(&buf[at.min(buf.len())..]) {
        total = total.saturating_add(len);
        if len < MAX_FRAME {
            break;
        }
        at += HEADER_LEN + len;
    }
    total
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketIo<S> {
    pub fn new(stream: S) -> Self {
        PacketIo {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            flushes: 0,
            max_packet: usize::MAX,
            budget: None,
            lease: None,
        }
    }

    /// Reads more bytes; `Ok(false)` on end of stream.
    pub async fn fill_some(&mut self) -> std::io::Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        Ok(self.stream.read_buf(&mut self.rbuf).await? > 0)
    }

    /// Checks the packet being read against the limits, leasing memory for
    /// it when it is big.
    fn check_limits(&mut self) -> std::io::Result<()> {
        let len = announced_len(&self.rbuf);
        if len > self.max_packet {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                ReadLimit::TooLarge(self.max_packet),
            ));
        }
        if len > UNCOUNTED && self.lease.as_ref().is_none_or(|l| l.len() < len) {
            if let Some(b) = &self.budget {
                self.lease = None;
                self.lease = Some(b.take(len).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, ReadLimit::OutOfMemory(len))
                })?);
            }
        }
        Ok(())
    }

    /// The next logical packet, or `None` at a clean end of stream.
    pub async fn read_packet(&mut self) -> std::io::Result<Option<Packet>> {
        // The previous packet has been handled: give its memory back, and
        // do not keep a buffer sized for a big packet.
        self.lease = None;
        if self.rbuf.capacity() > SHRINK_AT && self.rbuf.len() <= READ_CHUNK {
            let mut fresh = BytesMut::with_capacity(READ_CHUNK);
            fresh.extend_from_slice(&self.rbuf);
            self.rbuf = fresh;
        }
        loop {
            self.check_limits()?;
            if let Some(p) = take_packet(&mut self.rbuf) {
                return Ok(Some(p));
            }
            if !self.fill_some().await? {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(eof())
                };
            }
        }
    }

    /// The next physical frame; end of stream is an error here.
    pub async fn read_frame(&mut self) -> std::io::Result<Frame> {
        loop {
            if let Some(f) = take_frame(&mut self.rbuf) {
                return Ok(f);
            }
            if !self.fill_some().await? {
                return Err(eof());
            }
        }
    }

    /// Buffers one logical packet; returns the next sequence id.
    pub fn put(&mut self, seq: u8, payload: &[u8]) -> u8 {
        put_packet(&mut self.wbuf, seq, payload)
    }

    /// Buffers one logical packet whose payload bytes 1..5 (the statement id
    /// of a `COM_STMT_*` command) are replaced by `id`, without copying the
    /// payload anywhere else first. Returns the next sequence id.
    pub fn put_with_stmt_id(&mut self, seq: u8, payload: &[u8], id: u32) -> u8 {
        let at = self.wbuf.len() + HEADER_LEN;
        let next = self.put(seq, payload);
        if payload.len() >= 5 {
            // The first frame holds at least 5 payload bytes.
            self.wbuf[at + 1..at + 5].copy_from_slice(&id.to_le_bytes());
        }
        next
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.flushes += 1;
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            if self.wbuf.capacity() > SHRINK_AT {
                self.wbuf = BytesMut::with_capacity(READ_CHUNK);
            }
        }
        self.stream.flush().await
    }

    /// Buffers `payload` and flushes. A payload bigger than [`UNCOUNTED`]
    /// is written frame by frame from where it is, not copied into the
    /// write buffer first.
    pub async fn send(&mut self, seq: u8, payload: &[u8]) -> std::io::Result<u8> {
        if payload.len() <= UNCOUNTED {
            let next = self.put(seq, payload);
            self.flush().await?;
            return Ok(next);
        }
        self.flush().await?;
        let mut seq = seq;
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_FRAME);
            let mut header = [0u8; HEADER_LEN];
            header[..3].copy_from_slice(&(n as u32).to_le_bytes()[..3]);
            header[3] = seq;
            self.stream.write_all(&header).await?;
            self.stream.write_all(&rest[..n]).await?;
            seq = seq.wrapping_add(1);
            rest = &rest[n..];
            if n < MAX_FRAME {
                break;
            }
        }
        self.flushes += 1;
        self.stream.flush().await?;
        Ok(seq)
    }
}

/// After refusing a packet: stops sending, and reads and drops what the
/// client still sends (for at most 2 s and 256 MiB) so that closing the
/// socket does not reset the connection before the client read the error.
pub async fn drain<S: AsyncRead + AsyncWrite + Unpin>(io: &mut PacketIo<S>) {
    let _ = io.stream.shutdown().await;
    io.rbuf.clear();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left: usize = 256 << 20;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while left > 0 {
            match io.stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

fn eof() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed mid-packet")
}

// ---------------------------------------------------------------------------
// Replies the proxy writes itself.

/// `SERVER_STATUS_IN_TRANS`
pub const STATUS_IN_TRANS: u16 = 0x0001;
/// `SERVER_STATUS_AUTOCOMMIT`
pub const STATUS_AUTOCOMMIT: u16 = 0x0002;
/// `SERVER_MORE_RESULTS_EXISTS`
pub const STATUS_MORE_RESULTS: u16 = 0x0008;
/// `SERVER_STATUS_NO_BACKSLASH_ESCAPES`: the connection's `sql_mode` makes
/// `\` an ordinary character in strings.
pub const STATUS_NO_BACKSLASH_ESCAPES: u16 = 0x0200;

/// An OK packet payload with the given status flags.
pub fn ok_payload(affected: u64, status: u16) -> BytesMut {
    let mut p = BytesMut::with_capacity(11);
    p.put_u8(0x00);
    put_lenenc_int(&mut p, affected);
    put_lenenc_int(&mut p, 0);
    p.put_u16_le(status);
    p.put_u16_le(0);
    p
}

/// An ERR packet payload (protocol 4.1 form with SQL state).
pub fn err_payload(code: u16, sqlstate: &str, message: &str) -> BytesMut {
    let mut p = BytesMut::with_capacity(9 + message.len());
    p.put_u8(0xFF);
    p.put_u16_le(code);
    p.put_u8(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in state.iter_mut().zip(sqlstate.bytes()) {
        *d = s;
    }
    p.put_slice(&state);
    p.put_slice(message.as_bytes());
    p
}

/// Decoded fields of an ERR packet payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    pub message: String,
}

pub fn parse_err(p: &[u8]) -> Option<ErrPacket> {
    if p.len() < 3 || p[0] != 0xFF {
        return None;
    }
    let code = u16::from_le_bytes([p[1], p[2]]);
    let rest = if p.get(3) == Some(&b'#') && p.len() >= 9 {
        &p[9..]
    } else {
        &p[3..]
    };
    Some(ErrPacket {
        code,
        message: String::from_utf8_lossy(rest).into_owned(),
    })
}

/// Status flags of an OK packet (`0x00` or `0xFE` header followed by the
/// affected-rows and last-insert-id integers).
pub fn ok_status(p: &[u8]) -> Option<u16> {
    let mut s = p.get(1..)?;
    get_lenenc_int(&mut s)?;
    get_lenenc_int(&mut s)?;
    Some(u16::from_le_bytes([*s.first()?, *s.get(1)?]))
}

/// Status flags of an old-style EOF packet (`0xFE`, warnings, status).
pub fn eof_status(p: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes([*p.get(3)?, *p.get(4)?]))
}
