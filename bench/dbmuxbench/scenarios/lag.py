"""lag: end-to-end lag, commit on the master → row on each replica, at 50 % of the sustainable rate.

The writer (bench/lua/lag_insert.lua under sysbench, `--rate`) sends single-row autocommit INSERTs into
`lag_probe`, whose `created_us` defaults to the master's clock. On the replicas the same table has one more
column, `applied_us`, defaulting to the replica's clock when dbmux's applier writes the row (the replica
tables are created before dbmux sees a row, and dbmux leaves existing tables alone). Every row's lag is
`applied_us − created_us`; one machine, one clock. What it leaves out: the master's commit after the
statement started (makes lag look larger) and the replica's commit after the row was written (smaller).
"""

from __future__ import annotations

import time
from typing import Any

from ..engines import tables_equal
from ..harness import Result, Scenario, Target, scenario
from ..plots import line_plot, plot_name
from ..process import Sampler
from ..workload import LAG_COLUMNS, LUA_DIR, create_lag_probe, finish, lag_rows, lag_stats, sysbench_popen
from .keeps_up import master_rows_probe, progress_plots, sustainable_rate


@scenario
class Lag(Scenario):
    name = "lag"
    title = "end-to-end lag at 50% of the sustainable rate, single-row transactions"
    size_unit = "seconds of writing"
    full_size = 60
    quick_size = 15

    def run(self, ctx: Any, size: Any, result: Result) -> None:
        sustainable = sustainable_rate(ctx)
        rate = max(10, int(sustainable * 0.5))
        threads = 4 if rate > 2000 else 2
        db = ctx.db("lag")
        create_lag_probe(ctx, db)
        dbmux = ctx.dbmux(db)
        dbmux.start()
        sampler = Sampler(dbmux, 0.25, [master_rows_probe(ctx, db, "lag_probe")]).start()
        log = ctx.workdir("writer") + "/sysbench.log"
        w = finish(sysbench_popen(ctx.master, f"{LUA_DIR}/lag_insert.lua", db, f"--threads={threads}",
                                  f"--rate={rate}", f"--time={size}", "--report-interval=0", log_path=log),
                   log, size + 120)
        rows = int(ctx.master.scalar(f"SELECT COUNT(*) FROM `{db}`.lag_probe"))
        dbmux.wait_applied(rows, timeout=300)
        time.sleep(0.5)
        sampler.stop()
        dbmux.stop()
        result.check(True, tables_equal(ctx, db, "lag_probe", "id", LAG_COLUMNS))
        per_row = lag_rows(ctx, db)
        result.metrics.update(requested_rate=rate, sustainable_rows_per_s=sustainable, rows=rows, writer=w)
        for r, pts in per_row.items():
            result.check(len(pts) == rows, f"{r}: {len(pts)} of {rows} rows carry a lag measurement")
            st = lag_stats([ms for _, ms in pts])
            result.metrics[f"lag_{r}"] = st
            result.figure(f"lag p50 {r}", st["p50_ms"], "ms", target=Target("<=", 2.0, on="value"))
            result.figure(f"lag p99 {r}", st["p99_ms"], "ms", target=Target("<=", 10.0, on="value"))
            result.figure(f"lag max {r}", st["max_ms"], "ms")
        result.figure("achieved write rate", w["transactions_per_s"], "txn/s", float(rate), "requested rate")
        result.keep_series("lag per row (s, ms)", per_row, most=2000)
        p = line_plot(plot_name(ctx.plots_dir, self.name, "lag-per-row"),
                      f"lag per row at {rate} single-row txn/s", "seconds (row created on the master)",
                      "lag (ms)", {r: pts for r, pts in per_row.items()}, points=True)
        if p:
            result.plots.append(p)
        progress_plots(ctx, result, sampler, dbmux.replicas)
