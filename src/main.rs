//! The `dbmux` binary: command line, configuration, wiring parts into tasks.

mod admin;
mod config;
#[cfg(feature = "proxy")]
mod proxy_cmd;
mod run;
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
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("DBMUX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
            let cfg = match config::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(run::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("dbmux stopped: {e:#}");
                    eprintln!("dbmux stopped: {e:#}");
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
            let cfg = match config::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
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
