//! Reading SQL text as the server will: character sets, comments that run,
//! statement boundaries, and how big a statement is before anything parses it.
//!
//! # Why the router needs its own lexer
//! The router decides where a statement may run by parsing it (`sqlparser`).
//! Two things must be settled *before* that parse:
//!
//! - **Where strings end.** The server reads a statement in the session's
//!   `character_set_client`. In big5, cp932, gbk, sjis and gb18030 a
//!   multi-byte character may have `0x5C` (`\`) or another ASCII byte as its
//!   second byte: the server sees one character where a UTF-8 reader sees
//!   a byte ≥ 0x80 followed by a backslash escape. `SELECT '\xBF\x5C'; INSERT …`
//!   is then two statements to the server and one string to a naive reader —
//!   a write the router would send to a replica. [`to_parser_text`] walks the
//!   bytes with the server's own rules for the session's character set (the
//!   `ismbchar` functions of MariaDB/MySQL's `ctype-*.c`) and hands the parser
//!   text in which every multi-byte character is one placeholder character
//!   with no meaning to the lexer. Character sets whose multi-byte characters
//!   never contain ASCII bytes (UTF-8, latin1, ujis, euckr…) need nothing but
//!   a lossy UTF-8 view, which never swallows an ASCII byte. A character set
//!   the proxy does not know is [`ClientCharset::Unknown`]: nothing of such a
//!   session is read, everything goes to the master.
//!
//! - **How big it is.** `sqlparser` builds a tree as deep as a left-deep
//!   expression is long (`a OR b OR c …` with 30 000 terms, `1+1+…`,
//!   `UNION ALL` chains), and visiting or dropping that tree recursively
//!   overflows the thread's stack: an abort of the whole process, not a panic.
//!   [`measure`] counts the tokens that can make the tree deeper (operators and
//!   words; literals, commas and parentheses cannot) in one pass; text above
//!   [`MAX_PARSED_TOKENS`] is not parsed at all and goes to the master.

use std::borrow::Cow;

/// How the server splits the session's bytes into characters, for the
/// character sets where that matters to a lexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientCharset {
    /// Every byte below 0x80 is the ASCII character it looks like: UTF-8,
    /// the single-byte sets, and multi-byte sets whose continuation bytes are
    /// all ≥ 0x80 (ujis, eucjpms, euckr, gb2312).
    AsciiSafe,
    /// big5: lead 0xA1–0xF9, trail 0x40–0x7E or 0xA1–0xFE.
    Big5,
    /// sjis and cp932: lead 0x81–0x9F or 0xE0–0xFC, trail 0x40–0x7E or 0x80–0xFC.
    Sjis,
    /// gbk: lead 0x81–0xFE, trail 0x40–0x7E or 0x80–0xFE.
    Gbk,
    /// gb18030: gbk's two-byte form plus four-byte characters
    /// (0x81–0xFE, 0x30–0x39, 0x81–0xFE, 0x30–0x39).
    Gb18030,
    /// Not known to the proxy (or not usable as a client character set):
    /// the session's text is never classified; everything goes to the master.
    Unknown,
}

impl ClientCharset {
    /// The character set of a MariaDB/MySQL character set name
    /// (`SET NAMES gbk`, `@@character_set_client`).
    pub fn from_name(name: &str) -> ClientCharset {
        match name.to_ascii_lowercase().as_str() {
            "big5" => ClientCharset::Big5,
            "sjis" | "cp932" => ClientCharset::Sjis,
            "gbk" => ClientCharset::Gbk,
            "gb18030" => ClientCharset::Gb18030,
            "utf8" | "utf8mb3" | "utf8mb4" | "latin1" | "latin2" | "latin5" | "latin7" | "ascii"
            | "binary" | "cp1250" | "cp1251" | "cp1256" | "cp1257" | "cp850" | "cp852" | "cp866" | "dec8"
            | "greek" | "hebrew" | "hp8" | "keybcs2" | "koi8r" | "koi8u" | "macce" | "macroman"
            | "armscii8" | "geostd8" | "tis620" | "ujis" | "eucjpms" | "euckr" | "gb2312" => {
                ClientCharset::AsciiSafe
            }
            // swe7 gives `\`, `[`, `]`… letter meanings; ucs2/utf16/utf32 are
            // refused by servers as client character sets.
            _ => ClientCharset::Unknown,
        }
    }

