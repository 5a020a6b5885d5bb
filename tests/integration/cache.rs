//! The Redis result cache in the front door, over the real pipeline: real
//! MariaDB master and replica, real Redis, `dbmux run` with capture, the
//! embedded log, the applier, the proxy and the invalidator.

use crate::support::dbmux::{free_port, Dbmux, Replicas};
use crate::support::{mysql_url, unique_name, wait_for, with_db};
use mysql_async::prelude::Queryable;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CATCH_UP: Duration = Duration::from_secs(120);
const HASHES: &str = "mysql_native_password = \"*F142931D9296BB66D4600D47418DBC1475D27D29\"\n\
                      caching_sha2_password = \"6681bbfe12153c1b4a0268cf4733a0a3021ff47751fafc3c0a4bdae5a0a89db6\"\n";

fn shared_redis() -> String {
    crate::support::env("DBMUX_TEST_REDIS_URL")
}

/// `dbmux run` on database `db` (tables `t`, `u` cached, `x` not) with the
/// proxy on a free port and the cache on `redis`.
struct Cached {
    dbmux: Dbmux,
    port: u16,
    db: String,
}

impl Cached {
    async fn start(prefix: &str, redis: &str, rows: i32) -> Cached {
        let db = unique_name(prefix);
        let mut c = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
        c.query_drop(format!("CREATE DATABASE `{db}`")).await.unwrap();
        for ddl in [
            "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL, pad VARCHAR(40) NOT NULL DEFAULT 'p')",
            "CREATE TABLE u (id INT PRIMARY KEY, t_id INT NOT NULL, w VARCHAR(20) NOT NULL, KEY (t_id))",
            "CREATE TABLE x (id INT PRIMARY KEY)",
        ] {
            c.query_drop(format!("USE `{db}`; {ddl}")).await.unwrap();
        }
        c.disconnect().await.unwrap();
        let port = free_port();
        let extra = format!(
            "\n[proxy]\nlisten = \"127.0.0.1:{port}\"\nmaster = \"{}\"\nhealth_interval_ms = 50\n\
             [[proxy.replicas]]\nname = \"mariadb\"\nurl = \"{}\"\n\
             [[proxy.users]]\nname = \"app\"\n{HASHES}\
             [[proxy.users]]\nname = \"eventual\"\nconsistency = \"eventual\"\n{HASHES}\
             [proxy.cache]\nredis = \"{redis}\"\ntables = [\"{db}.t\", \"{db}.u\"]\nkey_prefix = \"{db}\"\ntimeout_ms = 200\n",
            with_db(&mysql_url(), ""),
            with_db(&crate::support::mysql_replica_url(), "")
        );
        let mut dbmux = Dbmux::new(
            &db,
            Replicas {
                mariadb: true,
                postgres: false,
            },
            &extra,
        );
        dbmux.start();
        dbmux.wait_capturing().await;
        let me = Cached { dbmux, port, db };
        // Rows written after capture started, so the replica gets them.
        let mut c = me.direct_master().await;
        if rows > 0 {
            let values: Vec<String> = (1..=rows).map(|i| format!("({i}, {i})")).collect();
            c.query_drop(format!("INSERT INTO t (id, v) VALUES {}", values.join(",")))
                .await
                .unwrap();
            let values: Vec<String> = (1..=rows.min(100))
                .map(|i| format!("({i}, {i}, 'w{i}')"))
                .collect();
            c.query_drop(format!("INSERT INTO u VALUES {}", values.join(",")))
                .await
                .unwrap();
        }
        c.query_drop("INSERT INTO x VALUES (1)").await.unwrap();
        c.disconnect().await.unwrap();
        let mut me = me;
        let events = if rows > 0 { rows + rows.min(100) } else { 0 } + 1;
        me.dbmux.wait_caught_up(events as u64, CATCH_UP).await;
        me.wait_available(true).await;
        me
    }

    fn url(&self, user: &str) -> String {
        format!(
            "mysql://{user}:app-password@127.0.0.1:{}/{}?prefer_socket=false",
            self.port, self.db
        )
    }

    async fn conn(&self, user: &str) -> mysql_async::Conn {
        mysql_async::Conn::from_url(self.url(user)).await.unwrap()
    }

    async fn direct_master(&self) -> mysql_async::Conn {
        mysql_async::Conn::from_url(with_db(&mysql_url(), &self.db))
            .await
            .unwrap()
    }

    async fn head(&self) -> u64 {
        self.dbmux.status().await.unwrap()["log"]["last_seq"]
            .as_u64()
            .unwrap()
    }

    /// Waits until the log holds at least `min` events: capture has appended
    /// a write (the log holds only this test's database).
    async fn wait_captured(&self, min: u64) {
        wait_for(&format!("capture to reach seq {min}"), CATCH_UP, || async {
            (self.head().await >= min).then_some(())
        })
        .await
    }

