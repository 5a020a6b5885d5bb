//! `dbmux run`, `dbmux capture`, `dbmux apply`: wire capture, the log,
//! appliers, the proxy and the admin server into tasks and stop them all
//! together. `run` runs every part in one process (either log); `capture`
//! and `apply --replica NAME` run one part each, as separate processes on
//! separate hosts with the Kafka log between them.
//!
//! Any task that stops with an error stops the process (after the others shut
//! down cleanly), with a non-zero exit: a pipeline that cannot go on says so
//! loudly instead of limping. Transient errors never reach here; the tasks
//! retry them with backoff.

use crate::config::{redact_url, Config};
use crate::log::{AnyLog, Role};
use anyhow::Context;
use pipeline::log::{FsyncPolicy, Log};
use pipeline::metrics::PipelineMetrics;
use pipeline::replica::ReplicaBoard;
use pipeline::runtime::{self, ApplyOptions, CaptureOptions, ResumeRequest, RuntimeError};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// One line per part, secrets redacted (for `check-config` and the start-up log).
pub fn describe(c: &Config) -> String {
    let mut s = format!("name: {}\ndata_dir: {}\n", c.name, c.data_dir.display());
    match c.log.kind.as_str() {
        #[cfg(feature = "kafka")]
        "kafka" => {
            if let Some(k) = &c.kafka {
                s.push_str(&format!(
                    "log: kafka {} topic={}{}\n",
                    k.brokers,
                    k.log_topic(&c.name),
                    if k.change_events.enabled {
                        format!(", change events on {}", k.change_events.topic)
                    } else {
                        String::new()
                    }
                ));
            }
        }
        _ => s.push_str(&format!("log: embedded, fsync={}\n", c.log.fsync)),
    }
    if let Some(source) = &c.source {
        s.push_str(&format!("source: {}\n", source.describe()));
        s.push_str(&format!(
            "snapshot: initial={} chunk_rows={} parallel_tables={}{}\n",
            c.snapshot.initial,
            c.snapshot.chunk_rows,
            c.snapshot.parallel_tables,
            match source {
                crate::config::SourceConfig::Mysql(_) => "",
                // docs/snapshot.md: the initial copy reads the slot's exported
                // snapshot, later ones a temporary slot's per chunk.
                crate::config::SourceConfig::Postgres(_) =>
                    " (initial copy through the slot's exported snapshot)",
            }
        ));
    }
    for r in &c.replicas {
        let url = r.kind.describe();
        s.push_str(&format!("replica {}: {url}\n", r.name));
    }
    if !c.admin.listen.is_empty() {
        s.push_str(&format!("admin: http://{}\n", c.admin.listen));
    }
    #[cfg(feature = "proxy")]
    if let Some(p) = &c.proxy {
        s.push_str(&format!(
            "proxy: {} → master {}",
            p.listen,
            redact_url(&p.master.0)
        ));
        for r in &p.replicas {
            s.push_str(&format!(", replica {} {}", r.name, redact_url(&r.url.0)));
        }
        s.push('\n');
        if let Some(c) = p.cache.as_ref().filter(|c| c.enabled) {
            s.push_str(&format!(
                "cache: {} tables {} ttl {}s{}\n",
                redact_url(&c.redis),
                c.tables.join(","),
                c.ttl_secs,
                if c.invalidator {
                    ", invalidator in this process"
                } else {
                    ""
                }
            ));
        }
    }
    s
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => info!("interrupted; shutting down"),
        _ = term.recv() => info!("terminated; shutting down"),
        _ = token.cancelled() => {}
    }
    token.cancel();
}

/// Which replicas a process applies to.
#[derive(Debug, Clone)]
pub enum Appliers {
    All,
    One(String),
    None,
}

/// Which parts a process runs.
#[derive(Debug, Clone)]
pub struct Parts {
    pub capture: bool,
    pub appliers: Appliers,
    pub proxy: bool,
    /// The cache invalidator, when `[proxy.cache]` is enabled with
    /// `invalidator = true` (`dbmux invalidate` forces it on).
    pub invalidate: bool,
}

impl Parts {
    /// `dbmux run`: everything configured.
    pub const ALL: Parts = Parts {
        capture: true,
        appliers: Appliers::All,
        proxy: true,
        invalidate: true,
    };
}

