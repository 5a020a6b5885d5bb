//! Binlog row images → [`pipeline::Value`].
//!
//! We decode row images ourselves instead of going through mysql_common's
//! `BinlogRow`, for three reasons found while building this:
//! - **Speed.** `BinlogRow` builds a `Column` (names, flags, charset) for every
//!   column of every row and re-parses the table map's optional metadata once
//!   per row. Here a [`ColumnDecoder`] per column is prepared once per table map
//!   and a row costs one `Vec<Value>` plus the text/byte buffers it holds.
//! - **Exactness.** mysql_common 0.37 (`binlog::misc::my_time_packed_from_binary`)
//!   keeps the `TIME(1)`/`TIME(2)` fraction in a `u32`, so the borrow a negative
//!   value with a non-zero fraction needs (`frac -= 0x100`) underflows: a panic
//!   in debug builds, a huge wrong fraction in release. We decode `TIME2` with
//!   the server's own algorithm in signed arithmetic, see [`decode_time2`]. Text is decoded from the column charset (latin1 is cp1252
//!   on MariaDB/MySQL), `BINARY(n)` is re-padded with `0x00` as `SELECT` shows it.
//! - **Control over errors.** A value we cannot represent is a definite error
//!   naming the column, never a silent lossy conversion.
//!
//! Formats follow the server sources (`Field_*::pack`, `log_event.cc`).

use pipeline::value::{Date, DateTime, Time};
use pipeline::Value;
use std::fmt;

