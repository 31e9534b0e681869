"""Shared plumbing for ``bench/ingest``, ``bench/delivery`` and ``bench/e2e`` (not a benchmark).

Process handling (each server in its own process group, stopped by pid on the way out), the
relay's environment, admin calls, the sink's control endpoints, percentiles and CPU readings,
and the two stores: a SQLite file (read read-only) or a fresh PostgreSQL schema per run
(``PgSchema``: created with psycopg, dropped on the way out). Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = REPO / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
RELAY = VENV / "bin" / "relay"
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
#: The local PostgreSQL the PostgreSQL runs use (trust auth); each run gets its own schema.
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
STORES = ("sqlite", "postgres")

#: The Evolink "completed" callback; ``{id}`` makes every task (hence every event) unique.
CALLBACK_TEMPLATE = (
    '{{"id":"{id}","object":"video.generation.task","created":1756817821,'
    '"model":"seedance-2.0","status":"completed","progress":100,'
    '"results":["https://cdn.example.com/videos/{id}.mp4"],"type":"video",'
    '"task_info":{{"can_cancel":false}}}}'
)


def ensure_venv(script: str) -> None:
    """Re-exec ``script`` with the project's virtualenv interpreter if needed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not VENV_PYTHON.exists() or not RELAY.exists():
        sys.exit(f"{Path(script).name}: no .venv with the relay installed; run `make install`")
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(script).resolve()), *sys.argv[1:]])


def make_say(tag: str) -> Any:
    def say(message: str) -> None:
        print(f"[{tag}] {message}", file=sys.stderr, flush=True)

    return say


def raise_on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- processes ------------------------------------------------------------------------------------


class Processes:
    """Processes started by this run; each is stopped through its own process group, by pid."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, cmd: list[str], log_path: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.started.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 40.0) -> int | None:
        """SIGTERM its process group, wait, SIGKILL if it does not go; forget it."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.started = [(n, p) for n, p in self.started if p is not proc]
        return proc.returncode

    def stop_all(self) -> None:
        for _name, proc in reversed(self.started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 40
        for _name, proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.started.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30
) -> tuple[int, Any]:
    assert url.startswith(f"http://{HOST}:"), url
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log_path)}")
        with contextlib.suppress(OSError):
            status, _ = http("GET", url, timeout=2)
            if status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not answer {url} within 30 s:\n{tail(log_path)}")


def base_env() -> dict[str, str]:
    """The caller's environment without any RELAY_* variable (nothing leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- stores ---------------------------------------------------------------------------------------


class SqliteFile:
    """A relay's SQLite file; the bench reads it read-only while the relay runs."""

    kind = "sqlite"
    label = "SQLite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.name = path.name

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return read_db(self.path, sql, params)

    def drop(self) -> None:
        """Nothing to do: the file goes with the run's temp dir."""


def _pg_connect(url: str, **kwargs: Any) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10, **kwargs)


