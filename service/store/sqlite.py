"""SQLite store: the embedded default, one process, no set-up.

Statements run on the event loop's own thread, batched: an operation is queued and the batch
is flushed once per loop iteration, all its operations in one transaction (a failing one
undoes only its own writes); its one COMMIT (the fsync) runs on a helper thread while the
loop goes on, and only then is every operation of the batch answered. Under load many
callbacks share one commit (group commit), yet none is answered before its commit.

Why not a database thread: each statement releases and re-takes the GIL, and with a busy event
loop every re-take waits on the GIL switch interval; measured here, that capped intake at about
1,800 callbacks/s while both the loop and the disk were half idle. SQLite statements on indexed
rows take microseconds, so running them inline costs the loop less than handing them off; the
commit waits on the disk, so it alone goes to a thread (one hand-off per batch).

Since statements run on the loop, nothing here may wait on another process's lock: the
connection's busy timeout is 0, and when another process (a CLI command that writes, a backup)
holds the write lock, the batch goes back to the queue and is tried again a few milliseconds
later, while the loop serves on (``/healthz`` answers at once); an operation that could not
start within ``LOCK_WAIT_SECONDS`` fails with ``StorageUnavailable`` (503: the provider retries).

The file is watched too: should the database be deleted or replaced under the running relay,
its writes would go to a file no one can open again, so every operation fails from then on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import structlog

from service.errors import StorageUnavailable
from service.store import sqlite_deliveries as q
from service.store import sqlite_ops
from service.store import sqlite_watches as w
from service.store.base import (
    AttemptRecord,
    Claim,
    DeliveryFilter,
    EventFilter,
    IncomingEvent,
    IngestResult,
    Page,
    ReplayResult,
    Store,
    Subscriber,
    decode_cursor,
    encode_cursor,
)
from service.store.budget import ApiBudget, BudgetState
from service.store.filters import event_clauses
from service.store.watch_model import (
    Decision,
    HoldLimits,
    HoldRefused,
    PollRecord,
    Watch,
    WatchFilter,
)

T = TypeVar("T")
log = structlog.get_logger("service.store")

MIGRATIONS = (
    "sqlite_001_initial.sql",
    "sqlite_002_watches.sql",
    "sqlite_003_ops_sessions.sql",
    "sqlite_004_attribution.sql",
    "sqlite_005_flood.sql",
    "sqlite_006_budget.sql",
    "sqlite_007_suspect.sql",
)
#: Most operations folded into one transaction; bounds the latency a batch adds.
MAX_BATCH = 512
#: How long opening the store (migrations, at start) waits for another process's lock.
BUSY_TIMEOUT_MS = 2000
#: How long an operation waits for another process (the CLI) to release the write lock, and
#: how often the lock is tried meanwhile (off the loop's critical path: a timer).
LOCK_WAIT_SECONDS = 1.0
LOCK_RETRY_SECONDS = 0.005
#: How often the write path checks that the database file is still the one it has open.
FILE_CHECK_SECONDS = 1.0


def sqlite_path(url: str) -> str:
    """``sqlite:///relay.db`` -> ``relay.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    return url[len("sqlite:///") :] or "relay.db"


class _Op:
    __slots__ = ("error", "fn", "future", "queued_at", "result")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any], now: float
    ):
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


#: What ``SQLiteStore._run_batch`` did with a batch.
_RUN, _BUSY, _FAILED = "run", "busy", "failed"


