//! `[replica.sqlserver]`.

use super::sql;
use pipeline::secret::redact_url;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Default schema of `dbmux_offsets` and `dbmux_quarantine`.
pub const DEFAULT_OFFSETS_SCHEMA: &str = "dbmux";
/// Default rows per statement (SQL Server's own limits — 2,100 parameters,
/// 1,000 rows per `INSERT … VALUES` — lower it further per table).
pub const DEFAULT_MAX_ROWS_PER_STATEMENT: usize = 1000;
/// Default approximate bytes of values per statement.
pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 4 << 20;
/// Default SQL Server port.
pub const DEFAULT_PORT: u16 = 1433;

/// How the TDS connection is encrypted (`?encrypt=` in the URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypt {
    /// TLS for everything; fail when the server cannot (the default).
    Required,
    /// TDS 8.0 strict: TLS before the prelogin (SQL Server 2022+).
    Strict,
    /// TLS when the server offers it.
    On,
    /// TLS for the login packet only (the password), as the server allows.
    Off,
}

/// `[replica.sqlserver]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlServerSinkConfig {
    /// `sqlserver://user:password@host:port/database?encrypt=required&trust_server_certificate=false`
    /// (`mssql://` too). Query keys: `encrypt` (`required` default, `strict`,
    /// `on`, `off`), `trust_server_certificate` (`false` default), `ca` (a PEM
    /// file of the CA to trust), `application_name`.
    pub url: String,
    /// Put every table into this schema. Default: the schema named after the
    /// table's source database (`app.orders` → `[app].[orders]`).
    #[serde(default)]
    pub schema: Option<String>,
    /// Schema holding `dbmux_offsets` and `dbmux_quarantine`.
    #[serde(default = "default_offsets_schema")]
    pub offsets_schema: String,
    /// Rows per statement.
    #[serde(default = "default_max_rows")]
    pub max_rows_per_statement: usize,
    /// Approximate bytes of values per statement.
    #[serde(default = "default_max_bytes")]
    pub max_statement_bytes: usize,
    /// Source transactions per target transaction; 0 = all transactions of
    /// one `apply` call in one target transaction.
    #[serde(default)]
    pub max_transactions_per_commit: usize,
    /// Source table `db.table` → replica table name.
    #[serde(default)]
    pub rename_tables: BTreeMap<String, String>,
    /// Source table `db.table` → { source column → replica column }.
    #[serde(default)]
    pub rename_columns: BTreeMap<String, BTreeMap<String, String>>,
}

fn default_offsets_schema() -> String {
    DEFAULT_OFFSETS_SCHEMA.into()
}
fn default_max_rows() -> usize {
    DEFAULT_MAX_ROWS_PER_STATEMENT
}
fn default_max_bytes() -> usize {
    DEFAULT_MAX_STATEMENT_BYTES
}

/// Where and how to connect, from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
    pub encrypt: Encrypt,
    pub trust_server_certificate: bool,
    pub ca: Option<String>,
    pub application_name: String,
}

