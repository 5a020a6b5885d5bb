//! Fuzz targets: entry points that must return for any input without
//! panicking, overflowing the stack or allocating in proportion to anything
//! but the input.
//!
//! Each target takes raw bytes, so one definition serves two engines:
//! - `cargo fuzz` (libFuzzer, nightly): `fuzz/fuzz_targets/*.rs` call these;
//!   `scripts/fuzz` runs a campaign;
//! - the bounded property run of the test suite (`connectors/tests/fuzz.rs`,
//!   stable): the corpus kept in `fuzz/corpus/<target>/` plus seeded random
//!   mutations of it, for a few seconds per target.
//!
//! Besides "no panic" the targets check properties that must hold: a packet
//! written by the codec reads back the same, text that is pure ASCII is
//! routed alike in every client character set, a route never sends a
//! statement that changes data to a replica.

/// The packet codec: framing (`take_frame`, `take_packet`, `put_packet`),
/// the payload readers and [`crate::proxy::command::Command::parse`].
#[cfg(feature = "proxy")]
pub fn packet_codec(data: &[u8]) {
    use crate::proxy::command::Command;
    use crate::proxy::packet::*;
    use bytes::BytesMut;

    // Arbitrary bytes as a stream of frames.
    let mut buf = BytesMut::from(data);
    while take_packet(&mut buf).is_some() {}
    let mut buf = BytesMut::from(data);
    while take_frame(&mut buf).is_some() {}
    // Arbitrary bytes as one payload of each kind the proxy reads.
    let _ = parse_err(data);
    let _ = ok_status(data);
    let _ = eof_status(data);
    let mut s = data;
    while get_lenenc_bytes(&mut s).is_some() {}
    let mut s = data;
    while get_null_str(&mut s).is_some() {}
    let _ = Command::parse(&bytes::Bytes::copy_from_slice(data));
    // Round trip: what the codec writes, it reads back.
    let seq = data.first().copied().unwrap_or(0);
    let mut out = BytesMut::new();
    let next = put_packet(&mut out, seq, data);
    let p = take_packet(&mut out).expect("a whole packet was written");
    assert_eq!(&p.payload[..], data);
    assert!(out.is_empty());
    assert_eq!(p.seq.wrapping_add(1), next);
}

/// The connection phase: the bytes are what a client sends after the
/// greeting, run against [`crate::proxy::handshake::accept`] over a real
/// loopback socket; and the same bytes as a handshake response and a
/// `COM_CHANGE_USER`.
#[cfg(feature = "proxy")]
pub fn handshake(data: &[u8]) {
    use crate::proxy::handshake::*;
    use std::sync::OnceLock;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let _ = parse_response(data);
    let _ = is_ssl_request(data);
    for caps in [0, CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH, u32::MAX] {
        let _ = parse_change_user(data, caps);
    }

    struct Rig {
        rt: tokio::runtime::Runtime,
        listener: std::net::TcpListener,
        cfg: crate::proxy::config::ProxyConfig,
    }
    static RIG: OnceLock<Rig> = OnceLock::new();
    let rig = RIG.get_or_init(|| {
        let (native, sha2) = crate::proxy::config::hash_password("pw");
        let cfg = toml::from_str(&format!(
            "master = \"mysql://u:p@127.0.0.1:1/\"\n\
             [[users]]\nname = \"app\"\nmysql_native_password = \"{native}\"\ncaching_sha2_password = \"{sha2}\"\n\
             [[users]]\nname = \"sha\"\nmysql_native_password = \"{native}\"\ncaching_sha2_password = \"{sha2}\"\n\
             auth_plugin = \"caching_sha2_password\"\n"
        ))
        .expect("fuzz config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        Rig {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            listener,
            cfg,
        }
    });
    rig.rt.block_on(async {
        let listener =
            tokio::net::TcpListener::from_std(rig.listener.try_clone().expect("clone")).expect("listener");
        let addr = listener.local_addr().expect("addr");
        let client = async {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let _ = c.write_all(data).await;
            let _ = c.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), c.read_to_end(&mut sink)).await;
        };
        let server = async {
            let (s, _) = listener.accept().await.expect("accept");
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                accept(s, &rig.cfg, None, "10.11.0-fuzz", 1),
            )
            .await
            .expect("the handshake ends when the client's bytes do");
            // Only the right password logs in, and no fuzz input knows it
            // for the random nonce.
            assert!(r.is_err(), "a fuzz input logged in");
        };
        tokio::join!(client, server);
    });
}

