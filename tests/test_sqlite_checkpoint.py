"""The SQLite store's background WAL checkpoints (``service.store.sqlite_checkpoint``).

A real database file in WAL mode, a writer connection as the store has it (automatic
checkpoints off), and a ``FakeClock`` for the checkpointer's pacing.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.store.sqlite_checkpoint import Checkpointer
from tests.fakes import FakeClock


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    yield conn
    conn.close()


def _write(conn: sqlite3.Connection, rows: int = 20) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t (body) VALUES (?)", [(b"x" * 1000,) for _ in range(rows)])
    conn.execute("COMMIT")


def _wal_state(db: Path) -> tuple[int, int]:
    """(frames in the WAL, frames copied to the database) from the WAL index (the -shm file)."""
    header = Path(f"{db}-shm").read_bytes()[:100]
    return struct.unpack_from("=I", header, 16)[0], struct.unpack_from("=I", header, 96)[0]


def _wait_idle(checkpointer: Checkpointer) -> None:
    deadline = time.monotonic() + 10
    while checkpointer.running:
        assert time.monotonic() < deadline, "the checkpoint did not finish"
        time.sleep(0.005)


def test_a_checkpoint_starts_only_when_due_and_none_is_running(
    writer: sqlite3.Connection, tmp_path: Path
) -> None:
    clock = FakeClock()
    checkpointer = Checkpointer(str(tmp_path / "db.sqlite"), clock=clock, interval=0.25)
    try:
        assert checkpointer.due()
        _write(writer)
        checkpointer.after_commit()
        started = checkpointer.last_started
        _wait_idle(checkpointer)
        clock.advance(0.1)
        assert not checkpointer.due()
        checkpointer.after_commit()
        assert checkpointer.last_started == started  # too soon: nothing started
        clock.advance(0.15)
        assert checkpointer.due()
        checkpointer.running = True  # as while one is in progress
        assert not checkpointer.due()
        checkpointer.running = False
    finally:
        checkpointer.close()


def test_the_background_checkpoint_copies_the_wal_without_the_writer(
    writer: sqlite3.Connection, tmp_path: Path
) -> None:
    db = tmp_path / "db.sqlite"
    checkpointer = Checkpointer(str(db), clock=FakeClock())
    try:
        _write(writer)
        frames, copied = _wal_state(db)
        assert frames > 0
        assert copied == 0  # the writer's own automatic checkpoint is off
        checkpointer.after_commit()
        _wait_idle(checkpointer)
        assert _wal_state(db) == (frames, frames)
        assert not checkpointer.writer_should_finish  # a small WAL: the writer is left alone
    finally:
        checkpointer.close()


def test_a_wal_past_the_limit_is_finished_by_the_writer_and_restarts(
    writer: sqlite3.Connection, tmp_path: Path
) -> None:
    db = tmp_path / "db.sqlite"
    clock = FakeClock()
    checkpointer = Checkpointer(str(db), clock=clock, limit_frames=10)
    try:
        for _ in range(3):
            _write(writer)
        checkpointer.after_commit()
        _wait_idle(checkpointer)
        assert checkpointer.writer_should_finish
        _write(writer)  # committed after the background checkpoint began: not copied yet
        frames, copied = _wal_state(db)
        assert copied < frames
        checkpointer.finish_in_writer(writer)
        assert not checkpointer.writer_should_finish
        assert _wal_state(db) == (frames, frames)
        _write(writer, rows=1)  # every frame copied: this write starts the WAL over
        assert _wal_state(db)[0] < frames
        checkpointer.finish_in_writer(writer)  # nothing asked: does nothing
        assert _wal_state(db)[1] == 0
    finally:
        checkpointer.close()


def test_a_failing_checkpoint_is_logged_not_raised(tmp_path: Path) -> None:
    checkpointer = Checkpointer(str(tmp_path / "missing.sqlite"), clock=FakeClock())
    try:
        checkpointer.after_commit()  # the file does not exist: mode=rw refuses to create it
        _wait_idle(checkpointer)
        assert not (tmp_path / "missing.sqlite").exists()
        assert not checkpointer.writer_should_finish
    finally:
        checkpointer.close()
