//! `dbmux tail`: print the log as JSON envelopes.
//!
//! The embedded log is locked by the process that writes it, so when dbmux is
//! running, `tail` reads through the admin server's `/log` endpoint; otherwise
//! it opens the log directly.

use crate::config::Config;
use anyhow::{bail, Context};
use pipeline::log::{EmbeddedLog, FsyncPolicy};
use std::io::Write;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: usize = 1000;

pub async fn tail(cfg: &Config, from: Option<u64>, limit: Option<u64>, follow: bool) -> anyhow::Result<()> {
    let dir = cfg.data_dir.join("log");
    if !dir.exists() {
        bail!("no log at {} (has dbmux run with this config?)", dir.display());
    }
    match EmbeddedLog::open(&dir, FsyncPolicy::Never) {
        Ok(log) => tail_direct(&log, from, limit, follow).await,
        Err(_) if !cfg.admin.listen.is_empty() => tail_http(&cfg.admin.listen, from, limit, follow).await,
        Err(e) => Err(e).context("opening the log (is dbmux running without an admin server?)"),
    }
}

async fn tail_direct(
    log: &EmbeddedLog,
    from: Option<u64>,
    limit: Option<u64>,
    follow: bool,
) -> anyhow::Result<()> {
    let mut next = match from {
        Some(s) => s,
        None => log.first_seq()?.unwrap_or(1),
    };
    let mut left = limit.unwrap_or(u64::MAX);
    let stdout = std::io::stdout();
    loop {
        let events = log.read(next, PAGE)?;
        if events.is_empty() {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut out = stdout.lock();
        for e in &events {
            if left == 0 {
                return Ok(());
            }
            writeln!(out, "{}", pipeline::envelope::to_envelope(e))?;
            left -= 1;
            next = e.seq + 1;
        }
    }
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
