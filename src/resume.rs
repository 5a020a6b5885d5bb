//! `dbmux resume-table`: lift a table's quarantine on one replica.
//!
//! While dbmux runs, the request goes to its admin server, and the replica's
//! own applier re-applies the table's skipped events between two batches.
//! When dbmux is not running (nothing answers on the admin address and the
//! embedded log is not locked), this command does the same work itself: it
//! opens the log and the replica and re-applies the events there. Either way
//! the quarantine is lifted in the same replica transaction as the last
//! re-applied events.
//!
//! With the Kafka log nothing on this host can tell whether the replica's
//! applier (`dbmux apply --replica NAME`, maybe on another host) is running:
//! working beside a running applier would let it skip the table's next events
//! after the quarantine is lifted. So with Kafka the request always goes to
//! the applier's admin server (`--admin ADDR` names it); start the applier
//! first if it is stopped.

use crate::config::Config;
use crate::log::{AnyLog, Role};
use anyhow::{bail, Context};
use pipeline::log::Log;
use pipeline::runtime::{self, ApplyOptions};
use pipeline::schema::TableId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn resume_table(cfg: &Config, replica: &str, table: &str) -> anyhow::Result<String> {
    let Some((db, name)) = table.split_once('.') else {
        bail!("--table must be DB.TABLE (got {table:?})");
    };
    let table = TableId::new(db, name);
    let Some(r) = cfg.replicas.iter().find(|r| r.name == replica) else {
        bail!("no [[replica]] named {replica:?} in the configuration");
    };
    if !cfg.admin.listen.is_empty() {
        if let Ok(stream) = tokio::net::TcpStream::connect(&cfg.admin.listen).await {
            let path = format!("/replicas/{replica}/resume?table={}", encode(&table.to_string()));
            let (code, body) = http_post(stream, &cfg.admin.listen, &path).await?;
            if code == 200 {
                return Ok(body);
            }
            bail!("{}", body.trim_end());
        }
    }
    if cfg.log.kind == "kafka" {
        bail!(
            "no admin server answers on {:?}: with the Kafka log, the replica's applier must do this itself. \
             Start `dbmux apply --replica {replica} --admin ADDR` (if it is not running) and run \
             `dbmux resume-table --admin ADDR` against it",
            cfg.admin.listen
        );
    }
    // dbmux is not running: do it here (the embedded log's lock makes sure).
    let log = AnyLog::open(cfg, Role::Read)
        .await
        .context("is dbmux running without an admin server?")?;
    let options = ApplyOptions {
        max_batch_events: r.max_batch_events,
        filter: match &cfg.source {
            Some(s) => s.filter().map_err(anyhow::Error::msg)?,
            None => pipeline::filter::TableFilter::all(),
        },
    };
    let consumer = format!("{}/{}", cfg.name, r.name);
    let result = match (&r.mysql, &r.postgres) {
        (Some(m), _) => {
            let mut sink = connectors::mysql::apply::MysqlSink::new(&consumer, m.clone());
            runtime::resume_quarantined(replica, &mut sink, &log, &options, &table).await
        }
        (_, Some(p)) => {
            let mut sink = connectors::postgres::apply::PostgresSink::new(&consumer, p.clone());
            runtime::resume_quarantined(replica, &mut sink, &log, &options, &table).await
        }
        _ => bail!("replica {replica} has no engine section"),
    };
    let _ = log.sync().await;
    result.map_err(|e| anyhow::anyhow!(e))
}

/// Percent-encodes a query value.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One HTTP/1.0 POST without a body on an open connection (the admin server is
/// on loopback; see `tail.rs` for why there is no HTTP client crate).
pub(crate) async fn http_post(
    mut s: tokio::net::TcpStream,
    addr: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    s.write_all(
        format!("POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8(buf).context("admin response is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("malformed admin response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed status line")?;
    Ok((code, body.to_string()))
}
