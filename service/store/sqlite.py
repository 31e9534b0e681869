"""SQLite store: the embedded default, one process, no set-up.

All statements run on one dedicated thread that owns the connection. Requests queue their
operation and await it; the thread takes every operation waiting at that moment and runs them
in one transaction (each in its own savepoint), then commits once and answers them all. Under
load many callbacks share one commit (group commit), yet none is answered before its commit.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import structlog

from service.errors import StorageUnavailable
from service.store import sqlite_deliveries as q
from service.store.base import (
    AttemptRecord,
    Claim,
    DeliveryFilter,
    EventFilter,
    IncomingEvent,
    IngestResult,
    Page,
    Store,
    Subscriber,
    decode_cursor,
    encode_cursor,
)

T = TypeVar("T")
log = structlog.get_logger("service.store")

MIGRATIONS = ("sqlite_001_initial.sql",)
#: Most operations folded into one transaction; bounds the latency a batch adds.
MAX_BATCH = 512


def sqlite_path(url: str) -> str:
    """``sqlite:///relay.db`` -> ``relay.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    return url[len("sqlite:///") :] or "relay.db"


class _Op:
    __slots__ = ("error", "fn", "future", "loop", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], loop: asyncio.AbstractEventLoop):
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None


def _settle(op: _Op) -> None:
    if op.future.done():  # the caller gave up (cancelled); nothing to tell it
        return
    if op.error is not None:
        op.future.set_exception(op.error)
    else:
        op.future.set_result(op.result)


