"""`bench/run` — see docs/benchmarks.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from . import harness
from .context import Context, load_snapshot, machine_description
from .harness import BenchError, parse_duration
from .scenarios import load_all


def main(argv: list[str]) -> int:
    load_all()
    names = list(harness.ORDER)
    ap = argparse.ArgumentParser(
        prog="bench/run",
        description="dbmux benchmarks: every figure a ratio against a baseline measured in the same run.",
        epilog="scenarios (size knob): " + "; ".join(
            f"{n} ({harness.REGISTRY[n].size_unit}; full {harness.REGISTRY[n].full_size}, "
            f"quick {harness.REGISTRY[n].quick_size})" for n in names),
    )
    ap.add_argument("scenarios", nargs="*", help=f"scenarios to run (default: all): {', '.join(names)}")
    ap.add_argument("--quick", action="store_true", help="small sizes: the whole run fits in a few minutes")
    ap.add_argument("--skip", default="", help="comma-separated scenarios to leave out")
    ap.add_argument("--size", action="append", default=[], metavar="SCENARIO=N",
                    help="size knob of one scenario (repeatable), e.g. --size drain=1000000")
    ap.add_argument("--soak", metavar="DURATION", help="run the soak scenario for DURATION (e.g. 30m); alone "
                    "unless scenarios are named")
    ap.add_argument("--soak-kill-every", metavar="DURATION",
                    help="soak: kill -9 dbmux this often (default: the duration / 6, 20 s to 5 min; 0: never, "
                    "to watch RSS over one long lifetime)")
    ap.add_argument("--out", help="output directory (default: bench/out/<date-time>)")
    ap.add_argument("--keep", action="store_true", help="keep the databases and work files (for debugging)")
    ap.add_argument("--dbmux", default=os.environ.get("DBMUX_BIN", ""), help="dbmux binary")
    ap.add_argument("--perf", action="store_true", help="profile every dbmux process with perf record; "
                    "top symbols in <out>/profiles/ (the sampling costs dbmux some CPU: figures are then rougher)")
    ap.add_argument("--ab", metavar="BEFORE_BINARY", help="A/B: run each scenario alternately with this "
                    "dbmux binary and with --dbmux (the 'after'), --ab-rounds times each, and print after÷before "
                    "per figure (medians): the before/after ratio of a performance change, same run")
    ap.add_argument("--ab-rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run each scenario N times; the table shows each figure's median (all runs in the JSON)")
    ap.add_argument("--note", default="", help="a note stored with the results (e.g. the machine's load)")
    args = ap.parse_args(argv)

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    chosen = args.scenarios or ([] if args.soak else [n for n in names])
    if args.soak:
        chosen = chosen + (["soak"] if "soak" not in chosen else [])
    skip = {s for s in args.skip.split(",") if s}
    unknown = [s for s in list(chosen) + list(skip) if s not in harness.REGISTRY]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(names)}")
    chosen = [n for n in names if n in chosen and n not in skip]

    sizes: dict[str, object] = {}
    for n in chosen:
        cls = harness.REGISTRY[n]
        sizes[n] = cls.quick_size if args.quick else cls.full_size
    for item in args.size:
        if "=" not in item:
            ap.error(f"--size {item!r}: expected SCENARIO=N")
        k, v = item.split("=", 1)
        if k not in harness.REGISTRY:
            ap.error(f"--size {item!r}: unknown scenario {k}")
        sizes[k] = harness.REGISTRY[k]().parse_size(v)
    if args.soak:
        sizes["soak"] = int(parse_duration(args.soak))

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.abspath(args.out or os.path.join(root, "bench", "out", stamp))
    os.makedirs(out, exist_ok=True)
    dbmux_bin = args.dbmux or os.path.join(root, "target", "release", "dbmux")
    if not os.access(dbmux_bin, os.X_OK):
        print(f"no dbmux binary at {dbmux_bin}: cargo build --release --bin dbmux", file=sys.stderr)
        return 2

    ctx = Context(root, out, args.quick, dbmux_bin, keep=args.keep, perf=args.perf)
    if args.soak_kill_every is not None:
        ctx.shared["soak_kill_every_s"] = 0.0 if args.soak_kill_every.strip() in ("0", "0s") else \
            parse_duration(args.soak_kill_every)
    started = datetime.datetime.now(datetime.timezone.utc)
    ctx.log(f"dbmux bench run {ctx.run_id}: {', '.join(chosen)}{' (quick)' if args.quick else ''} → {out}")
    load_before = load_snapshot()
    results = []
    ab_rows: list[tuple[str, ...]] = []
    t0 = time.monotonic()
    try:
        for n in chosen:
            ctx.current = n
            if not args.ab:
                runs_n = [harness.run_scenario(ctx, harness.REGISTRY[n](), sizes[n], ctx.log)
                          for _ in range(max(1, args.repeat))]
                results.append(runs_n[0] if len(runs_n) == 1 else harness.median_result(runs_n))
                continue
            runs: dict[str, list[harness.Result]] = {"before": [], "after": []}
            for i in range(args.ab_rounds):
                for side, binary in (("before", args.ab), ("after", dbmux_bin)):
                    ctx.dbmux_bin = binary
                    ctx.log(f"-- A/B round {i + 1}/{args.ab_rounds}: {side} ({binary})")
                    r = harness.run_scenario(ctx, harness.REGISTRY[n](), sizes[n], ctx.log)
                    runs[side].append(r)
                    results.append(r)
            ctx.dbmux_bin = dbmux_bin
            ab_rows += harness.ab_compare(n, runs["before"], runs["after"])
    finally:
        ctx.close()
    load_after = load_snapshot()

    text = harness.table(results)
    if ab_rows:
        ab_rows = [ab_rows[0]] + [r for r in ab_rows if r[0] != "scenario"]
        text += "\n\nA/B (median of each side; after = " + dbmux_bin + ", before = " + args.ab + ")\n"
        text += harness.markdown(ab_rows)
    failed = [r for r in results if r.check_ok is False]
    errored = [r for r in results if r.error and r.check_ok is not False]
    doc = {
        "run_id": ctx.run_id,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - t0, 1),
        "quick": args.quick,
        "sizes": sizes,
        "dbmux": dbmux_bin,
        "git": git_describe(root),
        "machine": machine_description(),
        "load_before": load_before,
        "load_after": load_after,
        "note": args.note,
        "scenarios": [r.to_json() for r in results],
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(render_markdown(doc, text, out))
    print()
    print(text)
    print(f"\nresults: {out}/results.json, {out}/table.md, plots in {out}/plots/")
    if failed:
        print("\n" + "!" * 100, file=sys.stderr)
        for r in failed:
            print(f"CORRECTNESS FAILURE in {r.name}: {r.error}", file=sys.stderr)
        print("!" * 100, file=sys.stderr)
        return 1
    if errored:
        for r in errored:
            print(f"scenario {r.name} did not complete: {r.error}", file=sys.stderr)
        return 1
    return 0


def git_describe(root: str) -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", root, "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def render_markdown(doc: dict, text: str, out: str) -> str:
    m = doc["machine"]
    lines = [
        f"# dbmux benchmark results ({'quick' if doc['quick'] else 'full'} run)",
        "",
        f"Run {doc['run_id']} started {doc['started']}, took {doc['duration_s']:.0f} s, on commit "
        f"`{doc['git']}`. Produced by `bench/run` (see docs/benchmarks.md); raw figures in `results.json`.",
        "",
        f"**Machine:** {m.get('cores')} cores ({m.get('cpu', '?')}), {m.get('memory_gib', '?')} GiB, "
        f"Linux {m.get('kernel')}; {m.get('mariadb')}; {m.get('sysbench')}; {m.get('haproxy')}; "
        f"{m.get('pgloader')}.",
        "",
        f"**Load:** load average {' '.join(doc['load_before'].get('loadavg', []))} before, "
        f"{' '.join(doc['load_after'].get('loadavg', []))} after. {doc['note']}",
        "",
        "Ratios are dbmux ÷ baseline, both measured in this run. `met` compares the ratio (or, for figures "
        "without a baseline, the value) with the target from issue 13. `check` is the scenario's correctness "
        "check (replicas equal the master).",
        "",
        text,
        "",
    ]
    for s in doc["scenarios"]:
        if s["plots"] or s["checks"]:
            lines.append(f"## {s['name']}: {s['title']}")
            lines.append("")
            for c in s["checks"]:
                lines.append(f"- check {c}")
            lines.append("")
            for p in s["plots"]:
                rel = os.path.relpath(p, out)
                lines.append(f"![{os.path.basename(p)}]({rel})")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        print(f"bench/run: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
