//! `dbmux proxy --config FILE` (the proxy alone, as its own process) and
//! `dbmux hash-password`.
//!
//! The proxy needs only the `[proxy]` table of the file. When the whole file
//! is a valid pipeline configuration, it also learns from it which offsets
//! row each pipeline replica's applier writes (`<name>/<replica>`, as in
//! `dbmux run`) and, with the Kafka log, follows the log's newest `seq` for
//! replica lag. Read-your-writes never depends on that: it compares the
//! session's last write (a GTID) with what each replica's applier stored in
//! `dbmux_offsets` in the same transaction as the data, so it holds with the
//! appliers in other processes on other hosts.

use connectors::proxy::{config::ProxyConfig, Proxy};
use std::path::Path;
use std::process::ExitCode;

/// Loads `[proxy]` from a TOML file, listing every problem.
pub fn load(path: &Path) -> Result<ProxyConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let section = doc
        .remove("proxy")
        .ok_or_else(|| format!("{}: no [proxy] section", path.display()))?;
    let cfg: ProxyConfig = section
        .try_into()
        .map_err(|e| format!("{}: [proxy]: {e}", path.display()))?;
    let problems = cfg.validate();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        return Err(format!(
            "{}: invalid configuration:\n{}",
            path.display(),
            list.join("\n")
        ));
    }
    Ok(cfg)
}

/// Runs the proxy until SIGINT/SIGTERM.
pub fn run(path: &Path) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // DBMUX_PROXY_THREADS: worker threads. 1 runs the proxy on a
    // single-threaded runtime, which avoids cross-thread wake-ups (futex
    // calls, tasks moved between workers). Default: one thread on machines
    // with at most 2 cores, where the proxy shares the CPUs with its clients
    // and servers (on the 2-core dev machine: ~13% fewer instructions and
    // less CPU time per prepared point select), one per core above that.
    let threads: usize = std::env::var("DBMUX_PROXY_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(default_threads);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        // As `dbmux run`'s runtime: a margin above the bounded parse.
        b.thread_stack_size(8 << 20);
        if threads > 1 {
            b.worker_threads(threads);
        }
        b.enable_all().build()
    }
    .expect("tokio runtime");
    rt.block_on(async move {
        let mut cfg = cfg;
        let (latest_rx, _log) = pipeline_head(path, &mut cfg).await;
        let proxy = match Proxy::new(cfg, latest_rx, None).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let listener = match proxy.bind().await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %addr, "proxy listening");
        // One line on stdout for scripts and tests (the port when listen = ":0").
        println!("dbmux proxy listening on {addr}");
        proxy.run(listener, shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// With a whole pipeline configuration in the file: name the appliers'
/// offsets rows like `dbmux run` does, and follow the Kafka log's head (the
/// log handle is returned to keep it alive). Otherwise the head is unknown (0).
async fn pipeline_head(
    path: &Path,
    cfg: &mut ProxyConfig,
) -> (tokio::sync::watch::Receiver<u64>, Option<crate::log::AnyLog>) {
    let unknown = || tokio::sync::watch::channel(0u64).1;
    let Ok(full) = crate::config::Config::load(path) else {
        return (unknown(), None);
    };
    for r in &mut cfg.replicas {
        if r.consumer.is_none() && full.replicas.iter().any(|p| p.name == r.name) {
            r.consumer = Some(format!("{}/{}", full.name, r.name));
        }
    }
    if full.log.kind != "kafka" {
        return (unknown(), None);
    }
    match crate::log::AnyLog::open(&full, crate::log::Role::Follow).await {
        Ok(log) => {
            use pipeline::log::Log;
            (log.subscribe(), Some(log))
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot follow the Kafka log; replica lag is unknown");
            (unknown(), None)
        }
    }
}

/// Worker threads when `DBMUX_PROXY_THREADS` is not set: 1 on machines with
/// at most 2 cores, else 0 (tokio's default: one per core).
fn default_threads() -> usize {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() <= 2 => 1,
        _ => 0,
    }
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Prints the two stored forms of a password (from the argument or stdin).
pub fn hash_password(password: Option<String>) -> ExitCode {
    let pw = match password {
        Some(p) => p,
        None => {
            let mut s = String::new();
            if std::io::stdin().read_line(&mut s).is_err() {
                eprintln!("cannot read the password from stdin");
                return ExitCode::FAILURE;
            }
            s.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    let (native, sha2) = connectors::proxy::config::hash_password(&pw);
    println!("mysql_native_password = \"{native}\"");
    println!("caching_sha2_password = \"{sha2}\"");
    ExitCode::SUCCESS
}
