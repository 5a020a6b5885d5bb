//! The `[proxy]` section of the configuration.
//!
//! ```toml
//! [proxy]
//! listen = "127.0.0.1:3307"            # default
//! allow = ["127.0.0.0/8", "::1/128"]   # CIDR list of client addresses; default loopback only
//! max_connections = 1024               # default
//! idle_timeout_secs = 28800            # close client sessions idle this long; default 8 h
//! default_auth_plugin = "mysql_native_password"   # offered in the greeting
//! master = "mysql://dbmux:secret@127.0.0.1:13306/"
//! health_interval_ms = 500             # ping period per backend
//! max_replica_lag = 10000              # seq distance above which a replica takes no reads
//! max_allowed_packet = 67108864        # largest client command; bigger → 1153, connection closed
//! max_memory = 1073741824              # client bytes (big packets, long data, statement texts) of all sessions
//! connect_timeout_ms = 5000            # opening a backend connection
//! health_timeout_ms = 2000             # an unanswered health check marks the backend down
//! max_login_failures = 10              # failed logins of one address before 1129 …
//! login_block_secs = 60                # … for this long
//! max_prelogin_per_address = 32        # connections of one address still logging in
//!
//! [[proxy.replicas]]
//! name = "replica1"
//! url = "mysql://dbmux:secret@127.0.0.1:13307/"
//! # consumer = "main/replica1"   # its applier's dbmux_offsets row; default: name
//! # Defaults: what the dbmux applier named like this replica stored, then
//! # (for a native MariaDB replica) @@gtid_slave_pos. See `health`.
//! # applied_gtid_query = "SELECT position FROM dbmux.dbmux_offsets WHERE consumer = 'replica1'"
//! # applied_seq_query = "SELECT seq FROM dbmux.dbmux_offsets WHERE consumer = 'replica1'"
//!
//! [[proxy.users]]
//! name = "app"
//! # `dbmux hash-password` prints both lines for a password.
//! mysql_native_password = "*5F7E4A3E9B6D2B8F..."  # '*' + HEX(SHA1(SHA1(pw))), as in mysql.user
//! caching_sha2_password = "9c1185a5c5e9fc54..."   # HEX(SHA256(SHA256(pw)))
//! auth_plugin = "caching_sha2_password"           # plugin this user logs in with; default native
//! consistency = "read_your_writes"                # or "eventual"; default read_your_writes
//! # backend_user = "app_rw"                       # the user's own backend account (default: the URLs')
//! # backend_password = "${APP_RW_PASSWORD}"
//! # replica_user = "app_ro"                       # its account on the replicas (default: backend_user)
//! # replica_password = "${APP_RO_PASSWORD}"
//!
//! [proxy.tls]
//! cert = "/etc/dbmux/proxy.crt"   # PEM chain
//! key = "/etc/dbmux/proxy.key"    # PEM private key
//! require = false                 # refuse clients that do not start TLS
//! ```
//!
//! # Why two hashes per user
//! Each plugin's challenge-response proves knowledge of a different hash of the
//! password: `mysql_native_password` of SHA1(pw) checked against SHA1(SHA1(pw)),
//! `caching_sha2_password`'s fast path of SHA256(pw) checked against
//! SHA256(SHA256(pw)). Neither stored value lets anyone log in (both need the
//! inner hash), but both are unsalted: keep the file private.

