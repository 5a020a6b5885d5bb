"""PNG plots with gnuplot (Debian `gnuplot-nox`): one data file per series, one script per plot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def line_plot(path: str, title: str, xlabel: str, ylabel: str,
              series: dict[str, list[tuple[float, float]]], points: bool = False,
              logy: bool = False, marks: list[float] | None = None) -> str | None:
    """Draws `series` (label → [(x, y)]) into the PNG `path`; returns the path, or None without gnuplot or
    data. `marks` draws vertical lines (e.g. the moments dbmux was killed)."""
    series = {k: v for k, v in series.items() if v}
    if not series or shutil.which("gnuplot") is None:
        return None
    base = os.path.splitext(path)[0]
    plots = []
    for i, (label, data) in enumerate(series.items()):
        dat = f"{base}.{i}.dat"
        with open(dat, "w") as f:
            for x, y in data:
                f.write(f"{x:.4f} {y:.6g}\n")
        style = "points pt 7 ps 0.3" if points else "lines lw 2"
        plots.append(f"'{dat}' using 1:2 with {style} title '{label.replace(chr(39), '')}'")
    script = [
        "set terminal pngcairo size 1000,500 font 'sans,10' noenhanced",
        f"set output '{path}'",
        f"set title '{title}'",
        f"set xlabel '{xlabel}'",
        f"set ylabel '{ylabel}'",
        "set grid",
        "set key outside right top",
        "set yrange [0:*]" if not logy else "set logscale y",
    ]
    for m in marks or []:
        script.append(f"set arrow from {m:.3f}, graph 0 to {m:.3f}, graph 1 nohead dt 2 lc rgb 'red'")
    script.append("plot " + ", ".join(plots))
    gp = f"{base}.gp"
    with open(gp, "w") as f:
        f.write("\n".join(script) + "\n")
    p = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    for i in range(len(series)):
        os.remove(f"{base}.{i}.dat")
    os.remove(gp)
    if p.returncode != 0:
        raise RuntimeError(f"gnuplot failed: {p.stderr.strip()[:500]}")
    return path


def plot_name(plots_dir: str, scenario: str, what: str) -> str:
    return os.path.join(plots_dir, f"{_safe(scenario)}-{_safe(what)}.png")