    /// `/status`'s `proxy.cache.<field>`.
    async fn cache_stat(&self, field: &str) -> u64 {
        let st = self.dbmux.status().await.unwrap();
        let v = &st["proxy"]["cache"][field];
        v.as_u64()
            .unwrap_or_else(|| v.as_bool().map(u64::from).unwrap_or(0))
    }

    async fn wait_available(&self, available: bool) {
        wait_for(
            &format!(
                "the cache to be {}",
                if available { "in use" } else { "out of use" }
            ),
            Duration::from_secs(30),
            || async {
                let st = self.dbmux.status().await?;
                (st["proxy"]["cache"]["available"].as_bool() == Some(available)).then_some(())
            },
        )
        .await
    }

    /// A metric's value from `/metrics` (first sample of that name).
    async fn metric(&self, name: &str) -> f64 {
        let text = self.dbmux.admin_get("/metrics").await.unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the invalidator has recorded everything in the log now.
    async fn wait_invalidated(&self) {
        let head = self.head().await;
        wait_for("the invalidator to record the log head", CATCH_UP, || async {
            (self.metric("dbmux_cache_invalidated_seq").await >= head as f64).then_some(())
        })
        .await
    }
}

/// Rows as text, for comparing answers.
fn rows(r: Vec<mysql_async::Row>) -> Vec<String> {
    r.into_iter().map(|row| format!("{:?}", row.unwrap())).collect()
}

/// Runs `sql` through `c` (text protocol, or prepared with `params`) and
/// returns its rows as text.
async fn run(c: &mut mysql_async::Conn, sql: &str, params: Option<Vec<mysql_async::Value>>) -> Vec<String> {
    match params {
        None => rows(c.query(sql).await.unwrap()),
        Some(p) => rows(c.exec(sql, p).await.unwrap()),
    }
}

/// Runs `sql` until one execution is answered from the cache (10 s at most).
async fn until_hit(
    p: &Cached,
    c: &mut mysql_async::Conn,
    sql: &str,
    params: Option<Vec<mysql_async::Value>>,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = p.cache_stat("hits").await;
        let r = run(c, sql, params.clone()).await;
        if p.cache_stat("hits").await > before {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} was never answered from the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each statement class of docs/cache.md, routed as documented: cacheable
/// reads are answered from the cache (with the master's answer), the others
/// never are, a transaction never uses an entry, and a write is seen at once
/// by its session and never hidden by an entry afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_routes_each_statement_class_as_documented() {
    let p = Cached::start("cache_route", &shared_redis(), 200).await;
    let mut c = p.conn("app").await;
    let mut m = p.direct_master().await;
    let int = |i: i64| Some(vec![mysql_async::Value::Int(i)]);
    let classes: Vec<(&str, &str, Option<Vec<mysql_async::Value>>, bool)> = vec![
        (
            "primary-key lookup",
            "SELECT v, pad FROM t WHERE id = 1",
            None,
            true,
        ),
        ("prepared lookup", "SELECT v FROM t WHERE id = ?", int(2), true),
        (
            "range",
            "SELECT id, v FROM t WHERE id BETWEEN 10 AND 109 ORDER BY id",
            None,
            true,
        ),
        (
            "aggregate",
            "SELECT COUNT(*), SUM(v), MAX(pad) FROM t",
            None,
            true,
        ),
        (
            "join",
            "SELECT t.v, u.w FROM t JOIN u ON u.t_id = t.id WHERE t.id = 3",
            None,
            true,
        ),
        (
            "subquery",
            "SELECT v FROM t WHERE id IN (SELECT t_id FROM u WHERE w = 'w4')",
            None,
            true,
        ),
        ("NOW()", "SELECT v, NOW() FROM t WHERE id = 1", None, false),
        ("RAND()", "SELECT v FROM t ORDER BY RAND() LIMIT 1", None, false),
        ("UUID()", "SELECT UUID(), v FROM t WHERE id = 1", None, false),
        (
            "CURRENT_USER()",
            "SELECT CURRENT_USER(), v FROM t WHERE id = 1",
            None,
            false,
        ),
        (
            "DATABASE()",
            "SELECT DATABASE(), v FROM t WHERE id = 1",
            None,
            false,
        ),
        (
            "system variable",
            "SELECT @@sql_mode, v FROM t WHERE id = 1",
            None,
            false,
        ),
        (
            "FOR UPDATE",
            "SELECT v FROM t WHERE id = 5 FOR UPDATE",
            None,
            false,
        ),
        (
            "LOCK IN SHARE MODE",
            "SELECT v FROM t WHERE id = 6 LOCK IN SHARE MODE",
            None,
            false,
        ),
        (
            "SQL_NO_CACHE",
            "SELECT SQL_NO_CACHE v FROM t WHERE id = 7",
            None,
            false,
        ),
        (
            "nocache hint",
            "SELECT v FROM t WHERE id = 8 /* dbmux:nocache */",
            None,
            false,
        ),
        ("table not configured", "SELECT COUNT(*) FROM x", None, false),
        (
            "system schema",
            "SELECT COUNT(*) > 0 FROM information_schema.tables WHERE table_schema = DATABASE()",
            None,
            false,
        ),
        ("no table", "SELECT 1 + 1", None, false),
    ];
    for (i, (class, sql, params, cacheable)) in classes.into_iter().enumerate() {
        let expected = run(&mut m, sql, params.clone()).await;
        let hits0 = p.cache_stat("hits").await;
        // Run it until a fill could have landed: a sentinel of this round (a
        // cacheable statement of its own) is run until it hits, and fills
        // are sent in order.
        let sentinel = format!("SELECT v FROM t WHERE id = {}", 1000 + i);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(run(&mut c, sql, params.clone()).await);
        }
        run(&mut c, &sentinel, None).await;
        until_hit(&p, &mut c, &sentinel, None).await;
        got.push(run(&mut c, sql, params.clone()).await);
        let hits = p.cache_stat("hits").await - hits0;
        if class == "RAND()" {
            // Any row of the table, whatever it is.
            assert_eq!(got[0].len(), 1);
        } else if !["NOW()", "UUID()", "CURRENT_USER()"].contains(&class) {
            for g in &got {
                assert_eq!(
                    g, &expected,
                    "{class}: the proxy's answer differs from the master's"
                );
            }
        }
        if cacheable {
            // Answered from the cache (on a loaded machine the fill may land
            // late: retried), with the master's answer.
            let _ = hits;
            let got = until_hit(&p, &mut c, sql, params.clone()).await;
            assert_eq!(
                got, expected,
                "{class}: the cached answer differs from the master's"
            );
        } else {
            // Only the sentinel's hit.
            assert_eq!(
                hits, 1,
                "{class} ({sql}): not cacheable, yet answered from the cache"
            );
            // The statement itself again: still not a hit.
            let before = p.cache_stat("hits").await;
            run(&mut c, sql, params.clone()).await;
            assert_eq!(
                p.cache_stat("hits").await,
                before,
                "{class} ({sql}) was answered from the cache"
            );
        }
    }

