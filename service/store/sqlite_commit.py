"""SQLite group commit: many operations, one transaction, one fsync, no answer before it.

An operation is a function of the connection. It is queued, and the queue is run once per loop
iteration, on the event loop's own thread, as one batch: all its operations in one transaction
(a failing one undoes only its own writes). The batch's one COMMIT (the fsync) runs on a helper
thread while the loop goes on, and only then is every operation of the batch answered, in the
order they were queued. Under load many callbacks share one commit, yet none is answered before
its commit.

Why not a database thread: each statement releases and re-takes the GIL, and with a busy event
loop every re-take waits on the GIL switch interval; measured here, that capped intake at about
1,800 callbacks/s while both the loop and the disk were half idle. SQLite statements on indexed
rows take microseconds, so running them inline costs the loop less than handing them off; the
commit waits on the disk, so it alone goes to a thread (one hand-off per batch).

Since statements run on the loop, nothing here may wait on another process's lock: the
connection's busy timeout must be 0. When another process (a CLI command that writes, a backup)
holds the write lock, the batch goes back to the queue and is tried again a few milliseconds
later, while the loop serves on; an operation that could not start within ``lock_wait`` seconds
fails with ``StorageUnavailable`` (503: the provider retries).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from service.clock import Clock
from service.errors import StorageUnavailable

T = TypeVar("T")
log = structlog.get_logger("service.store")

#: Most operations folded into one transaction; bounds the latency a batch adds.
MAX_BATCH = 512
#: How long an operation waits for another process (the CLI) to release the write lock, and
#: how often the lock is tried meanwhile (off the loop's critical path: a timer).
LOCK_WAIT_SECONDS = 1.0
LOCK_RETRY_SECONDS = 0.005

Operation = Callable[[sqlite3.Connection], Any]


class _Op:
    __slots__ = ("error", "fn", "future", "queued_at", "result")

    def __init__(self, fn: Operation, future: asyncio.Future[Any], now: float) -> None:
        self.fn = fn
        self.future = future
        self.queued_at = now
        self.result: Any = None
        self.error: BaseException | None = None

    def settle(self) -> None:
        if self.future.done():  # the caller gave up (cancelled); nothing to tell it
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.result)


#: What ``GroupCommit._run_batch`` did with a batch.
_RUN, _BUSY, _FAILED = "run", "busy", "failed"


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def _nothing(conn: sqlite3.Connection) -> None:
    pass


def _never() -> str | None:
    return None


def _no_hook() -> None:
    pass


class GroupCommit:
    """Runs operations on ``conn`` in batches on ``loop``, one commit per batch.

    ``begin(conn)`` runs first inside every batch's transaction (the store checks there what
    other processes changed). ``refuse()``, asked before each batch, returns why no operation
    may run any more (every operation of the batch then fails with it), or None. ``commit``
    runs on the committer thread (``COMMIT``, and what must follow it on that thread; a test
    may watch it); ``after_commit()`` on the loop once it ended, committed or not. ``clock`` is
    monotonic: it measures how long an operation waited for another process's lock.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        *,
        begin: Callable[[sqlite3.Connection], None] = _nothing,
        refuse: Callable[[], str | None] = _never,
        commit: Callable[[sqlite3.Connection], None] = _commit,
        after_commit: Callable[[], None] = _no_hook,
        clock: Clock = time.monotonic,
        max_batch: int = MAX_BATCH,
        lock_wait: float = LOCK_WAIT_SECONDS,
        lock_retry: float = LOCK_RETRY_SECONDS,
    ) -> None:
        self.conn = conn
        self.loop = loop
        self.begin = begin
        self.refuse = refuse
        self.commit = commit
        self.after_commit = after_commit
        self.clock = clock
        self.max_batch = max_batch
        self.lock_wait = lock_wait
        self.lock_retry = lock_retry
        self._pending: list[_Op] = []
        self._flush_scheduled = False
        self._committing = False
        self._committer = concurrent.futures.ThreadPoolExecutor(1, "relay-sqlite-commit")
        # Another process holds the write lock: the timer that tries it again, and since when.
        self._lock_retry: asyncio.TimerHandle | None = None
        self._locked_since: float | None = None
        # Set whenever operations are answered: close() waits on it.
        self._answered = asyncio.Event()

    @property
    def waiting_for_lock(self) -> bool:
        """Whether queued operations wait for another process to release the write lock."""
        return self._lock_retry is not None

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``fn(conn)`` for the next batch; the future resolves after its commit."""
        op = _Op(fn, self.loop.create_future(), self.clock())
        self._pending.append(op)
        self._schedule_flush()
        return op.future

    async def close(self) -> None:
        """Answer everything queued, then stop the committer thread."""
        while self._pending or self._committing:
            self._answered.clear()
            self._schedule_flush()
            await self._answered.wait()
        self._committer.shutdown(wait=True)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # call_soon runs after the callbacks already ready: every request that reaches
            # the store during this loop iteration joins the batch. The batch belongs to no
            # one request: its log lines must not carry the request_id of whoever queued first.
            self.loop.call_soon(self._flush, context=contextvars.Context())

    def _flush(self) -> None:
        """Run the next batch's statements here; hand its COMMIT to the committer thread."""
        self._flush_scheduled = False
        if self._committing or self._lock_retry is not None or not self._pending:
            return
        refusal = self.refuse()
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if refusal is not None:
            for op in batch:
                op.error = StorageUnavailable(refusal)
            self._settle(batch)
            return
        conn = self.conn
        outcome = self._run_batch(conn, batch)
        if outcome == _BUSY:
            self._pending[:0] = batch
            self._wait_for_lock()
            return
        if self._locked_since is not None:
            waited = self.clock() - self._locked_since
            log.info("store_lock_released", waited_ms=round(waited * 1000, 1))
            self._locked_since = None
        if outcome == _FAILED:
            self._settle(batch)
            return
        # fsync takes the GIL-free part of a commit: while it runs the loop serves requests,
        # and what they queue becomes the next batch. One thread hand-off per batch.
        self._committing = True
        done = self.loop.run_in_executor(self._committer, self.commit, conn)
        done.add_done_callback(lambda result: self._committed(conn, batch, result))

    def _committed(
        self, conn: sqlite3.Connection, batch: list[_Op], result: asyncio.Future[None]
    ) -> None:
        self._committing = False
        exc = result.exception()
        if isinstance(exc, sqlite3.Error):
            self._fail(conn, batch, exc)
        elif exc is not None:  # not SQLite's: a bug; fail the batch loudly, keep serving
            self._fail(conn, batch, sqlite3.Error(repr(exc)))
        self.after_commit()
        # The next batch first: its statements run and its commit starts before this batch's
        # callers are answered, so the next fsync overlaps with sending their answers (answering
        # first left the disk idle for as long as that took, and the loop idle behind it).
        self._flush()
        self._settle(batch)

    def _wait_for_lock(self) -> None:
        """Another process holds the write lock: answer what waited too long, try again soon."""
        now = self.clock()
        if self._locked_since is None:
            self._locked_since = now
            log.warning("store_locked_by_another_process", waiting=len(self._pending))
        expired = [op for op in self._pending if now - op.queued_at >= self.lock_wait]
        if expired:
            self._pending = [op for op in self._pending if now - op.queued_at < self.lock_wait]
            error = (
                f"The database is locked by another process (waited {self.lock_wait:g} s); retry."
            )
            for op in expired:
                op.error = StorageUnavailable(error)
                op.settle()
            self._answered.set()
        if self._pending:
            self._lock_retry = self.loop.call_later(
                self.lock_retry, self._retry_lock, context=contextvars.Context()
            )
        else:
            self._locked_since = None

    def _retry_lock(self) -> None:
        self._lock_retry = None
        self._flush()

    def _settle(self, batch: list[_Op]) -> None:
        for op in batch:
            op.settle()
        self._answered.set()
        if self._pending:
            self._schedule_flush()

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[_Op], *, isolated: bool = False
    ) -> str:
        """Execute a batch inside one transaction; one operation's failure undoes only its own
        writes.

        The operations first run back to back. Should one fail on its own (a constraint, a
        bug: not SQLite itself), the transaction is rolled back and the batch runs again
        ``isolated``, each operation in its own savepoint. Operations are functions of the
        connection alone, so running them again does the same. (A savepoint around every
        operation, failing or not, cost two more statements per callback.)

        Returns ``_RUN`` (ready to commit), ``_BUSY`` (another process holds the write lock:
        nothing ran, try the batch again later) or ``_FAILED`` (SQLite itself failed: every
        op failed with ``StorageUnavailable``).
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return _BUSY
            self._fail(conn, batch, exc)
            return _FAILED
        try:
            self.begin(conn)
            for op in batch:
                if isolated:
                    conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn)
                except sqlite3.OperationalError:
                    raise  # disk full, read-only, I/O: the whole transaction is lost
                except Exception as exc:  # this operation's own failure
                    if not isolated:
                        conn.execute("ROLLBACK")
                        return self._run_batch(conn, batch, isolated=True)
                    conn.execute("ROLLBACK TO op")  # undo only its writes
                    op.result, op.error = None, exc
                if isolated:
                    conn.execute("RELEASE op")
        except sqlite3.Error as exc:
            self._fail(conn, batch, exc)
            return _FAILED
        return _RUN

    @staticmethod
    def _fail(conn: sqlite3.Connection, batch: list[_Op], exc: BaseException) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        log.error("store_commit_failed", error=str(exc), operations=len(batch))
        for op in batch:
            op.result = None
            op.error = StorageUnavailable(f"The store could not commit: {exc}")
