//! Statement classification: where may this SQL run?
//!
//! # Rule
//! Only what is provably a plain read goes to a replica: a `SELECT` (or
//! `WITH … SELECT`, `VALUES`, set operations) without locking clauses, without
//! `INTO`, without nested data-changing statements, calling only functions on
//! a list of side-effect-free built-ins, and reading no user variable and no
//! per-connection value (`LAST_INSERT_ID()`, `@@last_gtid`, …). Everything
//! else — including anything `sqlparser` cannot read (`LOCK IN SHARE MODE`,
//! `HANDLER`, `XA`, …) — goes to the master. A stored function call
//! (`SELECT f(x)`) goes to the master too: it may write.
//!
//! # Reading the text first
//! The bytes are read with the session's character set and measured by
//! [`super::lexer`] before anything parses them: text the parser would read
//! differently from the server (an unknown character set, a backslash in a
//! double-quoted token) and text too big to parse within a bounded stack
//! go to the master unparsed.
//!
//! # Pinning
//! Some statements leave state on the master connection that later reads must
//! see: user variables, `GET_LOCK`, temporary tables (also those a `CALL` or
//! a stored function may create), `LOCK TABLES`, SQL-level `PREPARE`, unknown
//! session variables. They return a `pin` reason and the session sends every
//! later statement to the master until `COM_RESET_CONNECTION`. Transactions
//! and `autocommit=0` are not pinned here: the session reads them from the
//! master's status flags, which is exact (it also sees implicit commits).
//!
//! # Session settings
//! `SET NAMES`, `SET time_zone`, `SET sql_mode` and a few more change how a
//! connection reads and prints data. They run on every backend connection
//! the session has open and are replayed on connections it opens later.
//! `SET autocommit` is a setting of the master connection only (a replica
//! connection always autocommits), answered by the proxy when the session
//! has no master connection yet.
//!
//! # The previous statement
//! `SHOW WARNINGS`, `SHOW ERRORS`, `GET DIAGNOSTICS`, `FOUND_ROWS()`,
//! `ROW_COUNT()`, `@@warning_count` and `@@error_count` answer about the
//! previous statement of the connection: they run where that statement ran
//! ([`Target::Last`]).
//!
//! # KILL
//! A client's `KILL [QUERY|CONNECTION] n` names a proxy thread id, not a
//! backend one: it is answered by the proxy ([`Local::Kill`]) and never
//! forwarded. Any other text with the word `KILL` outside strings and comments
//! (a multi-statement query, a compound statement, an executable comment) is
//! refused, so no text of a client can kill a backend connection by number.

use super::lexer::{self, ClientCharset, Measure};
use sqlparser::ast::{Expr, Query, Select, SetExpr, Statement, Visit, Visitor};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// Where a statement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A caught-up replica if there is one, else the master.
    Replica,
    /// The master.
    Master,
    /// Every open backend connection (and replayed on later ones).
    Session,
    /// The backend connection that ran the session's previous statement.
    Last,
    /// Answered by the proxy itself.
    Local(Local),
}

/// Statements the proxy answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// `KILL [CONNECTION] n` (`query` false) or `KILL QUERY n`: `n` is a
    /// proxy thread id.
    Kill { query: bool, id: u64 },
    /// Refused with ER_NOT_SUPPORTED_YET and this reason.
    Refuse(&'static str),
}

/// The classification of one `COM_QUERY` / `COM_STMT_PREPARE` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub target: Target,
    /// May change data: the session's next reads must observe it.
    pub write: bool,
    /// Pins the session to the master, with the reason.
    pub pin: Option<&'static str>,
    /// `USE db`.
    pub use_db: Option<String>,
    /// The statement sets the client character set (`SET NAMES`,
    /// `character_set_client`): the session's next statements are read in
    /// it. `Unknown` when the value cannot be read from the text.
    pub charset: Option<ClientCharset>,
    /// `SET autocommit = 0|1` with a literal value.
    pub autocommit: Option<bool>,
}

impl Route {
    fn with(target: Target, write: bool) -> Route {
        Route {
            target,
            write,
            pin: None,
            use_db: None,
            charset: None,
            autocommit: None,
        }
    }
    fn read() -> Route {
        Route::with(Target::Replica, false)
    }
    fn master() -> Route {
        Route::with(Target::Master, false)
    }
    fn write() -> Route {
        Route::with(Target::Master, true)
    }
    fn session() -> Route {
        Route::with(Target::Session, false)
    }
    fn last() -> Route {
        Route::with(Target::Last, false)
    }
    fn local(l: Local) -> Route {
        Route::with(Target::Local(l), false)
    }
    fn pinned(reason: &'static str) -> Route {
        Route {
            pin: Some(reason),
            ..Route::write()
        }
    }

    /// True when the route holds nothing taken from the text's literals or
    /// identifiers, so texts of one shape share it (see [`classify_cached`]).
    fn shareable(&self) -> bool {
        self.use_db.is_none()
            && self.charset.is_none()
            && self.autocommit.is_none()
            && !matches!(self.target, Target::Local(_))
    }

