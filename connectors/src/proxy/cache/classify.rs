//! Which statements may be answered from the cache, and which tables they read.
//!
//! # Rule
//! The router ([`crate::proxy::router`]) has already decided the statement is
//! a plain read a replica may run (no locking clause, no `INTO`, no write in a
//! CTE, no user variable, no stored function, nothing about the previous
//! statement), and that the session is outside any transaction. On top of
//! that a cached answer must be the answer *any later execution* would give
//! until one of its tables changes, so a statement is cacheable only when
//! it is exactly one `SELECT` (set operations allowed) that:
//! - calls only deterministic built-ins: no clock (`NOW()`, `CURDATE()`,
//!   `SYSDATE()`, `UNIX_TIMESTAMP()` …), no `RAND()`/`UUID()`, nothing about
//!   the session (`USER()`, `DATABASE()`, `CONNECTION_ID()`, `VERSION()`);
//! - reads no variable at all (`@x`, `@@sql_mode` …);
//! - reads at least one table, each named `t` or `db.t` (a plain table or a
//!   view by its name; no table functions, no CTEs, whose names would not be
//!   tables), and no system schema (`information_schema`, `mysql`,
//!   `performance_schema`, `sys`), which no change stream describes;
//! - does not say `SQL_NO_CACHE` or `/* dbmux:nocache */`.
//!
//! Anything the parser does not read is not cacheable. Which of the
//! cacheable statements are cached is then the configuration's choice
//! (tables, statement shapes, hints: [`super::config::CacheConfig`]).

use sqlparser::ast::{Expr, ObjectName, Query, Select, SetExpr, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// A table a statement reads: `db` is `None` for an unqualified name (the
/// session's current database).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRef {
    pub db: Option<String>,
    pub name: String,
}

/// The cache's verdict on one statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Cacheable; reads these tables (deduplicated, in order of appearance).
    Cacheable(Vec<TableRef>),
    /// Not cacheable, and why (for tests and debug logs).
    Not(&'static str),
}

/// Built-ins whose result depends on something else than their arguments
/// and the data (the clock, chance, the session, the server).
const VOLATILE_FUNCTIONS: &[&str] = &[
    "curdate",
    "current_date",
    "current_time",
    "current_timestamp",
    "curtime",
    "localtime",
    "localtimestamp",
    "now",
    "sysdate",
    "utc_date",
    "utc_time",
    "utc_timestamp",
    "unix_timestamp",
    "rand",
    "uuid",
    "uuid_short",
    "sys_guid",
    "current_user",
    "current_role",
    "session_user",
    "system_user",
    "user",
    "database",
    "schema",
    "connection_id",
    "version",
    "last_insert_id",
    "row_count",
    "found_rows",
    "sleep",
    "benchmark",
    "get_lock",
    "is_free_lock",
    "is_used_lock",
    "release_lock",
    "master_pos_wait",
    "master_gtid_wait",
    "nextval",
    "lastval",
    "setval",
];

/// Schemas no change stream describes.
const SYSTEM_SCHEMAS: &[&str] = &["information_schema", "mysql", "performance_schema", "sys"];

/// The hint comment that excludes a statement.
pub const NOCACHE_HINT: &str = "dbmux:nocache";
/// The hint comment that asks for caching (required with `hint_only`).
pub const CACHE_HINT: &str = "dbmux:cache";

/// What the cache knows of a statement text, shared by every text of one
/// shape (see [`analyze`]).
#[derive(Debug)]
pub struct Analysis {
    pub verdict: Verdict,
    /// The text with literals as `?` ([`crate::proxy::router::shape`]), for
    /// the configuration's `statements` patterns.
    pub shape: String,
    /// Carries the `/* dbmux:cache */` hint.
    pub hinted: bool,
}

/// Entries kept by [`analyze`] before it starts over, and their bytes: the
/// memory is bounded whatever clients send.
const ANALYSES: usize = 8192;
const ANALYSES_BYTES: usize = 16 << 20;
/// Texts longer than this are not cached (nor analyzed).
const MAX_TEXT: usize = 64 << 10;