use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::SocketAddr;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3307";
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 28_800;
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 500;
pub const DEFAULT_MAX_REPLICA_LAG: u64 = 10_000;
/// MySQL 8's default; MariaDB's is 16 MiB.
pub const DEFAULT_MAX_ALLOWED_PACKET: usize = 64 << 20;
pub const DEFAULT_MAX_MEMORY: usize = 1 << 30;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_MAX_LOGIN_FAILURES: u32 = 10;
pub const DEFAULT_LOGIN_BLOCK_SECS: u64 = 60;
pub const DEFAULT_MAX_PRELOGIN_PER_ADDRESS: usize = 32;
/// Where the dbmux appliers keep their offsets (`connectors::mysql::apply`).
pub const OFFSETS_TABLE: &str = "dbmux.dbmux_offsets";
/// The applied GTID state of a natively replicating MariaDB replica.
pub const NATIVE_GTID_QUERY: &str = "SELECT @@gtid_slave_pos";

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}
fn default_allow() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_idle_timeout() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECS
}
fn default_health_interval() -> u64 {
    DEFAULT_HEALTH_INTERVAL_MS
}
fn default_max_lag() -> u64 {
    DEFAULT_MAX_REPLICA_LAG
}
fn default_max_allowed_packet() -> usize {
    DEFAULT_MAX_ALLOWED_PACKET
}
fn default_max_memory() -> usize {
    DEFAULT_MAX_MEMORY
}
fn default_connect_timeout() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_health_timeout() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_MS
}
fn default_max_login_failures() -> u32 {
    DEFAULT_MAX_LOGIN_FAILURES
}
fn default_login_block() -> u64 {
    DEFAULT_LOGIN_BLOCK_SECS
}
fn default_max_prelogin() -> usize {
    DEFAULT_MAX_PRELOGIN_PER_ADDRESS
}

/// An authentication plugin the proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthPlugin {
    #[default]
    MysqlNativePassword,
    CachingSha2Password,
}

impl AuthPlugin {
    pub fn name(self) -> &'static str {
        match self {
            AuthPlugin::MysqlNativePassword => "mysql_native_password",
            AuthPlugin::CachingSha2Password => "caching_sha2_password",
        }
    }
    pub fn from_name(name: &[u8]) -> Option<AuthPlugin> {
        match name {
            b"mysql_native_password" => Some(AuthPlugin::MysqlNativePassword),
            b"caching_sha2_password" => Some(AuthPlugin::CachingSha2Password),
            _ => None,
        }
    }
}

/// Per-user read consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Reads after this session's own write go to a replica only once it has
    /// applied that write; until then to the master.
    #[default]
    ReadYourWrites,
    /// Reads go to any healthy replica within the lag limit.
    Eventual,
}

/// The whole `[proxy]` section.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_allow")]
    pub allow: Vec<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    #[serde(default)]
    pub default_auth_plugin: AuthPlugin,
    /// Version string shown to clients; default: the master's, suffixed `-dbmux`.
    #[serde(default)]
    pub server_version: Option<String>,
    pub master: BackendUrl,
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
    #[serde(default = "default_health_interval")]
    pub health_interval_ms: u64,
    #[serde(default = "default_max_lag")]
    pub max_replica_lag: u64,
    /// The largest command packet a client may send (bytes), as the
    /// server's `max_allowed_packet`; also the limit of the long data of one
    /// prepared statement and of a session's prepared statement texts.
    #[serde(default = "default_max_allowed_packet")]
    pub max_allowed_packet: usize,
    /// Bytes of client data (big packets, long data, statement texts) all
    /// sessions together may hold.
    #[serde(default = "default_max_memory")]
    pub max_memory: usize,
    /// Opening a backend connection (TCP, greeting, login).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// A health check not answered within this marks the backend down and
    /// releases the sessions waiting for it.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_ms: u64,
    /// Failed logins from one address before it is refused for `login_block_secs`.
    #[serde(default = "default_max_login_failures")]
    pub max_login_failures: u32,
    #[serde(default = "default_login_block")]
    pub login_block_secs: u64,
    /// Connections from one address that may be in the login phase at once.
    #[serde(default = "default_max_prelogin")]
    pub max_prelogin_per_address: usize,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `[proxy.cache]`: the Redis result cache (absent: off).
    #[serde(default)]
    pub cache: Option<super::cache::CacheConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    pub name: String,
    pub url: BackendUrl,
    /// The `consumer` of this replica's dbmux applier in `dbmux_offsets`
    /// (`dbmux run` uses `<pipeline name>/<replica name>`); default: `name`.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Returns the GTID set the replica has applied (one row, one column):
    /// a MariaDB GTID set, or a dbmux position text `mysql:file:offset:gtids`.
    #[serde(default)]
    pub applied_gtid_query: Option<String>,
    /// Returns the last applied pipeline `seq` (one row, one column).
    #[serde(default)]
    pub applied_seq_query: Option<String>,
}

