"""Storage outages only SQLite has: another process holding the write lock, the file deleted.

Both run a real ``relay serve`` process on a SQLite file. The lock is taken by another process
with ``BEGIN IMMEDIATE`` (what a writing ``relay`` command or a backup holds) while providers
keep posting and ``/healthz`` is asked every 50 ms: the event loop must never wait on the lock.
The deleted database is the three files removed under the relay: from within a second every
callback must be refused (never acknowledged into a file a restart cannot see), ``/readyz``
must say why, and the log must say what happened.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from service.store.sqlite import LOCK_WAIT_SECONDS
from tests.relay_process import RelayProcess
from tests.reliability import Context, Row, free_port
from tests.reliability._harness import PROVIDER_ENV, Providers, mint_paths, readyz, wait_until
from tests.reliability.outages import SECTION

LOCKER = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "conn.execute('BEGIN IMMEDIATE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.readline()\n"
    "conn.execute('COMMIT')\n"
)
#: Longest /healthz answer allowed (it takes a few ms; generous for a loaded 2-core machine).
HEALTH_LIMIT_SECONDS = 0.2
#: (started, seconds, status, error code) of one callback.
Answer = tuple[float, float, int, str | None]


def _relay(work: Path) -> tuple[RelayProcess, Path]:
    database = work / "relay.db"
    relay = RelayProcess(
        work, free_port(), RELAY_DATABASE_URL=f"sqlite:///{database}", **PROVIDER_ENV
    )
    relay.log_path = work / "relay.log"
    return relay.start(), database


def _post(client: httpx.Client, base: str, paths: dict[str, str], providers: Providers) -> Answer:
    callback = providers.next()
    started = time.monotonic()
    answer = client.post(
        base + paths[callback.provider], content=callback.body, headers=callback.headers
    )
    code = answer.json().get("error", {}).get("code") if answer.status_code >= 400 else None
    return started, time.monotonic() - started, answer.status_code, code


def _stream(
    base: str, paths: dict[str, str], stop: threading.Event, out: list[Answer]
) -> threading.Thread:
    def send() -> None:
        providers = Providers(pad=1024)
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                out.append(_post(client, base, paths, providers))
                time.sleep(0.02)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def sqlite_locked_by_another_process(ctx: Context) -> list[Row]:
    """Another process holds the write lock for a while under a relay taking callbacks."""
    held_for = ctx.pick(2.0, 5.0)
    relay, database = _relay(ctx.scratch("locked"))
    try:
        paths = mint_paths(relay)
        stop, answers = threading.Event(), list[Answer]()
        threads = [_stream(relay.base, paths, stop, answers) for _ in range(3)]
        time.sleep(0.3)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        locked_at = time.monotonic()
        health: list[float] = []
        ready = (0, "")
        with httpx.Client(timeout=30) as client:
            while time.monotonic() - locked_at < held_for:
                started = time.monotonic()
                client.get(f"{relay.base}/healthz").raise_for_status()
                health.append(time.monotonic() - started)
                if not ready[0] and time.monotonic() - locked_at > held_for / 2:
                    ready = readyz(relay.base)
                time.sleep(0.05)
        assert locker.stdin is not None
        releasing_at = time.monotonic()  # from here on the relay may take the lock again
        locker.communicate("\n", timeout=10)  # releases the lock; closes the pipes
        released_at = time.monotonic()
        # A callback sent after the release is answered 200 again.
        back = wait_until(
            lambda: bool(answers) and answers[-1][0] > released_at and answers[-1][2] == 200,
            timeout=10,
            every=0.02,
        )
        back_after = time.monotonic() - released_at
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        relay.stop()
    during = [a for a in answers if locked_at < a[0] and a[0] + a[1] < releasing_at]
    refused = [a for a in during if (a[2], a[3]) == (503, "storage_unavailable")]
    acked = [a for a in during if a[2] == 200]
    slowest = max((a[1] for a in during), default=0.0)
    log = (relay.log_path or Path("/dev/null")).read_text(errors="replace")
    figures = {
        "lock held (s)": round(releasing_at - locked_at, 1),
        "callbacks answered while locked": len(during),
        "answered 503 storage_unavailable": len(refused),
        "2xx while locked": len(acked),
        f"longest callback answer (s; waits up to {LOCK_WAIT_SECONDS:g})": round(slowest, 2),
        "/healthz probes": len(health),
        "/healthz p50 / max (ms)": f"{statistics.median(health) * 1000:.1f}"
        f" / {max(health) * 1000:.1f}",
        "/readyz while locked": f"{ready[0]}: {ready[1]}",
        "accepted again after release (s)": round(back_after, 2) if back else "never",
        "logged store_locked_by_another_process": "store_locked_by_another_process" in log,
    }
    row = Row(
        SECTION,
        "SQLite: another process holds the write lock",
        figures,
        f"a `relay serve` process takes callbacks from three providers (a callback every 20 ms "
        f"each) when another process opens the database and runs BEGIN IMMEDIATE (as a writing "
        f"`relay` command or a backup does), holds it {held_for:g} s, then commits; /healthz is "
        f"asked every 50 ms meanwhile and /readyz once.",
    )
    row.expect(max(health) < HEALTH_LIMIT_SECONDS, f"/healthz took {max(health):.3f} s")
    row.expect(bool(refused), "no callback was answered 503 while the lock was held")
    row.expect(not acked, f"{len(acked)} callbacks acknowledged while another held the lock")
    row.expect(len(refused) == len(during), "a callback got something else than 503 or 200")
    row.expect(
        slowest < LOCK_WAIT_SECONDS + 0.5,
        f"a callback waited {slowest:.2f} s",
    )
    row.expect(ready[0] == 503 and "locked" in ready[1], f"/readyz said {ready}")
    row.expect(back, "callbacks were not accepted again after the lock was released")
    return [row]


def sqlite_database_deleted(ctx: Context) -> list[Row]:
    """relay.db, -wal and -shm deleted under a relay taking callbacks."""
    relay, database = _relay(ctx.scratch("deleted"))
    try:
        paths = mint_paths(relay)
        stop, answers = threading.Event(), list[Answer]()
        threads = [_stream(relay.base, paths, stop, answers) for _ in range(3)]
        time.sleep(0.5)
        deleted_at = time.monotonic()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        time.sleep(ctx.pick(2.0, 5.0))
        ready = readyz(relay.base)
        health = httpx.get(f"{relay.base}/healthz", timeout=10).status_code
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        relay.stop()
    after = [a for a in answers if a[0] > deleted_at]
    refused = [a for a in after if (a[2], a[3]) == (503, "storage_unavailable")]
    first_refused = min((a[0] for a in refused), default=None)
    noticed = None if first_refused is None else first_refused - deleted_at
    acked = [a for a in after if a[2] == 200]
    acked_after_notice = [a for a in acked if first_refused is not None and a[0] > first_refused]
    acked_before_notice = [a for a in acked if a not in acked_after_notice]
    log = (relay.log_path or Path("/dev/null")).read_text(errors="replace")
    figures = {
        "callbacks after the deletion": len(after),
        "acked before it was noticed (into the deleted file)": len(acked_before_notice),
        "noticed after (s)": "never" if noticed is None else round(noticed, 2),
        "answered 503 storage_unavailable": len(refused),
        "acked after it was noticed": len(acked_after_notice),
        "/readyz": f"{ready[0]}: {ready[1]}",
        "/healthz": health,
        "logged database_file_lost": "database_file_lost" in log,
    }
    row = Row(
        SECTION,
        "SQLite: database files deleted under the relay",
        figures,
        "a `relay serve` process takes callbacks from three providers (every 20 ms each) when "
        "relay.db, relay.db-wal and relay.db-shm are deleted; callbacks go on for a while, "
        "then /readyz and /healthz are asked and the relay's log is read.",
    )
    row.expect(noticed is not None and noticed < 1.5, f"noticed after {noticed} s")
    row.expect(not acked_after_notice, f"{len(acked_after_notice)} acked after the 503s began")
    row.expect(ready[0] == 503 and "removed" in ready[1], f"/readyz said {ready}")
    row.expect(health == 200, f"/healthz answered {health}")
    row.expect("database_file_lost" in log, "the log does not say the file was lost")
    return [row]


SCENARIOS = [sqlite_locked_by_another_process, sqlite_database_deleted]
