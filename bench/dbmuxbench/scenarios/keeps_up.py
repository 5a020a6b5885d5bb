"""keeps_up: steady replication into both replicas vs the master's own best insert rate, same writer.

Baseline: sysbench `oltp_insert` (single-row autocommit INSERTs) against the master alone, swept over thread
counts; the best rate is the master's maximum with this writer. dbmux side: the same writer at the best
thread count for `size` seconds while dbmux replicates into the MariaDB and PostgreSQL replicas. A replica's
apply rate is rows ÷ (time from the writer's start until that replica has applied the last row): it equals
the write rate when the replica keeps up, and falls below it by as much as the replica lags.
"""

from __future__ import annotations

import time
from typing import Any

from ..engines import Maria, tables_equal
from ..harness import Result, Scenario, Target, rate_series, scenario
from ..plots import line_plot, plot_name
from ..workload import SBTEST_COLUMNS, create_sbtest, finish, sysbench, sysbench_popen


def master_rows_probe(ctx: Any, db: str, table: str) -> Any:
    """A sampler probe: the master's highest id in `db.table` (its own connection, in the sampler thread)."""
    conn: dict[str, Maria] = {}

    def probe() -> dict[str, float]:
        m = conn.setdefault("m", Maria(ctx.env["DBMUX_TEST_MYSQL_URL"], "probe"))
        v = m.scalar(f"SELECT COALESCE(MAX(id), 0) FROM `{db}`.`{table}`")
        return {"master_rows": float(v)}

    return probe


def progress_plots(ctx: Any, result: Result, samples: Any, replicas: tuple[str, ...],
                   marks: list[float] | None = None) -> None:
    """Throughput over time (master writes/s and each replica's applied changes/s) and lag over time
    (changes the replica is behind the log) from a Sampler."""
    thr = {}
    if samples.series("master_rows"):
        thr["master writes/s"] = rate_series(samples.series("master_rows"))
    if samples.series("last_seq"):
        thr["captured into the log/s"] = rate_series(samples.series("last_seq"))
    for r in replicas:
        thr[f"applied/s {r}"] = rate_series(samples.series(f"applied.{r}"))
    result.keep_series("throughput (per s)", thr)
    p = line_plot(plot_name(ctx.plots_dir, result.name, "throughput"), f"{result.name}: throughput over time",
                  "seconds", "row changes per second", thr, marks=marks)
    if p:
        result.plots.append(p)
    lag = {}
    for r in replicas:
        pts = []
        for s in samples.samples:
            if "last_seq" in s and f"applied.{r}" in s:
                pts.append((s["t"], s["last_seq"] - s[f"applied.{r}"]))
        lag[f"{r}: log last_seq − applied"] = pts
    if samples.series("master_rows") and samples.series("last_seq"):
        lag["capture: master rows − log last_seq"] = [
            (s["t"], max(0.0, s["master_rows"] - s["last_seq"])) for s in samples.samples
            if "master_rows" in s and "last_seq" in s
        ]
    result.keep_series("lag (changes behind)", lag)
    p = line_plot(plot_name(ctx.plots_dir, result.name, "lag"), f"{result.name}: lag over time (changes behind)",
                  "seconds", "row changes behind", lag, marks=marks)
    if p:
        result.plots.append(p)


def sustainable_rate(ctx: Any) -> float:
    """Rows/s the pipeline sustains (measured by keeps_up in this run; measured now if it was not run)."""
    if "sustainable_rows_per_s" not in ctx.shared:
        ctx.log("   no sustainable rate measured yet in this run: measuring it (keeps_up, quick size)")
        sc = KeepsUp()
        sc.run(ctx, sc.quick_size, Result(name="keeps_up", title="(probe)", size=sc.quick_size))
    return float(ctx.shared["sustainable_rows_per_s"])


