//! `dbmux snapshot`: copy a table (or every captured table) to one replica
//! again.
//!
//! While dbmux runs, the request goes to its admin server, which stores it in
//! the log and wakes the snapshot coordinator. When dbmux is not running, the
//! request is stored in the log directly and begins with the next `dbmux
//! run`. Either way the copy is made like any snapshot (see docs/snapshot.md):
//! its first chunk recreates the table on that replica, changes keep flowing,
//! and the other replicas are not touched.

use crate::config::Config;
use crate::resume::{encode, http_post};
use anyhow::{bail, Context};
use pipeline::log::{EmbeddedLog, FsyncPolicy};
use pipeline::schema::TableId;

pub async fn snapshot(
    cfg: &Config,
    replica: &str,
    table: Option<&str>,
    start_over: bool,
    admin: Option<&str>,
) -> anyhow::Result<String> {
    let tables = match table {
        Some(t) => match t.split_once('.') {
            Some((db, name)) if !db.is_empty() && !name.is_empty() => vec![TableId::new(db, name)],
            _ => bail!("--table must be DB.TABLE (got {t:?})"),
        },
        None => Vec::new(),
    };
    if !cfg.replicas.iter().any(|r| r.name == replica) {
        bail!("no [[replica]] named {replica:?} in the configuration");
    }
    if cfg.source.is_none() {
        bail!("snapshots copy from the source: the configuration has no [source.mysql] or [source.postgres]");
    }
    let listen = admin.unwrap_or(&cfg.admin.listen);
    if !listen.is_empty() {
        if let Ok(stream) = tokio::net::TcpStream::connect(listen).await {
            let mut path = format!("/replicas/{}/snapshot", encode(replica));
            let mut sep = '?';
            if let Some(t) = table {
                path.push_str(&format!("{sep}table={}", encode(t)));
                sep = '&';
            }
            if start_over {
                path.push_str(&format!("{sep}start_over=true"));
            }
            let (code, body) = http_post(stream, listen, &path).await?;
            if code == 200 {
                return Ok(body);
            }
            bail!("{}", body.trim_end());
        }
    }
    if cfg.log.kind == "kafka" {
        // Only the capture process may write the Kafka log (its
        // transactional producer fences any other writer).
        bail!(
            "with the Kafka log a snapshot is requested through the admin server of the process that captures \
             (`dbmux capture` or `dbmux run`), and none answered at {:?}: start it with [admin] listen set, or \
             pass --admin HOST:PORT",
            listen
        );
    }
    // dbmux is not running: store the request for its next start.
    let dir = cfg.data_dir.join("log");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = EmbeddedLog::open(&dir, FsyncPolicy::Always).with_context(|| {
        format!(
            "opening the log in {} (is dbmux running without an admin server?)",
            dir.display()
        )
    })?;
    let id = pipeline::snapshot::request(&log, replica, &tables, start_over).await?;
    let what = table.unwrap_or("every captured table");
    Ok(format!(
        "snapshot of {what} for replica {replica} requested ({id}); dbmux is not running: it begins with the next `dbmux run`"
    ))
}
