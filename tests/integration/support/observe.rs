//! Helpers for the observability tests: a test-owned Prometheus, plain HTTP
//! GETs, the node checks in `tests/web`, and traffic through the proxy.

use super::{repo_root, wait_for};
use mysql_async::prelude::Queryable;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `GET path` on `addr` (HTTP/1.0, so the body ends at close): status and body.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// `tests/web`, with its npm packages installed (`scripts/test` runs `npm ci` there).
pub fn web_dir() -> PathBuf {
    let dir = repo_root().join("tests/web");
    assert!(
        dir.join("node_modules/playwright-core").exists() && dir.join("node_modules/typescript").exists(),
        "tests/web/node_modules is missing: run `npm ci --prefix tests/web` (scripts/test does)"
    );
    dir
}

/// Runs `node SCRIPT ARGS` in `tests/web`; returns stdout, panics with both
/// outputs when it fails.
pub fn node(script: &str, args: &[&str]) -> String {
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(web_dir())
        .output()
        .expect("run node (Node.js is on the machine)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "node {script} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Where tests leave screenshots: `$DBMUX_SCREENSHOT_DIR`, else `target/screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("DBMUX_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Prometheus (Debian's `prometheus`) of the test's own, on a free port,
/// scraping one target every second and evaluating `rule_files`.
pub struct Prometheus {
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: &str, rule_files: &[&Path]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", super::dbmux::free_port());
        let rules: String = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rules}\
             scrape_configs:\n  - job_name: dbmux\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus (Debian package `prometheus`, installed by scripts/services)");
        Prometheus { addr, child, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/...` as JSON; `None` while Prometheus is not up.
    pub async fn api(&self, path_and_query: &str) -> Option<serde_json::Value> {
        let (status, body) = http_get(&self.addr, path_and_query).await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200 || status == 400 || status == 422).then_some(v)
    }

    /// An instant query: `Ok(result array)` or `Err(error text)` (a query
    /// that does not parse or fails to evaluate).
    pub async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let q: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let v = self
            .api(&format!("/api/v1/query?query={q}"))
            .await
            .ok_or("no answer from Prometheus")?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls until the target was scraped successfully (the first sample is
    /// visible to PromQL some seconds after start).
    pub async fn wait_scraping(&self) {
        wait_for("Prometheus to scrape dbmux", Duration::from_secs(60), || async {
            let r = self.query("up{job=\"dbmux\"} == 1").await.ok()?;
            (!r.is_empty()).then_some(())
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", self.log());
        }
    }
}

/// The `[proxy]` section for a test: the master, the MariaDB replica fed by
/// the pipeline, users `app` (read-your-writes) and `eventual`, password
/// `app-password`. Reads of `eventual` go to the replica however far behind
/// it is (`max_replica_lag`), so a loaded test machine still shows both routes.
/// The Redis result cache is on for every table, so its metrics and dashboard
/// panels have data.
pub fn proxy_section(port: u16) -> String {
    let hashes = "mysql_native_password = \"*F142931D9296BB66D4600D47418DBC1475D27D29\"\n\
                  caching_sha2_password = \"6681bbfe12153c1b4a0268cf4733a0a3021ff47751fafc3c0a4bdae5a0a89db6\"\n";
    format!(
        "\n[proxy]\nlisten = \"127.0.0.1:{port}\"\nmaster = \"{}\"\nhealth_interval_ms = 200\nmax_replica_lag = 100000000\n\
         [[proxy.replicas]]\nname = \"mariadb\"\nurl = \"{}\"\n\
         [[proxy.users]]\nname = \"app\"\n{hashes}\
         [[proxy.users]]\nname = \"eventual\"\nconsistency = \"eventual\"\n{hashes}\
         [proxy.cache]\nredis = \"{}\"\ntables = [\"*.*\"]\nkey_prefix = \"dbmux-observe-{port}\"\n",
        super::with_db(&super::mysql_url(), ""),
        super::with_db(&super::mysql_replica_url(), ""),
        super::redis_url()
    )
}

/// Clients through the proxy until `stop`: writes and reads-after-write as
/// `app`, plain and prepared reads as `eventual` (served by the replica),
/// session settings, pings, and a statement that fails. Returns the number
/// of statements sent.
pub async fn proxy_traffic(port: u16, db: String, stop: Arc<AtomicBool>) -> u64 {
    let url = |user: &str| format!("mysql://{user}:app-password@127.0.0.1:{port}/{db}?prefer_socket=false");
    let mut app = mysql_async::Conn::from_url(url("app")).await.unwrap();
    let mut eventual = mysql_async::Conn::from_url(url("eventual")).await.unwrap();
    app.query_drop("CREATE TABLE IF NOT EXISTS proxy_kv (k INT PRIMARY KEY, v INT NOT NULL)")
        .await
        .unwrap();
    app.exec_drop(
        "INSERT INTO proxy_kv VALUES (0, 0) ON DUPLICATE KEY UPDATE v = v",
        (),
    )
    .await
    .unwrap();
    // Tables reach the replica with their first row (DDL is not captured):
    // wait until the replica has it before reading there.
    wait_for("proxy_kv on the replica", Duration::from_secs(120), || {
        let url = super::with_db(&super::mysql_replica_url(), &db);
        async move {
            let mut c = mysql_async::Conn::from_url(url).await.ok()?;
            let r: Result<Option<i64>, _> = c.query_first("SELECT COUNT(*) FROM proxy_kv").await;
            let _ = c.disconnect().await;
            r.ok().flatten()
        }
    })
    .await;
    let mut sent = 0u64;
    let mut k = 0i32;
    while !stop.load(Ordering::SeqCst) {
        k += 1;
        app.exec_drop(
            "INSERT INTO proxy_kv VALUES (?, ?) ON DUPLICATE KEY UPDATE v = v + 1",
            (k % 50, k),
        )
        .await
        .unwrap();
        let _: Option<i32> = app
            .exec_first("SELECT v FROM proxy_kv WHERE k = ?", (k % 50,))
            .await
            .unwrap();
        let _: Option<i64> = eventual
            .query_first("SELECT COUNT(*) FROM proxy_kv")
            .await
            .unwrap();
        let _: Option<i32> = eventual
            .exec_first("SELECT v FROM proxy_kv WHERE k = ?", (k % 7,))
            .await
            .unwrap();
        // A session setting (replayed on every backend connection; a user
        // variable would pin the session to the master).
        eventual.query_drop("SET NAMES utf8mb4").await.unwrap();
        eventual.ping().await.unwrap();
        // An error the server returns: counted with outcome "error".
        assert!(eventual
            .query_drop("SELECT no_such_column FROM proxy_kv")
            .await
            .is_err());
        sent += 7;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.disconnect().await.unwrap();
    eventual.disconnect().await.unwrap();
    sent
}
