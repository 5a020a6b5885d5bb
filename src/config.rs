//! `dbmux.toml`: loading, environment overrides and validation.
//!
//! # Lifecycle
//! text → `${VAR}` substitution → TOML → `DBMUX__…` overrides → typed structs
//! → [`Config::validate`], which returns **every** problem at once with its
//! field path. Nothing starts until the whole file is valid.
//!
//! # Environment
//! - `${NAME}` anywhere in the file is replaced by the variable's value (an
//!   unset variable is an error).
//! - `DBMUX__SECTION__KEY=value` sets `section.key`; a path segment that names
//!   an array of tables selects the element whose `name` matches (or an index):
//!   `DBMUX__REPLICA__pg__POSTGRES__URL=postgres://…`. Keys are lower-cased.
//!   The value is parsed as a TOML value when it parses, else taken as a string.
//!
//! # Secrets
//! URLs carry passwords; anything printed goes through [`redact_url`].

use connectors::mysql::apply::MysqlSinkConfig;
use connectors::mysql::capture::MysqlSourceConfig;
use connectors::postgres::apply::PostgresSinkConfig;
use connectors::postgres::capture::PostgresSourceConfig;
use pipeline::log::FsyncPolicy;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default pipeline name.
pub const DEFAULT_NAME: &str = "dbmux";
/// Default data directory (the embedded log lives in `<data_dir>/log`).
pub const DEFAULT_DATA_DIR: &str = "./dbmux-data";
/// Default interval for `fsync = "interval"`.
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 100;
/// Default seconds between log truncation passes.
pub const DEFAULT_TRUNCATE_INTERVAL_S: u64 = 10;
/// Default events per target transaction.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 5000;
/// Default admin HTTP address (metrics, status, log tail).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9187";
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "DBMUX__";

#[derive(Debug)]
pub struct Config {
    /// The pipeline's name: replicas key their `dbmux_offsets` row by
    /// `<name>/<replica name>`, so several pipelines can share a replica.
    pub name: String,
    /// Where dbmux keeps its own state (the embedded log).
    pub data_dir: PathBuf,
    pub log: LogConfig,
    /// `[log.kafka]`, when `log.kind = "kafka"`.
    #[cfg(feature = "kafka")]
    pub kafka: Option<connectors::kafka::KafkaLogConfig>,
    /// `None` only in a proxy-only file.
    pub source: Option<SourceConfig>,
    pub replicas: Vec<ReplicaConfig>,
    pub admin: AdminConfig,
    /// Copying the rows tables already have (`[snapshot]`).
    pub snapshot: SnapshotConfig,
    /// The MySQL-protocol front door (`[proxy]`), when configured.
    #[cfg(feature = "proxy")]
    pub proxy: Option<connectors::proxy::config::ProxyConfig>,
}

/// The file's shape with connector sections left raw, so each section is
/// parsed on its own and the errors of all sections are reported together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_name")]
    name: String,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    source: RawSource,
    #[serde(default)]
    replica: Vec<RawReplica>,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    snapshot: SnapshotConfig,
    #[serde(default)]
    proxy: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSource {
    mysql: Option<toml::Value>,
    postgres: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplica {
    #[serde(default)]
    name: String,
    #[serde(default = "default_max_batch_events")]
    max_batch_events: usize,
    mysql: Option<toml::Value>,
    postgres: Option<toml::Value>,
}

fn section<T: serde::de::DeserializeOwned>(
    v: Option<toml::Value>,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let v = v?;
    match v.try_into() {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(format!("{path}: {}", e.to_string().trim().replace('\n', " ")));
            None
        }
    }
}

