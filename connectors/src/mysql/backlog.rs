//! How far capture is behind the master, in binlog bytes.
//!
//! The master lists its binlog files with their sizes (`SHOW BINARY LOGS`);
//! the bytes behind a capture position are the rest of its file plus every
//! later file. This reads its own connection, apart from the binlog stream, so
//! a slow answer never holds up capture; it is a monitoring figure only and
//! never decides anything.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use pipeline::position::MysqlPosition;

#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error("source url: {0}")]
    Url(String),
    #[error("SHOW BINARY LOGS on {url}: {source}")]
    Driver { url: String, source: mysql_async::Error },
}

/// Asks the master for its binlog files, over one kept connection.
pub struct BinlogBacklog {
    opts: Opts,
    url: String,
    conn: Option<Conn>,
}

impl BinlogBacklog {
    /// `url` is the source's URL (the same account capture uses; it needs the
    /// `BINLOG MONITOR`/`REPLICATION CLIENT` privilege capture has anyway).
    pub fn new(url: &str) -> Result<Self, BacklogError> {
        let opts = Opts::from_url(url).map_err(|e| BacklogError::Url(e.to_string()))?;
        Ok(Self {
            opts,
            url: pipeline::secret::redact_url(url),
            conn: None,
        })
    }

    /// Binlog bytes the master has written after `at`.
    pub async fn bytes_behind(&mut self, at: &MysqlPosition) -> Result<u64, BacklogError> {
        let files = match self.binary_logs().await {
            Ok(f) => f,
            Err(e) => {
                self.conn = None; // reconnect next time
                return Err(e);
            }
        };
        Ok(bytes_behind(&files, at))
    }

    async fn binary_logs(&mut self) -> Result<Vec<(String, u64)>, BacklogError> {
        let fail = |source| BacklogError::Driver {
            url: self.url.clone(),
            source,
        };
        if self.conn.is_none() {
            self.conn = Some(Conn::new(self.opts.clone()).await.map_err(fail)?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        // Columns: Log_name, File_size (MySQL 8 adds Encrypted).
        let rows: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await.map_err(fail)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
            .collect())
    }
}

/// The rest of `at`'s file plus every later file of `files` (name, size).
/// Files are compared by their numeric suffix, as the server numbers them.
pub fn bytes_behind(files: &[(String, u64)], at: &MysqlPosition) -> u64 {
    let at_index = at.file_index();
    files
        .iter()
        .map(|(name, size)| {
            let index = MysqlPosition {
                file: name.clone(),
                offset: 0,
                gtid_set: None,
            }
            .file_index();
            match index.cmp(&at_index) {
                std::cmp::Ordering::Greater => *size,
                std::cmp::Ordering::Equal => size.saturating_sub(at.offset),
                std::cmp::Ordering::Less => 0,
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(file: &str, offset: u64) -> MysqlPosition {
        MysqlPosition {
            file: file.into(),
            offset,
            gtid_set: None,
        }
    }

    #[test]
    fn rest_of_the_file_plus_later_files() {
        let files = vec![
            ("mysql-bin.000007".to_string(), 1000),
            ("mysql-bin.000008".to_string(), 500),
            ("mysql-bin.000009".to_string(), 300),
        ];
        assert_eq!(bytes_behind(&files, &pos("mysql-bin.000008", 200)), 300 + 300);
        assert_eq!(bytes_behind(&files, &pos("mysql-bin.000009", 300)), 0);
        // Caught up to the end: nothing behind even if the offset is past the listed size.
        assert_eq!(bytes_behind(&files, &pos("mysql-bin.000009", 400)), 0);
        // A purged file: everything still listed is behind.
        assert_eq!(bytes_behind(&files, &pos("mysql-bin.000003", 10)), 1800);
    }
}