    // A user variable pins the session to the master: never the cache.
    let mut pinned = p.conn("app").await;
    pinned.query_drop("SET @id = 1").await.unwrap();
    let before = p.cache_stat("hits").await;
    for _ in 0..3 {
        run(&mut pinned, "SELECT v, pad FROM t WHERE id = 1", None).await;
    }
    assert_eq!(
        p.cache_stat("hits").await,
        before,
        "a pinned session used the cache"
    );

    // Inside a transaction the entry filled above is not used.
    let before = p.cache_stat("hits").await;
    c.query_drop("BEGIN").await.unwrap();
    run(&mut c, "SELECT v, pad FROM t WHERE id = 1", None).await;
    c.query_drop("COMMIT").await.unwrap();
    c.query_drop("SET autocommit = 0").await.unwrap();
    run(&mut c, "SELECT v, pad FROM t WHERE id = 1", None).await;
    c.query_drop("SET autocommit = 1").await.unwrap();
    assert_eq!(
        p.cache_stat("hits").await,
        before,
        "a transaction read a cached entry"
    );
    // Outside again: answered from the cache.
    until_hit(&p, &mut c, "SELECT v, pad FROM t WHERE id = 1", None).await;

    // A write: its session reads it at once (read-your-writes), and once
    // replicated, every session gets the new row, from the cache too.
    let mut w = p.conn("app").await;
    let h0 = p.head().await;
    w.query_drop("UPDATE t SET v = 5000 WHERE id = 1").await.unwrap();
    assert_eq!(
        run(&mut w, "SELECT v, pad FROM t WHERE id = 1", None).await,
        run(&mut m, "SELECT v, pad FROM t WHERE id = 1", None).await
    );
    p.wait_captured(h0 + 1).await;
    let head = p.head().await;
    let mut pp = p;
    pp.dbmux.wait_caught_up(head, CATCH_UP).await;
    pp.wait_invalidated().await;
    let expected = run(&mut m, "SELECT v, pad FROM t WHERE id = 1", None).await;
    let mut e = pp.conn("eventual").await;
    let hits0 = pp.cache_stat("hits").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Caught up and invalidated: never the old row again.
        assert_eq!(
            run(&mut e, "SELECT v, pad FROM t WHERE id = 1", None).await,
            expected
        );
        if pp.cache_stat("hits").await > hits0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new row was never served from the cache"
        );
    }
    println!("cache routing: every statement class routed as documented");
}

