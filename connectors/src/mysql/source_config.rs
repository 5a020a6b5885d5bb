//! `[source.mysql]`: the MariaDB / MySQL source's configuration and its
//! validation.

use super::capture_error::MysqlCaptureError;
use mysql_async::Opts;
use pipeline::filter::{TableFilter, TablePattern};
use serde::Deserialize;
use std::fmt;

/// Default replication `server_id` of the dump connection (distinct from the
/// usual small ids of real servers; give every capture of one master its own).
pub const DEFAULT_SERVER_ID: u32 = 65_435;
/// Default heartbeat period asked of the master.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 5;
/// The connection is presumed dead after this many silent heartbeat periods.
pub const HEARTBEAT_MISSES: u32 = 3;
/// Schemas never captured unless an include pattern names them literally.
pub const SYSTEM_SCHEMAS: &[&str] = &["mysql", "sys", "information_schema", "performance_schema"];

fn default_server_id() -> u32 {
    DEFAULT_SERVER_ID
}
fn default_heartbeat_secs() -> u64 {
    DEFAULT_HEARTBEAT_SECS
}

/// `[source]` for a MariaDB / MySQL master.
///
/// ```toml
/// [source]
/// url = "mysql://dbmux:secret@db1:3306/"
/// server_id = 65435              # replication id of the dump; unique per master
/// include = ["app", "shop.orders"]  # `db` or `db.table`, `*` and `?` wildcards; empty = all
/// exclude = ["app.sessions"]
/// heartbeat_secs = 5
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// `mysql://user:password@host:port/[db]` of the master (the path is ignored).
    pub url: String,
    /// Replication `server_id` the dump registers with: non-zero and different
    /// from every server's and every other capture's.
    #[serde(default = "default_server_id")]
    pub server_id: u32,
    /// Tables to capture: `db` (every table) or `db.table`; empty means all.
    #[serde(default)]
    pub include: Vec<String>,
    /// Tables never captured (wins over `include`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Heartbeat period asked of the master, in seconds (1–600).
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
}

impl MysqlSourceConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            server_id: DEFAULT_SERVER_ID,
            include: Vec::new(),
            exclude: Vec::new(),
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
        }
    }

    /// All problems, with field paths under `source.`.
    pub fn validate(&self) -> Vec<String> {
        self.validate_at("source")
    }

    /// All problems, with field paths under `prefix.`.
    pub fn validate_at(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        match url::Url::parse(&self.url) {
            Err(e) => out.push(format!("{prefix}.url: not a URL ({e})")),
            Ok(u) => {
                if u.scheme() != "mysql" {
                    out.push(format!(
                        "{prefix}.url: scheme must be mysql:// (found {}://)",
                        u.scheme()
                    ));
                } else if u.host_str().is_none_or(str::is_empty) {
                    out.push(format!("{prefix}.url: no host"));
                } else if let Err(e) = Opts::from_url(&self.url) {
                    out.push(format!("{prefix}.url: {e}"));
                }
            }
        }
        if self.server_id == 0 {
            out.push(format!(
                "{prefix}.server_id: must not be 0 (a replication server_id unique among the servers and captures of this master)"
            ));
        }
        if !(1..=600).contains(&self.heartbeat_secs) {
            out.push(format!(
                "{prefix}.heartbeat_secs: must be between 1 and 600 (found {})",
                self.heartbeat_secs
            ));
        }
        for (field, list) in [("include", &self.include), ("exclude", &self.exclude)] {
            for (i, p) in list.iter().enumerate() {
                if let Err(e) = TablePattern::parse(p) {
                    out.push(format!("{prefix}.{field}[{i}]: {e}"));
                }
            }
        }
        out
    }

    /// The table filter these settings describe.
    pub fn filter(&self) -> Result<TableFilter, MysqlCaptureError> {
        TableFilter::new(&self.include, &self.exclude)
            .map(|f| f.with_system_schemas(SYSTEM_SCHEMAS))
            .map_err(|errs| MysqlCaptureError::Config(errs.iter().map(ToString::to_string).collect()))
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        pipeline::secret::redact_url(&self.url)
    }
}

impl fmt::Debug for MysqlSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlSourceConfig")
            .field("url", &self.redacted_url())
            .field("server_id", &self.server_id)
            .field("include", &self.include)
            .field("exclude", &self.exclude)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .finish()
    }
}
