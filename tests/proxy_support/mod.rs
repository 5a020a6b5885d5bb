//! Shared helpers of the proxy's black-box tests (`tests/proxy.rs`,
//! `tests/proxy_hostile.rs`): the real `dbmux` binary (or the one named by
//! `DBMUX_TEST_BIN`, to run the same tests against another build), real
//! clients, the MariaDB master and replica from `scripts/services up`.
#![allow(dead_code)]

pub use mysql_async::prelude::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Environment: the integration tests' shared helpers.

#[path = "../integration/support/mod.rs"]
pub mod support;

pub use support::{env, unique_name as unique};

pub fn master_url() -> String {
    support::mysql_url()
}
pub fn replica_url() -> String {
    support::mysql_replica_url()
}

/// `mysql://user:pw@host:port/` of a services URL, without its database.
pub fn server_url(url: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_path("/");
    u.to_string()
}

pub async fn direct(url: &str) -> mysql_async::Conn {
    let opts = mysql_async::Opts::from_url(&format!("{}?prefer_socket=false", server_url(url))).unwrap();
    mysql_async::Conn::new(opts).await.unwrap()
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    support::wait_for(what, timeout, || {
        let done = f();
        async move { done.await.then_some(()) }
    })
    .await
}
pub const PASSWORD: &str = "app-password";

// ---------------------------------------------------------------------------
// TLS material

pub struct Tls {
    pub _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A throwaway CA and a server certificate for localhost / 127.0.0.1.
pub fn make_tls() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=dbmux test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    Tls {
        ca: d.join("ca.pem"),
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------
// The proxy under test

pub struct Proxy {
    pub child: Child,
    pub port: u16,
    pub _dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct ProxyOpts<'a> {
    pub listen_host: &'a str,
    pub allow: Vec<&'a str>,
    pub replicas: Vec<(String, String, Option<String>)>,
    pub tls: Option<&'a Tls>,
    /// Extra `key = value` lines for the `[proxy]` table.
    pub extra: &'a str,
    /// `[proxy.tls] require`.
    pub tls_require: bool,
    /// The master URL; default the shared master.
    pub master: Option<String>,
    /// Extra `[[proxy.users]]` tables (after the default users).
    pub users: &'a str,
    /// A command the binary runs under (`["prlimit", "--nofile=64:64", "--"]`).
    pub wrapper: Option<&'a [&'a str]>,
    /// `DBMUX_PROXY_THREADS` (default: the binary's choice).
    pub threads: Option<usize>,
}

impl Default for ProxyOpts<'_> {
    fn default() -> Self {
        ProxyOpts {
            listen_host: "127.0.0.1",
            allow: vec![],
            replicas: vec![("r1".into(), server_url(&replica_url()), None)],
            tls: None,
            extra: "",
            tls_require: false,
            master: None,
            users: "",
            wrapper: None,
            threads: None,
        }
    }
}

/// The binary under test: `DBMUX_TEST_BIN` when set (to run these tests
/// against another build, e.g. the one before a fix), else this build's.
pub fn dbmux_bin() -> String {
    std::env::var("DBMUX_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dbmux").to_string())
}

pub fn hashes() -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .args(["hash-password", PASSWORD])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    (
        lines.next().unwrap().to_string(),
        lines.next().unwrap().to_string(),
    )
}

