//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod compare;
pub mod dbmux;
pub mod kafka;
pub mod observe;
pub mod pg_source;
pub mod private;
pub mod workload;

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn services_env() -> &'static Vec<(String, String)> {
    static ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = repo_root().join(".dev/services.env");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let l = l.trim().trim_start_matches("export ");
                let (k, v) = l.split_once('=')?;
                Some((k.to_string(), v.trim_matches('"').trim_matches('\'').to_string()))
            })
            .collect()
    })
}

/// A setting from the environment, else from `.dev/services.env` (written by
/// `scripts/services up`). Panics with the fix when neither has it: a missing
/// service is a failed test, never a skipped one.
pub fn env(name: &str) -> String {
    if let Ok(v) = std::env::var(name) {
        return v;
    }
    services_env()
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{name} is not set: run `scripts/services up` first"))
}

/// A setting from the environment or `.dev/services.env`, if either has it.
pub fn services_value(name: &str) -> Option<String> {
    std::env::var(name).ok().or_else(|| {
        services_env()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

pub fn mysql_url() -> String {
    env("DBMUX_TEST_MYSQL_URL")
}
pub fn mysql_replica_url() -> String {
    env("DBMUX_TEST_MYSQL_REPLICA_URL")
}
pub fn pg_url() -> String {
    env("DBMUX_TEST_PG_URL")
}
pub fn redis_url() -> String {
    env("DBMUX_TEST_REDIS_URL")
}

/// A unique lower-case name for a per-test database: `<prefix>_<pid>_<n>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000;
    format!("{prefix}_{}_{t}_{n}", std::process::id())
}

/// `url` with its path (database) replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("valid URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
