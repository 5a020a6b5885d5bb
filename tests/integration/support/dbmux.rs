//! Running the real `dbmux` binary in tests.

use super::{env, mysql_replica_url, mysql_url, pg_url, wait_for, with_db};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback TCP port for a server a test starts later (Kafka, a
/// private MariaDB, dbmux's listeners).
///
/// Chosen *below* the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), not with `bind(0)`: a port from that
/// range is also what the kernel hands every outgoing connection, so in the
/// seconds between picking it and a JVM binding it, a client socket of any
/// process could take it (CI: a Kafka node failed with "Address already in
/// use" and the cluster never formed). Below the range only explicit binds
/// compete. Each call in this process takes the next port from a start
/// that depends on the process id, and skips ports something already holds.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // From 20000 (above the dev services' fixed ports, 13306 to 19197, which
    // a test may stop and start again) up to the ephemeral range; if a
    // machine's range starts too low for that, the ports below it.
    let (low, high) = if ephemeral_low >= 24_000 {
        (20_000, ephemeral_low)
    } else {
        (1_100, ephemeral_low.max(2_100))
    };
    let span = high - low;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = low + (start + NEXT.fetch_add(1, Ordering::SeqCst)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// A binlog dump `server_id` unique to this test process and call: MariaDB
/// disconnects an older dump connection when a new one uses the same id.
pub fn unique_server_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    1000 + (std::process::id() % 10_000) * 100 + N.fetch_add(1, Ordering::SeqCst) % 100
}

/// Which replicas a test wants.
#[derive(Clone, Copy)]
pub struct Replicas {
    pub mariadb: bool,
    pub postgres: bool,
}

pub const BOTH: Replicas = Replicas {
    mariadb: true,
    postgres: true,
};

/// Which log a test's dbmux uses: the same test bodies run with either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    Embedded,
    /// The shared broker (`DBMUX_TEST_KAFKA_BROKERS`), a topic per test.
    Kafka,
}

/// The `[log]` section of a test configuration. Kafka topics are named after
/// the test database, so tests never share one.
pub fn log_section(kind: LogKind, db: &str, brokers: &str) -> String {
    match kind {
        LogKind::Embedded => "[log]\nfsync = \"always\"\n# Tests read the whole history back with `dbmux tail`.\ntruncate = false\n".into(),
        LogKind::Kafka => format!(
            "[log]\nkind = \"kafka\"\n[log.kafka]\nbrokers = \"{brokers}\"\ntopic = \"dbmux-test.{db}\"\n\
             transaction_timeout_ms = 5000\n"
        ),
    }
}

pub fn kafka_brokers() -> String {
    env("DBMUX_TEST_KAFKA_BROKERS")
}

/// A dbmux configuration for one test database, and the process running it.
pub struct Dbmux {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub admin: String,
    pub db: String,
    child: Option<Child>,
    starts: u32,
}

impl Dbmux {
    /// Writes a config replicating database `db` of the test master to the
    /// test replicas. `extra` is appended to the file verbatim.
    pub fn new(db: &str, replicas: Replicas, extra: &str) -> Dbmux {
        Self::with_log(db, replicas, extra, LogKind::Embedded)
    }

    /// As [`Dbmux::new`], with the given log.
    pub fn with_log(db: &str, replicas: Replicas, extra: &str, kind: LogKind) -> Dbmux {
        let brokers = if kind == LogKind::Kafka {
            kafka_brokers()
        } else {
            String::new()
        };
        Self::with_log_section(db, replicas, extra, &log_section(kind, db, &brokers))
    }

    /// As [`Dbmux::new`], with `log` as the `[log]` section (and its subsections).
    pub fn with_log_section(db: &str, replicas: Replicas, extra: &str, log: &str) -> Dbmux {
        let dir = tempfile::tempdir().unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let mut toml = format!(
            r#"name = "{db}"
data_dir = "{data}"

{log}
[admin]
listen = "{admin}"

[source.mysql]
url = "{master}"
server_id = {sid}
include = ["{db}"]
"#,
            data = dir.path().join("data").display(),
            master = with_db(&mysql_url(), db),
            sid = unique_server_id(),
        );
        if replicas.mariadb {
            toml.push_str(&format!(
                "\n[[replica]]\nname = \"mariadb\"\n[replica.mysql]\nurl = \"{}\"\n",
                with_db(&mysql_replica_url(), "")
            ));
        }
        if replicas.postgres {
            toml.push_str(&format!(
                "\n[[replica]]\nname = \"postgres\"\n[replica.postgres]\nurl = \"{}\"\n",
                pg_url()
            ));
        }
        if !extra.contains("[snapshot]") {
            // Tests that create tables before dbmux starts count events
            // exactly; the ones about snapshots say `[snapshot]` themselves.
            toml.push_str("\n[snapshot]\ninitial = false\n");
        }
        toml.push_str(extra);
        let config = dir.path().join("dbmux.toml");
        std::fs::write(&config, toml).unwrap();
        Dbmux {
            dir,
            config,
            admin,
            db: db.to_string(),
            child: None,
            starts: 0,
        }
    }

    /// A config capturing PostgreSQL database `db` (all of schema `public`)
    /// through slot and publication `db`, into MariaDB replica database `db`
    /// and PostgreSQL replica schema `db`.
    pub fn with_pg_source(db: &str, replicas: Replicas, extra: &str) -> Dbmux {
        Self::with_pg_source_log(db, replicas, extra, LogKind::Embedded)
    }

