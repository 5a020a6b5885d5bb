"""snapshot: `size` existing rows copied into PostgreSQL by dbmux's snapshot vs `psql \\copy` and pgloader.

The master holds `size` rows before dbmux ever starts (written with the sequence engine, not timed against
anything). dbmux starts with `[snapshot] initial = true` and copies the table chunk by chunk (each chunk its own
consistent read view, placed in the log at its binlog position, loaded into PostgreSQL with `COPY`); its time
is start → PostgreSQL applied the whole log after the snapshot finished. Baselines, same rows, same run:
`psql \\copy` of a tab-separated export into a table made `LIKE` dbmux's (same types and keys; the export is
not timed) and `pgloader` migrating the table straight from the master (its own "Total import time").

CPU split: for each side, the CPU the tool itself used (dbmux: its process; `\\copy`: psql; pgloader: its
process) and what the engines used meanwhile (the MariaDB master's `mariadbd`; PostgreSQL's postmaster and
every backend, reaped ones included). The engines are shared with whatever else runs on the machine, so their
share is an upper bound.
"""

from __future__ import annotations

import os
import re
import resource
import time
import urllib.request
from typing import Any

from ..engines import pg_digest, tables_equal
from ..harness import BenchError, Result, Scenario, Target, scenario
from ..process import CLK_TCK, Sampler, proc_cpu_seconds
from ..workload import SBTEST_COLUMNS, bulk_insert_sql, create_sbtest
from .keeps_up import progress_plots

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.readline().strip())
    except (OSError, ValueError):
        return None


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def engine_cpu() -> dict[str, float]:
    """CPU seconds used so far by the MariaDB master and by PostgreSQL (the postmaster, its children alive
    now, and the children it reaped: a backend's CPU survives its exit in the postmaster's cutime/cstime)."""
    out: dict[str, float] = {}
    maria = _read_pid(os.path.join(REPO, ".dev", "mariadb-master", "mysqld.pid"))
    if maria:
        out["mariadb"] = proc_cpu_seconds(maria) or 0.0
    pm = _read_pid(os.path.join(REPO, ".dev", "postgres", "data", "postmaster.pid"))
    if pm:
        st = _stat(pm)
        total = 0.0
        if st:
            total += sum(int(x) for x in st[11:15]) / CLK_TCK  # utime, stime, cutime, cstime
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                s = _stat(int(entry))
                if s and int(s[1]) == pm:
                    total += (int(s[11]) + int(s[12])) / CLK_TCK
        out["postgres"] = total
    return out


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuSplit:
    """CPU of the engines and of this harness's finished child processes between `start` and `stop`."""

    def start(self) -> "CpuSplit":
        self.e0, self.c0 = engine_cpu(), children_cpu()
        return self

    def stop(self) -> dict[str, float]:
        e1, c1 = engine_cpu(), children_cpu()
        out = {f"{k}_cpu_s": round(e1[k] - self.e0.get(k, 0.0), 2) for k in e1}
        out["tool_cpu_s"] = round(c1 - self.c0, 2)
        return out


def _metric(text: str, name: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.M):
        total += float(m.group(1))
    return total