/// Holds the replica's applier: its `dbmux_offsets` row locked `FOR UPDATE`
/// in a transaction of this connection until [`Hold::release`].
struct Hold(Option<mysql_async::Conn>);

impl Hold {
    async fn new(db: &str) -> Hold {
        let mut r = mysql_async::Conn::from_url(crate::support::mysql_replica_url())
            .await
            .unwrap();
        r.query_drop("BEGIN").await.unwrap();
        let _: Option<u64> = r
            .exec_first(
                "SELECT seq FROM dbmux.dbmux_offsets WHERE consumer = ? FOR UPDATE",
                (format!("{db}/mariadb"),),
            )
            .await
            .unwrap();
        Hold(Some(r))
    }
    async fn release(mut self) {
        if let Some(mut r) = self.0.take() {
            r.query_drop("COMMIT").await.unwrap();
            r.disconnect().await.unwrap();
        }
    }
}

/// The classic race, made to happen in order: an entry is cached; the
/// replica is held back; a write commits and the invalidator records it;
/// a reader then misses (the entry is stale), reads the old row from the
/// lagging replica and tries to store it — and the fill is refused. Once the
/// replica has the write, only the new row is ever served, from the cache
/// too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_refuses_a_fill_older_than_a_recorded_change() {
    let mut p = Cached::start("cache_stale", &shared_redis(), 10).await;
    let q = "SELECT v FROM t WHERE id = 1";
    let mut e = p.conn("eventual").await;
    let old = until_hit(&p, &mut e, q, None).await;
    let hold = Hold::new(&p.db).await;
    let mut m = p.direct_master().await;
    let h0 = p.head().await;
    m.query_drop("UPDATE t SET v = 100 WHERE id = 1").await.unwrap();
    let new = run(&mut m, q, None).await;
    assert_ne!(old, new);
    p.wait_captured(h0 + 1).await;
    p.wait_invalidated().await;
    let (hits0, refused0) = (
        p.cache_stat("hits").await,
        p.cache_stat("fills_refused_stale").await,
    );
    // The replica still has the old row: an eventual read gets it from
    // there (as without a cache), but never from the cache, and its fill is
    // refused.
    for _ in 0..3 {
        assert_eq!(run(&mut e, q, None).await, old);
    }
    wait_for("a stale fill to be refused", Duration::from_secs(10), || async {
        (p.cache_stat("fills_refused_stale").await > refused0).then_some(())
    })
    .await;
    assert_eq!(p.cache_stat("hits").await, hits0, "a stale entry was served");
    hold.release().await;
    let head = p.head().await;
    p.dbmux.wait_caught_up(head, CATCH_UP).await;
    // The proxy sees the replica's new position within a health interval;
    // from then on, every read is the new row, and it gets cached.
    let got = until_hit(&p, &mut e, q, None).await;
    assert_eq!(got, new);
    println!(
        "stale fills refused: {}",
        p.cache_stat("fills_refused_stale").await - refused0
    );
}

