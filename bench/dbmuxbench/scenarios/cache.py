"""cache: the Redis result cache in the front door vs the same query on the replica directly, same run.

One table of `size` rows (100k by default) is replicated to the MariaDB replica; `dbmux run` serves it through
its proxy with `[proxy.cache]` on the services' Redis. Three queries, each measured as client round trips
(one connection, text protocol, read at the packet level without decoding rows, so the client's cost stays small) directly against the replica and through the proxy once the entry
is cached: a primary-key lookup, a 100-row range scan and an aggregate over every row. Targets (issue 10): hit
p50 ≤ 0.6×, ≤ 0.1× and ≤ 0.01× the direct p50. Then invalidation lag: single-row updates committed on the
master, each timed from its commit (client side) to the moment the table's last-changed seq moves in Redis
(polled over a raw RESP connection), p50/p99. The check: the cached answers equal the master's, and after the
updates a read through the proxy returns the master's row.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pymysql

from ..engines import Column, tables_equal
from ..harness import BenchError, Result, Scenario, Target, percentile, scenario
from ..process import free_port

PASSWORD_HASHES = (
    'mysql_native_password = "*F142931D9296BB66D4600D47418DBC1475D27D29"\n'
    'caching_sha2_password = "6681bbfe12153c1b4a0268cf4733a0a3021ff47751fafc3c0a4bdae5a0a89db6"\n'
)


class Resp:
    """The smallest Redis client: GET over RESP (inline commands are enough)."""

    def __init__(self, host: str, port: int):
        self.s = socket.create_connection((host, port), timeout=5)
        self.f = self.s.makefile("rb")

    def get(self, key: str) -> bytes | None:
        self.s.sendall(b"*2\r\n$3\r\nGET\r\n$" + str(len(key.encode())).encode() + b"\r\n" + key.encode() + b"\r\n")
        line = self.f.readline()
        if line.startswith(b"$-1"):
            return None
        if not line.startswith(b"$"):
            raise BenchError(f"redis: {line!r}")
        n = int(line[1:])
        data = self.f.read(n + 2)
        return data[:n]


def raw_query(conn: pymysql.connections.Connection, sql: str) -> int:
    """One COM_QUERY round trip read at the packet level (headers only, rows not decoded), so the client's
    own cost is small next to the server's and the proxy's; returns the number of rows. Text result sets
    with EOF packets (PyMySQL does not ask for CLIENT_DEPRECATE_EOF)."""
    q = b"\x03" + sql.encode()
    conn._write_bytes(len(q).to_bytes(3, "little") + b"\x00" + q)
    rf = conn._rfile
    eofs = 0
    rows = 0
    first = True
    while True:
        h = rf.read(4)
        n = h[0] | h[1] << 8 | h[2] << 16
        p = rf.read(n)
        if first:
            first = False
            if p[0] in (0x00, 0xFF):  # OK or error: no result set
                if p[0] == 0xFF:
                    raise BenchError(f"{sql}: {p[9:].decode(errors='replace')}")
                return 0
            continue
        if p[0] == 0xFE and n < 9:
            eofs += 1
            if eofs == 2:
                return rows
        elif p[0] == 0xFF:
            raise BenchError(f"{sql}: {p[9:].decode(errors='replace')}")
        elif eofs == 1:
            rows += 1


def timed(conn: pymysql.connections.Connection, sql: str, n: int) -> tuple[list[float], Any]:
    """n round trips of `sql` (microseconds each, read by [`raw_query`]) and then the decoded answer."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        raw_query(conn, sql)
        out.append((time.perf_counter_ns() - t0) / 1000)
    with conn.cursor() as cur:
        cur.execute(sql)
        rows: Any = cur.fetchall()
    return out, rows


def proxy_status(dbmux: Any) -> dict[str, Any]:
    """The proxy's part of the real `/status` (the metrics-based `status()` has no proxy section)."""
    return dbmux.status_json()["proxy"]


