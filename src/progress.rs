//! Snapshot progress a person can watch: progress bars on a terminal
//! (`indicatif`: table, rows done of the estimate, rate, ETA), log lines
//! otherwise. The same figures are on `/status` and in the metrics (they all
//! read the coordinator's [`SnapshotBoard`]).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipeline::snapshot::SnapshotBoard;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the display looks at the board.
const TICK: Duration = Duration::from_millis(500);
/// Seconds between log lines per table when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Shows progress until `shutdown`.
pub async fn run(board: SnapshotBoard, shutdown: CancellationToken) {
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template(
        "{prefix:>30.bold} [{bar:30}] {pos}/{len} rows  {per_sec:>12}  ETA {eta}  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bars: HashMap<(u64, String), ProgressBar> = HashMap::new();
    let mut logged: HashMap<(u64, String), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.cancelled() => {
                for b in bars.values() {
                    b.abandon();
                }
                return;
            }
        }
        for t in board.all() {
            let key = (t.run, t.table.clone());
            let finished = matches!(t.state, "done" | "failed");
            if tty {
                let bar = bars.entry(key.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(t.estimated_rows.max(1)));
                    b.set_style(style.clone());
                    b.set_prefix(t.table.clone());
                    b
                });
                if bar.is_finished() {
                    continue;
                }
                bar.set_length(t.estimated_rows.max(t.rows).max(1));
                bar.set_position(t.rows);
                bar.set_message(t.state.to_string());
                if finished {
                    bar.finish_with_message(t.error.clone().unwrap_or_else(|| t.state.to_string()));
                }
            } else if t.state == "copying" {
                let due = logged.get(&key).is_none_or(|at| at.elapsed() >= LOG_EVERY);
                if due {
                    logged.insert(key, Instant::now());
                    tracing::info!(
                        run = t.run,
                        table = %t.table,
                        rows = t.rows,
                        estimated_rows = t.estimated_rows,
                        rows_per_second = t.rows_per_second.round(),
                        eta_seconds = t.eta_seconds.map(|s| s.round()),
                        "snapshot progress"
                    );
                }
            }
        }
    }
}