/// The router: the first byte picks the client character set, the rest is
/// SQL text.
#[cfg(feature = "proxy")]
pub fn router(data: &[u8]) {
    use crate::proxy::lexer::ClientCharset;
    use crate::proxy::router::{classify_cached, Target};
    let Some((&pick, sql)) = data.split_first() else {
        return;
    };
    let cs = [
        ClientCharset::AsciiSafe,
        ClientCharset::Gbk,
        ClientCharset::Big5,
        ClientCharset::Sjis,
        ClientCharset::Gb18030,
        ClientCharset::Unknown,
    ][pick as usize % 6];
    let route = classify_cached(sql, cs);
    if sql.is_ascii() && cs != ClientCharset::Unknown {
        // ASCII means the same in every character set the proxy reads.
        assert_eq!(route, classify_cached(sql, ClientCharset::AsciiSafe));
    }
    // A write appended as a statement of its own (after a newline, which
    // ends any `--`/`#` comment) runs on the master, or not at all.
    let mut with_write = sql.to_vec();
    with_write.extend_from_slice(b"\n;\nINSERT INTO t VALUES (1)");
    let r = classify_cached(&with_write, cs);
    assert!(
        matches!(r.target, Target::Master | Target::Local(_)),
        "a write after {:?} would run on {:?}",
        String::from_utf8_lossy(sql),
        r.target
    );
}

/// The binlog row decoder: the first bytes describe a column (a kind and
/// its parameters, as a table map would), the rest is a row image decoded
/// value after value.
#[cfg(feature = "mysql")]
pub fn binlog_row(data: &[u8]) {
    use crate::mysql::binlog_values::{BlobContent, Charset, ColumnDecoder, Cursor};
    if data.len() < 3 {
        return;
    }
    let (k, a, b) = (data[0], data[1], data[2]);
    let charset = [
        Charset::Utf8,
        Charset::Latin1,
        Charset::Ascii,
        Charset::Binary,
        Charset::Ucs2,
        Charset::Utf16,
        Charset::Utf16Le,
        Charset::Utf32,
    ][b as usize % 8];
    let labels: Vec<String> = (0..(a % 70)).map(|i| format!("l{i}")).collect();
    let precision = a % 65 + 1;
    let decoder = match k % 22 {
        0 => ColumnDecoder::Int {
            bytes: [1, 2, 3, 4, 8][a as usize % 5],
            unsigned: b & 1 == 1,
        },
        1 => ColumnDecoder::Float,
        2 => ColumnDecoder::Double,
        3 => ColumnDecoder::Decimal {
            precision,
            scale: b % (precision.min(30) + 1),
        },
        4 => ColumnDecoder::Date,
        5 => ColumnDecoder::Time2 { fsp: a % 7 },
        6 => ColumnDecoder::DateTime2 { fsp: a % 7 },
        7 => ColumnDecoder::Timestamp2 { fsp: a % 7 },
        8 => ColumnDecoder::TimeOld,
        9 => ColumnDecoder::DateTimeOld,
        10 => ColumnDecoder::TimestampOld,
        11 => ColumnDecoder::Year,
        12 => ColumnDecoder::Bit {
            width: (a as u16 % 64) + 1,
        },
        13 => ColumnDecoder::Enum {
            pack: 1 + (b & 1),
            labels,
        },
        14 => ColumnDecoder::Set {
            pack: [1, 2, 3, 4, 8][b as usize % 5],
            labels,
        },
        15 => ColumnDecoder::Char {
            max_bytes: a as u32 * 4,
            charset,
        },
        16 => ColumnDecoder::Binary { length: a as u32 },
        17 => ColumnDecoder::VarString {
            max_bytes: a as u32 * 300,
            charset,
        },
        18 => ColumnDecoder::Blob {
            pack: a % 4 + 1,
            content: BlobContent::Bytes,
        },
        19 => ColumnDecoder::Blob {
            pack: a % 4 + 1,
            content: BlobContent::Text(charset),
        },
        20 => ColumnDecoder::Blob {
            pack: a % 4 + 1,
            content: BlobContent::JsonText(charset),
        },
        _ => ColumnDecoder::JsonBinary { pack: a % 4 + 1 },
    };
    let mut cur = Cursor::new(&data[3..]);
    while !cur.is_empty() {
        let before = cur.remaining();
        if decoder.decode(&mut cur).is_err() || cur.remaining() == before {
            break;
        }
    }
}