    /// The combination of two statements of one multi-statement query.
    fn merge(self, other: Route) -> Route {
        let target = match (self.target, other.target) {
            (Target::Local(l), _) | (_, Target::Local(l)) => Target::Local(match l {
                Local::Kill { .. } => Local::Refuse(KILL_ALONE),
                r => r,
            }),
            (Target::Replica, Target::Replica) => Target::Replica,
            _ => Target::Master,
        };
        // A session setting mixed with other statements runs only on the
        // master, so the session must stay there.
        let pin = self.pin.or(other.pin).or_else(|| {
            (target == Target::Master
                && (self.target == Target::Session
                    || other.target == Target::Session
                    || self.autocommit.is_some()
                    || other.autocommit.is_some()))
            .then_some("session setting in a multi-statement query")
        });
        let use_db = other.use_db.or(self.use_db);
        let pin = pin.or_else(|| use_db.as_ref().map(|_| "USE in a multi-statement query"));
        Route {
            target,
            write: self.write || other.write,
            pin,
            use_db: None,
            // The master's connection may now read another character set
            // than the replicas': the session's text is not read any more.
            charset: self.charset.or(other.charset).map(|_| ClientCharset::Unknown),
            autocommit: None,
        }
    }
}

const KILL_ALONE: &str =
    "dbmux accepts KILL only as a statement of its own: KILL [QUERY | CONNECTION] thread_id";

/// Entries kept by [`classify_cached`] before the cache starts over …
const CACHE_ENTRIES: usize = 8192;

/// … or bytes of shapes (16 MiB): the cache's memory is bounded whatever
/// statements clients send.
const CACHE_BYTES: usize = 16 << 20;

/// Texts longer than this are classified without the cache.
const MAX_CACHED_SHAPE: usize = 64 << 10;

/// [`classify_text`] for a session's raw bytes in its character set, with a
/// process-wide cache keyed by the statement's *shape*: the text with number
/// and single-quoted string literals blanked out.
///
/// # Why the shape is a safe key
/// No rule above looks at a literal's value: `SET autocommit = 0` and `= 1`
/// both go to the master, `LIMIT 1` and `LIMIT 2` are both reads. Two texts of
/// one shape therefore classify alike. Routes that carry a value taken from
/// the text (`USE`'s database, `SET NAMES`' character set, `SET autocommit`'s
/// value, `KILL`'s thread id) are never cached, nor texts over 64 KiB. The shape is taken of the
/// parser text (see [`lexer::to_parser_text`]), which already reflects the
/// character set. Parsing costs several microseconds per statement; the shape
/// costs a scan.
pub fn classify_cached(sql: &[u8], charset: ClientCharset) -> Route {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    /// The routes, and the bytes of their keys.
    type Cache = (HashMap<String, Route>, usize);
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let Some(text) = lexer::to_parser_text(sql, charset) else {
        return Route::pinned("a client character set dbmux cannot read");
    };
    let m = lexer::measure(&text, true);
    let key = if text.len() <= MAX_CACHED_SHAPE && !m.kill {
        shape(&text)
    } else {
        None
    };
    let Some(key) = key else {
        return classify_measured(&text, &m);
    };
    // A poisoned lock only means another session panicked while holding
    // it; the map itself is always consistent (one insert or clear).
    let cache = CACHE.get_or_init(|| Mutex::new((HashMap::new(), 0)));
    if let Some(r) = cache.lock().unwrap_or_else(|e| e.into_inner()).0.get(&key) {
        return r.clone();
    }
    let route = classify_measured(&text, &m);
    if route.shareable() {
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.0.len() >= CACHE_ENTRIES || c.1 + key.len() > CACHE_BYTES {
            *c = (HashMap::new(), 0);
        }
        c.1 += key.len();
        c.0.insert(key, route.clone());
    }
    route
}

