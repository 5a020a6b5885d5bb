//! The `[proxy.cache]` section: which reads are cached, where, how long.
//!
//! ```toml
//! [proxy.cache]                       # absent: no cache (the default)
//! redis = "redis://127.0.0.1:16379/"  # redis:// or rediss:// URL
//! tables = ["app.*"]                  # reads of only these tables are cached (`db.table`, `*` wildcards)
//! # statements = ["SELECT * FROM items WHERE id = ?"]  # only these shapes (literals as `?`); default: any
//! # hint_only = false                 # true: only statements carrying /* dbmux:cache */
//! ttl_secs = 300                      # safety net; invalidation does not wait for it
//! max_result_bytes = 1048576          # bigger results are served but not stored
//! timeout_ms = 50                     # a Redis call slower than this is a miss (served from the databases)
//! key_prefix = "dbmux"                # namespace in Redis (one invalidator per prefix)
//! invalidator = true                  # `dbmux run` invalidates; false when `dbmux invalidate` runs apart
//! ```

use super::super::config::ConfigProblem;
use serde::Deserialize;

pub const DEFAULT_TTL_SECS: u64 = 300;
pub const DEFAULT_MAX_RESULT_BYTES: usize = 1 << 20;
pub const DEFAULT_TIMEOUT_MS: u64 = 50;
pub const DEFAULT_KEY_PREFIX: &str = "dbmux";
/// The largest result ever stored, whatever `max_result_bytes` says (Redis
/// refuses values over 512 MiB; big values also stall its single thread).
pub const MAX_RESULT_BYTES_LIMIT: usize = 64 << 20;

