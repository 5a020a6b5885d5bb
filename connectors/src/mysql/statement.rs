//! Light reading of SQL statement text found in the binlog (`QUERY` events):
//! which tables a statement-based write or an unparsed DDL names, what a
//! `TRUNCATE` empties. Used by capture to decide, never to execute: when a
//! statement cannot be read, callers assume the worst.

use pipeline::schema::TableId;

/// The table a DDL statement dbmux cannot parse names, by a light reading of
/// its first words (`ALTER [ONLINE|IGNORE] TABLE x`, `CREATE [OR REPLACE]
/// TABLE [IF NOT EXISTS] x`, `DROP TABLE [IF EXISTS] x`, `RENAME TABLE x`).
pub(super) fn ddl_target_guess(text: &[u8], default_db: &str) -> Option<TableId> {
    let s = std::str::from_utf8(text).ok()?;
    let mut rest = s.trim_start();
    for w in [
        "ALTER", "CREATE", "DROP", "RENAME", "OR", "REPLACE", "ONLINE", "IGNORE", "TABLE", "IF", "NOT",
        "EXISTS",
    ] {
        if starts_with_word(rest.as_bytes(), w) {
            rest = rest[w.len()..].trim_start();
        }
    }
    let (first, r) = identifier(rest)?;
    match r.trim_start().strip_prefix('.') {
        Some(r) => Some(TableId::new(first, identifier(r.trim_start())?.0)),
        None if !default_db.is_empty() => Some(TableId::new(default_db, first)),
        None => None,
    }
}

/// The tables a statement-based DML statement may write, as (database, table),
/// with `default_db` for unqualified names: every table the statement names
/// (a multi-table UPDATE or DELETE may write any of them; an INSERT … SELECT
/// also lists what it reads, which errs on the safe side). `None` when the
/// statement cannot be read or names a table without a database to put it in:
/// the caller must then assume the worst.
pub(super) fn statement_tables(text: &[u8], default_db: &str) -> Option<Vec<(String, String)>> {
    use sqlparser::ast::visit_relations;
    use sqlparser::dialect::MySqlDialect;
    use sqlparser::parser::Parser;
    use std::ops::ControlFlow;
    let sql = std::str::from_utf8(text).ok()?;
    if starts_with_word(text, "LOAD") {
        // `LOAD DATA … INTO TABLE [db.]name …` (sqlparser does not read LOAD DATA).
        let upper = sql.to_ascii_uppercase();
        let at = upper.find("INTO TABLE")? + "INTO TABLE".len();
        let rest = sql[at..].trim_start();
        let (first, rest) = identifier(rest)?;
        return match rest.trim_start().strip_prefix('.') {
            Some(r) => Some(vec![(first, identifier(r.trim_start())?.0)]),
            None if !default_db.is_empty() => Some(vec![(default_db.to_string(), first)]),
            None => None,
        };
    }
    let statements = Parser::parse_sql(&MySqlDialect {}, sql).ok()?;
    let mut out = Vec::new();
    let mut unsure = false;
    let _ = visit_relations(&statements, |name| {
        let parts: Vec<&str> = name
            .0
            .iter()
            .map(|p| p.as_ident().map(|i| i.value.as_str()))
            .collect::<Option<_>>()
            .unwrap_or_default();
        match parts.as_slice() {
            [t] if !default_db.is_empty() => out.push((default_db.to_string(), t.to_string())),
            [d, t] => out.push((d.to_string(), t.to_string())),
            _ => unsure = true,
        }
        ControlFlow::<()>::Continue(())
    });
    (!unsure && !out.is_empty()).then_some(out)
}

/// `TRUNCATE [TABLE] [db.]name` → (db, name), identifiers optionally backquoted.
pub(super) fn truncate_target(text: &[u8]) -> Option<(Option<String>, String)> {
    if !starts_with_word(text, "TRUNCATE") {
        return None;
    }
    let s = std::str::from_utf8(&text["TRUNCATE".len()..]).ok()?.trim_start();
    let s = if starts_with_word(s.as_bytes(), "TABLE") {
        s["TABLE".len()..].trim_start()
    } else {
        s
    };
    let (first, rest) = identifier(s)?;
    match rest.trim_start().strip_prefix('.') {
        Some(r) => {
            let (second, _) = identifier(r.trim_start())?;
            Some((Some(first), second))
        }
        None => Some((None, first)),
    }
}

/// One identifier at the start of `s` (`` `a``b` `` or `name`), and the rest.
pub(super) fn identifier(s: &str) -> Option<(String, &str)> {
    if let Some(r) = s.strip_prefix('`') {
        let mut out = String::new();
        let mut it = r.char_indices().peekable();
        while let Some((i, c)) = it.next() {
            if c == '`' {
                if it.peek().is_some_and(|&(_, n)| n == '`') {
                    it.next();
                    out.push('`');
                } else {
                    return Some((out, &r[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

/// The statement text after leading whitespace and `/* … */` comments.
pub(super) fn strip_comments(raw: &[u8]) -> &[u8] {
    let mut s = raw;
    loop {
        while let [b, rest @ ..] = s {
            if b.is_ascii_whitespace() {
                s = rest;
            } else {
                break;
            }
        }
        if s.starts_with(b"/*") {
            match s.windows(2).position(|w| w == b"*/") {
                Some(end) => s = &s[end + 2..],
                None => return &[],
            }
        } else {
            return s;
        }
    }
}

/// Case-insensitive `text` starts with the words `w` (single spaces between
/// words match any whitespace), followed by a non-identifier character or the end.
pub(super) fn starts_with_word(text: &[u8], w: &str) -> bool {
    let mut t = text;
    for (i, word) in w.split(' ').enumerate() {
        if i > 0 {
            let ws = t.iter().take_while(|b| b.is_ascii_whitespace()).count();
            if ws == 0 {
                return false;
            }
            t = &t[ws..];
        }
        if t.len() < word.len() || !t[..word.len()].eq_ignore_ascii_case(word.as_bytes()) {
            return false;
        }
        t = &t[word.len()..];
    }
    t.first()
        .is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
}
