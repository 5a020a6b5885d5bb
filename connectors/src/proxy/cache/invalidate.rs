//! The invalidator: follows the log and records, per table, the newest `seq`
//! that changed it, so the proxy never serves a cached result older than a
//! change it can know of (see the module docs of [`super`] and
//! `docs/cache.md`).
//!
//! # Epochs instead of a checkpoint
//! The invalidator keeps no checkpoint. It starts a new epoch at the log's
//! head (`base`), which makes every entry of earlier epochs unreachable, and
//! follows the log from there. It starts another epoch whenever Redis shows it
//! lost writes (the epoch key is gone or differs, or the watermark it wrote
//! is not there: a restart, a failover, a restore of an old snapshot), and
//! when the log truncated events it had not read. Redis trouble is retried
//! with backoff without moving past any change it has not recorded.
//!
//! # Heartbeat
//! Every [`BEAT_EVERY`] it checks, atomically, that the epoch and its
//! watermark are what it wrote, and increments `<prefix>:beat`. The proxy
//! serves hits only while that counter moves, and after a Redis error only
//! once it has moved since: so it never trusts Redis state the invalidator
//! has not checked.

use super::{connect, CacheConfig, CacheError, Epoch, Keys};
use pipeline::event::Transaction;
use pipeline::log::{Log, LogError, LogReader};
use pipeline::retry::Backoff;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use std::time::Instant;

/// Counter: table invalidations written to Redis (one per table per batch).
pub const INVALIDATIONS: &str = "dbmux_cache_invalidations";
/// Gauge: the last log `seq` whose invalidation is recorded in Redis.
pub const INVALIDATED_SEQ: &str = "dbmux_cache_invalidated_seq";
/// Histogram (seconds): commit on the source → invalidation recorded in Redis.
pub const INVALIDATION_LAG_SECONDS: &str = "dbmux_cache_invalidation_lag_seconds";
/// Counter: epochs started (start-up, Redis lost writes, log truncated).
pub const EPOCHS: &str = "dbmux_cache_epochs";
/// Counter: Redis calls of the invalidator that failed or timed out.
pub const INVALIDATOR_REDIS_ERRORS: &str = "dbmux_cache_invalidator_redis_errors";

/// How often the invalidator checks Redis and beats.
pub const BEAT_EVERY: Duration = Duration::from_millis(100);
/// Events read per batch.
const BATCH_EVENTS: usize = 10_000;
/// Timeout of one invalidator call to Redis.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct InvalidatorMetrics {
    pub invalidations: Counter,
    pub invalidated_seq: Gauge,
    pub lag: Histogram,
    pub epochs: Counter,
    pub redis_errors: Counter,
}

impl Default for InvalidatorMetrics {
    fn default() -> Self {
        InvalidatorMetrics {
            invalidations: Counter::default(),
            invalidated_seq: Gauge::default(),
            lag: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            epochs: Counter::default(),
            redis_errors: Counter::default(),
        }
    }
}

impl InvalidatorMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            INVALIDATIONS,
            "Table invalidations recorded in Redis (one per table per batch)",
            self.invalidations.clone(),
        );
        registry.register(
            INVALIDATED_SEQ,
            "The last log seq whose invalidation is recorded in Redis",
            self.invalidated_seq.clone(),
        );
        registry.register(
            INVALIDATION_LAG_SECONDS,
            "Source commit to invalidation recorded in Redis",
            self.lag.clone(),
        );
        registry.register(
            EPOCHS,
            "Cache epochs started (start-up, Redis lost writes, log truncated)",
            self.epochs.clone(),
        );
        registry.register(
            INVALIDATOR_REDIS_ERRORS,
            "Redis calls of the invalidator that failed or timed out (retried)",
            self.redis_errors.clone(),
        );
    }
}

/// Raises each table's last-changed seq, and the watermark, if the epoch
/// and watermark are what this invalidator wrote (-1 / -2 otherwise).
const INVALIDATE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -2 end
for i = 3, #KEYS do
  local s = ARGV[i + 1]
  local t = redis.call('GET', KEYS[i])
  if (not t) or tonumber(t) < tonumber(s) then redis.call('SET', KEYS[i], s) end
