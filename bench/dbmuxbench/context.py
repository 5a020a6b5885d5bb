"""What every scenario gets: the engines, the dbmux binary, unique names, work directories, clean-up, and
facts shared between scenarios (such as the sustainable rate measured by `keeps_up`)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from typing import Any, Callable

from .engines import Maria, Pg, load_env
from .harness import BenchError
from .process import Dbmux


class Context:
    def __init__(self, root: str, out_dir: str, quick: bool, dbmux_bin: str, keep: bool = False,
                 perf: bool = False):
        self.root = root
        #: Attach `perf record` to every dbmux process; flat profiles land in <out>/profiles/.
        self.perf = perf
        self.out_dir = out_dir
        self.plots_dir = os.path.join(out_dir, "plots")
        os.makedirs(self.plots_dir, exist_ok=True)
        self.quick = quick
        self.keep = keep
        self.dbmux_bin = dbmux_bin
        self.env = load_env(root)
        self.master = Maria(self.env["DBMUX_TEST_MYSQL_URL"], "master")
        self.replica = Maria(self.env["DBMUX_TEST_MYSQL_REPLICA_URL"], "replica")
        self.pg = Pg(self.env["DBMUX_TEST_PG_URL"], self.env.get("DBMUX_TEST_PSQL", "psql"))
        self.run_id = f"{int(time.time()) % 100000:05d}{random.randint(0, 99):02d}"
        self.work = os.path.join("/tmp", f"dbmux-bench-{self.run_id}")
        os.makedirs(self.work, exist_ok=True)
        #: Facts measured by one scenario for later ones (e.g. "sustainable_rows_per_s").
        self.shared: dict[str, Any] = {}
        self._cleanups: dict[str, list[tuple[bool, Callable[[], None]]]] = {}
        self._server_ids: set[int] = set()
        self.current: str = ""

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    # ------------------------------------------------------------------------------------------- names
    def db(self, suffix: str) -> str:
        """A database name unique to this run and scenario, dropped on every engine at the scenario's end."""
        name = f"bench_{self.run_id}_{self.current}_{suffix}".replace("-", "_")[:64]
        self.on_cleanup(lambda: self.drop_db(name))
        return name

    def drop_db(self, name: str) -> None:
        for m in (self.master, self.replica):
            m.execute(f"DROP DATABASE IF EXISTS `{name}`")
        self.pg.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def pipeline_name(self, suffix: str = "") -> str:
        name = f"bench-{self.run_id}-{self.current}{('-' + suffix) if suffix else ''}"
        self.on_cleanup(lambda: self._drop_offsets(name))
        return name

    def _drop_offsets(self, pipeline: str) -> None:
        like = pipeline.replace("_", "\\_") + "/%"
        try:
            self.replica.execute(f"DELETE FROM dbmux.dbmux_offsets WHERE consumer LIKE '{like}'")
        except Exception:  # noqa: BLE001 - the table may not exist yet
            pass
        try:
            self.pg.execute(f"DELETE FROM dbmux.dbmux_offsets WHERE consumer LIKE '{like}'")
        except Exception:  # noqa: BLE001
            pass

    def server_id(self) -> int:
        """A replication server_id for one dbmux capture, distinct from the services' and this run's others."""
        while True:
            sid = random.randint(100_000, 4_000_000_000)
            if sid not in self._server_ids:
                self._server_ids.add(sid)
                return sid

    def workdir(self, name: str) -> str:
        d = os.path.join(self.work, self.current, name)
        os.makedirs(d, exist_ok=True)
        return d

    def dbmux(self, db: str, name: str = "dbmux", **kw: Any) -> Dbmux:
        d = Dbmux(self, self.pipeline_name(name), db, self.workdir(name), **kw)
        self.on_cleanup(d.kill9, data=False)
        return d

    # ------------------------------------------------------------------------------------------- clean-up
    def on_cleanup(self, fn: Callable[[], None], data: bool = True) -> None:
        """Runs `fn` when the current scenario ends; `data` clean-ups (dropping databases, offsets rows) are
        skipped with --keep, process clean-ups never are."""
        self._cleanups.setdefault(self.current, []).append((data, fn))

    def cleanup_scenario(self, name: str) -> None:
        fns = self._cleanups.pop(name, [])
        errors = []
        # Processes first (registered last), then databases.
        for data, fn in reversed(fns):
            if self.keep and data:
                continue
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
        if not self.keep:
            shutil.rmtree(os.path.join(self.work, name), ignore_errors=True)
        if errors:
            raise BenchError("; ".join(errors))

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        self.master.close()
        self.replica.close()

    # ------------------------------------------------------------------------------------------- tools
    def run_tool(self, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 3600,
                 stdout: Any = subprocess.PIPE, input_text: str | None = None) -> tuple[float, str]:
        """Runs a client tool to completion and returns (wall seconds, stdout). Fails loudly on a non-zero
        exit."""
        t0 = time.monotonic()
        p = subprocess.run(cmd, env=env, timeout=timeout, stdout=stdout, stderr=subprocess.PIPE,
                           input=input_text, text=True)
        dt = time.monotonic() - t0
        if p.returncode != 0:
            raise BenchError(f"{os.path.basename(cmd[0])} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
        return dt, (p.stdout or "") if stdout is subprocess.PIPE else ""


def machine_description() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was."""
    desc: dict[str, Any] = {"cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    desc["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            desc["memory_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    desc["kernel"] = os.uname().release
    desc["python"] = sys.version.split()[0]
    for tool, args in (("mariadb", ["--version"]), ("sysbench", ["--version"]), ("haproxy", ["-v"]),
                       ("pgloader", ["--version"])):
        try:
            out = subprocess.run([tool] + args, capture_output=True, text=True, timeout=20).stdout
            desc[tool] = out.splitlines()[0].strip() if out else None
        except (OSError, subprocess.TimeoutExpired):
            desc[tool] = None
    return desc


def load_snapshot() -> dict[str, Any]:
    """Load average and the busiest other processes right now (the machine is shared)."""
    snap: dict[str, Any] = {}
    try:
        with open("/proc/loadavg") as f:
            snap["loadavg"] = f.read().split()[:3]
    except OSError:
        pass
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[1:6]
        snap["top"] = [" ".join(line.split()) for line in out]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return snap


def require_tools(tools: list[str]) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} (bench/run installs them as root)")