fn default_name() -> String {
    DEFAULT_NAME.into()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

/// The log kinds (`[log] kind`).
pub const LOG_KINDS: &[&str] = &["embedded", "kafka"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `embedded` (fjall in `data_dir`, one process) or `kafka` (`[log.kafka]`).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// `[log.kafka]`, parsed on its own (see [`Config::kafka`]).
    #[serde(default)]
    pub kafka: Option<toml::Value>,
    /// `always` (sync before a transaction counts as captured; the only mode
    /// that survives power loss), `interval`, or `never`.
    #[serde(default = "default_fsync")]
    pub fsync: String,
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_ms: u64,
    /// Delete what every replica has applied (false keeps the whole history,
    /// e.g. for downstream consumers reading with `dbmux tail`).
    #[serde(default = "default_true")]
    pub truncate: bool,
    #[serde(default = "default_truncate_interval")]
    pub truncate_interval_s: u64,
}

fn default_true() -> bool {
    true
}

fn default_kind() -> String {
    "embedded".into()
}

fn default_fsync() -> String {
    "always".into()
}
fn default_fsync_interval() -> u64 {
    DEFAULT_FSYNC_INTERVAL_MS
}
fn default_truncate_interval() -> u64 {
    DEFAULT_TRUNCATE_INTERVAL_S
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            kind: default_kind(),
            kafka: None,
            fsync: default_fsync(),
            fsync_interval_ms: DEFAULT_FSYNC_INTERVAL_MS,
            truncate: true,
            truncate_interval_s: DEFAULT_TRUNCATE_INTERVAL_S,
        }
    }
}

impl LogConfig {
    pub fn policy(&self) -> FsyncPolicy {
        match self.fsync.as_str() {
            "interval" => FsyncPolicy::IntervalMs(self.fsync_interval_ms),
            "never" => FsyncPolicy::Never,
            _ => FsyncPolicy::Always,
        }
    }
}

/// The source: exactly one kind (`[source.mysql]` or `[source.postgres]`).
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Mysql(MysqlSourceConfig),
    Postgres(PostgresSourceConfig),
}

impl SourceConfig {
    /// The kind's section path, for messages.
    pub fn path(&self) -> &'static str {
        match self {
            SourceConfig::Mysql(_) => "source.mysql",
            SourceConfig::Postgres(_) => "source.postgres",
        }
    }

    /// `kind url` with the password redacted.
    pub fn describe(&self) -> String {
        match self {
            SourceConfig::Mysql(m) => format!("mysql {}", redact_url(&m.url)),
            SourceConfig::Postgres(p) => format!("postgres {} (slot {})", redact_url(&p.url), p.slot),
        }
    }

    /// The source's table filter (`include` / `exclude`).
    pub fn filter(&self) -> Result<pipeline::filter::TableFilter, String> {
        match self {
            SourceConfig::Mysql(m) => m.filter().map_err(|e| e.to_string()),
            SourceConfig::Postgres(p) => p.filter().map_err(|e| e.to_string()),
        }
    }

    /// The `include` patterns.
    pub fn include(&self) -> &[String] {
        match self {
            SourceConfig::Mysql(m) => &m.include,
            SourceConfig::Postgres(p) => &p.include,
        }
    }

    fn validate(&self) -> Vec<String> {
        match self {
            SourceConfig::Mysql(m) => m.validate_at(self.path()),
            SourceConfig::Postgres(p) => p.validate_at(self.path()),
        }
    }
}

/// One replica: a name plus exactly one engine section.
#[derive(Debug)]
pub struct ReplicaConfig {
    pub name: String,
    /// Events per target transaction (whole source transactions are never split).
    pub max_batch_events: usize,
    pub mysql: Option<MysqlSinkConfig>,
    pub postgres: Option<PostgresSinkConfig>,
}