def wait_proxy(dbmux: Any, cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        last = proxy_status(dbmux)
        if cond(last):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
        time.sleep(0.1)


@scenario
class Cache(Scenario):
    name = "cache"
    title = "Redis result cache: hit latency vs the replica directly, invalidation lag"
    size_unit = "rows in the table"
    full_size = 100_000
    quick_size = 100_000

    def run(self, ctx: Any, size: Any, result: Result) -> None:
        rows = int(size)
        db = ctx.db("cache")
        redis_url = ctx.env.get("DBMUX_TEST_REDIS_URL", "redis://127.0.0.1:16379/")
        rhost, rport = redis_url.split("//", 1)[1].strip("/").split(":")
        ctx.master.execute(f"CREATE DATABASE `{db}`",
                           f"CREATE TABLE `{db}`.items (id INT PRIMARY KEY, grp INT NOT NULL, v INT NOT NULL, "
                           "pad VARCHAR(64) NOT NULL)")
        port = free_port()
        m, r = ctx.master.url, ctx.replica.url
        prefix = f"bench-{ctx.run_id}"
        extra = (
            f'\n[proxy]\nlisten = "127.0.0.1:{port}"\nmaster = "mysql://{m.user}:{m.password}@{m.host}:{m.port}/"\n'
            f'health_interval_ms = 100\n[[proxy.replicas]]\nname = "mariadb"\n'
            f'url = "mysql://{r.user}:{r.password}@{r.host}:{r.port}/"\n'
            f'[[proxy.users]]\nname = "app"\nconsistency = "eventual"\n{PASSWORD_HASHES}'
            f'[proxy.cache]\nredis = "{redis_url}"\ntables = ["{db}.*"]\nkey_prefix = "{prefix}"\n'
            f"max_result_bytes = 4194304\n"
        )
        dbmux = ctx.dbmux(db, replicas=("mariadb",), extra_toml=extra)
        dbmux.start()
        ctx.master.execute(
            f"INSERT INTO `{db}`.items SELECT seq, seq % 100, seq, REPEAT('x', 48) FROM `{db}`.seq_1_to_{rows}")
        dbmux.wait_applied(rows, timeout=600)
        wait_proxy(dbmux, lambda p: p["cache"]["available"], 30, "cache in use")
        wait_proxy(dbmux, lambda p: any(b["name"] == "mariadb" and b["applied_seq"] == rows
                                        for b in p["backends"]), 30, "proxy sees the replica caught up")
        direct = pymysql.connect(host=r.host, port=r.port, user=r.user, password=r.password, database=db,
                                 autocommit=True)
        proxy = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app-password", database=db,
                                autocommit=True)
        master = ctx.master.connect(db)
        queries = [
            ("primary-key lookup", f"SELECT id, grp, v, pad FROM items WHERE id = {rows // 2}", 3000, 0.6),
            ("100-row range scan", f"SELECT id, grp, v, pad FROM items WHERE id BETWEEN 1000 AND 1099", 2000, 0.1),
            (f"aggregate over {rows} rows", "SELECT COUNT(*), SUM(v), AVG(grp), MAX(pad) FROM items", 60, 0.01),
        ]
        for label, sql, n, target in queries:
            _, want = timed(master, sql, 1)
            d_lat, d_rows = timed(direct, sql, n)
            # Warm: until the proxy answers from the cache (hits move).
            hits0 = proxy_status(dbmux)["cache"]["hits"]
            deadline = time.monotonic() + 20
            while proxy_status(dbmux)["cache"]["hits"] <= hits0:
                timed(proxy, sql, 1)
                if time.monotonic() > deadline:
                    raise BenchError(f"{label}: never answered from the cache")
                time.sleep(0.01)
            hits0 = proxy_status(dbmux)["cache"]["hits"]
            h_lat, h_rows = timed(proxy, sql, max(n, 500))
            hits = proxy_status(dbmux)["cache"]["hits"] - hits0
            result.check(list(h_rows) == list(want) and list(d_rows) == list(want),
                         f"{label}: cached and direct answers equal the master's")
            result.check(hits >= 0.99 * max(n, 500), f"{label}: {hits} of {max(n, 500)} reads were cache hits")
            dp50, hp50 = percentile(d_lat, 50), percentile(h_lat, 50)
            result.metrics[label] = {"direct_p50_us": dp50, "direct_p99_us": percentile(d_lat, 99),
                                     "hit_p50_us": hp50, "hit_p99_us": percentile(h_lat, 99), "hits": hits}
            result.figure(f"{label}: hit p50 vs replica p50", hp50, "µs", dp50, "replica direct",
                          Target("<=", target))
            result.figure(f"{label}: hit p99 vs replica p99", percentile(h_lat, 99), "µs",
                          percentile(d_lat, 99), "replica direct")
        # Invalidation lag: commit on the master → the table's last-changed seq moves in Redis.
        resp = Resp(rhost, int(rport))
        epoch = (resp.get(f"{prefix}:epoch") or b"").decode()
        if ":" not in epoch:
            raise BenchError(f"no cache epoch in Redis under {prefix}")
        key = f"{prefix}:{epoch.split(':')[0]}:t:`{db}`.`items`"
        lags = []
        writes = 300 if ctx.quick else 1000
        with master.cursor() as cur:
            for i in range(writes):
                before = resp.get(key)
                cur.execute(f"UPDATE items SET v = v + 1 WHERE id = {1 + i % rows}")
                t0 = time.perf_counter()
                while resp.get(key) == before:
                    if time.perf_counter() - t0 > 10:
                        raise BenchError("an update was never invalidated")
                lags.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.005)
        result.metrics["invalidation_lag_ms"] = {"p50": percentile(lags, 50), "p99": percentile(lags, 99),
                                                 "max": max(lags), "writes": writes}
        result.figure("invalidation lag p50 (commit → Redis)", percentile(lags, 50), "ms")
        result.figure("invalidation lag p99 (commit → Redis)", percentile(lags, 99), "ms")
        # After the writes, the proxy's answer is the master's.
        dbmux.wait_applied(dbmux.last_seq(), timeout=120)
        sql = "SELECT id, v FROM items WHERE id = 1"
        _, want = timed(master, sql, 1)
        deadline = time.monotonic() + 10
        while True:
            _, got = timed(proxy, sql, 1)
            if list(got) == list(want) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        result.check(list(got) == list(want), "after the updates the proxy returns the master's row")
        result.check(True, tables_equal(ctx, db, "items", "id",
                                        [Column("id"), Column("grp"), Column("v"), Column("pad")],
                                        replicas=("mariadb",)))
        for c in (direct, proxy, master):
            c.close()
        dbmux.stop()