def check_pg_url(url: str) -> str:
    """Only a local server: the benches contact nothing but 127.0.0.1."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or parts.hostname != HOST:
        raise ValueError(f"the PostgreSQL URL must be postgresql://...@{HOST}:port/db, not {url!r}")
    return url


class PgSchema:
    """A fresh schema ``relay_bench_<random>`` in the local PostgreSQL, for one relay run.

    The relay gets ``url`` (``search_path`` set to the schema, ``application_name`` = the
    schema's name, so its server processes can be told apart in ``pg_stat_activity``) and
    migrates the schema at start. ``drop()`` removes it with everything in it; call it in a
    ``finally`` once the relays using it have stopped.
    """

    kind = "postgres"
    label = "PostgreSQL"

    def __init__(self, base_url: str = PG_URL) -> None:
        self.base_url = check_pg_url(base_url)
        self.name = f"relay_bench_{secrets.token_hex(5)}"
        with _pg_connect(base_url) as conn:
            conn.execute(f'CREATE SCHEMA "{self.name}"')
        sep = "&" if urlsplit(base_url).query else "?"
        self.url = (
            f"{base_url}{sep}options={quote('-csearch_path=' + self.name, safe='-')}"
            f"&application_name={self.name}"
        )
        self.dropped = False

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement (``?`` placeholders, as for SQLite) run in the schema."""
        with _pg_connect(self.url, application_name=f"{self.name}_bench") as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())

    def vacuum_analyze(self) -> None:
        """What autovacuum would do to a backlog that built up over time: visibility map and
        planner statistics up to date, so it does not start on them during a measured run."""
        with _pg_connect(self.url, application_name=f"{self.name}_bench") as conn:
            conn.execute("VACUUM (ANALYZE) events, deliveries, subscribers, tasks, attempts")

    def drop(self) -> None:
        if self.dropped:
            return
        with _pg_connect(self.base_url, application_name=f"{self.name}_bench") as conn:
            conn.execute("SET lock_timeout = '30s'")
            # Our relays are stopped by now; a connection left over would block the DROP.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (self.name,),
            )
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
        self.dropped = True


class Schemas:
    """Every schema a run creates, dropped by ``drop_all`` in the run's ``finally``."""

    def __init__(self, base_url: str, say: Any) -> None:
        self.base_url = base_url
        self.say = say
        self.created: list[PgSchema] = []

    def new(self) -> PgSchema:
        schema = PgSchema(self.base_url)
        self.created.append(schema)
        return schema

    def drop(self, schema: PgSchema) -> None:
        try:
            schema.drop()
        except Exception as exc:  # reported; drop_all tries again
            self.say(f"could not drop schema {schema.name}: {exc}")

    def drop_all(self) -> None:
        for schema in self.created:
            self.drop(schema)
        left = [s.name for s in self.created if not s.dropped]
        if left:
            self.say(f"schemas NOT dropped (drop them by hand): {', '.join(left)}")
        self.created = [s for s in self.created if not s.dropped]


def leftover_schemas(base_url: str) -> list[str]:
    """``relay_bench_*`` schemas already in the database (from a run that was killed)."""
    with _pg_connect(base_url, application_name="relay_bench_check") as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'relay\\_bench\\_%' ORDER BY 1"
        ).fetchall()
    return [str(row[0]) for row in rows]


def pg_server_version(base_url: str) -> str:
    with _pg_connect(base_url, application_name="relay_bench_check") as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
        settings = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('synchronous_commit', 'fsync', 'shared_buffers', 'max_connections') ORDER BY name"
        ).fetchall()
    extra = ", ".join(f"{name}={value}" for name, value in settings)
    return f"PostgreSQL {row[0] if row else '?'} ({extra})"


def pg_pool_size() -> int | None:
    """The relay's PostgreSQL connection pool limit per process (``PostgresStore`` default)."""
    import inspect

    try:
        from service.store.postgres import PostgresStore
    except ImportError:
        return None
    value = inspect.signature(PostgresStore.__init__).parameters["max_size"].default
    return int(value) if isinstance(value, int) else None


