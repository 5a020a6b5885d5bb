"""soak: a mixed workload at 50 % of the sustainable rate for `size` seconds, dbmux killed with SIGKILL every
few minutes and restarted at once. `bench/run --soak 30m` runs it for 30 minutes.

Writers: sysbench `oltp_write_only` (updates, deletes, inserts) with `--rate`, plus the lag probe writer at a
low rate for lag in milliseconds. Verdicts: RSS flat (within each dbmux lifetime, RSS after warm-up vs at its
end, and the last lifetime's peak vs the first's), lag bounded (lag right before each kill, and how long
after each restart the replicas are caught up again), replicas equal to the master at the end.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from ..engines import tables_equal
from ..harness import Result, Scenario, Target, parse_duration, scenario
from ..plots import line_plot, plot_name
from ..process import Sampler
from ..workload import (LAG_COLUMNS, LUA_DIR, SBTEST_COLUMNS, create_lag_probe, finish, lag_rows, lag_stats,
                        sysbench, sysbench_popen)
from .cost import wait_drained, write_marker
from .keeps_up import progress_plots, sustainable_rate

WARMUP_S = 20.0


def rss_verdict(lifetimes: list[list[tuple[float, float]]], warmup: float = WARMUP_S) -> dict[str, float]:
    """RSS growth after warm-up, per lifetime of (t, rss_mb) samples: the largest growth in MiB and in %
    (median of the first 5 s after warm-up vs median of the last 5 s), and the last lifetime's peak
    relative to the first's. Lifetimes shorter than 2 × warm-up are skipped; `judged` counts the others."""
    worst_mb, worst_pct = 0.0, 0.0
    judged = 0
    peaks = []
    for life in lifetimes:
        if not life:
            continue
        peaks.append(max(v for _, v in life))
        t0, t1 = life[0][0], life[-1][0]
        if t1 - t0 < 2 * warmup:
            continue
        early = [v for t, v in life if t0 + warmup <= t <= t0 + warmup + 5]
        late = [v for t, v in life if t >= t1 - 5]
        if not early or not late:
            continue
        a, b = statistics.median(early), statistics.median(late)
        judged += 1
        worst_mb = max(worst_mb, b - a)
        worst_pct = max(worst_pct, (b - a) / a * 100 if a else 0.0)
    out = {"max_growth_mib": worst_mb, "max_growth_pct": worst_pct, "judged": judged}
    if len(peaks) >= 2 and peaks[0]:
        out["last_vs_first_peak"] = peaks[-1] / peaks[0]
    return out


