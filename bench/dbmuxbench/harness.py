"""The harness: scenarios, figures, targets, the correctness verdict, the run report.

A scenario is a class registered with `@scenario`. It declares its name, a title, a size knob (with a full
and a `--quick` default) and implements `run(ctx, size, result)`: it measures the dbmux side and its baseline
in the same invocation, adds `Figure`s (dbmux value, baseline value, target) to `result`, time series for
the plots, and ends with a correctness check (`ctx.check_equal(...)` or `result.check(...)`). A correctness
failure raises `CorrectnessError`; the harness records it, runs the remaining scenarios and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from typing import Any, Callable


class CorrectnessError(Exception):
    """The replicas (or the log) do not hold what the master holds: the benchmark result is void."""


class BenchError(Exception):
    """A scenario could not run (setup, a tool failed, a timeout)."""


@dataclasses.dataclass
class Target:
    """A goal for a figure: `on` is "ratio" (dbmux / baseline) or "value" (the dbmux figure itself)."""

    op: str  # ">=" or "<="
    bound: float
    on: str = "ratio"

    def met(self, fig: "Figure") -> bool | None:
        x = fig.ratio if self.on == "ratio" else fig.dbmux
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return None
        return x >= self.bound if self.op == ">=" else x <= self.bound

    def text(self) -> str:
        b = f"{self.bound:g}"
        return f"{self.op} {b}×" if self.on == "ratio" else f"{self.op} {b}"


@dataclasses.dataclass
class Figure:
    name: str
    dbmux: float | None
    unit: str = ""
    baseline: float | None = None
    baseline_name: str = ""
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.dbmux is None or not self.baseline:
            return None
        return self.dbmux / self.baseline

    def to_json(self) -> dict[str, Any]:
        met = self.target.met(self) if self.target else None
        return {
            "name": self.name,
            "unit": self.unit,
            "dbmux": self.dbmux,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio,
            "target": self.target.text() if self.target else None,
            "met": met,
            "note": self.note,
        }


@dataclasses.dataclass
class Result:
    """What one scenario produced."""

    name: str
    title: str
    size: Any
    figures: list[Figure] = dataclasses.field(default_factory=list)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    series: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)
    plots: list[str] = dataclasses.field(default_factory=list)
    checks: list[str] = dataclasses.field(default_factory=list)
    check_ok: bool | None = None
    error: str | None = None
    duration_s: float = 0.0

    def figure(self, *args: Any, **kw: Any) -> Figure:
        f = Figure(*args, **kw)
        self.figures.append(f)
        return f

    def keep_series(self, prefix: str, series: dict[str, list[tuple[float, float]]], most: int = 600) -> None:
        """Stores plotted series in the JSON (every n-th point, at most `most` per series)."""
        for label, pts in series.items():
            step = max(1, len(pts) // most)
            self.series[f"{prefix}: {label}"] = [(round(t, 3), round(v, 3)) for t, v in pts[::step]]

    def check(self, ok: bool, what: str) -> None:
        """Records one correctness check; a failed one raises `CorrectnessError` at once."""
        self.checks.append(("ok: " if ok else "FAILED: ") + what)
        if not ok:
            self.check_ok = False
            raise CorrectnessError(what)
        if self.check_ok is None:
            self.check_ok = True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "size": self.size,
            "duration_s": round(self.duration_s, 1),
            "figures": [f.to_json() for f in self.figures],
            "metrics": self.metrics,
            "checks": self.checks,
            "check_ok": self.check_ok,
            "error": self.error,
            "plots": self.plots,
            "series": {k: [[t, v] for t, v in s] for k, s in self.series.items()},
        }


class Scenario:
    """Base class. Subclasses set the class attributes and implement `run`."""

    name: str = ""
    title: str = ""
    #: What the size knob means, for --help and the docs ("rows", "row events", "seconds"...).
    size_unit: str = ""
    full_size: Any = None
    quick_size: Any = None
    #: Run only when asked for by name (or by a dedicated option such as --soak).
    on_request_only: bool = False

    def parse_size(self, text: str) -> Any:
        return int(float(text))

    def run(self, ctx: Any, size: Any, result: Result) -> None:  # pragma: no cover - interface
        raise NotImplementedError


REGISTRY: dict[str, type[Scenario]] = {}
ORDER: list[str] = []


def scenario(cls: type[Scenario]) -> type[Scenario]:
    """Class decorator: registers a scenario under `cls.name` (in import order)."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"scenario name {cls.name!r} missing or used twice")
    REGISTRY[cls.name] = cls
    ORDER.append(cls.name)
    return cls


def run_scenario(ctx: Any, sc: Scenario, size: Any, log: Callable[[str], None]) -> Result:
    result = Result(name=sc.name, title=sc.title, size=size)
    start = time.monotonic()
    log(f"== {sc.name}: {sc.title} (size {size} {sc.size_unit})")
    try:
        sc.run(ctx, size, result)
        if result.check_ok is None:
            result.error = "scenario ended without a correctness check"
    except CorrectnessError as e:
        result.check_ok = False
        result.error = f"CORRECTNESS: {e}"
        log(f"!! {sc.name}: CORRECTNESS FAILURE: {e}")
    except Exception as e:  # noqa: BLE001 - one scenario's failure must not hide the others' results
        result.error = f"{type(e).__name__}: {e}"
        log(f"!! {sc.name}: {result.error}")
        log(traceback.format_exc())
    finally:
        result.duration_s = time.monotonic() - start
        try:
            ctx.cleanup_scenario(sc.name)
        except Exception as e:  # noqa: BLE001
            log(f"   cleanup of {sc.name} failed: {e}")
    for c in result.checks:
        log(f"   check {c}")
    return result


