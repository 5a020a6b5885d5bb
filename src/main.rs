//! The `dbmux` binary: command line, configuration, wiring parts into tasks.

mod admin;
mod config;
mod log;
mod observe;
mod progress;
#[cfg(feature = "proxy")]
mod proxy_cmd;
mod resume;
mod run;
mod sink;
mod snapshot_cmd;
mod source;
mod status;
mod tail;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dbmux",
    version,
    about = "Keeps databases in step: binlog capture, a change log (embedded or Kafka), replica appliers, a MySQL front door"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run capture, the log and every applier until interrupted.
    Run {
        #[arg(long, short, env = "DBMUX_CONFIG")]
        config: PathBuf,
    },
    /// Run only capture: read the master and append to the log (with
    /// `[log] kind = "kafka"`, appliers run as separate processes).
    Capture {
        #[arg(long, short, env = "DBMUX_CONFIG")]
        config: PathBuf,
        /// Admin server address for this process (overrides [admin] listen; "" disables it).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Run only the applier of one replica, reading the log.
    Apply {
        #[arg(long, short, env = "DBMUX_CONFIG")]
        config: PathBuf,
        /// The [[replica]] to apply to.
        #[arg(long)]
        replica: String,
        /// Admin server address for this process (overrides [admin] listen; "" disables it).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Run only the result cache's invalidator ([proxy.cache]): follow the
    /// log and record each change's table in Redis (exactly one per
    /// `key_prefix`; set `invalidator = false` for `dbmux run` then).
    #[cfg(feature = "proxy")]
    Invalidate {
        #[arg(long, short, env = "DBMUX_CONFIG")]
        config: PathBuf,
        /// Admin server address for this process (overrides [admin] listen; "" disables it).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Validate a configuration file and list every problem.
    CheckConfig { file: PathBuf },
    /// Print change events from the log as JSON envelopes, one per line.
    Tail {
        #[arg(long, short, env = "DBMUX_CONFIG")]
        config: PathBuf,
        /// First seq to print (default: the oldest in the log).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Keep waiting for new events.
        #[arg(long, short)]
        follow: bool,
    },
    /// Lift the quarantine of a table on one replica: re-apply the table's
    /// skipped events from the log, then apply it again (through the admin
    /// server while dbmux runs, by itself when it does not).
    ResumeTable {
        #[arg(long, short, env = "DBMUX_CONFIG")]
        config: PathBuf,
        /// The replica's name.
        #[arg(long)]
        replica: String,
        /// The source table, `DB.TABLE`.
        #[arg(long)]
        table: String,
        /// Admin server of the process that applies to the replica (overrides
        /// [admin] listen; with the Kafka log, the `dbmux apply` process's).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Copy a table's rows (or every captured table's) to one replica again:
    /// the table is recreated there and reloaded while changes keep flowing
    /// (through the admin server of the process that captures while it runs;
    /// with the embedded log and dbmux stopped, the request is stored and
    /// begins with the next `dbmux run`).
    Snapshot {
        #[arg(long, short, env = "DBMUX_CONFIG")]
        config: PathBuf,
        /// The replica's name.
        #[arg(long)]
        replica: String,
        /// The source table, `DB.TABLE` (default: every captured table).
        #[arg(long, conflicts_with = "start_over")]
        table: Option<String>,
        /// Start the replica over: every captured table recreated and
        /// reloaded, its offset moved to the snapshot (a replica that needs a
        /// snapshot, e.g. added after the log was truncated). Implied when the
        /// capturing process sees the replica in `needs_snapshot`.
        #[arg(long)]
        start_over: bool,
        /// Admin server of the process that captures (overrides [admin]
        /// listen; with the Kafka log, the `dbmux capture` process's).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Run only the MySQL-protocol proxy from the [proxy] section.
    #[cfg(feature = "proxy")]
    Proxy {
        #[arg(long, short, env = "DBMUX_CONFIG")]
        config: PathBuf,
    },
    /// Print the stored hashes of a proxy user's password (argument or stdin).
    #[cfg(feature = "proxy")]
    HashPassword { password: Option<String> },
}

fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_env("DBMUX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        // Warnings and errors also go to the status page, whatever DBMUX_LOG says.
        .with(status::ErrorLayer.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
        .init();
}

/// Loads and validates the configuration, printing every problem when it is not valid.
fn load_config(path: &std::path::Path) -> Option<config::Config> {
    config::Config::load(path).map_err(|e| eprintln!("{e}")).ok()
}

/// Worker thread stack size: 8 MiB, as a process's main thread.
const WORKER_STACK: usize = 8 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        // The proxy classifies client SQL on these threads: its parse is
        // bounded (connectors::proxy::lexer) to well under tokio's default
        // 2 MiB; 8 MiB (virtual, touched only if used) is the margin.
        .thread_stack_size(WORKER_STACK)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `run`, `capture` and `apply`: the parts in one process until interrupted.
fn run_parts(config: &std::path::Path, admin: Option<String>, parts: run::Parts) -> ExitCode {
    init_tracing();
    let Some(mut cfg) = load_config(config) else {
        return ExitCode::from(2);
    };
    if let Some(a) = admin {
        if !a.is_empty() && a.parse::<std::net::SocketAddr>().is_err() {
            eprintln!("--admin: {a:?} is not a host:port address");
            return ExitCode::from(2);
        }
        cfg.admin.listen = a;
    }
    let rt = runtime();
    match rt.block_on(run::run(cfg, parts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("dbmux stopped: {e:#}");
            eprintln!("dbmux stopped: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Makes *ring* rustls's process-wide crypto provider. Two providers are
/// compiled in (ours is *ring*; `tiberius`, the SQL Server driver, brings
/// aws-lc-rs through tokio-rustls's default features), and with both present
/// rustls cannot pick one itself: a driver building a TLS client with
/// `ClientConfig::builder()` (mysql_async with TLS) would panic.
pub fn install_crypto_provider() {
    // Err only when one is installed already, which is what is wanted.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `dbmux invalidate`: the parts of `run_parts` with only the invalidator.
#[cfg(feature = "proxy")]
fn run_invalidator(config: &std::path::Path, admin: Option<String>) -> ExitCode {
    init_tracing();
    let Some(mut cfg) = load_config(config) else {
        return ExitCode::from(2);
    };
    match cfg
        .proxy
        .as_mut()
        .and_then(|p| p.cache.as_mut())
        .filter(|c| c.enabled)
    {
        Some(c) => c.invalidator = true,
        None => {
            eprintln!("dbmux invalidate: the configuration has no enabled [proxy.cache]");
            return ExitCode::from(2);
        }
    }
    if let Some(a) = admin {
        if !a.is_empty() && a.parse::<std::net::SocketAddr>().is_err() {
            eprintln!("--admin: {a:?} is not a host:port address");
            return ExitCode::from(2);
        }
        cfg.admin.listen = a;
    }
    let parts = run::Parts {
        capture: false,
        appliers: run::Appliers::None,
        proxy: false,
        invalidate: true,
    };
    match runtime().block_on(run::run(cfg, parts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("dbmux stopped: {e:#}");
            eprintln!("dbmux stopped: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "proxy")]
        Command::Proxy { config } => {
            init_tracing();
            proxy_cmd::run(&config)
        }
        #[cfg(feature = "proxy")]
        Command::HashPassword { password } => proxy_cmd::hash_password(password),
        Command::CheckConfig { file } => match config::Config::load(&file) {
            Ok(c) => {
                println!("{}: OK", file.display());
                println!("{}", run::describe(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => run_parts(&config, None, run::Parts::ALL),
        Command::Capture { config, admin } => run_parts(
            &config,
            admin,
            run::Parts {
                capture: true,
                appliers: run::Appliers::None,
                proxy: false,
                invalidate: false,
            },
        ),
        #[cfg(feature = "proxy")]
        Command::Invalidate { config, admin } => run_invalidator(&config, admin),
        Command::Apply {
            config,
            replica,
            admin,
        } => run_parts(
            &config,
            admin,
            run::Parts {
                capture: false,
                appliers: run::Appliers::One(replica),
                proxy: false,
                invalidate: false,
            },
        ),
        Command::ResumeTable {
            config,
            replica,
            table,
            admin,
        } => {
            let Some(mut cfg) = load_config(&config) else {
                return ExitCode::from(2);
            };
            if let Some(a) = admin {
                cfg.admin.listen = a;
            }
            let rt = runtime();
            match rt.block_on(resume::resume_table(&cfg, &replica, &table)) {
                Ok(msg) => {
                    println!("{}", msg.trim_end());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dbmux resume-table: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Snapshot {
            config,
            replica,
            table,
            start_over,
            admin,
        } => {
            let Some(cfg) = load_config(&config) else {
                return ExitCode::from(2);
            };
            let rt = runtime();
            match rt.block_on(snapshot_cmd::snapshot(
                &cfg,
                &replica,
                table.as_deref(),
                start_over,
                admin.as_deref(),
            )) {
                Ok(msg) => {
                    println!("{}", msg.trim_end());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dbmux snapshot: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tail {
            config,
            from,
            limit,
            follow,
        } => {
            let Some(cfg) = load_config(&config) else {
                return ExitCode::from(2);
            };
            let rt = runtime();
            match rt.block_on(tail::tail(&cfg, from, limit, follow)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dbmux tail: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
