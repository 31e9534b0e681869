"""SQLite under a running relay: another process holding the write lock, the file deleted.

Statements of the SQLite store run on the event loop, so a lock held by another process (a
CLI command that writes, a backup) must never be waited for there; and a database deleted
under the relay must stop it from acknowledging callbacks into a file that is gone.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from service.store.sqlite import LOCK_WAIT_SECONDS, sqlite_path
from tests.conftest import EVOLINK_COMPLETED, RelayServer

LOCKER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # the write lock, as a writing CLI command holds it
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    print("released", flush=True)
    """
)


class Locker:
    """Another process holding the relay database's write lock until ``release()``."""

    def __init__(self, path: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LOCKER, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdout.readline() == "locked\n"

    def release(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "released\n"
        self.process.wait(timeout=10)

    def kill(self) -> None:
        """Make sure the process is gone and its pipes closed (a no-op once released)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)  # waits, then closes stdin and stdout


def payload(task: str) -> dict[str, object]:
    return {**EVOLINK_COMPLETED, "id": task}


def timed_post(url: str, body: dict[str, object], out: list[tuple[int, str, float]]) -> None:
    started = time.monotonic()
    response = httpx.post(url, json=body, timeout=30)
    code = response.json().get("error", {}).get("code", "") if response.status_code >= 400 else ""
    out.append((response.status_code, code, time.monotonic() - started))


@pytest.mark.slow
def test_a_lock_held_by_another_process_never_blocks_the_loop(relay_server: RelayServer) -> None:
    """While another process holds the write lock, /healthz answers at once and a callback
    gets a quick 503; once the lock is released, callbacks are accepted again."""
    url = relay_server.mint(reusable=True)
    path = sqlite_path(relay_server.settings.database_url)
    assert relay_server.post_callback(url, payload("task-before")).status_code == 200
    locker = Locker(path)
    try:
        answers: list[tuple[int, str, float]] = []
        poster = threading.Thread(target=timed_post, args=(url, payload("task-locked"), answers))
        poster.start()
        health: list[float] = []
        for _ in range(20):  # for 2 s: longer than the callback may wait
            started = time.monotonic()
            assert relay_server.client.get("/healthz").status_code == 200
            health.append(time.monotonic() - started)
            time.sleep(0.1)
        poster.join(timeout=30)
        assert max(health) < 0.1 * 3, f"/healthz took up to {max(health):.3f} s"
        ((status, code, took),) = answers
        assert (status, code) == (503, "storage_unavailable")
        assert LOCK_WAIT_SECONDS * 0.9 < took < LOCK_WAIT_SECONDS + 0.5, took
        ready = relay_server.client.get("/readyz")
        assert ready.status_code == 503 and "locked" in ready.text, ready.text
        locker.release()
    finally:
        locker.kill()
    assert relay_server.post_callback(url, payload("task-after")).status_code == 200
    assert relay_server.client.get("/readyz").status_code == 200


@pytest.mark.slow
def test_a_callback_waits_for_a_short_lock_then_succeeds(relay_server: RelayServer) -> None:
    """A lock released within the wait lets the waiting callback through: 200, not 503."""
    url = relay_server.mint(reusable=True)
    locker = Locker(sqlite_path(relay_server.settings.database_url))
    try:
        answers: list[tuple[int, str, float]] = []
        poster = threading.Thread(target=timed_post, args=(url, payload("task-short"), answers))
        poster.start()
        time.sleep(LOCK_WAIT_SECONDS / 3)
        started = time.monotonic()
        assert relay_server.client.get("/healthz").status_code == 200
        assert time.monotonic() - started < 0.3
        locker.release()
        poster.join(timeout=30)
    finally:
        locker.kill()
    ((status, _, took),) = answers
    assert status == 200 and took >= LOCK_WAIT_SECONDS / 3, answers
    assert [e["data"]["task_id"] for e in relay_server.events()] == ["task-short"]


@pytest.mark.slow
def test_a_deleted_database_is_noticed(relay_server: RelayServer) -> None:
    """Once the database files are deleted under the relay, callbacks get 503 within a second
    (never 200 again), /readyz says why, and the log says what happened."""
    url = relay_server.mint(reusable=True)
    assert relay_server.post_callback(url, payload("task-kept")).status_code == 200
    path = Path(sqlite_path(relay_server.settings.database_url))
    with capture_logs() as logs:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        deleted = time.monotonic()
        answers = []
        for n in range(30):  # 1.5 s of callbacks, every 50 ms
            response = relay_server.post_callback(url, payload(f"task-gone-{n}"))
            answers.append((time.monotonic() - deleted, response.status_code))
            if response.status_code == 503:
                assert response.json()["error"]["code"] == "storage_unavailable"
            time.sleep(0.05)
        ready = relay_server.client.get("/readyz")
    first_503 = next(at for at, status in answers if status == 503)
    assert first_503 < 1.5, answers
    assert all(status == 503 for at, status in answers if at >= first_503), answers
    assert ready.status_code == 503
    assert "was removed" in ready.json()["error"]["message"]
    lost = [entry for entry in logs if entry["event"] == "database_file_lost"]
    assert len(lost) == 1 and lost[0]["what"] == "removed" and lost[0]["path"] == str(path)
    assert relay_server.client.get("/healthz").status_code == 200  # the process still answers


@pytest.mark.slow
def test_a_replaced_database_is_noticed_by_readiness(
    relay_server: RelayServer, tmp_path: Path
) -> None:
    """A different file moved to the database's path is noticed at the next /readyz."""
    path = Path(sqlite_path(relay_server.settings.database_url))
    url = relay_server.mint(reusable=True)
    assert relay_server.client.get("/readyz").status_code == 200
    other = tmp_path / "other.db"
    other.write_bytes(path.read_bytes())
    other.replace(path)
    ready = relay_server.client.get("/readyz")
    assert ready.status_code == 503
    assert "replaced by another file" in ready.json()["error"]["message"]
    response = relay_server.post_callback(url, payload("task-replaced"))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