/// A text encoding the capture can decode to UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb4, utf8mb3 (`utf8`).
    Utf8,
    /// MySQL's latin1, which is Windows-1252 with 0x81/0x8D/0x8F/0x90/0x9D mapped to U+0081… (C1 controls).
    Latin1,
    Ascii,
    /// The `binary` pseudo-charset: values are bytes, not text.
    Binary,
    /// UCS-2, big-endian.
    Ucs2,
    /// UTF-16, big-endian.
    Utf16,
    Utf16Le,
    /// UTF-32, big-endian.
    Utf32,
    /// Any other single-byte charset (cp1250, koi8r, swe7, …), with the byte →
    /// character table read from the master itself (see [`SingleByteMap`]).
    SingleByte(&'static SingleByteMap),
    /// A charset this build cannot decode (the multi-byte East Asian ones:
    /// big5, sjis, cp932, ujis, eucjpms, euckr, gb2312, gbk). The table is
    /// described, and NULLs pass, but a value is a definite error naming it.
    Unsupported(&'static str),
}

/// A single-byte charset as the master converts it: for each byte, the
/// character it becomes in utf8mb4, or `None` when the server has none for it.
/// Read once per charset and connection from the server (`CONVERT(…)`), so
/// it is exactly the server's own table, not a guess at it.
#[derive(Debug, PartialEq, Eq)]
pub struct SingleByteMap {
    pub name: String,
    pub chars: Vec<Option<char>>,
}

/// Interned charset tables: a charset is described once per process (tables
/// live as long as the process; there are a few dozen charsets at most).
fn registry() -> &'static std::sync::Mutex<std::collections::HashMap<String, Charset>> {
    static R: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Charset>>> =
        std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

impl Charset {
    /// The decoder for a server charset name: a native one, or one registered
    /// with [`Charset::register_single_byte`]; `None` otherwise.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "utf8mb4" | "utf8mb3" | "utf8" => Charset::Utf8,
            "latin1" => Charset::Latin1,
            "ascii" => Charset::Ascii,
            "binary" => Charset::Binary,
            "ucs2" => Charset::Ucs2,
            "utf16" => Charset::Utf16,
            "utf16le" => Charset::Utf16Le,
            "utf32" => Charset::Utf32,
            _ => return registry().lock().expect("charset registry").get(name).copied(),
        })
    }

    /// True when [`Charset::from_name`] knows `name` without a server table.
    pub fn is_native(name: &str) -> bool {
        matches!(
            name,
            "utf8mb4"
                | "utf8mb3"
                | "utf8"
                | "latin1"
                | "ascii"
                | "binary"
                | "ucs2"
                | "utf16"
                | "utf16le"
                | "utf32"
        )
    }

    /// Registers a single-byte table read from the server (256 entries).
    pub fn register_single_byte(name: &str, chars: Vec<Option<char>>) -> Charset {
        let mut r = registry().lock().expect("charset registry");
        if let Some(Charset::SingleByte(m)) = r.get(name) {
            if m.chars == chars {
                return Charset::SingleByte(m);
            }
        }
        let map: &'static SingleByteMap = Box::leak(Box::new(SingleByteMap {
            name: name.to_string(),
            chars,
        }));
        r.insert(name.to_string(), Charset::SingleByte(map));
        Charset::SingleByte(map)
    }

    /// The decoder for `name`, or [`Charset::Unsupported`] naming it.
    pub fn from_name_or_unsupported(name: &str) -> Charset {
        if let Some(cs) = Self::from_name(name) {
            return cs;
        }
        let mut r = registry().lock().expect("charset registry");
        let key = format!("unsupported:{name}");
        *r.entry(key)
            .or_insert_with(|| Charset::Unsupported(Box::leak(name.to_string().into_boxed_str())))
    }

    /// Decodes `bytes` to a string.
    pub fn decode(self, bytes: &[u8]) -> Result<String, DecodeError> {
        match self {
            Charset::Utf8 | Charset::Binary => match std::str::from_utf8(bytes) {
                Ok(s) => Ok(s.to_owned()),
                Err(e) => Err(DecodeError::new(format!(
                    "invalid UTF-8 at byte {} of a {}-byte value",
                    e.valid_up_to(),
                    bytes.len()
                ))),
            },
            Charset::Latin1 | Charset::Ascii => {
                if bytes.is_ascii() {
                    // ASCII is valid UTF-8: one copy, no per-char work.
                    return Ok(std::str::from_utf8(bytes).map(str::to_owned).unwrap_or_default());
                }
                let mut s = String::with_capacity(bytes.len() + bytes.len() / 2);
                s.extend(bytes.iter().map(|&b| cp1252_char(b)));
                Ok(s)
            }
            Charset::Ucs2 | Charset::Utf16 | Charset::Utf16Le => {
                if bytes.len() % 2 != 0 {
                    return Err(DecodeError::new("odd number of bytes in a UTF-16/UCS-2 value"));
                }
                let le = self == Charset::Utf16Le;
                let units = bytes.chunks_exact(2).map(|c| {
                    if le {
                        u16::from_le_bytes([c[0], c[1]])
                    } else {
                        u16::from_be_bytes([c[0], c[1]])
                    }
                });
                char::decode_utf16(units)
                    .collect::<Result<String, _>>()
                    .map_err(|e| DecodeError::new(format!("invalid UTF-16: {e}")))
            }
            Charset::Utf32 => {
                if bytes.len() % 4 != 0 {
                    return Err(DecodeError::new("UTF-32 value length is not a multiple of 4"));
                }
                bytes
                    .chunks_exact(4)
                    .map(|c| {
                        let u = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                        char::from_u32(u)
                            .ok_or_else(|| DecodeError::new(format!("invalid UTF-32 code point {u:#x}")))
                    })
                    .collect()
            }
            Charset::SingleByte(map) => bytes
                .iter()
                .map(|&b| {
                    map.chars.get(b as usize).copied().flatten().ok_or_else(|| {
                        DecodeError::new(format!(
                            "byte {b:#04x} has no character in charset {}",
                            map.name
                        ))
                    })
                })
                .collect(),
            Charset::Unsupported(name) => Err(DecodeError::new(format!(
                "text in charset {name} cannot be decoded by dbmux (it decodes utf8mb3, utf8mb4, ucs2, utf16, \
                 utf16le, utf32 and every single-byte charset); convert the column or exclude the table"
            ))),
        }
    }
}

/// Windows-1252 as MySQL's latin1 defines it (bytes 0x80–0x9F differ from ISO-8859-1).
fn cp1252_char(b: u8) -> char {
    const HIGH: [u16; 32] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
        0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
        0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
    ];
    if (0x80..0xA0).contains(&b) {
        char::from_u32(HIGH[(b - 0x80) as usize] as u32).unwrap_or('\u{FFFD}')
    } else {
        b as char
    }
}

