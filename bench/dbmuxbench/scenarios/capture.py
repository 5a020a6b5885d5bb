"""capture: decode a prepared binlog of about `size` row events into the log vs `mariadb-binlog --raw`.

dbmux is started once (its start position pinned) and stopped; the master's binlog is rotated; the workload
writes about `size` row events in its own database (sysbench `oltp_write_only` on a table it prepared, plus
wide rows of many types); the binlog is rotated again. Baseline: `mariadb-binlog --read-from-remote-server
--raw` of exactly those binlog files (written to a tmpfs directory: the same bytes over the same protocol,
no decoding). dbmux side: capture alone (both replicas configured unreachable, so no applier competes) from
start until the log holds every row event; its rate is events ÷ that time. The expected count comes from
the binlog itself (`mariadb-binlog -v`, rows of this database).

Correctness: the log holds exactly that many events; then dbmux is restarted with the real replicas, applies
the log, and both replicas must equal the master.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any

from ..engines import Column, tables_equal
from ..harness import BenchError, Result, Scenario, Target, scenario
from ..workload import SBTEST_COLUMNS, sysbench

WIDE_COLUMNS = [
    Column("id"), Column("i"), Column("u"), Column("d"),
    Column("f", "CAST(`f` AS DECIMAL(30,6))", '"f"::numeric(30,6)'),
    Column("dt", "DATE_FORMAT(`dt`, '%Y-%m-%d %H:%i:%s.%f')", "to_char(\"dt\", 'YYYY-MM-DD HH24:MI:SS.US')"),
    Column("da"), Column("v"), Column("t"),
    Column("b", "HEX(`b`)", "upper(encode(\"b\", 'hex'))"),
    Column("e"),
]


def wide_sql(db: str, rows: int, per_txn: int = 500) -> str:
    stmts = [f"CREATE TABLE `{db}`.wide (id BIGINT NOT NULL PRIMARY KEY, i INT, u INT UNSIGNED, "
             "d DECIMAL(18,4), f DOUBLE, dt DATETIME(6), da DATE, v VARCHAR(200), t TEXT, b BLOB, "
             "e ENUM('red','green','blue'));"]
    lo = 1
    while lo <= rows:
        hi = min(rows, lo + per_txn - 1)
        stmts.append(
            f"INSERT INTO `{db}`.wide SELECT seq, CAST(seq AS SIGNED) * 3 - 1000000, seq * 7, seq / 7, seq / 8, "
            "TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND + INTERVAL seq % 1000000 MICROSECOND, "
            "DATE'2000-01-01' + INTERVAL seq % 9000 DAY, CONCAT('v-', MD5(seq)), REPEAT(MD5(seq), 8), "
            f"UNHEX(SHA1(seq)), ELT(1 + seq % 3, 'red', 'green', 'blue') FROM seq_{lo}_to_{hi};"
        )
        lo = hi + 1
    return "\n".join(stmts) + "\n"


def binlog_files(ctx: Any) -> list[str]:
    return [r[0] for r in ctx.master.query("SHOW BINARY LOGS")]


@scenario
class Capture(Scenario):
    name = "capture"
    title = "capture decode into the log vs mariadb-binlog --read-from-remote-server --raw"
    size_unit = "row events"
    full_size = 300_000
    quick_size = 100_000

    def run(self, ctx: Any, size: Any, result: Result) -> None:
        n = int(size)
        db = ctx.db("cap")
        ctx.master.execute(f"CREATE DATABASE `{db}`")
        capture = ctx.dbmux(db, down=("mariadb", "postgres"), truncate=False)
        t_start = capture.start()
        startup = time.monotonic() - t_start  # process start → capture connected (part of the timed run too)
        capture.stop()

        ctx.master.execute("FLUSH BINARY LOGS")
        first = ctx.master.query("SHOW MASTER STATUS")[0][0]
        # About half the events from sysbench (prepare inserts + 4 row changes per transaction), a quarter wide
        # rows.
        table_rows = n // 4
        txns = n // 8
        sysbench(ctx, ctx.master, "oltp_write_only", db, "prepare", "--tables=1", f"--table-size={table_rows}")
        sysbench(ctx, ctx.master, "oltp_write_only", db, "run", "--tables=1", f"--table-size={table_rows}",
                 "--threads=2", f"--events={txns}", "--time=0", "--report-interval=0")
        ctx.run_tool(ctx.master.cli(db), env=ctx.master.cli_env(), input_text=wide_sql(db, n // 4))
        ctx.master.execute("FLUSH BINARY LOGS")
        files = binlog_files(ctx)
        files = files[files.index(first):-1]

        # Baseline: the same binlog files, raw, over the replication protocol.
        raw_dir = tempfile.mkdtemp(prefix=f"dbmux-bench-{ctx.run_id}-", dir="/dev/shm")
        ctx.on_cleanup(lambda: shutil.rmtree(raw_dir, ignore_errors=True), data=False)
        u = ctx.master.url
        t_raw, _ = ctx.run_tool(["mariadb-binlog", "--no-defaults", "--read-from-remote-server", "--raw",
                                 f"--host={u.host}", f"--port={u.port}", f"--user={u.user}",
                                 f"--result-file={raw_dir}/", *files], env=ctx.master.cli_env())
        nbytes = sum(os.path.getsize(os.path.join(raw_dir, f)) for f in files)
        expected = count_row_events(raw_dir, files, db)
        ctx.log(f"   binlog {files[0]}..{files[-1]}: {nbytes / 1e6:.1f} MB, {expected} row events of {db}; "
                f"mariadb-binlog --raw {t_raw:.2f}s")
        if expected < n // 2:
            raise BenchError(f"the workload wrote only {expected} row events (wanted about {n})")

        # dbmux: capture alone until the log holds every row event.
        cpu0 = capture.cpu_seconds()  # the first, position-pinning start is not part of the figure
        t0 = capture.start(wait=False)
        connected: list[float] = []

        def caught_up(s: dict[str, Any]) -> bool:
            if s["capture"]["connected"] and not connected:
                connected.append(time.monotonic())
            return s["log"]["last_seq"] >= expected

        capture.wait_for(caught_up, timeout=max(300.0, n / 1000), what=f"the log to hold {expected} events",
                         poll=0.05)
        done = time.monotonic()
        dt = done - t0
        streaming = done - (connected[0] if connected else t0)
        cpu = capture.cpu_seconds() - cpu0
        mem = capture.memory_kb()
        appends = capture.append_latency()
        time.sleep(1.0)  # anything beyond the expected events would have arrived by now
        capture.stop()
        # Schema changes (the workload's CREATE TABLEs) are events of the log too, with their own seq.
        ops = capture.log_ops()
        rows = sum(ops.get(o, 0) for o in ("c", "u", "d"))
        other = {o: k for o, k in ops.items() if o not in ("c", "u", "d", "ddl")}
        result.check(rows == expected and not other,
                     f"the log holds {rows} row events (and {other or 'nothing'} besides schema changes); "
                     f"the binlog has {expected} row events of {db}")

        rate, base_rate = expected / dt, expected / t_raw
        result.figure("capture rate", rate, "events/s", base_rate, "mariadb-binlog --raw", Target(">=", 0.9),
                      note="from process start (start-up included)")
        result.figure("capture rate once connected", expected / streaming, "events/s", base_rate,
                      "mariadb-binlog --raw", Target(">=", 0.9),
                      note="from the first /status poll that shows capture connected (±50 ms)")
        result.figure("events per dbmux CPU-second", expected / cpu, "events/s",
                      target=Target(">=", 250_000, on="value"))
        result.figure("capture rate (bytes)", nbytes / dt / 1e6, "MB/s", nbytes / t_raw / 1e6,
                      "mariadb-binlog --raw")
        result.figure("dbmux peak RSS", mem.get("VmHWM", 0) / 1024, "MiB")
        if appends.get("count"):
            result.figure("log appends (group commits)", appends["count"], "",
                          note=f"{expected / appends['count']:.0f} events per append")
            result.figure("log append incl. fsync, mean", appends["mean_ms"], "ms",
                          note="capture waits for the fsync when the reader's channel is full")
        result.metrics.update(log_appends=appends, startup_s=startup, streaming_s=streaming, events=expected, binlog_bytes=nbytes, binlog_files=files, dbmux_s=dt,
                              dbmux_cpu_s=cpu, raw_s=t_raw, dbmux_memory_kb=mem)

        # Correctness: the captured log, applied, reproduces the master on both replicas.
        applier = ctx.dbmux(db, name="dbmux", truncate=False)
        applier.start()
        applier.wait_applied(expected, timeout=600)
        applier.stop()
        result.check(True, tables_equal(ctx, db, "sbtest1", "id", SBTEST_COLUMNS))
        result.check(True, tables_equal(ctx, db, "wide", "id", WIDE_COLUMNS))


ROW_LINE = re.compile(rb"^### (INSERT INTO|UPDATE|DELETE FROM) `([^`]*)`\.")


def count_row_events(raw_dir: str, files: list[str], db: str) -> int:
    """Row changes of `db` in the binlog files, counted from `mariadb-binlog -v` (one `###` header a row)."""
    p = subprocess.Popen(["mariadb-binlog", "--no-defaults", "-v", "--base64-output=decode-rows",
                          *[os.path.join(raw_dir, f) for f in files]], stdout=subprocess.PIPE)
    assert p.stdout is not None
    want = db.encode()
    n = 0
    for line in p.stdout:
        if line.startswith(b"### ") and (line.startswith(b"### INSERT") or line.startswith(b"### UPDATE")
                                        or line.startswith(b"### DELETE")):
            m = ROW_LINE.match(line)
            if m and m.group(2) == want:
                n += 1
    if p.wait() != 0:
        raise BenchError("mariadb-binlog -v failed while counting row events")
    return n
