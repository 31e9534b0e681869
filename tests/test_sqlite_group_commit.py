"""SQLite group commit (``service.store.sqlite_commit.GroupCommit``), on its own.

A real SQLite file and a real event loop, no relay: operations queued in one loop iteration
share one transaction and one COMMIT; a failing operation fails alone; answers come after the
commit, in the order the operations were queued; another connection's write lock is waited
for, by a fake clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from service.errors import StorageUnavailable
from service.store.sqlite_commit import GroupCommit
from tests.fakes import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=0")  # as the store's: the loop never waits on a lock
    return conn


class Journal:
    """What happened, in order: operations run, commits, answers."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        #: The operations each commit made durable (names, in order).
        self.commits: list[list[str]] = []
        self._since_commit: list[str] = []
        #: While set, each commit announces itself (``arrived``) on the committer thread and
        #: waits there until the test lets it go on (``go_on``).
        self.holding = False
        self.arrived = threading.Semaphore(0)
        self.go_on = threading.Semaphore(0)
        self.fail_commit: BaseException | None = None

    def commit(self, conn: sqlite3.Connection) -> None:
        """The ``commit`` hook: runs on the committer thread."""
        if self.holding:
            self.arrived.release()
            assert self.go_on.acquire(timeout=10)
        batch, self._since_commit = self._since_commit, []
        if self.fail_commit is not None:
            exc, self.fail_commit = self.fail_commit, None
            raise exc
        conn.execute("COMMIT")
        self.commits.append(batch)
        self.entries.append(f"commit {','.join(batch)}")

    async def commit_arrived(self) -> None:
        """Wait until a held commit is on the committer thread."""
        assert await asyncio.to_thread(self.arrived.acquire, True, 10)

    def let_go(self) -> None:
        """No more holding; let a held commit go on."""
        self.holding = False
        self.go_on.release()

    def insert(self, name: str, *, fail: BaseException | None = None) -> Callable[..., str]:
        """An operation that inserts ``name`` (then raises ``fail`` if given)."""

        def op(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO items (name) VALUES (?)", (name,))
            self.entries.append(f"ran {name}")
            self._since_commit.append(name)
            if fail is not None:
                raise fail
            return name

        return op

    def answered(self, future: asyncio.Future[Any], name: str) -> None:
        future.add_done_callback(lambda _: self.entries.append(f"answered {name}"))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    db = tmp_path / "items.db"
    conn = connect(db)
    conn.execute("CREATE TABLE items (name TEXT PRIMARY KEY)")
    conn.close()
    return db


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def commits(path: Path, journal: Journal, clock: FakeClock) -> AsyncIterator[GroupCommit]:
    conn = connect(path)
    group = GroupCommit(
        conn, asyncio.get_running_loop(), commit=journal.commit, clock=clock, lock_retry=0.0
    )
    yield group
    journal.let_go()
    await group.close()
    conn.close()


def stored(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT name FROM items ORDER BY name")]
    finally:
        conn.close()


async def loop_turns(n: int = 5) -> None:
    """Let the loop run ``n`` iterations (no time passes: nothing waits on a timer)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_operations_queued_together_share_one_commit(
    commits: GroupCommit, journal: Journal, path: Path
) -> None:
    futures = [commits.submit(journal.insert(name)) for name in "abcde"]
    assert await asyncio.gather(*futures) == list("abcde")
    assert journal.commits == [list("abcde")]
    assert stored(path) == list("abcde")


async def test_a_batch_holds_at_most_max_batch_operations(
    path: Path, journal: Journal, clock: FakeClock
) -> None:
    conn = connect(path)
    group = GroupCommit(
        conn, asyncio.get_running_loop(), commit=journal.commit, clock=clock, max_batch=2
    )
    try:
        await asyncio.gather(*(group.submit(journal.insert(name)) for name in "abcde"))
    finally:
        await group.close()
        conn.close()
    assert journal.commits == [["a", "b"], ["c", "d"], ["e"]]


async def test_operations_queued_during_a_commit_form_the_next_batch(
    commits: GroupCommit, journal: Journal
) -> None:
    journal.holding = True
    first = [commits.submit(journal.insert(name)) for name in "ab"]
    await journal.commit_arrived()  # a and b are being committed
    second = [commits.submit(journal.insert(name)) for name in "cd"]
    await loop_turns()
    assert not any(future.done() for future in first + second)
    assert journal.entries == ["ran a", "ran b"]  # c and d wait: one commit at a time
    journal.let_go()
    await asyncio.gather(*first, *second)
    assert journal.commits == [["a", "b"], ["c", "d"]]


async def test_answers_come_after_the_commit_in_the_order_queued(
    commits: GroupCommit, journal: Journal
) -> None:
    journal.holding = True
    first = {name: commits.submit(journal.insert(name)) for name in "abc"}
    for name, future in first.items():
        journal.answered(future, name)
    await journal.commit_arrived()
    answered_when_d_ran: list[bool] = []

    def d(conn: sqlite3.Connection) -> str:
        answered_when_d_ran.append(first["a"].done())
        return journal.insert("d")(conn)

    second = {"d": commits.submit(d), "e": commits.submit(journal.insert("e"))}
    for name, future in second.items():
        journal.answered(future, name)
    await loop_turns()
    assert journal.entries == ["ran a", "ran b", "ran c"]  # nothing answered before its commit
    journal.go_on.release()  # a,b,c commit; d,e's commit is held in turn
    await asyncio.gather(*first.values())
    await journal.commit_arrived()
    await loop_turns()
    assert not any(future.done() for future in second.values())
    # The next batch's statements ran before this one was answered: its fsync overlaps with
    # sending the answers.
    assert answered_when_d_ran == [False]
    journal.let_go()
    await asyncio.gather(*second.values())
    assert journal.entries == [
        "ran a",
        "ran b",
        "ran c",
        "commit a,b,c",
        "ran d",
        "ran e",
        "answered a",
        "answered b",
        "answered c",
        "commit d,e",
        "answered d",
        "answered e",
    ]


async def test_a_failing_operation_fails_alone_and_undoes_only_its_own_writes(
    commits: GroupCommit, journal: Journal, path: Path
) -> None:
    futures = [
        commits.submit(journal.insert("a")),
        commits.submit(journal.insert("b", fail=ValueError("b is wrong"))),
        commits.submit(journal.insert("c")),
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == "a" and results[2] == "c"
    assert isinstance(results[1], ValueError) and str(results[1]) == "b is wrong"
    assert stored(path) == ["a", "c"]
    assert len(journal.commits) == 1


async def test_a_constraint_violation_fails_only_its_operation(
    commits: GroupCommit, journal: Journal, path: Path
) -> None:
    await commits.submit(journal.insert("a"))
    futures = [commits.submit(journal.insert("b")), commits.submit(journal.insert("a"))]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == "b"
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert stored(path) == ["a", "b"]


async def test_sqlite_failing_inside_a_batch_fails_the_whole_batch(
    commits: GroupCommit, journal: Journal, path: Path
) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT * FROM no_such_table")  # OperationalError: SQLite's own

    futures = [commits.submit(journal.insert("a")), commits.submit(broken)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(result, StorageUnavailable) for result in results), results
    assert stored(path) == []
    assert await commits.submit(journal.insert("b")) == "b"  # and it serves on
    assert stored(path) == ["b"]


async def test_a_failed_commit_fails_its_batch_and_the_next_one_commits(
    commits: GroupCommit, journal: Journal, path: Path
) -> None:
    journal.fail_commit = sqlite3.OperationalError("disk I/O error")
    futures = [commits.submit(journal.insert(name)) for name in "ab"]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert [str(result) for result in results] == ["The store could not commit: disk I/O error"] * 2
    assert all(isinstance(result, StorageUnavailable) for result in results)
    assert stored(path) == []
    assert await commits.submit(journal.insert("c")) == "c"
    assert stored(path) == ["c"]


async def test_a_refusal_fails_every_operation_with_its_reason(
    path: Path, journal: Journal
) -> None:
    reason: list[str | None] = [None]
    conn = connect(path)
    group = GroupCommit(conn, asyncio.get_running_loop(), refuse=lambda: reason[0])
    try:
        assert await group.submit(journal.insert("a")) == "a"
        reason[0] = "the file is gone"
        with pytest.raises(StorageUnavailable, match="the file is gone"):
            await group.submit(journal.insert("b"))
    finally:
        await group.close()
        conn.close()
    assert stored(path) == ["a"]


async def test_begin_runs_first_in_every_batch(path: Path, journal: Journal) -> None:
    conn = connect(path)
    group = GroupCommit(
        conn, asyncio.get_running_loop(), begin=lambda conn: journal.entries.append("begin")
    )
    try:
        await asyncio.gather(*(group.submit(journal.insert(name)) for name in "ab"))
        await group.submit(journal.insert("c"))
    finally:
        await group.close()
        conn.close()
    assert journal.entries == ["begin", "ran a", "ran b", "begin", "ran c"]


async def test_another_connections_lock_is_waited_for_then_the_batch_runs(
    commits: GroupCommit, journal: Journal, path: Path, clock: FakeClock
) -> None:
    other = connect(path)
    other.execute("BEGIN IMMEDIATE")
    future = commits.submit(journal.insert("a"))
    await loop_turns()
    assert commits.waiting_for_lock and not future.done()
    clock.advance(0.5)  # less than lock_wait (1 s)
    await loop_turns()
    assert not future.done()
    other.execute("ROLLBACK")
    other.close()
    assert await future == "a"
    assert not commits.waiting_for_lock
    assert stored(path) == ["a"]


async def test_an_operation_that_waited_too_long_for_the_lock_fails(
    commits: GroupCommit, journal: Journal, path: Path, clock: FakeClock
) -> None:
    other = connect(path)
    other.execute("BEGIN IMMEDIATE")
    try:
        early = commits.submit(journal.insert("a"))
        await loop_turns()
        clock.advance(0.6)
        late = commits.submit(journal.insert("b"))
        await loop_turns()
        clock.advance(0.4)  # a has waited 1 s, b 0.4 s
        with pytest.raises(StorageUnavailable, match="locked by another process"):
            await early
        assert not late.done()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await late == "b"
    assert stored(path) == ["b"]


async def test_close_answers_everything_queued(
    path: Path, journal: Journal, clock: FakeClock
) -> None:
    conn = connect(path)
    group = GroupCommit(conn, asyncio.get_running_loop(), commit=journal.commit, clock=clock)
    futures = [group.submit(journal.insert(name)) for name in "abc"]
    await group.close()
    conn.close()
    assert all(future.done() for future in futures)
    assert [future.result() for future in futures] == list("abc")
    assert stored(path) == list("abc")


async def test_a_caller_that_gave_up_does_not_stop_the_others(
    commits: GroupCommit, journal: Journal, path: Path
) -> None:
    gone = commits.submit(journal.insert("a"))
    kept = commits.submit(journal.insert("b"))
    gone.cancel()
    assert await kept == "b"
    assert stored(path) == ["a", "b"]  # it ran: the caller only stopped waiting


async def test_after_commit_runs_on_the_loop_once_per_commit_failed_or_not(
    path: Path, journal: Journal
) -> None:
    loop_thread: list[bool] = []
    main = threading.get_ident()
    conn = connect(path)
    group = GroupCommit(
        conn,
        asyncio.get_running_loop(),
        commit=journal.commit,
        after_commit=lambda: loop_thread.append(threading.get_ident() == main),
    )
    try:
        await asyncio.gather(*(group.submit(journal.insert(name)) for name in "ab"))
        journal.fail_commit = sqlite3.OperationalError("disk I/O error")
        with pytest.raises(StorageUnavailable):
            await group.submit(journal.insert("c"))
    finally:
        await group.close()
        conn.close()
    assert loop_thread == [True, True]
