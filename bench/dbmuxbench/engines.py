"""The engines from `scripts/services` (MariaDB master and replica, PostgreSQL) and the correctness check.

MariaDB is reached with PyMySQL (Debian `python3-pymysql`, in the services' package list); PostgreSQL with
`psql`, so the harness needs no PostgreSQL driver.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import urllib.parse
from typing import Any, Sequence

import pymysql

from .harness import BenchError, CorrectnessError


def load_env(root: str) -> dict[str, str]:
    path = os.path.join(root, ".dev", "services.env")
    if not os.path.exists(path):
        raise BenchError(f"{path} missing: run scripts/services up")
    env: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


@dataclasses.dataclass
class Url:
    scheme: str
    user: str
    password: str
    host: str
    port: int
    path: str

    @staticmethod
    def parse(url: str) -> "Url":
        u = urllib.parse.urlsplit(url)
        return Url(
            u.scheme,
            urllib.parse.unquote(u.username or ""),
            urllib.parse.unquote(u.password or ""),
            u.hostname or "127.0.0.1",
            u.port or 0,
            u.path.lstrip("/"),
        )

    def with_path(self, path: str) -> str:
        auth = f"{urllib.parse.quote(self.user)}:{urllib.parse.quote(self.password)}@"
        return f"{self.scheme}://{auth}{self.host}:{self.port}/{path}"


class Maria:
    """One MariaDB server: short-lived PyMySQL connections, autocommit."""

    def __init__(self, url: str, name: str):
        self.url = Url.parse(url)
        self.name = name
        self._conn: pymysql.connections.Connection | None = None

    def connect(self, db: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.url.host,
            port=self.url.port,
            user=self.url.user,
            password=self.url.password,
            database=db,
            autocommit=True,
            charset="utf8mb4",
            connect_timeout=10,
            read_timeout=600,
            write_timeout=600,
        )

    def _c(self) -> pymysql.connections.Connection:
        if self._conn is None or not self._conn.open:
            self._conn = self.connect()
        return self._conn

    def execute(self, *sql: str) -> None:
        with self._c().cursor() as cur:
            for s in sql:
                cur.execute(s)

    def query(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._c().cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def scalar(self, sql: str, args: Sequence[Any] | None = None) -> Any:
        rows = self.query(sql, args)
        return rows[0][0] if rows else None

    def cli(self, db: str | None = None) -> list[str]:
        """The `mariadb` command line for this server (password in the environment, not argv)."""
        cmd = ["mariadb", "--no-defaults", "--protocol=tcp", f"-h{self.url.host}", f"-P{self.url.port}",
               f"-u{self.url.user}", "--batch", "--skip-column-names"]
        if db:
            cmd.append(db)
        return cmd

    def cli_env(self) -> dict[str, str]:
        return {**os.environ, "MYSQL_PWD": self.url.password}

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None


class Pg:
    """PostgreSQL through `psql` (one process per call: the harness sends few, large queries)."""

    def __init__(self, url: str, psql: str):
        self.url_text = url
        self.url = Url.parse(url)
        self.psql = psql

    def _run(self, args: list[str], sql: str | None = None, check: bool = True) -> str:
        env = {**os.environ, "PGPASSWORD": self.url.password, "PGCONNECT_TIMEOUT": "10"}
        cmd = [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t",
               "-h", self.url.host, "-p", str(self.url.port), "-U", self.url.user, "-d", self.url.path]
        cmd += args
        p = subprocess.run(cmd, input=sql, capture_output=True, text=True, env=env)
        if check and p.returncode != 0:
            raise BenchError(f"psql failed ({p.returncode}): {p.stderr.strip()[:2000]}")
        return p.stdout

    def execute(self, sql: str) -> None:
        self._run([], sql=sql)

    def query(self, sql: str) -> list[list[str]]:
        out = self._run(["-c", sql])
        return [line.split("\t") for line in out.splitlines() if line]

    def scalar(self, sql: str) -> str | None:
        rows = self.query(sql)
        return rows[0][0] if rows else None

    def command(self, args: list[str]) -> list[str]:
        """A `psql` command line (with `args` appended) and its environment, for timing a client run."""
        return [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.url.host, "-p", str(self.url.port),
                "-U", self.url.user, "-d", self.url.path] + args

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.url.password}


# ----------------------------------------------------------------------------------------------- equality
@dataclasses.dataclass
class Column:
    """One column as each engine renders it to the same text (the equality check hashes that text)."""

    name: str
    mysql: str = ""  # expression over `name` on MariaDB; default: the column itself
    pg: str = ""  # expression on PostgreSQL; default: the column cast to text

    def my_expr(self) -> str:
        e = self.mysql or f"`{self.name}`"
        return f"COALESCE(CAST({e} AS CHAR), '\\\\N')"

    def pg_expr(self) -> str:
        e = self.pg or f'"{self.name}"'
        return f"COALESCE(({e})::text, '\\N')"


def my_digest(m: Maria, db: str, table: str, cols: list[Column]) -> tuple[int, int]:
    """(row count, order-independent sum of a 60-bit hash of each row's text) on MariaDB."""
    row = ", '|', ".join(c.my_expr() for c in cols)
    sql = (f"SELECT COUNT(*), COALESCE(SUM(CAST(CONV(LEFT(MD5(CONCAT({row})), 15), 16, 10) AS UNSIGNED)), 0) "
           f"FROM `{db}`.`{table}`")
    n, h = m.query(sql)[0]
    return int(n), int(h)


def pg_digest(pg: Pg, schema: str, table: str, cols: list[Column]) -> tuple[int, int]:
    row = " || '|' || ".join(c.pg_expr() for c in cols)
    sql = (f"SELECT count(*), coalesce(sum(('x' || left(md5({row}), 15))::bit(60)::bigint), 0) "
           f'FROM "{schema}"."{table}"')
    n, h = pg.query(sql)[0]
    return int(n), int(h)


def my_row_hashes(m: Maria, db: str, table: str, key: str, cols: list[Column]) -> dict[str, str]:
    row = ", '|', ".join(c.my_expr() for c in cols)
    return {str(k): h for k, h in m.query(f"SELECT `{key}`, MD5(CONCAT({row})) FROM `{db}`.`{table}`")}


def pg_row_hashes(pg: Pg, schema: str, table: str, key: str, cols: list[Column]) -> dict[str, str]:
    row = " || '|' || ".join(c.pg_expr() for c in cols)
    return {k: h for k, h in pg.query(f'SELECT "{key}", md5({row}) FROM "{schema}"."{table}"')}


def describe_diff(master: dict[str, str], other: dict[str, str], limit: int = 5) -> str:
    missing = [k for k in master if k not in other]
    extra = [k for k in other if k not in master]
    differ = [k for k in master if k in other and master[k] != other[k]]

    def some(keys: list[str]) -> str:
        keys = sorted(keys, key=lambda k: (len(k), k))
        return ", ".join(keys[:limit]) + (" …" if len(keys) > limit else "")

    return (f"{len(missing)} rows missing (keys {some(missing)}), {len(extra)} extra ({some(extra)}), "
            f"{len(differ)} differ ({some(differ)})")


def tables_equal(ctx: Any, db: str, table: str, key: str, cols: list[Column],
                 replicas: Sequence[str] = ("mariadb", "postgres"), pg_schema: str | None = None,
                 pg_table: str | None = None) -> str:
    """Raises CorrectnessError unless every named replica holds exactly the master's rows of `db.table`.

    Returns a one-line summary (rows and digest). On a mismatch the error names missing, extra and differing
    keys (fetched row by row only then).
    """
    want = my_digest(ctx.master, db, table, cols)
    for r in replicas:
        if r == "mariadb":
            got = my_digest(ctx.replica, db, table, cols)
        elif r == "postgres":
            got = pg_digest(ctx.pg, pg_schema or db, pg_table or table, cols)
        else:
            raise BenchError(f"unknown replica kind {r}")
        if got != want:
            master_rows = my_row_hashes(ctx.master, db, table, key, cols)
            if r == "mariadb":
                other = my_row_hashes(ctx.replica, db, table, key, cols)
            else:
                other = pg_row_hashes(ctx.pg, pg_schema or db, pg_table or table, key, cols)
            raise CorrectnessError(
                f"{r} replica of {db}.{table} differs from the master: master {want[0]} rows, replica "
                f"{got[0]} rows; {describe_diff(master_rows, other)}"
            )
    return f"{db}.{table}: {want[0]} rows equal on master and {', '.join(replicas)} (digest {want[1]:x})"