/// The text with each number and each single-quoted string replaced by `?`.
/// Identifiers (also back-quoted and double-quoted ones) and comments stay.
/// `None` when a quote is not closed: such text is classified uncached, so
/// it can never share a cache entry with well-formed text.
pub fn shape(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                // A string: backslash escapes and doubled quotes stay inside.
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => break,
                        _ => i += 1,
                    }
                }
                if i >= b.len() {
                    return None;
                }
                i += 1;
                out.push(b'?');
            }
            b'`' | b'"' => {
                // Quoted identifier (or ANSI string): copied as is.
                let start = i;
                i += 1;
                while i < b.len() && b[i] != c {
                    i += 1;
                }
                if i >= b.len() {
                    return None;
                }
                i += 1;
                out.extend_from_slice(&b[start..i]);
            }
            b'0'..=b'9' if out.last().is_none_or(|&p| !ident(p)) => {
                // A number (decimal, hex, exponent) not glued to an identifier.
                let start = i;
                while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                    i += 1;
                }
                let word = &b[start..i];
                if word
                    .iter()
                    .all(|&x| x.is_ascii_hexdigit() || matches!(x, b'.' | b'x' | b'X' | b'e' | b'E'))
                {
                    out.push(b'?');
                } else {
                    // `1abc` is an identifier in MySQL.
                    out.extend_from_slice(word);
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Classifies UTF-8 SQL text (one or more `;`-separated statements).
pub fn classify(sql: &str) -> Route {
    classify_measured(sql, &lexer::measure(sql, true))
}

/// Classifies parser text already measured by [`lexer::measure`].
fn classify_measured(sql: &str, m: &Measure<'_>) -> Route {
    if m.kill {
        return match (m.statements, parse_kill(sql)) {
            (1, Some((query, id))) => Route::local(Local::Kill { query, id }),
            _ => Route::local(Local::Refuse(KILL_ALONE)),
        };
    }
    // MySQL/MariaDB run the inside of `/*! … */` and `/*M! … */` comments,
    // which the parser skips as comments; a double-quoted token with a
    // backslash ends elsewhere under ANSI_QUOTES; a statement with very many
    // operators would build a tree too deep to visit and drop on a bounded
    // stack: all of these are not parsed.
    if m.executable_comment
        || m.ambiguous_quote
        || m.unterminated
        || m.deepening > lexer::MAX_PARSED_TOKENS
        || m.tokens > lexer::MAX_TOKENS
    {
        return unparsable(m);
    }
    if m.statements == 1 {
        if let Some(r) = previous_statement_diagnostics(sql, m.first_word) {
            return r;
        }
    }
    let statements = match Parser::parse_sql(&MySqlDialect {}, sql) {
        // The parser stops without an error at an `END` where it expects a
        // `;` (`SELECT 1 END; DELETE …` is one SELECT to it, two statements
        // to the server): what it read must be every statement there is.
        Ok(s) if s.len() == m.statements => s,
        // Unreadable: the master, and assume it wrote; pinned when it may
        // have left session state behind.
        _ => return unparsable(m),
    };
    let mut routes = statements.iter().map(classify_statement);
    let Some(first) = routes.next() else {
        return Route::master();
    };
    routes.fold(first, Route::merge)
}

/// `SHOW WARNINGS`, `SHOW ERRORS`, `SHOW COUNT(*) WARNINGS|ERRORS` and
/// `GET [CURRENT] DIAGNOSTICS …`: about the previous statement.
fn previous_statement_diagnostics(sql: &str, first: &str) -> Option<Route> {
    let mut words = sql
        .split(|c: char| c.is_ascii_whitespace() || c == ';')
        .filter(|w| !w.is_empty());
    if !(first.eq_ignore_ascii_case("show") || first.eq_ignore_ascii_case("get")) {
        return None;
    }
    words.next()?;
    let second = words.next()?.to_ascii_lowercase();
    let about_last = match first.to_ascii_lowercase().as_str() {
        "show" => {
            matches!(second.as_str(), "warnings" | "errors")
                || (second.starts_with("count(") && {
                    let rest: String = sql.to_ascii_lowercase();
                    rest.contains("warnings") || rest.contains("errors")
                })
        }
        "get" => {
            second == "diagnostics"
                || (second == "current" && words.next()?.eq_ignore_ascii_case("diagnostics"))
        }
        _ => false,
    };
    about_last.then(Route::last)
}

/// `KILL [HARD|SOFT] [CONNECTION | QUERY [ID]] n` → (is QUERY, n).
fn parse_kill(sql: &str) -> Option<(bool, u64)> {
    let text = sql.trim().trim_end_matches(';').trim();
    let mut words = text.split_ascii_whitespace().map(|w| w.to_ascii_lowercase());
    if words.next()? != "kill" {
        return None;
    }
    let mut query = false;
    let mut w = words.next()?;
    if w == "hard" || w == "soft" {
        w = words.next()?;
    }
    if w == "connection" {
        w = words.next()?;
    } else if w == "query" {
        query = true;
        w = words.next()?;
        if w == "id" {
            w = words.next()?;
        }
    }
    let id = w.parse().ok()?;
    words.next().is_none().then_some((query, id))
}

fn unparsable(m: &Measure<'_>) -> Route {
    if m.stateful {
        Route::pinned("unparsable statement with session state")
    } else {
        Route::write()
    }
}

fn classify_statement(s: &Statement) -> Route {
    use sqlparser::ast::Set;
    match s {
        Statement::Query(q) => classify_query(q),
        Statement::Set(set) => match set {
            Set::SetNames { charset_name, .. } => Route {
                charset: Some(ClientCharset::from_name(&charset_name.value)),
                ..Route::session()
            },
            // The server's default: not known here.
            Set::SetNamesDefault {} => Route {
                charset: Some(ClientCharset::Unknown),
                ..Route::session()
            },
            Set::SetTimeZone { .. } => Route::session(),
            Set::SingleAssignment {
                scope,
                variable,
                values,
                ..
            } => classify_set_var(scope.as_ref(), &variable.to_string(), values.first()),
            Set::MultipleAssignments { assignments } => assignments
                .iter()
                .map(|a| classify_set_var(a.scope.as_ref(), &a.name.to_string(), Some(&a.value)))
                .reduce(|a, b| {
                    if a.target == Target::Session && b.target == Target::Session {
                        Route {
                            charset: b.charset.or(a.charset),
                            ..a
                        }
                    } else {
                        let mut m = a.merge(b);
                        m.target = Target::Master;
                        m
                    }
                })
                .unwrap_or_else(Route::master),
            // Next transaction's characteristics: the master runs transactions.
            Set::SetTransaction { .. } => Route::master(),
            _ => Route::pinned("SET"),
        },
        Statement::Use(u) => {
            let db = match u {
                sqlparser::ast::Use::Object(name) => Some(unquote(&name.to_string())),
                _ => None,
            };
            match db {
                // A name read through placeholders is not the client's name.
                Some(db) if !db.contains(lexer::PLACEHOLDER) => Route {
                    use_db: Some(db),
                    ..Route::session()
                },
                _ => Route::pinned("USE"),
            }
        }
        Statement::StartTransaction { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Route::master(),
        Statement::Commit { .. } | Statement::Rollback { .. } => Route::write(),
        Statement::CreateTable(t) if t.temporary => Route::pinned("temporary table"),
        Statement::LockTables { .. } => Route::pinned("LOCK TABLES"),
        Statement::Prepare { .. } | Statement::Execute { .. } | Statement::Deallocate { .. } => {
            Route::pinned("SQL PREPARE")
        }
        // A procedure may create temporary tables, set user variables, take
        // locks: its session state lives on the master connection.
        Statement::Call(_) => Route::pinned("CALL"),
        Statement::Kill { .. } => Route::local(Local::Refuse(KILL_ALONE)),
        // SHOW, EXPLAIN, DESCRIBE and friends: rare, and their answers are
        // about the server; the master is the reference.
        Statement::ExplainTable { .. } | Statement::Explain { .. } => Route::master(),
        s if is_show(s) => Route::master(),
        // Everything else changes something or is unknown: the master.
        _ => Route::write(),
    }
}

fn is_show(s: &Statement) -> bool {
    matches!(
        s,
        Statement::ShowVariables { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowCreate { .. }
            | Statement::ShowCollation { .. }
            | Statement::ShowFunctions { .. }
            | Statement::ShowVariable { .. }
    )
}

fn unquote(s: &str) -> String {
    s.trim_matches('`').trim_matches('"').to_string()
}

/// Session variables that only change how *this* connection parses and
/// prints data: safe to run on every backend connection of the session.
const SESSION_SETTINGS: &[&str] = &[
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
    "sql_mode",
    "time_zone",
    "names",
    "net_read_timeout",
    "net_write_timeout",
    "wait_timeout",
    "interactive_timeout",
    "group_concat_max_len",
    "sql_select_limit",
    "max_execution_time",
    "max_statement_time",
    "session_track_schema",
    "session_track_state_change",
    "session_track_system_variables",
    "session_track_transaction_info",
    "transaction_isolation",
    "tx_isolation",
    "lc_time_names",
    "div_precision_increment",
    "sql_auto_is_null",
    "sql_big_selects",
    "sql_quote_show_create",
    "sql_safe_updates",
    "default_week_format",
    "explicit_defaults_for_timestamp",
];

/// The literal value of a `SET` assignment, lower-cased: `gbk`, `'gbk'`,
/// `0`, `ON`, `DEFAULT`.
fn literal(value: Option<&Expr>) -> Option<String> {
    use sqlparser::ast::Value;
    match value? {
        Expr::Identifier(id) => Some(id.value.to_ascii_lowercase()),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.to_ascii_lowercase()),
            Value::Number(n, _) => Some(n.to_string()),
            Value::Boolean(b) => Some((*b as u8).to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn classify_set_var(
    scope: Option<&sqlparser::ast::ContextModifier>,
    name: &str,
    value: Option<&Expr>,
) -> Route {
    use sqlparser::ast::ContextModifier;
    let lower = name.to_ascii_lowercase();
    if lower.starts_with('@') && !lower.starts_with("@@") {
        return Route::pinned("user variable");
    }
    let mut var = lower.trim_start_matches("@@");
    if matches!(scope, Some(ContextModifier::Global)) || var.starts_with("global.") {
        return Route::write();
    }
    for prefix in ["session.", "local."] {
        var = var.strip_prefix(prefix).unwrap_or(var);
    }
    if var == "autocommit" {
        let value = literal(value).and_then(|v| match v.as_str() {
            "1" | "on" | "true" => Some(true),
            "0" | "off" | "false" => Some(false),
            _ => None,
        });
        // With a value the proxy can read, a setting of the master
        // connection the proxy can also answer while there is none; else
        // the master's status flags tell.
        return Route {
            autocommit: value,
            ..Route::master()
        };
    }
    if var == "character_set_client" || var == "names" {
        let cs = literal(value)
            .map(|v| ClientCharset::from_name(&v))
            .unwrap_or(ClientCharset::Unknown);
        return Route {
            charset: Some(cs),
            ..Route::session()
        };
    }
    if SESSION_SETTINGS.contains(&var) {
        Route::session()
    } else {
        Route::pinned("session variable")
    }
}

/// Functions that read nothing but their arguments (and the clock).
const PURE_FUNCTIONS: &[&str] = &[
    "abs",
    "acos",
    "adddate",
    "addtime",
    "aes_decrypt",
    "aes_encrypt",
    "any_value",
    "ascii",
    "asin",
    "atan",
    "atan2",
    "avg",
    "bin",
    "bit_and",
    "bit_count",
    "bit_length",
    "bit_or",
    "bit_xor",
    "cast",
    "ceil",
    "ceiling",
    "char",
    "char_length",
    "character_length",
    "charset",
    "chr",
    "coalesce",
    "collation",
    "compress",
    "concat",
    "concat_ws",
    "conv",
    "convert",
    "convert_tz",
    "cos",
    "cot",
    "count",
    "crc32",
    "cume_dist",
    "curdate",
    "current_date",
    "current_time",
    "current_timestamp",
    "current_user",
    "curtime",
    "database",
    "date",
    "date_add",
    "date_format",
    "date_sub",
    "datediff",
    "day",
    "dayname",
    "dayofmonth",
    "dayofweek",
    "dayofyear",
    "degrees",
    "dense_rank",
    "elt",
    "exp",
    "export_set",
    "extract",
    "field",
    "find_in_set",
    "first_value",
    "floor",
    "format",
    "format_bytes",
    "from_base64",
    "from_days",
    "from_unixtime",
    "greatest",
    "group_concat",
    "hex",
    "hour",
    "if",
    "ifnull",
    "inet6_aton",
    "inet6_ntoa",
    "inet_aton",
    "inet_ntoa",
    "insert",
    "instr",
    "isnull",
    "json_array",
    "json_array_append",
    "json_array_insert",
    "json_arrayagg",
    "json_compact",
    "json_contains",
    "json_contains_path",
    "json_depth",
    "json_detailed",
    "json_equals",
    "json_exists",
    "json_extract",
    "json_insert",
    "json_key_value",
    "json_keys",
    "json_length",
    "json_loose",
    "json_merge",
    "json_merge_patch",
    "json_merge_preserve",
    "json_normalize",
    "json_object",
    "json_objectagg",
    "json_overlaps",
    "json_pretty",
    "json_query",
    "json_quote",
    "json_remove",
    "json_replace",
    "json_search",
    "json_set",
    "json_type",
    "json_unquote",
    "json_valid",
    "json_value",
    "lag",
    "last_day",
    "last_value",
    "lcase",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "locate",
    "log",
    "log10",
    "log2",
    "lower",
    "lpad",
    "ltrim",
    "make_set",
    "makedate",
    "maketime",
    "max",
    "md5",
    "microsecond",
    "mid",
    "min",
    "minute",
    "mod",
    "month",
    "monthname",
    "natural_sort_key",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "oct",
    "octet_length",
    "ord",
    "percent_rank",
    "period_add",
    "period_diff",
    "pi",
    "position",
    "pow",
    "power",
    "quarter",
    "quote",
    "radians",
    "rand",
    "rank",
    "regexp",
    "regexp_instr",
    "regexp_like",
    "regexp_replace",
    "regexp_substr",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "rpad",
    "rtrim",
    "schema",
    "sec_to_time",
    "second",
    "session_user",
    "sformat",
    "sha",
    "sha1",
    "sha2",
    "sign",
    "sin",
    "soundex",
    "space",
    "sqrt",
    "std",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "str_to_date",
    "strcmp",
    "subdate",
    "substr",
    "substring",
    "substring_index",
    "subtime",
    "sum",
    "sysdate",
    "system_user",
    "tan",
    "time",
    "time_format",
    "time_to_sec",
    "timediff",
    "timestamp",
    "timestampadd",
    "timestampdiff",
    "to_base64",
    "to_char",
    "to_days",
    "to_seconds",
    "trim",
    "truncate",
    "ucase",
    "uncompress",
    "unhex",
    "unix_timestamp",
    "upper",
    "user",
    "utc_date",
    "utc_time",
    "utc_timestamp",
    "uuid",
    "var_pop",
    "var_samp",
    "variance",
    "version",
    "week",
    "weekday",
    "weekofyear",
    "weight_string",
    "year",
    "yearweek",
];

/// Built-ins that must run on the master but leave no session state
/// behind: no pin.
const MASTER_FUNCTIONS: &[&str] = &[
    "sleep",
    "benchmark",
    "master_pos_wait",
    "master_gtid_wait",
    "lastval",
    "uuid_short",
    "is_used_lock",
    "is_free_lock",
    "last_insert_id",
    "connection_id",
];

/// System variables whose value belongs to the master connection.
const CONNECTION_VARIABLES: &[&str] = &["last_insert_id", "identity", "insert_id", "last_gtid"];

/// System variables about the connection's previous statement.
const LAST_STATEMENT_VARIABLES: &[&str] = &["warning_count", "error_count"];

#[derive(Default)]
struct QueryCheck {
    route: Option<Route>,
    /// Reads something about the previous statement (`FOUND_ROWS()`, …).
    last: bool,
}

impl QueryCheck {
    fn send_to(&mut self, r: Route) -> ControlFlow<()> {
        self.route = Some(r);
        ControlFlow::Break(())
    }
}

impl Visitor for QueryCheck {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !q.locks.is_empty() {
            return self.send_to(Route::master());
        }
        if matches!(
            *q.body,
            SetExpr::Insert(_)
                | SetExpr::Update(_)
                | SetExpr::Delete(_)
                | SetExpr::Merge(_)
                | SetExpr::Table(_)
        ) {
            return self.send_to(Route::write());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if s.into.is_some() {
            return self.send_to(Route::pinned("SELECT INTO"));
        }
        // FOUND_ROWS() afterwards runs where this ran: count on the master,
        // like the statements that usually follow.
        if s.select_modifiers.as_ref().is_some_and(|m| m.sql_calc_found_rows) {
            return self.send_to(Route::master());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, _s: &Statement) -> ControlFlow<()> {
        // Only reached for statements nested in the query (CTE writes).
        self.send_to(Route::write())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(f) => {
                if f.name.0.len() != 1 {
                    // `db.f(…)`: a stored function, which may create
                    // temporary tables or set variables on the master.
                    return self.send_to(Route::pinned("stored function"));
                }
                let name = f.name.to_string().to_ascii_lowercase();
                match name.as_str() {
                    "get_lock" | "release_lock" | "release_all_locks" => {
                        return self.send_to(Route::pinned("GET_LOCK"))
                    }
                    "row_count" | "found_rows" => self.last = true,
                    n if PURE_FUNCTIONS.contains(&n) => {}
                    "nextval" | "setval" => return self.send_to(Route::write()),
                    n if MASTER_FUNCTIONS.contains(&n) => return self.send_to(Route::master()),
                    // Not a built-in this list knows: a stored function.
                    _ => return self.send_to(Route::pinned("stored function")),
                }
            }
            Expr::BinaryOp {
                op: sqlparser::ast::BinaryOperator::Assignment,
                ..
            } => return self.send_to(Route::pinned("user variable")),
            Expr::Identifier(id) => return self.check_variable(&id.value, None),
            Expr::CompoundIdentifier(ids) => {
                if let Some(first) = ids.first() {
                    return self.check_variable(&first.value, ids.get(1).map(|i| i.value.as_str()));
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl QueryCheck {
    fn check_variable(&mut self, first: &str, second: Option<&str>) -> ControlFlow<()> {
        let Some(rest) = first.strip_prefix('@') else {
            return ControlFlow::Continue(());
        };
        let Some(sys) = rest.strip_prefix('@') else {
            // A user variable lives on the master connection.
            return self.send_to(Route::master());
        };
        let var = match (sys.to_ascii_lowercase().as_str(), second) {
            ("session" | "local" | "global", Some(v)) => v.to_ascii_lowercase(),
            (v, _) => v.to_string(),
        };
        if CONNECTION_VARIABLES.contains(&var.as_str()) {
            return self.send_to(Route::master());
        }
        if LAST_STATEMENT_VARIABLES.contains(&var.as_str()) {
            self.last = true;
        }
        ControlFlow::Continue(())
    }
}

fn classify_query(q: &Query) -> Route {
    let mut check = QueryCheck::default();
    // Visit the query itself, not its statement, so that any statement the
    // visitor meets is a nested one.
    let _ = q.visit(&mut check);
    match check.route {
        Some(r) => r,
        None if check.last => Route::last(),
        None => Route::read(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::lexer;

    fn t(sql: &str) -> (Target, bool, bool) {
        let r = classify(sql);
        (r.target, r.write, r.pin.is_some())
    }

    const READ: (Target, bool, bool) = (Target::Replica, false, false);
    const MASTER: (Target, bool, bool) = (Target::Master, false, false);
    const WRITE: (Target, bool, bool) = (Target::Master, true, false);
    const PIN: (Target, bool, bool) = (Target::Master, true, true);
    const SESSION: (Target, bool, bool) = (Target::Session, false, false);

    #[test]
    fn plain_reads_go_to_replicas() {
        for sql in [
            "SELECT 1",
            "select c from sbtest1 where id=?",
            "SELECT @@max_allowed_packet,@@system_time_zone,@@time_zone,@@auto_increment_increment",
            "SELECT @@version_comment LIMIT 1",
            "SELECT @@session.sql_mode",
            "SELECT @@server_id",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
            "SELECT COUNT(*), MAX(k) FROM t WHERE c LIKE 'a%' GROUP BY k",
            "SELECT a FROM t1 UNION SELECT b FROM t2",
            "SELECT NOW(), DATABASE(), CONCAT('a', 'b')",
            "SELECT 1; SELECT 2",
        ] {
            assert_eq!(t(sql), READ, "{sql}");
        }
    }

    #[test]
    fn writes_ddl_and_unknown_go_to_master() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "REPLACE INTO t VALUES (1)",
            "CREATE TABLE t (a INT)",
            "DROP TABLE t",
            "ALTER TABLE t ADD COLUMN b INT",
            "COMMIT",
            "SELECT * FROM t LOCK IN SHARE MODE",
            "LOAD DATA INFILE '/tmp/x' INTO TABLE t",
            "SELECT 1; INSERT INTO t VALUES (1)",
            "SELECT * FROM t /*! FOR UPDATE */",
            "SELECT 1 /*M!100100 , SLEEP(0) */",
            "garbage that does not parse",
        ] {
            assert_eq!(t(sql), WRITE, "{sql}");
        }
    }

    #[test]
    fn locking_and_connection_reads_go_to_master() {
        for sql in [
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT LAST_INSERT_ID()",
            "SELECT @@last_insert_id",
            "SELECT @@last_gtid",
            "SELECT @x",
            "SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1",
            "SELECT SLEEP(1)",
            "BEGIN",
            "START TRANSACTION READ ONLY",
            "SET autocommit = 0",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SHOW VARIABLES LIKE 'x'",
        ] {
            assert_eq!(t(sql), MASTER, "{sql}");
        }
    }

    #[test]
    fn session_state_pins() {
        for sql in [
            "SET @a = 1",
            "SELECT @a := 1",
            "SELECT GET_LOCK('a', 1)",
            "SELECT a INTO @x FROM t",
            "CREATE TEMPORARY TABLE tmp (a INT)",
            "SET @@session.foreign_key_checks = 0",
            "SET NAMES utf8mb4; SELECT 1",
            "LOCK TABLES t WRITE",
            "PREPARE s FROM 'SELECT 1'",
            "XA START 'x'",
            // Procedures and stored functions may create temporary tables.
            "CALL p()",
            "SELECT my_func(1)",
            "SELECT db.f(1)",
        ] {
            let r = classify(sql);
            assert_eq!(r.target, Target::Master, "{sql}");
            assert!(r.pin.is_some(), "{sql}");
        }
        assert_eq!(t("SET @a = 1"), PIN);
    }

    #[test]
    fn shapes_blank_literals_only() {
        let shape = |s: &str| shape(s).unwrap_or_else(|| "<none>".into());
        assert_eq!(shape("SELECT 'open"), "<none>");
        assert_eq!(shape("SELECT `open"), "<none>");
        assert_eq!(
            shape("SELECT c FROM sbtest1 WHERE id=5000"),
            "SELECT c FROM sbtest1 WHERE id=?"
        );
        assert_eq!(
            shape("SELECT 'a''b\\'c', 1.5e3, 0x1F FROM t2"),
            "SELECT ?, ?, ? FROM t2"
        );
        assert_eq!(
            shape("SELECT `a1` FROM \"t 9\" WHERE x > 10"),
            "SELECT `a1` FROM \"t 9\" WHERE x > ?"
        );
        assert_eq!(shape("SELECT * FROM 1tbl"), "SELECT * FROM 1tbl");
        assert_eq!(shape("SET autocommit = 0"), shape("SET autocommit = 1"));
        assert_ne!(shape("SELECT GET_LOCK('a', 1)"), shape("SELECT 1"));
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1, 'x')",
            "SET @a = 5",
            "SELECT 'unterminated",
        ] {
            let cached = |s: &str| classify_cached(s.as_bytes(), ClientCharset::AsciiSafe);
            assert_eq!(cached(sql), classify(sql), "{sql}");
            assert_eq!(cached(sql), classify(sql), "{sql} (cached)");
        }
        // USE is never served from the cache.
        let cached = |s: &str| classify_cached(s.as_bytes(), ClientCharset::AsciiSafe);
        assert_eq!(cached("USE a").use_db.as_deref(), Some("a"));
        assert_eq!(cached("USE b").use_db.as_deref(), Some("b"));
    }

    #[test]
    fn session_settings_run_everywhere() {
        for sql in [
            "SET NAMES utf8mb4",
            "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
            "SET time_zone = '+00:00'",
            "SET character_set_results = NULL",
            "SET SESSION sql_mode = 'STRICT_TRANS_TABLES'",
            "SET @@session.time_zone = 'UTC', sql_mode = ''",
        ] {
            assert_eq!(t(sql), SESSION, "{sql}");
        }
        let r = classify("USE shop");
        assert_eq!((r.target, r.use_db.as_deref()), (Target::Session, Some("shop")));
        let r = classify("USE `my-db`");
        assert_eq!(r.use_db.as_deref(), Some("my-db"));
        assert_eq!(t("SET GLOBAL max_connections = 10"), WRITE);
    }

    #[test]
    fn previous_statement_diagnostics_run_where_it_ran() {
        for sql in [
            "SHOW WARNINGS",
            "show errors limit 1",
            "SHOW COUNT(*) WARNINGS",
            "GET DIAGNOSTICS @n = NUMBER",
            "SELECT FOUND_ROWS()",
            "SELECT ROW_COUNT(), @@warning_count, @@session.error_count",
        ] {
            assert_eq!(classify(sql).target, Target::Last, "{sql}");
        }
        // Mixed with a connection value: the master.
        assert_eq!(t("SELECT ROW_COUNT(), LAST_INSERT_ID()"), MASTER);
        assert_eq!(t("SHOW WARNINGS; SELECT 1"), MASTER);
    }

    #[test]
    fn kill_is_answered_by_the_proxy_and_never_forwarded() {
        let kill = |sql: &str| classify(sql).target;
        assert_eq!(kill("KILL 5"), Target::Local(Local::Kill { query: false, id: 5 }));
        assert_eq!(
            kill("kill query 7;"),
            Target::Local(Local::Kill { query: true, id: 7 })
        );
        assert_eq!(
            kill("KILL SOFT QUERY ID 8"),
            Target::Local(Local::Kill { query: true, id: 8 })
        );
        assert_eq!(
            kill("KILL CONNECTION 9"),
            Target::Local(Local::Kill { query: false, id: 9 })
        );
        for sql in [
            "SELECT 1; KILL 5",
            "KILL USER app",
            "/*!50000 KILL 5 */",
            "BEGIN NOT ATOMIC KILL 5; END",
            "KILL 5 6",
        ] {
            assert!(matches!(kill(sql), Target::Local(Local::Refuse(_))), "{sql}");
        }
        // Not the word: strings, comments and identifiers containing it.
        assert_eq!(t("SELECT 1 END; DELETE FROM t"), WRITE);
        assert_eq!(t("SELECT 1 AS `end`; SELECT 2"), READ);
        assert_eq!(t("SELECT 'kill 5', `killer` FROM t -- kill 5"), READ);
        assert!(!classify_cached(b"KILL 5", ClientCharset::AsciiSafe).shareable());
    }

    #[test]
    fn charset_and_autocommit_settings_carry_their_value() {
        let r = classify("SET NAMES gbk");
        assert_eq!((r.target, r.charset), (Target::Session, Some(ClientCharset::Gbk)));
        let r = classify("SET character_set_client = 'big5'");
        assert_eq!(
            (r.target, r.charset),
            (Target::Session, Some(ClientCharset::Big5))
        );
        let r = classify("SET @@session.character_set_client = CONCAT('g', 'bk')");
        assert_eq!(r.charset, Some(ClientCharset::Unknown));
        assert_eq!(
            classify("SET NAMES DEFAULT").charset,
            Some(ClientCharset::Unknown)
        );
        // In a multi-statement text the master alone takes it.
        let r = classify("SET NAMES gbk; SELECT 1");
        assert_eq!(
            (r.target, r.charset),
            (Target::Master, Some(ClientCharset::Unknown))
        );
        for (sql, v) in [
            ("SET autocommit = 0", Some(false)),
            ("SET AUTOCOMMIT = 1", Some(true)),
            ("SET @@session.autocommit = OFF", Some(false)),
            ("SET autocommit = ON", Some(true)),
            ("SET autocommit = @x", None),
        ] {
            let r = classify(sql);
            assert_eq!((r.target, r.autocommit), (Target::Master, v), "{sql}");
        }
        // Same shape, different values: never one cache entry.
        let a = classify_cached(b"SET autocommit = 0", ClientCharset::AsciiSafe);
        let b = classify_cached(b"SET autocommit = 1", ClientCharset::AsciiSafe);
        assert_eq!((a.autocommit, b.autocommit), (Some(false), Some(true)));
        let a = classify_cached(b"SET NAMES 'gbk'", ClientCharset::AsciiSafe);
        let b = classify_cached(b"SET NAMES 'utf8mb4'", ClientCharset::AsciiSafe);
        assert_eq!(
            (a.charset, b.charset),
            (Some(ClientCharset::Gbk), Some(ClientCharset::AsciiSafe))
        );
    }

    #[test]
    fn statements_are_read_in_the_session_character_set() {
        let smuggle = b"SELECT '\xBF\x5C'; INSERT INTO t VALUES (1) -- '";
        assert_eq!(
            classify_cached(smuggle, ClientCharset::Gbk).target,
            Target::Master
        );
        assert!(classify_cached(smuggle, ClientCharset::Gbk).write);
        let quoted = b"SELECT \"a\\\"; DELETE FROM t -- \"";
        assert_eq!(
            classify_cached(quoted, ClientCharset::AsciiSafe).target,
            Target::Master
        );
        // A session in a character set the proxy cannot read: the master.
        let r = classify_cached(b"SELECT 1", ClientCharset::Unknown);
        assert_eq!((r.target, r.pin.is_some()), (Target::Master, true));
    }

    /// The deepest statement the router still parses, built as the worst
    /// case for the tree's depth, classified and dropped on a thread with a
    /// 2 MiB stack (tokio's default) in this (debug) build.
    #[test]
    fn the_parse_is_bounded_within_a_small_stack() {
        let n = lexer::MAX_PARSED_TOKENS / 2 - 2;
        let texts = [
            format!("SELECT 1{}", " OR 1".repeat(n)),
            format!("SELECT 1{}", "+1".repeat(n)),
            format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(n / 3)),
            format!("SELECT 1{}", " COLLATE x".repeat(n / 2)),
            format!("SELECT {}1", "- ".repeat(n)),
            format!("SELECT {}1", "NOT ".repeat(n)),
        ];
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for sql in &texts {
                    let _ = classify(sql);
                }
            })
            .unwrap();
        handle.join().expect("classified within 2 MiB of stack");
        // Past the bound nothing is parsed: the master.
        let huge = format!("SELECT 1{}", " OR 1".repeat(40_000));
        assert_eq!(t(&huge), WRITE);
        let huge = format!("SELECT 1{}", "+1".repeat(100_000));
        assert_eq!(t(&huge), WRITE);
        let many = format!("SELECT a FROM t WHERE id IN ({})", vec!["1"; 200_000].join(","));
        assert_eq!(t(&many), WRITE);
    }
}