    /// The character set of a collation id, as a client names it in the
    /// handshake or `COM_CHANGE_USER` (ids are the servers' fixed numbering;
    /// MariaDB's `_nopad` collations included).
    pub fn from_collation(id: u16) -> ClientCharset {
        match id {
            1 | 84 | 1025 | 1108 => ClientCharset::Big5,
            13 | 88 | 1037 | 1112 | 95 | 96 | 1119 | 1120 => ClientCharset::Sjis,
            28 | 87 | 1052 | 1111 => ClientCharset::Gbk,
            248..=250 => ClientCharset::Gb18030,
            // ucs2 (35, 90, 128–151, 159), utf16 (54, 55, 101–124), utf16le
            // (56, 62), utf32 (60, 61, 160–183): not client character sets.
            35 | 90 | 128..=151 | 159 | 54 | 55 | 101..=124 | 56 | 62 | 60 | 61 | 160..=183 => {
                ClientCharset::Unknown
            }
            // swe7 (10, 82).
            10 | 82 => ClientCharset::Unknown,
            // Every other id of a real server is ASCII-transparent (latin*,
            // utf8*, cp*, euc*, …); an id the server does not know makes it
            // fall back to its default character set, also ASCII-transparent.
            0..=2047 => ClientCharset::AsciiSafe,
            _ => ClientCharset::Unknown,
        }
    }

    /// Length of the multi-byte character at the start of `b` under this
    /// character set (2 or 4), or `None` when `b[0]` stands alone.
    fn mb_len(self, b: &[u8]) -> Option<usize> {
        let (lead, trail) = match (b.first(), b.get(1)) {
            (Some(&l), Some(&t)) => (l, t),
            _ => return None,
        };
        let two = match self {
            ClientCharset::Big5 => {
                (0xA1..=0xF9).contains(&lead) && matches!(trail, 0x40..=0x7E | 0xA1..=0xFE)
            }
            ClientCharset::Sjis => {
                matches!(lead, 0x81..=0x9F | 0xE0..=0xFC) && matches!(trail, 0x40..=0x7E | 0x80..=0xFC)
            }
            ClientCharset::Gbk | ClientCharset::Gb18030 => {
                (0x81..=0xFE).contains(&lead) && matches!(trail, 0x40..=0x7E | 0x80..=0xFE)
            }
            ClientCharset::AsciiSafe | ClientCharset::Unknown => false,
        };
        if two {
            return Some(2);
        }
        if self == ClientCharset::Gb18030
            && (0x81..=0xFE).contains(&lead)
            && (0x30..=0x39).contains(&trail)
            && b.get(2).is_some_and(|c| (0x81..=0xFE).contains(c))
            && b.get(3).is_some_and(|c| (0x30..=0x39).contains(c))
        {
            return Some(4);
        }
        None
    }
}

/// What the parser sees in place of a multi-byte character: one character
/// that is neither a quote, a backslash nor an operator (a letter to the
/// MySQL dialect's lexer, as any byte ≥ 0x80 is to the server's).
pub const PLACEHOLDER: char = '\u{FFFD}';

/// The session's bytes as text the parser lexes exactly as the server does,
/// or `None` when the character set is unknown. Multi-byte characters (and
/// bytes that are not valid UTF-8 under `AsciiSafe`) become [`PLACEHOLDER`];
/// every ASCII byte that the server reads as ASCII stays itself.
pub fn to_parser_text(sql: &[u8], cs: ClientCharset) -> Option<Cow<'_, str>> {
    match cs {
        ClientCharset::Unknown => None,
        // Lossy UTF-8 replaces invalid sequences but never consumes an
        // ASCII byte: the ASCII structure is the server's.
        ClientCharset::AsciiSafe => Some(String::from_utf8_lossy(sql)),
        _ => {
            if sql.is_ascii() {
                return Some(Cow::Borrowed(std::str::from_utf8(sql).ok()?));
            }
            let mut out = String::with_capacity(sql.len());
            let mut i = 0;
            while i < sql.len() {
                let b = sql[i];
                if b < 0x80 {
                    out.push(b as char);
                    i += 1;
                } else {
                    i += cs.mb_len(&sql[i..]).unwrap_or(1);
                    out.push(PLACEHOLDER);
                }
            }
            Some(Cow::Owned(out))
        }
    }
}

/// Statements bigger than this many tokens that can deepen a parse tree are
/// not parsed; they go to the master. With the parser's own nesting limit
/// this bounds the tree's depth, and with it the stack that visiting and
/// dropping the tree needs (measured: well within a 2 MiB stack in a debug
/// build, see the router's tests).
pub const MAX_PARSED_TOKENS: usize = 2000;