pub async fn run(mut cfg: Config, parts: Parts) -> anyhow::Result<()> {
    for line in describe(&cfg).lines() {
        info!("{line}");
    }
    let all_replicas: Vec<String> = cfg.replicas.iter().map(|r| r.name.clone()).collect();
    match &parts.appliers {
        Appliers::All => {}
        Appliers::One(name) => {
            if !cfg.replicas.iter().any(|r| &r.name == name) {
                let known: Vec<&str> = cfg.replicas.iter().map(|r| r.name.as_str()).collect();
                anyhow::bail!("no [[replica]] named {name:?} (configured: {})", known.join(", "));
            }
            cfg.replicas.retain(|r| &r.name == name);
        }
        Appliers::None => cfg.replicas.clear(),
    }
    // The capture's table filter as configured now: the appliers skip events of
    // tables excluded after they reached the log (also in `dbmux apply`, which
    // does not capture).
    let filter = match &cfg.source {
        Some(s) => s
            .filter()
            .map_err(anyhow::Error::msg)
            .context("the table filter")?,
        None => pipeline::filter::TableFilter::all(),
    };
    if !parts.capture {
        cfg.source = None;
    } else if cfg.source.is_none() && matches!(parts.appliers, Appliers::None) {
        anyhow::bail!("dbmux capture: the configuration has no source ([source.mysql] or [source.postgres])");
    }
    let role = if cfg.source.is_some() {
        Role::Capture
    } else {
        Role::Follow
    };
    let log = AnyLog::open(&cfg, role).await?;
    let policy = cfg.log.policy();
    info!(last_seq = log.last_seq(), "log opened");

    // The process's one metrics registry: the pipeline, the proxy, and
    // whatever part comes next register here.
    let mut registry = Registry::default();
    let metrics = PipelineMetrics::new(&mut registry);
    pipeline::metrics::register_build_info(&mut registry, env!("CARGO_PKG_VERSION"));
    // From the start, not only after this process's first append: after a restart the gauge would read 0.
    metrics.log_last_seq.set(log.last_seq());
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));

    let mut tasks: JoinSet<(String, Result<(), RuntimeError>)> = JoinSet::new();
    let replica_names: Vec<String> = cfg.replicas.iter().map(|r| r.name.clone()).collect();
    for name in &replica_names {
        metrics.init_replica(name);
    }
    #[allow(unused_mut)]
    let mut backlog: Option<crate::observe::Backlog> = None;
    // Every replica's state, for /status, /metrics and truncation.
    let replica_board = ReplicaBoard::new(&replica_names);
    // Resume requests for quarantined tables, per replica (from the admin server).
    let mut resume: HashMap<String, tokio::sync::mpsc::Sender<ResumeRequest>> = HashMap::new();

    // Snapshot progress (for /status, the metrics and the progress display)
    // and the admin server's way to wake the coordinator on a request.
    let snapshot_board = pipeline::snapshot::SnapshotBoard::default();
    let snapshot_wake = Arc::new(tokio::sync::Notify::new());
    let mut snapshot_running = false;
    if let Some(source_config) = &cfg.source {
        // (A proxy-only configuration has no source and no replicas.)
        let source = crate::source::build(source_config).context("configuring capture")?;
        let options = pipeline::snapshot::SnapshotOptions {
            chunk_rows: cfg.snapshot.chunk_rows,
            parallel_tables: cfg.snapshot.parallel_tables,
            initial: cfg.snapshot.initial,
            // Every configured replica, also when this process
            // (`dbmux capture`) applies to none: requests are kept per
            // replica.
            replicas: all_replicas.clone(),
            poll: Duration::from_secs(2),
        };
        let snapshots = match source_config {
            crate::config::SourceConfig::Mysql(m) => {
                backlog = connectors::mysql::backlog::BinlogBacklog::new(&m.url)
                    .ok()
                    .map(crate::observe::Backlog::Mysql);
                snapshot_running = true;
                crate::source::AnySnapshots::Mysql(pipeline::snapshot::Snapshots {
                    source: connectors::mysql::snapshot::MysqlSnapshots::new(m)
                        .context("configuring snapshots")?,
                    options,
                    board: snapshot_board.clone(),
                    wake: snapshot_wake.clone(),
                })
            }
            crate::config::SourceConfig::Postgres(p) => {
                // The initial snapshot through the slot's exported snapshot,
                // later ones through a temporary slot per chunk.
                snapshot_running = true;
                let crate::source::AnySource::Postgres(pg) = &source else {
                    unreachable!("built from the same configuration")
                };
                crate::source::AnySnapshots::Postgres(pipeline::snapshot::Snapshots {
                    source: connectors::postgres::snapshot::PostgresSnapshots::new(p, pg.snapshot_export())
                        .context("configuring snapshots")?,
                    options,
                    board: snapshot_board.clone(),
                    wake: snapshot_wake.clone(),
                })
            }
        };
        let (log, metrics, sd) = (log.clone(), metrics.clone(), shutdown.clone());
        tasks.spawn(async move {
            let options = CaptureOptions::default();
            (
                "capture".into(),
                match snapshots {
                    crate::source::AnySnapshots::Mysql(s) => {
                        runtime::run_capture_with(source, Some(s), log, metrics, options, sd).await
                    }
                    crate::source::AnySnapshots::Postgres(s) => {
                        runtime::run_capture_with(source, Some(s), log, metrics, options, sd).await
                    }
                },
            )
        });
        let (board, sd) = (snapshot_board.clone(), shutdown.clone());
        tasks.spawn(async move {
            crate::progress::run(board, sd).await;
            ("snapshot progress".into(), Ok(()))
        });
    }
    for r in &cfg.replicas {
        let (log, metrics, sd) = (log.clone(), metrics.clone(), shutdown.clone());
        let opts = ApplyOptions {
            max_batch_events: r.max_batch_events,
            filter: filter.clone(),
        };
        let name = r.name.clone();
        let (req_tx, req_rx) = tokio::sync::mpsc::channel(8);
        resume.insert(name.clone(), req_tx);
        let board = replica_board.clone();
        let task = format!("replica {name}");
        let sink = crate::sink::build(&cfg.name, r);
        tasks.spawn(async move {
            (
                task,
                runtime::run_apply(name, sink, log, metrics, board, opts, req_rx, sd).await,
            )
        });
    }
    // The process that writes the embedded log also trims it (Kafka: the
    // topic's retention does).
    if cfg.log.truncate && log.is_embedded() && role == Role::Capture {
        let (log, sd, mut names) = (log.clone(), shutdown.clone(), replica_names.clone());
        // Capture's state checkpoint: what follows it stays in the log.
        names.push(pipeline::capture_state::STATE_CONSUMER.to_string());
        let every = Duration::from_secs(cfg.log.truncate_interval_s);
        let board = replica_board.clone();
        tasks.spawn(async move {
            (
                "truncation".into(),
                runtime::run_truncation(log, names, board, every, sd).await,
            )
        });
    }
    if let (FsyncPolicy::IntervalMs(ms), true) = (policy, log.is_embedded()) {
        let (log, sd) = (log.clone(), shutdown.clone());
        tasks.spawn(async move {
            (
                "fsync".into(),
                runtime::run_fsync(log, Duration::from_millis(ms), sd).await,
            )
        });
    }
    {
        let (log, metrics, sd) = (log.clone(), metrics.clone(), shutdown.clone());
        tasks.spawn(async move {
            crate::observe::run_observer(log, metrics, backlog, sd).await;
            ("observer".into(), Ok(()))
        });
    }
    #[cfg(feature = "proxy")]
    if let Some(ccfg) = cfg
        .proxy
        .as_ref()
        .and_then(|p| p.cache.clone())
        .filter(|c| parts.invalidate && c.enabled && c.invalidator)
    {
        // The result cache's invalidator follows the same log as the appliers.
        let m = connectors::proxy::cache::invalidate::InvalidatorMetrics::default();
        m.register(&mut registry);
        let (log, sd) = (log.clone(), shutdown.clone());
        tasks.spawn(async move {
            let stop = async move { sd.cancelled().await };
            (
                "cache invalidator".into(),
                connectors::proxy::cache::invalidate::run(log, ccfg, m, stop)
                    .await
                    .map_err(RuntimeError::from),
            )
        });
    }
    #[allow(unused_mut)]
    let mut proxy_view: Option<crate::status::ProxyFn> = None;
    #[cfg(feature = "proxy")]
    if let Some(mut pcfg) = cfg.proxy.clone().filter(|_| parts.proxy) {
        // Replicas fed by this pipeline report their progress in the offsets
        // row `<pipeline name>/<replica name>`.
        for r in &mut pcfg.replicas {
            if r.consumer.is_none() && replica_names.contains(&r.name) {
                r.consumer = Some(format!("{}/{}", cfg.name, r.name));
            }
        }
        let proxy = connectors::proxy::Proxy::new(pcfg, log.subscribe(), None)
            .await
            .map_err(|e| anyhow::anyhow!("proxy: {e}"))?;
        let listener = proxy.bind().await.map_err(|e| anyhow::anyhow!("proxy: {e}"))?;
        proxy.register_metrics(&mut registry);
        let handle = connectors::proxy::Proxy {
            shared: proxy.shared.clone(),
        };
        let listen = listener.local_addr()?.to_string();
        proxy_view = Some(Box::new(move || proxy_status(&handle, &listen)));
        info!("proxy listening on {}", listener.local_addr()?);
        let sd = shutdown.clone();
        tasks.spawn(async move {
            proxy.run(listener, async move { sd.cancelled().await }).await;
            ("proxy".into(), Ok(()))
        });
    }

    if !cfg.admin.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&cfg.admin.listen)
            .await
            .with_context(|| format!("binding the admin server to {}", cfg.admin.listen))?;
        info!("admin server on http://{}", listener.local_addr()?);
        let source = cfg.source.as_ref().map(|s| s.describe());
        let board = Arc::new(
            crate::status::StatusBoard::new(
                &cfg.name,
                if log.is_embedded() { "embedded" } else { "kafka" },
                source,
                replica_names.clone(),
                proxy_view,
            )
            .with_snapshots(snapshot_board.clone()),
        );
        {
            let (board, log, sd) = (board.clone(), log.clone(), shutdown.clone());
            tasks.spawn(async move {
                crate::status::run_sampler(board, log, sd).await;
                ("status sampler".into(), Ok(()))
            });
        }
        let (log, sd, metrics) = (log.clone(), shutdown.clone(), metrics.clone());
        let registry = Arc::new(registry);
        let admin = crate::admin::Pipeline {
            board: replica_board.clone(),
            resume: Arc::new(resume),
            snapshot_wake: snapshot_running.then(|| snapshot_wake.clone()),
            snapshot_replicas: all_replicas.clone(),
        };
        tasks.spawn(async move {
            let r = crate::admin::serve(listener, log, metrics, registry, board, admin, sd).await;
            (
                "admin".into(),
                r.map_err(|e| RuntimeError::Join(format!("admin server: {e}"))),
            )
        });
    }

    let mut first_error: Option<anyhow::Error> = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(e))) => {
                error!(task = %name, "{e}");
                shutdown.cancel();
                first_error.get_or_insert_with(|| anyhow::anyhow!("{name}: {e}"));
            }
            Err(e) => {
                shutdown.cancel();
                first_error.get_or_insert_with(|| anyhow::anyhow!("task panicked: {e}"));
            }
        }
    }
    // Make what was captured durable whatever the policy.
    let _ = log.sync().await;
    match first_error {
        Some(e) => Err(e),
        None => {
            info!("stopped cleanly");
            Ok(())
        }
    }
}

