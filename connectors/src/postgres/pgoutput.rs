//! Decoding `pgoutput` messages (logical replication protocol version 1).
//!
//! Pure functions over one `XLogData` payload each; no connection. The formats
//! are PostgreSQL's "Logical Replication Message Formats". Tuple values come
//! in the types' *text* output form (we never ask for `binary`), decoded later
//! by [`super::source_types`] with the column types of the relation.

use bytes::{Buf, Bytes};

/// One column of a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value that did not change; its bytes are not sent.
    UnchangedToast,
    /// The value's text output (raw bytes; UTF-8 in a UTF8 database).
    Text(Bytes),
}

/// One column of a `Relation` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key used for updates and deletes).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A `Relation` message: what the following changes of `oid` look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: u64,
        /// Commit time, µs since 2000-01-01.
        commit_ts: i64,
        xid: u32,
    },
    Commit {
        /// LSN of the commit record.
        commit_lsn: u64,
        /// The end of the commit record: a stream started there continues
        /// with the next transaction.
        end_lsn: u64,
        commit_ts: i64,
    },
    Origin,
    Relation(Relation),
    /// A `Type` message (names a non-builtin type; the catalog tells us more).
    Type,
    Insert {
        oid: u32,
        new: Vec<TupleValue>,
    },
    Update {
        oid: u32,
        /// The old key (`K`) or the whole old row (`O`, REPLICA IDENTITY FULL).
        old: Option<Vec<TupleValue>>,
        old_is_key: bool,
        new: Vec<TupleValue>,
    },
    Delete {
        oid: u32,
        old: Vec<TupleValue>,
        old_is_key: bool,
    },
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        oids: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`); not captured.
    LogicalMessage,
}

/// A malformed message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed pgoutput message {tag:?}: {what}")]
pub struct DecodeError {
    pub tag: char,
    pub what: String,
}

struct Reader {
    buf: Bytes,
    tag: char,
}

impl Reader {
    fn err(&self, what: &str) -> DecodeError {
        DecodeError {
            tag: self.tag,
            what: what.to_string(),
        }
    }
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(self.err("truncated"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("unterminated string"))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| self.err("a name is not UTF-8"))?
            .to_string();
        self.buf.advance(end + 1);
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let n = self.u16()? as usize;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.i32()?;
                    let len = usize::try_from(len).map_err(|_| self.err("negative value length"))?;
                    self.need(len)?;
                    TupleValue::Text(self.buf.split_to(len))
                }
                b'b' => return Err(self.err("binary tuple data (dbmux asks for text)")),
                other => return Err(self.err(&format!("unknown tuple column kind {:?}", other as char))),
            });
        }
        Ok(out)
    }
}

/// Decodes one pgoutput message.
pub fn decode(data: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError {
            tag: '?',
            what: "empty message".into(),
        });
    };
    let mut r = Reader {
        buf: data.slice(1..),
        tag: tag as char,
    };
    Ok(match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_ts: r.i64()?,
            }
        }
        b'O' => Message::Origin,
        b'Y' => Message::Type,
        b'M' => Message::LogicalMessage,
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.u16()? as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8()?;
                columns.push(RelationColumn {
                    key: flags & 1 != 0,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation {
                oid,
                // pgoutput sends an empty namespace for pg_catalog.
                namespace: if namespace.is_empty() {
                    "pg_catalog".into()
                } else {
                    namespace
                },
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let oid = r.u32()?;
            if r.u8()? != b'N' {
                return Err(r.err("insert without a new tuple"));
            }
            Message::Insert { oid, new: r.tuple()? }
        }
        b'U' => {
            let oid = r.u32()?;
            let (mut old, mut old_is_key) = (None, false);
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old_is_key = kind == b'K';
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(r.err("update without a new tuple"));
            }
            Message::Update {
                oid,
                old,
                old_is_key,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let oid = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(r.err("delete without an old tuple"));
            }
            Message::Delete {
                oid,
                old_is_key: kind == b'K',
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()? as usize;
            let options = r.u8()?;
            let mut oids = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                oids.push(r.u32()?);
            }
            Message::Truncate { options, oids }
        }
        other => {
            return Err(DecodeError {
                tag: other as char,
                what: "unknown message type (streamed or two-phase transactions are not requested)".into(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn tuple(b: &mut BytesMut, cols: &[Option<&str>]) {
        b.put_u16(cols.len() as u16);
        for c in cols {
            match c {
                None => b.put_u8(b'n'),
                Some("\u{1}toast") => b.put_u8(b'u'),
                Some(s) => {
                    b.put_u8(b't');
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
            }
        }
    }

    #[test]
    fn decodes_the_messages_capture_uses() {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(0x100);
        b.put_i64(42);
        b.put_u32(7);
        assert_eq!(
            decode(b.split().freeze()).unwrap(),
            Message::Begin {
                final_lsn: 0x100,
                commit_ts: 42,
                xid: 7
            }
        );
        b.put_u8(b'R');
        b.put_u32(16384);
        b.put_slice(b"\0t\0");
        b.put_u8(b'd');
        b.put_u16(2);
        b.put_u8(1);
        b.put_slice(b"id\0");
        b.put_u32(23);
        b.put_i32(-1);
        b.put_u8(0);
        b.put_slice(b"v\0");
        b.put_u32(1043);
        b.put_i32(14);
        let Message::Relation(r) = decode(b.split().freeze()).unwrap() else {
            panic!()
        };
        assert_eq!(r.namespace, "pg_catalog");
        assert_eq!(r.columns.len(), 2);
        assert!(r.columns[0].key && !r.columns[1].key);
        assert_eq!(r.columns[1].type_modifier, 14);

        b.put_u8(b'U');
        b.put_u32(16384);
        b.put_u8(b'O');
        tuple(&mut b, &[Some("1"), Some("old")]);
        b.put_u8(b'N');
        tuple(&mut b, &[Some("1"), Some("\u{1}toast")]);
        assert_eq!(
            decode(b.split().freeze()).unwrap(),
            Message::Update {
                oid: 16384,
                old: Some(vec![
                    TupleValue::Text(Bytes::from_static(b"1")),
                    TupleValue::Text(Bytes::from_static(b"old"))
                ]),
                old_is_key: false,
                new: vec![
                    TupleValue::Text(Bytes::from_static(b"1")),
                    TupleValue::UnchangedToast
                ],
            }
        );
        b.put_u8(b'D');
        b.put_u32(1);
        b.put_u8(b'K');
        tuple(&mut b, &[None]);
        assert!(matches!(
            decode(b.split().freeze()).unwrap(),
            Message::Delete { old_is_key: true, .. }
        ));
        b.put_u8(b'T');
        b.put_u32(2);
        b.put_u8(1);
        b.put_u32(5);
        b.put_u32(6);
        assert_eq!(
            decode(b.split().freeze()).unwrap(),
            Message::Truncate {
                options: 1,
                oids: vec![5, 6]
            }
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        // Every prefix of a valid insert is rejected cleanly.
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(1);
        b.put_u8(b'N');
        tuple(&mut b, &[Some("hello"), None]);
        let full = b.freeze();
        assert!(decode(full.clone()).is_ok());
        for n in 0..full.len() {
            assert!(decode(full.slice(..n)).is_err(), "prefix {n}");
        }
        // A length that points past the end, a negative length.
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(1);
        b.put_u8(b'N');
        b.put_u16(1);
        b.put_u8(b't');
        b.put_i32(-5);
        assert!(decode(b.freeze()).is_err());
        assert!(decode(Bytes::from_static(b"Z")).is_err());
    }
}