@scenario
class KeepsUp(Scenario):
    name = "keeps_up"
    title = "steady replication into both replicas vs the master's best insert rate (same writer)"
    size_unit = "seconds of writing"
    full_size = 30
    quick_size = 8

    def run(self, ctx: Any, size: Any, result: Result) -> None:
        threads = [1, 2, 4, 8] if ctx.quick else [1, 2, 4, 8, 16]
        sweep_s = 4 if ctx.quick else 10
        common = ["--tables=1", "--table-size=100000", "--auto_inc=on", "--report-interval=0"]

        # Baseline: the master alone, same writer, thread sweep (in a database dbmux does not capture).
        base = ctx.db("sweep")
        ctx.master.execute(f"CREATE DATABASE `{base}`")
        create_sbtest(ctx.master, base, auto_increment=True)
        sweep = {}
        for t in threads:
            r = sysbench(ctx, ctx.master, "oltp_insert", base, "run", *common, f"--threads={t}",
                         f"--time={sweep_s}")
            sweep[t] = r["transactions_per_s"]
            ctx.log(f"   master alone, {t:2d} threads: {sweep[t]:8.0f} inserts/s")
        best_t = max(sweep, key=lambda t: sweep[t])
        best = sweep[best_t]
        result.metrics["sweep_inserts_per_s"] = sweep
        result.metrics["best_threads"] = best_t

        # dbmux side: the same writer at the best thread count, replicated into both replicas.
        db = ctx.db("repl")
        ctx.master.execute(f"CREATE DATABASE `{db}`")
        create_sbtest(ctx.master, db, auto_increment=True)
        dbmux = ctx.dbmux(db)
        dbmux.start()
        sampler = dbmux_sampler(ctx, dbmux, db)
        t0 = time.monotonic()
        log = ctx.workdir("writer") + "/sysbench.log"
        w = finish(sysbench_popen(ctx.master, "oltp_insert", db, *common, f"--threads={best_t}",
                                  f"--time={size}", log_path=log), log, size + 120)
        t_end = time.monotonic()
        rows = int(ctx.master.scalar(f"SELECT COUNT(*) FROM `{db}`.sbtest1"))
        done = dbmux.wait_applied(rows, timeout=max(300.0, size * 20))
        time.sleep(0.5)
        samples = sampler
        samples.stop()
        cpu = dbmux.cpu_seconds()
        rss = dbmux.memory_kb()
        dbmux.stop()

        during = rows / (t_end - t0)
        rates = {r: rows / (done[r] - t0) for r in dbmux.replicas}
        slowest = min(rates.values())
        result.figure("apply rate, slowest replica", slowest, "rows/s", best,
                      f"master alone, {best_t} thr", Target(">=", 1.0))
        for r in dbmux.replicas:
            result.figure(f"apply rate {r}", rates[r], "rows/s", best, "master alone")
        result.figure("apply rate, slowest replica, vs writes", slowest, "rows/s", during,
                      "master while replicating", Target(">=", 0.95),
                      note="did the replicas keep up with what the master actually wrote meanwhile")
        result.figure("master rate while replicating", during, "rows/s", best, "master alone",
                      note="2 shared cores: dbmux and both replicas compete with the master")
        result.figure("catch-up after the writer stopped", max(done.values()) - t_end, "s")
        result.figure("dbmux CPU per row", cpu / rows * 1e6, "µs")
        lag_peak = max((s["last_seq"] - min(s.get(f"applied.{r}", 0) for r in dbmux.replicas)
                        for s in samples.samples if "last_seq" in s), default=0)
        result.metrics.update(rows=rows, writer=w, apply_rates=rates, write_rate_during=during,
                              dbmux_cpu_s=cpu, dbmux_rss_kb=rss, peak_lag_changes=lag_peak)
        ctx.shared["sustainable_rows_per_s"] = min(best, slowest)
        result.metrics["sustainable_rows_per_s"] = ctx.shared["sustainable_rows_per_s"]
        progress_plots(ctx, result, samples, dbmux.replicas)
        result.check(True, f"{rows} rows written, both replicas applied seq {rows}")
        result.check(True, tables_equal(ctx, db, "sbtest1", "id", SBTEST_COLUMNS))


def dbmux_sampler(ctx: Any, dbmux: Any, db: str, table: str = "sbtest1", interval: float = 0.25) -> Any:
    from ..process import Sampler

    return Sampler(dbmux, interval, [master_rows_probe(ctx, db, table)]).start()
