//! Source positions: where capture resumes from.
//!
//! # Ordering
//! Positions compare only within one stream. A MySQL binlog position orders by
//! the numeric suffix of the file name and then the byte offset; a PostgreSQL
//! position by LSN. Comparing positions of different kinds yields `None`.
//!
//! # Text form
//! `mysql:<file>:<offset>[:<gtid set>]` and `pg:<X/Y>`; `FromStr` accepts what
//! `Display` prints.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A binlog coordinate plus the GTID state at that point.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MysqlPosition {
    /// Binlog file name, e.g. `mysql-bin.000003`.
    pub file: String,
    /// Byte offset of the next event to read.
    pub offset: u64,
    /// GTID state after this point: MariaDB `domain-server-seq[,..]` or MySQL `uuid:1-5[,..]`.
    pub gtid_set: Option<String>,
}

impl MysqlPosition {
    /// The numeric suffix of the file name (`mysql-bin.000042` → 42).
    pub fn file_index(&self) -> u64 {
        self.file
            .rsplit('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Where a change was read from, and where capture resumes after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Position {
    Mysql(MysqlPosition),
    /// PostgreSQL log sequence number.
    Postgres(u64),
}

impl Position {
    /// Bytes from `self` to `later` when both are in the same file / WAL, or
    /// `None` when the distance cannot be computed (other file, other kind).
    pub fn bytes_until(&self, later: &Position) -> Option<u64> {
        match (self, later) {
            (Position::Mysql(a), Position::Mysql(b)) if a.file == b.file => b.offset.checked_sub(a.offset),
            (Position::Postgres(a), Position::Postgres(b)) => b.checked_sub(*a),
            _ => None,
        }
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Position::Mysql(a), Position::Mysql(b)) => {
                Some((a.file_index(), a.offset).cmp(&(b.file_index(), b.offset)))
            }
            (Position::Postgres(a), Position::Postgres(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Mysql(p) => {
                write!(f, "mysql:{}:{}", p.file, p.offset)?;
                if let Some(g) = &p.gtid_set {
                    write!(f, ":{g}")?;
                }
                Ok(())
            }
            Position::Postgres(lsn) => write!(f, "pg:{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF),
        }
    }
}

/// The text was not a position.
#[derive(Debug, thiserror::Error)]
#[error("invalid position {0:?}: expected mysql:<file>:<offset>[:<gtid set>] or pg:<X/Y>")]
pub struct ParsePositionError(pub String);

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_string());
        if let Some(rest) = s.strip_prefix("mysql:") {
            let mut parts = rest.splitn(3, ':');
            let file = parts.next().filter(|f| !f.is_empty()).ok_or_else(err)?;
            let offset = parts.next().and_then(|o| o.parse().ok()).ok_or_else(err)?;
            let gtid_set = parts.next().map(str::to_string);
            Ok(Position::Mysql(MysqlPosition {
                file: file.to_string(),
                offset,
                gtid_set,
            }))
        } else if let Some(rest) = s.strip_prefix("pg:") {
            let (hi, lo) = rest.split_once('/').ok_or_else(err)?;
            let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
            let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
            if lo > 0xFFFF_FFFF {
                return Err(err());
            }
            Ok(Position::Postgres((hi << 32) | lo))
        } else {
            Err(err())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my(file: &str, offset: u64) -> Position {
        Position::Mysql(MysqlPosition {
            file: file.into(),
            offset,
            gtid_set: None,
        })
    }

    #[test]
    fn text_round_trip() {
        for s in [
            "mysql:mysql-bin.000003:1234",
            "mysql:mysql-bin.000003:4:0-1-55,1-2-3",
            "pg:16/B374D848",
        ] {
            let p: Position = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert!("mysql:bin".parse::<Position>().is_err());
        assert!("pg:zz/1".parse::<Position>().is_err());
        assert!("oracle:1".parse::<Position>().is_err());
    }

    #[test]
    fn ordering_and_lag() {
        assert!(my("b.000002", 4) > my("b.000001", 9000));
        assert!(my("b.000001", 5) < my("b.000001", 9));
        assert_eq!(my("b.000001", 5).bytes_until(&my("b.000001", 9)), Some(4));
        assert_eq!(my("b.000001", 5).bytes_until(&my("b.000002", 9)), None);
        assert_eq!(Position::Postgres(1).partial_cmp(&my("b.000001", 1)), None);
        assert_eq!(
            Position::Postgres(10).bytes_until(&Position::Postgres(30)),
            Some(20)
        );
    }
}