/// [`classify`] for a session's raw bytes, memoized by shape: no rule here
/// looks at a literal's value (hints and `SQL_NO_CACHE` are looked for in
/// the shape, outside string literals), so two texts of one shape get the
/// same verdict, as with the router's own memo. `None`: not cacheable
/// (unreadable in the session's character set, unterminated, too long).
pub fn analyze(sql: &[u8], charset: crate::proxy::lexer::ClientCharset) -> Option<std::sync::Arc<Analysis>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Memo = (HashMap<String, Arc<Analysis>>, usize);
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    if sql.len() > MAX_TEXT {
        return None;
    }
    let text = crate::proxy::lexer::to_parser_text(sql, charset)?;
    let shape = crate::proxy::router::shape(&text)?;
    let memo = MEMO.get_or_init(|| Mutex::new((HashMap::new(), 0)));
    if let Some(a) = memo.lock().unwrap_or_else(|e| e.into_inner()).0.get(&shape) {
        return Some(a.clone());
    }
    let lower = shape.to_ascii_lowercase();
    let verdict = if lower.contains(NOCACHE_HINT) {
        Verdict::Not("dbmux:nocache hint")
    } else if contains_word(&lower, "sql_no_cache") {
        Verdict::Not("SQL_NO_CACHE")
    } else {
        classify_tree(&text)
    };
    let a = Arc::new(Analysis {
        verdict,
        hinted: lower.contains(CACHE_HINT),
        shape: shape.clone(),
    });
    let mut m = memo.lock().unwrap_or_else(|e| e.into_inner());
    if m.0.len() >= ANALYSES || m.1 + 2 * shape.len() > ANALYSES_BYTES {
        *m = (HashMap::new(), 0);
    }
    m.1 += 2 * shape.len();
    m.0.insert(shape, a.clone());
    Some(a)
}

/// Classifies parser text (one statement, as the router read it).
pub fn classify(sql: &str) -> Verdict {
    let lower = sql.to_ascii_lowercase();
    if lower.contains(NOCACHE_HINT) {
        return Verdict::Not("dbmux:nocache hint");
    }
    if contains_word(&lower, "sql_no_cache") {
        return Verdict::Not("SQL_NO_CACHE");
    }
    classify_tree(sql)
}

/// [`classify`] without the hint checks (done on the shape by [`analyze`]).
fn classify_tree(sql: &str) -> Verdict {
    let statements = match Parser::parse_sql(&MySqlDialect {}, sql) {
        Ok(s) => s,
        Err(_) => return Verdict::Not("not parsed"),
    };
    let [Statement::Query(q)] = statements.as_slice() else {
        return Verdict::Not("not a single SELECT");
    };
    let mut check = Check::default();
    if let ControlFlow::Break(why) = q.visit(&mut check) {
        return Verdict::Not(why);
    }
    if check.tables.is_empty() {
        return Verdict::Not("reads no table");
    }
    Verdict::Cacheable(check.tables)
}

/// `word` appears in `text` as a whole word (not inside an identifier).
fn contains_word(text: &str, word: &str) -> bool {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let (s, e) = (from + i, from + i + word.len());
        if (s == 0 || !ident(b[s - 1])) && (e >= b.len() || !ident(b[e])) {
            return true;
        }
        from = s + 1;
    }
    false
}

#[derive(Default)]
struct Check {
    tables: Vec<TableRef>,
}

