//! The front door under hostile and ordinary clients (issue 7): black-box
//! tests of the real `dbmux proxy` binary with real clients (the `mariadb`
//! command-line client, mysql_async, PyMySQL) and, where a client library
//! would refuse to send what an attacker sends, a raw protocol client.
//!
//! Each test names the item of the issue it proves. `DBMUX_TEST_BIN=<path>`
//! runs them against another build (they fail against the build before the
//! fixes).

mod proxy_support;

use proxy_support::*;
use std::io::{Read, Write};
use std::net::TcpStream as StdTcp;
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers

/// Runs a Python script with the system's PyMySQL; returns stdout (asserts success).
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn count(url: &str, db: &str, filter: &str) -> i64 {
    let mut c = direct(url).await;
    c.query_first(format!("SELECT COUNT(*) FROM {db}.t WHERE {filter}"))
        .await
        .unwrap()
        .unwrap()
}

/// A minimal MySQL client on a blocking socket, for sending what client
/// libraries never send.
struct Raw {
    s: StdTcp,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = StdTcp::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s }
    }

    fn write_packet(&mut self, seq: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut rest = payload;
        let mut seq = seq;
        loop {
            let n = rest.len().min(0xFF_FFFF);
            let mut frame = Vec::with_capacity(n + 4);
            frame.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
            frame.push(seq);
            frame.extend_from_slice(&rest[..n]);
            self.s.write_all(&frame)?;
            seq = seq.wrapping_add(1);
            rest = &rest[n..];
            if n < 0xFF_FFFF {
                return Ok(());
            }
        }
    }

    fn read_packet(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut h = [0u8; 4];
        self.s.read_exact(&mut h)?;
        let len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p)?;
        Ok((h[3], p))
    }

    /// Greeting → nonce.
    fn greeting(&mut self) -> Vec<u8> {
        let (_, g) = self.read_packet().unwrap();
        assert_eq!(g[0], 10, "greeting: {g:?}");
        let mut i = 1 + g[1..].iter().position(|&b| b == 0).unwrap() + 1 + 4;
        let mut nonce = g[i..i + 8].to_vec();
        i += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10;
        nonce.extend_from_slice(&g[i..i + 12]);
        nonce
    }

    /// The handshake response for `user` with `plugin` and `auth`.
    fn response(user: &[u8], plugin: &str, auth: &[u8]) -> Vec<u8> {
        Raw::response_with(user, plugin, auth, 45)
    }

    fn response_with(user: &[u8], plugin: &str, auth: &[u8], collation: u8) -> Vec<u8> {
        let caps: u32 = 0x0000_0200 | 0x0000_8000 | 0x0008_0000 | 0x0001_0000 | 0x0002_0000;
        let mut p = Vec::new();
        p.extend_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(&(1u32 << 24).to_le_bytes());
        p.push(collation);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(user);
        p.push(0);
        p.push(auth.len() as u8);
        p.extend_from_slice(auth);
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        p
    }

    /// Logs in as `user` with mysql_native_password; panics on refusal.
    fn login(port: u16, user: &str) -> Raw {
        Raw::login_with(port, user, 45)
    }

    fn login_with(port: u16, user: &str, collation: u8) -> Raw {
        let mut r = Raw::connect(port);
        let nonce = r.greeting();
        let auth = connectors::proxy::handshake::scramble_native(PASSWORD.as_bytes(), &nonce);
        r.write_packet(
            1,
            &Raw::response_with(user.as_bytes(), "mysql_native_password", &auth, collation),
        )
        .unwrap();
        let (_, ok) = r.read_packet().unwrap();
        assert_eq!(ok[0], 0, "login of {user}: {:?}", String::from_utf8_lossy(&ok));
        r
    }

    /// Sends a command and reads every packet of the reply until an OK,
    /// ERR or EOF that ends it (good enough for the commands used here);
    /// returns the last packet.
    fn command(&mut self, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        self.write_packet(0, payload)?;
        let (_, first) = self.read_packet()?;
        if matches!(first[..].first(), Some(0x00 | 0xFF)) {
            return Ok(first);
        }
        let mut eofs = 0;
        loop {
            let (_, p) = self.read_packet()?;
            if p[..].first() == Some(&0xFF) {
                return Ok(p);
            }
            if p[..].first() == Some(&0xFE) && p.len() < 9 {
                eofs += 1;
                if eofs == 2 {
                    return Ok(p);
                }
            }
        }
    }
}

fn err_code(p: &[u8]) -> Option<u16> {
    (p.first() == Some(&0xFF)).then(|| u16::from_le_bytes([p[1], p[2]]))
}

/// The proxy still answers a fresh client.
async fn answers(p: &Proxy) {
    let mut c = p.conn("app_eventual", "").await;
    let one: Option<i32> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
}

// ---------------------------------------------------------------------------
// 1. No statement can crash the process.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item1_deep_statements_cannot_crash_the_proxy() {
    // Worker threads with tokio's stacks, as under `dbmux run`.
    let mut p = start_proxy(ProxyOpts {
        threads: Some(2),
        ..Default::default()
    });
    let texts = [
        format!("SELECT 1{}", " OR 1".repeat(200_000)),
        format!("SELECT 1{}", "+1".repeat(500_000)),
        format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(60_000)),
        format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000)),
        format!("SELECT 1 FROM DUAL WHERE {}", "NOT ".repeat(50_000) + "1"),
    ];
    for (i, sql) in texts.iter().enumerate() {
        // Text protocol and prepared; the server may refuse them (its own
        // stack limit), the proxy must not go down.
        let mut c = p.conn("app_eventual", "").await;
        let _ = c.query_drop(sql).await;
        let mut c = p.conn("app_eventual", "").await;
        let _ = c.exec_drop(sql.as_str(), ()).await;
        assert!(p.alive(), "the proxy died on statement {i}: {}", p.log_text());
        answers(&p).await;
    }
    assert!(p.alive());
}

// ---------------------------------------------------------------------------
// 2. No write may run on a replica.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item2_multibyte_charsets_cannot_smuggle_a_write_to_a_replica() {
    let p = start_proxy(ProxyOpts::default());
    let db = fresh_db("pxy_cs").await;
    // In each character set the first byte is a lead byte and 0x5C (`\`)
    // its trail byte: the quote after it ends the string for the server.
    let script = r#"