fn default_max_batch_events() -> usize {
    DEFAULT_MAX_BATCH_EVENTS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` of the admin HTTP server; empty disables it.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

/// `[snapshot]`: copying the rows tables already have (see docs/snapshot.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Copy every captured table's existing rows on the first start, and the
    /// rows of a table that enters `include` later.
    #[serde(default = "default_true")]
    pub initial: bool,
    /// Rows per chunk: one short consistent read on the master and one log
    /// transaction.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    /// Tables copied at the same time.
    #[serde(default = "default_parallel_tables")]
    pub parallel_tables: usize,
}

fn default_chunk_rows() -> usize {
    pipeline::snapshot::DEFAULT_CHUNK_ROWS
}
fn default_parallel_tables() -> usize {
    pipeline::snapshot::DEFAULT_PARALLEL_TABLES
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            initial: true,
            chunk_rows: default_chunk_rows(),
            parallel_tables: default_parallel_tables(),
        }
    }
}

/// The file could not be turned into a valid configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

pub use pipeline::secret::redact_url;

/// Replaces `${NAME}` with environment values; unknown names are problems.
/// Comment lines are left alone.
fn substitute_env(text: &str, get: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<String>) -> String {
    text.split_inclusive('\n')
        .map(|line| {
            if line.trim_start().starts_with('#') {
                line.to_string()
            } else {
                substitute_line(line, get, problems)
            }
        })
        .collect()
}

fn substitute_line(text: &str, get: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match get(name) {
                    Some(v) => out.push_str(&v),
                    None => problems.push(format!(
                        "environment variable {name} is referenced as ${{{name}}} but not set"
                    )),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Applies `DBMUX__A__B=v` overrides to the parsed document.
fn apply_overrides(doc: &mut toml::Table, vars: &[(String, String)], problems: &mut Vec<String>) {
    for (key, value) in vars {
        let Some(path) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if segments.iter().any(String::is_empty) {
            problems.push(format!("{key}: empty path segment"));
            continue;
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        if let Err(e) = set_path(doc, &segments, parsed) {
            problems.push(format!("{key}: {e}"));
        }
    }
}

fn set_path(doc: &mut toml::Table, segments: &[String], value: toml::Value) -> Result<(), String> {
    let mut cur = doc;
    let mut i = 0;
    while i + 1 < segments.len() {
        let seg = &segments[i];
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                // An array of tables: the next segment names the element (by
                // its `name`, or by index).
                i += 1;
                let sel = &segments[i];
                if i + 1 >= segments.len() {
                    return Err(format!("{seg}.{sel}: a key inside the element is needed"));
                }
                let found = items.iter().position(|it| {
                    it.get("name")
                        .and_then(toml::Value::as_str)
                        .is_some_and(|n| n.eq_ignore_ascii_case(sel))
                });
                let idx = found
                    .or_else(|| sel.parse::<usize>().ok())
                    .ok_or(format!("{seg} has no element named {sel:?}"))?;
                match items.get_mut(idx) {
                    Some(toml::Value::Table(t)) => t,
                    _ => return Err(format!("{seg} has no element {sel:?}")),
                }
            }
            _ => return Err(format!("{seg} is not a table")),
        };
        i += 1;
    }
    cur.insert(segments[segments.len() - 1].clone(), value);
    Ok(())
}

impl Config {
    /// Loads and validates `path`, with the process environment for overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::parse(&text, &|k| std::env::var(k).ok(), &vars).map_err(|problems| ConfigError::Invalid {
            path: path.into(),
            problems,
        })
    }

    /// Parses and validates configuration text. Returns all problems.
    pub fn parse(
        text: &str,
        get_env: &dyn Fn(&str) -> Option<String>,
        vars: &[(String, String)],
    ) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let text = substitute_env(text, get_env, &mut problems);
        let mut doc: toml::Table = match text.parse() {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("TOML syntax: {}", e.message()));
                return Err(problems);
            }
        };
        apply_overrides(&mut doc, vars, &mut problems);
        // Unknown keys are collected all at once (serde's deny_unknown_fields
        // would stop at the first one); then the typed parse reports type errors.
        collect_unknown_keys(&mut doc, &mut problems);
        let raw: RawConfig = match toml::Value::Table(doc).try_into() {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string().trim().replace('\n', " "));
                return Err(problems);
            }
        };
        let kinds = usize::from(raw.source.mysql.is_some()) + usize::from(raw.source.postgres.is_some());
        let source_present = kinds > 0;
        if kinds > 1 {
            problems.push("source: exactly one of [source.mysql] or [source.postgres] is allowed".into());
        }
        let source = match (raw.source.mysql, raw.source.postgres) {
            (Some(m), _) => section(Some(m), "source.mysql", &mut problems).map(SourceConfig::Mysql),
            (None, Some(p)) => section(Some(p), "source.postgres", &mut problems).map(SourceConfig::Postgres),
            (None, None) => None,
        };
        // Presence is kept apart from the parsed value: a section that failed
        // to parse was reported already and must not also count as missing.
        let mut presence = Vec::with_capacity(raw.replica.len());
        let mut replicas = Vec::with_capacity(raw.replica.len());
        for (i, r) in raw.replica.into_iter().enumerate() {
            presence.push((r.mysql.is_some(), r.postgres.is_some()));
            replicas.push(ReplicaConfig {
                name: r.name,
                max_batch_events: r.max_batch_events,
                mysql: section(r.mysql, &format!("replica[{i}].mysql"), &mut problems),
                postgres: section(r.postgres, &format!("replica[{i}].postgres"), &mut problems),
            });
        }
        #[cfg_attr(not(feature = "kafka"), allow(unused_mut))]
        let mut log = raw.log;
        let kafka_present = log.kafka.is_some();
        #[cfg(feature = "kafka")]
        let kafka = section(log.kafka.take(), "log.kafka", &mut problems);
        let config = Config {
            name: raw.name,
            data_dir: raw.data_dir,
            log,
            #[cfg(feature = "kafka")]
            kafka,
            source,
            replicas,
            admin: raw.admin,
            snapshot: raw.snapshot,
            #[cfg(feature = "proxy")]
            proxy: section(raw.proxy, "proxy", &mut problems),
        };
        problems.extend(config.validate_log(kafka_present));
        problems.extend(config.validate_with(source_present, &presence));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// `[log]`: the kind and, for Kafka, its section.
    fn validate_log(&self, kafka_present: bool) -> Vec<String> {
        let mut p = Vec::new();
        match self.log.kind.as_str() {
            "embedded" => {
                if kafka_present {
                    p.push("log.kafka: only used with log.kind = \"kafka\"".into());
                }
            }
            "kafka" => {
                #[cfg(feature = "kafka")]
                match &self.kafka {
                    Some(k) => p.extend(
                        k.validate(&self.name)
                            .into_iter()
                            .map(|e| format!("log.kafka.{e}")),
                    ),
                    None if kafka_present => {}
                    None => p.push(
                        "log.kafka: required with log.kind = \"kafka\" (at least brokers = \"host:port\")"
                            .into(),
                    ),
                }
                #[cfg(not(feature = "kafka"))]
                p.push("log.kind: this dbmux was built without the `kafka` feature".into());
            }
            other => p.push(format!(
                "log.kind: {other:?} is not one of {}",
                LOG_KINDS
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        p
    }

    /// Semantic checks, every problem with its field path; told which sections
    /// were present in the file (a section that failed to parse was reported
    /// already and is not also "missing").
    fn validate_with(&self, source_present: bool, presence: &[(bool, bool)]) -> Vec<String> {
        let mut p = Vec::new();
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            p.push(format!(
                "name: {:?} must be 1-64 characters of [A-Za-z0-9_-]",
                self.name
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir: must not be empty".into());
        }
        if !["always", "interval", "never"].contains(&self.log.fsync.as_str()) {
            p.push(format!(
                "log.fsync: {:?} is not one of \"always\", \"interval\", \"never\"",
                self.log.fsync
            ));
        }
        if self.log.fsync == "interval" && self.log.fsync_interval_ms == 0 {
            p.push("log.fsync_interval_ms: must be > 0 with fsync = \"interval\"".into());
        }
        if self.log.truncate_interval_s == 0 {
            p.push("log.truncate_interval_s: must be > 0".into());
        }
        if !(1..=1_000_000).contains(&self.snapshot.chunk_rows) {
            p.push(format!(
                "snapshot.chunk_rows: must be between 1 and 1000000 (found {})",
                self.snapshot.chunk_rows
            ));
        }
        if !(1..=64).contains(&self.snapshot.parallel_tables) {
            p.push(format!(
                "snapshot.parallel_tables: must be between 1 and 64 (found {})",
                self.snapshot.parallel_tables
            ));
        }
        #[cfg(feature = "proxy")]
        let has_proxy = self.proxy.is_some();
        #[cfg(not(feature = "proxy"))]
        let has_proxy = false;
        #[cfg(feature = "proxy")]
        if let Some(proxy) = &self.proxy {
            p.extend(proxy.validate().into_iter().map(|e| e.to_string()));
        }
        // A pipeline needs a source and replicas; a proxy-only file needs neither.
        let pipeline = source_present || !self.replicas.is_empty() || !has_proxy;
        if pipeline {
            match &self.source {
                Some(s) => p.extend(s.validate()),
                None if source_present => {}
                None => p.push(
                    "source: exactly one source is required ([source.mysql] or [source.postgres])".into(),
                ),
            }
            if self.replicas.is_empty() {
                p.push("replica: at least one [[replica]] is required".into());
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.replicas.iter().enumerate() {
            let at = format!("replica[{i}]");
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                || r.name.len() > 64
            {
                p.push(format!(
                    "{at}.name: {:?} must be 1-64 characters of [A-Za-z0-9_-]",
                    r.name
                ));
            } else if !names.insert(r.name.clone()) {
                p.push(format!("{at}.name: {:?} is used by another replica", r.name));
            }
            if r.max_batch_events == 0 {
                p.push(format!("{at}.max_batch_events: must be > 0"));
            }
            let (has_mysql, has_pg) = presence.get(i).copied().unwrap_or((false, false));
            if has_mysql == has_pg {
                p.push(format!(
                    "{at}: exactly one of [replica.mysql] or [replica.postgres] is required"
                ));
            } else if let Some(m) = &r.mysql {
                p.extend(
                    m.validate()
                        .into_iter()
                        .map(|e| prefixed(&format!("{at}.mysql"), e)),
                );
            } else if let Some(pg) = &r.postgres {
                p.extend(
                    pg.validate()
                        .into_iter()
                        .map(|e| prefixed(&format!("{at}.postgres"), e)),
                );
            }
        }
        p.extend(self.merge_problems());
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "admin.listen: {:?} is not a host:port address",
                self.admin.listen
            ));
        }
        p
    }
}

impl Config {
    /// Configurations that would write two source tables into one replica
    /// table (rows of one would overwrite the other's): two source databases
    /// mapped to one replica database, a mapping onto a database that is also
    /// captured under its own name, a fixed PostgreSQL `schema` while capture
    /// may read several databases, or a source database written over the
    /// replica's own offsets database/schema.
    fn merge_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let Some(src) = &self.source else {
            return p;
        };
        let Ok(filter) = src.filter() else {
            return p; // the patterns were reported already
        };
        // The databases capture may read, when the include patterns name them all
        // literally; `None` when some pattern (or an empty list) lets in any database.
        let literal: Option<std::collections::BTreeSet<String>> = if src.include().is_empty() {
            None
        } else {
            src.include()
                .iter()
                .map(|pat| {
                    let schema = pat.split_once('.').map_or(pat.as_str(), |(s, _)| s);
                    (!schema.contains(['*', '?'])).then(|| schema.to_string())
                })
                .collect::<Option<_>>()
                .map(|set: std::collections::BTreeSet<String>| {
                    set.into_iter().filter(|d| filter.may_match_schema(d)).collect()
                })
        };
        let named_literally = |db: &str| literal.as_ref().is_some_and(|l| l.contains(db));
        for (i, r) in self.replicas.iter().enumerate() {
            if let Some(m) = &r.mysql {
                let at = format!("replica[{i}].mysql");
                let mut targets: std::collections::BTreeMap<&str, &str> = Default::default();
                for (from, to) in &m.databases {
                    if !filter.may_match_schema(from) {
                        continue;
                    }
                    if let Some(other) = targets.insert(to.as_str(), from.as_str()) {
                        p.push(format!(
                            "{at}.databases: source databases {other:?} and {from:?} are both written to {to:?}; \
                             tables of the same name would overwrite each other's rows"
                        ));
                    }
                    if to != from && !m.databases.contains_key(to) && filter.may_match_schema(to) {
                        p.push(format!(
                            "{at}.databases.{from}: {from:?} is written to {to:?}, which capture may also read \
                             as a source database of its own (written to itself); map {to:?} elsewhere or exclude it"
                        ));
                    }
                    if *to == m.offsets_database {
                        p.push(format!(
                            "{at}.databases.{from}: {to:?} is the replica's offsets_database; choose another"
                        ));
                    }
                }
                if named_literally(&m.offsets_database) && !m.databases.contains_key(&m.offsets_database) {
                    p.push(format!(
                        "{at}.offsets_database: {:?} is also a captured source database; map it elsewhere with \
                         `databases` or choose another offsets_database",
                        m.offsets_database
                    ));
                }
            }
            if let Some(pg) = &r.postgres {
                let at = format!("replica[{i}].postgres");
                match (&pg.schema, &literal) {
                    (Some(schema), None) => p.push(format!(
                        "{at}.schema: every table goes into schema {schema:?}, but source.mysql.include may \
                         capture several databases (empty or with wildcards in the database part); tables of \
                         the same name would overwrite each other's rows: name one database in include, or \
                         remove schema (each database then gets its own schema)"
                    )),
                    (Some(schema), Some(dbs)) if dbs.len() > 1 => p.push(format!(
                        "{at}.schema: every table goes into schema {schema:?}, but capture reads databases {}; \
                         tables of the same name would overwrite each other's rows: remove schema (each \
                         database then gets its own schema) or run one replica per database",
                        dbs.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(", ")
                    )),
                    _ => {}
                }
                let offsets_clash = match &pg.schema {
                    Some(s) => *s == pg.offsets_schema,
                    None => named_literally(&pg.offsets_schema),
                };
                if offsets_clash {
                    p.push(format!(
                        "{at}.offsets_schema: {:?} would also receive replicated tables; choose another",
                        pg.offsets_schema
                    ));
                }
            }
        }
        p
    }
}

fn prefixed(prefix: &str, msg: String) -> String {
    if msg.starts_with(prefix) {
        msg
    } else {
        format!("{prefix}.{msg}")
    }
}

/// Known keys per table path (arrays of tables use `[]`). Sections owned by
/// connectors are checked by their own `deny_unknown_fields`.
fn collect_unknown_keys(doc: &mut toml::Table, problems: &mut Vec<String>) {
    const TOP: &[&str] = &[
        "name", "data_dir", "log", "source", "replica", "admin", "snapshot", "proxy",
    ];
    const SNAPSHOT: &[&str] = &["initial", "chunk_rows", "parallel_tables"];
    const LOG: &[&str] = &[
        "kind",
        "kafka",
        "fsync",
        "fsync_interval_ms",
        "truncate",
        "truncate_interval_s",
    ];
    const SOURCE: &[&str] = &["mysql", "postgres"];
    const REPLICA: &[&str] = &["name", "max_batch_events", "mysql", "postgres"];
    const ADMIN: &[&str] = &["listen"];
    // Reports and removes unknown keys, so the typed parse can go on to find
    // the remaining problems.
    let check = |t: &mut toml::Table, known: &[&str], at: &str, problems: &mut Vec<String>| {
        let unknown: Vec<String> = t
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            problems.push(format!(
                "{path}: unknown field (expected one of: {})",
                known.join(", ")
            ));
            t.remove(&k);
        }
    };
    check(doc, TOP, "", problems);
    if let Some(toml::Value::Table(t)) = doc.get_mut("log") {
        check(t, LOG, "log", problems);
    }
    if let Some(toml::Value::Table(t)) = doc.get_mut("source") {
        check(t, SOURCE, "source", problems);
    }
    if let Some(toml::Value::Table(t)) = doc.get_mut("admin") {
        check(t, ADMIN, "admin", problems);
    }
    if let Some(toml::Value::Table(t)) = doc.get_mut("snapshot") {
        check(t, SNAPSHOT, "snapshot", problems);
    }
    if let Some(toml::Value::Array(items)) = doc.get_mut("replica") {
        for (i, it) in items.iter_mut().enumerate() {
            if let toml::Value::Table(t) = it {
                check(t, REPLICA, &format!("replica[{i}]"), problems);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_and_overrides() {
        let mut problems = Vec::new();
        let get = |k: &str| (k == "PW").then(|| "s3cret".to_string());
        assert_eq!(
            substitute_env("a=${PW} b=${NOPE}", &get, &mut problems),
            "a=s3cret b="
        );
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("NOPE"));
        assert_eq!(
            substitute_env("# ${NOPE}\nx=${PW}\n", &get, &mut problems),
            "# ${NOPE}\nx=s3cret\n"
        );
        assert_eq!(problems.len(), 1);

        let mut doc: toml::Table = "[[replica]]\nname = \"pg\"\n[log]\nfsync = \"always\"\n"
            .parse()
            .unwrap();
        let vars = vec![
            ("DBMUX__LOG__FSYNC".to_string(), "never".to_string()),
            (
                "DBMUX__REPLICA__pg__MAX_BATCH_EVENTS".to_string(),
                "7".to_string(),
            ),
            ("DBMUX__REPLICA__nope__X".to_string(), "1".to_string()),
        ];
        let mut problems = Vec::new();
        apply_overrides(&mut doc, &vars, &mut problems);
        assert_eq!(doc["log"]["fsync"].as_str(), Some("never"));
        assert_eq!(doc["replica"][0]["max_batch_events"].as_integer(), Some(7));
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn log_kind_and_kafka_section_are_validated_with_field_paths() {
        let base = "[source.mysql]\nurl = \"mysql://u:p@127.0.0.1:1/app\"\n\
                    [[replica]]\nname = \"r\"\n[replica.mysql]\nurl = \"mysql://u:p@127.0.0.1:2/app\"\n";
        let parse = |log: &str| Config::parse(&format!("{log}\n{base}"), &|_| None, &[]);
        let ok = parse("[log]\nkind = \"kafka\"\n[log.kafka]\nbrokers = \"127.0.0.1:19092\"").unwrap();
        assert_eq!(ok.kafka.unwrap().log_topic(&ok.name), "dbmux.dbmux.log");
        let problems = |log: &str| parse(log).err().unwrap().join("\n");
        let p = problems("[log]\nkind = \"kafka\"");
        assert!(p.contains("log.kafka: required"), "{p}");
        let p = problems("[log]\nkind = \"kafka\"\n[log.kafka]\nbrokers = \"b:1\"\ncolour = 1");
        assert!(p.contains("log.kafka: unknown field `colour`"), "{p}");
        let p =
            problems("[log]\nkind = \"kafka\"\n[log.kafka]\nbrokers = \"nohost\"\nmin_insync_replicas = 2");
        assert!(
            p.contains("log.kafka.brokers: \"nohost\" is not host:port"),
            "{p}"
        );
        assert!(p.contains("log.kafka.min_insync_replicas"), "{p}");
        let p = problems("[log]\nkind = \"bogus\"");
        assert!(
            p.contains("log.kind: \"bogus\" is not one of \"embedded\", \"kafka\""),
            "{p}"
        );
        let p = problems("[log.kafka]\nbrokers = \"b:1\"");
        assert!(
            p.contains("log.kafka: only used with log.kind = \"kafka\""),
            "{p}"
        );
    }
    #[test]
    fn source_is_exactly_one_kind() {
        let replica = "[[replica]]\nname = \"r\"\n[replica.postgres]\nurl = \"postgres://u@h/app\"\n";
        let parse = |text: &str| Config::parse(text, &|_| None, &[]);
        let pg = parse(&format!(
            "[source.postgres]\nurl = \"postgres://u:pw@h:5432/shop\"\nslot = \"s1\"\n{replica}"
        ))
        .unwrap();
        match &pg.source {
            Some(SourceConfig::Postgres(p)) => {
                assert_eq!(p.slot, "s1");
                assert_eq!(p.publication, "dbmux");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            pg.source.as_ref().unwrap().describe(),
            "postgres postgres://u:***@h:5432/shop (slot s1)"
        );
        let both = parse(&format!(
            "[source.mysql]\nurl = \"mysql://u@h/\"\n[source.postgres]\nurl = \"postgres://u@h/shop\"\n{replica}"
        ))
        .unwrap_err();
        assert!(
            both.iter()
                .any(|p| p.contains("exactly one of [source.mysql] or [source.postgres]")),
            "{both:?}"
        );
        let bad = parse(&format!(
            "[source.postgres]\nurl = \"postgres://u@h/\"\nslot = \"Bad\"\nwhat = 1\n{replica}"
        ))
        .unwrap_err();
        assert!(
            bad.iter()
                .any(|p| p.starts_with("source.postgres: unknown field `what`")),
            "{bad:?}"
        );
        let bad = parse(&format!(
            "[source.postgres]\nurl = \"postgres://u@h/\"\nslot = \"Bad\"\n{replica}"
        ))
        .unwrap_err();
        assert!(
            bad.iter()
                .any(|p| p.starts_with("source.postgres.url: name the source database")),
            "{bad:?}"
        );
        assert!(
            bad.iter().any(|p| p.starts_with("source.postgres.slot:")),
            "{bad:?}"
        );
        let none = parse(replica).unwrap_err();
        assert!(
            none.iter().any(|p| p.contains("exactly one source is required")),
            "{none:?}"
        );
    }

    fn problems(text: &str) -> Vec<String> {
        Config::parse(text, &|_| None, &[]).err().unwrap_or_default()
    }

    #[test]
    fn merging_source_databases_into_one_target_is_refused() {
        let base = "[source.mysql]\nurl = \"mysql://u@h/\"\n";
        let pg = |include: &str, extra: &str| {
            format!(
                "{base}include = {include}\n[[replica]]\nname = \"p\"\n[replica.postgres]\n\
                 url = \"postgres://u@h/d\"\n{extra}"
            )
        };
        // One database into a fixed schema: fine. Several, or any: refused.
        assert!(problems(&pg("[\"app\"]", "schema = \"x\"")).is_empty());
        assert!(problems(&pg("[\"app.t1\", \"app.t2\"]", "schema = \"x\"")).is_empty());
        let p = problems(&pg("[\"app\", \"shop\"]", "schema = \"x\""));
        assert!(
            p.iter()
                .any(|e| e.starts_with("replica[0].postgres.schema:") && e.contains("\"shop\"")),
            "{p:?}"
        );
        let p = problems(&pg("[\"app*\"]", "schema = \"x\""));
        assert!(
            p.iter().any(|e| e.starts_with("replica[0].postgres.schema:")),
            "{p:?}"
        );
        let p = problems(&pg("[]", "schema = \"x\""));
        assert!(
            p.iter().any(|e| e.starts_with("replica[0].postgres.schema:")),
            "{p:?}"
        );
        let p = problems(&pg("[\"app\"]", "schema = \"dbmux\""));
        assert!(
            p.iter()
                .any(|e| e.starts_with("replica[0].postgres.offsets_schema:")),
            "{p:?}"
        );
        // Without a fixed schema each database has its own: fine.
        assert!(problems(&pg("[\"app\", \"shop\"]", "")).is_empty());

        let my = |include: &str, map: &str| {
            format!(
                "{base}include = {include}\n[[replica]]\nname = \"m\"\n[replica.mysql]\n\
                 url = \"mysql://u@h/\"\ndatabases = {map}\n"
            )
        };
        assert!(problems(&my("[\"a\", \"b\"]", "{ a = \"a2\", b = \"b2\" }")).is_empty());
        let p = problems(&my("[\"a\", \"b\"]", "{ a = \"x\", b = \"x\" }"));
        assert!(
            p.iter().any(|e| e.starts_with("replica[0].mysql.databases:")),
            "{p:?}"
        );
        let p = problems(&my("[\"a\", \"b\"]", "{ a = \"b\" }"));
        assert!(
            p.iter().any(|e| e.starts_with("replica[0].mysql.databases.a:")),
            "{p:?}"
        );
        // `b` is not captured: writing `a` into a database named `b` is fine.
        assert!(problems(&my("[\"a\"]", "{ a = \"b\" }")).is_empty());
        let p = problems(&my("[\"a\"]", "{ a = \"dbmux\" }"));
        assert!(p.iter().any(|e| e.contains("offsets_database")), "{p:?}");
    }
}
