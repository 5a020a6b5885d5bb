//! The result cache: cacheable reads answered from Redis, kept exact by the
//! change stream.
//!
//! # Shape
//! `classify` decides which statements may be cached and which tables they
//! read; `config` is `[proxy.cache]`; this module is the proxy's side (look
//! up, fill, watch the epoch); `invalidate` is the invalidator, which follows
//! the log and records in Redis, per table, the newest `seq` that changed it.
//! The full argument for why no stale entry is served is in `docs/cache.md`.
//!
//! # The protocol in one paragraph
//! Everything lives under an *epoch* (`<prefix>:epoch` = `id:base`), created
//! by the invalidator when it starts or finds Redis lost its writes; `base`
//! is the log `seq` it had processed then. Per table, `<prefix>:<id>:t:<table>`
//! holds the newest `seq` that changed it (absent: not changed since `base`).
//! A fill stores a result with `A`, the serving replica's applied `seq` read
//! *before* the query ran; a Lua script refuses it atomically if `A` is below
//! any of its tables' last change (or below `base`, checked here). A lookup
//! (Lua, atomic) serves an entry only if its `A` still covers every table's
//! last change and the session's own last write. So a slow fill can never
//! bring back an old row: either its table's change is already recorded (the
//! fill is refused) or it is recorded later (the entry is never served again).
//!
//! # Redis trouble
//! Every call is bounded by `timeout_ms`; any error or timeout makes the
//! statement a plain replica read, counts `dbmux_cache_redis_errors`, logs one
//! warning per episode and stops all lookups until Redis answers again *and*
//! the invalidator has since confirmed the epoch (its heartbeat counter moved
//! after the episode): entries from before an outage are served only once
//! the invalidator has checked that Redis did not lose any of its writes.
//! The same holds when the invalidator stops: no heartbeat for
//! [`BEAT_TIMEOUT`], no hits.

pub mod classify;
pub mod config;
pub mod invalidate;

pub use config::CacheConfig;

use pipeline::retry::{Classify, ErrorClass};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Counter: statements answered from the cache.
pub const HITS: &str = "dbmux_cache_hits";
/// Counter: cacheable statements not found (or not servable) in the cache.
pub const MISSES: &str = "dbmux_cache_misses";
/// Counter: results stored.
pub const FILLS: &str = "dbmux_cache_fills";
/// Counter: fills refused because a table they read changed after the
/// replica state they were read from (the race the protocol closes).
pub const FILLS_REFUSED_STALE: &str = "dbmux_cache_fills_refused_stale";
/// Counter: Redis calls of the proxy that failed or timed out.
pub const REDIS_ERRORS: &str = "dbmux_cache_redis_errors";
/// Gauge: 1 while the proxy serves from the cache (Redis answers and the
/// invalidator's heartbeat is fresh), 0 otherwise.
pub const AVAILABLE: &str = "dbmux_cache_available";

/// The invalidator's heartbeat must move at least this often for hits to
/// be served (it beats every [`invalidate::BEAT_EVERY`]).
pub const BEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the proxy reads the epoch and heartbeat.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);
/// Result bytes of fills in flight at once: beyond this a fill is dropped
/// (whatever clients send, a slow Redis cannot make the proxy hold more).
pub const MAX_FILL_BYTES_IN_FLIGHT: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer from redis: {0}")]
    Protocol(String),
}

impl Classify for CacheError {
    fn class(&self) -> ErrorClass {
        // Redis coming back heals all of them; the proxy meanwhile serves
        // from the databases and the invalidator retries.
        ErrorClass::Transient
    }
}

/// The Redis keys of one `key_prefix`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    /// `id:base` of the current epoch.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }
    /// The invalidator's heartbeat counter.
    pub fn beat(&self) -> String {
        format!("{}:beat", self.prefix)
    }
    /// The `seq` the invalidator has processed, within epoch `id`.
    pub fn watermark(&self, id: &str) -> String {
        format!("{}:{id}:w", self.prefix)
    }
    /// The newest `seq` that changed `db.table`, within epoch `id`.
    pub fn table(&self, id: &str, db: &str, table: &str) -> String {
        // Back-quoted like SQL, so no two (db, table) pairs share a key.
        format!(
            "{}:{id}:t:`{}`.`{}`",
            self.prefix,
            db.replace('`', "``"),
            table.replace('`', "``")
        )
    }
    /// A cached result, within epoch `id`.
    pub fn entry(&self, id: &str, hash: &str) -> String {
        format!("{}:{id}:r:{hash}", self.prefix)
    }
}