/// A value could not be decoded; the caller adds table, column and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl DecodeError {
    fn new(msg: impl Into<String>) -> Self {
        DecodeError(msg.into())
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a TEXT/BLOB-family column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobContent {
    Text(Charset),
    Bytes,
    /// MariaDB's JSON: LONGTEXT with a `json_valid` check, compacted on the way out.
    JsonText(Charset),
}

/// How to read one column of a row image. Built once per table map.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnDecoder {
    /// 1, 2, 3, 4 or 8 bytes little-endian.
    Int {
        bytes: u8,
        unsigned: bool,
    },
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// 3 bytes: day | month << 5 | year << 9.
    Date,
    /// `TIME2` (MySQL 5.6+ format).
    Time2 {
        fsp: u8,
    },
    DateTime2 {
        fsp: u8,
    },
    Timestamp2 {
        fsp: u8,
    },
    /// Pre-5.6 formats without fractional seconds.
    TimeOld,
    DateTimeOld,
    TimestampOld,
    Year,
    Bit {
        width: u16,
    },
    Enum {
        pack: u8,
        labels: Vec<String>,
    },
    Set {
        pack: u8,
        labels: Vec<String>,
    },
    /// CHAR(n): length-prefixed (1 byte when `max_bytes` < 256, else 2), trailing spaces already stripped.
    Char {
        max_bytes: u32,
        charset: Charset,
    },
    /// BINARY(n): trailing 0x00 stripped in the binlog, re-padded to `length` here.
    Binary {
        length: u32,
    },
    /// VARCHAR / VARBINARY (`charset` is `Binary` for the latter).
    VarString {
        max_bytes: u32,
        charset: Charset,
    },
    /// TEXT/BLOB family and MariaDB JSON, with a `pack`-byte length prefix.
    Blob {
        pack: u8,
        content: BlobContent,
    },
    /// MySQL 8 binary JSON with a `pack`-byte length prefix.
    JsonBinary {
        pack: u8,
    },
}

