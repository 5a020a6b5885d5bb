//! Gauges nobody sets on the hot path: the log's size, oldest and newest `seq`,
//! the capture position and how far the master's binlog is ahead of it.
//!
//! One task refreshes them every [`EVERY`]; the binlog distance needs a query
//! on the master, so it is asked every [`BACKLOG_EVERY`] only. The newest
//! record (for the capture position) is read again only when the log's head
//! moved: with Kafka that is a read from the brokers. A failed query is logged
//! at debug level and leaves the gauge as it was: monitoring never stops the
//! pipeline.

use pipeline::log::Log;
use pipeline::metrics::PipelineMetrics;
use pipeline::position::Position;
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
pub async fn run_observer<L: Log>(
    log: L,
    metrics: PipelineMetrics,
    mut backlog: Option<Backlog>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut backlog_asked: Option<Instant> = None;
    // The position read last, and the log head it was read at.
    let mut known: Option<(u64, Position)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Ok(first) = log.first_seq().await {
            metrics.log_first_seq.set(first.unwrap_or(0));
        }
        if let Ok(Some(d)) = log.disk_bytes().await {
            metrics.log_disk_bytes.set(d);
        }
        let head = log.last_seq();
        // Capture sets it on every append; a process that only reads the log
        // (`dbmux apply` with Kafka) learns the head from the log's watch.
        metrics.log_last_seq.set(head);
        if known.as_ref().is_none_or(|(seq, _)| *seq != head) {
            // Before the first transaction the position capture started from
            // is the one stored on the first start.
            let position = match log.last().await {
                Ok(Some((seq, p))) => Some((seq, p)),
                Ok(None) => log.start_position().await.ok().flatten().map(|p| (0, p)),
                Err(_) => None,
            };
            if position.is_some() {
                known = position;
            }
        }
        let Some((_, position)) = known.clone() else {
            continue;
        };
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