/// An epoch as stored: `id:base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub value: String,
    pub id: String,
    pub base: u64,
}

impl Epoch {
    pub fn parse(value: &str) -> Option<Epoch> {
        let (id, base) = value.split_once(':')?;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        Some(Epoch {
            value: value.to_string(),
            id: id.to_string(),
            base: base.parse().ok()?,
        })
    }
}

/// Serves an entry: the epoch must be current, the invalidator must have
/// recorded every change up to the serving replica's applied seq (so a hit
/// is never older than what that replica would answer), the entry's seq
/// must reach every table's last change and the session's floor
/// (read-your-writes). A stale entry is deleted on the way. Returns
/// `{1, result}`, or `{0}` absent, `{-1}` epoch changed, `{-2}` below the
/// session's floor, `{-3}` stale (deleted), `{-4}` invalidator behind the
/// replica.
const LOOKUP: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local w = redis.call('GET', KEYS[3])
if (not w) or tonumber(w) < tonumber(ARGV[3]) then return {-4} end
local e = redis.call('HMGET', KEYS[2], 's', 'r')
if not e[1] then return {0} end
local seq = tonumber(e[1])
for i = 4, #KEYS do
  local t = redis.call('GET', KEYS[i])
  if t and tonumber(t) > seq then
    redis.call('DEL', KEYS[2])
    return {-3}
  end
end
if seq < tonumber(ARGV[2]) then return {-2} end
return {1, e[2]}
";

/// Stores an entry read at replica seq ARGV[2], unless a table it read
/// changed after that (0: refused as stale) or the epoch changed (-1), or a
/// newer entry is there already (2). 1: stored.
const FILL: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local seq = tonumber(ARGV[2])
for i = 3, #KEYS do
  local t = redis.call('GET', KEYS[i])
  if t and tonumber(t) > seq then return 0 end
end
local old = redis.call('HGET', KEYS[2], 's')
if old and tonumber(old) >= seq then return 2 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 's', ARGV[2], 'r', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
";

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit(Vec<u8>),
    Miss,
}

/// What a fill did.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Fill {
    Stored,
    /// A table changed after the replica state the result was read from.
    RefusedStale,
    /// Not stored: a newer entry is there, the epoch changed, or the
    /// replica's state predates the epoch.
    Skipped,
}

/// The proxy's cache metrics.
#[derive(Debug, Default, Clone)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub fills: Counter,
    pub fills_refused_stale: Counter,
    pub redis_errors: Counter,
    pub available: Gauge,
}

impl CacheMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            HITS,
            "Statements answered from the Redis cache",
            self.hits.clone(),
        );
        registry.register(
            MISSES,
            "Cacheable statements not answered from the cache (absent, stale or below the session's own writes)",
            self.misses.clone(),
        );
        registry.register(FILLS, "Results stored in the cache", self.fills.clone());
        registry.register(
            FILLS_REFUSED_STALE,
            "Fills refused because a table they read changed after the replica state they came from",
            self.fills_refused_stale.clone(),
        );
        registry.register(
            REDIS_ERRORS,
            "Redis calls of the proxy that failed or timed out (the statement was served by the databases)",
            self.redis_errors.clone(),
        );
        registry.register(
            AVAILABLE,
            "1 while the proxy serves from the cache (Redis answers, the invalidator's heartbeat is fresh)",
            self.available.clone(),
        );
    }
}

/// What the proxy trusts of Redis now.
#[derive(Debug, Default)]
struct Trust {
    /// The epoch hits and fills use; `None`: the cache is not used.
    epoch: Option<Epoch>,
    /// Heartbeat value that must be exceeded before trusting (set after
    /// start and after every error episode).
    need_beat_above: Option<i64>,
    /// The last heartbeat seen, and when it last moved.
    beat: Option<(i64, Instant)>,
}

/// The proxy's handle on the cache (one per process, shared by sessions).
pub struct Cache {
    pub cfg: CacheConfig,
    keys: Keys,
    conn: ConnectionManager,
    timeout: Duration,
    trust: RwLock<Trust>,
    /// In a Redis error episode (one warning per episode).
    failing: AtomicBool,
    /// Result bytes of fills in flight ([`MAX_FILL_BYTES_IN_FLIGHT`]).
    filling: std::sync::atomic::AtomicUsize,
    pub metrics: CacheMetrics,
    lookup: redis::Script,
    fill: redis::Script,
}