impl SqlServerSinkConfig {
    /// A configuration with defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            offsets_schema: default_offsets_schema(),
            max_rows_per_statement: DEFAULT_MAX_ROWS_PER_STATEMENT,
            max_statement_bytes: DEFAULT_MAX_STATEMENT_BYTES,
            max_transactions_per_commit: 0,
            rename_tables: BTreeMap::new(),
            rename_columns: BTreeMap::new(),
        }
    }

    /// The connection the URL describes.
    pub fn target(&self) -> Result<Target, String> {
        let shown = redact_url(&self.url);
        let u = url::Url::parse(&self.url).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
        if !matches!(u.scheme(), "sqlserver" | "mssql") {
            return Err(format!("{shown:?} must start with sqlserver:// or mssql://"));
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{shown:?} has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let user = decode(u.username());
        if user.is_empty() {
            return Err(format!(
                "{shown:?} has no user (SQL Server authentication: sqlserver://user:password@host/db)"
            ));
        }
        let password = decode(u.password().unwrap_or(""));
        let database = decode(u.path().trim_start_matches('/'));
        if database.is_empty() || database.contains('/') {
            return Err(format!(
                "{shown:?} must name one database: sqlserver://user:password@host/database"
            ));
        }
        sql::check_ident(&database).map_err(|e| format!("database: {e}"))?;
        let mut t = Target {
            host,
            port: u.port().unwrap_or(DEFAULT_PORT),
            database,
            user,
            password,
            encrypt: Encrypt::Required,
            trust_server_certificate: false,
            ca: None,
            application_name: "dbmux".into(),
        };
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "encrypt" => {
                    t.encrypt = match v.to_ascii_lowercase().as_str() {
                        "required" | "true" | "yes" | "mandatory" => Encrypt::Required,
                        "strict" => Encrypt::Strict,
                        "on" | "optional" => Encrypt::On,
                        "off" | "false" | "no" => Encrypt::Off,
                        other => {
                            return Err(format!(
                                "{shown:?}: encrypt={other:?} must be required, strict, on or off"
                            ))
                        }
                    }
                }
                "trust_server_certificate" | "trustservercertificate" => {
                    t.trust_server_certificate = match v.to_ascii_lowercase().as_str() {
                        "true" | "yes" | "1" => true,
                        "false" | "no" | "0" => false,
                        other => {
                            return Err(format!(
                                "{shown:?}: trust_server_certificate={other:?} must be true or false"
                            ))
                        }
                    }
                }
                "ca" => t.ca = Some(v.into_owned()),
                "application_name" => t.application_name = v.into_owned(),
                other => {
                    return Err(format!(
                    "{shown:?}: unknown parameter {other:?} (known: encrypt, trust_server_certificate, ca, \
                         application_name)"
                ))
                }
            }
        }
        if t.trust_server_certificate && t.ca.is_some() {
            return Err(format!(
                "{shown:?}: trust_server_certificate=true and ca exclude each other"
            ));
        }
        Ok(t)
    }

    /// Every problem, each prefixed with its field path.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = self.target() {
            p.push(format!("url: {e}"));
        }
        if let Some(s) = &self.schema {
            if let Err(e) = sql::check_ident(s) {
                p.push(format!("schema: {e}"));
            }
        }
        if let Err(e) = sql::check_ident(&self.offsets_schema) {
            p.push(format!("offsets_schema: {e}"));
        }
        if self.schema.as_deref() == Some(self.offsets_schema.as_str()) {
            p.push(format!(
                "offsets_schema: {:?} would also receive replicated tables; choose another",
                self.offsets_schema
            ));
        }
        if self.max_rows_per_statement == 0 {
            p.push("max_rows_per_statement: must be > 0".into());
        }
        if self.max_statement_bytes == 0 {
            p.push("max_statement_bytes: must be > 0".into());
        }
        for (from, to) in &self.rename_tables {
            if from.split_once('.').is_none() {
                p.push(format!("rename_tables.{from:?}: the key must be db.table"));
            }
            if let Err(e) = sql::check_ident(to) {
                p.push(format!("rename_tables.{from:?}: {e}"));
            }
        }
        for (table, cols) in &self.rename_columns {
            if table.split_once('.').is_none() {
                p.push(format!("rename_columns.{table:?}: the key must be db.table"));
            }
            for (from, to) in cols {
                if let Err(e) = sql::check_ident(to) {
                    p.push(format!("rename_columns.{table:?}.{from}: {e}"));
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_safe_defaults_and_bad_ones_say_why() {
        let t = SqlServerSinkConfig::new("sqlserver://sa:p%40ss%2Bw@db.example:14330/app")
            .target()
            .unwrap();
        assert_eq!(
            t,
            Target {
                host: "db.example".into(),
                port: 14330,
                database: "app".into(),
                user: "sa".into(),
                password: "p@ss+w".into(),
                encrypt: Encrypt::Required,
                trust_server_certificate: false,
                ca: None,
                application_name: "dbmux".into(),
            }
        );
        let t = SqlServerSinkConfig::new("mssql://u:p@h/db?encrypt=off&trust_server_certificate=true")
            .target()
            .unwrap();
        assert_eq!(
            (t.port, t.encrypt, t.trust_server_certificate),
            (1433, Encrypt::Off, true)
        );
        for (url, says) in [
            ("postgres://u:p@h/db", "must start with sqlserver://"),
            ("sqlserver://h/db", "has no user"),
            ("sqlserver://u:p@h/", "must name one database"),
            ("sqlserver://u:p@h/a/b", "must name one database"),
            ("sqlserver://u:p@h/db?encrypt=maybe", "encrypt=\"maybe\""),
            ("sqlserver://u:p@h/db?colour=blue", "unknown parameter \"colour\""),
            (
                "sqlserver://u:p@h/db?trust_server_certificate=true&ca=/x.pem",
                "exclude each other",
            ),
        ] {
            let e = SqlServerSinkConfig::new(url).target().unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains(":p@"), "the password is redacted: {e}");
        }
    }

    #[test]
    fn validate_reports_every_problem_with_its_path() {
        let mut c = SqlServerSinkConfig::new("sqlserver://u:secret@h");
        c.schema = Some("dbmux".into());
        c.max_rows_per_statement = 0;
        c.max_statement_bytes = 0;
        c.rename_tables.insert("nodot".into(), "x".repeat(129));
        c.rename_columns
            .insert("a.t".into(), [("c".to_string(), String::new())].into());
        let p = c.validate();
        for want in [
            "url: ",
            "offsets_schema: \"dbmux\" would also receive",
            "max_rows_per_statement: must be > 0",
            "max_statement_bytes: must be > 0",
            "rename_tables.\"nodot\": the key must be db.table",
            "rename_tables.\"nodot\": ",
            "rename_columns.\"a.t\".c: an empty name",
        ] {
            assert!(p.iter().any(|e| e.starts_with(want)), "{want} in {p:#?}");
        }
        assert!(p.iter().all(|e| !e.contains("secret")), "{p:?}");
        assert!(SqlServerSinkConfig::new("sqlserver://u:p@h/app")
            .validate()
            .is_empty());
    }
}
