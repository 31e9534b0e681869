"""SQLite store: the embedded default, one process, no set-up.

Writes and reads run in batches on the event loop's own thread, one transaction and one commit
per batch (``service.store.sqlite_commit``: why, and how another process's lock is waited
for); the connection's busy timeout is 0, so nothing here waits on the loop. The operators'
reads (``sqlite_ops``) run on a read-only connection of their own in a thread (``read``).

The file is watched too: should the database be deleted or replaced under the running relay,
its writes would go to a file no one can open again, so every operation fails from then on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import structlog

from service.clock import Clock, system_clock
from service.errors import StorageUnavailable
from service.store import sqlite_deliveries as q
from service.store import sqlite_ops
from service.store import sqlite_watches as w
from service.store.base import Store
from service.store.budget import ApiBudget, BudgetState
from service.store.filters import event_clauses
from service.store.paging import Page, page_of, paged_query
from service.store.records import (
    AttemptRecord,
    Claim,
    DeliveryFilter,
    EventFilter,
    IncomingEvent,
    IngestResult,
    ReplayResult,
    Subscriber,
)
from service.store.rows import event_json
from service.store.sqlite_commit import LOCK_WAIT_SECONDS as LOCK_WAIT_SECONDS
from service.store.sqlite_commit import GroupCommit
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
#: How long opening the store (migrations, at start) waits for another process's lock.
BUSY_TIMEOUT_MS = 2000
#: How often the write path checks that the database file is still the one it has open.
FILE_CHECK_SECONDS = 1.0


def sqlite_path(url: str) -> str:
    """``sqlite:///relay.db`` -> ``relay.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    return url[len("sqlite:///") :] or "relay.db"


class SQLiteStore(Store):
    """SQLite in WAL mode on a file (``synchronous=FULL``: a commit is on disk).

    ``clock`` is the time a subscriber's previous secret and a pending delivery's age are
    judged at.
    """

    exclusive = True

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        migrate: bool = True,
        clock: Clock = system_clock,
    ) -> None:
        self.path = path
        self.migrate = migrate
        self.synchronous = synchronous
        self.clock = clock
        self._commits: GroupCommit | None = None
        self._subscribers = q.SubscriberCache()
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
        # From now on statements run on the event loop: never wait there (sqlite_commit).
        conn.execute("PRAGMA busy_timeout=0")
        return conn

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

    def _refusal(self) -> str | None:
        """Asked before every batch: why nothing may run any more (the file is lost), or None."""
        if time.monotonic() - self._file_checked_at >= FILE_CHECK_SECONDS:
            self._check_file()
        return self._lost

    # -- running operations ---------------------------------------------------------------------

    def _usable(self) -> GroupCommit:
        if self._commits is None:
            raise StorageUnavailable("The store is not open.")
        if self._lost is not None:  # the file at the path is not the relay's any more
            raise StorageUnavailable(self._lost)
        return self._commits

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``fn(conn)`` for the next batch; the future resolves after its commit."""
        return self._usable().submit(fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on a read-only connection of its own, in a thread: one snapshot
        of the last commit, read without holding up the batches (``:memory:``, which no other
        connection can open, reads in a batch)."""
        self._usable()
        if self.path == ":memory:":
            return await self._run(fn)
        return await asyncio.to_thread(sqlite_ops.read_only, self.path, fn)

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        # When a commit's fsync ends, the committer thread waits for the GIL; with a busy loop
        # that wait lasts up to the switch interval (5 ms by default), and the next batch waits
        # behind it. 1 ms bounds that at a negligible cost (only one other thread ever asks).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"Cannot open SQLite database {self.path!r}: {exc}") from exc
        if self.path != ":memory:":
            self._file_id = self._file_identity()
        # The loop that opened the store: its operations run on it.
        self._commits = GroupCommit(
            conn,
            asyncio.get_running_loop(),
            begin=self._subscribers.check,  # another process may have changed them
            refuse=self._refusal,
        )

    async def close(self) -> None:
        if self._commits is None:
            return
        await self._commits.close()  # answers everything queued first
        self._commits.conn.close()
        self._commits = None

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
        return await self._run(lambda conn: q.ingest(conn, event, self._subscribers))

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        def op(conn: sqlite3.Connection) -> tuple[str, str] | None:
            row: tuple[str, str] | None = conn.execute(
                "SELECT body, state FROM events WHERE id = ?", (event_id,)
            ).fetchone()
            return row

        row = await self._run(op)
        return None if row is None else event_json(row[0], row[1])

    async def get_event_raw(self, event_id: str) -> bytes | None:
        def op(conn: sqlite3.Connection) -> tuple[bytes] | None:
            row: tuple[bytes] | None = conn.execute(
                "SELECT raw_body FROM events WHERE id = ?", (event_id,)
            ).fetchone()
            return row

        row = await self._run(op)
        return None if row is None else bytes(row[0])

    async def list_events(self, filters: EventFilter, cursor: str | None, limit: int) -> Page:
        sql, params = paged_query(
            "SELECT seq, body FROM events", event_clauses(filters, "?"), cursor, limit, "?"
        )
        rows = await self._run(lambda conn: conn.execute(sql, params).fetchall())
        return page_of(rows, limit, lambda row: row[1])

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
        now = self.clock()
        return await self._run(lambda conn: q.get_subscriber(conn, subscriber_id, now))

    async def list_subscribers(self, cursor: str | None, limit: int) -> Page:
        now = self.clock()
        return await self._run(lambda conn: q.list_subscribers(conn, cursor, limit, now))

    async def update_subscriber(
        self, subscriber_id: str, changes: dict[str, Any]
    ) -> Subscriber | None:
        now = self.clock()
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
        now = self.clock()
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
        now = self.clock()
        return await self._run(lambda conn: q.delivery_counts(conn, now))

    async def activity(self, since: float) -> dict[str, Any]:
        return await self.read(lambda conn: sqlite_ops.activity(conn, since))

    async def delivery_details(
        self, filters: DeliveryFilter, provider: str | None, limit: int
    ) -> list[dict[str, Any]]:
        now = self.clock()
        return await self.read(
            lambda conn: sqlite_ops.delivery_details(conn, filters, provider, limit, now)
        )

    async def waiting_callback_counts(self) -> dict[str, int]:
        return await self.read(sqlite_ops.waiting_callback_counts)

    async def active_watch_counts(self) -> dict[str, int]:
        return await self.read(sqlite_ops.active_watch_counts)
