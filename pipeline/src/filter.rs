//! Which source tables a capture reads: include / exclude patterns.
//!
//! A pattern is `schema` (every table of that database / schema) or
//! `schema.table`; `*` matches any run of characters (also none) and `?` one
//! character, in either part. Matching is case-sensitive, like table names on a
//! Linux MySQL server with `lower_case_table_names=0`. The pattern is split at
//! its first `.`, so a schema name containing a dot cannot be named.
//!
//! # Rules
//! - A table is captured when it matches some `include` pattern (an empty
//!   `include` list matches everything) and no `exclude` pattern.
//! - Exclusion wins over inclusion.
//! - *System schemas* (for MySQL `mysql`, `sys`, `information_schema`,
//!   `performance_schema`) are left out unless an include pattern names the
//!   schema literally, without wildcards: `include = ["*"]` does not capture
//!   `mysql.user`, `include = ["mysql.user"]` does.
//!
//! The filter is pure and cheap: a capture asks it once per table map, never per row.

use std::fmt;

/// A pattern that is not `schema` or `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid table pattern {pattern:?}: {reason} (expected `schema` or `schema.table`, `*` and `?` allowed)"
)]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

/// One `schema[.table]` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    schema: String,
    /// `None`: every table of the schema.
    table: Option<String>,
}

impl TablePattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: pattern.to_string(),
            reason,
        };
        if pattern.trim() != pattern {
            return Err(err("leading or trailing whitespace"));
        }
        let (schema, table) = match pattern.split_once('.') {
            Some((s, t)) => (s, Some(t)),
            None => (pattern, None),
        };
        if schema.is_empty() {
            return Err(err("empty schema part"));
        }
        if let Some(t) = table {
            if t.is_empty() {
                return Err(err("empty table part"));
            }
            if t.contains('.') {
                return Err(err("more than one `.`"));
            }
        }
        Ok(Self {
            schema: schema.to_string(),
            table: table.map(str::to_string),
        })
    }

    /// True when the pattern selects `schema.table`.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        wildcard_match(&self.schema, schema) && self.table.as_deref().is_none_or(|t| wildcard_match(t, table))
    }

    /// True when the schema part is this exact name (no wildcard).
    fn names_schema_literally(&self, schema: &str) -> bool {
        !self.schema.contains(['*', '?']) && self.schema == schema
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.schema)?;
        if let Some(t) = &self.table {
            write!(f, ".{t}")?;
        }
        Ok(())
    }
}

/// Include / exclude rules for source tables (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableFilter {
    include: Vec<TablePattern>,
    exclude: Vec<TablePattern>,
    system_schemas: Vec<String>,
}

impl TableFilter {
    /// Builds a filter; returns every invalid pattern, not just the first.
    pub fn new<S: AsRef<str>>(include: &[S], exclude: &[S]) -> Result<Self, Vec<PatternError>> {
        let mut errors = Vec::new();
        let mut parse = |list: &[S]| {
            list.iter()
                .filter_map(|p| TablePattern::parse(p.as_ref()).map_err(|e| errors.push(e)).ok())
                .collect::<Vec<_>>()
        };
        let include = parse(include);
        let exclude = parse(exclude);
        if errors.is_empty() {
            Ok(Self {
                include,
                exclude,
                system_schemas: Vec::new(),
            })
        } else {
            Err(errors)
        }
    }

    /// A filter that captures every table (of non-system schemas).
    pub fn all() -> Self {
        Self::default()
    }

    /// Sets the schemas left out unless an include pattern names them literally.
    pub fn with_system_schemas<S: AsRef<str>>(mut self, schemas: &[S]) -> Self {
        self.system_schemas = schemas.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }

    /// True when changes to `schema.table` are captured.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        if self.exclude.iter().any(|p| p.matches(schema, table)) {
            return false;
        }
        if self.system_schemas.iter().any(|s| s == schema) {
            return self
                .include
                .iter()
                .any(|p| p.names_schema_literally(schema) && p.matches(schema, table));
        }
        self.include.is_empty() || self.include.iter().any(|p| p.matches(schema, table))
    }
}

impl TableFilter {
    /// True when some table of `schema` may be captured (used where only the
    /// schema is known, e.g. the default database of a statement).
    pub fn may_match_schema(&self, schema: &str) -> bool {
        let excluded_whole = self
            .exclude
            .iter()
            .any(|p| p.table.as_deref().is_none_or(|t| t == "*") && wildcard_match(&p.schema, schema));
        if excluded_whole {
            return false;
        }
        let system = self.system_schemas.iter().any(|s| s == schema);
        if self.include.is_empty() {
            return !system;
        }
        self.include
            .iter()
            .any(|p| wildcard_match(&p.schema, schema) && (!system || p.names_schema_literally(schema)))
    }
}

