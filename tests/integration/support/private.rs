//! Test-owned server instances, for tests that must break a server (stop it,
//! misconfigure it) without disturbing the shared services other tests use.

use super::dbmux::free_port;
use super::wait_for;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A MariaDB server of this test's own, in a temporary directory.
pub struct PrivateMariadb {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl PrivateMariadb {
    /// Initializes a data directory and starts `mariadbd` with `extra` options;
    /// creates user `dbmux`/`dbmux-password` with all privileges.
    pub async fn start(extra: &[&str]) -> PrivateMariadb {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // Each server its own tmpdir: a starting MariaDB deletes every
        // `#sql*` file in its tmpdir, other servers' live temporary tables
        // included (a shared /tmp crashed the dev servers and failed
        // bootstraps).
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", dir.path().join("tmp").display()))
            .output()
            .expect("mariadb-install-db (run scripts/services up first)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut m = PrivateMariadb {
            dir,
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        m.launch().await;
        let sql = "CREATE USER 'dbmux'@'%' IDENTIFIED BY 'dbmux-password'; \
                   GRANT ALL ON *.* TO 'dbmux'@'%' WITH GRANT OPTION; CREATE DATABASE app;";
        let out = Command::new("mariadb")
            .arg(format!("--socket={}", m.socket()))
            .args(["-uroot", "-e", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "creating the user: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        m
    }

    fn socket(&self) -> String {
        self.dir.path().join("mysqld.sock").display().to_string()
    }

    async fn launch(&mut self) {
        let d = self.dir.path();
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
            ])
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .arg(format!("--socket={}", self.socket()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .args([
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--skip-log-bin",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        self.child = Some(child);
        let url = format!("mysql://root@127.0.0.1:{}/", self.port);
        let sock = self.socket();
        wait_for(
            "the private MariaDB to accept connections",
            Duration::from_secs(60),
            || {
                let _ = &url;
                let ok = Command::new("mariadb-admin")
                    .arg(format!("--socket={sock}"))
                    .args(["-uroot", "ping"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                async move { ok.then_some(()) }
            },
        )
        .await;
    }

    pub fn url(&self, db: &str) -> String {
        format!("mysql://dbmux:dbmux-password@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server abruptly (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none());
        self.launch().await;
    }
}

impl Drop for PrivateMariadb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis server of this test's own (no automatic persistence; `SAVE`
/// writes a snapshot that a restart loads back), in a temporary directory.
pub struct PrivateRedis {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            child: None,
        };
        r.launch().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // `DEBUG SLEEP`: a Redis that answers slowly.
            .args(["--enable-debug-command", "yes"])
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (run scripts/services up first)");
        self.child = Some(child);
        let port = self.port;
        wait_for(
            "the private Redis to answer",
            Duration::from_secs(20),
            || async move {
                let out = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "ping"])
                    .output()
                    .ok()?;
                (String::from_utf8_lossy(&out.stdout).trim() == "PONG").then_some(())
            },
        )
        .await;
    }

    /// Runs `redis-cli` with `args`; returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// SIGKILL, no chance to save anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Makes the server unresponsive for `secs` (`DEBUG SLEEP`), without
    /// waiting: the returned process ends when the server answers again.
    pub fn freeze(&self, secs: f64) -> Child {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "DEBUG", "SLEEP", &secs.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts again on the same port and directory (loading a snapshot
    /// `SAVE` left there).
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
