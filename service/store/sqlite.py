"""SQLite store: the embedded default, one process, no set-up.

Writes and reads run in batches on the event loop's own thread, one transaction and one commit
per batch (``service.store.sqlite_commit``: why, and how another process's lock is waited
for); the connection's busy timeout is 0, so nothing here waits on the loop. The operators'
reads (``sqlite_ops``) run on a read-only connection of their own in a thread (``read``).

The file is watched too (``sqlite_file``): should the database be deleted or replaced under the
running relay, its writes would go to a file no one can open again, so every operation fails
from then on. The SQL is in ``sqlite_events``, ``sqlite_subscribers``, ``sqlite_deliveries``,
``sqlite_watches``, ``sqlite_meta``, ``sqlite_keys`` and ``sqlite_ops``; this class runs it.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from service.clock import Clock, system_clock
from service.errors import StorageUnavailable
from service.store import sqlite_archive as arc
from service.store import sqlite_deliveries as q
from service.store import sqlite_events as e
from service.store import sqlite_idempotency as idem
from service.store import sqlite_keys as keys
from service.store import sqlite_meta as m
from service.store import sqlite_ops
from service.store import sqlite_subscribers as subs
from service.store import sqlite_watches as w
from service.store.base import Store
from service.store.budget import ApiBudget, BudgetState
from service.store.idempotency_model import EarlierRequest, IdempotencyClaim, StoredAnswer
from service.store.paging import Page
from service.store.records import (
    ApiKey,
    ArchiveJob,
    ArchiveOutcome,
    AttemptRecord,
    Claim,
    DeliveryFilter,
    EventFilter,
    IncomingEvent,
    IngestResult,
    ReplayResult,
    Subscriber,
)
from service.store.sqlite_commit import LOCK_WAIT_SECONDS as LOCK_WAIT_SECONDS
from service.store.sqlite_commit import GroupCommit
from service.store.sqlite_file import DatabaseFile
from service.store.sqlite_schema import MIGRATIONS as MIGRATIONS
from service.store.sqlite_schema import connect
from service.store.watch_model import (
    Decision,
    HoldLimits,
    HoldRefused,
    PollRecord,
    Watch,
    WatchFilter,
)

T = TypeVar("T")


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
        self._file: DatabaseFile | None = None
        self._subscribers = subs.SubscriberCache()

    # -- running operations ---------------------------------------------------------------------

    def _usable(self) -> GroupCommit:
        if self._commits is None or self._file is None:
            raise StorageUnavailable("The store is not open.")
        if self._file.lost is not None:  # the file at the path is not the relay's any more
            raise StorageUnavailable(self._file.lost)
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
        try:
            conn = connect(
                self.path, self.synchronous, migrate=self.migrate, progress=self.on_migration
            )
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"Cannot open SQLite database {self.path!r}: {exc}") from exc
        self._file = DatabaseFile(self.path)
        # The loop that opened the store: its operations run on it.
        self._commits = GroupCommit(
            conn,
            asyncio.get_running_loop(),
            begin=self._subscribers.check,  # another process may have changed them
            refuse=self._file.check_if_due,
        )

    async def close(self) -> None:
        if self._commits is None:
            return
        await self._commits.close()  # answers everything queued first
        self._commits.conn.close()
        self._commits = None

    async def ping(self) -> None:
        if self._file is not None:
            self._file.check()  # readiness looks every time (one stat)
        await self._run(m.ping)

    async def get_or_create_meta(self, key: str, value: str) -> str:
        return await self._run(lambda conn: m.get_or_create_meta(conn, key, value))

    async def get_meta(self, key: str) -> str | None:
        return await self._run(lambda conn: m.get_meta(conn, key))

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(lambda conn: m.set_meta(conn, key, value))

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
        await self._run(
            lambda conn: m.create_callback_url(
                conn, url_id, provider, metadata, created_at, expires_at, reusable
            )
        )

    async def bind_callback_url(self, url_id: str, task_id: str) -> str | None:
        return await self._run(lambda conn: m.bind_callback_url(conn, url_id, task_id))

    async def get_callback_metadata(self, url_id: str) -> dict[str, Any] | None:
        return await self._run(lambda conn: m.get_callback_metadata(conn, url_id))

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
        return await self._run(lambda conn: e.ingest(conn, event, self._subscribers))

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        return await self._run(lambda conn: e.get_event(conn, event_id))

    async def get_event_raw(self, event_id: str) -> bytes | None:
        return await self._run(lambda conn: e.get_event_raw(conn, event_id))

    async def list_events(self, filters: EventFilter, cursor: str | None, limit: int) -> Page:
        return await self._run(lambda conn: e.list_events(conn, filters, cursor, limit))

    # -- idempotency keys -----------------------------------------------------------------------

    async def claim_idempotency_key(self, claim: IdempotencyClaim) -> EarlierRequest | None:
        return await self._run(lambda conn: idem.claim(conn, claim))

    async def record_idempotent_answer(
        self, scope: str, key: str, token: str, answer: StoredAnswer
    ) -> bool:
        return await self._run(lambda conn: idem.record(conn, scope, key, token, answer))

    async def release_idempotency_key(self, scope: str, key: str, token: str) -> None:
        await self._run(lambda conn: idem.release(conn, scope, key, token))

    async def prune_idempotency_keys(self, now: float, limit: int) -> int:
        return await self._run(lambda conn: idem.prune(conn, now, limit))

    # -- archive jobs ---------------------------------------------------------------------------

    async def claim_archive_jobs(
        self, now: float, limit: int, lease_seconds: float, *, overdue_at: float | None = None
    ) -> list[ArchiveJob]:
        due_by = math.inf if overdue_at is None else overdue_at
        return await self._run(
            lambda conn: arc.claim(conn, now, limit, now + lease_seconds, due_by)
        )

    async def extend_archive_lease(self, event_id: str, lease_token: str, until: float) -> bool:
        return await self._run(lambda conn: arc.extend(conn, event_id, lease_token, until))

    async def record_archive_outcome(self, outcome: ArchiveOutcome) -> bool:
        return await self._run(lambda conn: arc.record(conn, outcome))

    async def get_archive_job(self, event_id: str) -> ArchiveJob | None:
        return await self._run(lambda conn: arc.get(conn, event_id))

    async def list_archive_jobs(self, status: str | None, cursor: str | None, limit: int) -> Page:
        return await self._run(lambda conn: arc.list_jobs(conn, status, cursor, limit))

    async def retry_archive_job(
        self, event_id: str, now: float, deadline_at: float
    ) -> ArchiveJob | None:
        return await self._run(lambda conn: arc.retry(conn, event_id, now, deadline_at))

    async def archive_counts(self, now: float) -> dict[str, Any]:
        return await self._run(lambda conn: arc.counts(conn, now))

    async def release_archive_leases(self, leases: list[tuple[str, str]] | None = None) -> int:
        return await self._run(lambda conn: arc.release_leases(conn, leases))

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
            self._changing_subscribers(lambda conn: subs.create_subscriber(conn, subscriber))
        )

    async def get_subscriber(self, subscriber_id: str) -> Subscriber | None:
        now = self.clock()
        return await self._run(lambda conn: subs.get_subscriber(conn, subscriber_id, now))

    async def list_subscribers(self, cursor: str | None, limit: int) -> Page:
        now = self.clock()
        return await self._run(lambda conn: subs.list_subscribers(conn, cursor, limit, now))

    async def update_subscriber(
        self, subscriber_id: str, changes: dict[str, Any]
    ) -> Subscriber | None:
        now = self.clock()
        return await self._run(
            self._changing_subscribers(
                lambda conn: subs.update_subscriber(conn, subscriber_id, changes, now)
            )
        )

    async def delete_subscriber(self, subscriber_id: str, now: float) -> bool:
        return await self._run(
            self._changing_subscribers(
                lambda conn: subs.delete_subscriber(conn, subscriber_id, now)
            )
        )

    async def rotate_secret(
        self, subscriber_id: str, new_secret: str, previous_valid_until: float
    ) -> Subscriber | None:
        now = self.clock()
        return await self._run(
            self._changing_subscribers(
                lambda conn: subs.rotate_secret(
                    conn, subscriber_id, new_secret, previous_valid_until, now
                )
            )
        )

    # -- ops console sessions ------------------------------------------------------------------

    async def create_ops_session(
        self,
        session_id: str,
        created_at: float,
        expires_at: float,
        *,
        scope: str = "admin",
        key_id: str | None = None,
    ) -> None:
        await self._run(
            lambda conn: m.create_ops_session(
                conn, session_id, created_at, expires_at, scope, key_id
            )
        )

    async def ops_session_live(self, session_id: str, now: float) -> str | None:
        return await self._run(lambda conn: m.ops_session_live(conn, session_id, now))

    async def revoke_ops_session(self, session_id: str, now: float) -> None:
        await self._run(lambda conn: m.revoke_ops_session(conn, session_id, now))

    # -- scoped API keys -----------------------------------------------------------------------

    async def create_api_key(self, key: ApiKey) -> None:
        await self._run(lambda conn: keys.create(conn, key))

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        return await self._run(lambda conn: keys.by_hash(conn, key_hash))

    async def list_api_keys(self) -> list[ApiKey]:
        return await self._run(keys.list_all)

    async def revoke_api_key(self, key_id: str, now: float) -> ApiKey | None:
        return await self._run(lambda conn: keys.revoke(conn, key_id, now))

    async def touch_api_key(self, key_id: str, now: float, every: float) -> None:
        await self._run(lambda conn: keys.touch(conn, key_id, now, every))

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

    async def consecutive_failures(self) -> dict[str, int]:
        return await self.read(sqlite_ops.consecutive_failures)