impl TableFilter {
    /// True when every table of `schema` is captured (a whole database in
    /// `include`, nothing of it excluded): only then does a `DROP DATABASE`
    /// reach the replicas as such.
    pub fn covers_schema(&self, schema: &str) -> bool {
        if self.exclude.iter().any(|p| wildcard_match(&p.schema, schema)) {
            return false;
        }
        let system = self.system_schemas.iter().any(|s| s == schema);
        if self.include.is_empty() {
            return !system;
        }
        self.include.iter().any(|p| {
            p.table.as_deref().is_none_or(|t| t == "*")
                && wildcard_match(&p.schema, schema)
                && (!system || p.names_schema_literally(schema))
        })
    }
}

/// Glob match with `*` (any run, also empty) and `?` (one character).
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` seen and the text index it currently absorbs up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
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

    fn filter(include: &[&str], exclude: &[&str]) -> TableFilter {
        TableFilter::new(include, exclude)
            .unwrap()
            .with_system_schemas(&["mysql", "sys"])
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*", "abc"));
        assert!(wildcard_match("a*c", "abbbc"));
        assert!(wildcard_match("a*c", "ac"));
        assert!(!wildcard_match("a*c", "acb"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*_log", "audit_log"));
        assert!(wildcard_match("a*b*c", "axxbyyc"));
        assert!(!wildcard_match("abc", "ABC"));
        assert!(wildcard_match("é*", "ééé"));
    }

    #[test]
    fn empty_include_means_everything_but_system_schemas() {
        let f = filter(&[], &[]);
        assert!(f.matches("app", "t"));
        assert!(!f.matches("mysql", "user"));
        let f = filter(&["*"], &[]);
        assert!(f.matches("app", "t"));
        assert!(!f.matches("sys", "x"));
    }

    #[test]
    fn include_and_exclude() {
        let f = filter(&["app", "shop.orders", "log_*.*"], &["app.secret*", "log_old"]);
        assert!(f.matches("app", "t"));
        assert!(!f.matches("app", "secret_keys"));
        assert!(f.matches("shop", "orders"));
        assert!(!f.matches("shop", "customers"));
        assert!(f.matches("log_new", "events"));
        assert!(!f.matches("log_old", "events"));
        assert!(!f.matches("other", "t"));
    }

    #[test]
    fn exclusion_wins() {
        let f = filter(&["app.t"], &["app"]);
        assert!(!f.matches("app", "t"));
    }

    #[test]
    fn system_schemas_only_when_named_literally() {
        let f = filter(&["mysql.user"], &[]);
        assert!(f.matches("mysql", "user"));
        assert!(!f.matches("mysql", "db"));
        let f = filter(&["mysql"], &["mysql.db"]);
        assert!(f.matches("mysql", "user"));
        assert!(!f.matches("mysql", "db"));
        let f = filter(&["my*"], &[]);
        assert!(!f.matches("mysql", "user"));
        assert!(f.matches("myapp", "t"));
    }

    #[test]
    fn schema_level_question() {
        let f = filter(&["app.t", "shop*"], &["shop_old", "app.x"]);
        assert!(f.may_match_schema("app"));
        assert!(f.may_match_schema("shop1"));
        assert!(!f.may_match_schema("shop_old"));
        assert!(!f.may_match_schema("other"));
        assert!(!filter(&[], &[]).may_match_schema("mysql"));
        assert!(filter(&[], &[]).may_match_schema("app"));
        assert!(filter(&["mysql.user"], &[]).may_match_schema("mysql"));
    }

    #[test]
    fn invalid_patterns_are_all_reported() {
        let errs = TableFilter::new(&["", "a.", "ok", ".b", "a.b.c", " x"], &["y."]).unwrap_err();
        assert_eq!(errs.len(), 6);
        assert!(errs[0].to_string().contains("empty schema part"), "{}", errs[0]);
        assert_eq!(errs[1].reason, "empty table part");
        assert_eq!(errs[3].reason, "more than one `.`");
        assert_eq!(errs[5].pattern, "y.");
    }

    #[test]
    fn display_round_trip() {
        for p in ["app", "app.t*"] {
            assert_eq!(TablePattern::parse(p).unwrap().to_string(), p);
        }
    }
}
