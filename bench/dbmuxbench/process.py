"""dbmux as a process under test: its config, start/stop/kill -9, /status, CPU and memory from /proc, and a
sampler thread that records progress, lag and RSS over time for the plots."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from typing import Any, Callable

from .harness import BenchError

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on (for a replica that must stay unreachable)."""
    return free_port()


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB; empty once the process is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


_GAUGE = re.compile(r'^(dbmux_log_last_seq|dbmux_capture_connected|dbmux_apply_last_seq)(?:\{replica="([^"]*)"\})? '
                    r'([0-9.eE+-]+)$', re.M)


def parse_metrics(text: str) -> dict[str, Any]:
    """The progress gauges of a `/metrics` page, shaped like `/status`."""
    out: dict[str, Any] = {"capture": {"connected": False}, "log": {"last_seq": 0}, "replicas": {}}
    for name, replica, value in _GAUGE.findall(text):
        v = int(float(value))
        if name == "dbmux_log_last_seq":
            out["log"]["last_seq"] = v
        elif name == "dbmux_capture_connected":
            out["capture"]["connected"] = v == 1
        elif replica:
            out["replicas"][replica] = {"applied_seq": v}
    return out


class Dbmux:
    """One `dbmux run` with a generated configuration in its own work directory.

    `replicas` names which of the services' replicas it applies to ("mariadb", "postgres"); a name in
    `down` is configured with a closed port, so its applier keeps retrying and only capture works (used to
    time capture alone). The pipeline name is unique per scenario, so its `dbmux_offsets` rows never meet
    another run's.
    """

    def __init__(self, ctx: Any, pipeline: str, db: str, workdir: str, replicas: tuple[str, ...] = ("mariadb", "postgres"),
                 down: tuple[str, ...] = (), truncate: bool = True, fsync: str = "always",
                 extra_toml: str = "", pg_schema: str | None = None):
        self.ctx = ctx
        self.pipeline = pipeline
        self.db = db
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.data_dir = os.path.join(workdir, "data")
        self.admin_port = free_port()
        self.replicas = replicas
        self.proc: subprocess.Popen[bytes] | None = None
        self.perf: subprocess.Popen[bytes] | None = None
        self.cpu_before_kill = 0.0  # CPU of earlier lifetimes (after kill -9 and restart)
        self.peak_hwm_kb = 0
        self.starts = 0
        m = ctx.master.url
        lines = [
            f'name = "{pipeline}"',
            f'data_dir = "{self.data_dir}"',
            "[log]",
            f'fsync = "{fsync}"',
            f"truncate = {'true' if truncate else 'false'}",
            "[admin]",
            f'listen = "127.0.0.1:{self.admin_port}"',
            "[source.mysql]",
            f'url = "{m.with_path("")}"',
            f"server_id = {ctx.server_id()}",
            f'include = ["{db}"]',
        ]
        for r in replicas:
            lines += ["[[replica]]", f'name = "{r}"']
            if r == "mariadb":
                u = ctx.replica.url
                port = closed_port() if r in down else u.port
                lines += ["[replica.mysql]", f'url = "mysql://{u.user}:{u.password}@{u.host}:{port}/"']
            elif r == "postgres":
                u = ctx.pg.url
                port = closed_port() if r in down else u.port
                lines += ["[replica.postgres]",
                          f'url = "postgres://{u.user}:{u.password}@{u.host}:{port}/{u.path}"']
                if pg_schema:
                    lines.append(f'schema = "{pg_schema}"')
            else:
                raise BenchError(f"unknown replica {r}")
        if "[snapshot]" not in extra_toml:
            # The streaming scenarios measure the binlog path: with the default initial snapshot, rows that
            # exist at the first start are copied as well, and "applied seq >= N" no longer means "all N rows
            # are there" (a table being snapshotted reaches the replica with its chunks). The `snapshot`
            # scenario asks for it explicitly.
            lines += ["[snapshot]", "initial = false"]
        self.config = os.path.join(workdir, "dbmux.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n" + extra_toml)
        self.stderr_path = os.path.join(workdir, "dbmux.log")

    # -------------------------------------------------------------------------------------------- lifecycle
    def start(self, wait: bool = True, timeout: float = 60.0) -> float:
        """Starts dbmux; with `wait`, returns once capture is connected (the start position is durable)."""
        if self.proc is not None and self.proc.poll() is None:
            raise BenchError("dbmux already running")
        env = {**os.environ, "DBMUX_LOG": os.environ.get("DBMUX_BENCH_LOG", "warn")}
        log = open(self.stderr_path, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen([self.ctx.dbmux_bin, "run", "--config", self.config], stdout=log,
                                     stderr=log, env=env, start_new_session=True)
        log.close()
        self.starts += 1
        if getattr(self.ctx, "perf", False):
            self._perf_data = os.path.join(self.workdir, f"perf-{self.starts}.data")
            # BENCH_PERF_CALLGRAPH=1 adds DWARF call graphs (then the report counts callees in callers).
            graph = ["--call-graph", "dwarf,32768"] if os.environ.get("BENCH_PERF_CALLGRAPH") else []
            self.perf = subprocess.Popen(["perf", "record", "-F", "499", "-q", *graph, "-o", self._perf_data,
                                          "-p", str(self.proc.pid)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        if wait:
            self.wait_for(lambda s: s["capture"]["connected"], timeout, "capture connected")
        return t0

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("dbmux not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait: a clean stop (the log is synced)."""
        if not self.alive():
            return
        self._remember_usage()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise BenchError(f"dbmux did not stop within {timeout}s of SIGTERM (see {self.stderr_path})")
        self.cpu_before_kill = self._cpu_total_at_exit
        self._finish_perf()
        if self.proc.returncode not in (0, -signal.SIGTERM):
            raise BenchError(f"dbmux exited with {self.proc.returncode} (see {self.stderr_path})")

    def kill9(self) -> None:
        if not self.alive():
            return
        self._remember_usage()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.cpu_before_kill = self._cpu_total_at_exit
        self._finish_perf()

    def _finish_perf(self) -> None:
        """Stops perf and writes its flat profile (top symbols) to <out>/profiles/."""
        if self.perf is None:
            return
        self.perf.send_signal(signal.SIGINT)
        try:
            self.perf.wait(60)
        except subprocess.TimeoutExpired:
            self.perf.kill()
        self.perf = None
        out_dir = os.path.join(self.ctx.out_dir, "profiles")
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, f"{self.ctx.current}-{os.path.basename(self.workdir)}-{self.starts}.txt")
        mode = ["--children", "-g", "none"] if os.environ.get("BENCH_PERF_CALLGRAPH") else ["--no-children"]
        rep = subprocess.run(["perf", "report", "-i", self._perf_data, "--stdio", *mode,
                              "--sort", "dso,symbol", "--percent-limit", "0.7"], capture_output=True, text=True)
        with open(out, "w") as f:
            f.write("\n".join(line for line in rep.stdout.splitlines() if line.strip()))
        os.remove(self._perf_data)

    def _remember_usage(self) -> None:
        cpu = proc_cpu_seconds(self.pid)
        self._cpu_total_at_exit = self.cpu_before_kill + (cpu or 0.0)
        self.peak_hwm_kb = max(self.peak_hwm_kb, proc_memory_kb(self.pid).get("VmHWM", 0))

    def check_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = ""
            try:
                with open(self.stderr_path, errors="replace") as f:
                    tail = "".join(f.readlines()[-20:])
            except OSError:
                pass
            raise BenchError(f"dbmux exited with {self.proc.returncode}; last log lines:\n{tail}")

    # -------------------------------------------------------------------------------------------- readings
    def cpu_seconds(self) -> float:
        """CPU of every lifetime so far (the current one read now)."""
        cur = proc_cpu_seconds(self.pid) if self.alive() else None
        return self.cpu_before_kill + (cur or 0.0)

    def memory_kb(self) -> dict[str, int]:
        m = proc_memory_kb(self.pid) if self.alive() else {}
        if m:
            self.peak_hwm_kb = max(self.peak_hwm_kb, m.get("VmHWM", 0))
        return m

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """Progress in the shape of `/status` (`capture.connected`, `log.last_seq`,
        `replicas.<name>.applied_seq`), read from the Prometheus gauges on `/metrics`.

        Not from `/status` itself: its `first_seq` walks every truncated chunk's tombstone from the start of
        the log, so one call took up to a second of dbmux CPU after 40 s of single-row transactions, and
        polling it would measure the harness. The gauges are plain reads. `log.last_seq` is 0 until the
        first append of this process; `applied_seq` is absent until a replica's first commit.
        """
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=timeout) as r:
            return parse_metrics(r.read().decode())

    def append_latency(self) -> dict[str, float]:
        """Log appends so far and their mean duration incl. fsync (`dbmux_log_append_seconds`)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=2) as r:
            text = r.read().decode()
        out = {}
        for k in ("sum", "count"):
            m = re.search(rf"^dbmux_log_append_seconds_{k} ([0-9.eE+-]+)$", text, re.M)
            if m:
                out[k] = float(m.group(1))
        if out.get("count"):
            out["mean_ms"] = out["sum"] / out["count"] * 1000
        return out

    def status_json(self, timeout: float = 2.0) -> dict[str, Any]:
        """The real `/status` (costly on a long-running log: see `status`)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/status", timeout=timeout) as r:
            return json.loads(r.read())

    def try_status(self) -> dict[str, Any] | None:
        try:
            return self.status(timeout=1.0)
        except Exception:  # noqa: BLE001 - not up (yet), or being killed
            return None

    def wait_for(self, cond: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                 poll: float = 0.05) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            self.check_running()
            s = self.try_status()
            if s is not None:
                last = s
                try:
                    if cond(s):
                        return s
                except (KeyError, TypeError):
                    pass
            time.sleep(poll)
        raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}; last /status: {last}")

    def wait_applied(self, seq: int, timeout: float, poll: float = 0.05,
                     replicas: tuple[str, ...] | None = None) -> dict[str, float]:
        """Waits until the log holds `seq` and every replica has applied it; returns when each got there
        (monotonic time)."""
        names = replicas or self.replicas
        done: dict[str, float] = {}

        def cond(s: dict[str, Any]) -> bool:
            now = time.monotonic()
            for r in names:
                if r not in done and (s["replicas"].get(r, {}).get("applied_seq") or 0) >= seq:
                    done[r] = now
            return len(done) == len(names)

        self.wait_for(cond, timeout, f"replicas {names} to apply seq {seq}", poll)
        return done

    def log_ops(self) -> dict[str, int]:
        """How many events of each `op` the log holds (`dbmux tail` of the whole log; dbmux must be stopped:
        the embedded log is locked by the process that has it open)."""
        out = subprocess.run([self.ctx.dbmux_bin, "tail", "--config", self.config], capture_output=True,
                             check=True, timeout=600).stdout
        ops: dict[str, int] = {}
        for line in out.splitlines():
            if line.startswith(b"{"):
                op = json.loads(line).get("op", "?")
                ops[op] = ops.get(op, 0) + 1
        return ops

    def last_seq(self) -> int:
        return int(self.status()["log"]["last_seq"])


class Sampler:
    """Samples /status, dbmux's CPU and RSS, and optional probes every `interval` s in a thread.

    Each sample is a dict with `t` (seconds since the sampler started), `last_seq`, `applied.<replica>`,
    `rss_mb`, `cpu_s` and whatever the probes return. Samples taken while dbmux is down carry no `last_seq`.
    """

    def __init__(self, dbmux: Dbmux, interval: float = 0.25,
                 probes: list[Callable[[], dict[str, float]]] | None = None):
        self.dbmux = dbmux
        self.interval = interval
        self.probes = probes or []
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.monotonic()
        self.errors: list[str] = []

    def start(self) -> "Sampler":
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, float]]:
        self._stop.set()
        self._thread.join(10)
        return self.samples

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            s: dict[str, float] = {"t": t - self.t0}
            st = self.dbmux.try_status()
            if st is not None:
                if st["log"]["last_seq"]:  # 0 right after a restart, until the first append
                    s["last_seq"] = float(st["log"]["last_seq"])
                for r, v in st["replicas"].items():
                    if v.get("applied_seq") is not None:
                        s[f"applied.{r}"] = float(v["applied_seq"])
            mem = self.dbmux.memory_kb()
            if mem:
                s["rss_mb"] = mem.get("VmRSS", 0) / 1024.0
            s["cpu_s"] = self.dbmux.cpu_seconds()
            for p in self.probes:
                try:
                    s.update(p())
                except Exception as e:  # noqa: BLE001 - a failed probe leaves a gap, not a crash
                    if len(self.errors) < 5:
                        self.errors.append(str(e))
            self.samples.append(s)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def series(self, key: str) -> list[tuple[float, float]]:
        return [(s["t"], s[key]) for s in self.samples if key in s]