/// A byte cursor over a row image.
pub struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::new(format!(
                "row image ends early: need {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn le(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }
}

impl ColumnDecoder {
    /// Reads one non-NULL value.
    pub fn decode(&self, cur: &mut Cursor<'_>) -> Result<Value, DecodeError> {
        Ok(match self {
            ColumnDecoder::Int { bytes, unsigned } => {
                let n = *bytes as usize;
                let raw = cur.le(n)?;
                if *unsigned {
                    Value::UInt(raw)
                } else {
                    let shift = 64 - 8 * n as u32;
                    Value::Int(((raw << shift) as i64) >> shift)
                }
            }
            ColumnDecoder::Float => {
                let b = cur.take(4)?;
                Value::Float(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            ColumnDecoder::Double => {
                let b = cur.take(8)?;
                Value::Double(f64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            ColumnDecoder::Decimal { precision, scale } => {
                let len = decimal_bin_size(*precision, *scale);
                Value::Decimal(decode_decimal(cur.take(len)?, *precision, *scale)?)
            }
            ColumnDecoder::Date => Value::Date(unpack_date(cur.le(3)? as u32)),
            ColumnDecoder::Time2 { fsp } => Value::Time(decode_time2(cur, *fsp)?),
            ColumnDecoder::DateTime2 { fsp } => Value::DateTime(decode_datetime2(cur, *fsp)?),
            ColumnDecoder::Timestamp2 { fsp } => {
                let secs = cur.be(4)? as i64;
                let micros = read_frac(cur, *fsp)? as i64;
                Value::Timestamp(secs * 1_000_000 + micros)
            }
            ColumnDecoder::TimeOld => {
                let raw = cur.le(3)? as u32;
                let v = ((raw << 8) as i32) >> 8;
                let a = v.unsigned_abs();
                Value::Time(Time {
                    negative: v < 0,
                    hours: a / 10_000,
                    minutes: ((a / 100) % 100) as u8,
                    seconds: (a % 100) as u8,
                    micros: 0,
                })
            }
            ColumnDecoder::DateTimeOld => {
                let v = cur.le(8)?;
                let (d, t) = (v / 1_000_000, v % 1_000_000);
                Value::DateTime(DateTime {
                    date: Date {
                        year: (d / 10_000) as u16,
                        month: ((d / 100) % 100) as u8,
                        day: (d % 100) as u8,
                    },
                    hour: (t / 10_000) as u8,
                    minute: ((t / 100) % 100) as u8,
                    second: (t % 100) as u8,
                    micros: 0,
                })
            }
            ColumnDecoder::TimestampOld => Value::Timestamp(cur.le(4)? as i64 * 1_000_000),
            ColumnDecoder::Year => {
                let y = cur.take(1)?[0];
                Value::Year(if y == 0 { 0 } else { 1900 + y as u16 })
            }
            ColumnDecoder::Bit { width } => {
                let n = (*width as usize).div_ceil(8);
                Value::Bit(cur.be(n)?)
            }
            ColumnDecoder::Enum { pack, labels } => {
                let idx = cur.le(*pack as usize)? as usize;
                // 0 is MySQL's "invalid value" (empty string); labels are 1-based.
                match idx {
                    0 => Value::Enum(String::new()),
                    i => Value::Enum(labels.get(i - 1).cloned().ok_or_else(|| {
                        DecodeError::new(format!("ENUM index {i} beyond {} labels", labels.len()))
                    })?),
                }
            }
            ColumnDecoder::Set { pack, labels } => {
                let bits = cur.le(*pack as usize)?;
                let mut members = Vec::with_capacity(bits.count_ones() as usize);
                for (i, label) in labels.iter().enumerate().take(64) {
                    if bits & (1 << i) != 0 {
                        members.push(label.clone());
                    }
                }
                if labels.len() < 64 && bits >> labels.len() != 0 {
                    return Err(DecodeError::new(format!(
                        "SET bits {bits:#x} beyond {} labels",
                        labels.len()
                    )));
                }
                Value::Set(members)
            }
            ColumnDecoder::Char { max_bytes, charset } => {
                let len = cur.le(if *max_bytes > 255 { 2 } else { 1 })? as usize;
                text_or_bytes(cur.take(len)?, *charset)?
            }
            ColumnDecoder::Binary { length } => {
                let prefix = if *length > 255 { 2 } else { 1 };
                let len = cur.le(prefix)? as usize;
                let mut v = Vec::with_capacity(*length as usize);
                v.extend_from_slice(cur.take(len)?);
                v.resize((*length as usize).max(len), 0);
                Value::Bytes(v)
            }
            ColumnDecoder::VarString { max_bytes, charset } => {
                let len = cur.le(if *max_bytes > 255 { 2 } else { 1 })? as usize;
                text_or_bytes(cur.take(len)?, *charset)?
            }
            ColumnDecoder::Blob { pack, content } => {
                let len = cur.le(*pack as usize)? as usize;
                let data = cur.take(len)?;
                match content {
                    BlobContent::Bytes => Value::Bytes(data.to_vec()),
                    BlobContent::Text(cs) => Value::Text(cs.decode(data)?),
                    // MariaDB stores JSON as the text the client wrote; keep it
                    // byte for byte so a MariaDB replica holds the same text.
                    BlobContent::JsonText(cs) => Value::Json(cs.decode(data)?),
                }
            }
            ColumnDecoder::JsonBinary { pack } => {
                let len = cur.le(*pack as usize)? as usize;
                Value::Json(jsonb_to_text(cur.take(len)?)?)
            }
        })
    }
}

fn text_or_bytes(data: &[u8], charset: Charset) -> Result<Value, DecodeError> {
    Ok(match charset {
        Charset::Binary => Value::Bytes(data.to_vec()),
        cs => Value::Text(cs.decode(data)?),
    })
}

fn unpack_date(v: u32) -> Date {
    Date {
        year: (v >> 9) as u16,
        month: ((v >> 5) & 15) as u8,
        day: (v & 31) as u8,
    }
}

/// Fractional seconds of DATETIME2/TIMESTAMP2 (unsigned, big-endian), as microseconds.
fn read_frac(cur: &mut Cursor<'_>, fsp: u8) -> Result<u32, DecodeError> {
    Ok(match fsp {
        0 => 0,
        1 | 2 => cur.be(1)? as u32 * 10_000,
        3 | 4 => cur.be(2)? as u32 * 100,
        5 | 6 => cur.be(3)? as u32,
        _ => {
            return Err(DecodeError::new(format!(
                "fractional precision {fsp} out of range"
            )))
        }
    })
}

/// `DATETIME2`: 5 bytes big-endian, offset by 2^39, then the fraction.
fn decode_datetime2(cur: &mut Cursor<'_>, fsp: u8) -> Result<DateTime, DecodeError> {
    let int_part = cur.be(5)? as i64 - 0x80_0000_0000;
    let micros = read_frac(cur, fsp)?;
    let ymd = int_part >> 17;
    let ym = ymd >> 5;
    let hms = int_part % (1 << 17);
    Ok(DateTime {
        date: Date {
            year: (ym / 13) as u16,
            month: (ym % 13) as u8,
            day: (ymd % 32) as u8,
        },
        hour: (hms >> 12) as u8,
        minute: ((hms >> 6) % 64) as u8,
        second: (hms % 64) as u8,
        micros,
    })
}

/// `TIME2`, exactly as the server's `my_time_packed_from_binary` +
/// `TIME_from_longlong_time_packed`: the integer part is 3 bytes offset by
/// 2^23; for `fsp` 1–4 the fraction is a separate field, and a negative value
/// with a non-zero fraction borrows one second from the integer part (the
/// borrow that underflows in mysql_common 0.37 for `TIME(1)`/`TIME(2)`);
/// for `fsp` 5–6 the whole value is one 6-byte integer offset by 2^47.
pub fn decode_time2(cur: &mut Cursor<'_>, fsp: u8) -> Result<Time, DecodeError> {
    const INT_OFS: i64 = 0x80_0000;
    let packed: i64 = match fsp {
        0 => (cur.be(3)? as i64 - INT_OFS) << 24,
        1 | 2 => {
            let mut int_part = cur.be(3)? as i64 - INT_OFS;
            let mut frac = cur.be(1)? as i64;
            if int_part < 0 && frac != 0 {
                int_part += 1;
                frac -= 0x100;
            }
            (int_part << 24) + frac * 10_000
        }
        3 | 4 => {
            let mut int_part = cur.be(3)? as i64 - INT_OFS;
            let mut frac = cur.be(2)? as i64;
            if int_part < 0 && frac != 0 {
                int_part += 1;
                frac -= 0x10000;
            }
            (int_part << 24) + frac * 100
        }
        5 | 6 => cur.be(6)? as i64 - 0x8000_0000_0000,
        _ => {
            return Err(DecodeError::new(format!(
                "fractional precision {fsp} out of range"
            )))
        }
    };
    let negative = packed < 0;
    let a = packed.unsigned_abs();
    let hms = a >> 24;
    Ok(Time {
        negative,
        hours: ((hms >> 12) % (1 << 10)) as u32,
        minutes: ((hms >> 6) % 64) as u8,
        seconds: (hms % 64) as u8,
        micros: (a % (1 << 24)) as u32,
    })
}

const DIG_PER_WORD: usize = 9;
const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// Bytes of a packed DECIMAL(precision, scale).
pub fn decimal_bin_size(precision: u8, scale: u8) -> usize {
    let intg = (precision - scale.min(precision)) as usize;
    let scale = scale as usize;
    (intg / DIG_PER_WORD) * 4
        + DIG2BYTES[intg % DIG_PER_WORD]
        + (scale / DIG_PER_WORD) * 4
        + DIG2BYTES[scale % DIG_PER_WORD]
}

/// Packed DECIMAL → canonical text (`-12.340`, `0.5`), exactly as `SELECT` prints it.
///
/// Layout (`decimal2bin`): groups of 9 digits in 4 big-endian bytes, a shorter
/// leading integer group and trailing fraction group; the first bit is the
/// inverted sign and negative numbers have every byte inverted.
pub fn decode_decimal(bytes: &[u8], precision: u8, scale: u8) -> Result<String, DecodeError> {
    if scale > precision || precision == 0 || bytes.len() != decimal_bin_size(precision, scale) {
        return Err(DecodeError::new(format!(
            "bad DECIMAL({precision},{scale}) of {} bytes",
            bytes.len()
        )));
    }
    let negative = bytes[0] & 0x80 == 0;
    let mask = if negative { 0xFF } else { 0 };
    let byte = |i: usize| -> u8 {
        let b = bytes[i] ^ mask;
        if i == 0 {
            b ^ 0x80
        } else {
            b
        }
    };
    let mut pos = 0;
    let mut read = |n: usize| -> u32 {
        let v = (pos..pos + n).fold(0u32, |acc, i| (acc << 8) | byte(i) as u32);
        pos += n;
        v
    };
    let intg = (precision - scale) as usize;
    let scale = scale as usize;
    let mut int_digits = String::with_capacity(intg + 1);
    let lead = intg % DIG_PER_WORD;
    if lead > 0 {
        int_digits.push_str(&format!("{:0width$}", read(DIG2BYTES[lead]), width = lead));
    }
    for _ in 0..intg / DIG_PER_WORD {
        int_digits.push_str(&format!("{:09}", read(4)));
    }
    let mut frac_digits = String::with_capacity(scale);
    for _ in 0..scale / DIG_PER_WORD {
        frac_digits.push_str(&format!("{:09}", read(4)));
    }
    let tail = scale % DIG_PER_WORD;
    if tail > 0 {
        frac_digits.push_str(&format!("{:0width$}", read(DIG2BYTES[tail]), width = tail));
    }
    if int_digits.len() > intg || frac_digits.len() > scale {
        return Err(DecodeError::new("DECIMAL digit group out of range"));
    }
    let int_trim = int_digits.trim_start_matches('0');
    let is_zero = int_trim.is_empty() && frac_digits.bytes().all(|b| b == b'0');
    let mut out = String::with_capacity(precision as usize + 3);
    if negative && !is_zero {
        out.push('-');
    }
    out.push_str(if int_trim.is_empty() { "0" } else { int_trim });
    if scale > 0 {
        out.push('.');
        out.push_str(&frac_digits);
    }
    Ok(out)
}

/// MySQL 8 binary JSON → compact JSON text.
fn jsonb_to_text(data: &[u8]) -> Result<String, DecodeError> {
    use mysql_common::binlog::jsonb;
    use mysql_common::io::ParseBuf;
    use mysql_common::proto::MyDeserialize;
    if data.is_empty() {
        // An empty image is how MySQL logs a JSON column set to the JSON null literal in some paths.
        return Ok("null".to_owned());
    }
    let value = jsonb::Value::deserialize((), &mut ParseBuf(data))
        .map_err(|e| DecodeError::new(format!("binary JSON: {e}")))?;
    let dom = value
        .parse()
        .map_err(|e| DecodeError::new(format!("binary JSON: {e}")))?;
    let mut out = String::with_capacity(data.len());
    write_json_dom(&dom, &mut out);
    Ok(out)
}

fn write_json_dom(dom: &mysql_common::binlog::jsonb::JsonDom, out: &mut String) {
    use mysql_common::binlog::jsonb::{JsonContainer, JsonDom, JsonNumber, JsonScalar};
    use std::fmt::Write;
    let write_str = |s: &str, out: &mut String| {
        out.push_str(&serde_json::Value::String(s.to_owned()).to_string());
    };
    match dom {
        JsonDom::Container(JsonContainer::Array(items)) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_dom(item, out);
            }
            out.push(']');
        }
        JsonDom::Container(JsonContainer::Object(map)) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write_json_dom(v, out);
            }
            out.push('}');
        }
        JsonDom::Scalar(s) => match s {
            JsonScalar::Null => out.push_str("null"),
            JsonScalar::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
            JsonScalar::Number(JsonNumber::Int(i)) => {
                let _ = write!(out, "{i}");
            }
            JsonScalar::Number(JsonNumber::Uint(u)) => {
                let _ = write!(out, "{u}");
            }
            JsonScalar::Number(JsonNumber::Double(d)) => {
                out.push_str(&serde_json::Number::from_f64(*d).map_or("null".to_owned(), |n| n.to_string()));
            }
            // MySQL prints a JSON decimal as a number: keep its exact digits.
            JsonScalar::Number(JsonNumber::Decimal(d)) => out.push_str(&d.to_string()),
            JsonScalar::String(s) => write_str(s, out),
            other => {
                // Dates, times and opaque values: mysql_common's own string rendering.
                let v: serde_json::Value = JsonDom::Scalar(other.clone()).into();
                out.push_str(&v.to_string());
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(d: &ColumnDecoder, bytes: &[u8]) -> Value {
        let mut c = Cursor::new(bytes);
        let v = d.decode(&mut c).unwrap();
        assert!(c.is_empty(), "{} bytes left", c.remaining());
        v
    }

    fn time(negative: bool, hours: u32, minutes: u8, seconds: u8, micros: u32) -> Value {
        Value::Time(Time {
            negative,
            hours,
            minutes,
            seconds,
            micros,
        })
    }

    #[test]
    fn integers_every_width_and_sign() {
        let i = |bytes, unsigned| ColumnDecoder::Int { bytes, unsigned };
        assert_eq!(dec(&i(1, false), &[0x80]), Value::Int(-128));
        assert_eq!(dec(&i(1, true), &[0xFF]), Value::UInt(255));
        assert_eq!(dec(&i(2, false), &[0x00, 0x80]), Value::Int(-32768));
        assert_eq!(dec(&i(3, false), &[0x00, 0x00, 0x80]), Value::Int(-8_388_608));
        assert_eq!(dec(&i(3, true), &[0xFF, 0xFF, 0xFF]), Value::UInt(16_777_215));
        assert_eq!(
            dec(&i(4, false), &[0xFF, 0xFF, 0xFF, 0x7F]),
            Value::Int(i32::MAX as i64)
        );
        assert_eq!(
            dec(&i(8, false), &[0, 0, 0, 0, 0, 0, 0, 0x80]),
            Value::Int(i64::MIN)
        );
        assert_eq!(dec(&i(8, true), &[0xFF; 8]), Value::UInt(u64::MAX));
    }

    #[test]
    fn time2_negative_fractions() {
        // Bytes seen from MariaDB 10.11 for TIME(1) '-00:00:01.5' and TIME(2) '-00:00:01.25'.
        assert_eq!(
            dec(&ColumnDecoder::Time2 { fsp: 1 }, &[0x7f, 0xff, 0xfe, 0xce]),
            time(true, 0, 0, 1, 500_000)
        );
        assert_eq!(
            dec(&ColumnDecoder::Time2 { fsp: 2 }, &[0x7f, 0xff, 0xfe, 0xe7]),
            time(true, 0, 0, 1, 250_000)
        );
        // TIME(6) '-838:59:59'.
        assert_eq!(
            dec(
                &ColumnDecoder::Time2 { fsp: 6 },
                &[0x4b, 0x91, 0x05, 0x00, 0x00, 0x00]
            ),
            time(true, 838, 59, 59, 0)
        );
        // TIME(0) '00:00:00' and '-00:00:01'.
        assert_eq!(
            dec(&ColumnDecoder::Time2 { fsp: 0 }, &[0x80, 0, 0]),
            time(false, 0, 0, 0, 0)
        );
        assert_eq!(
            dec(&ColumnDecoder::Time2 { fsp: 0 }, &[0x7f, 0xff, 0xff]),
            time(true, 0, 0, 1, 0)
        );
    }

    #[test]
    fn decimals() {
        // DECIMAL(5,2) 123.45 and -123.45 (from the MySQL manual's decimal2bin examples).
        // intg=3 digits → 2 bytes (0x007B), frac=2 digits → 1 byte (0x2D), sign bit inverted.
        let enc = |neg: bool| {
            let mut b = vec![0x80, 0x7B, 0x2D];
            if neg {
                b.iter_mut().for_each(|x| *x ^= 0xFF);
            }
            b
        };
        assert_eq!(decode_decimal(&enc(false), 5, 2).unwrap(), "123.45");
        assert_eq!(decode_decimal(&enc(true), 5, 2).unwrap(), "-123.45");
        // DECIMAL(14,4) 1234567890.1234: the manual's example bytes.
        let b = [0x81, 0x0D, 0xFB, 0x38, 0xD2, 0x04, 0xD2];
        assert_eq!(decode_decimal(&b, 14, 4).unwrap(), "1234567890.1234");
        // Zero with scale keeps the scale digits and has no sign.
        assert_eq!(decode_decimal(&[0x80, 0x00, 0x00], 5, 2).unwrap(), "0.00");
        assert_eq!(decimal_bin_size(65, 30), 30);
        assert_eq!(decimal_bin_size(10, 0), 5);
    }

    #[test]
    fn latin1_is_cp1252() {
        assert_eq!(
            Charset::Latin1.decode(b"caf\xe9 \x80 \x9d").unwrap(),
            "café € \u{9d}"
        );
        assert_eq!(Charset::Latin1.decode(b"plain").unwrap(), "plain");
        assert!(Charset::Utf8.decode(b"\xff").is_err());
        assert_eq!(Charset::Utf16.decode(&[0xD8, 0x3D, 0xDE, 0x00]).unwrap(), "😀");
        assert_eq!(Charset::Utf32.decode(&[0, 1, 0xF6, 0]).unwrap(), "😀");
        let mut chars: Vec<Option<char>> = (0..=255u8).map(|b| Some(b as char)).collect();
        chars[0x5B] = Some('Ä');
        chars[0xFF] = None;
        let swe = Charset::register_single_byte("test_swe", chars);
        assert_eq!(Charset::from_name("test_swe"), Some(swe));
        assert_eq!(swe.decode(b"a[b").unwrap(), "aÄb");
        assert!(swe.decode(b"\xff").unwrap_err().0.contains("0xff"));
        let big5 = Charset::from_name_or_unsupported("big5");
        assert_eq!(big5, Charset::from_name_or_unsupported("big5"));
        assert!(big5.decode(b"x").unwrap_err().0.contains("big5"));
    }

    #[test]
    fn binary_is_repadded_and_char_is_not() {
        let b = ColumnDecoder::Binary { length: 4 };
        assert_eq!(dec(&b, &[2, b'a', 0]), Value::Bytes(vec![b'a', 0, 0, 0]));
        let c = ColumnDecoder::Char {
            max_bytes: 40,
            charset: Charset::Utf8,
        };
        assert_eq!(dec(&c, &[2, b'a', b'b']), Value::Text("ab".into()));
    }

    #[test]
    fn bits_enums_sets_years() {
        assert_eq!(dec(&ColumnDecoder::Bit { width: 1 }, &[1]), Value::Bit(1));
        assert_eq!(
            dec(&ColumnDecoder::Bit { width: 64 }, &[0xFF; 8]),
            Value::Bit(u64::MAX)
        );
        assert_eq!(
            dec(&ColumnDecoder::Bit { width: 10 }, &[0x02, 0x01]),
            Value::Bit(513)
        );
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let e = ColumnDecoder::Enum {
            pack: 1,
            labels: labels.clone(),
        };
        assert_eq!(dec(&e, &[2]), Value::Enum("b".into()));
        assert_eq!(dec(&e, &[0]), Value::Enum(String::new()));
        let s = ColumnDecoder::Set { pack: 1, labels };
        assert_eq!(dec(&s, &[0b101]), Value::Set(vec!["a".into(), "c".into()]));
        assert!(s.decode(&mut Cursor::new(&[0b1000])).is_err());
        assert_eq!(dec(&ColumnDecoder::Year, &[0]), Value::Year(0));
        assert_eq!(dec(&ColumnDecoder::Year, &[124]), Value::Year(2024));
    }

    #[test]
    fn temporal() {
        // DATETIME(6) '2024-02-29 23:05:01.000007'
        let ym = 2024 * 13 + 2;
        let int_part: i64 = ((((ym << 5) | 29) << 17) | (23 << 12) | (5 << 6) | 1) + 0x80_0000_0000;
        let mut b = int_part.to_be_bytes()[3..].to_vec();
        b.extend_from_slice(&[0, 0, 7]);
        let v = dec(&ColumnDecoder::DateTime2 { fsp: 6 }, &b);
        assert_eq!(v.clone(), v);
        match v {
            Value::DateTime(dt) => assert_eq!(dt.to_string(), "2024-02-29 23:05:01.000007"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            dec(&ColumnDecoder::Timestamp2 { fsp: 3 }, &[0, 0, 0, 1, 0x01, 0xF4]),
            Value::Timestamp(1_050_000)
        );
        assert_eq!(
            dec(&ColumnDecoder::Date, &[0, 0, 0]),
            Value::Date(Date {
                year: 0,
                month: 0,
                day: 0
            })
        );
    }

    #[test]
    fn mysql_binary_json() {
        // {"a": 1}: small object, one key, INT16 inlined.
        let obj = [0x00, 1, 0, 12, 0, 11, 0, 1, 0, 0x05, 1, 0, b'a'];
        assert_eq!(jsonb_to_text(&obj).unwrap(), "{\"a\":1}");
        // [true, "x"]: small array, a literal inlined and a string at offset 10.
        let arr = [0x02, 2, 0, 12, 0, 0x04, 1, 0, 0x0C, 10, 0, 1, b'x'];
        assert_eq!(jsonb_to_text(&arr).unwrap(), "[true,\"x\"]");
        assert_eq!(jsonb_to_text(&[]).unwrap(), "null");
        let d = ColumnDecoder::JsonBinary { pack: 4 };
        let mut bytes = (obj.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&obj);
        assert_eq!(dec(&d, &bytes), Value::Json("{\"a\":1}".into()));
    }
}