/// A Redis client that never blocks start-up: it connects on first use and
/// reconnects by itself, each call bounded by `timeout`.
pub fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, CacheError> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

impl Cache {
    /// A cache on `cfg.redis` (nothing is contacted yet).
    pub fn new(cfg: CacheConfig) -> Result<Cache, CacheError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let conn = connect(&cfg.redis, timeout)?;
        Ok(Cache {
            keys: Keys::new(&cfg.key_prefix),
            cfg,
            conn,
            timeout,
            trust: RwLock::new(Trust::default()),
            failing: AtomicBool::new(false),
            filling: std::sync::atomic::AtomicUsize::new(0),
            metrics: CacheMetrics::default(),
            lookup: redis::Script::new(LOOKUP),
            fill: redis::Script::new(FILL),
        })
    }

    /// Reserves `bytes` for a fill in flight; `false` when the bound is
    /// reached (the caller skips the fill). Release with [`Cache::filled`].
    pub fn reserve_fill(&self, bytes: usize) -> bool {
        let prev = self.filling.fetch_add(bytes, Ordering::Relaxed);
        if prev + bytes > MAX_FILL_BYTES_IN_FLIGHT {
            self.filling.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Releases what [`Cache::reserve_fill`] reserved.
    pub fn filled(&self, bytes: usize) {
        self.filling.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The epoch lookups and fills may use now, if any.
    pub fn epoch(&self) -> Option<Epoch> {
        self.trust.read().unwrap_or_else(|e| e.into_inner()).epoch.clone()
    }

    /// True while the cache is used.
    pub fn available(&self) -> bool {
        self.epoch().is_some()
    }

    /// A Redis call failed: stop using the cache until the watcher sees
    /// Redis and the invalidator healthy again.
    fn failed(&self, e: &CacheError) {
        self.metrics.redis_errors.inc();
        {
            let mut t = self.trust.write().unwrap_or_else(|e| e.into_inner());
            t.epoch = None;
            t.need_beat_above = None;
            t.beat = None;
        }
        self.metrics.available.set(0);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "the result cache's Redis failed; serving every read from the databases until it is back and the invalidator has confirmed its state");
        }
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CacheError::Redis(e)),
            Err(_) => Err(CacheError::Timeout(self.timeout)),
        }
    }

    /// Looks `hash` up for a statement reading `tables` (`(db, table)`);
    /// `floor`: the entry must reflect at least this replica `seq` (the
    /// session's own last write); `replica_seq`: the applied `seq` of the
    /// replica the read would go to (the invalidator must have recorded
    /// every change up to it). `None` when the cache is not usable now (the
    /// caller reads from the databases).
    pub async fn lookup(
        &self,
        hash: &str,
        tables: &[(String, String)],
        floor: u64,
        replica_seq: u64,
    ) -> Option<Lookup> {
        let epoch = self.epoch()?;
        let mut inv = self.lookup.prepare_invoke();
        inv.key(self.keys.epoch())
            .key(self.keys.entry(&epoch.id, hash))
            .key(self.keys.watermark(&epoch.id));
        for (db, t) in tables {
            inv.key(self.keys.table(&epoch.id, db, t));
        }
        inv.arg(&epoch.value).arg(floor).arg(replica_seq);
        let mut conn = self.conn.clone();
        let r: Result<redis::Value, CacheError> = self.bounded(inv.invoke_async(&mut conn)).await;
        tracing::debug!(hash, floor, replica_seq, answer = ?r.as_ref().map(|v| match v {
            redis::Value::Array(a) => a.first().cloned(),
            _ => None,
        }), "cache lookup");
        match r {
            Ok(redis::Value::Array(v)) => match v.as_slice() {
                [redis::Value::Int(1), redis::Value::BulkString(b)] => {
                    self.metrics.hits.inc();
                    Some(Lookup::Hit(b.clone()))
                }
                [redis::Value::Int(-1)] => {
                    self.metrics.misses.inc();
                    // The invalidator started a new epoch: follow it at the
                    // watcher's next look.
                    self.trust.write().unwrap_or_else(|e| e.into_inner()).epoch = None;
                    Some(Lookup::Miss)
                }
                [redis::Value::Int(_)] => {
                    self.metrics.misses.inc();
                    Some(Lookup::Miss)
                }
                other => {
                    self.failed(&CacheError::Protocol(format!("lookup returned {other:?}")));
                    None
                }
            },
            Ok(other) => {
                self.failed(&CacheError::Protocol(format!("lookup returned {other:?}")));
                None
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Stores `result`, read from a replica whose applied `seq` was `seq`
    /// before the statement ran, for a statement reading `tables`.
    pub async fn fill(&self, hash: &str, tables: &[(String, String)], seq: u64, result: &[u8]) -> Fill {
        let Some(epoch) = self.epoch() else {
            return Fill::Skipped;
        };
        if seq < epoch.base {
            // The replica may lack changes from before the epoch, which no
            // table key records.
            return Fill::Skipped;
        }
        let mut inv = self.fill.prepare_invoke();
        inv.key(self.keys.epoch()).key(self.keys.entry(&epoch.id, hash));
        for (db, t) in tables {
            inv.key(self.keys.table(&epoch.id, db, t));
        }
        inv.arg(&epoch.value)
            .arg(seq)
            .arg(self.cfg.ttl_secs * 1000)
            .arg(result);
        let mut conn = self.conn.clone();
        let r = self.bounded(inv.invoke_async::<i64>(&mut conn)).await;
        tracing::debug!(hash, seq, bytes = result.len(), answer = ?r, "cache fill");
        match r {
            Ok(1) => {
                self.metrics.fills.inc();
                Fill::Stored
            }
            Ok(0) => {
                self.metrics.fills_refused_stale.inc();
                Fill::RefusedStale
            }
            Ok(_) => Fill::Skipped,
            Err(e) => {
                self.failed(&e);
                Fill::Skipped
            }
        }
    }

    /// One look at the epoch and the invalidator's heartbeat (the watcher's
    /// step; see the module docs for when the cache is trusted).
    pub async fn watch_once(&self) {
        let mut conn = self.conn.clone();
        let r: Result<(Option<String>, Option<i64>), CacheError> = self
            .bounded(
                redis::cmd("MGET")
                    .arg(self.keys.epoch())
                    .arg(self.keys.beat())
                    .query_async(&mut conn),
            )
            .await;
        let (epoch, beat) = match r {
            Ok(v) => v,
            Err(e) => {
                self.failed(&e);
                return;
            }
        };
        let now = Instant::now();
        let mut t = self.trust.write().unwrap_or_else(|e| e.into_inner());
        let beat = beat.unwrap_or(0);
        let moved = match t.beat {
            Some((b, _)) if b == beat => false,
            _ => {
                t.beat = Some((beat, now));
                true
            }
        };
        let need = *t.need_beat_above.get_or_insert(beat);
        let fresh = t
            .beat
            .is_some_and(|(_, at)| now.duration_since(at) < BEAT_TIMEOUT);
        let epoch = epoch.as_deref().and_then(Epoch::parse);
        let usable = beat > need && fresh && epoch.is_some();
        let was = t.epoch.is_some();
        t.epoch = if usable { epoch } else { None };
        drop(t);
        if usable {
            self.metrics.available.set(1);
            if self.failing.swap(false, Ordering::Relaxed) || !was {
                tracing::info!(
                    "the result cache is in use (Redis answers, the invalidator confirmed its state)"
                );
            }
        } else {
            self.metrics.available.set(0);
            if was && !moved && !fresh && !self.failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the cache invalidator's heartbeat stopped; serving every read from the databases until it is back"
                );
            }
        }
    }

    /// Runs [`Cache::watch_once`] every [`WATCH_EVERY`] forever (abort the task to stop).
    pub async fn watch(self: Arc<Self>) {
        loop {
            self.watch_once().await;
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }
}

/// What keys a cached result: everything that changes the bytes of the
/// answer besides the data.
#[derive(Clone, Copy)]
pub struct KeyParts<'a> {
    /// The session's current database.
    pub db: Option<&'a str>,
    /// The normalized statement text ([`normalize`]).
    pub statement: &'a [u8],
    /// `true` for `COM_STMT_EXECUTE` (binary rows), `false` for `COM_QUERY`.
    pub binary: bool,
    /// Parameter types and values of an execution (empty for text).
    pub params: &'a [u8],
    /// Client capability flags that shape the reply (EOF vs OK, …).
    pub caps: u32,
    /// The connection collation: character set of results and metadata.
    pub collation: u8,
    /// The backend account the replica connection logs in with.
    pub account: u16,
    /// Session settings replayed on the connection (`SET NAMES`, `time_zone`, `sql_mode` …).
    pub settings: &'a [bytes::Bytes],
}