/// What one pass over the text found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Measure<'a> {
    /// Tokens that can deepen a parse tree: words and operator symbols.
    pub deepening: usize,
    /// All tokens, literals included (what a parse of the text costs).
    pub tokens: usize,
    /// Statements with at least one token, as the server splits the text
    /// at `;` (the parser must find as many: it stops silently at some
    /// words, e.g. an `END` where a `;` belongs).
    pub statements: usize,
    /// A word that can leave session state behind when the text is not
    /// parsed: `temporary`, `get_lock`, `prepare`, `call`, `names`, … or a
    /// statement starting with `set`.
    pub stateful: bool,
    /// The text contains `/*! … */` or `/*M! … */`, which the server runs.
    pub executable_comment: bool,
    /// The first word of the first statement, as written.
    pub first_word: &'a str,
    /// A quote or comment is not closed.
    pub unterminated: bool,
    /// The word `KILL` appears outside strings and comments (anywhere: a
    /// compound statement or an executable comment can hide it).
    pub kill: bool,
    /// A double-quoted token contains a backslash: with `ANSI_QUOTES` in
    /// the session's `sql_mode` it is an identifier without escapes and ends
    /// elsewhere than the parser thinks. Such text is not classified.
    pub ambiguous_quote: bool,
}

/// One pass over parser text (see [`to_parser_text`]) with the server's
/// rules for quotes and comments: counts what can make a parse tree deep
/// and records each statement's first word. Inside executable comments the
/// text counts as code. `backslash_escapes` is false under
/// `NO_BACKSLASH_ESCAPES`.
pub fn measure(sql: &str, backslash_escapes: bool) -> Measure<'_> {
    let b = sql.as_bytes();
    let mut m = Measure::default();
    let mut at_statement_start = true;
    let mut in_statement = false;
    // A token: counted, and the first of a statement counts the statement.
    macro_rules! token {
        () => {
            m.tokens += 1;
            if !in_statement {
                m.statements += 1;
                in_statement = true;
            }
        };
    }
    let mut i = 0;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' | b'`' => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => {
                            m.unterminated = true;
                            return m;
                        }
                        Some(&b'\\') if c != b'`' => {
                            m.ambiguous_quote |= c == b'"';
                            i += if backslash_escapes || c == b'"' { 2 } else { 1 };
                        }
                        Some(&q) if q == c => {
                            if b.get(i + 1) == Some(&c) {
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
                if c == b'`' {
                    // A quoted identifier can start a statement only in
                    // odd ways (`x` := …): no first word.
                    at_statement_start = false;
                }
                m.deepening += (c == b'`') as usize;
                token!();
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let exec = b.get(i + 2) == Some(&b'!')
                    || (b.get(i + 2) == Some(&b'M') && b.get(i + 3) == Some(&b'!'));
                if exec {
                    // The body runs: skip the marker and version, lex the rest.
                    m.executable_comment = true;
                    i += if b[i + 2] == b'!' { 3 } else { 4 };
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    continue;
                }
                match sql[i + 2..].find("*/") {
                    Some(end) => i += 2 + end + 2,
                    None => {
                        m.unterminated = true;
                        return m;
                    }
                }
            }
            b'*' if b.get(i + 1) == Some(&b'/') => {
                // End of an executable comment's body.
                i += 2;
            }
            b'#' => i = skip_line(b, i),
            b'-' if b.get(i + 1) == Some(&b'-')
                && b.get(i + 2)
                    .is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control()) =>
            {
                i = skip_line(b, i)
            }
            b';' => {
                at_statement_start = true;
                in_statement = false;
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            b',' | b'(' | b')' | b'.' => {
                token!();
                i += 1;
            }
            c if c.is_ascii_digit() => {
                // A number (or an identifier starting with digits: a word).
                let start = i;
                while i < b.len() && (word(b[i]) || b[i] == b'.') {
                    i += 1;
                }
                if !b[start..i]
                    .iter()
                    .all(|&x| x.is_ascii_hexdigit() || matches!(x, b'.' | b'x' | b'X' | b'e' | b'E'))
                {
                    m.deepening += 1;
                }
                token!();
                at_statement_start = false;
            }
            c if word(c) || c == b'@' => {
                let start = i;
                i += 1;
                while i < b.len() && (word(b[i]) || b[i] == b'@') {
                    i += 1;
                }
                let w = &sql[start..i];
                m.kill |= w.eq_ignore_ascii_case("kill");
                m.stateful |= (at_statement_start
                    && STATEFUL_FIRST_WORDS.iter().any(|s| w.eq_ignore_ascii_case(s)))
                    || STATEFUL_WORDS.iter().any(|s| w.eq_ignore_ascii_case(s));
                if at_statement_start {
                    if m.statements <= 1 && m.first_word.is_empty() {
                        m.first_word = w;
                    }
                    at_statement_start = false;
                }
                m.deepening += 1;
                token!();
            }
            _ => {
                // Operator symbols (ASCII punctuation); a run of them is one token.
                i += 1;
                while i < b.len()
                    && b[i].is_ascii_punctuation()
                    && !matches!(
                        b[i],
                        b'\'' | b'"' | b'`' | b';' | b',' | b'(' | b')' | b'_' | b'$' | b'@' | b'#'
                    )
                    && !(b[i] == b'/' && b.get(i + 1) == Some(&b'*'))
                    && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/'))
                    && !(b[i] == b'-' && b.get(i + 1) == Some(&b'-'))
                {
                    i += 1;
                }
                m.deepening += 1;
                token!();
                at_statement_start = false;
            }
        }
    }
    m
}