    /// As [`Dbmux::with_pg_source`], with the given log.
    pub fn with_pg_source_log(db: &str, replicas: Replicas, extra: &str, kind: LogKind) -> Dbmux {
        let dir = tempfile::tempdir().unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let brokers = if kind == LogKind::Kafka {
            kafka_brokers()
        } else {
            String::new()
        };
        let mut toml = format!(
            r#"name = "{db}"
data_dir = "{data}"

{log}
[admin]
listen = "{admin}"

[source.postgres]
url = "{source}"
slot = "{db}"
publication = "{db}"
include = ["public"]
status_interval_secs = 1
"#,
            data = dir.path().join("data").display(),
            source = with_db(&pg_url(), db),
            log = log_section(kind, db, &brokers),
        );
        if replicas.mariadb {
            toml.push_str(&format!(
                "\n[[replica]]\nname = \"mariadb\"\n[replica.mysql]\nurl = \"{}\"\ndatabases = {{ public = \"{db}\" }}\n",
                with_db(&mysql_replica_url(), "")
            ));
        }
        if replicas.postgres {
            toml.push_str(&format!(
                "\n[[replica]]\nname = \"postgres\"\n[replica.postgres]\nurl = \"{}\"\nschema = \"{db}\"\n",
                pg_url()
            ));
        }
        if !extra.contains("[snapshot]") {
            // As for a MySQL source: tests that create tables before dbmux
            // starts count events exactly.
            toml.push_str("\n[snapshot]\ninitial = false\n");
        }
        toml.push_str(extra);
        let config = dir.path().join("dbmux.toml");
        std::fs::write(&config, toml).unwrap();
        Dbmux {
            dir,
            config,
            admin,
            db: db.to_string(),
            child: None,
            starts: 0,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("dbmux.log")
    }

    /// Starts `dbmux run` (stdout and stderr appended to `dbmux.log`).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dbmux"))
            .args(["run", "--config"])
            .arg(&self.config)
            // DBMUX_TEST_LOG (e.g. `info,connectors::proxy::cache=debug`) to see more.
            .env(
                "DBMUX_LOG",
                std::env::var("DBMUX_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn dbmux");
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        c.wait().unwrap()
    }

    /// Whether the process exited, and how.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = wait_for("dbmux to exit", timeout, || {
            let s = self.child.as_mut().and_then(|c| c.try_wait().unwrap());
            async move { s }
        })
        .await;
        self.child = None;
        status
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `GET path` on the admin server; `None` while it is not up.
    pub async fn admin_get(&self, path: &str) -> Option<String> {
        admin_get(&self.admin, path).await
    }

    /// A separate `dbmux <args…>` process on this configuration (`capture`,
    /// `apply --replica NAME`, `proxy`), with its own admin address.
    pub fn part(&self, label: &str, args: &[&str]) -> Part {
        Part {
            label: label.to_string(),
            config: self.config.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
            admin: format!("127.0.0.1:{}", free_port()),
            log: self.dir.path().join(format!("{label}.log")),
            child: None,
            starts: 0,
        }
    }

    /// `/status` as JSON.
    pub async fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.admin_get("/status").await?).ok()
    }

    /// Waits until capture streams from the master: on a first start capture
    /// begins at the binlog's end as of that moment, so a test must not write
    /// before this.
    pub async fn wait_capturing(&self) {
        wait_for(
            "capture to stream from the master",
            Duration::from_secs(60),
            || async {
                let st = self.status().await?;
                (st["capture"]["connected"].as_bool() == Some(true)).then_some(())
            },
        )
        .await
    }

    /// Waits until the log holds at least `min_seq` and every replica applied all of it.
    pub async fn wait_caught_up(&mut self, min_seq: u64, timeout: Duration) -> u64 {
        let me = &*self;
        wait_for(
            &format!("replicas to apply seq {min_seq}"),
            timeout,
            || async move {
                let st = me.status().await?;
                let last = st["log"]["last_seq"].as_u64()?;
                if last < min_seq {
                    return None;
                }
                let reps = st["replicas"].as_object()?;
                reps.values()
                    .all(|r| r["applied_seq"].as_u64() == Some(last))
                    .then_some(last)
            },
        )
        .await
    }

    /// Runs `dbmux tail` against this config and returns the envelopes.
    pub fn tail(&self, from: Option<u64>) -> Vec<serde_json::Value> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbmux"));
        cmd.args(["tail", "--config"]).arg(&self.config);
        if let Some(f) = from {
            cmd.args(["--from", &f.to_string()]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "tail failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dbmux {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- dbmux output ({} starts) ----\n{}",
                self.starts,
                self.output()
            );
        }
    }
}

/// `GET path` on an admin server; `None` while it is not up or not 200.
pub async fn admin_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

/// One process of a split deployment (`dbmux capture`, `dbmux apply …`).
pub struct Part {
    pub label: String,
    pub admin: String,
    config: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Part {
    /// Starts the process (output appended to `<label>.log`), with extra
    /// environment variables.
    pub fn start_with_env(&mut self, vars: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{} already running", self.label);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbmux"));
        cmd.args(&self.args)
            .arg("--config")
            .arg(&self.config)
            .env("DBMUX_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if self.args.first().map(String::as_str) != Some("proxy") {
            cmd.args(["--admin", &self.admin]);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn dbmux"));
        self.starts += 1;
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        c.wait().unwrap()
    }

    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut().and_then(|c| c.try_wait().unwrap());
        if status.is_some() {
            self.child = None;
        }
        status
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let label = self.label.clone();
        let status = wait_for(&format!("{label} to exit"), timeout, || {
            let s = self.child.as_mut().and_then(|c| c.try_wait().unwrap());
            async move { s }
        })
        .await;
        self.child = None;
        status
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&admin_get(&self.admin, "/status").await?).ok()
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} output ({} starts) ----\n{}",
                self.label,
                self.starts,
                self.output()
            );
        }
    }
}
