//! GTID state carried in [`pipeline::MysqlPosition::gtid_set`], and the
//! hand parsers for MariaDB's GTID events, which mysql_common 0.37 leaves
//! untyped (event types 160–163 are MariaDB's own).
//!
//! - MariaDB: `domain-server-seq[,…]`, the latest GTID per replication domain
//!   (the form of `@@gtid_binlog_pos`).
//! - MySQL: `uuid:1-5:7-9[,…]`, the set of executed GTIDs (the form of
//!   `@@gtid_executed`), extended with every GTID the capture reads.

use std::collections::BTreeMap;
use std::fmt;

/// MariaDB `GTID_EVENT` (type 162) flag: the group has no BEGIN/COMMIT (DDL).
pub const FL_STANDALONE: u8 = 1;
const FL_GROUP_COMMIT_ID: u8 = 2;
/// The group is an XA transaction's prepare part (`XA PREPARE`).
pub const FL_PREPARED_XA: u8 = 64;

/// A MariaDB GTID event's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MariaGtid {
    pub seq_no: u64,
    pub domain_id: u32,
    pub flags: u8,
    pub commit_id: Option<u64>,
}

impl MariaGtid {
    /// Parses the event body (after the common header, checksum removed):
    /// `seq_no u64, domain_id u32, flags u8, [commit_id u64], …`.
    pub fn parse(data: &[u8]) -> Option<Self> {
        let seq_no = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
        let domain_id = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
        let flags = *data.get(12)?;
        let commit_id = if flags & FL_GROUP_COMMIT_ID != 0 {
            Some(u64::from_le_bytes(data.get(13..21)?.try_into().ok()?))
        } else {
            None
        };
        Some(Self {
            seq_no,
            domain_id,
            flags,
            commit_id,
        })
    }

    pub fn standalone(&self) -> bool {
        self.flags & FL_STANDALONE != 0
    }
}

/// Parses a MariaDB `GTID_LIST_EVENT` (type 163) body: `count u32` (low 28 bits)
/// then `count × (domain u32, server u32, seq u64)`.
pub fn parse_gtid_list(data: &[u8]) -> Option<Vec<(u32, u32, u64)>> {
    let count = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) & 0x0FFF_FFFF;
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let b = data.get(4 + i * 16..4 + (i + 1) * 16)?;
        out.push((
            u32::from_le_bytes(b[0..4].try_into().ok()?),
            u32::from_le_bytes(b[4..8].try_into().ok()?),
            u64::from_le_bytes(b[8..16].try_into().ok()?),
        ));
    }
    Some(out)
}

/// The GTID state of a stream, in either flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GtidState {
    /// domain → (server id, sequence number) of the latest transaction.
    MariaDb(BTreeMap<u32, (u32, u64)>),
    /// source id (uuid, or `uuid:tag`) → sorted, disjoint, inclusive intervals.
    MySql(BTreeMap<String, Vec<(u64, u64)>>),
}

/// The text was not a GTID state of the expected flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtidParseError(pub String);

impl fmt::Display for GtidParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid GTID state {:?}", self.0)
    }
}

impl GtidState {
    pub fn is_empty(&self) -> bool {
        match self {
            GtidState::MariaDb(m) => m.is_empty(),
            GtidState::MySql(m) => m.is_empty(),
        }
    }

    /// Parses `domain-server-seq,…` (MariaDB).
    pub fn parse_mariadb(text: &str) -> Result<Self, GtidParseError> {
        let err = || GtidParseError(text.to_string());
        let mut m = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split('-');
            let (d, s, q) = (it.next(), it.next(), it.next());
            if it.next().is_some() {
                return Err(err());
            }
            let d: u32 = d.and_then(|v| v.parse().ok()).ok_or_else(err)?;
            let s: u32 = s.and_then(|v| v.parse().ok()).ok_or_else(err)?;
            let q: u64 = q.and_then(|v| v.parse().ok()).ok_or_else(err)?;
            m.insert(d, (s, q));
        }
        Ok(GtidState::MariaDb(m))
    }

    /// Parses `uuid:1-5:7,uuid2:3` (MySQL; also `uuid:tag:1-5` for tagged GTIDs).
    pub fn parse_mysql(text: &str) -> Result<Self, GtidParseError> {
        let err = || GtidParseError(text.to_string());
        let mut m: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut fields = part.split(':');
            let uuid = fields.next().ok_or_else(err)?.to_ascii_lowercase();
            let mut sid = uuid.clone();
            for f in fields {
                if f.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                {
                    // A tag: following intervals belong to `uuid:tag`.
                    sid = format!("{uuid}:{f}");
                    continue;
                }
                let (a, b) = match f.split_once('-') {
                    Some((a, b)) => (a, b),
                    None => (f, f),
                };
                let (a, b): (u64, u64) = (a.parse().map_err(|_| err())?, b.parse().map_err(|_| err())?);
                if a == 0 || b < a {
                    return Err(err());
                }
                let iv = m.entry(sid.clone()).or_default();
                iv.push((a, b));
                normalize(iv);
            }
        }
        Ok(GtidState::MySql(m))
    }

    /// Records a MariaDB transaction.
    pub fn add_mariadb(&mut self, domain: u32, server: u32, seq: u64) {
        if let GtidState::MariaDb(m) = self {
            m.insert(domain, (server, seq));
        }
    }

    /// Records a MySQL transaction.
    pub fn add_mysql(&mut self, sid: &str, gno: u64) {
        if let GtidState::MySql(m) = self {
            add_interval(m.entry(sid.to_string()).or_default(), gno);
        }
    }
}

