"""drain: a binlog backlog of `size` inserted rows drained into PostgreSQL vs `psql \\copy` and pgloader.

dbmux is started once to pin its start position and stopped; the master then writes `size` rows in
transactions of 1,000 (timed: the master's own bulk-insert rate). dbmux starts again and captures and applies
the whole backlog into PostgreSQL; its rate is rows ÷ (start → PostgreSQL applied the last row). Baselines,
same rows: `psql \\copy` of a tab-separated export into a table made `LIKE` dbmux's (same types and
keys; the export is not timed), and `pgloader` reading the table straight from the master.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..engines import pg_digest, tables_equal
from ..harness import BenchError, Result, Scenario, Target, scenario
from ..process import Sampler
from ..workload import SBTEST_COLUMNS, bulk_insert_sql, create_sbtest
from .keeps_up import progress_plots


@scenario
class Drain(Scenario):
    name = "drain"
    title = "binlog backlog drained into PostgreSQL vs psql \\copy and pgloader"
    size_unit = "rows"
    full_size = 1_000_000
    quick_size = 50_000

    def run(self, ctx: Any, size: Any, result: Result) -> None:
        n = int(size)
        db = ctx.db("drain")
        ctx.master.execute(f"CREATE DATABASE `{db}`")
        create_sbtest(ctx.master, db, "drain")
        dbmux = ctx.dbmux(db, replicas=("postgres",))
        dbmux.start()
        dbmux.stop()

        t_master, _ = ctx.run_tool(ctx.master.cli(db), env=ctx.master.cli_env(),
                                   input_text=bulk_insert_sql(db, "drain", 1, n, 1000))
        master_rate = n / t_master
        ctx.log(f"   master bulk insert: {n} rows in {t_master:.1f}s ({master_rate:.0f} rows/s)")

        cpu0 = dbmux.cpu_seconds()  # the first, position-pinning start is not part of the figure
        t0 = dbmux.start(wait=False)
        sampler = Sampler(dbmux, 0.25).start()
        done = dbmux.wait_applied(n, timeout=max(600.0, n / 200), replicas=("postgres",))
        drain_s = done["postgres"] - t0
        cpu = dbmux.cpu_seconds() - cpu0
        mem = dbmux.memory_kb()
        sampler.stop()
        dbmux.stop()
        rate = n / drain_s
        ctx.log(f"   dbmux drain: {drain_s:.1f}s ({rate:.0f} rows/s), {cpu:.1f} CPU-s")
        result.check(True, tables_equal(ctx, db, "drain", "id", SBTEST_COLUMNS, replicas=("postgres",)))

        # Baseline 1: psql \copy of the same rows into a table shaped like dbmux's.
        tsv = os.path.join(ctx.workdir("copy"), "drain.tsv")
        with open(tsv, "w") as f:
            ctx.run_tool(ctx.master.cli(db) + ["--quick", "-e", "SELECT id, k, c, pad FROM drain ORDER BY id"],
                         env=ctx.master.cli_env(), stdout=f)
        ctx.pg.execute(f'CREATE TABLE "{db}".drain_copy (LIKE "{db}".drain INCLUDING ALL)')
        t_copy, _ = ctx.run_tool(ctx.pg.command(["-c", f"\\copy \"{db}\".drain_copy FROM '{tsv}'"]),
                                 env=ctx.pg.env())
        copy_rate = n / t_copy
        ctx.log(f"   psql \\copy: {t_copy:.1f}s ({copy_rate:.0f} rows/s)")
        cols = SBTEST_COLUMNS
        result.check(pg_digest(ctx.pg, db, "drain_copy", cols) == pg_digest(ctx.pg, db, "drain", cols),
                     "the \\copy baseline loaded the same rows")

        # Baseline 2: pgloader, master → PostgreSQL, same table.
        pgl_rate = None
        pgl_schema = f"{db}_pgl"[:63]
        ctx.on_cleanup(lambda: ctx.pg.execute(f'DROP SCHEMA IF EXISTS "{pgl_schema}" CASCADE'))
        m, p = ctx.master.url, ctx.pg.url
        load = os.path.join(ctx.workdir("pgloader"), "drain.load")
        with open(load, "w") as f:
            f.write(
                f"LOAD DATABASE\n  FROM {m.with_path(db)}\n  INTO {p.with_path(p.path)}\n"
                "  WITH include drop, create tables, create indexes, reset sequences,\n"
                "       workers = 2, concurrency = 1\n"
                f"  INCLUDING ONLY TABLE NAMES MATCHING 'drain'\n"
                f"  ALTER SCHEMA '{db}' RENAME TO '{pgl_schema}';\n"
            )
        try:
            t_pgl, out = ctx.run_tool(["pgloader", "--no-ssl-cert-verification", load], timeout=3600)
            got = int(ctx.pg.scalar(f'SELECT count(*) FROM "{pgl_schema}".drain') or 0)
            result.check(got == n, f"pgloader loaded {got} of {n} rows")
            # pgloader's own "Total import time" leaves out its ~3 s start-up (the stricter comparison).
            mt = re.search(r"Total import time.*?([\d.]+)s\s*$", out, re.M)
            t_import = float(mt.group(1)) if mt else t_pgl
            pgl_rate = n / t_import
            result.metrics.update(pgloader_wall_s=t_pgl, pgloader_import_s=t_import)
            ctx.log(f"   pgloader: {t_import:.1f}s import ({t_pgl:.1f}s with start-up; {pgl_rate:.0f} rows/s)")
        except BenchError as e:
            result.metrics["pgloader_error"] = str(e)[-1000:]
            ctx.log(f"   pgloader failed, no baseline: {str(e)[-300:]}")

        result.figure("drain rate vs \\copy", rate, "rows/s", copy_rate, "psql \\copy", Target(">=", 0.5))
        result.figure("drain rate vs pgloader", rate, "rows/s", pgl_rate, "pgloader", Target(">=", 1.2),
                      note="" if pgl_rate else "pgloader failed: see metrics.pgloader_error")
        result.figure("drain rate vs master bulk insert", rate, "rows/s", master_rate,
                      "master INSERT…SELECT")
        result.figure("dbmux CPU per row", cpu / n * 1e6, "µs")
        result.figure("dbmux peak RSS", mem.get("VmHWM", 0) / 1024, "MiB")
        result.metrics.update(rows=n, drain_s=drain_s, copy_s=t_copy, master_insert_s=t_master, dbmux_cpu_s=cpu,
                              dbmux_memory_kb=mem)
        progress_plots(ctx, result, sampler, ("postgres",))