# ----------------------------------------------------------------------------------------------- numbers
def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("percentile of nothing")
    s = sorted(values)
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[min(k, len(s)) - 1]


def parse_duration(text: str) -> float:
    """`90`, `90s`, `30m`, `1h`, `1h30m` → seconds."""
    t = text.strip().lower()
    if not t:
        raise ValueError("empty duration")
    total, num = 0.0, ""
    units = {"s": 1, "m": 60, "h": 3600}
    for ch in t:
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in units and num:
            total += float(num) * units[ch]
            num = ""
        else:
            raise ValueError(f"bad duration {text!r} (examples: 90s, 30m, 1h)")
    if num:
        total += float(num)
    if total <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return total


def rate_series(samples: list[tuple[float, float]], window: float = 1.0) -> list[tuple[float, float]]:
    """Per-second rate of a cumulative counter sampled as (t, value): the slope over about `window` s."""
    out: list[tuple[float, float]] = []
    j = 0
    for i in range(1, len(samples)):
        t, v = samples[i]
        while j < i - 1 and t - samples[j + 1][0] >= window:
            j += 1
        t0, v0 = samples[j]
        if t > t0:
            out.append((t, max(0.0, (v - v0) / (t - t0))))
    return out


def fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if math.isnan(x):
            return "—"
        a = abs(x)
        if a >= 100_000:
            return f"{x:,.0f}"
        if a >= 100:
            return f"{x:.0f}"
        if a >= 10:
            return f"{x:.1f}"
        if a >= 1:
            return f"{x:.2f}"
        return f"{x:.3g}"
    return str(x)


def table(results: list[Result]) -> str:
    """The results as a Markdown table (also readable as plain text)."""
    rows = [("scenario", "figure", "dbmux", "baseline", "ratio", "target", "met", "check")]
    for r in results:
        check = "ok" if r.check_ok else ("FAILED" if r.check_ok is False else "—")
        if r.error and not r.figures:
            rows.append((r.name, "error: " + r.error[:80], "", "", "", "", "", check))
            continue
        for i, f in enumerate(r.figures):
            unit = f" {f.unit}" if f.unit else ""
            base = "" if f.baseline is None else f"{fmt(f.baseline)}{unit} ({f.baseline_name})"
            met = f.target.met(f) if f.target else None
            rows.append(
                (
                    r.name if i == 0 else "",
                    f.name,
                    f"{fmt(f.dbmux)}{unit}",
                    base,
                    "" if f.ratio is None else f"{f.ratio:.2f}×",
                    f.target.text() if f.target else "",
                    {True: "yes", False: "**no**", None: ""}[met],
                    check if i == 0 else "",
                )
            )
        if r.error:
            rows.append(("", "error: " + r.error[:100], "", "", "", "", "", ""))
    return markdown(rows)


def markdown(rows: list[tuple[str, ...]]) -> str:
    """Rows (the first is the header) as an aligned Markdown table."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def median_result(runs: list[Result]) -> Result:
    """One result whose figures are the medians of `runs` (same scenario); the check passes only if every run's
    did; each run's figures stay in `metrics.runs`."""
    import statistics

    first = runs[0]
    out = Result(name=first.name, title=f"{first.title} (median of {len(runs)} runs)", size=first.size)
    for f in first.figures:
        vals = [g for r in runs for g in r.figures if g.name == f.name]
        dm = [g.dbmux for g in vals if g.dbmux is not None]
        bl = [g.baseline for g in vals if g.baseline is not None]
        out.figures.append(Figure(f.name, statistics.median(dm) if dm else None, f.unit,
                                  statistics.median(bl) if bl else None, f.baseline_name, f.target, f.note))
    out.metrics = {"runs": [r.to_json() for r in runs]}
    out.series, out.plots = first.series, first.plots
    out.checks = [c for r in runs for c in r.checks]
    oks = [r.check_ok for r in runs]
    out.check_ok = False if False in oks else (None if None in oks else True)
    errors = [r.error for r in runs if r.error]
    out.error = "; ".join(errors) if errors else None
    out.duration_s = sum(r.duration_s for r in runs)
    return out


def ab_compare(name: str, before: list[Result], after: list[Result]) -> list[tuple[str, ...]]:
    """Per figure: the median dbmux value of each side and after ÷ before. Rows for `markdown` (with header)."""
    import statistics

    rows: list[tuple[str, ...]] = [("scenario", "figure", "before (median)", "after (median)", "after ÷ before",
                                     "values before", "values after")]
    names = [f.name for f in (before[0].figures if before else [])]
    for fname in names:
        b = [f.dbmux for r in before for f in r.figures if f.name == fname and f.dbmux is not None]
        a = [f.dbmux for r in after for f in r.figures if f.name == fname and f.dbmux is not None]
        if not a or not b:
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        rows.append((name, fname, fmt(mb), fmt(ma), f"{ma / mb:.3f}" if mb else "—",
                     " ".join(fmt(x) for x in b), " ".join(fmt(x) for x in a)))
    return rows