impl KeyParts<'_> {
    /// SHA-256 of every part, length-prefixed (no two different part lists
    /// hash the same input), as hex.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        let mut part = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        part(b"dbmux-cache-1");
        match self.db {
            Some(db) => part(&[&[1u8][..], db.as_bytes()].concat()),
            None => part(&[0]),
        }
        part(self.statement);
        part(&[self.binary as u8]);
        part(self.params);
        part(&self.caps.to_le_bytes());
        part(&[self.collation]);
        part(&self.account.to_le_bytes());
        part(&(self.settings.len() as u64).to_le_bytes());
        for s in self.settings {
            part(s);
        }
        hex::encode(h.finalize())
    }
}

/// The statement text as a key: leading and trailing whitespace and a final
/// `;` removed, and outside quotes every run of whitespace made one space (a
/// newline if the run holds one, since a newline ends a `--`/`#` comment).
/// Two texts with one normalization read alike on the server.
pub fn normalize(sql: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sql.len());
    let mut quote: Option<u8> = None;
    let mut i = 0;
    let mut space: Option<u8> = None;
    while i < sql.len() {
        let c = sql[i];
        if let Some(q) = quote {
            out.push(c);
            if c == b'\\' && q != b'`' {
                if let Some(&n) = sql.get(i + 1) {
                    out.push(n);
                    i += 1;
                }
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'\x0b' | b'\x0c') {
            space = Some(if c == b'\n' || space == Some(b'\n') {
                b'\n'
            } else {
                b' '
            });
            i += 1;
            continue;
        }
        if let Some(s) = space.take() {
            if !out.is_empty() {
                out.push(s);
            }
        }
        if matches!(c, b'\'' | b'"' | b'`') {
            quote = Some(c);
        }
        out.push(c);
        i += 1;
    }
    if quote.is_none() {
        while out.last() == Some(&b';') {
            out.pop();
            while out.last().is_some_and(|c| c.is_ascii_whitespace()) {
                out.pop();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_keeps_meaning() {
        let n = |s: &str| String::from_utf8(normalize(s.as_bytes())).unwrap();
        assert_eq!(n("  SELECT  *\tFROM t ;  "), "SELECT * FROM t");
        assert_eq!(n("SELECT 'a  b' FROM t"), "SELECT 'a  b' FROM t");
        assert_eq!(
            n("SELECT 'it''s  x', \"q \\\"  r\" FROM `a  b`"),
            "SELECT 'it''s  x', \"q \\\"  r\" FROM `a  b`"
        );
        // A newline ends a comment: kept, so these two stay apart.
        assert_eq!(n("SELECT a -- c\n  FROM t"), "SELECT a -- c\nFROM t");
        assert_ne!(n("SELECT a -- c\nFROM t"), n("SELECT a -- c FROM t"));
        assert_eq!(n("SELECT ';'"), "SELECT ';'");
    }

    #[test]
    fn every_key_part_counts() {
        let settings = [bytes::Bytes::from_static(b"\x03SET NAMES latin1")];
        let base = KeyParts {
            db: Some("app"),
            statement: b"SELECT * FROM t",
            binary: false,
            params: b"",
            caps: 1,
            collation: 45,
            account: 0,
            settings: &[],
        };
        let h = base.hash();
        let variants = [
            KeyParts { db: None, ..base },
            KeyParts {
                db: Some("app2"),
                ..base
            },
            KeyParts {
                statement: b"SELECT * FROM u",
                ..base
            },
            KeyParts { binary: true, ..base },
            KeyParts {
                params: b"\x01",
                ..base
            },
            KeyParts { caps: 3, ..base },
            KeyParts { collation: 8, ..base },
            KeyParts { account: 1, ..base },
            KeyParts {
                settings: &settings,
                ..base
            },
        ];
        let mut all = vec![h.clone()];
        for v in variants {
            let x = v.hash();
            assert!(!all.contains(&x));
            all.push(x);
        }
        assert_eq!(base.hash(), h);
    }

    #[test]
    fn keys_and_epochs() {
        let k = Keys::new("dbmux");
        assert_eq!(k.table("e1", "app", "t"), "dbmux:e1:t:`app`.`t`");
        assert_ne!(k.table("e1", "a.b", "c"), k.table("e1", "a", "b.c"));
        assert_ne!(k.table("e1", "a`", "b"), k.table("e1", "a", "`b"));
        let e = Epoch::parse("abc123:42").unwrap();
        assert_eq!((e.id.as_str(), e.base), ("abc123", 42));
        assert!(Epoch::parse("x").is_none());
        assert!(Epoch::parse("a:b:c").is_none());
        assert!(Epoch::parse(":1").is_none());
    }
}