class SQLiteStore(Store):
    """SQLite in WAL mode on a file (``synchronous=FULL``: a commit is on disk)."""

    exclusive = True

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._subscribers = q.SubscriberCache()  # touched only on the database thread

    # -- the database thread -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=OFF")
        self._migrate(conn)
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, name in enumerate(MIGRATIONS, start=1):
                if number > version:
                    sql = resources.files("service.store.sql").joinpath(name).read_text()
                    for statement in sql.split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run_thread(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run_batch(conn, batch)
            for op in batch:
                op.loop.call_soon_threadsafe(_settle, op)
            if stop:
                return

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, batch: list[_Op]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn)
                except sqlite3.OperationalError:
                    raise  # disk full, read-only, I/O: the whole transaction is lost
                except Exception as exc:  # this operation's own failure: undo only its writes
                    conn.execute("ROLLBACK TO op")
                    op.error = exc
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            log.error("store_commit_failed", error=str(exc), operations=len(batch))
            for op in batch:
                op.result = None
                op.error = StorageUnavailable(f"The store could not commit: {exc}")

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise StorageUnavailable("The store is not open.")
        op = _Op(fn, asyncio.get_running_loop())
        self._queue.put(op)
        return await op.future  # type: ignore[no-any-return]

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._conn = await asyncio.to_thread(self._connect)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"Cannot open SQLite database {self.path!r}: {exc}") from exc
        self._thread = threading.Thread(target=self._run_thread, name="relay-sqlite", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def ping(self) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO relay_meta (key, value) VALUES ('last_ping', datetime('now'))"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )

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
    ) -> None:
        text = json.dumps(metadata, separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO callback_urls (id, provider, metadata, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (url_id, provider, text, created_at, expires_at),
            )

        await self._run(op)

    async def get_callback_metadata(self, url_id: str) -> dict[str, Any] | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT metadata FROM callback_urls WHERE id = ?", (url_id,)
            ).fetchone()
            return None if row is None else str(row[0])

        text = await self._run(op)
        return None if text is None else json.loads(text)

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

    async def list_events(self, filters: EventFilter, cursor: str | None, limit: int) -> Page:
        before = decode_cursor(cursor)
        clauses, params = [], []
        for column, value in (
            ("provider", filters.provider),
            ("task_id", filters.task_id),
            ("status", filters.status),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if filters.since is not None:
            clauses.append("received_at >= ?")
            params.append(filters.since)
        if before is not None:
            clauses.append("seq < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT seq, body FROM events {where} ORDER BY seq DESC LIMIT ?"

        def op(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            return conn.execute(sql, (*params, limit + 1)).fetchall()

        rows = await self._run(op)
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([body for _, body in rows], encode_cursor(rows[-1][0]) if more else None)

    # -- subscribers ----------------------------------------------------------------------------

    async def create_subscriber(self, subscriber: Subscriber) -> None:
        await self._run(lambda conn: q.create_subscriber(conn, subscriber))

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
        return await self._run(lambda conn: q.update_subscriber(conn, subscriber_id, changes, now))

    async def delete_subscriber(self, subscriber_id: str, now: float) -> bool:
        return await self._run(lambda conn: q.delete_subscriber(conn, subscriber_id, now))

    async def rotate_secret(
        self, subscriber_id: str, new_secret: str, previous_valid_until: float
    ) -> Subscriber | None:
        now = time.time()
        return await self._run(
            lambda conn: q.rotate_secret(conn, subscriber_id, new_secret, previous_valid_until, now)
        )

    # -- deliveries -----------------------------------------------------------------------------

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float, exclude_subscribers: frozenset[str]
    ) -> list[Claim]:
        return await self._run(
            lambda conn: q.claim_due(conn, now, limit, now + lease_seconds, exclude_subscribers)
        )

    async def record_attempt(self, record: AttemptRecord) -> None:
        await self._run(lambda conn: q.record_attempt(conn, record))

    async def release_leases(self, delivery_ids: list[str] | None = None) -> int:
        return await self._run(lambda conn: q.release_leases(conn, delivery_ids))

    async def list_deliveries(
        self, filters: DeliveryFilter, cursor: str | None, limit: int
    ) -> Page:
        return await self._run(lambda conn: q.list_deliveries(conn, filters, cursor, limit))

    async def get_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        return await self._run(lambda conn: q.get_delivery(conn, delivery_id))

    async def replay(
        self, filters: DeliveryFilter, delivery_ids: list[str] | None, now: float
    ) -> int:
        return await self._run(lambda conn: q.replay(conn, filters, delivery_ids, now))

    async def redeliver(self, event_id: str, subscriber_ids: list[str], now: float) -> int:
        return await self._run(lambda conn: q.redeliver(conn, event_id, subscriber_ids, now))

    async def delivery_counts(self) -> dict[str, int]:
        now = time.time()
        return await self._run(lambda conn: q.delivery_counts(conn, now))


def _ingest(
    conn: sqlite3.Connection, event: IncomingEvent, subscribers: q.SubscriberCache
) -> IngestResult:
    row = conn.execute("SELECT id FROM events WHERE dedup_key = ?", (event.dedup_key,)).fetchone()
    if row is not None:
        return IngestResult("duplicate", row[0])
    terminal = conn.execute(
        "SELECT 1 FROM tasks WHERE provider = ? AND task_id = ?", (event.provider, event.task_id)
    ).fetchone()
    state = "superseded" if terminal is not None else "emitted"
    conn.execute(
        "INSERT INTO events (id, provider, task_id, status, progress, dedup_key, state,"
        " received_at, url_id, body, raw_body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.event_id,
            event.provider,
            event.task_id,
            event.status,
            event.progress,
            event.dedup_key,
            state,
            event.received_at,
            event.url_id,
            event.body,
            event.raw_body,
        ),
    )
    if terminal is not None:
        return IngestResult("superseded", event.event_id)
    if event.terminal:
        conn.execute(
            "INSERT INTO tasks (provider, task_id, terminal_status, event_id) VALUES (?, ?, ?, ?)",
            (event.provider, event.task_id, event.status, event.event_id),
        )
    created = q.fan_out(conn, event, subscribers.enabled(conn, event.received_at))
    return IngestResult("accepted", event.event_id, created)