fn add_interval(iv: &mut Vec<(u64, u64)>, g: u64) {
    // Fast path: the next number of the last interval (the common case).
    if let Some(last) = iv.last_mut() {
        if last.1 + 1 == g {
            last.1 = g;
            return;
        }
        if last.0 <= g && g <= last.1 {
            return;
        }
    }
    iv.push((g, g));
    normalize(iv);
}

fn normalize(iv: &mut Vec<(u64, u64)>) {
    iv.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(iv.len());
    for &(a, b) in iv.iter() {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *iv = out;
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GtidState::MariaDb(m) => {
                for (i, (d, (s, q))) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{d}-{s}-{q}")?;
                }
            }
            GtidState::MySql(m) => {
                for (i, (sid, iv)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(sid)?;
                    for (a, b) in iv {
                        if a == b {
                            write!(f, ":{a}")?;
                        } else {
                            write!(f, ":{a}-{b}")?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_gtid_event() {
        // Seen from MariaDB 10.11: seq 12, domain 0, flags FL_TRANSACTIONAL|FL_ALLOW_PARALLEL.
        let data = [0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0c, 0, 0, 0, 0, 0, 0];
        let g = MariaGtid::parse(&data).unwrap();
        assert_eq!((g.seq_no, g.domain_id, g.flags, g.commit_id), (12, 0, 0x0c, None));
        assert!(!g.standalone());
        let mut data = vec![
            5,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            2,
            0,
            0,
            0,
            FL_GROUP_COMMIT_ID | FL_STANDALONE,
        ];
        data.extend_from_slice(&77u64.to_le_bytes());
        let g = MariaGtid::parse(&data).unwrap();
        assert_eq!((g.seq_no, g.domain_id, g.commit_id), (5, 2, Some(77)));
        assert!(g.standalone());
        assert_eq!(MariaGtid::parse(&data[..10]), None);
    }

    #[test]
    fn gtid_list_event() {
        let mut data = 2u32.to_le_bytes().to_vec();
        for (d, s, q) in [(0u32, 1u32, 40u64), (3, 2, 7)] {
            data.extend_from_slice(&d.to_le_bytes());
            data.extend_from_slice(&s.to_le_bytes());
            data.extend_from_slice(&q.to_le_bytes());
        }
        assert_eq!(parse_gtid_list(&data).unwrap(), vec![(0, 1, 40), (3, 2, 7)]);
        assert_eq!(parse_gtid_list(&data[..20]), None);
    }

    #[test]
    fn mariadb_state() {
        let mut s = GtidState::parse_mariadb("0-1-12, 1-2-5").unwrap();
        s.add_mariadb(0, 1, 13);
        s.add_mariadb(7, 3, 1);
        assert_eq!(s.to_string(), "0-1-13,1-2-5,7-3-1");
        assert!(GtidState::parse_mariadb("0-1").is_err());
        assert!(GtidState::parse_mariadb("").unwrap().is_empty());
    }

    #[test]
    fn mysql_state() {
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let mut s = GtidState::parse_mysql(&format!("{}:1-5:7", u.to_uppercase())).unwrap();
        s.add_mysql(u, 6);
        assert_eq!(s.to_string(), format!("{u}:1-7"));
        s.add_mysql(u, 9);
        s.add_mysql(u, 8);
        s.add_mysql("aaaaaaaa-0000-0000-0000-000000000000", 1);
        assert_eq!(
            s.to_string(),
            format!("{u}:1-9,aaaaaaaa-0000-0000-0000-000000000000:1")
        );
        let t = GtidState::parse_mysql(&format!("{u}:1-3:tag1:1-2")).unwrap();
        assert_eq!(t.to_string(), format!("{u}:1-3,{u}:tag1:1-2"));
        assert!(GtidState::parse_mysql(&format!("{u}:5-2")).is_err());
    }
}
