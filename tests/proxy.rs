//! Black-box tests of the MySQL-protocol proxy: the real `dbmux` binary, real
//! clients (the `mariadb` command-line client, mysql_async, PyMySQL), the
//! MariaDB master and replica from `scripts/services up`.
//!
//! Which server answered is told by `@@server_id`: master 1, replica 2; the
//! replica instances these tests start themselves use 3.
//!
//! Replication between the shared master and replica is simulated where a
//! test needs it: the test copies rows and then advances its row of
//! `dbmux.dbmux_offsets` (seq and source position, in the same transaction as
//! the data), which is exactly what the pipeline's MySQL applier does.

mod proxy_support;

use proxy_support::*;
use std::process::Command;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Clients, plugins, TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_logs_in_with_each_plugin_with_and_without_tls() {
    let tls = make_tls();
    let p = start_proxy(ProxyOpts {
        tls: Some(&tls),
        ..Default::default()
    });
    let ca = format!("--ssl-ca={}", tls.ca.display());
    let with_tls: Vec<&str> = vec!["--ssl", &ca, "--ssl-verify-server-cert"];
    for user in ["app", "app_sha2"] {
        for extra in [vec!["--skip-ssl"], with_tls.clone()] {
            let (ok, out, err) = p.cli(user, PASSWORD, &extra, "SELECT @@server_id; SELECT 40 + 2");
            assert!(ok, "{user} {extra:?}: {err}\n{}", p.log_text());
            assert_eq!(
                out.split_whitespace().collect::<Vec<_>>(),
                ["2", "42"],
                "{user} {extra:?}"
            );
            let sql = "BEGIN; SELECT @@server_id; COMMIT; SELECT @@server_id";
            let (ok, out, err) = p.cli(user, PASSWORD, &extra, sql);
            assert!(ok, "{err}");
            assert_eq!(
                out.split_whitespace().collect::<Vec<_>>(),
                ["1", "2"],
                "transaction on the master"
            );
            let (ok, status, err) = p.cli(user, PASSWORD, &extra, "status");
            assert!(ok, "{err}");
            let tls_used = extra.len() > 1;
            assert_eq!(
                status.contains("Cipher in use"),
                tls_used,
                "{user} {extra:?}: {status}"
            );
        }
    }
    // caching_sha2_password full authentication: clear password over TLS only.
    let (ok, out, err) = p.cli("app_full", PASSWORD, &with_tls, "SELECT 7");
    assert!(ok && out.trim() == "7", "{err}\n{}", p.log_text());
    // Without TLS the client asks for an RSA key; the proxy has none and
    // refuses (the client reports that as 2061).
    let (ok, _, err) = p.cli("app_full", PASSWORD, &["--skip-ssl"], "SELECT 7");
    assert!(!ok && (err.contains("1045") || err.contains("2061")), "{err}");
    let (ok, _, err) = p.cli("app_full", "wrong", &with_tls, "SELECT 7");
    assert!(!ok && err.contains("1045"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_plain_clients() {
    let tls = make_tls();
    let p = start_proxy(ProxyOpts {
        tls: Some(&tls),
        tls_require: true,
        ..Default::default()
    });
    let (ok, _, err) = p.cli("app", PASSWORD, &["--skip-ssl"], "SELECT 1");
    assert!(
        !ok && err.contains("1045") && err.contains("TLS is required"),
        "{err}"
    );
    let ca = format!("--ssl-ca={}", tls.ca.display());
    let (ok, out, err) = p.cli(
        "app",
        PASSWORD,
        &["--ssl", &ca, "--ssl-verify-server-cert"],
        "SELECT 1",
    );
    assert!(ok && out.trim() == "1", "{err}");
    let mut c = p.tls_conn("app_sha2", "", &tls).await;
    assert_eq!(server_id(&mut c).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_queries_prepared_statements_and_transactions() {
    let tls = make_tls();
    let p = start_proxy(ProxyOpts {
        tls: Some(&tls),
        ..Default::default()
    });
    let db = fresh_db("pxy_async").await;
    let mut n = 0;
    for user in ["app", "app_sha2", "app_full"] {
        for use_tls in [false, true] {
            if user == "app_full" && !use_tls {
                continue;
            }
            let mut c = if use_tls {
                p.tls_conn(user, &db, &tls).await
            } else {
                p.conn(user, &db).await
            };
            // Text protocol, a replica read.
            assert_eq!(server_id(&mut c).await, 2, "{user} tls={use_tls}");
            // Prepared statements: write, then read back (read-your-writes → master).
            n += 10;
            c.exec_drop(
                "INSERT INTO t (id, v) VALUES (?, ?), (?, ?)",
                (n, "a", n + 1, "b"),
            )
            .await
            .unwrap();
            let v: Option<String> = c
                .exec_first("SELECT v FROM t WHERE id = ?", (n + 1,))
                .await
                .unwrap();
            assert_eq!(v.as_deref(), Some("b"));
            let rows: Vec<(i32, String)> = c
                .exec("SELECT id, v FROM t WHERE id >= ? ORDER BY id", (n,))
                .await
                .unwrap();
            assert_eq!(rows, vec![(n, "a".to_string()), (n + 1, "b".to_string())]);
            // Transactions: rollback leaves nothing, commit keeps.
            let mut tx = c.start_transaction(mysql_async::TxOpts::default()).await.unwrap();
            tx.exec_drop("INSERT INTO t (id, v) VALUES (?, 'rolled back')", (n + 2,))
                .await
                .unwrap();
            assert_eq!(
                tx.query_first::<u32, _>("SELECT @@server_id").await.unwrap(),
                Some(1)
            );
            tx.rollback().await.unwrap();
            let mut tx = c.start_transaction(mysql_async::TxOpts::default()).await.unwrap();
            tx.exec_drop("INSERT INTO t (id, v) VALUES (?, 'committed')", (n + 3,))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let mut m = direct(&master_url()).await;
            let ids: Vec<i32> = m
                .exec(format!("SELECT id FROM {db}.t WHERE id >= ? ORDER BY id"), (n,))
                .await
                .unwrap();
            assert_eq!(ids, vec![n, n + 1, n + 3], "{user} tls={use_tls}");
            // COM_RESET_CONNECTION and COM_PING.
            c.reset().await.unwrap();
            c.ping().await.unwrap();
            c.disconnect().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_logs_in_with_each_plugin_with_and_without_tls() {
    let tls = make_tls();
    let p = start_proxy(ProxyOpts {
        tls: Some(&tls),
        ..Default::default()
    });
    let db = fresh_db("pxy_py").await;
    let script = r#"
import sys, pymysql
port, db, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = []
for i, (user, tls) in enumerate([("app", False), ("app", True), ("app_sha2", False), ("app_sha2", True), ("app_full", True)]):
    kw = {"ssl": {"ca": ca}} if tls else {}
    c = pymysql.connect(host="127.0.0.1", port=port, user=user, password="app-password", database=db,
                        autocommit=True, **kw)
    cur = c.cursor()
    cur.execute("SELECT @@server_id")
    sid = cur.fetchone()[0]
    cur.execute("INSERT INTO t (id, v) VALUES (%s, %s)", (1000 + i, user))
    c.commit()
    cur.execute("SELECT v, @@server_id FROM t WHERE id = %s", (1000 + i,))
    v, sid2 = cur.fetchone()
    c.begin(); cur.execute("UPDATE t SET v = 'x' WHERE id = %s", (1000 + i,)); c.rollback()
    cur.execute("SELECT v FROM t WHERE id = %s", (1000 + i,))
    v2 = cur.fetchone()[0]
    cipher = c._sock.cipher()[0] if tls else "-"
    out.append(f"{user} {tls} {sid} {v} {sid2} {v2} {cipher != '-'}")
    c.close()
# PyMySQL's default is autocommit off: every statement is in a transaction,
# so every read goes to the master.
c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app-password")
cur = c.cursor(); cur.execute("SELECT @@server_id"); out.append(f"autocommit off {cur.fetchone()[0]}")
c.close()
# COM_INIT_DB, COM_PING, COM_SET_OPTION, COM_STATISTICS, COM_FIELD_LIST.
from pymysql.constants import CLIENT
c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app-password", autocommit=True,
                    client_flag=CLIENT.MULTI_STATEMENTS)
c.select_db(db)
cur = c.cursor(); cur.execute("SELECT DATABASE()"); out.append(f"init_db {cur.fetchone()[0] == db}")
c.ping(reconnect=False)
c._execute_command(0x1b, b"\x01\x00"); c._read_packet()
try:
    cur.execute("SELECT 1; SELECT 2"); out.append("multi-statements still on")
except pymysql.err.MySQLError as e:
    out.append(f"multi off {e.args[0]}")
c._execute_command(0x1b, b"\x00\x00"); c._read_packet()
cur.execute("SELECT 1; SELECT 2"); cur.nextset(); out.append(f"multi on {cur.fetchone()[0]}")
c._execute_command(0x09, b""); out.append(f"statistics {c._read_packet().get_all_data()[:7]}")
c._execute_command(0x04, b"t\x00")
fields = 0
while not c._read_packet().is_eof_packet():
    fields += 1
out.append(f"field_list {fields}")
cur.execute("SELECT 6"); out.append(f"after {cur.fetchone()[0]}")
c.close()
# An unsupported command gets an error packet, and the session survives.
c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app-password")
try:
    c._execute_command(0x12, b"")  # COM_BINLOG_DUMP
    c._read_packet()
    out.append("no error")
except pymysql.err.MySQLError as e:
    out.append(f"unsupported {e.args[0]}")
cur = c.cursor(); cur.execute("SELECT 5"); out.append(f"after {cur.fetchone()[0]}")
print("\n".join(out))
"#;
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            script,
            &p.port.to_string(),
            &db,
            &tls.ca.display().to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log_text()
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "app False 2 app 1 app False",
            "app True 2 app 1 app True",
            "app_sha2 False 2 app_sha2 1 app_sha2 False",
            "app_sha2 True 2 app_sha2 1 app_sha2 True",
            "app_full True 2 app_full 1 app_full True",
            "autocommit off 1",
            "init_db True",
            "multi off 1064",
            "multi on 2",
            "statistics b'Uptime:'",
            "field_list 3",
            "after 6",
            "unsupported 1047",
            "after 5",
        ]
    );
}

// ---------------------------------------------------------------------------
// Routing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_sends_reads_to_the_replica_and_state_to_the_master() {
    let p = start_proxy(ProxyOpts::default());
    let db = fresh_db("pxy_route").await;
    let mut c = p.conn("app_eventual", &db).await;
    assert_eq!(server_id(&mut c).await, 2, "plain read");
    c.query_drop("INSERT INTO t (id, v) VALUES (1, 'x')")
        .await
        .unwrap();
    assert_eq!(
        server_id(&mut c).await,
        2,
        "eventual user reads the replica right after a write"
    );
    let sid: Option<u32> = c
        .query_first("SELECT @@server_id FROM t FOR UPDATE")
        .await
        .unwrap();
    assert_eq!(sid, Some(1), "locking read");
    let sid: Option<u32> = c
        .query_first("SELECT @@server_id FROM t LOCK IN SHARE MODE")
        .await
        .unwrap();
    assert_eq!(sid, Some(1), "unparsable (LOCK IN SHARE MODE)");
    let sid: Option<(u32, u64)> = c
        .query_first("SELECT @@server_id, LAST_INSERT_ID()")
        .await
        .unwrap();
    assert_eq!(sid.unwrap().0, 1, "LAST_INSERT_ID");
    // Transaction: everything on the master until COMMIT.
    c.query_drop("BEGIN").await.unwrap();
    assert_eq!(server_id(&mut c).await, 1);
    c.query_drop("COMMIT").await.unwrap();
    assert_eq!(server_id(&mut c).await, 2);
    // autocommit=0 pins until it is switched back on.
    c.query_drop("SET autocommit = 0").await.unwrap();
    assert_eq!(server_id(&mut c).await, 1);
    c.query_drop("SET autocommit = 1").await.unwrap();
    assert_eq!(server_id(&mut c).await, 2);
    // Session settings travel with the session to every backend.
    c.query_drop("SET time_zone = '+05:00'").await.unwrap();
    let tz: Option<(String, u32)> = c.query_first("SELECT @@time_zone, @@server_id").await.unwrap();
    assert_eq!(tz, Some(("+05:00".into(), 2)));
    // Multi-statements: reads stay on the replica, a write sends all to the master.
    let mut r = c
        .query_iter("SELECT @@server_id; SELECT @@server_id + 10")
        .await
        .unwrap();
    let a: Vec<u32> = r.collect().await.unwrap();
    let b: Vec<u32> = r.collect().await.unwrap();
    drop(r);
    assert_eq!((a, b), (vec![2], vec![12]));
    let mut r = c
        .query_iter("INSERT INTO t (id, v) VALUES (2, 'y'); SELECT @@server_id")
        .await
        .unwrap();
    let _: Vec<u32> = r.collect().await.unwrap();
    let b: Vec<u32> = r.collect().await.unwrap();
    drop(r);
    assert_eq!(b, vec![1]);
    // User variables and GET_LOCK pin the session to the master.
    c.query_drop("SET @x = 5").await.unwrap();
    let v: Option<(u32, u32)> = c.query_first("SELECT @x, @@server_id").await.unwrap();
    assert_eq!(v, Some((5, 1)));
    assert_eq!(server_id(&mut c).await, 1);
    let mut c2 = p.conn("app_eventual", &db).await;
    assert_eq!(server_id(&mut c2).await, 2);
    let _: Option<i32> = c2.query_first("SELECT GET_LOCK('pxy', 1)").await.unwrap();
    assert_eq!(server_id(&mut c2).await, 1);
    // COM_RESET_CONNECTION unpins.
    c2.reset().await.unwrap();
    assert_eq!(server_id(&mut c2).await, 2);
    // Read-your-writes user: after a write, reads go to the master until the
    // replica covers it (the shared replica reports no GTIDs: never here).
    let mut c3 = p.conn("app", &db).await;
    assert_eq!(server_id(&mut c3).await, 2);
    c3.query_drop("INSERT INTO t (id, v) VALUES (3, 'z')")
        .await
        .unwrap();
    assert_eq!(server_id(&mut c3).await, 1);
    // A setting made while only the master connection is open is replayed
    // on the replica connection opened later.
    let mut c5 = p.conn("app_eventual", &db).await;
    c5.query_drop("BEGIN").await.unwrap();
    c5.query_drop("SET time_zone = '-03:00'").await.unwrap();
    c5.query_drop("COMMIT").await.unwrap();
    let tz: Option<(String, u32)> = c5.query_first("SELECT @@time_zone, @@server_id").await.unwrap();
    assert_eq!(tz, Some(("-03:00".into(), 2)));
    // NO_BACKSLASH_ESCAPES changes how strings are lexed; the router's
    // parser assumes escapes, so such a session reads from the master.
    let mut c4 = p.conn("app_eventual", &db).await;
    assert_eq!(server_id(&mut c4).await, 2);
    c4.query_drop("SET sql_mode = 'NO_BACKSLASH_ESCAPES'")
        .await
        .unwrap();
    let v: Option<(String, u32)> = c4.query_first(r"SELECT 'a\b', @@server_id").await.unwrap();
    assert_eq!(v, Some((r"a\b".to_string(), 1)));
    c4.query_drop("SET sql_mode = DEFAULT").await.unwrap();
    assert_eq!(server_id(&mut c4).await, 2);
    // A statement prepared on the replica that no longer prepares on the
    // master (its table is gone there) reports the server's error; the
    // session goes on.
    let mut c6 = p.conn("app", &db).await;
    let mut m = direct(&master_url()).await;
    m.query_drop(format!("CREATE TABLE {db}.gone (a INT)"))
        .await
        .unwrap();
    let mut r = direct(&replica_url()).await;
    r.query_drop(format!("CREATE TABLE {db}.gone (a INT)"))
        .await
        .unwrap();
    let stmt = c6.prep("SELECT a FROM gone WHERE a = ?").await.unwrap();
    m.query_drop(format!("DROP TABLE {db}.gone")).await.unwrap();
    c6.query_drop("INSERT INTO t (id, v) VALUES (6, 'w')")
        .await
        .unwrap(); // reads → master now
    let e = c6.exec_first::<i32, _, _>(&stmt, (1,)).await.unwrap_err();
    assert!(e.to_string().contains("1146"), "{e}");
    assert_eq!(server_id(&mut c6).await, 1);
    // Writes went to the master only.
    let mut r = direct(&replica_url()).await;
    let n: Option<i64> = r
        .query_first(format!("SELECT COUNT(*) FROM {db}.t"))
        .await
        .unwrap();
    assert_eq!(n, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_user_starts_a_new_session_as_the_new_user() {
    let p = start_proxy(ProxyOpts::default());
    let db = fresh_db("pxy_cu").await;
    let mut c = p.conn("app", &db).await;
    c.query_drop("SET @x = 1").await.unwrap();
    assert_eq!(server_id(&mut c).await, 1, "pinned by the user variable");
    let to = |user: &str, pass: &str| {
        mysql_async::ChangeUserOpts::default()
            .with_user(Some(user.into()))
            .with_pass(Some(pass.into()))
            .with_db_name(Some(db.clone()))
    };
    c.change_user(to("app_eventual", PASSWORD)).await.unwrap();
    // A new session: unpinned, and the new user's (eventual) consistency.
    c.query_drop("INSERT INTO t (id, v) VALUES (1, 'a')")
        .await
        .unwrap();
    assert_eq!(server_id(&mut c).await, 2);
    let x: Option<Option<i64>> = c.query_first("SELECT @x").await.unwrap();
    assert_eq!(x, Some(None), "user variables are gone");
    c.change_user(to("app_sha2", PASSWORD)).await.unwrap();
    assert_eq!(server_id(&mut c).await, 2);
    assert!(c.change_user(to("app", "wrong")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_over_16_mib_pass_both_ways() {
    let p = start_proxy(ProxyOpts::default());
    let db = fresh_db("pxy_big").await;
    let mut c = p.conn("app", &db).await;
    let blob: Vec<u8> = (0..(17 << 20) + 5).map(|i| (i % 251) as u8).collect();
    c.exec_drop("INSERT INTO t (id, b) VALUES (1, ?)", (blob.clone(),))
        .await
        .unwrap();
    let back: Option<Vec<u8>> = c.exec_first("SELECT b FROM t WHERE id = 1", ()).await.unwrap();
    assert!(back.as_ref() == Some(&blob), "prepared round trip");
    let back: Option<Vec<u8>> = c.query_first("SELECT b FROM t WHERE id = 1").await.unwrap();
    assert!(back.as_ref() == Some(&blob), "text round trip");
    let q = format!("SELECT LENGTH('{}')", "x".repeat(17 << 20));
    let n: Option<u64> = c.query_first(q).await.unwrap();
    assert_eq!(n, Some(17 << 20), "17 MiB query text");
}

// ---------------------------------------------------------------------------
// The door: allowlist and passwords

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_and_wrong_passwords_are_refused_before_any_query() {
    let db = fresh_db("pxy_door").await;
    let p = start_proxy(ProxyOpts {
        listen_host: "0.0.0.0",
        allow: vec!["127.0.0.1/32"],
        ..Default::default()
    });
    let insert = format!("INSERT INTO {db}.t (id, v) VALUES (1, 'must not happen')");
    // From 127.0.0.2: refused with ER_HOST_NOT_PRIVILEGED as the first
    // packet (the `mariadb` client cannot pick its source address; PyMySQL
    // and a raw socket can).
    let first = {
        use tokio::io::AsyncReadExt;
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = sock.connect(([127, 0, 0, 1], p.port).into()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    };
    assert_eq!(first.get(4), Some(&0xFF), "first packet is an ERR packet");
    assert_eq!(u16::from_le_bytes([first[5], first[6]]), 1130);
    let script = r#"
import sys, pymysql
try:
    pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="app", password="app-password", bind_address="127.0.0.2")
    print("connected")
except pymysql.err.MySQLError as e:
    print(e.args[0])
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, &p.port.to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1130");
    // From 127.0.0.1 the same client gets in.
    let (ok, out, err) = p.cli("app", PASSWORD, &[], "SELECT 1");
    assert!(ok && out.trim() == "1", "{err}");
    // Wrong password and unknown user: access denied, nothing ran.
    let (ok, _, err) = p.cli("app", "wrong-password", &[], &insert);
    assert!(!ok && err.contains("1045"), "{err}");
    let (ok, _, err) = p.cli("app_sha2", "wrong-password", &[], &insert);
    assert!(!ok && err.contains("1045"), "{err}");
    let (ok, _, err) = p.cli("nobody", PASSWORD, &[], &insert);
    assert!(!ok && err.contains("1045"), "{err}");
    let opts = mysql_async::Opts::from_url(&format!(
        "mysql://app:bad@127.0.0.1:{}/{db}?prefer_socket=false",
        p.port
    ))
    .unwrap();
    assert!(mysql_async::Conn::new(opts).await.is_err());
    let mut m = direct(&master_url()).await;
    let n: Option<i64> = m
        .query_first(format!("SELECT COUNT(*) FROM {db}.t"))
        .await
        .unwrap();
    assert_eq!(n, Some(0), "a refused client reached the engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_idle_timeout() {
    let p = start_proxy(ProxyOpts {
        extra: "max_connections = 2\nidle_timeout_secs = 1\n",
        ..Default::default()
    });
    let mut a = p.conn("app", "").await;
    let mut b = p.conn("app", "").await;
    assert_eq!(server_id(&mut a).await, 2);
    // A third client gets ER_CON_COUNT_ERROR, not a hang.
    let (ok, _, err) = p.cli("app", PASSWORD, &["--skip-ssl"], "SELECT 1");
    assert!(!ok && err.contains("1040"), "{err}");
    // Idle for longer than the timeout: the proxy closed the session.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(a.query_drop("SELECT 1").await.is_err(), "idle session still open");
    let _ = b.query_drop("SELECT 1").await;
    drop((a, b));
    // Slots are free again.
    let mut c = p.conn("app", "").await;
    assert_eq!(server_id(&mut c).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_result_does_not_mark_the_replica_down() {
    let p = start_proxy(ProxyOpts::default());
    let db = fresh_db("pxy_abort").await;
    // ~100 MB of rows from the replica; read one row, then drop the socket.
    let script = r#"
import os, sys, pymysql, pymysql.cursors
c = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="app_eventual", password="app-password",
                    database=sys.argv[2], autocommit=True, cursorclass=pymysql.cursors.SSCursor)
cur = c.cursor()
cur.execute("SELECT REPEAT('x', 1000), @@server_id FROM seq_1_to_100000")
print(cur.fetchone()[1], flush=True)
os._exit(0)  # no clean-up: the socket closes with the result half read
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, &p.port.to_string(), &db])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = p.log_text();
    assert!(!log.contains("marked down"), "{log}");
    let mut c = p.conn("app_eventual", &db).await;
    assert_eq!(server_id(&mut c).await, 2);
}

// ---------------------------------------------------------------------------
// Failure: a replica that stops

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_takes_no_traffic_and_clients_see_no_errors() {
    // A MariaDB server owned by this test (server_id 3), so it can be stopped.
    let mut own = support::private::PrivateMariadb::start(&["--server-id=3"]).await;
    let p = start_proxy(ProxyOpts {
        replicas: vec![("own".into(), own.url(""), None)],
        ..Default::default()
    });
    // Prepared and text reads from several sessions, all on the own replica.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = p.conn("app_eventual", "").await;
        assert_eq!(server_id(&mut c).await, 3);
        let s: Option<u32> = c.exec_first("SELECT @@server_id + ?", (0,)).await.unwrap();
        assert_eq!(s, Some(3));
        clients.push(c);
    }
    own.kill();
    // Every read after the stop succeeds, on the master.
    for round in 0..3 {
        for c in clients.iter_mut() {
            assert_eq!(server_id(c).await, 1, "round {round}");
            let s: Option<u32> = c.exec_first("SELECT @@server_id + ?", (0,)).await.unwrap();
            assert_eq!(s, Some(1));
        }
    }
    let mut fresh = p.conn("app_eventual", "").await;
    assert_eq!(
        server_id(&mut fresh).await,
        1,
        "a new session avoids the down replica"
    );
    // Back up: traffic returns once the health check sees it.
    own.restart().await;
    wait_until(
        "reads back on the restarted replica",
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
    // The sessions that lived through it keep working, prepared statements
    // included, and move back to the replica.
    for c in clients.iter_mut() {
        let s: Option<u32> = c.exec_first("SELECT @@server_id + ?", (0,)).await.unwrap();
        assert_eq!(s, Some(3), "{}", p.log_text());
        assert_eq!(server_id(c).await, 3);
    }
    drop(own);
}

// ---------------------------------------------------------------------------
// Read-your-writes

/// Copies `t` from the master to the replica every `delay`, then advances
/// the replica's `pos` row to the master GTID position read *before* the
/// copy: a slow, honest replication stream.
async fn slow_replication(
    db: String,
    consumer: String,
    delay: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut m = direct(&master_url()).await;
    let mut r = direct(&replica_url()).await;
    // The applier's offsets table (connectors::mysql::apply), same schema.
    r.query_drop("CREATE DATABASE IF NOT EXISTS dbmux").await.unwrap();
    r.query_drop(
        "CREATE TABLE IF NOT EXISTS `dbmux`.`dbmux_offsets` (
           `consumer` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
           `seq` BIGINT UNSIGNED NOT NULL,
           `position` TEXT NULL,
           `updated_at` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
         ) ENGINE=InnoDB",
    )
    .await
    .unwrap();
    r.exec_drop(
        "INSERT INTO dbmux.dbmux_offsets (consumer, seq) VALUES (?, 0)",
        (&consumer,),
    )
    .await
    .unwrap();
    let mut seq = 0u64;
    while !*stop.borrow() {
        tokio::time::sleep(delay).await;
        let pos: Option<String> = m.query_first("SELECT @@gtid_binlog_pos").await.unwrap();
        let rows: Vec<(i32, Option<String>)> = m.query(format!("SELECT id, v FROM {db}.t")).await.unwrap();
        let mut tx = r.start_transaction(mysql_async::TxOpts::default()).await.unwrap();
        for chunk in rows.chunks(500) {
            let values: Vec<String> = chunk
                .iter()
                .map(|(id, v)| {
                    format!(
                        "({id}, {})",
                        v.as_ref().map(|v| format!("'{v}'")).unwrap_or("NULL".into())
                    )
                })
                .collect();
            tx.query_drop(format!("REPLACE INTO {db}.t (id, v) VALUES {}", values.join(",")))
                .await
                .unwrap();
        }
        // Like the applier: seq and source position in the data's transaction.
        seq += 1;
        let position = format!("mysql:mysql-bin.000001:4:{}", pos.unwrap_or_default());
        tx.exec_drop(
            "UPDATE dbmux.dbmux_offsets SET seq = ?, position = ? WHERE consumer = ?",
            (seq, position, &consumer),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_under_slow_replication_has_no_stale_reads() {
    let db = fresh_db("pxy_ryw").await;
    // The replica's (simulated) applier has consumer "pxy/<db>", as `dbmux
    // run` names them "<pipeline>/<replica>": the proxy's default position
    // query reads that row of dbmux.dbmux_offsets.
    let consumer = format!("pxy/{db}");
    let p = start_proxy(ProxyOpts {
        replicas: vec![(
            "r1".into(),
            server_url(&replica_url()),
            Some(format!("consumer = \"{consumer}\"\n")),
        )],
        ..Default::default()
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let repl = tokio::spawn(slow_replication(
        db.clone(),
        consumer,
        Duration::from_millis(400),
        stop_rx,
    ));

    const CLIENTS: i32 = 12;
    const ROUNDS: i32 = 25;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let url = p.url("app", &db);
        tasks.push(tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
                .await
                .unwrap();
            let (mut stale, mut on_replica) = (0, 0);
            for round in 0..ROUNDS {
                let id = client * 1000 + round;
                let v = format!("c{client}r{round}");
                if round % 2 == 0 {
                    c.exec_drop("INSERT INTO t (id, v) VALUES (?, ?)", (id, &v))
                        .await
                        .unwrap();
                } else {
                    c.query_drop(format!("INSERT INTO t (id, v) VALUES ({id}, '{v}')"))
                        .await
                        .unwrap();
                }
                // Immediately read it back, and an earlier row of ours.
                let got: Option<(String, u32)> = c
                    .exec_first("SELECT v, @@server_id FROM t WHERE id = ?", (id,))
                    .await
                    .unwrap();
                match got {
                    Some((g, sid)) if g == v => on_replica += (sid == 2) as i32,
                    _ => stale += 1,
                }
                let earlier = client * 1000 + round / 2;
                let got: Option<String> = c
                    .query_first(format!("SELECT v FROM t WHERE id = {earlier}"))
                    .await
                    .unwrap();
                if got.is_none() {
                    stale += 1;
                }
                if round % 5 == 4 {
                    // Pause now and then so replication can catch up with us.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let sid: Option<(String, u32)> = c
                        .query_first(format!("SELECT v, @@server_id FROM t WHERE id = {earlier}"))
                        .await
                        .unwrap();
                    match sid {
                        Some((_, 2)) => on_replica += 1,
                        Some(_) => {}
                        None => stale += 1,
                    }
                }
            }
            (stale, on_replica)
        }));
    }
    let (mut stale, mut on_replica) = (0, 0);
    for t in tasks {
        let (s, r) = t.await.unwrap();
        stale += s;
        on_replica += r;
    }
    assert_eq!(stale, 0, "stale reads through the proxy");
    if on_replica == 0 {
        // On a loaded machine the slow replication may never have caught up
        // with a client's own writes while it ran: once it has, a session's
        // read of its earlier write must be served by the replica, correctly.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut c = p.conn("app", &db).await;
        while on_replica == 0 && std::time::Instant::now() < deadline {
            let got: Option<(String, u32)> = c
                .query_first("SELECT v, @@server_id FROM t WHERE id = 0")
                .await
                .unwrap();
            match got {
                Some((v, 2)) if v == "c0r0" => on_replica += 1,
                Some((v, _)) if v == "c0r0" => tokio::time::sleep(Duration::from_millis(100)).await,
                other => panic!("stale or wrong read of id 0 through the proxy: {other:?}"),
            }
        }
    }
    assert!(
        on_replica > 0,
        "no read ever reached the replica: the test proves nothing"
    );

    // The same workload with eventual consistency does read stale data: the
    // replication delay is real.
    let mut c = p.conn("app_eventual", &db).await;
    let mut eventual_stale = 0;
    for i in 0..5 {
        c.exec_drop("INSERT INTO t (id, v) VALUES (?, 'e')", (900_000 + i,))
            .await
            .unwrap();
        let got: Option<String> = c
            .exec_first("SELECT v FROM t WHERE id = ?", (900_000 + i,))
            .await
            .unwrap();
        eventual_stale += got.is_none() as i32;
    }
    assert!(
        eventual_stale > 0,
        "eventual reads were never stale: replication is not slow"
    );
    stop_tx.send(true).unwrap();
    repl.await.unwrap();
}