end
redis.call('SET', KEYS[2], ARGV[3])
return 1
";

/// The heartbeat: checks epoch and watermark, then counts.
const BEAT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -2 end
return redis.call('INCR', KEYS[3])
";

/// Starts an epoch: its value, its watermark (= base), a beat.
const NEW_EPOCH: &str = r"
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('INCR', KEYS[3])
return 1
";

struct Invalidator {
    keys: Keys,
    conn: redis::aio::ConnectionManager,
    metrics: InvalidatorMetrics,
    epoch: Option<Epoch>,
    /// The last seq recorded in Redis (in this epoch: its watermark).
    done: u64,
    failing: bool,
}

impl Invalidator {
    async fn call<T: redis::FromRedisValue>(
        &mut self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, CacheError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CacheError::Redis(e)),
            Err(_) => Err(CacheError::Timeout(REDIS_TIMEOUT)),
        }
    }

    fn failed(&mut self, e: &CacheError) {
        self.metrics.redis_errors.inc();
        if !self.failing {
            self.failing = true;
            tracing::warn!(error = %e, "the cache invalidator cannot reach Redis; retrying (the proxy serves from the databases meanwhile)");
        }
    }

    fn recovered(&mut self) {
        if self.failing {
            self.failing = false;
            tracing::info!("the cache invalidator reaches Redis again");
        }
    }

    /// A new epoch whose base is `base` (every change up to it is covered by
    /// the base rule; later ones are recorded per table).
    async fn new_epoch(&mut self, base: u64, why: &str) -> Result<(), CacheError> {
        let id = format!("{:016x}", rand::random::<u64>());
        let epoch = Epoch::parse(&format!("{id}:{base}")).expect("well-formed");
        let script = redis::Script::new(NEW_EPOCH);
        let mut inv = script.prepare_invoke();
        inv.key(self.keys.epoch())
            .key(self.keys.watermark(&id))
            .key(self.keys.beat())
            .arg(&epoch.value)
            .arg(base);
        self.call::<i64>(inv).await?;
        tracing::info!(epoch = %id, base, reason = why, "cache epoch started: earlier entries are never served");
        self.metrics.epochs.inc();
        self.metrics.invalidated_seq.set(base as i64);
        self.epoch = Some(epoch);
        self.done = base;
        Ok(())
    }

    /// Records `txns` (consecutive, starting after `self.done`).
    async fn record(&mut self, txns: &[Transaction]) -> Result<(), CacheError> {
        let Some(last) = txns.last().map(|t| t.last_seq()) else {
            return Ok(());
        };
        let mut tables: BTreeMap<(String, String), u64> = BTreeMap::new();
        for e in txns.iter().flat_map(|t| &t.events) {
            let id = &e.table.id;
            let s = tables.entry((id.schema.clone(), id.name.clone())).or_default();
            *s = (*s).max(e.seq);
        }
        let Some(epoch) = self.epoch.clone() else {
            // Every change so far is below the new base.
            return self.new_epoch(last, "start").await;
        };
        let script = redis::Script::new(INVALIDATE);
        let mut inv = script.prepare_invoke();
        inv.key(self.keys.epoch()).key(self.keys.watermark(&epoch.id));
        for (db, t) in tables.keys() {
            inv.key(self.keys.table(&epoch.id, db, t));
        }
        inv.arg(&epoch.value).arg(self.done).arg(last);
        for s in tables.values() {
            inv.arg(*s);
        }
        if self.call::<i64>(inv).await? != 1 {
            // Redis lost what this invalidator wrote: everything up to
            // `last` becomes the new epoch's base.
            return self
                .new_epoch(last, "Redis lost the epoch or its watermark")
                .await;
        }
        self.done = last;
        self.metrics.invalidations.inc_by(tables.len() as u64);
        self.metrics.invalidated_seq.set(last as i64);
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        for t in txns {
            if let Some(e) = t.events.last() {
                let lag = (now_us - e.txn.commit_ts_us).max(0) as f64 / 1e6;
                self.metrics.lag.observe(lag);
            }
        }
        Ok(())
    }

    async fn beat(&mut self) -> Result<(), CacheError> {
        let Some(epoch) = self.epoch.clone() else {
            return Ok(());
        };
        let script = redis::Script::new(BEAT);
        let mut inv = script.prepare_invoke();
        inv.key(self.keys.epoch())
            .key(self.keys.watermark(&epoch.id))
            .key(self.keys.beat())
            .arg(&epoch.value)
            .arg(self.done);
        let r: i64 = self.call(inv).await?;
        if r < 0 {
            let done = self.done;
            self.new_epoch(done, "Redis lost the epoch or its watermark")
                .await?;
        }
        Ok(())
    }
}

