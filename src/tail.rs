//! `dbmux tail`: print the log as JSON envelopes (docs/change-events.md).
//!
//! The Kafka log is read directly, as a `read_committed` consumer. The
//! embedded log is locked by the process that writes it, so when dbmux is
//! running, `tail` reads through the admin server's `/log` endpoint;
//! otherwise it opens the log directly.

use crate::config::Config;
use crate::log::{AnyLog, Role};
use anyhow::{bail, Context};
use pipeline::log::{Log, LogReader};
use std::io::Write;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: usize = 1000;

pub async fn tail(cfg: &Config, from: Option<u64>, limit: Option<u64>, follow: bool) -> anyhow::Result<()> {
    match AnyLog::open(cfg, Role::Read).await {
        Ok(log) => tail_log(&log, from, limit, follow).await,
        // The embedded log is locked by the dbmux that writes it.
        Err(_)
            if cfg.log.kind == "embedded"
                && !cfg.admin.listen.is_empty()
                && cfg.data_dir.join("log").exists() =>
        {
            tail_http(&cfg.admin.listen, from, limit, follow).await
        }
        Err(e) => Err(e).context("opening the log (is dbmux running without an admin server?)"),
    }
}

async fn tail_log(log: &AnyLog, from: Option<u64>, limit: Option<u64>, follow: bool) -> anyhow::Result<()> {
    let mut reader = log.reader("tail").await?;
    let mut next = match from {
        Some(s) => s,
        None => log.first_seq().await?.unwrap_or(1),
    };
    let mut left = limit.unwrap_or(u64::MAX);
    let stdout = std::io::stdout();
    while left > 0 {
        let txns = reader.read(next, PAGE).await?;
        if txns.is_empty() {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut out = stdout.lock();
        for txn in &txns {
            for env in pipeline::envelope::transaction_envelopes(txn) {
                if left == 0 {
                    return Ok(());
                }
                writeln!(out, "{env}")?;
                left -= 1;
            }
            next = txn.last_seq() + 1;
        }
    }
    Ok(())
}

/// One HTTP/1.0 GET. Hand-written because it is all `tail` needs from a
/// client and the admin server is on loopback; pulling an HTTP client crate
/// into the binary for it would cost more than these lines.
async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to admin {addr}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
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

async fn tail_http(addr: &str, from: Option<u64>, limit: Option<u64>, follow: bool) -> anyhow::Result<()> {
    let mut next = match from {
        Some(s) => s,
        None => {
            let (_, body) = http_get(addr, "/status").await?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            v["log"]["first_seq"].as_u64().unwrap_or(1)
        }
    };
    let mut left = limit.unwrap_or(u64::MAX);
    loop {
        let (code, body) = http_get(addr, &format!("/log?from={next}&limit={PAGE}")).await?;
        if code != 200 {
            bail!("admin server answered {code}: {body}");
        }
        if body.is_empty() {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for line in body.lines() {
            if left == 0 {
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_str(line)?;
            writeln!(out, "{line}")?;
            left -= 1;
            next = v["seq"].as_u64().context("envelope without seq")? + 1;
        }
    }
}