/// The proxy as the status page shows it.
#[cfg(feature = "proxy")]
fn proxy_status(p: &connectors::proxy::Proxy, listen: &str) -> crate::status::ProxySample {
    use connectors::proxy::metrics::{OUTCOMES, ROUTES};
    let m = &p.shared.metrics;
    let queries = (0..ROUTES.len())
        .flat_map(|r| (0..OUTCOMES.len()).map(move |o| (r, o)))
        .map(|(r, o)| m.queries(r, o))
        .sum();
    crate::status::ProxySample {
        listen: listen.to_string(),
        sessions: m.connections.get(),
        queries,
        backends: p
            .backends()
            .into_iter()
            .map(|b| crate::status::BackendSample {
                name: b.name,
                role: b.role,
                up: b.up,
                ping_ms: b.ping_seconds * 1e3,
                applied_seq: b.applied_seq,
                open_connections: b.open_connections,
                idle_connections: b.idle_connections,
            })
            .collect(),
        cache: p.shared.cache.as_ref().map(|c| crate::status::CacheSample {
            available: c.available(),
            hits: c.metrics.hits.get(),
            misses: c.metrics.misses.get(),
            fills: c.metrics.fills.get(),
            fills_refused_stale: c.metrics.fills_refused_stale.get(),
            redis_errors: c.metrics.redis_errors.get(),
        }),
    }
}
