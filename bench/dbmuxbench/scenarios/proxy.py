"""proxy: bench/proxy.sh's scenarios (sysbench point selects, text point selects, read-only) direct to the
replica, through HAProxy (TCP mode) and through dbmux's proxy, in the same run; QPS ratios and the CPU-seconds
per query of dbmux vs HAProxy (from /proc). The script's own check: the table read through dbmux equals the
master's (the replica holds a copy of it)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from ..harness import BenchError, Result, Scenario, Target, scenario


@scenario
class Proxy(Scenario):
    name = "proxy"
    title = "proxy QPS and CPU per query vs direct and HAProxy (bench/proxy.sh)"
    size_unit = "seconds per sysbench run"
    full_size = 15
    quick_size = 5

    def run(self, ctx: Any, size: Any, result: Result) -> None:
        out = os.path.join(ctx.workdir("proxy"), "proxy.json")
        db = ctx.db("sb")
        env = {**os.environ, "SECONDS_PER_RUN": str(int(size)), "DBMUX": ctx.dbmux_bin, "RESULT_JSON": out,
               "BENCH_DB": db, "THREADS": os.environ.get("THREADS", "8")}
        p = subprocess.run(["bash", os.path.join(ctx.root, "bench", "proxy.sh")], env=env, capture_output=True,
                           text=True, timeout=3600)
        with open(os.path.join(ctx.workdir("proxy"), "proxy.log"), "w") as f:
            f.write(p.stdout + p.stderr)
        for line in p.stdout.splitlines():
            if line.startswith(("direct ", "haproxy ", "dbmux ")):
                ctx.log("   " + line)
        if not os.path.exists(out):
            raise BenchError(f"bench/proxy.sh failed ({p.returncode}): {(p.stderr or p.stdout)[-1500:]}")
        with open(out) as f:
            data = json.load(f)
        result.metrics["proxy"] = data
        runs = {(r["test"], r["via"]): r for r in data["runs"]}
        for test in ("oltp_point_select", "point_select_text", "oltp_read_only"):
            d, h, x = runs[(test, "direct")], runs[(test, "haproxy")], runs[(test, "dbmux")]
            result.figure(f"{test} QPS vs HAProxy", x["qps"], "qps", h["qps"], "HAProxy", Target(">=", 1.0))
            result.figure(f"{test} QPS vs direct", x["qps"], "qps", d["qps"], "direct")
            result.figure(f"{test} CPU per query", x["cpu_s_per_query"] * 1e6, "µs", h["cpu_s_per_query"] * 1e6,
                          "HAProxy", Target("<=", 1.0))
        result.check(data["check"] == "ok" and p.returncode == 0,
                     f"table through dbmux equals the master's: {data['check_rows']} (rows, checksum)")