class PgMonitor:
    """CPU of the PostgreSQL server processes during a run, read from /proc.

    ``ours``: the backends whose ``application_name`` is one of the run's schemas (the relays'
    connections); ``background``: WAL writer, checkpointer, background writer, autovacuum.
    Backends of other users of the server are left out (they count as other work).
    """

    def __init__(self, base_url: str) -> None:
        self.conn = _pg_connect(base_url, application_name="relay_bench_monitor")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def snapshot(self, app_names: set[str]) -> dict[str, dict[int, float]]:
        rows = self.conn.execute(
            "SELECT pid, application_name, backend_type FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid()"
        ).fetchall()
        out: dict[str, dict[int, float]] = {"ours": {}, "background": {}}
        for pid, app, backend_type in rows:
            if app in app_names:
                out["ours"][pid] = cpu_seconds(pid)
            elif backend_type != "client backend":
                out["background"][pid] = cpu_seconds(pid)
        return out

    def maintenance(self, schema: str) -> dict[str, int]:
        """Counters of the server's own work that can stall commits: checkpoints (of the whole
        server), and autovacuum / autoanalyze runs on the tables of ``schema``. Take the
        difference of two readings (``maintenance_delta``)."""
        counts: dict[str, int] = {}
        row = self.conn.execute(
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
        ).fetchone()
        counts["checkpoint"] = int(row[0]) if row else 0
        for table, vacuums, analyzes in self.conn.execute(
            "SELECT relname, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables"
            " WHERE schemaname = %s",
            (schema,),
        ).fetchall():
            counts[f"autovacuum {table}"] = int(vacuums)
            counts[f"autoanalyze {table}"] = int(analyzes)
        return counts

    @staticmethod
    def maintenance_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        """What ran between two ``maintenance`` readings (only what did)."""
        out = {key: value - before.get(key, 0) for key, value in after.items()}
        return {key: value for key, value in out.items() if value > 0}

    @staticmethod
    def delta(
        start: dict[str, dict[int, float]], end: dict[str, dict[int, float]]
    ) -> dict[str, float]:
        """CPU seconds between two snapshots; a process that appeared meanwhile counts whole."""
        out = {}
        for key in ("ours", "background"):
            total = 0.0
            for pid, cpu in end[key].items():
                if cpu == cpu:
                    before = start[key].get(pid, 0.0)
                    total += max(0.0, cpu - (before if before == before else 0.0))
            out[key] = total
        return out


# -- the relay ------------------------------------------------------------------------------------