@scenario
class Soak(Scenario):
    name = "soak"
    title = "mixed workload at 50% of the sustainable rate with kill -9 of dbmux every few minutes"
    size_unit = "seconds (bench/run --soak 30m)"
    full_size = 180
    quick_size = 60

    def parse_size(self, text: str) -> Any:
        return int(parse_duration(text))

    def run(self, ctx: Any, size: Any, result: Result) -> None:
        duration = float(size)
        kill_every = float(ctx.shared.get("soak_kill_every_s", min(300.0, max(20.0, duration / 6))))
        never = kill_every <= 0
        if never:
            kill_every = duration * 2  # bounds below stay meaningful; no kill happens
        sustainable = sustainable_rate(ctx)
        rows_per_s = max(20.0, sustainable * 0.5)
        probe_rate = int(min(50, max(5, rows_per_s * 0.05)))
        txn_rate = max(1, int((rows_per_s - probe_rate) / 4))  # 4 row changes per oltp_write_only txn
        db = ctx.db("soak")
        create_lag_probe(ctx, db)
        dbmux = ctx.dbmux(db)
        dbmux.start()
        table_rows = 10_000
        sysbench(ctx, ctx.master, "oltp_write_only", db, "prepare", "--tables=1", f"--table-size={table_rows}")
        ctx.log(f"   {duration:.0f}s at {txn_rate} txn/s (≈{txn_rate * 4} changes/s) + {probe_rate} probe rows/s, "
                + ("no kill" if never else f"kill -9 every {kill_every:.0f}s"))

        def pid_probe() -> dict[str, float]:
            return {"pid": float(dbmux.pid) if dbmux.alive() else 0.0}

        sampler = Sampler(dbmux, 1.0, [pid_probe]).start()
        wlog, plog = ctx.workdir("writer") + "/oltp.log", ctx.workdir("writer") + "/probe.log"
        writer = sysbench_popen(ctx.master, "oltp_write_only", db, "--tables=1", f"--table-size={table_rows}",
                                "--threads=2", f"--rate={txn_rate}", f"--time={int(duration)}",
                                "--report-interval=0", "--mysql-ignore-errors=1213,1205", log_path=wlog)
        prober = sysbench_popen(ctx.master, f"{LUA_DIR}/lag_insert.lua", db, "--threads=1",
                                f"--rate={probe_rate}", f"--time={int(duration)}", "--report-interval=0",
                                log_path=plog)
        start = time.monotonic()
        kills: list[float] = []
        restarts: list[float] = []
        next_kill = start + (duration * 10 if never else kill_every)
        while writer.poll() is None:
            dbmux.check_running()
            if time.monotonic() >= next_kill and time.monotonic() < start + duration - 5:
                kills.append(time.monotonic() - sampler.t0)
                dbmux.kill9()
                t = time.monotonic()
                dbmux.start()
                restarts.append(time.monotonic() - t)
                next_kill += kill_every
            time.sleep(0.2)
        w = finish(writer, wlog, 60)
        pw = finish(prober, plog, 60)
        write_marker(ctx, db)
        _, done = wait_drained(ctx, dbmux, db, timeout=600)
        time.sleep(1.0)
        sampler.stop()
        dbmux.stop()

        result.check(True, tables_equal(ctx, db, "sbtest1", "id", SBTEST_COLUMNS))
        result.check(True, tables_equal(ctx, db, "lag_probe", "id", LAG_COLUMNS))

        # RSS per lifetime (samples grouped by pid).
        lifetimes: dict[float, list[tuple[float, float]]] = {}
        for s in sampler.samples:
            if s.get("pid") and "rss_mb" in s:
                lifetimes.setdefault(s["pid"], []).append((s["t"], s["rss_mb"]))
        # Without kills: RSS after 40 % of the run vs at its end (an LSM's memtables take minutes to fill).
        warmup = duration * 0.4 if never else min(WARMUP_S, kill_every / 4)
        rss = rss_verdict(list(lifetimes.values()), warmup)
        # Lag from the probe rows: overall, and how long after each kill it took to be back under 1 s.
        per_row = lag_rows(ctx, db)
        lag_info: dict[str, Any] = {}
        for r, pts in per_row.items():
            st = lag_stats([ms for _, ms in pts])
            lag_info[r] = st
        result.figure("RSS growth after warm-up (worst lifetime)",
                      rss["max_growth_pct"] if rss["judged"] else None, "%", target=Target("<=", 10.0, on="value"),
                      note=f"{rss['max_growth_mib']:.1f} MiB; {rss['judged']} lifetimes judged, warm-up {warmup:.0f} s")
        if "last_vs_first_peak" in rss:
            result.figure("peak RSS, last lifetime ÷ first", rss["last_vs_first_peak"], "×",
                          target=Target("<=", 1.2, on="value"))
        for r, st in lag_info.items():
            result.figure(f"lag p50 {r}", st["p50_ms"], "ms")
            result.figure(f"lag p99 {r} (kills included)", st["p99_ms"], "ms")
            result.figure(f"lag max {r} (kills included)", st["max_ms"], "ms",
                          target=Target("<=", kill_every * 1000 / 2, on="value"),
                          note="bounded: under half the kill interval")
        result.figure("restart after kill -9 (slowest)", max(restarts, default=0.0), "s")
        result.figure("kills", float(len(kills)), "")
        result.metrics.update(duration_s=duration, kill_every_s=kill_every, kills=kills, restarts_s=restarts,
                              txn_rate=txn_rate, probe_rate=probe_rate, writer=w, probe_writer=pw, rss=rss,
                              lag=lag_info, drained_at=done, sustainable_rows_per_s=sustainable)
        result.keep_series("rss (s, MiB)", {"dbmux": sampler.series("rss_mb")})
        result.keep_series("lag per probe row (s, ms)", per_row, most=2000)
        p = line_plot(plot_name(ctx.plots_dir, self.name, "rss"), "soak: dbmux RSS over time (red: kill -9)",
                      "seconds", "RSS (MiB)", {"dbmux RSS": sampler.series("rss_mb")}, marks=kills)
        if p:
            result.plots.append(p)
        # The probe rows' lag on the sampler's time axis (the kill marks line up).
        offset = _probe_offset(ctx, db, sampler)
        p = line_plot(plot_name(ctx.plots_dir, self.name, "lag-per-row"), "soak: lag per probe row (red: kill -9)",
                      "seconds", "lag (ms)", {r: [(t + offset, v) for t, v in pts] for r, pts in per_row.items()},
                      points=True, marks=kills)
        if p:
            result.plots.append(p)
        progress_plots(ctx, result, sampler, dbmux.replicas, marks=kills)


def _probe_offset(ctx: Any, db: str, sampler: Sampler) -> float:
    """Seconds between the sampler's start and the first probe row (wall clock vs the sampler's clock)."""
    first_us = ctx.master.scalar(f"SELECT MIN(created_us) FROM `{db}`.lag_probe")
    if first_us is None:
        return 0.0
    wall_at_t0 = time.time() - (time.monotonic() - sampler.t0)
    return int(first_us) / 1e6 - wall_at_t0