/// Statements that may leave state on the master connection when the text
/// is not parsed …
const STATEFUL_FIRST_WORDS: &[&str] = &[
    "set",
    "lock",
    "prepare",
    "execute",
    "deallocate",
    "handler",
    "xa",
    "call",
];

/// … and words that may, wherever they are.
const STATEFUL_WORDS: &[&str] = &[
    "temporary",
    "get_lock",
    "names",
    "character",
    "charset",
    "character_set_client",
];

/// Texts with more tokens than this are not parsed (the parse would cost
/// memory and time in proportion): they go to the master.
pub const MAX_TOKENS: usize = 100_000;

fn skip_line(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] != b'\n' {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_trail_bytes_are_not_escapes() {
        // gbk: 0xBF 0x5C is one character; the quote after it ends the string.
        let sql = b"SELECT '\xBF\x5C'; INSERT INTO t VALUES (1) -- '";
        let text = to_parser_text(sql, ClientCharset::Gbk).unwrap();
        assert_eq!(text, "SELECT '\u{FFFD}'; INSERT INTO t VALUES (1) -- '");
        let m = measure(&text, true);
        assert_eq!((m.statements, m.first_word), (2, "SELECT"));
        // As UTF-8 the same bytes are one unterminated-looking string.
        let utf8 = to_parser_text(sql, ClientCharset::AsciiSafe).unwrap();
        assert_eq!(measure(&utf8, true).statements, 1);
        for cs in [ClientCharset::Big5, ClientCharset::Sjis, ClientCharset::Gb18030] {
            let t = to_parser_text(b"SELECT '\xE0\x5C'; DELETE FROM t -- '", cs).unwrap();
            assert_eq!(measure(&t, true).statements, 2, "{cs:?}");
        }
        // gb18030 four-byte characters; a lone lead byte stands alone.
        let t = to_parser_text(b"\x81\x30\x81\x30'\xFF", ClientCharset::Gb18030).unwrap();
        assert_eq!(t, "\u{FFFD}'\u{FFFD}");
        assert_eq!(to_parser_text(b"x", ClientCharset::Unknown), None);
    }

    #[test]
    fn charsets_by_name_and_collation() {
        assert_eq!(ClientCharset::from_name("GBK"), ClientCharset::Gbk);
        assert_eq!(ClientCharset::from_name("cp932"), ClientCharset::Sjis);
        assert_eq!(ClientCharset::from_name("utf8mb4"), ClientCharset::AsciiSafe);
        assert_eq!(ClientCharset::from_name("utf32"), ClientCharset::Unknown);
        assert_eq!(ClientCharset::from_collation(45), ClientCharset::AsciiSafe);
        assert_eq!(ClientCharset::from_collation(28), ClientCharset::Gbk);
        assert_eq!(ClientCharset::from_collation(60), ClientCharset::Unknown);
        assert_eq!(ClientCharset::from_collation(95), ClientCharset::Sjis);
    }

    fn m_kill(s: &str) -> bool {
        measure(s, true).kill
    }

    #[test]
    fn measure_counts_what_deepens_a_tree() {
        let m = measure("SELECT a FROM t WHERE id IN (1, 2, 3, 'x', 0x1F)", true);
        assert_eq!(m.deepening, 7); // SELECT a FROM t WHERE id IN
        let chain = format!("SELECT 1{}", " OR 1".repeat(100));
        assert_eq!(measure(&chain, true).deepening, 101);
        let chain = format!("SELECT 1{}", "+1".repeat(100));
        assert_eq!(measure(&chain, true).deepening, 101);
        let m = measure("/*!50000 KILL */ 5; select 1 /* c */ # x\n", true);
        assert!(m.executable_comment);
        assert_eq!((m.statements, m.first_word, m.kill), (2, "KILL", true));
        assert!(measure("SELECT 'open", true).unterminated);
        assert!(measure(r"SELECT 'a\'", true).unterminated);
        assert!(!measure(r"SELECT 'a\'", false).unterminated);
        assert!(measure("SELECT /* open", true).unterminated);
        assert!(m_kill("SELECT 1; BEGIN NOT ATOMIC KILL 5; END"));
        assert!(!m_kill("SELECT 'kill', `kill` FROM t -- kill"));
        assert!(measure(r#"SELECT "a\"; DELETE FROM t -- ""#, true).ambiguous_quote);
        assert!(!measure(r#"SELECT "a""b", 'c\'d'"#, true).ambiguous_quote);
        // Any bytes: no panic, always progress.
        for s in ["\u{FFFD}", "-", "--", "/*!", "*/", "@@", "`", "\u{0}\u{1}~"] {
            let _ = measure(s, true);
        }
    }
}