impl ReplicaConfig {
    /// The queries tried in order for the applied GTID set: the configured
    /// one, or the dbmux applier's offsets row for this replica's name and
    /// then `@@gtid_slave_pos`.
    pub fn gtid_queries(&self) -> Vec<String> {
        match &self.applied_gtid_query {
            Some(q) => vec![q.clone()],
            None => vec![
                format!(
                    "SELECT position FROM {OFFSETS_TABLE} WHERE consumer = '{}'",
                    self.consumer()
                ),
                NATIVE_GTID_QUERY.to_string(),
            ],
        }
    }

    /// The query for the last applied `seq`.
    pub fn seq_query(&self) -> String {
        self.applied_seq_query.clone().unwrap_or_else(|| {
            format!(
                "SELECT seq FROM {OFFSETS_TABLE} WHERE consumer = '{}'",
                self.consumer()
            )
        })
    }

    /// The applier's `dbmux_offsets.consumer` for this replica.
    pub fn consumer(&self) -> &str {
        self.consumer.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// `*` + 40 hex digits: SHA1(SHA1(password)).
    #[serde(default)]
    pub mysql_native_password: Option<String>,
    /// 64 hex digits: SHA256(SHA256(password)).
    #[serde(default)]
    pub caching_sha2_password: Option<String>,
    #[serde(default)]
    pub auth_plugin: AuthPlugin,
    #[serde(default)]
    pub consistency: Consistency,
    /// Always take `caching_sha2_password`'s full-authentication path (the
    /// password travels in clear over TLS) instead of the fast path.
    #[serde(default)]
    pub require_full_auth: bool,
    /// The backend account this user's sessions log in with on the master
    /// (and the replicas, unless `replica_user` is set); default: the
    /// account of the backend URLs, shared by every user.
    #[serde(default)]
    pub backend_user: Option<String>,
    #[serde(default)]
    pub backend_password: Option<String>,
    /// The backend account on the replicas (e.g. one with SELECT only).
    #[serde(default)]
    pub replica_user: Option<String>,
    #[serde(default)]
    pub replica_password: Option<String>,
}

impl UserConfig {
    /// This user's account on the master, if it has its own.
    pub fn master_account(&self) -> Option<(&str, &str)> {
        let user = self.backend_user.as_deref()?;
        Some((user, self.backend_password.as_deref().unwrap_or("")))
    }

    /// This user's account on the replicas, if it has its own.
    pub fn replica_account(&self) -> Option<(&str, &str)> {
        match self.replica_user.as_deref() {
            Some(u) => Some((u, self.replica_password.as_deref().unwrap_or(""))),
            None => self.master_account(),
        }
    }
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field(
                "mysql_native_password",
                &self.mysql_native_password.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "caching_sha2_password",
                &self.caching_sha2_password.as_ref().map(|_| "<redacted>"),
            )
            .field("auth_plugin", &self.auth_plugin)
            .field("consistency", &self.consistency)
            .field("require_full_auth", &self.require_full_auth)
            .field("backend_user", &self.backend_user)
            .field(
                "backend_password",
                &self.backend_password.as_ref().map(|_| "<redacted>"),
            )
            .field("replica_user", &self.replica_user)
            .field(
                "replica_password",
                &self.replica_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    #[serde(default)]
    pub require: bool,
}

/// A `mysql://user:password@host:port/` URL whose password never prints.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct BackendUrl(pub String);

impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("<redacted>"));
                }
                write!(f, "{:?}", u.as_str())
            }
            Err(_) => f.write_str("\"<unparsable url>\""),
        }
    }
}