import sys, pymysql
from pymysql.constants import CLIENT
port, db = int(sys.argv[1]), sys.argv[2]
cases = [("gbk", b"\xbf\x5c", 1), ("big5", b"\xa4\x5c", 2), ("sjis", b"\x83\x5c", 3), ("cp932", b"\x83\x5c", 4)]
out = []
for cs, ch, i in cases:
    c = pymysql.connect(host="127.0.0.1", port=port, user="app_eventual", password="app-password",
                        database=db, charset=cs, autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS,
                        use_unicode=False)
    cur = c.cursor()
    # No quote after the smuggled statement: to a reader that takes 0x5C for
    # an escape the whole text is one well-formed SELECT of one string.
    sql = b"SELECT '" + ch + b"' AS x; INSERT INTO t (id, v) VALUES (" + str(i).encode() + b", 0x736d7567676c6564) -- '"
    try:
        cur.execute(sql)
        while cur.nextset():
            pass
        out.append(f"{cs} ran")
    except pymysql.err.MySQLError as e:
        out.append(f"{cs} error {e.args[0]}")
    # SET NAMES changes the character set of a session that started in utf8mb4.
    c2 = pymysql.connect(host="127.0.0.1", port=port, user="app_eventual", password="app-password",
                         database=db, autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS,
                         use_unicode=False)
    cur2 = c2.cursor()
    cur2.execute("SET NAMES " + cs)
    cur2.execute(b"SELECT '" + ch + b"' AS x; INSERT INTO t (id, v) VALUES (" + str(10 + i).encode() + b", 0x736d7567676c6564) -- '")
    while cur2.nextset():
        pass
    c.close(); c2.close()
print("\n".join(out))
"#;
    let out = python(script, &[&p.port.to_string(), &db]);
    assert!(!out.contains("error"), "{out}\n{}", p.log_text());
    // Every INSERT ran, on the master, none on the replica.
    assert_eq!(
        count(&master_url(), &db, "v = 'smuggled'").await,
        8,
        "{}",
        p.log_text()
    );
    assert_eq!(count(&replica_url(), &db, "v = 'smuggled'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item2_replica_connections_cannot_write() {
    let p = start_proxy(ProxyOpts::default());
    let mut c = p.conn("app_eventual", "").await;
    let (ro, sid): (u8, u32) = c
        .query_first("SELECT @@tx_read_only, @@server_id")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ro, sid), (1, 2), "a read on the replica runs read-only");
    // Prepared, too (another connection of the pool, or the same).
    let (ro, sid): (u8, u32) = c
        .exec_first("SELECT @@tx_read_only, @@server_id + ?", (0,))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ro, sid), (1, 2));
}