fn default_true() -> bool {
    true
}
fn default_ttl() -> u64 {
    DEFAULT_TTL_SECS
}
fn default_max_result() -> usize {
    DEFAULT_MAX_RESULT_BYTES
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_prefix() -> String {
    DEFAULT_KEY_PREFIX.to_string()
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `false` keeps the section but turns the cache off.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The Redis server (`redis://[user:password@]host:port/[db]`).
    pub redis: String,
    /// `db.table` patterns (`*` matches any run of characters) of the tables
    /// whose reads may be cached: every table a statement reads must match.
    pub tables: Vec<String>,
    /// Statement shapes (literals written `?`, whitespace as in the text;
    /// `*` matches any run of characters) that may be cached; empty: any
    /// cacheable statement.
    #[serde(default)]
    pub statements: Vec<String>,
    /// Cache only statements that carry the comment `/* dbmux:cache */`.
    #[serde(default)]
    pub hint_only: bool,
    /// Time to live of an entry: a safety net only (entries are invalidated
    /// by the change stream); also bounds how long an unused entry is kept.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// Results bigger than this (bytes on the wire) are not stored.
    #[serde(default = "default_max_result")]
    pub max_result_bytes: usize,
    /// Every Redis call of a client's statement is bounded by this; slower
    /// counts as a Redis error and the statement is served by the databases.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Prefix of every key dbmux writes in Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Run the invalidator in `dbmux run` (set `false` when a separate
    /// `dbmux invalidate` process does it: exactly one per `key_prefix`).
    #[serde(default = "default_true")]
    pub invalidator: bool,
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The Redis URL may hold a password.
        f.debug_struct("CacheConfig")
            .field("enabled", &self.enabled)
            .field("tables", &self.tables)
            .field("statements", &self.statements)
            .field("ttl_secs", &self.ttl_secs)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl CacheConfig {
    /// Every problem of the section, with field paths under `proxy.cache`.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |path: &str, message: String| {
            out.push(ConfigProblem {
                path: format!("proxy.cache.{path}"),
                message,
            })
        };
        match url::Url::parse(&self.redis) {
            Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
            _ => bad(
                "redis",
                "must be a redis:// or rediss:// URL with a host (redis://127.0.0.1:6379/)".into(),
            ),
        }
        if self.tables.is_empty() {
            bad(
                "tables",
                "list at least one `db.table` pattern (e.g. \"app.*\")".into(),
            );
        }
        for (i, t) in self.tables.iter().enumerate() {
            if TablePattern::parse(t).is_none() {
                bad(
                    &format!("tables[{i}]"),
                    format!("`{t}` is not `db.table` (each part non-empty, `*` wildcards allowed)"),
                );
            }
        }
        for (i, s) in self.statements.iter().enumerate() {
            if s.trim().is_empty() {
                bad(&format!("statements[{i}]"), "must not be empty".into());
            }
        }
        if !(1..=7 * 86_400).contains(&self.ttl_secs) {
            bad("ttl_secs", "must be between 1 and 604800 (7 days)".into());
        }
        if !(1..=MAX_RESULT_BYTES_LIMIT).contains(&self.max_result_bytes) {
            bad(
                "max_result_bytes",
                format!("must be between 1 and {MAX_RESULT_BYTES_LIMIT}"),
            );
        }
        if !(1..=10_000).contains(&self.timeout_ms) {
            bad("timeout_ms", "must be between 1 and 10000".into());
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || !self
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
        {
            bad(
                "key_prefix",
                "must be 1-64 letters, digits, `_`, `-`, `.` or `:`".into(),
            );
        }
        out
    }

    /// True when a statement reading `db.table` may be cached.
    pub fn covers_table(&self, db: &str, table: &str) -> bool {
        self.tables
            .iter()
            .filter_map(|t| TablePattern::parse(t))
            .any(|p| glob(&p.db, db) && glob(&p.table, table))
    }

    /// True when `shape` (the statement with literals as `?`) may be cached.
    pub fn covers_statement(&self, shape: &str) -> bool {
        self.statements.is_empty() || self.statements.iter().any(|p| glob(p.trim(), shape.trim()))
    }
}

/// `db.table` with `*` wildcards.
struct TablePattern {
    db: String,
    table: String,
}

impl TablePattern {
    fn parse(s: &str) -> Option<TablePattern> {
        let (db, table) = s.split_once('.')?;
        if db.is_empty() || table.is_empty() || table.contains('.') {
            return None;
        }
        Some(TablePattern {
            db: db.to_string(),
            table: table.to_string(),
        })
    }
}

/// `*` matches any run of characters (also none); everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matcher with one backtrack point (the last `*`): linear
    // memory, no recursion on hostile patterns.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("app", "app"));
        assert!(!glob("app", "apps"));
        assert!(glob("order_*", "order_items"));
        assert!(glob("*_log", "audit_log"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob(
            "SELECT * FROM t WHERE id = ?",
            "SELECT a, b FROM t WHERE id = ?"
        ));
    }

    #[test]
    fn every_problem_with_its_path() {
        let c: CacheConfig = toml::from_str(
            r#"
redis = "http://x"
tables = ["app", "a.b.c", "app.*"]
statements = [" "]
ttl_secs = 0
max_result_bytes = 0
timeout_ms = 0
key_prefix = "has space"
"#,
        )
        .unwrap();
        let paths: Vec<String> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "proxy.cache.redis",
                "proxy.cache.tables[0]",
                "proxy.cache.tables[1]",
                "proxy.cache.statements[0]",
                "proxy.cache.ttl_secs",
                "proxy.cache.max_result_bytes",
                "proxy.cache.timeout_ms",
                "proxy.cache.key_prefix",
            ]
        );
        assert!(
            toml::from_str::<CacheConfig>("redis = \"redis://h/\"\ntables = [\"a.*\"]\nttl = 3\n").is_err()
        );
        let ok: CacheConfig =
            toml::from_str("redis = \"redis://127.0.0.1:16379/\"\ntables = [\"app.*\"]\n").unwrap();
        assert!(ok.validate().is_empty());
        assert!(ok.enabled && ok.invalidator && !ok.hint_only);
        assert!(ok.covers_table("app", "orders"));
        assert!(!ok.covers_table("other", "orders"));
        assert!(ok.covers_statement("SELECT 1"));
        assert!(!format!("{ok:?}").contains("16379"));
    }
}