pub fn start_proxy(o: ProxyOpts<'_>) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let (native, sha2) = hashes();
    let mut cfg = format!(
        "[proxy]\nlisten = \"{}:0\"\nmaster = \"{}\"\n",
        o.listen_host,
        o.master.clone().unwrap_or_else(|| server_url(&master_url()))
    );
    if !o.extra.contains("health_interval_ms") {
        cfg += "health_interval_ms = 50\n";
    }
    if !o.allow.is_empty() {
        cfg += &format!("allow = {:?}\n", o.allow);
    }
    cfg += o.extra;
    for (name, url, q) in &o.replicas {
        cfg += &format!("[[proxy.replicas]]\nname = \"{name}\"\nurl = \"{url}\"\n");
        if let Some(extra) = q {
            cfg += extra;
        }
    }
    for (user, extra) in [
        ("app", ""),
        ("app_sha2", "auth_plugin = \"caching_sha2_password\"\n"),
        ("app_eventual", "consistency = \"eventual\"\n"),
    ] {
        cfg += &format!("[[proxy.users]]\nname = \"{user}\"\n{native}\n{sha2}\n{extra}");
    }
    cfg += &o.users.replace("HASHES", &format!("{native}\n{sha2}"));
    if let Some(t) = o.tls {
        cfg += &format!(
            "[[proxy.users]]\nname = \"app_full\"\n{native}\n{sha2}\nauth_plugin = \"caching_sha2_password\"\nrequire_full_auth = true\n"
        );
        cfg += &format!(
            "[proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\nrequire = {}\n",
            t.cert.display(),
            t.key.display(),
            o.tls_require
        );
    }
    let path = dir.path().join("dbmux.toml");
    std::fs::write(&path, cfg).unwrap();
    let log = dir.path().join("proxy.log");
    let mut cmd = match o.wrapper {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(dbmux_bin());
            c
        }
        None => Command::new(dbmux_bin()),
    };
    if let Some(n) = o.threads {
        cmd.env("DBMUX_PROXY_THREADS", n.to_string());
    }
    let mut child = cmd
        .args(["proxy", "--config"])
        .arg(&path)
        .env("DBMUX_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Port 0: the proxy prints the address it got, so parallel tests never collide.
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let mut p = Proxy {
        child,
        port: 0,
        _dir: dir,
        log,
    };
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("proxy did not start ({line:?}): {}", p.log_text()));
    p.port = port;
    p
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn url(&self, user: &str, db: &str) -> String {
        format!(
            "mysql://{user}:{PASSWORD}@127.0.0.1:{}/{db}?prefer_socket=false",
            self.port
        )
    }
    pub async fn conn(&self, user: &str, db: &str) -> mysql_async::Conn {
        mysql_async::Conn::new(mysql_async::Opts::from_url(&self.url(user, db)).unwrap())
            .await
            .unwrap()
    }
    pub async fn tls_conn(&self, user: &str, db: &str, tls: &Tls) -> mysql_async::Conn {
        let ssl = mysql_async::SslOpts::default().with_root_certs(vec![tls.ca.clone().into()]);
        let opts =
            mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&self.url(user, db)).unwrap())
                .ssl_opts(ssl);
        mysql_async::Conn::new(opts).await.unwrap()
    }
    /// Runs the `mariadb` client; returns (success, stdout, stderr).
    pub fn cli(&self, user: &str, password: &str, extra: &[&str], sql: &str) -> (bool, String, String) {
        let out = Command::new(env("DBMUX_TEST_MYSQL_CLIENT"))
            .args([
                "--no-defaults",
                "-h127.0.0.1",
                &format!("-P{}", self.port),
                &format!("-u{user}"),
            ])
            .arg(format!("-p{password}"))
            .args(["--batch", "--skip-column-names"])
            .args(extra)
            .args(["-e", sql])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

pub async fn server_id(c: &mut mysql_async::Conn) -> u32 {
    c.query_first("SELECT @@server_id").await.unwrap().unwrap()
}

/// A fresh database on the master and the replica, with table `t`.
pub async fn fresh_db(prefix: &str) -> TestDb {
    let db = unique(prefix);
    for url in [master_url(), replica_url()] {
        let mut c = direct(&url).await;
        c.query_drop(format!("CREATE DATABASE {db}")).await.unwrap();
        c.query_drop(format!(
            "CREATE TABLE {db}.t (id INT PRIMARY KEY, v VARCHAR(64), b LONGBLOB)"
        ))
        .await
        .unwrap();
    }
    TestDb(db)
}

/// A per-test database on the master and the replica, dropped (with its
/// offsets row, if a test made one) when the test ends.
pub struct TestDb(pub String);

impl std::ops::Deref for TestDb {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl std::fmt::Display for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!(
            "DROP DATABASE IF EXISTS {0}; DELETE FROM dbmux.dbmux_offsets WHERE consumer = 'pxy/{0}'",
            self.0
        );
        for url in [master_url(), replica_url()] {
            let u = url::Url::parse(&url).unwrap();
            let _ = Command::new(env("DBMUX_TEST_MYSQL_CLIENT"))
                .args([
                    "--no-defaults",
                    "--force",
                    "-h",
                    u.host_str().unwrap_or("127.0.0.1"),
                ])
                .arg(format!("-P{}", u.port().unwrap_or(3306)))
                .arg(format!("-u{}", u.username()))
                .arg(format!("-p{}", u.password().unwrap_or("")))
                .args(["-e", &sql])
                .output();
        }
    }
}