/// Where and as whom to reach one backend.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendAddr {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl fmt::Debug for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

impl BackendUrl {
    pub fn parse(&self) -> Result<BackendAddr, String> {
        let u = url::Url::parse(&self.0).map_err(|e| format!("not a URL: {e}"))?;
        if u.scheme() != "mysql" && u.scheme() != "mariadb" {
            return Err(format!("scheme must be mysql://, got {}://", u.scheme()));
        }
        let host = u.host_str().ok_or("URL has no host")?.to_string();
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        Ok(BackendAddr {
            host,
            port: u.port().unwrap_or(3306),
            user: decode(u.username()),
            password: decode(u.password().unwrap_or("")),
        })
    }
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("listen", &self.listen)
            .field("allow", &self.allow)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("default_auth_plugin", &self.default_auth_plugin)
            .field("server_version", &self.server_version)
            .field("master", &self.master)
            .field("replicas", &self.replicas)
            .field("health_interval_ms", &self.health_interval_ms)
            .field("max_replica_lag", &self.max_replica_lag)
            .field("max_allowed_packet", &self.max_allowed_packet)
            .field("max_memory", &self.max_memory)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("health_timeout_ms", &self.health_timeout_ms)
            .field("max_login_failures", &self.max_login_failures)
            .field("login_block_secs", &self.login_block_secs)
            .field("max_prelogin_per_address", &self.max_prelogin_per_address)
            .field("users", &self.users)
            .field("tls", &self.tls)
            .finish()
    }
}

