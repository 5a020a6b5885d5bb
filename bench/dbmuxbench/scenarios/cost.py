"""cost: dbmux's CPU-seconds and peak RSS per million replicated row changes (a mixed workload, both replicas).

The workload (sysbench `oltp_write_only`: its prepare inserts, then updates, deletes and inserts) is written
while dbmux is stopped, then dbmux drains it into both replicas. CPU is utime+stime of the dbmux process from
/proc, peak RSS its VmHWM. No baseline: the figures are tracked from run to run.
"""

from __future__ import annotations

import time
from typing import Any

import pymysql

from ..engines import tables_equal
from ..harness import BenchError, Result, Scenario, scenario
from ..process import Sampler
from ..workload import SBTEST_COLUMNS, sysbench
from .keeps_up import progress_plots


def write_marker(ctx: Any, db: str) -> None:
    """The workload's last transaction: once a replica has it, it has everything before it."""
    ctx.master.execute(f"CREATE TABLE IF NOT EXISTS `{db}`.bench_marker (id INT PRIMARY KEY)",
                       f"INSERT INTO `{db}`.bench_marker VALUES (1)")


def wait_drained(ctx: Any, dbmux: Any, db: str, timeout: float) -> tuple[int, dict[str, float]]:
    """Waits until the MariaDB replica has the marker row (so the log holds everything before it), then until
    every replica applied all of the log. Returns the log's last seq and when each replica got there.
    Without a MariaDB replica, waits until the log's last seq is stable for 2 s instead."""
    if "mariadb" not in dbmux.replicas:
        last, since = -1, time.monotonic()
        while time.monotonic() - since < 2.0:
            now = dbmux.last_seq()
            if now != last:
                last, since = now, time.monotonic()
            time.sleep(0.1)
    deadline = time.monotonic() + timeout
    while "mariadb" in dbmux.replicas:
        try:
            if ctx.replica.scalar(f"SELECT COUNT(*) FROM `{db}`.bench_marker") == 1:
                break
        except pymysql.err.ProgrammingError:  # the table is not there yet
            pass
        dbmux.check_running()
        if time.monotonic() > deadline:
            raise BenchError(f"the marker row did not reach the MariaDB replica within {timeout:.0f}s")
        time.sleep(0.05)
    last = dbmux.last_seq()
    return last, dbmux.wait_applied(last, timeout=max(10.0, deadline - time.monotonic()))


@scenario
class Cost(Scenario):
    name = "cost"
    title = "dbmux CPU-seconds and peak RSS per million replicated changes (mixed workload)"
    size_unit = "row changes"
    full_size = 500_000
    quick_size = 60_000

    def run(self, ctx: Any, size: Any, result: Result) -> None:
        n = int(size)
        db = ctx.db("cost")
        ctx.master.execute(f"CREATE DATABASE `{db}`")
        dbmux = ctx.dbmux(db)
        dbmux.start()
        dbmux.stop()
        rows = n // 2
        sysbench(ctx, ctx.master, "oltp_write_only", db, "prepare", "--tables=1", f"--table-size={rows}")
        sysbench(ctx, ctx.master, "oltp_write_only", db, "run", "--tables=1", f"--table-size={rows}",
                 "--threads=2", f"--events={n // 8}", "--time=0", "--report-interval=0")
        write_marker(ctx, db)

        cpu0 = dbmux.cpu_seconds()  # the first, position-pinning start is not part of the figure
        t0 = dbmux.start(wait=False)
        sampler = Sampler(dbmux, 0.25).start()
        changes, done = wait_drained(ctx, dbmux, db, timeout=max(600.0, n / 100))
        cpu = dbmux.cpu_seconds() - cpu0
        mem = dbmux.memory_kb()
        sampler.stop()
        dbmux.stop()
        wall = max(done.values()) - t0
        per_m = 1e6 / changes
        result.figure("CPU per million changes", cpu * per_m, "CPU-s")
        result.figure("CPU per change", cpu / changes * 1e6, "µs")
        result.figure("peak RSS", mem.get("VmHWM", 0) / 1024, "MiB")
        result.figure("drain rate, both replicas", changes / wall, "changes/s")
        result.metrics.update(changes=changes, cpu_s=cpu, wall_s=wall, memory_kb=mem)
        progress_plots(ctx, result, sampler, dbmux.replicas)
        result.check(True, tables_equal(ctx, db, "sbtest1", "id", SBTEST_COLUMNS))