class RelayConfig:
    """One relay's store, secrets and environment; ``start`` runs it on a fresh port.

    ``store`` is a ``SqliteFile`` (the default, on ``db``) or a ``PgSchema``. ``replica()``
    gives another process's config on the same store, with the same secrets. ``code`` is the
    checkout whose ``service`` the processes import (``PYTHONPATH``; see ``bench/_checkout.py``):
    by default the one the bench runs from.
    """

    def __init__(
        self, db: Path | None, log_path: Path, store: Any = None, code: Path = REPO
    ) -> None:
        if store is None:
            assert db is not None
            store = SqliteFile(db)
        self.store = store
        self.db = db
        self.log_path = log_path
        self.admin_token = secrets.token_urlsafe(24)
        self.secret_key = secrets.token_urlsafe(32)
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.code = code

    def replica(self, log_path: Path) -> RelayConfig:
        other = RelayConfig(self.db, log_path, self.store, self.code)
        other.admin_token, other.secret_key = self.admin_token, self.secret_key
        return other

    def env(self) -> dict[str, str]:
        return {
            **base_env(),
            "PYTHONPATH": str(self.code),
            "RELAY_DATABASE_URL": self.store.url,
            "RELAY_ADMIN_TOKEN": self.admin_token,
            "RELAY_SECRET_KEY": self.secret_key,
            "RELAY_PUBLIC_URL": self.base,
            "RELAY_ALLOW_PRIVATE_TARGETS": "true",
            "RELAY_LOG_LEVEL": "warning",
        }

    def launch(self, procs: Processes, *, worker: bool = True) -> subprocess.Popen[bytes]:
        """Start ``relay serve`` and return at once (``wait_ready`` it); without its delivery
        worker (``RELAY_RUN_WORKER=false``: the intake only) unless ``worker``."""
        cmd = [str(RELAY), "serve", "--host", HOST, "--port", str(self.port)]
        env = {**self.env(), "RELAY_RUN_WORKER": "true" if worker else "false"}
        return procs.start("relay" if worker else "relay (no worker)", cmd, self.log_path, env)

    def wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        wait_ready("relay", f"{self.base}/healthz", proc, self.log_path)

    def start(self, procs: Processes, *, worker: bool = True) -> subprocess.Popen[bytes]:
        """``relay serve`` (with its delivery worker), or the intake only (no worker)."""
        proc = self.launch(procs, worker=worker)
        self.wait_ready(proc)
        return proc

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = http(method, f"{self.base}{path}", body, self.admin_token)
        if not 200 <= status < 300:
            raise RuntimeError(f"{method} {path} -> {status}: {answer}")
        return answer

    def mint_url(self) -> str:
        url: str = self.admin(
            "POST", "/v1/callback-urls", {"provider": "evolink", "reusable": True}
        )["url"]
        if not url.startswith(f"{self.base}/callbacks/evolink/"):
            raise RuntimeError(f"unexpected callback URL {url!r}")
        return url

    def add_subscriber(self, url: str) -> str:
        return str(self.admin("POST", "/v1/subscribers", {"url": url})["id"])

    def set_subscriber_enabled(self, subscriber_id: str, enabled: bool) -> None:
        self.admin("PATCH", f"/v1/subscribers/{subscriber_id}", {"enabled": enabled})

    def pending_left(self) -> bool:
        return bool(self.admin("GET", "/v1/deliveries?status=pending&limit=1")["items"])

    def metric(self, name: str) -> float | None:
        """One sample of ``GET /metrics`` (``name`` with its labels, exactly as exposed), or
        None when the relay does not expose it."""
        request = urllib.request.Request(f"{self.base}/metrics")
        request.add_header("Authorization", f"Bearer {self.admin_token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode()
        except (OSError, urllib.error.HTTPError):
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                with contextlib.suppress(ValueError):
                    return float(line.rsplit(" ", 1)[1])
        return None


def read_db(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows from the relay's SQLite file, opened read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def delivery_status_counts(db: Any) -> dict[str, int]:
    """Deliveries by status, from a SQLite file (a path) or any store handle."""
    store = SqliteFile(db) if isinstance(db, Path) else db
    rows = store.query("SELECT status, count(*) FROM deliveries GROUP BY status")
    return {str(status): int(count) for status, count in rows}


# -- the sink -------------------------------------------------------------------------------------


class Sink:
    """``bench/_sink.py`` in its own process, and its control endpoints (``keep_bodies``: it
    keeps every body for ``bodies()``)."""

    def __init__(
        self, procs: Processes, tmp: Path, status: int = 204, *, keep_bodies: bool = False
    ) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.url = f"{self.base}/hook"
        log_path = tmp / "sink.log"
        self.proc = procs.start(
            "sink",
            [
                str(VENV_PYTHON),
                str(BENCH / "_sink.py"),
                "--port",
                str(self.port),
                "--status",
                str(status),
                *(["--keep-bodies"] if keep_bodies else []),
            ],
            log_path,
            base_env(),
        )
        wait_ready("sink", f"{self.base}/_sink/stats", self.proc, log_path)

    def control(self, what: str, method: str = "GET") -> Any:
        status, answer = http(method, f"{self.base}/_sink/{what}", timeout=60)
        if status != 200:
            raise RuntimeError(f"sink {what}: {status} {answer}")
        return answer

    def reset(self) -> None:
        self.control("reset", "POST")

    def stats(self) -> dict[str, Any]:
        return self.control("stats")  # type: ignore[no-any-return]

    def times(self) -> list[float]:
        return self.control("times")  # type: ignore[no-any-return]

    def receipts(self) -> dict[str, float]:
        """webhook-id -> first receipt time (time.time() in the sink)."""
        return self.control("receipts")  # type: ignore[no-any-return]

    def bodies(self) -> list[str]:
        """Every body received, in arrival order (only with ``keep_bodies``)."""
        return self.control("bodies")  # type: ignore[no-any-return]


# -- load -----------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("wrk is not installed; run `sudo apt-get install -y wrk`")
    print("wrk is not installed: running `apt-get install -y wrk`", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, check=False, timeout=600).returncode != 0:
        print("apt-get install failed; `apt-get update`, then again", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, timeout=600)
        subprocess.run(install, env=env, check=True, timeout=600)
    found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is still missing after apt-get install")
    return found


def run_wrk(wrk: str, url: str, prefix: str, args: Any, duration: float) -> dict[str, Any]:
    """``wrk`` with ``bench/ingest.lua`` (each request its own task id, ``prefix`` first) for
    ``duration`` s, ``args.threads`` threads and ``args.connections`` connections: acked/s and
    latency percentiles (2xx only count as acked)."""
    cmd = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(BENCH / "ingest.lua"),
        url,
        "--",
        prefix,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
            seconds = result["duration_us"] / 1e6
            result["acked_per_s"] = result["acked"] / seconds if seconds else 0.0
            result["p50_ms"] = result["p50_us"] / 1000
            result["p99_ms"] = result["p99_us"] / 1000
            result["max_ms"] = result["max_us"] / 1000
            return result
    raise RuntimeError(
        f"wrk gave no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    )


# -- delivery runs -------------------------------------------------------------------------------


def wait_for_sink(
    sink: Sink, n: int, running: list[subprocess.Popen[bytes]], on_first: Any = None
) -> None:
    """Poll until the sink has ``n`` requests; fail on a stall (no progress for 30 s)."""
    seen, progress_at = 0, time.monotonic()
    deadline = time.monotonic() + max(300.0, n / 100)
    first_called = False
    while time.monotonic() < deadline:  # bounded
        count = sink.stats()["count"]
        if count and not first_called and on_first is not None:
            on_first()
            first_called = True
        if count >= n:
            return
        if count != seen:
            seen, progress_at = count, time.monotonic()
        elif time.monotonic() - progress_at > 30:
            raise RuntimeError(f"deliveries stalled at {count}/{n}")
        for proc in running:
            if proc.poll() is not None:
                raise RuntimeError(f"a relay exited ({proc.returncode}) at {count}/{n}")
        time.sleep(0.05)
    raise RuntimeError(f"the sink received {seen}/{n} before the deadline")


def run_client(
    args_list: list[str],
    budget: float,
    script: str = "_callbacks.py",
    env: dict[str, str] | None = None,
) -> tuple[dict[str, Any], float]:
    """Run ``bench/_callbacks.py`` (or another client ``script`` of ``bench/`` that prints one
    line of JSON; ``env`` added to its environment); its JSON summary and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [str(VENV_PYTHON), str(BENCH / script), *args_list],
        cwd=REPO,
        env={**base_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=budget,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"{script} {args_list[0]} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1]), cpu


def rates_from_times(times: list[float]) -> dict[str, float]:
    """N / (last - first) and the rate over the middle 80 % of arrivals."""
    times = sorted(times)
    n = len(times)
    span = times[-1] - times[0] if n > 1 else float("nan")
    lo, hi = int(0.1 * n), int(0.9 * n) - 1
    middle = (hi - lo) / (times[hi] - times[lo]) if hi > lo and times[hi] > times[lo] else span
    return {"span_s": span, "rate": n / span if span else float("nan"), "middle_rate": middle}


# -- numbers --------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of the same name added up)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            label = "main" if task.name == str(pid) else name
            out[label] = out.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of a live process in MiB: ``rss`` now (VmRSS) and ``peak`` (VmHWM, the
    high-water mark since it started); nan when it is gone."""
    out = {"rss": math.nan, "peak": math.nan}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss" if key == "VmRSS" else "peak"] = int(value.split()[0]) / 1024
    return out


def write_json(path: str | None, data: Any) -> None:
    """The figures of a run for ``bench/run`` (``--json PATH``); nothing without a path."""
    if path:
        Path(path).write_text(json.dumps(data, indent=1, default=str, allow_nan=True))


def machine_busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (values[0] + values[1] + values[2] + values[5] + values[6]) / TICK


def version_of(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine_line() -> str:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = version_of(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return f"commit {commit}; {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def find_py_spy() -> str | None:
    candidate = VENV / "bin" / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


# -- profiles (py-spy) ----------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_STDLIB = re.compile(r"/lib/python3\.\d+/")


def _short_file(path: str) -> str:
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1]
    match = _STDLIB.search(path)
    if match:
        return path[match.end() :]
    if path.startswith(str(REPO) + "/"):
        return path[len(str(REPO)) + 1 :]
    return path


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['func']} ({_short_file(match['file'])})"


def start_py_spy(
    procs: Processes, pid: int, out: Path, log_path: Path, *, gil: bool, rate: int = 250
) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` in raw (collapsed) format until ``stop_py_spy``."""
    py_spy = find_py_spy()
    if py_spy is None:
        raise RuntimeError("py-spy not found: `.venv/bin/pip install py-spy`")
    cmd = [
        py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
        "--threads", "--function", "--duration", "600", "--output", str(out),
    ]  # fmt: skip
    if gil:
        cmd.append("--gil")
    proc = procs.start("py-spy", cmd, log_path, dict(os.environ))
    time.sleep(0.3)  # let it attach
    return proc


def stop_py_spy(procs: Processes, proc: subprocess.Popen[bytes], out: Path) -> None:
    """SIGINT makes py-spy write its output and exit."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    procs.stop(proc, timeout=5)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no profile to {out}")


def analyse_collapsed(collapsed: Path) -> dict[str, Any]:
    """Own and inclusive sample counts per function, and samples per thread."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    stacks: list[tuple[list[str], int]] = []
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            thread = frames[0].split(": ", 1)[-1].strip("\"'")
            frames = frames[1:]
        if not frames:
            continue
        names = [frame_name(frame) for frame in frames]
        total += count
        threads[thread] += count
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
        stacks.append((names, count))
    return {
        "total": total,
        "own": own,
        "inclusive": inclusive,
        "threads": threads,
        "stacks": stacks,
    }


def step_share(data: dict[str, Any], prefix: str) -> int:
    """Samples whose stack passes through a function whose name starts with ``prefix``
    (each stack counted once, however many such frames it holds)."""
    return sum(count for names, count in data["stacks"] if any(n.startswith(prefix) for n in names))


def profile_tables(
    data: dict[str, Any], top: int = 15, steps: list[str] | None = None
) -> list[str]:
    total = data["total"] or 1

    def pct(count: int) -> str:
        return f"{100 * count / total:.1f} %"

    lines = [
        f"Samples: {data['total']:,}; by thread: "
        + ", ".join(f"{name} {pct(n)}" for name, n in data["threads"].most_common(6)),
        "",
        f"Top {top} functions by own time:",
        "",
        "| # | function (file) | own | share |",
        "|---:|---|---:|---:|",
    ]
    for rank, (name, count) in enumerate(data["own"].most_common(top), start=1):
        lines.append(f"| {rank} | `{name}` | {count:,} | {pct(count)} |")
    if steps:
        lines += [
            "",
            "Inclusive time of the steps of the delivery path (nested, so shares overlap):",
            "",
            "| function (file) | inclusive share |",
            "|---|---:|",
        ]
        for prefix in steps:
            count = step_share(data, prefix)
            lines.append(f"| `{prefix}` | {pct(count)} |")
    return lines


def wait_quiet(say: Any, max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until the machine's busy CPU over 1 s is below
    ``threshold`` cores; other users' benchmarks would distort the figures. The last reading."""
    deadline = time.monotonic() + max_wait
    warned = False
    while True:  # bounded by the deadline
        before, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(1.0)
        busy = (machine_busy_seconds() - before) / (time.monotonic() - t0)
        if busy < threshold or time.monotonic() >= deadline:
            if busy >= threshold:
                say(f"machine still busy ({busy:.2f} cores used by others); going on anyway")
            return busy
        if not warned:
            say(f"machine busy ({busy:.2f} cores used by others); waiting up to {max_wait:g} s")
            warned = True
