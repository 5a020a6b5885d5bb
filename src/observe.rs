//! Gauges nobody sets on the hot path: the log's size and oldest `seq`, the
//! capture position and how far the master's binlog is ahead of it.
//!
//! One task refreshes them every [`EVERY`]; the binlog distance needs a query
//! on the master, so it is asked every [`BACKLOG_EVERY`] only. A failed query
//! is logged at debug level and leaves the gauge as it was: monitoring never
//! stops the pipeline.

use pipeline::log::EmbeddedLog;
use pipeline::metrics::PipelineMetrics;
use pipeline::position::Position;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const EVERY: Duration = Duration::from_secs(1);
pub const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Asks the source how many bytes it has beyond a position.
pub enum Backlog {
    #[cfg(feature = "mysql")]
    Mysql(connectors::mysql::backlog::BinlogBacklog),
}

impl Backlog {
    async fn bytes_behind(&mut self, at: &Position) -> Option<u64> {
        match (self, at) {
            #[cfg(feature = "mysql")]
            (Backlog::Mysql(b), Position::Mysql(p)) => match b.bytes_behind(p).await {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::debug!(error = %e, "binlog backlog unknown");
                    None
                }
            },
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// Refreshes the gauges until `shutdown`.
pub async fn run_observer(
    log: Arc<EmbeddedLog>,
    metrics: PipelineMetrics,
    mut backlog: Option<Backlog>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut backlog_asked: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let log2 = log.clone();
        let read = tokio::task::spawn_blocking(move || {
            (
                log2.first_seq().ok().flatten(),
                log2.disk_bytes().ok(),
                log2.last().ok().flatten(),
            )
        })
        .await;
        let Ok((first, disk, last)) = read else { continue };
        metrics.log_first_seq.set(first.unwrap_or(0));
        if let Some(d) = disk {
            metrics.log_disk_bytes.set(d);
        }
        // Before the first transaction the position capture started from is
        // the one stored on the first start.
        let position = match last {
            Some((_, p)) => Some(p),
            None => log.start_position().ok().flatten(),
        };
        let Some(position) = position else { continue };
        if let Position::Mysql(p) = &position {
            metrics.capture_position_file.set(p.file_index() as i64);
            metrics.capture_position_offset.set(p.offset as i64);
        }
        if let Some(b) = backlog.as_mut() {
            if backlog_asked.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY) {
                backlog_asked = Some(Instant::now());
                if let Some(n) = b.bytes_behind(&position).await {
                    metrics.capture_binlog_bytes_behind.set(n as i64);
                }
            }
        }
    }
}