@scenario
class Snapshot(Scenario):
    name = "snapshot"
    title = "existing rows copied into PostgreSQL by a snapshot vs psql \\copy and pgloader"
    size_unit = "rows"
    full_size = 1_000_000
    quick_size = 50_000

    def run(self, ctx: Any, size: Any, result: Result) -> None:
        n = int(size)
        db = ctx.db("snap")
        ctx.master.execute(f"CREATE DATABASE `{db}`")
        create_sbtest(ctx.master, db, "snap")
        t_master, _ = ctx.run_tool(ctx.master.cli(db), env=ctx.master.cli_env(),
                                   input_text=bulk_insert_sql(db, "snap", 1, n, 10_000))
        ctx.log(f"   master holds {n} rows (written in {t_master:.1f}s)")
        chunk = int(os.environ.get("BENCH_SNAPSHOT_CHUNK_ROWS", "10000"))
        dbmux = ctx.dbmux(db, replicas=("postgres",),
                          extra_toml=f"\n[snapshot]\ninitial = true\nchunk_rows = {chunk}\nparallel_tables = 2\n")

        split = CpuSplit().start()
        t0 = dbmux.start(wait=False)
        sampler = Sampler(dbmux, 0.25).start()
        url = f"http://127.0.0.1:{dbmux.admin_port}/metrics"
        deadline = time.monotonic() + max(600.0, n / 100)
        copied_at = None
        while True:
            dbmux.check_running()
            if time.monotonic() > deadline:
                raise BenchError("timed out waiting for the snapshot to be applied")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.05)
                continue
            rows = _metric(text, "dbmux_snapshot_rows_total")
            unfinished = _metric(text, "dbmux_snapshot_tables")
            if copied_at is None and rows >= n and unfinished == 0:
                copied_at = time.monotonic()
            last = _metric(text, "dbmux_log_last_seq")
            m = re.search(r'^dbmux_apply_last_seq\{replica="postgres"\} ([0-9.eE+-]+)$', text, re.M)
            applied = float(m.group(1)) if m else 0.0
            if copied_at is not None and last > 0 and applied >= last:
                done = time.monotonic()
                break
            time.sleep(0.05)
        snap_s = done - t0
        cpu = dbmux.cpu_seconds()
        mem = dbmux.memory_kb()
        sampler.stop()
        dbmux.stop()
        dbmux_split = split.stop()
        rate = n / snap_s
        ctx.log(f"   dbmux snapshot: {snap_s:.1f}s ({rate:.0f} rows/s; all in the log after "
                f"{copied_at - t0:.1f}s), {cpu:.1f} CPU-s; engines: {dbmux_split}")
        result.check(True, tables_equal(ctx, db, "snap", "id", SBTEST_COLUMNS, replicas=("postgres",)))

        # Baseline 1: psql \copy of the same rows into a table shaped like dbmux's.
        tsv = os.path.join(ctx.workdir("copy"), "snap.tsv")
        with open(tsv, "w") as f:
            ctx.run_tool(ctx.master.cli(db) + ["--quick", "-e", "SELECT id, k, c, pad FROM snap ORDER BY id"],
                         env=ctx.master.cli_env(), stdout=f)
        ctx.pg.execute(f'CREATE TABLE "{db}".snap_copy (LIKE "{db}".snap INCLUDING ALL)')
        split = CpuSplit().start()
        t_copy, _ = ctx.run_tool(ctx.pg.command(["-c", f"\\copy \"{db}\".snap_copy FROM '{tsv}'"]),
                                 env=ctx.pg.env())
        copy_split = split.stop()
        copy_rate = n / t_copy
        ctx.log(f"   psql \\copy: {t_copy:.1f}s ({copy_rate:.0f} rows/s); {copy_split}")
        cols = SBTEST_COLUMNS
        result.check(pg_digest(ctx.pg, db, "snap_copy", cols) == pg_digest(ctx.pg, db, "snap", cols),
                     "the \\copy baseline loaded the same rows")

        # Baseline 2: pgloader, master → PostgreSQL, same table.
        pgl_rate = None
        pgl_split: dict[str, float] = {}
        pgl_schema = f"{db}_pgl"[:63]
        ctx.on_cleanup(lambda: ctx.pg.execute(f'DROP SCHEMA IF EXISTS "{pgl_schema}" CASCADE'))
        m, p = ctx.master.url, ctx.pg.url
        load = os.path.join(ctx.workdir("pgloader"), "snap.load")
        with open(load, "w") as f:
            f.write(
                f"LOAD DATABASE\n  FROM {m.with_path(db)}\n  INTO {p.with_path(p.path)}\n"
                "  WITH include drop, create tables, create indexes, reset sequences,\n"
                "       workers = 2, concurrency = 1\n"
                f"  INCLUDING ONLY TABLE NAMES MATCHING 'snap'\n"
                f"  ALTER SCHEMA '{db}' RENAME TO '{pgl_schema}';\n"
            )
        try:
            split = CpuSplit().start()
            t_pgl, out = ctx.run_tool(["pgloader", "--no-ssl-cert-verification", load], timeout=3600)
            pgl_split = split.stop()
            got = int(ctx.pg.scalar(f'SELECT count(*) FROM "{pgl_schema}".snap') or 0)
            result.check(got == n, f"pgloader loaded {got} of {n} rows")
            mt = re.search(r"Total import time.*?([\d.]+)s\s*$", out, re.M)
            t_import = float(mt.group(1)) if mt else t_pgl
            pgl_rate = n / t_import
            result.metrics.update(pgloader_wall_s=t_pgl, pgloader_import_s=t_import)
            ctx.log(f"   pgloader: {t_import:.1f}s import ({t_pgl:.1f}s with start-up; {pgl_rate:.0f} rows/s); "
                    f"{pgl_split}")
        except BenchError as e:
            result.metrics["pgloader_error"] = str(e)[-1000:]
            ctx.log(f"   pgloader failed, no baseline: {str(e)[-300:]}")

        result.figure("snapshot rate vs \\copy", rate, "rows/s", copy_rate, "psql \\copy", Target(">=", 0.5))
        result.figure("snapshot rate vs pgloader", rate, "rows/s", pgl_rate, "pgloader", Target(">=", 1.0),
                      note="" if pgl_rate else "pgloader failed: see metrics.pgloader_error")
        result.figure("dbmux CPU per row", cpu / n * 1e6, "µs")
        result.figure("PostgreSQL CPU per row (snapshot)", dbmux_split.get("postgres_cpu_s", 0) / n * 1e6, "µs",
                      copy_split.get("postgres_cpu_s", 0) / n * 1e6 or None, "PostgreSQL under \\copy")
        result.figure("MariaDB CPU per row (snapshot)", dbmux_split.get("mariadb_cpu_s", 0) / n * 1e6, "µs",
                      pgl_split.get("mariadb_cpu_s", 0) / n * 1e6 or None, "MariaDB under pgloader")
        result.figure("dbmux peak RSS", mem.get("VmHWM", 0) / 1024, "MiB")
        result.metrics.update(rows=n, chunk_rows=chunk, snapshot_s=snap_s, in_log_s=copied_at - t0,
                              copy_s=t_copy, dbmux_cpu_s=cpu, dbmux_memory_kb=mem,
                              cpu_split={"dbmux_side": {"dbmux_cpu_s": round(cpu, 2), **dbmux_split},
                                         "copy_side": copy_split, "pgloader_side": pgl_split})
        progress_plots(ctx, result, sampler, ("postgres",))