impl Visitor for Check {
    type Break = &'static str;

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<&'static str> {
        if q.with.is_some() {
            return ControlFlow::Break("WITH (a CTE's name is not a table)");
        }
        if !q.locks.is_empty() {
            return ControlFlow::Break("locking read");
        }
        match &*q.body {
            SetExpr::Select(_) | SetExpr::Query(_) | SetExpr::SetOperation { .. } => {
                ControlFlow::Continue(())
            }
            SetExpr::Values(_) => ControlFlow::Continue(()),
            _ => ControlFlow::Break("not a plain SELECT"),
        }
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<&'static str> {
        if s.into.is_some() {
            return ControlFlow::Break("SELECT INTO");
        }
        if s.select_modifiers.as_ref().is_some_and(|m| m.sql_calc_found_rows) {
            return ControlFlow::Break("SQL_CALC_FOUND_ROWS");
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, _s: &Statement) -> ControlFlow<&'static str> {
        ControlFlow::Break("nested statement")
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<&'static str> {
        match t {
            TableFactor::Table { args: None, .. }
            | TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. } => ControlFlow::Continue(()),
            _ => ControlFlow::Break("table function"),
        }
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<&'static str> {
        let parts: Option<Vec<&str>> = name
            .0
            .iter()
            .map(|p| p.as_ident().map(|i| i.value.as_str()))
            .collect();
        let t = match parts.as_deref() {
            Some([t]) => TableRef {
                db: None,
                name: t.to_string(),
            },
            Some([db, t]) => TableRef {
                db: Some(db.to_string()),
                name: t.to_string(),
            },
            _ => return ControlFlow::Break("table name with more than two parts"),
        };
        if t.name.contains(crate::proxy::lexer::PLACEHOLDER)
            || t.db
                .as_deref()
                .is_some_and(|d| d.contains(crate::proxy::lexer::PLACEHOLDER))
        {
            return ControlFlow::Break("table name not read as the client wrote it");
        }
        if t.db
            .as_deref()
            .is_some_and(|d| SYSTEM_SCHEMAS.contains(&d.to_ascii_lowercase().as_str()))
        {
            return ControlFlow::Break("system schema");
        }
        if !self.tables.contains(&t) {
            self.tables.push(t);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<&'static str> {
        match e {
            Expr::Function(f) => {
                let name = f.name.to_string().to_ascii_lowercase();
                if f.name.0.len() != 1 || VOLATILE_FUNCTIONS.contains(&name.as_str()) {
                    return ControlFlow::Break("non-deterministic or session function");
                }
            }
            Expr::Identifier(id) if id.value.starts_with('@') => return ControlFlow::Break("variable"),
            Expr::CompoundIdentifier(ids) if ids.first().is_some_and(|i| i.value.starts_with('@')) => {
                return ControlFlow::Break("variable")
            }
            // `CURRENT_TIMESTAMP` and friends without parentheses.
            Expr::Identifier(id)
                if id.quote_style.is_none()
                    && VOLATILE_FUNCTIONS.contains(&id.value.to_ascii_lowercase().as_str()) =>
            {
                return ControlFlow::Break("non-deterministic or session function")
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(sql: &str) -> Vec<String> {
        match classify(sql) {
            Verdict::Cacheable(t) => t
                .into_iter()
                .map(|t| match t.db {
                    Some(db) => format!("{db}.{}", t.name),
                    None => t.name,
                })
                .collect(),
            Verdict::Not(why) => panic!("{sql}: not cacheable: {why}"),
        }
    }

    fn not(sql: &str) -> &'static str {
        match classify(sql) {
            Verdict::Not(why) => why,
            v => panic!("{sql}: cacheable: {v:?}"),
        }
    }

    #[test]
    fn plain_reads_are_cacheable_with_their_tables() {
        assert_eq!(tables("SELECT * FROM t WHERE id = 1"), ["t"]);
        assert_eq!(
            tables("SELECT a FROM app.items i JOIN `app`.`orders` o ON o.i = i.id"),
            ["app.items", "app.orders"]
        );
        assert_eq!(
            tables("SELECT COUNT(*), SUM(v) FROM t WHERE v BETWEEN 1 AND 100"),
            ["t"]
        );
        assert_eq!(
            tables("SELECT * FROM t WHERE id IN (SELECT t_id FROM u)"),
            ["t", "u"]
        );
        assert_eq!(tables("SELECT x FROM (SELECT id AS x FROM t) d"), ["t"]);
        assert_eq!(
            tables("SELECT a FROM t UNION SELECT a FROM t2 ORDER BY 1 LIMIT 10"),
            ["t", "t2"]
        );
        assert_eq!(tables("SELECT a FROM t, t"), ["t"]);
        assert_eq!(
            tables("SELECT CONCAT(UPPER(v), '!'), ROUND(x, 2) FROM t /* dbmux:cache */"),
            ["t"]
        );
        assert_eq!(tables("SELECT EXISTS (SELECT 1 FROM t WHERE id = 3)"), ["t"]);
        assert_eq!(tables("SELECT * FROM t WHERE id = ?"), ["t"]);
    }

    #[test]
    fn clock_chance_and_session_functions_are_not() {
        for sql in [
            "SELECT NOW(), v FROM t",
            "SELECT v FROM t WHERE d > CURDATE()",
            "SELECT v FROM t WHERE d > CURRENT_TIMESTAMP",
            "SELECT v FROM t WHERE d > current_date()",
            "SELECT SYSDATE() FROM t",
            "SELECT UNIX_TIMESTAMP() - ts FROM t",
            "SELECT * FROM t ORDER BY RAND() LIMIT 1",
            "SELECT UUID(), v FROM t",
            "SELECT USER(), v FROM t",
            "SELECT CURRENT_USER(), v FROM t",
            "SELECT DATABASE(), v FROM t",
            "SELECT CONNECTION_ID(), v FROM t",
            "SELECT VERSION(), v FROM t",
            "SELECT app.f(v) FROM t",
        ] {
            assert_eq!(not(sql), "non-deterministic or session function", "{sql}");
        }
    }

    #[test]
    fn variables_are_not() {
        for sql in [
            "SELECT @x, v FROM t",
            "SELECT v FROM t WHERE id = @id",
            "SELECT @@sql_mode, v FROM t",
            "SELECT v FROM t WHERE id = @@session.auto_increment_increment",
        ] {
            assert_eq!(not(sql), "variable", "{sql}");
        }
    }

    #[test]
    fn locking_and_other_statement_classes_are_not() {
        assert_eq!(not("SELECT * FROM t FOR UPDATE"), "locking read");
        assert_eq!(not("SELECT * FROM t LOCK IN SHARE MODE"), "not parsed");
        assert_eq!(not("SELECT * FROM t INTO OUTFILE '/tmp/x'"), "not parsed");
        assert_eq!(not("SELECT * INTO t2 FROM t"), "SELECT INTO");
        assert_eq!(not("SELECT SQL_CALC_FOUND_ROWS * FROM t"), "SQL_CALC_FOUND_ROWS");
        assert_eq!(
            not("WITH x AS (SELECT 1) SELECT * FROM x"),
            "WITH (a CTE's name is not a table)"
        );
        assert_eq!(not("SELECT 1 + 1"), "reads no table");
        assert_eq!(not("SELECT * FROM information_schema.tables"), "system schema");
        assert_eq!(not("SELECT * FROM mysql.user"), "system schema");
        assert_eq!(not("SELECT SQL_NO_CACHE * FROM t"), "SQL_NO_CACHE");
        assert_eq!(not("SELECT * FROM t /* dbmux:nocache */"), "dbmux:nocache hint");
        assert_eq!(not("SELECT 1 FROM t; SELECT 2 FROM t"), "not a single SELECT");
        assert_eq!(not("UPDATE t SET v = 1"), "not a single SELECT");
        assert_eq!(not("SHOW TABLES"), "not a single SELECT");
        assert_eq!(not("SELECT * FROM a.b.c"), "table name with more than two parts");
        assert_eq!(
            not("SELECT * FROM JSON_TABLE('[1]', '$[*]' COLUMNS (a INT PATH '$')) j"),
            "table function"
        );
        // A column named like a word is not the word.
        assert_eq!(tables("SELECT sql_no_cache_x FROM t"), ["t"]);
    }

    #[test]
    fn analysis_is_shared_by_shape_and_reads_hints_outside_literals() {
        use crate::proxy::lexer::ClientCharset;
        let cs = ClientCharset::from_collation(45);
        let a = analyze(b"SELECT v FROM t WHERE id = 1 /* dbmux:cache */", cs).unwrap();
        assert!(a.hinted);
        assert_eq!(a.shape, "SELECT v FROM t WHERE id = ? /* dbmux:cache */");
        assert!(matches!(a.verdict, Verdict::Cacheable(_)));
        let b = analyze(b"SELECT v FROM t WHERE id = 2 /* dbmux:cache */", cs).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        // A hint word inside a string literal is data, not a hint.
        let c = analyze(b"SELECT v FROM t WHERE v = 'dbmux:nocache'", cs).unwrap();
        assert!(matches!(c.verdict, Verdict::Cacheable(_)) && !c.hinted);
        assert!(analyze(b"SELECT v FROM t WHERE v = 'open", cs).is_none());
        assert!(analyze(b"SELECT NOW() FROM t", cs).is_some_and(|a| matches!(a.verdict, Verdict::Not(_))));
    }
}