/// One problem found by [`ProxyConfig::validate`], with the field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl ProxyConfig {
    /// Every problem in the section, each with its field path (`proxy.users[1].name`).
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |path: String, message: String| out.push(ConfigProblem { path, message });
        if self.listen.parse::<SocketAddr>().is_err() {
            bad(
                "proxy.listen".into(),
                format!("`{}` is not an ip:port address", self.listen),
            );
        }
        for (i, c) in self.allow.iter().enumerate() {
            if parse_cidr(c).is_none() {
                bad(
                    format!("proxy.allow[{i}]"),
                    format!("`{c}` is not an address or CIDR block"),
                );
            }
        }
        if self.max_connections == 0 {
            bad("proxy.max_connections".into(), "must be at least 1".into());
        }
        if self.idle_timeout_secs == 0 {
            bad("proxy.idle_timeout_secs".into(), "must be at least 1".into());
        }
        if self.health_interval_ms < 10 {
            bad("proxy.health_interval_ms".into(), "must be at least 10".into());
        }
        if self.health_timeout_ms < 10 {
            bad("proxy.health_timeout_ms".into(), "must be at least 10".into());
        }
        if self.connect_timeout_ms < 10 {
            bad("proxy.connect_timeout_ms".into(), "must be at least 10".into());
        }
        if !(1024..=1 << 30).contains(&self.max_allowed_packet) {
            bad(
                "proxy.max_allowed_packet".into(),
                "must be between 1024 and 1073741824 bytes".into(),
            );
        }
        if self.max_memory < self.max_allowed_packet {
            bad(
                "proxy.max_memory".into(),
                format!(
                    "must be at least max_allowed_packet ({})",
                    self.max_allowed_packet
                ),
            );
        }
        if self.max_prelogin_per_address == 0 {
            bad(
                "proxy.max_prelogin_per_address".into(),
                "must be at least 1".into(),
            );
        }
        if self.max_login_failures == 0 {
            bad("proxy.max_login_failures".into(), "must be at least 1".into());
        }
        if let Err(e) = self.master.parse() {
            bad("proxy.master".into(), e);
        }
        if let Some(c) = &self.cache {
            for p in c.validate() {
                bad(p.path, p.message);
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.replicas.iter().enumerate() {
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                bad(
                    format!("proxy.replicas[{i}].name"),
                    "must be non-empty letters, digits, `_`, `-` or `.`".into(),
                );
            } else if !names.insert(r.name.clone()) {
                bad(
                    format!("proxy.replicas[{i}].name"),
                    format!("`{}` is used twice", r.name),
                );
            }
            if let Err(e) = r.url.parse() {
                bad(format!("proxy.replicas[{i}].url"), e);
            }
            if let Some(c) = &r.consumer {
                if c.is_empty() || !c.chars().all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c)) {
                    bad(
                        format!("proxy.replicas[{i}].consumer"),
                        "must be non-empty letters, digits, `_`, `-`, `.` or `/`".into(),
                    );
                }
            }
        }
        if self.users.is_empty() {
            bad(
                "proxy.users".into(),
                "at least one user is needed to log in".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let p = format!("proxy.users[{i}]");
            if u.name.is_empty() {
                bad(format!("{p}.name"), "must not be empty".into());
            } else if !names.insert(u.name.clone()) {
                bad(format!("{p}.name"), format!("`{}` is used twice", u.name));
            }
            if u.mysql_native_password.is_none() && u.caching_sha2_password.is_none() {
                bad(
                    p.clone(),
                    "needs mysql_native_password and/or caching_sha2_password".into(),
                );
            }
            if let Some(h) = &u.mysql_native_password {
                if parse_native_hash(h).is_none() {
                    bad(
                        format!("{p}.mysql_native_password"),
                        "must be `*` and 40 hex digits".into(),
                    );
                }
            }
            if let Some(h) = &u.caching_sha2_password {
                if parse_sha2_hash(h).is_none() {
                    bad(
                        format!("{p}.caching_sha2_password"),
                        "must be 64 hex digits".into(),
                    );
                }
            }
            let has = match u.auth_plugin {
                AuthPlugin::MysqlNativePassword => u.mysql_native_password.is_some(),
                AuthPlugin::CachingSha2Password => u.caching_sha2_password.is_some(),
            };
            if !has {
                bad(
                    format!("{p}.auth_plugin"),
                    format!("{} needs the matching hash", u.auth_plugin.name()),
                );
            }
            for (key, set, user) in [
                (
                    "backend_password",
                    u.backend_password.is_some(),
                    u.backend_user.is_some(),
                ),
                (
                    "replica_password",
                    u.replica_password.is_some(),
                    u.replica_user.is_some(),
                ),
            ] {
                if set && !user {
                    bad(format!("{p}.{key}"), "set without the matching *_user".into());
                }
            }
            for (key, name) in [
                ("backend_user", &u.backend_user),
                ("replica_user", &u.replica_user),
            ] {
                if name.as_deref().is_some_and(|n| n.is_empty() || n.len() > 80) {
                    bad(format!("{p}.{key}"), "must be 1 to 80 characters".into());
                }
            }
            if u.require_full_auth && self.tls.is_none() {
                bad(
                    format!("{p}.require_full_auth"),
                    "full authentication needs [proxy.tls]".into(),
                );
            }
        }
        if let Some(t) = &self.tls {
            if !t.cert.is_file() {
                bad(
                    "proxy.tls.cert".into(),
                    format!("{} is not a readable file", t.cert.display()),
                );
            }
            if !t.key.is_file() {
                bad(
                    "proxy.tls.key".into(),
                    format!("{} is not a readable file", t.key.display()),
                );
            }
        }
        out
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// Parses `10.0.0.0/8`, `::1/128` or a bare address (one host).
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// `*HEX40` → the 20-byte SHA1(SHA1(pw)).
pub fn parse_native_hash(s: &str) -> Option<[u8; 20]> {
    let h = hex::decode(s.strip_prefix('*')?).ok()?;
    h.try_into().ok()
}

/// `HEX64` → the 32-byte SHA256(SHA256(pw)).
pub fn parse_sha2_hash(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// The two stored forms of a password, as config lines.
pub fn hash_password(password: &str) -> (String, String) {
    let native = Sha1::digest(Sha1::digest(password.as_bytes()));
    let sha2 = Sha256::digest(Sha256::digest(password.as_bytes()));
    (format!("*{}", hex::encode_upper(native)), hex::encode(sha2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> &'static str {
        r#"
master = "mysql://dbmux:topsecret@127.0.0.1:13306/"
[[replicas]]
name = "r1"
url = "mysql://dbmux:topsecret@127.0.0.1:13307/"
[[users]]
name = "app"
mysql_native_password = "*D9B2D1C2B0E3E8AD0B8B4C5F3F6B1F43AE2CC3DE"
"#
    }

    #[test]
    fn defaults_and_redaction() {
        let c: ProxyConfig = toml::from_str(sample()).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.allow, default_allow());
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
        assert!(!dbg.contains("D9B2D1"), "{dbg}");
        let with_account: ProxyConfig = toml::from_str(&format!(
            "{}backend_user = \"app_rw\"\nbackend_password = \"hunter2\"\n",
            sample()
        ))
        .unwrap();
        assert!(with_account.validate().is_empty());
        assert!(!format!("{with_account:?}").contains("hunter2"));
        assert_eq!(
            with_account.users[0].master_account(),
            Some(("app_rw", "hunter2"))
        );
        assert_eq!(
            with_account.users[0].replica_account(),
            Some(("app_rw", "hunter2"))
        );
        assert_eq!(c.master.parse().unwrap().password, "topsecret");
    }

    #[test]
    fn replica_position_queries_follow_the_applier_consumer() {
        let c: ProxyConfig = toml::from_str(sample()).unwrap();
        let r = &c.replicas[0];
        assert_eq!(
            r.gtid_queries(),
            [
                "SELECT position FROM dbmux.dbmux_offsets WHERE consumer = 'r1'".to_string(),
                "SELECT @@gtid_slave_pos".to_string()
            ]
        );
        let r = ReplicaConfig {
            consumer: Some("main/r1".into()),
            ..r.clone()
        };
        assert_eq!(
            r.seq_query(),
            "SELECT seq FROM dbmux.dbmux_offsets WHERE consumer = 'main/r1'"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = toml::from_str::<ProxyConfig>(&format!("{}\nlisten_port = 1\n", sample()));
        assert!(e.is_err());
    }

    #[test]
    fn validate_lists_every_problem() {
        let c: ProxyConfig = toml::from_str(
            r#"
listen = "nowhere"
allow = ["10.0.0.0/8", "banana"]
master = "http://x"
max_allowed_packet = 10
max_memory = 5
health_timeout_ms = 0
connect_timeout_ms = 0
max_prelogin_per_address = 0
max_login_failures = 0
[[users]]
name = "a"
mysql_native_password = "nope"
auth_plugin = "caching_sha2_password"
require_full_auth = true
backend_password = "secret-of-a"
replica_user = ""
"#,
        )
        .unwrap();
        let paths: Vec<String> = c.validate().into_iter().map(|p| p.path).collect();
        for want in [
            "proxy.listen",
            "proxy.allow[1]",
            "proxy.master",
            "proxy.users[0].mysql_native_password",
            "proxy.users[0].auth_plugin",
            "proxy.users[0].require_full_auth",
            "proxy.max_allowed_packet",
            "proxy.max_memory",
            "proxy.health_timeout_ms",
            "proxy.connect_timeout_ms",
            "proxy.max_prelogin_per_address",
            "proxy.max_login_failures",
            "proxy.users[0].backend_password",
            "proxy.users[0].replica_user",
        ] {
            assert!(paths.iter().any(|p| p == want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn password_hashes_match_mysql() {
        // MariaDB's PASSWORD('app-password').
        let (native, sha2) = hash_password("app-password");
        assert_eq!(native, "*F142931D9296BB66D4600D47418DBC1475D27D29");
        assert!(parse_native_hash(&native).is_some());
        assert!(parse_sha2_hash(&sha2).is_some());
    }
}