class SQLiteStore(Store):
    """SQLite in WAL mode on a file (``synchronous=FULL``: a commit is on disk)."""

    exclusive = True

    def __init__(self, path: str, *, synchronous: str = "FULL", migrate: bool = True) -> None:
        self.path = path
        self.migrate = migrate
        self.synchronous = synchronous
        self._pending: list[_Op] = []
        self._flush_scheduled = False
        self._committing = False
        self._committer = concurrent.futures.ThreadPoolExecutor(1, "relay-sqlite-commit")
        self._conn: sqlite3.Connection | None = None
        # The loop that opened the store: its operations run on it. (Asked of asyncio on every
        # operation instead, it cost a getpid system call each on Python 3.11.)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._subscribers = q.SubscriberCache()
        # Another process holds the write lock: the timer that tries it again, and since when.
        self._lock_retry: asyncio.TimerHandle | None = None
        self._locked_since: float | None = None
        # The database file this store opened ((st_dev, st_ino)), when it was last checked,
        # and why the store stopped (the file was removed or replaced), for good.
        self._file_id: tuple[int, int] | None = None
        self._file_checked_at = 0.0
        self._lost: str | None = None

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=OFF")
        if self.migrate:
            self._migrate(conn, self.on_migration)
        else:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < len(MIGRATIONS):
                conn.close()
                raise StorageUnavailable(
                    f"The database is at schema version {version} of {len(MIGRATIONS)};"
                    " run `relay migrate` first."
                )
        # From now on statements run on the event loop: never wait there (see the docstring).
        conn.execute("PRAGMA busy_timeout=0")
        return conn

    # -- the database file ----------------------------------------------------------------------

    def _file_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the file at ``path`` now; None if there is none."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def _check_file(self) -> None:
        """Stop the store for good if its file was removed or replaced since it was opened.

        SQLite keeps writing to the file it has open, even once unlinked: callbacks would be
        acknowledged into a file that vanishes at the next restart, with the subscribers and
        the signing key (every minted URL with it). Only a restart (on a restored file) helps.
        """
        if self._file_id is None or self._lost is not None:
            return
        self._file_checked_at = time.monotonic()
        now_there = self._file_identity()
        if now_there == self._file_id:
            return
        what = "removed" if now_there is None else "replaced by another file"
        self._lost = (
            f"The database file {self.path!r} was {what} while the relay had it open;"
            " nothing more is accepted. Restore the file and restart the relay"
            f" (until it stops, process {os.getpid()} still holds the old file open)."
        )
        log.error("database_file_lost", path=self.path, what=what, pid=os.getpid())

    @staticmethod
    def _migrate(
        conn: sqlite3.Connection, progress: Callable[[int, int, str], None] | None = None
    ) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, name in enumerate(MIGRATIONS, start=1):
                if number > version:
                    if progress is not None:
                        progress(number, len(MIGRATIONS), name)
                    sql = resources.files("service.store.sql").joinpath(name).read_text()
                    for statement in sql.split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- group commit ---------------------------------------------------------------------------

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``fn(conn)`` for the next batch; the future resolves after its commit."""
        if self._conn is None:
            raise StorageUnavailable("The store is not open.")
        if self._lost is not None:
            raise StorageUnavailable(self._lost)
        loop = self._loop
        op = _Op(fn, loop.create_future(), time.monotonic())
        self._pending.append(op)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # call_soon runs after the callbacks already ready: every request that reaches
            # the store during this loop iteration joins the batch. The batch belongs to no
            # one request: its log lines must not carry the request_id of whoever queued first.
            loop.call_soon(self._flush, context=contextvars.Context())
        return op.future

    def _flush(self) -> None:
        """Run the next batch's statements here; hand its COMMIT to the committer thread."""
        self._flush_scheduled = False
        conn = self._conn
        if self._committing or self._lock_retry is not None or not self._pending or conn is None:
            return
        if time.monotonic() - self._file_checked_at >= FILE_CHECK_SECONDS:
            self._check_file()
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        if self._lost is not None:
            for op in batch:
                op.error = StorageUnavailable(self._lost)
            self._settle(batch)
            return
        outcome = self._run_batch(conn, batch)
        if outcome == _BUSY:
            self._pending[:0] = batch
            self._wait_for_lock()
            return
        if self._locked_since is not None:
            waited = time.monotonic() - self._locked_since
            log.info("store_lock_released", waited_ms=round(waited * 1000, 1))
            self._locked_since = None
        if outcome == _FAILED:
            self._settle(batch)
            return
        # fsync takes the GIL-free part of a commit: while it runs the loop serves requests,
        # and what they queue becomes the next batch. One thread hand-off per batch.
        self._committing = True
        done = self._loop.run_in_executor(self._committer, self._commit, conn)
        done.add_done_callback(lambda result: self._committed(conn, batch, result))

    @staticmethod
    def _commit(conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    def _committed(
        self, conn: sqlite3.Connection, batch: list[_Op], result: asyncio.Future[None]
    ) -> None:
        self._committing = False
        exc = result.exception()
        if isinstance(exc, sqlite3.Error):
            self._fail(conn, batch, exc)
        elif exc is not None:  # not SQLite's: a bug; fail the batch loudly, keep serving
            self._fail(conn, batch, sqlite3.Error(repr(exc)))
        # The next batch first: its statements run and its commit starts before this batch's
        # callers are answered, so the next fsync overlaps with sending their answers (answering
        # first left the disk idle for as long as that took, and the loop idle behind it).
        self._flush()
        self._settle(batch)

    def _wait_for_lock(self) -> None:
        """Another process holds the write lock: answer what waited too long, try again soon."""
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
            log.warning("store_locked_by_another_process", waiting=len(self._pending))
        expired = [op for op in self._pending if now - op.queued_at >= LOCK_WAIT_SECONDS]
        if expired:
            self._pending = [op for op in self._pending if now - op.queued_at < LOCK_WAIT_SECONDS]
            error = (
                f"The database is locked by another process (waited {LOCK_WAIT_SECONDS:g} s);"
                " retry."
            )
            for op in expired:
                op.error = StorageUnavailable(error)
                op.settle()
        if self._pending:
            self._lock_retry = self._loop.call_later(
                LOCK_RETRY_SECONDS, self._retry_lock, context=contextvars.Context()
            )
        else:
            self._locked_since = None

    def _retry_lock(self) -> None:
        self._lock_retry = None
        self._flush()

    def _settle(self, batch: list[_Op]) -> None:
        for op in batch:
            op.settle()
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush, context=contextvars.Context())

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
            SQLiteStore._fail(conn, batch, exc)
            return _FAILED
        try:
            self._subscribers.check(conn)  # another process may have changed them
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
            SQLiteStore._fail(conn, batch, exc)
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

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._conn = self._connect()
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"Cannot open SQLite database {self.path!r}: {exc}") from exc
        if self.path != ":memory:":
            self._file_id = self._file_identity()

    async def close(self) -> None:
        if self._conn is None:
            return
        while self._pending or self._committing:  # answer everything queued before closing
            self._flush()
            await asyncio.sleep(0.001)
        self._committer.shutdown(wait=True)
        self._conn.close()
        self._conn = None

    async def ping(self) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO relay_meta (key, value) VALUES ('last_ping', datetime('now'))"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )

        self._check_file()  # readiness looks every time (one stat)
        await self._run(op)

    async def get_or_create_meta(self, key: str, value: str) -> str:
        def op(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO relay_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
            row = conn.execute("SELECT value FROM relay_meta WHERE key = ?", (key,)).fetchone()
            return str(row[0])

        return await self._run(op)

    async def get_meta(self, key: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM relay_meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(op)

    # -- callback URLs --------------------------------------------------------------------------

    async def create_callback_url(
        self,
        url_id: str,
        provider: str,
        metadata: dict[str, Any],
        created_at: float,
        expires_at: float,
        reusable: bool = False,
    ) -> None:
        text = json.dumps(metadata, separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO callback_urls"
                " (id, provider, metadata, created_at, expires_at, reusable)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (url_id, provider, text, created_at, expires_at, int(reusable)),
            )

        await self._run(op)

    async def bind_callback_url(self, url_id: str, task_id: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            # One writer at a time (the store's single connection): update, then read back.
            conn.execute(
                "UPDATE callback_urls SET task_id = ?"
                " WHERE id = ? AND NOT reusable AND task_id IS NULL",
                (task_id, url_id),
            )
            row = conn.execute(
                "SELECT task_id FROM callback_urls WHERE id = ? AND NOT reusable", (url_id,)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._run(op)

    async def get_callback_metadata(self, url_id: str) -> dict[str, Any] | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT metadata FROM callback_urls WHERE id = ?", (url_id,)
            ).fetchone()
            return None if row is None else str(row[0])

        text = await self._run(op)
        return None if text is None else json.loads(text)

    # -- watches (SQL in sqlite_watches) -------------------------------------------------------

    async def create_watch(self, watch: Watch) -> tuple[Watch, bool]:
        return await self._run(lambda conn: w.create_watch(conn, watch))

    async def hold_for_confirmation(
        self, watch: Watch, limits: HoldLimits | None = None
    ) -> Watch | HoldRefused | None:
        return await self._run(lambda conn: w.hold_for_confirmation(conn, watch, limits))

    async def resolve_conflict(self, watch_id: str, url_id: str | None, now: float) -> Watch | None:
        return await self._run(lambda conn: w.resolve_conflict(conn, watch_id, url_id, now))

    async def get_watch(self, watch_id: str) -> Watch | None:
        return await self._run(lambda conn: w.get_watch(conn, watch_id))

    async def decide_suspect(self, decision: Decision) -> tuple[Watch | None, bool]:
        return await self._run(lambda conn: w.decide_suspect(conn, decision))

    async def undo_decision(self, decision: Decision) -> None:
        await self._run(lambda conn: w.undo_decision(conn, decision))

    async def list_watches(self, filters: WatchFilter, cursor: str | None, limit: int) -> Page:
        return await self._run(lambda conn: w.list_watches(conn, filters, cursor, limit))

    async def cancel_watch(self, watch_id: str, now: float) -> Watch | None:
        return await self._run(lambda conn: w.cancel_watch(conn, watch_id, now))

    async def claim_due_watches(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        shares: Mapping[str, int] | None = None,
        budget: ApiBudget | None = None,
    ) -> list[Watch]:
        return await self._run(
            lambda conn: w.claim_due_watches(conn, now, limit, now + lease_seconds, shares, budget)
        )

    async def budget_state(self, provider: str, now: float, window: float) -> BudgetState:
        return await self._run(lambda conn: w.budget_state(conn, provider, now, window))

    async def block_provider(self, provider: str, until: float) -> None:
        await self._run(lambda conn: w.block_provider(conn, provider, until))

    async def record_poll(self, record: PollRecord) -> None:
        await self._run(lambda conn: w.record_poll(conn, record))

    async def release_watch_leases(self, watch_ids: list[str] | None = None) -> int:
        return await self._run(lambda conn: w.release_watch_leases(conn, watch_ids))

    async def prune_watches(self, before: float, limit: int) -> int:
        return await self._run(lambda conn: w.prune_watches(conn, before, limit))

    # -- events ---------------------------------------------------------------------------------

    async def ingest(self, event: IncomingEvent) -> IngestResult:
        return await self._run(lambda conn: _ingest(conn, event, self._subscribers))

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        def op(conn: sqlite3.Connection) -> tuple[str, str, float] | None:
            return conn.execute(
                "SELECT body, state, received_at FROM events WHERE id = ?", (event_id,)
            ).fetchone()

        row = await self._run(op)
        if row is None:
            return None
        event: dict[str, Any] = json.loads(row[0])
        event["relay"] = {"state": row[1]}
        return event

    async def get_event_raw(self, event_id: str) -> bytes | None:
        def op(conn: sqlite3.Connection) -> tuple[bytes] | None:
            return conn.execute("SELECT raw_body FROM events WHERE id = ?", (event_id,)).fetchone()

        row = await self._run(op)
        return None if row is None else bytes(row[0])

    async def list_events(self, filters: EventFilter, cursor: str | None, limit: int) -> Page:
        clauses, params = event_clauses(filters, decode_cursor(cursor), "?")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT seq, body FROM events {where} ORDER BY seq DESC LIMIT ?"

        def op(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            return conn.execute(sql, (*params, limit + 1)).fetchall()

        rows = await self._run(op)
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([body for _, body in rows], encode_cursor(rows[-1][0]) if more else None)

    # -- subscribers ----------------------------------------------------------------------------

    def _changing_subscribers(
        self, fn: Callable[[sqlite3.Connection], T]
    ) -> Callable[[sqlite3.Connection], T]:
        def op(conn: sqlite3.Connection) -> T:
            self._subscribers.invalidate()
            return fn(conn)

        return op

    async def create_subscriber(self, subscriber: Subscriber) -> None:
        await self._run(
            self._changing_subscribers(lambda conn: q.create_subscriber(conn, subscriber))
        )

    async def get_subscriber(self, subscriber_id: str) -> Subscriber | None:
        now = time.time()
        return await self._run(lambda conn: q.get_subscriber(conn, subscriber_id, now))

    async def list_subscribers(self, cursor: str | None, limit: int) -> Page:
        now = time.time()
        return await self._run(lambda conn: q.list_subscribers(conn, cursor, limit, now))

    async def update_subscriber(
        self, subscriber_id: str, changes: dict[str, Any]
    ) -> Subscriber | None:
        now = time.time()
        return await self._run(
            self._changing_subscribers(
                lambda conn: q.update_subscriber(conn, subscriber_id, changes, now)
            )
        )

    async def delete_subscriber(self, subscriber_id: str, now: float) -> bool:
        return await self._run(
            self._changing_subscribers(lambda conn: q.delete_subscriber(conn, subscriber_id, now))
        )

    async def rotate_secret(
        self, subscriber_id: str, new_secret: str, previous_valid_until: float
    ) -> Subscriber | None:
        now = time.time()
        return await self._run(
            self._changing_subscribers(
                lambda conn: q.rotate_secret(
                    conn, subscriber_id, new_secret, previous_valid_until, now
                )
            )
        )

    # -- ops console sessions ------------------------------------------------------------------

    async def create_ops_session(
        self, session_id: str, created_at: float, expires_at: float
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM ops_sessions WHERE expires_at < ?", (created_at,))
            conn.execute(
                "INSERT INTO ops_sessions (id, created_at, expires_at) VALUES (?, ?, ?)",
                (session_id, created_at, expires_at),
            )

        await self._run(op)

    async def ops_session_live(self, session_id: str, now: float) -> bool:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT 1 FROM ops_sessions WHERE id = ? AND revoked_at IS NULL AND expires_at > ?",
                (session_id, now),
            ).fetchone()
        )
        return row is not None

    async def revoke_ops_session(self, session_id: str, now: float) -> None:
        await self._run(
            lambda conn: conn.execute(
                "UPDATE ops_sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, session_id),
            )
        )

    # -- deliveries -----------------------------------------------------------------------------

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float, exclude_subscribers: frozenset[str]
    ) -> list[Claim]:
        return await self._run(
            lambda conn: q.claim_due(conn, now, limit, now + lease_seconds, exclude_subscribers)
        )

    async def record_attempt(self, record: AttemptRecord) -> None:
        def op(conn: sqlite3.Connection) -> None:
            q.record_attempt(conn, record)

        # Only an attempt that disables its subscriber changes who gets the next fan-out.
        await self._run(self._changing_subscribers(op) if record.disable_subscriber else op)

    async def release_leases(self, delivery_ids: list[str] | None = None) -> int:
        return await self._run(lambda conn: q.release_leases(conn, delivery_ids))

    async def list_deliveries(
        self, filters: DeliveryFilter, cursor: str | None, limit: int
    ) -> Page:
        return await self._run(lambda conn: q.list_deliveries(conn, filters, cursor, limit))

    async def get_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        return await self._run(lambda conn: q.get_delivery(conn, delivery_id))

    async def replay(
        self,
        filters: DeliveryFilter,
        delivery_ids: list[str] | None,
        now: float,
        *,
        force: bool = False,
    ) -> ReplayResult:
        return await self._run(lambda conn: q.replay(conn, filters, delivery_ids, now, force))

    async def redeliver(
        self, event_id: str, subscriber_ids: list[str], now: float, *, force: bool = False
    ) -> ReplayResult:
        return await self._run(lambda conn: q.redeliver(conn, event_id, subscriber_ids, now, force))

    async def prune(self, before: float, limit: int, failed_before: float | None = None) -> int:
        return await self._run(lambda conn: q.prune(conn, before, limit, failed_before))

    async def delivery_counts(self) -> dict[str, Any]:
        now = time.time()
        return await self._run(lambda conn: q.delivery_counts(conn, now))

    async def activity(self, since: float) -> dict[str, Any]:
        return await sqlite_ops.read(self, lambda conn: sqlite_ops.activity(conn, since))

    async def delivery_details(
        self, filters: DeliveryFilter, provider: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return await sqlite_ops.read(
            self, lambda conn: sqlite_ops.delivery_details(conn, filters, provider, limit)
        )

    async def waiting_callback_counts(self) -> dict[str, int]:
        return await sqlite_ops.read(self, sqlite_ops.waiting_callback_counts)

    async def active_watch_counts(self) -> dict[str, int]:
        return await sqlite_ops.read(self, sqlite_ops.active_watch_counts)


def _ingest(
    conn: sqlite3.Connection, event: IncomingEvent, subscribers: q.SubscriberCache
) -> IngestResult:
    # One statement decides duplicate (conflict: no row), superseded (the task already has a
    # terminal event) or emitted, so the hot path costs one round trip in the common case.
    row = conn.execute(
        "INSERT INTO events (id, provider, task_id, status, progress, dedup_key, state,"
        " received_at, url_id, body, raw_body) VALUES (?, ?, ?, ?, ?, ?,"
        " CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE provider = ? AND task_id = ?)"
        " THEN 'superseded' ELSE 'emitted' END, ?, ?, ?, ?)"
        " ON CONFLICT (dedup_key) DO NOTHING RETURNING state",
        (
            event.event_id,
            event.provider,
            event.task_id,
            event.status,
            event.progress,
            event.dedup_key,
            event.provider,
            event.task_id,
            event.received_at,
            event.url_id,
            event.body,
            event.raw_body,
        ),
    ).fetchone()
    if row is None:
        (existing,) = conn.execute(
            "SELECT id FROM events WHERE dedup_key = ?", (event.dedup_key,)
        ).fetchone()
        return IngestResult("duplicate", existing)
    if row[0] == "superseded":
        return IngestResult("superseded", event.event_id)
    if event.terminal:
        conn.execute(
            "INSERT INTO tasks (provider, task_id, terminal_status, event_id) VALUES (?, ?, ?, ?)",
            (event.provider, event.task_id, event.status, event.event_id),
        )
    created = q.fan_out(conn, event, subscribers.enabled(conn, event.received_at))
    return IngestResult("accepted", event.event_id, created)
