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
//! # Pinning
//! Some statements leave state on the master connection that later reads must
//! see: user variables, `GET_LOCK`, temporary tables, `LOCK TABLES`, SQL-level
//! `PREPARE`, unknown session variables. They return a `pin` reason and the
//! session sends every later statement to the master until
//! `COM_RESET_CONNECTION`. Transactions and `autocommit=0` are not pinned
//! here: the session reads them from the master's status flags, which is
//! exact (it also sees implicit commits).
//!
//! # Session settings
//! `SET NAMES`, `SET time_zone`, `SET sql_mode` and a few more change how a
//! connection reads and prints data. They run on every backend connection
//! the session has open and are replayed on connections it opens later.

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
}

impl Route {
    fn read() -> Route {
        Route {
            target: Target::Replica,
            write: false,
            pin: None,
            use_db: None,
        }
    }
    fn master() -> Route {
        Route {
            target: Target::Master,
            write: false,
            pin: None,
            use_db: None,
        }
    }
    fn write() -> Route {
        Route {
            target: Target::Master,
            write: true,
            pin: None,
            use_db: None,
        }
    }
    fn session() -> Route {
        Route {
            target: Target::Session,
            write: false,
            pin: None,
            use_db: None,
        }
    }
    fn pinned(reason: &'static str) -> Route {
        Route {
            target: Target::Master,
            write: true,
            pin: Some(reason),
            use_db: None,
        }
    }

    /// The combination of two statements of one multi-statement query.
    fn merge(self, other: Route) -> Route {
        let target = match (self.target, other.target) {
            (Target::Replica, Target::Replica) => Target::Replica,
            _ => Target::Master,
        };
        // A session setting mixed with other statements runs only on the
        // master, so the session must stay there.
        let pin = self.pin.or(other.pin).or_else(|| {
            (target == Target::Master && (self.target == Target::Session || other.target == Target::Session))
                .then_some("session setting in a multi-statement query")
        });
        let use_db = other.use_db.or(self.use_db);
        let pin = pin.or_else(|| use_db.as_ref().map(|_| "USE in a multi-statement query"));
        Route {
            target,
            write: self.write || other.write,
            pin,
            use_db: None,
        }
    }
}

/// Entries kept by [`classify_cached`] before the cache starts over.
const CACHE_ENTRIES: usize = 8192;

/// [`classify`] with a process-wide cache keyed by the statement's *shape*:
/// the text with number and single-quoted string literals blanked out.
///
/// # Why the shape is a safe key
/// No rule above looks at a literal's value: `SET autocommit = 0` and `= 1`
/// both go to the master, `LIMIT 1` and `LIMIT 2` are both reads. Two texts of
/// one shape therefore classify alike. The one value a route carries, the
/// database of `USE`, is an identifier; routes with one are not cached anyway.
/// Parsing costs several microseconds per statement; the shape costs a scan.
pub fn classify_cached(sql: &str) -> Route {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Route>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let Some(key) = shape(sql) else {
        return classify(sql);
    };
    if let Some(r) = cache.lock().unwrap().get(&key) {
        return r.clone();
    }
    let route = classify(sql);
    if route.use_db.is_none() {
        let mut c = cache.lock().unwrap();
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(key, route.clone());
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

/// Classifies SQL text (one or more `;`-separated statements).
pub fn classify(sql: &str) -> Route {
    // MySQL/MariaDB run the inside of `/*! … */` and `/*M! … */` comments,
    // which the parser skips as comments: treat such text as unknown.
    if sql.contains("/*!") || sql.contains("/*M!") {
        return unparsable(sql);
    }
    let statements = match Parser::parse_sql(&MySqlDialect {}, sql) {
        Ok(s) => s,
        // Unreadable: the master, and assume it wrote; pinned when it may
        // have left session state behind.
        Err(_) => return unparsable(sql),
    };
    let mut routes = statements.iter().map(classify_statement);
    let Some(first) = routes.next() else {
        return Route::master();
    };
    routes.fold(first, Route::merge)
}

fn unparsable(sql: &str) -> Route {
    let lower = sql.trim_start().to_ascii_lowercase();
    let first = lower
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    let stateful = matches!(
        first,
        "prepare" | "execute" | "deallocate" | "handler" | "lock" | "set" | "xa"
    ) || lower.contains("temporary")
        || lower.contains("get_lock");
    if stateful {
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
            Set::SetNames { .. } | Set::SetNamesDefault {} | Set::SetTimeZone { .. } => Route::session(),
            Set::SingleAssignment { scope, variable, .. } => {
                classify_set_var(scope.as_ref(), &variable.to_string())
            }
            Set::MultipleAssignments { assignments } => assignments
                .iter()
                .map(|a| classify_set_var(a.scope.as_ref(), &a.name.to_string()))
                .reduce(|a, b| {
                    if a.target == Target::Session && b.target == Target::Session {
                        a
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
                Some(db) => Route {
                    use_db: Some(db),
                    ..Route::session()
                },
                None => Route::pinned("USE"),
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

fn classify_set_var(scope: Option<&sqlparser::ast::ContextModifier>, name: &str) -> Route {
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
        // The master's status flags then pin the session while autocommit is off.
        return Route::master();
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
    "json_arrayagg",
    "json_contains",
    "json_contains_path",
    "json_depth",
    "json_extract",
    "json_keys",
    "json_length",
    "json_object",
    "json_objectagg",
    "json_quote",
    "json_search",
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
    "year",
    "yearweek",
];

/// System variables whose value belongs to the master connection.
const CONNECTION_VARIABLES: &[&str] = &[
    "last_insert_id",
    "identity",
    "insert_id",
    "last_gtid",
    "warning_count",
    "error_count",
    "rowcount",
];

#[derive(Default)]
struct QueryCheck {
    route: Option<Route>,
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
        // FOUND_ROWS() afterwards runs on the master: count there too.
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
                    return self.send_to(Route::write());
                }
                let name = f.name.to_string().to_ascii_lowercase();
                match name.as_str() {
                    "get_lock" | "release_lock" | "release_all_locks" => {
                        return self.send_to(Route::pinned("GET_LOCK"))
                    }
                    "last_insert_id" | "row_count" | "found_rows" | "connection_id" | "is_used_lock"
                    | "is_free_lock" => return self.send_to(Route::master()),
                    n if PURE_FUNCTIONS.contains(&n) => {}
                    _ => return self.send_to(Route::write()),
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
        ControlFlow::Continue(())
    }
}

fn classify_query(q: &Query) -> Route {
    let mut check = QueryCheck::default();
    // Visit the query itself, not its statement, so that any statement the
    // visitor meets is a nested one.
    let _ = q.visit(&mut check);
    check.route.unwrap_or_else(Route::read)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "SELECT my_func(1)",
            "SELECT db.f(1)",
            "SELECT 1; INSERT INTO t VALUES (1)",
            "CALL p()",
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
            "SELECT ROW_COUNT()",
            "SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1",
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
            assert_eq!(classify_cached(sql), classify(sql), "{sql}");
            assert_eq!(classify_cached(sql), classify(sql), "{sql} (cached)");
        }
        // USE is never served from the cache.
        assert_eq!(classify_cached("USE a").use_db.as_deref(), Some("a"));
        assert_eq!(classify_cached("USE b").use_db.as_deref(), Some("b"));
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
}