// ---------------------------------------------------------------------------
// 3. KILL and Ctrl-C hit the right session.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item3_kill_query_reaches_the_clients_own_session_only() {
    let p = start_proxy(ProxyOpts::default());
    // A's long statement runs on the master.
    let mut a = p.conn("app", "").await;
    let a_id = a.id();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let r = a.query_drop("SELECT SLEEP(20)").await;
        (r.map_err(|e| e.to_string()), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another user may not kill it.
    let mut other = p.conn("app_eventual", "").await;
    let e = other
        .query_drop(format!("KILL QUERY {a_id}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("1095"), "{e}");
    // A direct master connection whose id a client names is out of reach.
    let mut d = direct(&master_url()).await;
    let d_id: u32 = d.query_first("SELECT CONNECTION_ID()").await.unwrap().unwrap();
    let d_sleep = tokio::spawn(async move { d.query_first::<i64, _>("SELECT SLEEP(2)").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = p.conn("app", "").await;
    let e = b
        .query_drop(format!("KILL QUERY {d_id}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1094"),
        "a backend id must be unknown to the proxy: {e}"
    );
    let e = b
        .query_drop(format!("SELECT 1; KILL {d_id}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("1235"), "{e}");
    assert_eq!(
        d_sleep.await.unwrap().unwrap(),
        Some(0),
        "the direct connection's statement was not interrupted"
    );
    // The same user kills A's statement by the id A's client knows.
    b.query_drop(format!("KILL QUERY {a_id}")).await.unwrap();
    let (r, took) = sleeper.await.unwrap();
    assert!(
        took < Duration::from_secs(8),
        "KILL QUERY did not stop it ({took:?}): {r:?}"
    );
    assert!(r.as_ref().is_err_and(|e| e.contains("1317")), "{r:?}");
    // KILL CONNECTION ends a session.
    let mut e2 = p.conn("app", "").await;
    let e2_id = e2.id();
    b.query_drop(format!("KILL {e2_id}")).await.unwrap();
    assert!(
        e2.query_drop("SELECT 1").await.is_err(),
        "killed session still answers"
    );
    answers(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item3_ctrl_c_in_the_mariadb_client_cancels_its_own_query() {
    let p = start_proxy(ProxyOpts::default());
    let started = Instant::now();
    let child = Command::new(env("DBMUX_TEST_MYSQL_CLIENT"))
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            &format!("-P{}", p.port),
            "-uapp",
            &format!("-p{PASSWORD}"),
            "-e",
            "SELECT SLEEP(20) AS ctrl_c_probe",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the statement runs on the master, then press Ctrl-C.
    wait_until("the CLI's statement running", Duration::from_secs(10), || async {
        let mut m = direct(&master_url()).await;
        let n: Option<i64> = m
            .query_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(20) AS ctrl_c_probe%'",
            )
            .await
            .unwrap();
        n == Some(1)
    })
    .await;
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < Duration::from_secs(10),
        "Ctrl-C did not cancel the query ({took:?}): {err}"
    );
    assert!(err.contains("1317") || err.contains("killed"), "{err}");
}

// ---------------------------------------------------------------------------
// 4. Bounded memory per client and in total.

const LIMITS: &str = "max_allowed_packet = 1048576\nmax_memory = 16777216\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item4_huge_frames_before_login_are_refused_unread() {
    let p = start_proxy(ProxyOpts::default());
    let before = p.status_kib("VmHWM");
    // 24 clients each announce a 16 MiB frame in their handshake response
    // and send it.
    let port = p.port;
    let writers: Vec<_> = (0..24)
        .map(|_| {
            std::thread::spawn(move || {
                let mut r = Raw::connect(port);
                let _ = r.greeting();
                let mut frame = vec![0xFF, 0xFF, 0xFF, 1];
                frame.extend(std::iter::repeat_n(0x41u8, 0xFF_FFFF));
                let sent = r.s.write_all(&frame).is_ok();
                let answer = r.read_packet().ok();
                (sent, answer)
            })
        })
        .collect();
    for w in writers {
        let (sent, answer) = w.join().unwrap();
        assert!(!sent || answer.is_some_and(|(_, p)| err_code(&p) == Some(1153)));
    }
    let peak = p.status_kib("VmHWM");
    assert!(
        peak < before + 64 * 1024,
        "the proxy grew from {before} KiB to {peak} KiB for frames it should refuse"
    );
    answers(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item4_big_commands_and_long_data_are_bounded_after_login() {
    let p = start_proxy(ProxyOpts {
        extra: LIMITS,
        ..Default::default()
    });
    // A query over max_allowed_packet: the server's error, then the
    // connection closes (as on a server).
    let mut c = p.conn("app_eventual", "").await;
    let big = format!("SELECT '{}'", "x".repeat(2 << 20));
    let e = c.query_drop(&big).await.unwrap_err().to_string();
    assert!(e.contains("1153"), "{e}");
    answers(&p).await;
    let before = p.status_kib("VmHWM");
    // Long data: 6 clients each send 40 × 900 KiB for one parameter.
    let port = p.port;
    let clients: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let mut r = Raw::login(port, "app_eventual");
                r.write_packet(0, b"\x16SELECT LENGTH(?)").unwrap();
                let (_, ok) = r.read_packet().unwrap();
                assert_eq!(ok[0], 0, "{ok:?}");
                let id = [ok[1], ok[2], ok[3], ok[4]];
                // param def + EOF (no DEPRECATE_EOF), column def + EOF
                for _ in 0..4 {
                    r.read_packet().unwrap();
                }
                let chunk = vec![b'y'; 900 * 1024];
                for _ in 0..40 {
                    let mut p = vec![0x18];
                    p.extend_from_slice(&id);
                    p.extend_from_slice(&0u16.to_le_bytes());
                    p.extend_from_slice(&chunk);
                    r.write_packet(0, &p).unwrap();
                }
                let mut exec = vec![0x17];
                exec.extend_from_slice(&id);
                exec.extend_from_slice(&[0, 1, 0, 0, 0, 0, 1, 0xFC, 0]);
                r.command(&exec).unwrap()
            })
        })
        .collect();
    for c in clients {
        let last = c.join().unwrap();
        assert_eq!(
            err_code(&last),
            Some(1153),
            "{:?}",
            String::from_utf8_lossy(&last)
        );
    }
    let peak = p.status_kib("VmHWM");
    assert!(
        peak < before + 64 * 1024,
        "long data grew the proxy from {before} KiB to {peak} KiB"
    );
    answers(&p).await;
}

// ---------------------------------------------------------------------------
// 5. Timeouts towards the backends.

fn signal(pid: &str, sig: &str) {
    let pid = pid.trim();
    let st = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(st.success());
    if sig == "-STOP" {
        // The signal is delivered asynchronously: wait until every thread
        // of the server is stopped before counting on it.
        let stopped = || {
            std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().all(|t| {
                let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next();
                matches!(state, Some("T" | "t"))
            })
        };
        let t = Instant::now();
        while !stopped() {
            assert!(t.elapsed() < Duration::from_secs(5), "{pid} did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item5_a_frozen_replica_fails_over_and_a_frozen_master_fails_fast() {
    let own = support::private::PrivateMariadb::start(&["--server-id=3"]).await;
    let pid = std::fs::read_to_string(own.dir.path().join("mysqld.pid")).unwrap();
    let p = start_proxy(ProxyOpts {
        replicas: vec![("own".into(), own.url(""), None)],
        // health_timeout_ms and connect_timeout_ms keep their defaults (2 s, 5 s).
        extra: "health_interval_ms = 200\n",
        ..Default::default()
    });
    let mut c = p.conn("app_eventual", "").await;
    assert_eq!(server_id(&mut c).await, 3);
    signal(&pid, "-STOP");
    let t = Instant::now();
    let sid = tokio::time::timeout(Duration::from_secs(10), server_id(&mut c)).await;
    let took = t.elapsed();
    let mut fresh = p.conn("app_eventual", "").await;
    let fresh_sid = tokio::time::timeout(Duration::from_secs(10), server_id(&mut fresh)).await;
    signal(&pid, "-CONT");
    assert_eq!(
        sid.ok(),
        Some(1),
        "the read did not fail over to the master ({took:?}, pid {pid}):\n{}",
        p.log_text()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(fresh_sid.ok(), Some(1));
    assert!(
        p.log_text().contains("did not answer the health check"),
        "{}",
        p.log_text()
    );
    // Thawed: back in rotation.
    wait_until(
        "reads back on the thawed replica",
        Duration::from_secs(20),
        || {
            let url = p.url("app_eventual", "");
            async move {
                let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
                    .await
                    .unwrap();
                server_id(&mut c).await == 3
            }
        },
    )
    .await;

    // A frozen master: a session with state there gets an error in time.
    let own_master = support::private::PrivateMariadb::start(&["--server-id=4"]).await;
    let mpid = std::fs::read_to_string(own_master.dir.path().join("mysqld.pid")).unwrap();
    let p2 = start_proxy(ProxyOpts {
        master: Some(own_master.url("")),
        replicas: vec![],
        extra: "health_interval_ms = 200\n",
        ..Default::default()
    });
    let mut m = p2.conn("app", "").await;
    m.query_drop("SET @x = 1").await.unwrap();
    signal(&mpid, "-STOP");
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), m.query_drop("SELECT @x")).await;
    let took = t.elapsed();
    signal(&mpid, "-CONT");
    let e = r
        .expect("the session hung on a frozen master")
        .unwrap_err()
        .to_string();
    assert!(e.contains("1927"), "{e}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop((own, own_master));
}

// ---------------------------------------------------------------------------
// 6. One client cannot evict a backend for everyone.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item6_a_refused_character_set_does_not_evict_the_replica() {
    // Health checks far apart: a wrong "down" would last.
    let p = start_proxy(ProxyOpts {
        extra: "health_interval_ms = 60000\n",
        ..Default::default()
    });
    // utf32_general_ci (60) as the connection collation: MariaDB refuses
    // it as a client character set (1231). PyMySQL cannot ask for it.
    let port = p.port;
    let last = tokio::task::spawn_blocking(move || {
        let mut r = Raw::login_with(port, "app_eventual", 60);
        r.command(b"\x03SELECT @@server_id").unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        err_code(&last),
        Some(1231),
        "{:?}",
        String::from_utf8_lossy(&last)
    );
    let mut c = p.conn("app_eventual", "").await;
    assert_eq!(server_id(&mut c).await, 2, "{}", p.log_text());
    assert!(!p.log_text().contains("marked down"), "{}", p.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item6_a_slow_client_does_not_evict_the_replica() {
    let p = start_proxy(ProxyOpts {
        extra: "health_interval_ms = 60000\n",
        ..Default::default()
    });
    // The replica gives up on this session's connection (net_write_timeout)
    // while its client does not read a big result.
    let db = fresh_db("pxy_slow").await;
    let script = r#"
import sys, time, pymysql, pymysql.cursors
c = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="app_eventual", password="app-password",
                    database=sys.argv[2], autocommit=True, cursorclass=pymysql.cursors.SSCursor)
cur = c.cursor()
cur.execute("SET net_write_timeout = 1")
cur.execute("SELECT REPEAT('x', 10000), @@server_id FROM seq_1_to_20000")
print(cur.fetchone()[1], flush=True)
time.sleep(4)
try:
    n = sum(1 for _ in cur)
    print("read", n)
except pymysql.err.MySQLError as e:
    print("error", e.args[0])
"#;
    let out = python(script, &[&p.port.to_string(), &db]);
    assert!(out.starts_with('2'), "{out}");
    let mut c = p.conn("app_eventual", "").await;
    assert_eq!(server_id(&mut c).await, 2, "{}", p.log_text());
    assert!(!p.log_text().contains("marked down"), "{}", p.log_text());
}

// ---------------------------------------------------------------------------
// 7. Routing that ordinary applications rely on.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_temporary_tables_of_procedures_and_functions_stay_reachable() {
    let p = start_proxy(ProxyOpts::default());
    let db = fresh_db("pxy_proc").await;
    for url in [master_url(), replica_url()] {
        let mut c = direct(&url).await;
        c.query_drop(format!(
            "CREATE PROCEDURE {db}.mk() BEGIN CREATE TEMPORARY TABLE tmp_p (a INT); INSERT INTO tmp_p VALUES (7); END"
        ))
        .await
        .unwrap();
        c.query_drop(format!(
            "CREATE FUNCTION {db}.mkf() RETURNS INT DETERMINISTIC BEGIN CREATE TEMPORARY TABLE tmp_f (a INT); RETURN 8; END"
        ))
        .await
        .unwrap();
    }
    let mut c = p.conn("app_eventual", &db).await;
    c.query_drop("CALL mk()").await.unwrap();
    let a: Option<i32> = c.query_first("SELECT a FROM tmp_p").await.unwrap();
    assert_eq!(a, Some(7));
    let mut c = p.conn("app_eventual", &db).await;
    let v: Option<i32> = c.query_first("SELECT mkf()").await.unwrap();
    assert_eq!(v, Some(8));
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM tmp_f").await.unwrap();
    assert_eq!(n, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_databases_only_the_master_has() {
    let p = start_proxy(ProxyOpts::default());
    let db = unique("pxy_monly");
    let mut m = direct(&master_url()).await;
    m.query_drop(format!("CREATE DATABASE {db}")).await.unwrap();
    m.query_drop(format!("CREATE TABLE {db}.t (a INT)"))
        .await
        .unwrap();
    let script = r#"
import sys, pymysql
port, db = int(sys.argv[1]), sys.argv[2]
out = []
c = pymysql.connect(host="127.0.0.1", port=port, user="app_eventual", password="app-password", autocommit=True)
c.select_db(db)
cur = c.cursor(); cur.execute("SELECT DATABASE(), COUNT(*) FROM t"); out.append("init_db %s %s" % cur.fetchone())
cur.execute("USE " + db); cur.execute("SELECT DATABASE()"); out.append("use %s" % cur.fetchone())
c = pymysql.connect(host="127.0.0.1", port=port, user="app_eventual", password="app-password", database=db, autocommit=True)
cur = c.cursor(); cur.execute("SELECT DATABASE(), COUNT(*) FROM t"); out.append("login %s %s" % cur.fetchone())
try:
    c.select_db("no_such_db_anywhere")
    out.append("no error")
except pymysql.err.MySQLError as e:
    out.append("missing %s" % e.args[0])
print("\n".join(out))
"#;
    let out = python(script, &[&p.port.to_string(), &db]);
    let _ = m.query_drop(format!("DROP DATABASE {db}")).await;
    assert_eq!(
        out,
        format!("init_db {db} 0\nuse {db}\nlogin {db} 0\nmissing 1049"),
        "{}",
        p.log_text()
    );
}

/// Under `dbmux run` a table or column created on the master reaches the
/// replica later (with the stream's schema change): a plain read of it in the
/// meantime is answered by the master, never with the replica's "doesn't
/// exist"; an object neither has is the master's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_tables_and_columns_only_the_master_has_yet_are_read_there() {
    let p = start_proxy(ProxyOpts::default());
    let db = unique("pxy_tlater");
    let mut m = direct(&master_url()).await;
    let mut r = direct(&replica_url()).await;
    for c in [&mut m, &mut r] {
        c.query_drop(format!("CREATE DATABASE {db}")).await.unwrap();
        c.query_drop(format!("CREATE TABLE {db}.t (a INT)"))
            .await
            .unwrap();
    }
    m.query_drop(format!("CREATE TABLE {db}.fresh (a INT)"))
        .await
        .unwrap();
    m.query_drop(format!("INSERT INTO {db}.fresh VALUES (1), (2)"))
        .await
        .unwrap();
    m.query_drop(format!("ALTER TABLE {db}.t ADD COLUMN b INT"))
        .await
        .unwrap();
    let master_id = server_id(&mut m).await;
    let replica_id = server_id(&mut r).await;
    let mut c = p.conn("app_eventual", &db).await;
    // The replica serves what it has.
    let mut on_replica = false;
    for _ in 0..50 {
        let (id, n): (u32, i64) = c
            .query_first("SELECT @@server_id, COUNT(*) FROM t")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        if id == replica_id {
            on_replica = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        on_replica,
        "plain reads never reached the replica:\n{}",
        p.log_text()
    );
    let (id, n): (u32, i64) = c
        .query_first("SELECT @@server_id, COUNT(*) FROM fresh")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id, n), (master_id, 2), "a table only the master has yet");
    let (id, b): (u32, Option<i64>) = c
        .query_first("SELECT @@server_id, MAX(b) FROM t")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id, b), (master_id, None), "a column only the master has yet");
    let e = c
        .query_drop("SELECT * FROM no_such_table_anywhere")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, mysql_async::Error::Server(s) if s.code == 1146),
        "the master's own error: {e:?}"
    );
    // The session goes on, on the replica for what it has.
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM t").await.unwrap();
    assert_eq!(n, Some(0));
    for url in [master_url(), replica_url()] {
        let mut c = direct(&url).await;
        c.query_drop(format!("DROP DATABASE {db}")).await.unwrap();
    }
}

/// Under `dbmux run` a database created on the master reaches the replica
/// later, with its first rows: a session that logged in before reads from
/// the master meanwhile, and from the replica once it has the database (not
/// from the master for the rest of its life).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_a_database_that_reaches_the_replica_later_is_read_there() {
    let p = start_proxy(ProxyOpts::default());
    let db = unique("pxy_later");
    let mut m = direct(&master_url()).await;
    m.query_drop(format!("CREATE DATABASE {db}")).await.unwrap();
    m.query_drop(format!("CREATE TABLE {db}.t (a INT)"))
        .await
        .unwrap();
    let master_id = server_id(&mut m).await;
    let mut r = direct(&replica_url()).await;
    let replica_id = server_id(&mut r).await;
    let mut c = p.conn("app_eventual", &db).await;
    for _ in 0..3 {
        let (id, n): (u32, i64) = c
            .query_first("SELECT @@server_id, COUNT(*) FROM t")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((id, n), (master_id, 0), "the replica has no {db} yet");
    }
    r.query_drop(format!("CREATE DATABASE {db}")).await.unwrap();
    r.query_drop(format!("CREATE TABLE {db}.t (a INT)"))
        .await
        .unwrap();
    // The same session, without a new login or USE.
    let started = Instant::now();
    loop {
        let (id, n): (u32, i64) = c
            .query_first("SELECT @@server_id, COUNT(*) FROM t")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        if id == replica_id {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the session still reads from the master after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for url in [master_url(), replica_url()] {
        let _ = direct(&url).await.query_drop(format!("DROP DATABASE {db}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_diagnostics_answer_about_the_previous_statement() {
    let p = start_proxy(ProxyOpts::default());
    let db = fresh_db("pxy_diag").await;
    let mut c = p.conn("app", &db).await;
    // A warning on the replica: SHOW WARNINGS and @@warning_count see it.
    let (v, sid): (i64, u32) = c
        .query_first("SELECT CAST('12abc' AS SIGNED), @@server_id")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v, sid), (12, 2));
    let w: Vec<(String, u32, String)> = c.query("SHOW WARNINGS").await.unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].2.contains("12abc"), "{w:?}");
    let n: Option<u32> = c.query_first("SELECT @@warning_count").await.unwrap();
    assert_eq!(n, Some(1));
    // FOUND_ROWS() of a replica read.
    let mut m = direct(&replica_url()).await;
    m.query_drop(format!("INSERT INTO {db}.t (id) VALUES (1), (2), (3)"))
        .await
        .unwrap();
    let _: Vec<i32> = c.query("SELECT id FROM t LIMIT 2").await.unwrap();
    let f: Option<i64> = c.query_first("SELECT FOUND_ROWS()").await.unwrap();
    assert_eq!(f, Some(2));
    // ROW_COUNT() and LAST_INSERT_ID() of a write (read-your-writes user:
    // the proxy's own bookkeeping must not replace them).
    c.query_drop("INSERT INTO t (id, v) VALUES (11, 'a'), (12, 'b'), (13, 'c')")
        .await
        .unwrap();
    let rc: Option<i64> = c.query_first("SELECT ROW_COUNT()").await.unwrap();
    assert_eq!(rc, Some(3));
    c.query_drop("INSERT INTO t (id, v) VALUES (11, 'dup') ON DUPLICATE KEY UPDATE v = 'x'")
        .await
        .unwrap();
    c.query_drop("INSERT IGNORE INTO t (id, v) VALUES (11, 'dup')")
        .await
        .unwrap();
    let w: Vec<(String, u32, String)> = c.query("SHOW WARNINGS").await.unwrap();
    assert_eq!(w.len(), 1, "the INSERT IGNORE's duplicate warning: {w:?}");
    assert_eq!(w[0].1, 1062);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_drivers_connect_and_read_with_the_master_down() {
    // Nothing listens on the master's port.
    let dead = format!(
        "mysql://dbmux:dbmux-password@127.0.0.1:{}/",
        support::dbmux::free_port()
    );
    let p = start_proxy(ProxyOpts {
        master: Some(dead),
        ..Default::default()
    });
    let script = r#"
import sys, pymysql
port = int(sys.argv[1])
out = []
# PyMySQL's default (autocommit off: it sends SET AUTOCOMMIT = 0 at connect).
c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app-password")
cur = c.cursor(); cur.execute("SELECT @@server_id"); out.append("default %s" % cur.fetchone())
# mysql-connector-python's form.
cur.execute("SET @@session.autocommit = OFF"); cur.execute("SELECT @@server_id"); out.append("connector %s" % cur.fetchone())
c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app-password", autocommit=True)
cur = c.cursor(); cur.execute("SELECT @@server_id"); out.append("autocommit %s" % cur.fetchone())
try:
    cur.execute("INSERT INTO nowhere VALUES (1)")
    out.append("no error")
except pymysql.err.MySQLError as e:
    out.append("write %s" % e.args[0])
print("\n".join(out))
"#;
    let out = python(script, &[&p.port.to_string()]);
    assert_eq!(
        out,
        "default 2\nconnector 2\nautocommit 2\nwrite 1105",
        "{}",
        p.log_text()
    );
}

// ---------------------------------------------------------------------------
// 8. File descriptors.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item8_out_of_descriptors_clients_get_1040_and_the_limit_is_raised() {
    let p = start_proxy(ProxyOpts {
        extra: "max_connections = 1000\n",
        wrapper: Some(&["prlimit", "--nofile=64:64", "--"]),
        ..Default::default()
    });
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..120u8 {
        // From several addresses (the login-phase limit is per address).
        let s = {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(([127, 0, 4, 1 + i / 8], 0).into()).unwrap();
            sock.connect(([127, 0, 0, 1], p.port).into())
                .await
                .unwrap()
                .into_std()
                .unwrap()
        };
        s.set_nonblocking(false).unwrap();
        let mut r = Raw { s };
        r.s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        match r.read_packet() {
            Ok((_, pkt)) if pkt[0] == 10 => held.push(r),
            Ok((_, pkt)) => {
                assert_eq!(err_code(&pkt), Some(1040), "{pkt:?}");
                refused += 1;
            }
            Err(e) => panic!("a client got no answer: {e}\n{}", p.log_text()),
        }
    }
    assert!(refused > 0, "never ran out of descriptors");
    assert!(
        p.log_text().contains("open files limit is too low"),
        "{}",
        p.log_text()
    );
    drop(held);
    wait_until("the proxy serving again", Duration::from_secs(15), || {
        let url = p.url("app_eventual", "");
        async move {
            match mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap()).await {
                Ok(mut c) => c.query_first::<i32, _>("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    // With room above the soft limit, the proxy takes it.
    let p2 = start_proxy(ProxyOpts {
        wrapper: Some(&["prlimit", "--nofile=64:4096", "--"]),
        ..Default::default()
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p2.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert!(line.split_whitespace().nth(3) == Some("4096"), "{line}");
}

// ---------------------------------------------------------------------------
// 9. Errors clients can display.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item9_proxy_errors_use_server_error_codes() {
    let dead = format!(
        "mysql://dbmux:dbmux-password@127.0.0.1:{}/",
        support::dbmux::free_port()
    );
    let p = start_proxy(ProxyOpts {
        master: Some(dead),
        ..Default::default()
    });
    let (ok, _, err) = p.cli("app", PASSWORD, &[], "SET @x = 1");
    assert!(!ok);
    assert!(err.contains("ERROR 1105") && !err.contains("Malformed"), "{err}");
    assert!(!err.contains("127.0.0.1") && !err.contains("dbmux@"), "{err}");
}

// ---------------------------------------------------------------------------
// 10. Users cannot see each other through the backend account.

/// Backend accounts made for one test, dropped at its end.
struct Accounts(Vec<String>);

impl Drop for Accounts {
    fn drop(&mut self) {
        for url in [master_url(), replica_url()] {
            let u = url::Url::parse(&url).unwrap();
            for a in &self.0 {
                let _ = Command::new(env("DBMUX_TEST_MYSQL_CLIENT"))
                    .args(["--no-defaults", "-h127.0.0.1"])
                    .arg(format!("-P{}", u.port().unwrap()))
                    .arg(format!("-u{}", u.username()))
                    .arg(format!("-p{}", u.password().unwrap()))
                    .args(["-e", &format!("DROP USER IF EXISTS '{a}'@'%'")])
                    .output();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item10_per_user_backend_accounts_keep_users_apart() {
    let db = fresh_db("pxy_acct").await;
    let alice = unique("pa");
    let bob = unique("pb");
    let _accounts = Accounts(vec![alice.clone(), bob.clone()]);
    for url in [master_url(), replica_url()] {
        let mut c = direct(&url).await;
        for a in [&alice, &bob] {
            c.query_drop(format!("CREATE USER '{a}'@'%' IDENTIFIED BY 'pw-{a}'"))
                .await
                .unwrap();
            c.query_drop(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {db}.* TO '{a}'@'%'"
            ))
            .await
            .unwrap();
        }
    }
    let users = format!(
        "[[proxy.users]]\nname = \"alice\"\nHASHES\nbackend_user = \"{alice}\"\nbackend_password = \"pw-{alice}\"\n\
         [[proxy.users]]\nname = \"bob\"\nHASHES\nbackend_user = \"{bob}\"\nbackend_password = \"pw-{bob}\"\n\
         [[proxy.users]]\nname = \"carol\"\nHASHES\nbackend_user = \"{bob}\"\nbackend_password = \"wrong\"\n"
    );
    let p = start_proxy(ProxyOpts {
        users: &users,
        ..Default::default()
    });
    let mut a = p.conn("alice", &db).await;
    let who: Option<String> = a.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert!(who.unwrap().starts_with(&alice));
    let sleeper = tokio::spawn(async move { a.query_drop("SELECT SLEEP(3) AS alice_secret_marker").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut b = p.conn("bob", &db).await;
    let list: Vec<mysql_async::Row> = b.query("SHOW PROCESSLIST").await.unwrap();
    let text = format!("{list:?}");
    assert!(
        !text.contains("alice_secret_marker"),
        "bob sees alice's statement: {text}"
    );
    // Denials name the proxy user, not the backend account or its host.
    let e = b
        .query_drop("SELECT * FROM mysql.user")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("1142") && e.contains("'bob'"), "{e}");
    assert!(!e.contains(&bob) && !e.contains("127.0.0.1"), "{e}");
    sleeper.await.unwrap().unwrap();
    // A backend login refused for the user's account: no account name either.
    let (ok, _, err) = p.cli("carol", PASSWORD, &[], "SET @x = 1");
    assert!(!ok && err.contains("1105"), "{err}");
    assert!(!err.contains(&bob) && !err.contains("127.0.0.1"), "{err}");
}

// ---------------------------------------------------------------------------
// 11. Minor: probing, throttling, log lines, pre-login slots.

/// What an unknown or known name gets after offering mysql_native_password:
/// "switch" (an AuthSwitchRequest) or "err".
fn first_answer(port: u16, user: &[u8]) -> &'static str {
    // Each attempt from its own loopback address: failed logins are
    // throttled per address.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let src = std::net::Ipv4Addr::new(127, 0, 3 + (n / 250) as u8, (n % 250) as u8 + 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = std::thread::spawn(move || {
        rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind((src, 0).into()).unwrap();
            sock.connect(([127, 0, 0, 1], port).into())
                .await
                .unwrap()
                .into_std()
                .unwrap()
        })
    })
    .join()
    .unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = Raw { s };
    let _ = r.greeting();
    r.write_packet(1, &Raw::response(user, "mysql_native_password", &[7; 20]))
        .unwrap();
    let (_, p) = r.read_packet().unwrap();
    match p[0] {
        0xFE => "switch",
        0xFF => "err",
        _ => "other",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item11_user_names_cannot_be_probed() {
    let p = start_proxy(ProxyOpts::default());
    assert_eq!(first_answer(p.port, b"app_sha2"), "switch");
    assert_eq!(first_answer(p.port, b"app"), "err");
    // Unknown names answer like known ones of either plugin, and always
    // the same way for the same name.
    let answers: Vec<&str> = (0..24)
        .map(|i| first_answer(p.port, format!("nobody{i}").as_bytes()))
        .collect();
    assert!(
        answers.contains(&"switch") && answers.contains(&"err"),
        "{answers:?}"
    );
    for (i, first) in answers.iter().enumerate().take(6) {
        assert_eq!(first_answer(p.port, format!("nobody{i}").as_bytes()), *first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item11_failed_logins_are_throttled_per_address() {
    // Defaults: 10 failures, then 60 s blocked.
    let p = start_proxy(ProxyOpts::default());
    let script = r#"
import sys, pymysql
port = int(sys.argv[1])
def attempt(pw, addr):
    try:
        pymysql.connect(host="127.0.0.1", port=port, user="app", password=pw, bind_address=addr).close()
        return "ok"
    except pymysql.err.MySQLError as e:
        return str(e.args[0])
out = [attempt("wrong", "127.0.0.3") for _ in range(10)]
out.append(attempt("app-password", "127.0.0.3"))
out.append(attempt("app-password", "127.0.0.1"))
print(" ".join(out))
"#;
    let out = python(script, &[&p.port.to_string()]);
    assert_eq!(out, format!("{}1129 ok", "1045 ".repeat(10)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item11_log_lines_are_bounded() {
    let p = start_proxy(ProxyOpts::default());
    // A 60 000-character user name (client libraries cut names short; a raw
    // client does not), refused after the whole login exchange.
    let port = p.port;
    let last = tokio::task::spawn_blocking(move || {
        let mut r = Raw::connect(port);
        let _ = r.greeting();
        let name = vec![b'n'; 60_000];
        r.write_packet(1, &Raw::response(&name, "mysql_native_password", &[7; 20]))
            .unwrap();
        let (seq, p) = r.read_packet().unwrap();
        if p[0] == 0xFE {
            r.write_packet(seq.wrapping_add(1), &[9; 32]).unwrap();
            return r.read_packet().unwrap().1;
        }
        p
    })
    .await
    .unwrap();
    assert_eq!(err_code(&last), Some(1045));
    answers(&p).await;
    let log = p.log_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(log.contains("login refused"), "{}", clip(&log));
    assert!(longest < 2000, "a log line of {longest} bytes");
}

fn clip(s: &str) -> String {
    s.chars().take(2000).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item11_idle_half_open_clients_cannot_hold_the_login_slots() {
    // Defaults: 32 connections of one address in the login phase.
    let p = start_proxy(ProxyOpts {
        extra: "max_connections = 40\n",
        ..Default::default()
    });
    // 40 sockets from one address that never answer the greeting.
    let mut idle = Vec::new();
    for _ in 0..40 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.4:0".parse().unwrap()).unwrap();
        idle.push(sock.connect(([127, 0, 0, 1], p.port).into()).await.unwrap());
    }
    let (ok, out, err) = p.cli("app", PASSWORD, &[], "SELECT 1");
    assert!(ok && out.trim() == "1", "{err}");
    drop(idle);
}

// ---------------------------------------------------------------------------
// Prove: a bounded fuzz campaign against the running proxy.

/// SQL texts the campaign mutates: reads and harmless writes in the test's
/// own database (the campaign's backend account can reach nothing else).
const SEEDS: &[&str] = &[
    "SELECT 1",
    "SELECT id, v FROM t WHERE id = 5",
    "SELECT v FROM t WHERE v LIKE 'a%' ORDER BY id LIMIT 3",
    "INSERT INTO t (id, v) VALUES (7, 'x') ON DUPLICATE KEY UPDATE v = 'y'",
    "SELECT 'a\\'b', \"c\", `id` FROM t",
    "SET NAMES gbk",
    "SET autocommit = 0",
    "BEGIN",
    "COMMIT",
    "SHOW WARNINGS",
    "SELECT FOUND_ROWS()",
    "SELECT @x := 1",
    "SET @@session.sql_mode = 'ANSI_QUOTES'",
    "SELECT 1; SELECT 2",
    "/*!50000 SELECT 1 */",
    "KILL QUERY 1",
    "USE mysql",
    "SELECT 1 OR 1 OR 1 OR 1",
    "SELECT * FROM t LOCK IN SHARE MODE",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_of_mutated_packets_and_sql_keeps_the_proxy_up_and_bounded() {
    use rand::{Rng, SeedableRng};
    let db = fresh_db("pxy_fuzz").await;
    let acct = unique("pf");
    let _accounts = Accounts(vec![acct.clone()]);
    for url in [master_url(), replica_url()] {
        let mut c = direct(&url).await;
        c.query_drop(format!("CREATE USER '{acct}'@'%' IDENTIFIED BY 'pw'"))
            .await
            .unwrap();
        c.query_drop(format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {db}.* TO '{acct}'@'%'"
        ))
        .await
        .unwrap();
    }
    let users = format!(
        "[[proxy.users]]\nname = \"fuzz\"\nHASHES\nbackend_user = \"{acct}\"\nbackend_password = \"pw\"\n"
    );
    let mut p = start_proxy(ProxyOpts {
        users: &users,
        extra: "max_allowed_packet = 1048576\nmax_memory = 67108864\nmax_connections = 200\nmax_login_failures = 1000000\n",
        ..Default::default()
    });
    // The bound: what the proxy holds at rest, plus its max_memory (64 MiB)
    // for client data, plus fixed per-session buffers (a few hundred KiB each
    // for the at most 200 sessions) and allocator slack.
    let at_rest = p.status_kib("VmRSS");
    let rss_bound_kib = at_rest + 64 * 1024 + 96 * 1024;
    // A normal client keeps working through the campaign.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let normal = {
        let url = p.url("app_eventual", &db);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
                .await
                .unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v: Option<i64> = c.exec_first("SELECT ? + 1", (n as i64,)).await.unwrap();
                assert_eq!(v, Some(n as i64 + 1));
                n += 1;
            }
            n
        })
    };
    let seed: u64 = std::env::var("DBMUX_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("campaign seed {seed}");
    let port = p.port;
    let db2 = db.to_string();
    let sent = tokio::task::spawn_blocking(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut sent = 0u32;
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut conn: Option<Raw> = None;
        while sent < 4000 && Instant::now() < deadline {
            if rng.gen_ratio(1, 10) {
                // A mutated login.
                let mut r = Raw::connect(port);
                let _ = r.greeting();
                let mut resp = Raw::response(b"fuzz", "mysql_native_password", &[1; 20]);
                for _ in 0..rng.gen_range(1..6) {
                    let i = rng.gen_range(0..resp.len());
                    resp[i] = rng.gen();
                }
                let seq = rng.gen();
                let _ = r.write_packet(seq, &resp);
                let _ = r.read_packet();
                sent += 1;
                continue;
            }
            let c = conn.get_or_insert_with(|| {
                let mut r = Raw::login(port, "fuzz");
                let mut use_db = vec![0x02];
                use_db.extend_from_slice(db2.as_bytes());
                r.command(&use_db).unwrap();
                r.s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                r
            });
            let mut payload: Vec<u8> = match rng.gen_range(0..4) {
                0 | 1 => {
                    let mut q = vec![0x03];
                    q.extend_from_slice(SEEDS[rng.gen_range(0..SEEDS.len())].as_bytes());
                    q
                }
                2 => {
                    let mut q = vec![[0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C][rng.gen_range(0..6)]];
                    q.extend((0..rng.gen_range(0..24)).map(|_| rng.gen::<u8>()));
                    q
                }
                _ => (0..rng.gen_range(0..16)).map(|_| rng.gen::<u8>()).collect(),
            };
            for _ in 0..rng.gen_range(0..4) {
                if payload.is_empty() {
                    break;
                }
                let i = rng.gen_range(0..payload.len());
                match rng.gen_range(0..3) {
                    0 => payload[i] = rng.gen(),
                    1 => {
                        payload.insert(i, [b'\'', b'"', b'\\', b';', 0xBF, 0x5C][rng.gen_range(0..6)]);
                    }
                    _ => {
                        payload.remove(i);
                    }
                }
            }
            // Now and then a packet far over max_allowed_packet.
            if rng.gen_ratio(1, 200) {
                payload.resize(2 << 20, b'x');
            }
            let answered = match payload[..].first() {
                // Commands that get no answer.
                Some(0x18 | 0x19) | Some(0x01) => c.write_packet(0, &payload).is_ok(),
                _ => c.command(&payload).is_ok(),
            };
            sent += 1;
            if !answered || payload[..].first() == Some(&0x01) {
                conn = None;
            }
        }
        sent
    })
    .await
    .unwrap();
    let peak = p.status_kib("VmHWM");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let normal_queries = normal.await.unwrap();
    assert!(p.alive(), "the proxy exited: {}", p.log_text());
    assert!(sent >= 1000, "only {sent} packets sent");
    assert!(
        normal_queries > 100,
        "the normal client ran only {normal_queries} queries"
    );
    assert!(
        peak < rss_bound_kib,
        "peak RSS {peak} KiB over {rss_bound_kib} KiB (at rest {at_rest} KiB)"
    );
    assert!(!p.log_text().contains("panicked"), "{}", p.log_text());
    answers(&p).await;
    eprintln!(
        "campaign: {sent} packets, normal client {normal_queries} queries, RSS at rest {at_rest} KiB, \
         peak {peak} KiB (bound {rss_bound_kib} KiB)"
    );
}

// ---------------------------------------------------------------------------
// Metrics of the hardening paths, in the process's registry.

/// The value of one series (`name{labels}`, labels as the encoder writes
/// them) in an OpenMetrics scrape.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// An in-process proxy (its registry is the test's to scrape) in front of
/// the shared master and replica: KILLs, refused statements and oversized
/// packets are counted as `local` outcomes and in their own counters, the
/// client memory gauge follows the budget, and the pool gauges count the
/// connections of every backend account exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_local_answers_kills_refused_packets_and_per_account_pools() {
    use connectors::proxy::{config::ProxyConfig, Proxy as InProcess};
    let db = fresh_db("pxy_metrics").await;
    let alice = unique("pm");
    let _accounts = Accounts(vec![alice.clone()]);
    for url in [master_url(), replica_url()] {
        let mut c = direct(&url).await;
        c.query_drop(format!("CREATE USER '{alice}'@'%' IDENTIFIED BY 'pw-{alice}'"))
            .await
            .unwrap();
        c.query_drop(format!("GRANT SELECT, INSERT ON {db}.* TO '{alice}'@'%'"))
            .await
            .unwrap();
    }
    let (native, _) = hashes();
    let cfg: ProxyConfig = toml::from_str(&format!(
        "listen = \"127.0.0.1:0\"\nmaster = \"{}\"\nhealth_interval_ms = 50\n\
         max_allowed_packet = 1048576\nmax_memory = 16777216\n\
         [[replicas]]\nname = \"r1\"\nurl = \"{}\"\n\
         [[users]]\nname = \"app\"\n{native}\n\
         [[users]]\nname = \"alice\"\n{native}\nconsistency = \"eventual\"\n\
         backend_user = \"{alice}\"\nbackend_password = \"pw-{alice}\"\n",
        server_url(&master_url()),
        server_url(&replica_url())
    ))
    .unwrap();
    let (_latest, latest_rx) = tokio::sync::watch::channel(0);
    let proxy = InProcess::new(cfg, latest_rx, None).await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    proxy.register_metrics(&mut registry);
    let listener = proxy.bind().await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proxy.run(listener, async move {
        let _ = stop_rx.await;
    }));
    let scrape = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    };
    let q = |route: &str, outcome: &str| {
        format!("dbmux_proxy_queries_total{{route=\"{route}\",outcome=\"{outcome}\"}}")
    };
    let url = |user: &str| format!("mysql://{user}:{PASSWORD}@127.0.0.1:{port}/{db}?prefer_socket=false");
    let conn = |user: &str| mysql_async::Conn::new(mysql_async::Opts::from_url(&url(user)).unwrap());
    let before = scrape();
    let err = |e: mysql_async::Error| e.to_string();

    // Two users, each with a replica and a master connection of its own
    // backend account.
    let mut app = conn("app").await.unwrap();
    let mut al = conn("alice").await.unwrap();
    let replica_id: u32 = direct(&replica_url())
        .await
        .query_first("SELECT @@server_id")
        .await
        .unwrap()
        .unwrap();
    for c in [&mut app, &mut al] {
        assert_eq!(server_id(c).await, replica_id, "the read runs on the replica");
    }
    let who: String = al.query_first("SELECT CURRENT_USER()").await.unwrap().unwrap();
    assert!(who.starts_with(&alice), "{who}");
    app.query_drop("INSERT INTO t (id, v) VALUES (1, 'app')")
        .await
        .unwrap();
    al.query_drop("INSERT INTO t (id, v) VALUES (2, 'alice')")
        .await
        .unwrap();
    let during = scrape();
    for b in ["master", "r1"] {
        assert!(
            sample(
                &during,
                &format!("dbmux_proxy_backend_connections{{backend=\"{b}\"}}")
            ) >= 2.0,
            "{b}: one connection per account at least:\n{during}"
        );
    }

    // Answered by dbmux: an unknown thread, a refused statement, a KILL
    // QUERY of another session, a KILL of the session's own connection.
    let e = app.query_drop("KILL 4000000").await.map_err(err).unwrap_err();
    assert!(e.contains("1094"), "{e}");
    let e = app.query_drop("SELECT 1; KILL 5").await.map_err(err).unwrap_err();
    assert!(e.contains("1235"), "{e}");
    let mut sleeper = conn("app").await.unwrap();
    let sleeper_id = sleeper.id();
    let sleeping = tokio::spawn(async move {
        let r = sleeper.query_drop("SELECT SLEEP(20)").await.map_err(err);
        let _ = sleeper.disconnect().await;
        r
    });
    wait_until("the sleep running", Duration::from_secs(10), || async {
        let mut r = direct(&replica_url()).await;
        let mut m = direct(&master_url()).await;
        let probe = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(20)'";
        let n: i64 = r.query_first(probe).await.unwrap().unwrap();
        let k: i64 = m.query_first(probe).await.unwrap().unwrap();
        n + k >= 1
    })
    .await;
    app.query_drop(format!("KILL QUERY {sleeper_id}")).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("KILL QUERY stopped the sleep")
        .unwrap();
    assert!(r.as_ref().is_err_and(|e| e.contains("1317")), "{r:?}");
    let mut own = conn("app").await.unwrap();
    let own_id = own.id();
    let e = own
        .query_drop(format!("KILL {own_id}"))
        .await
        .map_err(err)
        .unwrap_err();
    assert!(e.contains("1927"), "{e}");
    // An SQL error of the master.
    let e = app
        .query_drop("INSERT INTO no_such_table VALUES (1)")
        .await
        .map_err(err)
        .unwrap_err();
    assert!(e.contains("1146"), "{e}");
    // A prepared statement's text over 64 KiB is held under max_memory
    // until it is closed.
    let text = format!("SELECT ? /* {} */", "m".repeat(100_000));
    let stmt = app.prep(text.as_str()).await.unwrap();
    let held = sample(&scrape(), "dbmux_proxy_client_memory_bytes");
    assert!(held >= 100_000.0, "{held}");
    app.close(stmt).await.unwrap();
    // A packet over max_allowed_packet: refused unread, the session closed.
    let mut big = conn("app").await.unwrap();
    let e = big
        .query_drop(format!("SELECT '{}'", "x".repeat(2 << 20)))
        .await
        .map_err(err)
        .unwrap_err();
    assert!(e.contains("1153"), "{e}");

    let after = scrape();
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    // Unknown thread, refused statement, own KILL (1927), oversized packet.
    assert_eq!(delta(&q("local", "error")), 4.0, "{after}");
    assert_eq!(delta("dbmux_proxy_kills_total"), 2.0);
    assert_eq!(delta("dbmux_proxy_packets_refused_total"), 1.0);
    assert_eq!(delta("dbmux_proxy_session_panics_total"), 0.0);
    // The missing table, and the killed sleep wherever it ran.
    assert_eq!(
        delta(&q("master", "error")) + delta(&q("replica", "error")),
        2.0,
        "{after}"
    );
    assert!(delta(&q("local", "ok")) >= 1.0, "KILL QUERY answered OK");
    assert!(delta(&q("replica", "ok")) >= 3.0);
    assert!(delta(&q("master", "ok")) >= 2.0);
    // dbmux's own answers never count as a backend failure.
    assert_eq!(delta(&q("local", "failed")), 0.0);

    // Every session gone: no connection leaked or counted twice; the replica
    // keeps one idle connection per account key, the master none (a master
    // connection is never pooled again).
    for c in [app, al, own, big] {
        let _ = c.disconnect().await;
    }
    wait_until("the sessions ended", Duration::from_secs(10), || async {
        sample(&scrape(), "dbmux_proxy_connections") == 0.0
    })
    .await;
    let end = scrape();
    for b in ["master", "r1"] {
        let open = sample(
            &end,
            &format!("dbmux_proxy_backend_connections{{backend=\"{b}\"}}"),
        );
        let idle = sample(
            &end,
            &format!("dbmux_proxy_pool_idle_connections{{backend=\"{b}\"}}"),
        );
        assert_eq!(
            open, idle,
            "{b}: connections open but neither idle nor in use:\n{end}"
        );
    }
    assert!(
        sample(&end, "dbmux_proxy_pool_idle_connections{backend=\"r1\"}") >= 2.0,
        "{end}"
    );
    assert!(sample(&end, "dbmux_proxy_backend_connects_total{backend=\"master\"}") >= 2.0);
    assert_eq!(sample(&end, "dbmux_proxy_client_memory_bytes"), 0.0, "{end}");
    let _ = stop_tx.send(());
    server.await.unwrap();
}
