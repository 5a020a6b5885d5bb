//! Running the real `dbmux` binary in tests.

use super::{mysql_replica_url, mysql_url, pg_url, wait_for, with_db};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback TCP port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        let dir = tempfile::tempdir().unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let mut toml = format!(
            r#"name = "{db}"
data_dir = "{data}"

[log]
fsync = "always"
# Tests read the whole history back with `dbmux tail`.
truncate = false

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
            .env("DBMUX_LOG", "info")
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
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.admin).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
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
