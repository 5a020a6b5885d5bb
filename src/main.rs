//! The `dbmux` binary: command line, configuration, wiring parts into tasks.

mod admin;
mod config;
mod observe;
mod progress;
#[cfg(feature = "proxy")]
mod proxy_cmd;
mod resume;
mod snapshot_cmd;
mod run;
mod status;
mod tail;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dbmux",
    version,
    about = "Keeps databases in step: binlog capture, an embedded change log, replica appliers"
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
    },
    /// Copy a table's rows (or every captured table's) to one replica again:
    /// the table is recreated there and reloaded while changes keep flowing
    /// (through the admin server while dbmux runs; otherwise the request is
    /// stored and begins with the next `dbmux run`).
    Snapshot {
        #[arg(long, short, env = "DBMUX_CONFIG")]
        config: PathBuf,
        /// The replica's name.
        #[arg(long)]
        replica: String,
        /// The source table, `DB.TABLE` (default: every captured table).
        #[arg(long)]
        table: Option<String>,
    },
    /// Run only the MySQL-protocol proxy from the [proxy] section.
    #[cfg(feature = "proxy")]
    #[command(hide = true)]
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() -> ExitCode {
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
        Command::Run { config } => {
            init_tracing();
            let Some(cfg) = load_config(&config) else {
                return ExitCode::from(2);
            };
            let rt = runtime();
            match rt.block_on(run::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("dbmux stopped: {e:#}");
                    eprintln!("dbmux stopped: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ResumeTable {
            config,
            replica,
            table,
        } => {
            let Some(cfg) = load_config(&config) else {
                return ExitCode::from(2);
            };
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
        } => {
            let Some(cfg) = load_config(&config) else {
                return ExitCode::from(2);
            };
            let rt = runtime();
            match rt.block_on(snapshot_cmd::snapshot(&cfg, &replica, table.as_deref())) {
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