/// Follows `log` and records every change's table in Redis until `stop`
/// resolves. Redis errors are retried with backoff; log errors are returned
/// (the caller decides, as for an applier).
pub async fn run<L: Log>(
    log: L,
    cfg: CacheConfig,
    metrics: InvalidatorMetrics,
    stop: impl Future<Output = ()>,
) -> Result<(), LogError> {
    tokio::pin!(stop);
    let conn = connect(&cfg.redis, REDIS_TIMEOUT).map_err(|e| LogError::Backend(format!("cache: {e}")))?;
    let mut inv = Invalidator {
        keys: Keys::new(&cfg.key_prefix),
        conn,
        metrics,
        epoch: None,
        done: 0,
        failing: false,
    };
    let mut reader = log.reader("dbmux-cache-invalidator").await?;
    let mut head = log.subscribe();
    // The authoritative head: every change up to it is below the first base.
    let mut next = log.last().await?.map_or(0, |(s, _)| s) + 1;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut pending: Vec<Transaction> = Vec::new();
    let mut last_beat = Instant::now();
    loop {
        // The heartbeat also while busy: the proxy stops serving hits when
        // it stalls.
        if inv.epoch.is_some() && last_beat.elapsed() >= BEAT_EVERY {
            last_beat = Instant::now();
            if let Err(e) = inv.beat().await {
                inv.failed(&e);
            }
        }
        // Redis first: nothing is read past what is not recorded yet.
        let r = if inv.epoch.is_none() {
            inv.new_epoch(next - 1, "start").await
        } else if !pending.is_empty() {
            inv.record(&pending).await
        } else {
            Ok(())
        };
        match r {
            Ok(()) => {
                pending.clear();
                inv.recovered();
                backoff.reset();
            }
            Err(e) => {
                inv.failed(&e);
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = &mut stop => return Ok(()),
                }
                continue;
            }
        }
        if pending.is_empty() {
            match reader.read(next, BATCH_EVENTS).await {
                Ok(txns) if !txns.is_empty() => {
                    next = txns.last().map_or(next, |t| t.last_seq() + 1);
                    pending = txns;
                    continue;
                }
                Ok(_) => {}
                Err(LogError::Truncated { first, .. }) => {
                    // Changes were deleted before this invalidator read them:
                    // nothing from before the log's new start is trusted.
                    let head_now = log.last().await?.map_or(first.saturating_sub(1), |(s, _)| s);
                    tracing::warn!(
                        from = next,
                        first,
                        "the log was truncated past the cache invalidator; starting a new epoch"
                    );
                    inv.epoch = None;
                    next = head_now + 1;
                    continue;
                }
                Err(e) if matches!(e, LogError::Unavailable(_)) => {
                    tracing::warn!(error = %e, "the cache invalidator cannot read the log; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = &mut stop => return Ok(()),
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        tokio::select! {
            r = head.changed() => {
                if r.is_err() {
                    // No writer in this process (the log is followed): poll.
                    tokio::time::sleep(BEAT_EVERY / 4).await;
                }
            }
            () = tokio::time::sleep_until((last_beat + BEAT_EVERY).into()) => {}
            () = &mut stop => return Ok(()),
        }
    }
}