/// Writers and cached readers on the same rows through the proxy, with
/// replication held back at random; after every phase the replica catches
/// up and every read must be the committed row. Throughout: no read shows a
/// value never committed, a writer always reads its own write, and the
/// cache must have answered reads (or the test proves nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_race_writers_and_cached_readers_never_read_stale() {
    const ROWS: i64 = 8;
    const PHASES: usize = 3;
    const PHASE: Duration = Duration::from_secs(4);
    let mut p = Cached::start("cache_race", &shared_redis(), ROWS as i32).await;
    let p_db = p.db.clone();
    // committed[id] = the newest value committed for row id (values only grow).
    let committed: Arc<Vec<AtomicU64>> = Arc::new((0..=ROWS).map(|i| AtomicU64::new(i as u64)).collect());
    let violations = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reads = Arc::new(AtomicU64::new(0));
    // Every UPDATE changes its row (values only grow): one event each.
    let updates = Arc::new(AtomicU64::new(0));
    let initial_events = p.head().await;
    for phase in 0..PHASES {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        // Replication held back at random.
        tasks.push(tokio::spawn({
            let (stop, db) = (stop.clone(), p_db.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let hold = Hold::new(&db).await;
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 400)).await;
                    hold.release().await;
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 100)).await;
                }
            }
        }));
        // Two writers, each owning half of the rows, reading their own writes.
        for w in 0..2i64 {
            let (stop, committed, violations, url, updates) = (
                stop.clone(),
                committed.clone(),
                violations.clone(),
                p.url("app"),
                updates.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut c = mysql_async::Conn::from_url(url).await.unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let id = 1 + w + 2 * (n as i64 % (ROWS / 2));
                    let v = committed[id as usize].load(Ordering::SeqCst) + 1;
                    // Raised before the write: readers check against the
                    // newest value that may be committed by then.
                    committed[id as usize].store(v, Ordering::SeqCst);
                    c.exec_drop("UPDATE t SET v = ? WHERE id = ?", (v, id))
                        .await
                        .unwrap();
                    updates.fetch_add(1, Ordering::SeqCst);
                    let got: Option<u64> = if n % 2 == 0 {
                        c.exec_first("SELECT v FROM t WHERE id = ?", (id,)).await.unwrap()
                    } else {
                        c.query_first(format!("SELECT v FROM t WHERE id = {id}"))
                            .await
                            .unwrap()
                    };
                    if got != Some(v) {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("writer read {got:?} after writing {v} to row {id}"));
                    }
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 30)).await;
                }
            }));
        }
        // Readers: two eventual, one read-your-writes user that never writes.
        for (r, user) in ["eventual", "eventual", "app"].into_iter().enumerate() {
            let (stop, committed, violations, reads, url) = (
                stop.clone(),
                committed.clone(),
                violations.clone(),
                reads.clone(),
                p.url(user),
            );
            tasks.push(tokio::spawn(async move {
                let mut c = mysql_async::Conn::from_url(url).await.unwrap();
                let mut n = r as u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let id = 1 + (n as i64 % ROWS);
                    let got: Vec<(i64, u64)> = match n % 3 {
                        0 => c.exec("SELECT id, v FROM t WHERE id = ?", (id,)).await.unwrap(),
                        1 => c
                            .query(format!("SELECT id, v FROM t WHERE id = {id}"))
                            .await
                            .unwrap(),
                        _ => c.query("SELECT id, v FROM t ORDER BY id").await.unwrap(),
                    };
                    reads.fetch_add(1, Ordering::Relaxed);
                    for (id, v) in got {
                        // Never a value that was not committed by now.
                        let max = committed[id as usize].load(Ordering::SeqCst);
                        if v > max || v < id as u64 {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("{user} read v={v} of row {id}, committed up to {max}"));
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(PHASE).await;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        // Caught up and invalidated: every read, from the cache or not, is
        // the committed row, at once.
        p.wait_captured(initial_events + updates.load(Ordering::SeqCst))
            .await;
        let head = p.head().await;
        p.dbmux.wait_caught_up(head, CATCH_UP).await;
        p.wait_invalidated().await;
        // The proxy's view of the replica's position (health checks every 50 ms).
        wait_for(
            "the proxy to see the replica caught up",
            Duration::from_secs(10),
            || async {
                let st = p.dbmux.status().await?;
                let b = st["proxy"]["backends"].as_array()?;
                b.iter()
                    .any(|b| b["name"] == "mariadb" && b["applied_seq"].as_u64() == Some(head))
                    .then_some(())
            },
        )
        .await;
        for user in ["eventual", "app"] {
            let mut c = p.conn(user).await;
            for round in 0..3 {
                for id in 1..=ROWS {
                    let want = committed[id as usize].load(Ordering::SeqCst);
                    let got: Option<u64> = if round % 2 == 0 {
                        c.exec_first("SELECT v FROM t WHERE id = ?", (id,)).await.unwrap()
                    } else {
                        c.query_first(format!("SELECT v FROM t WHERE id = {id}"))
                            .await
                            .unwrap()
                    };
                    assert_eq!(
                        got,
                        Some(want),
                        "phase {phase}: {user} read a stale row {id} after catching up"
                    );
                }
                let all: Vec<(i64, u64)> = c.query("SELECT id, v FROM t ORDER BY id").await.unwrap();
                for (id, v) in all {
                    assert_eq!(
                        v,
                        committed[id as usize].load(Ordering::SeqCst),
                        "phase {phase}: range read stale"
                    );
                }
            }
        }
    }
    let v = violations.lock().unwrap().clone();
    assert!(
        v.is_empty(),
        "{} violations, first: {:?}",
        v.len(),
        &v[..v.len().min(5)]
    );
    let (hits, misses, refused) = (
        p.cache_stat("hits").await,
        p.cache_stat("misses").await,
        p.cache_stat("fills_refused_stale").await,
    );
    assert!(
        hits > 0,
        "the cache never answered a read: the test proves nothing"
    );
    println!(
        "cache race: {} reads, {hits} hits, {misses} misses, {refused} stale fills refused, 0 stale reads",
        reads.load(Ordering::Relaxed)
    );
}

/// Redis frozen (slow), then killed mid-run and restarted from an old snapshot (which holds an
/// entry that was valid when saved, and table keys from before a later
/// write): no client sees an error, reads meanwhile come from the databases,
/// one warning is logged for the outage, and after the restart the old
/// entry is never served — the invalidator finds Redis lost its writes and
/// starts a new epoch before the proxy trusts Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_survives_redis_kill_and_restart_without_stale_reads() {
    let mut redis = crate::support::private::PrivateRedis::start().await;
    let mut p = Cached::start("cache_kill", &redis.url(), 10).await;
    let q = "SELECT v FROM t WHERE id = 1";
    let mut e = p.conn("eventual").await;
    let mut a = p.conn("app").await;
    let old = until_hit(&p, &mut e, q, None).await;

    // Slow first: Redis frozen for 1.5 s. Every read still answers within
    // the bound (timeout_ms = 200 here), from the databases, and right.
    let errors0 = p.cache_stat("redis_errors").await;
    let mut frozen = redis.freeze(1.5);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(1200) {
        let t = Instant::now();
        assert_eq!(run(&mut e, q, None).await, old);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(1000),
        "a read waited {slowest:?} for a frozen Redis"
    );
    frozen.wait().unwrap();
    assert!(
        p.cache_stat("redis_errors").await > errors0,
        "the slow Redis was not counted"
    );
    p.wait_available(true).await;
    assert_eq!(until_hit(&p, &mut e, q, None).await, old);

    assert_eq!(redis.cli(&["SAVE"]), "OK");
    // A write after the snapshot: recorded in the live Redis only.
    let mut m = p.direct_master().await;
    let h0 = p.head().await;
    m.query_drop("UPDATE t SET v = 777 WHERE id = 1").await.unwrap();
    let new = run(&mut m, q, None).await;
    assert_ne!(old, new);
    p.wait_captured(h0 + 1).await;
    let head = p.head().await;
    p.dbmux.wait_caught_up(head, CATCH_UP).await;
    p.wait_invalidated().await;
    assert_eq!(until_hit(&p, &mut e, q, None).await, new);

    redis.kill();
    let errors0 = p.cache_stat("redis_errors").await;
    // Reads go on, without errors (an error would fail the unwrap in `run`),
    // and are right.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut n = 0;
    while Instant::now() < deadline {
        assert_eq!(run(&mut e, q, None).await, new);
        assert_eq!(run(&mut a, q, Some(vec![])).await.len(), 1);
        n += 1;
    }
    assert!(n > 10, "only {n} reads in 2 s without Redis");
    p.wait_available(false).await;
    assert!(p.cache_stat("redis_errors").await > errors0);
    // One warning per episode: the freeze, then the kill.
    let warnings = p
        .dbmux
        .output()
        .matches("the result cache's Redis failed")
        .count();
    assert_eq!(warnings, 2, "one warning per Redis episode");

    // Back, with the old snapshot: its entry is valid by its own (old) table
    // keys, and must never be served.
    redis.restart().await;
    assert_eq!(
        redis.cli(&["EXISTS", &format!("{}:epoch", p.db)]),
        "1",
        "the snapshot was not loaded"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let hits0 = p.cache_stat("hits").await;
    loop {
        assert_eq!(
            run(&mut e, q, None).await,
            new,
            "a read served the pre-outage entry"
        );
        assert_eq!(
            run(&mut a, q, None).await,
            new,
            "a read served the pre-outage entry"
        );
        if p.cache_stat("hits").await > hits0 + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache never came back after Redis did"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        p.dbmux.output().contains("Redis lost the epoch or its watermark"),
        "the invalidator did not notice the lost writes"
    );
    println!("Redis kill and restart from an old snapshot: 0 client errors, 0 stale reads, {n} reads during the outage");
}

/// `examples/cache.toml` as shipped: valid, and against `scripts/services up`
/// it replicates database `app` and answers reads of it from the cache
/// through the front door as user `app` / `app-password`. Only where dbmux
/// keeps its state, its ports, its pipeline name and its Redis prefix move
/// (environment overrides), so the test neither needs port 3307 nor meets
/// another run of the example.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_cache_toml_works_as_is() {
    let path = crate::support::repo_root().join("examples/cache.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    for needle in [
        "[proxy.cache]",
        "redis = \"redis://127.0.0.1:16379/\"",
        "tables = [\"app.*\"]",
        "listen = \"127.0.0.1:3307\"",
        "name = \"app\"",
        "13306/app",
    ] {
        assert!(text.contains(needle), "{needle} not in the example");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cache: redis://127.0.0.1:16379/ tables app.*"));

    let name = unique_name("excache");
    let table = name.clone();
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("dbmux.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .args(["run", "--config"])
        .arg(&path)
        .env("DBMUX__NAME", &name)
        .env("DBMUX__DATA_DIR", dir.path().join("data").display().to_string())
        .env("DBMUX__ADMIN__LISTEN", &admin)
        .env("DBMUX__PROXY__LISTEN", format!("127.0.0.1:{port}"))
        .env("DBMUX__PROXY__CACHE__KEY_PREFIX", &name)
        .stderr(log.try_clone().unwrap())
        .stdout(log)
        .spawn()
        .unwrap();
    struct Running(std::process::Child, std::path::PathBuf, String);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            if std::thread::panicking() {
                eprintln!(
                    "---- dbmux output ----\n{}",
                    std::fs::read_to_string(&self.1).unwrap_or_default()
                );
            }
            // The example's table and offsets rows, wherever they went.
            let sql = format!(
                "DROP TABLE IF EXISTS app.`{0}`; DELETE FROM dbmux.dbmux_offsets WHERE consumer LIKE '{0}/%'",
                self.2
            );
            for url in [mysql_url(), crate::support::mysql_replica_url()] {
                let u = url::Url::parse(&url).unwrap();
                let _ = std::process::Command::new(crate::support::env("DBMUX_TEST_MYSQL_CLIENT"))
                    .args([
                        "--no-defaults",
                        "--force",
                        "-h",
                        u.host_str().unwrap_or("127.0.0.1"),
                    ])
                    .arg(format!("-P{}", u.port().unwrap_or(3306)))
                    .arg(format!("-u{}", u.username()))
                    .arg(format!("-p{}", u.password().unwrap_or("")))
                    .args(["-e", &sql])
                    .output();
            }
            let _ = std::process::Command::new(crate::support::env("DBMUX_TEST_PSQL"))
                .arg(crate::support::pg_url())
                .args(["-c", &format!("DROP TABLE IF EXISTS app.\"{0}\"; DELETE FROM dbmux.dbmux_offsets WHERE consumer LIKE '{0}/%'", self.2)])
                .output();
        }
    }
    let running = Running(child, dir.path().join("dbmux.log"), name.clone());
    let status = |admin: String| async move {
        let body = crate::support::dbmux::admin_get(&admin, "/status").await?;
        serde_json::from_str::<serde_json::Value>(&body).ok()
    };
    wait_for(
        "the example to stream and cache",
        Duration::from_secs(60),
        || async {
            let st = status(admin.clone()).await?;
            (st["capture"]["connected"].as_bool() == Some(true)
                && st["proxy"]["cache"]["available"].as_bool() == Some(true))
            .then_some(())
        },
    )
    .await;
    // Written through the front door: the session reads its writes from the
    // master until the replica has them.
    let mut c = mysql_async::Conn::from_url(format!(
        "mysql://app:app-password@127.0.0.1:{port}/app?prefer_socket=false"
    ))
    .await
    .unwrap();
    c.query_drop(format!(
        "CREATE TABLE `{table}` (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL)"
    ))
    .await
    .unwrap();
    c.query_drop(format!("INSERT INTO `{table}` VALUES (1, 'one'), (2, 'two')"))
        .await
        .unwrap();
    let q = format!("SELECT v FROM `{table}` WHERE id = 1");
    let hits = || async {
        status(admin.clone())
            .await
            .map(|s| s["proxy"]["cache"]["hits"].as_u64().unwrap_or(0))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = hits().await.unwrap_or(0);
        let v: Option<String> = c.query_first(&q).await.unwrap();
        assert_eq!(v.as_deref(), Some("one"));
        if hits().await.unwrap_or(0) > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the example never answered from the cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A write through the front door: read back at once, then cached fresh.
    c.query_drop(format!("UPDATE `{table}` SET v = 'uno' WHERE id = 1"))
        .await
        .unwrap();
    let v: Option<String> = c.query_first(&q).await.unwrap();
    assert_eq!(v.as_deref(), Some("uno"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = hits().await.unwrap_or(0);
        let v: Option<String> = c.query_first(&q).await.unwrap();
        assert_eq!(v.as_deref(), Some("uno"), "a stale read through the example");
        if hits().await.unwrap_or(0) > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new row was never answered from the cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.disconnect().await.unwrap();
    drop(running);
}

/// With the Kafka log and every part in its own process — `dbmux capture`,
/// `dbmux apply`, `dbmux proxy` (cache on) and `dbmux invalidate` — reads
/// are answered from the cache and a write invalidates them. Hits are told
/// apart from replica reads by changing the replica's row behind dbmux's
/// back (no event, so no invalidation): a hit still returns the row it
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_with_the_kafka_log_and_a_separate_invalidator() {
    use crate::support::dbmux::LogKind;
    let db = unique_name("kcache");
    let mut c = mysql_async::Conn::from_url(mysql_url()).await.unwrap();
    c.query_drop(format!("CREATE DATABASE `{db}`")).await.unwrap();
    c.query_drop(format!(
        "CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL)"
    ))
    .await
    .unwrap();
    c.disconnect().await.unwrap();
    let port = free_port();
    let extra = format!(
        "\n[proxy]\nlisten = \"127.0.0.1:{port}\"\nmaster = \"{}\"\nhealth_interval_ms = 50\n\
         [[proxy.replicas]]\nname = \"mariadb\"\nurl = \"{}\"\n\
         [[proxy.users]]\nname = \"eventual\"\nconsistency = \"eventual\"\n{HASHES}\
         [proxy.cache]\nredis = \"{}\"\ntables = [\"{db}.*\"]\nkey_prefix = \"{db}\"\ninvalidator = false\n",
        with_db(&mysql_url(), ""),
        with_db(&crate::support::mysql_replica_url(), ""),
        shared_redis()
    );
    let dbmux = Dbmux::with_log(
        &db,
        Replicas {
            mariadb: true,
            postgres: false,
        },
        &extra,
        LogKind::Kafka,
    );
    let mut capture = dbmux.part("capture", &["capture"]);
    let mut apply = dbmux.part("apply-mariadb", &["apply", "--replica", "mariadb"]);
    let mut proxy = dbmux.part("proxy", &["proxy"]);
    let mut invalidate = dbmux.part("invalidate", &["invalidate"]);
    capture.start();
    apply.start();
    proxy.start();
    invalidate.start();
    wait_for("capture to stream", Duration::from_secs(60), || async {
        let st = capture.status().await?;
        (st["capture"]["connected"].as_bool() == Some(true)).then_some(())
    })
    .await;
    let mut m = mysql_async::Conn::from_url(with_db(&mysql_url(), &db))
        .await
        .unwrap();
    m.query_drop("INSERT INTO t VALUES (1, 'one')").await.unwrap();
    wait_for("the row on the replica", CATCH_UP, || async {
        let mut r = mysql_async::Conn::from_url(with_db(&crate::support::mysql_replica_url(), &db))
            .await
            .ok()?;
        let v: Option<String> = r.query_first("SELECT v FROM t WHERE id = 1").await.ok()?;
        (v.as_deref() == Some("one")).then_some(())
    })
    .await;
    let mut r = mysql_async::Conn::from_url(with_db(&crate::support::mysql_replica_url(), &db))
        .await
        .unwrap();
    let url = format!("mysql://eventual:app-password@127.0.0.1:{port}/{db}?prefer_socket=false");
    let mut e = wait_for("the proxy to accept clients", Duration::from_secs(60), || {
        let u = url.clone();
        async move { mysql_async::Conn::from_url(u).await.ok() }
    })
    .await;
    let q = "SELECT v FROM t WHERE id = 1";
    // Fill: read until an entry is in Redis, then change the replica's row
    // behind dbmux's back: a hit still answers "one". (A miss meanwhile
    // could not replace the entry: a fill never overwrites an entry read at
    // the same or a newer seq.)
    let entries = || {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-u",
                &shared_redis(),
                "--scan",
                "--pattern",
                &format!("{db}:*:r:*"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while entries() == 0 {
        let v: Option<String> = e.query_first(q).await.unwrap();
        assert_eq!(v.as_deref(), Some("one"));
        assert!(Instant::now() < deadline, "no entry was ever stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.query_drop("UPDATE t SET v = 'diverged' WHERE id = 1")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Option<String> = e.query_first(q).await.unwrap();
        if v.as_deref() == Some("one") {
            break; // answered from the cache
        }
        assert!(
            Instant::now() < deadline,
            "never answered from the cache (last: {v:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A write on the master: invalidated by the separate invalidator, and
    // once applied (the applier overwrites the diverged row), read fresh.
    m.query_drop("UPDATE t SET v = 'two' WHERE id = 1").await.unwrap();
    wait_for("the write to be read through the proxy", CATCH_UP, || async {
        let v: Option<String> = mysql_async::Conn::from_url(url.clone())
            .await
            .ok()?
            .query_first(q)
            .await
            .ok()?;
        (v.as_deref() == Some("two")).then_some(())
    })
    .await;
    for _ in 0..20 {
        let v: Option<String> = e.query_first(q).await.unwrap();
        assert_eq!(v.as_deref(), Some("two"), "an invalidated entry was served");
    }
    let metrics = crate::support::dbmux::admin_get(&invalidate.admin, "/metrics")
        .await
        .unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dbmux_cache_invalidations_total ") && !l.ends_with(" 0")),
        "the separate invalidator recorded nothing:\n{}",
        invalidate.output()
    );
}
