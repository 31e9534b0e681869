"""PostgreSQL store: one database shared by several relay replicas.

Each method is one transaction on a pooled connection (``psycopg_pool``); answers come only
after the commit. What SQLite gets from running everything on one thread, this store gets from
the database itself:

- ``ingest`` deduplicates with ``INSERT ... ON CONFLICT (dedup_key) DO NOTHING`` and decides
  "superseded" with ``INSERT INTO tasks ... ON CONFLICT DO NOTHING``, so replicas racing on the
  same callback, or on two different terminal statuses, emit exactly one event.
- ``claim_due`` leases with ``FOR UPDATE SKIP LOCKED``: workers of several replicas never
  claim the same delivery, and never wait for each other.
- Two advisory locks (transaction scoped, so a crash cannot leave them held):
  ``LOCK_TASKS`` serializes the ingests of one task, so the order of a task's events (their
  ``seq``) is the order in which they committed, which per-task delivery order relies on.
  ``LOCK_SUBSCRIBERS`` is taken shared by everything that creates deliveries and exclusively
  by subscriber changes, so no delivery is ever created for a subscriber deleted or disabled
  by a transaction that committed first (under READ COMMITTED a plain read could miss it).

Connection and server failures (server down, pool exhausted, disk full, deadlock) surface as
``StorageUnavailable``; the pool reconnects by itself when the server is back.

The SQL is in ``postgres_meta``, ``postgres_keys``, ``postgres_subscribers``,
``postgres_deliveries``, ``postgres_watches`` and ``postgres_ops``; connections and the pipeline in
``postgres_connection``, migrations in ``postgres_schema``; this class runs it. It is over
400 lines all the same: one method per port operation (about fifty), each choosing the
connection or transaction its SQL runs in; splitting the class would only scatter that choice.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import psycopg_pool
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict

from service.clock import Clock, system_clock
from service.errors import StorageUnavailable
from service.store import postgres_archive as pa
from service.store import postgres_deliveries as pd
from service.store import postgres_idempotency as pi
from service.store import postgres_keys as pk
from service.store import postgres_meta as pm
from service.store import postgres_ops
from service.store import postgres_subscribers as ps
from service.store import postgres_watches as pw
from service.store.base import Store
from service.store.budget import ApiBudget, BudgetState
from service.store.idempotency_model import EarlierRequest, IdempotencyClaim, StoredAnswer
from service.store.paging import Page
from service.store.postgres_connection import (
    Pipeline,
    connect_first,
    open_pool,
    wrap_exceptions,
)
from service.store.postgres_schema import MIGRATIONS as MIGRATIONS
from service.store.postgres_schema import migrate, require_migrated
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
from service.store.watch_model import (
    Decision,
    HoldLimits,
    HoldRefused,
    PollRecord,
    Watch,
    WatchFilter,
)


class PostgresStore(Store):
    """PostgreSQL through a small connection pool, shared safely by several relay processes."""

    exclusive = False

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        open_timeout: float = 10.0,
        pool_timeout: float = 5.0,
        connect_timeout: int = 5,
        reconnect_timeout: float = 10.0,
        migrate: bool = True,
        clock: Clock = system_clock,
    ) -> None:
        """``url``: ``postgresql://user@host:port/db?...`` or a libpq ``key=value`` string.

        ``open_timeout`` bounds how long ``open()`` keeps trying to reach the server;
        ``pool_timeout`` how long an operation waits for a connection before it is answered
        ``StorageUnavailable``; ``connect_timeout`` (libpq) bounds one connection attempt.
        While the server is away the pool retries with backoff (1, 2, 4... s) for at most
        ``reconnect_timeout``, then the next operation starts afresh: a short value bounds how
        long the relay stays unavailable after the server is back. ``clock``: the time a
        subscriber's previous secret and a pending delivery's age are judged at.
        """
        self.url = url
        self.clock = clock
        self.migrate = migrate
        self.min_size = min_size
        self.max_size = max_size
        self.open_timeout = open_timeout
        self.pool_timeout = pool_timeout
        self.reconnect_timeout = reconnect_timeout
        params = conninfo_to_dict(url)
        self._kwargs: dict[str, Any] = {
            # Single statements commit on their own; multi-statement methods open a transaction.
            "autocommit": True,
            "connect_timeout": int(params.get("connect_timeout") or connect_timeout),
            "application_name": params.get("application_name") or "callback-relay",
        }
        # For messages: never the password.
        self.where = (
            f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
            f"/{params.get('dbname') or ''}"
        )
        self._pool: psycopg_pool.AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._subscribers: tuple[str | None, list[Subscriber]] = (None, [])
        self._pipeline = Pipeline(self._connection)

    # -- connections ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection in autocommit mode: each statement is its own transaction."""
        if self._pool is None:
            raise StorageUnavailable("The store is not open.")
        with wrap_exceptions():
            async with self._pool.connection() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection inside one transaction, committed when the block ends."""
        if self._pool is None:
            raise StorageUnavailable("The store is not open.")
        with wrap_exceptions():
            async with self._pool.connection() as conn, conn.transaction():
                yield conn

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        deadline = time.monotonic() + self.open_timeout
        conn = await connect_first(self.url, self._kwargs, deadline, self.where)
        try:
            with wrap_exceptions():
                if self.migrate:
                    await migrate(conn, self.on_migration)
                else:
                    await require_migrated(conn)
        finally:
            await conn.close()
        self._pool = await open_pool(
            self.url,
            self._kwargs,
            deadline,
            min_size=self.min_size,
            max_size=self.max_size,
            pool_timeout=self.pool_timeout,
            reconnect_timeout=self.reconnect_timeout,
        )

    async def close(self) -> None:
        await self._pipeline.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def ping(self) -> None:
        async with self._connection() as conn:
            await pm.ping(conn)

    async def get_or_create_meta(self, key: str, value: str) -> str:
        async with self._connection() as conn:
            return await pm.get_or_create_meta(conn, key, value)

    async def get_meta(self, key: str) -> str | None:
        async with self._connection() as conn:
            return await pm.get_meta(conn, key)

    async def set_meta(self, key: str, value: str) -> None:
        async with self._connection() as conn:
            await pm.set_meta(conn, key, value)

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
        async with self._connection() as conn:
            await pm.create_callback_url(
                conn, url_id, provider, metadata, created_at, expires_at, reusable
            )

    async def bind_callback_url(self, url_id: str, task_id: str) -> str | None:
        async with self._connection() as conn:
            return await pm.bind_callback_url(conn, url_id, task_id)

    async def get_callback_metadata(self, url_id: str) -> dict[str, Any] | None:
        async with self._connection() as conn:
            return await pm.get_callback_metadata(conn, url_id)

    # -- watches (SQL in postgres_watches) -----------------------------------------------------

    async def create_watch(self, watch: Watch) -> tuple[Watch, bool]:
        async with self._connection() as conn:
            return await pw.create_watch(conn, watch)

    async def hold_for_confirmation(
        self, watch: Watch, limits: HoldLimits | None = None
    ) -> Watch | HoldRefused | None:
        async with self._transaction() as conn:
            return await pw.hold_for_confirmation(conn, watch, limits)

    async def resolve_conflict(self, watch_id: str, url_id: str | None, now: float) -> Watch | None:
        async with self._connection() as conn:
            return await pw.resolve_conflict(conn, watch_id, url_id, now)

    async def get_watch(self, watch_id: str) -> Watch | None:
        async with self._connection() as conn:
            return await pw.get_watch(conn, watch_id)

    async def decide_suspect(self, decision: Decision) -> tuple[Watch | None, bool]:
        async with self._connection() as conn:
            return await pw.decide_suspect(conn, decision)

    async def undo_decision(self, decision: Decision) -> None:
        async with self._connection() as conn:
            await pw.undo_decision(conn, decision)

    async def list_watches(self, filters: WatchFilter, cursor: str | None, limit: int) -> Page:
        async with self._connection() as conn:
            return await pw.list_watches(conn, filters, cursor, limit)

    async def cancel_watch(self, watch_id: str, now: float) -> Watch | None:
        async with self._connection() as conn:
            return await pw.cancel_watch(conn, watch_id, now)

    async def claim_due_watches(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        shares: Mapping[str, int] | None = None,
        budget: ApiBudget | None = None,
    ) -> list[Watch]:
        if shares is None and budget is not None:
            shares = dict.fromkeys(budget.rates, limit)
        if shares is None:
            async with self._connection() as conn:
                return await pw.claim_due_watches(conn, now, limit, now + lease_seconds)
        async with self._transaction() as conn:
            return await pw.claim_shares(conn, now, limit, now + lease_seconds, shares, budget)

    async def budget_state(self, provider: str, now: float, window: float) -> BudgetState:
        async with self._connection() as conn:
            return await pw.budget_state(conn, provider, now, window)

    async def block_provider(self, provider: str, until: float) -> None:
        async with self._connection() as conn:
            await pw.block_provider(conn, provider, until)

    async def record_poll(self, record: PollRecord) -> None:
        async with self._connection() as conn:
            await pw.record_poll(conn, record)

    async def release_watch_leases(self, watch_ids: list[str] | None = None) -> int:
        async with self._connection() as conn:
            return await pw.release_watch_leases(conn, watch_ids)

    async def prune_watches(self, before: float, limit: int) -> int:
        async with self._connection() as conn:
            return await pw.prune_watches(conn, before, limit)

    # -- events ---------------------------------------------------------------------------------

    async def ingest(self, event: IncomingEvent) -> IngestResult:
        # One statement (INGEST_SQL), sent with the other ingests of this loop iteration in one
        # round trip. The fan-out is computed here from the cached subscriber list; if the list
        # changed since (another replica, the CLI), the function writes nothing and answers
        # 'stale'.
        for _ in range(3):
            version, subscribers = self._subscribers
            if version is None:
                async with self._connection() as conn:
                    self._subscribers = await ps.enabled_subscribers(conn, event.received_at)
                version, subscribers = self._subscribers
            wanted = [
                s.id
                for s in subscribers
                if s.wants(event.provider, event.event_type, event.metadata)
            ]
            row = await self._pipeline.run(pd.INGEST_SQL, pd.ingest_params(event, version, wanted))
            assert row is not None  # noqa: S101 - narrows the type: the statement returns a row
            outcome, event_id, created = row
            if outcome != "stale":
                return IngestResult(outcome, event_id, created)
            self._subscribers = (None, [])
        raise StorageUnavailable("Subscribers kept changing during intake; retry.")

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        async with self._connection() as conn:
            return await pm.get_event(conn, event_id)

    async def get_event_raw(self, event_id: str) -> bytes | None:
        async with self._connection() as conn:
            return await pm.get_event_raw(conn, event_id)

    async def list_events(self, filters: EventFilter, cursor: str | None, limit: int) -> Page:
        async with self._connection() as conn:
            return await pm.list_events(conn, filters, cursor, limit)

    # -- idempotency keys -----------------------------------------------------------------------

    async def claim_idempotency_key(self, claim: IdempotencyClaim) -> EarlierRequest | None:
        async with self._connection() as conn:
            return await pi.claim(conn, claim)

    async def record_idempotent_answer(
        self, scope: str, key: str, token: str, answer: StoredAnswer
    ) -> bool:
        async with self._connection() as conn:
            return await pi.record(conn, scope, key, token, answer)

    async def release_idempotency_key(self, scope: str, key: str, token: str) -> None:
        async with self._connection() as conn:
            await pi.release(conn, scope, key, token)

    async def prune_idempotency_keys(self, now: float, limit: int) -> int:
        async with self._connection() as conn:
            return await pi.prune(conn, now, limit)

    # -- archive jobs ---------------------------------------------------------------------------

    async def claim_archive_jobs(
        self, now: float, limit: int, lease_seconds: float, *, overdue_at: float | None = None
    ) -> list[ArchiveJob]:
        due_by = math.inf if overdue_at is None else overdue_at
        async with self._transaction() as conn:
            return await pa.claim(conn, now, limit, now + lease_seconds, due_by)

    async def extend_archive_lease(self, event_id: str, lease_token: str, until: float) -> bool:
        async with self._connection() as conn:
            return await pa.extend(conn, event_id, lease_token, until)

    async def record_archive_outcome(self, outcome: ArchiveOutcome) -> bool:
        async with self._transaction() as conn:
            return await pa.record(conn, outcome)

    async def get_archive_job(self, event_id: str) -> ArchiveJob | None:
        async with self._connection() as conn:
            return await pa.get(conn, event_id)

    async def list_archive_jobs(self, status: str | None, cursor: str | None, limit: int) -> Page:
        async with self._connection() as conn:
            return await pa.list_jobs(conn, status, cursor, limit)

    async def retry_archive_job(
        self, event_id: str, now: float, deadline_at: float
    ) -> ArchiveJob | None:
        async with self._transaction() as conn:
            return await pa.retry(conn, event_id, now, deadline_at)

    async def archive_counts(self, now: float) -> dict[str, Any]:
        async with self._connection() as conn:
            return await pa.counts(conn, now)

    async def release_archive_leases(self, leases: list[tuple[str, str]] | None = None) -> int:
        async with self._transaction() as conn:
            return await pa.release_leases(conn, leases)

    # -- subscribers ----------------------------------------------------------------------------

    async def create_subscriber(self, subscriber: Subscriber) -> None:
        async with self._transaction() as conn:
            await ps.create_subscriber(conn, subscriber)

    async def get_subscriber(self, subscriber_id: str) -> Subscriber | None:
        async with self._connection() as conn:
            return await ps.get_subscriber(conn, subscriber_id, self.clock())

    async def list_subscribers(self, cursor: str | None, limit: int) -> Page:
        async with self._connection() as conn:
            return await ps.list_subscribers(conn, cursor, limit, self.clock())

    async def update_subscriber(
        self, subscriber_id: str, changes: dict[str, Any]
    ) -> Subscriber | None:
        async with self._transaction() as conn:
            return await ps.update_subscriber(conn, subscriber_id, changes, self.clock())

    async def delete_subscriber(self, subscriber_id: str, now: float) -> bool:
        async with self._transaction() as conn:
            return await ps.delete_subscriber(conn, subscriber_id, now)

    async def rotate_secret(
        self, subscriber_id: str, new_secret: str, previous_valid_until: float
    ) -> Subscriber | None:
        async with self._transaction() as conn:
            return await ps.rotate_secret(
                conn, subscriber_id, new_secret, previous_valid_until, self.clock()
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
        async with self._transaction() as conn:
            await pm.create_ops_session(conn, session_id, created_at, expires_at, scope, key_id)

    async def ops_session_live(self, session_id: str, now: float) -> str | None:
        async with self._connection() as conn:
            return await pm.ops_session_live(conn, session_id, now)

    async def revoke_ops_session(self, session_id: str, now: float) -> None:
        async with self._connection() as conn:
            await pm.revoke_ops_session(conn, session_id, now)

    # -- scoped API keys -----------------------------------------------------------------------

    async def create_api_key(self, key: ApiKey) -> None:
        async with self._connection() as conn:
            await pk.create(conn, key)

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        async with self._connection() as conn:
            return await pk.by_hash(conn, key_hash)

    async def list_api_keys(self) -> list[ApiKey]:
        async with self._connection() as conn:
            return await pk.list_all(conn)

    async def revoke_api_key(self, key_id: str, now: float) -> ApiKey | None:
        async with self._transaction() as conn:
            return await pk.revoke(conn, key_id, now)

    async def touch_api_key(self, key_id: str, now: float, every: float) -> None:
        async with self._connection() as conn:
            await pk.touch(conn, key_id, now, every)

    # -- deliveries -----------------------------------------------------------------------------

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float, exclude_subscribers: frozenset[str]
    ) -> list[Claim]:
        async with self._connection() as conn:
            return await pd.claim_due(conn, now, limit, now + lease_seconds, exclude_subscribers)

    async def record_attempt(self, record: AttemptRecord) -> None:
        if not record.disable_subscriber:
            # One statement, atomic on its own: batched with this loop iteration's others.
            await self._pipeline.run(pd.record_attempt_sql(record), pd.attempt_params(record))
            return
        async with self._transaction() as conn:
            await pd.record_attempt_disabling(conn, record)

    async def release_leases(self, delivery_ids: list[str] | None = None) -> int:
        async with self._connection() as conn:
            return await pd.release_leases(conn, delivery_ids)

    async def list_deliveries(
        self, filters: DeliveryFilter, cursor: str | None, limit: int
    ) -> Page:
        async with self._connection() as conn:
            return await pd.list_deliveries(conn, filters, cursor, limit)

    async def get_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        async with self._transaction() as conn:
            return await pd.get_delivery(conn, delivery_id)

    async def replay(
        self,
        filters: DeliveryFilter,
        delivery_ids: list[str] | None,
        now: float,
        *,
        force: bool = False,
    ) -> ReplayResult:
        async with self._transaction() as conn:
            return await pd.replay(conn, filters, delivery_ids, now, force)

    async def redeliver(
        self, event_id: str, subscriber_ids: list[str], now: float, *, force: bool = False
    ) -> ReplayResult:
        async with self._transaction() as conn:
            return await pd.redeliver(conn, event_id, subscriber_ids, now, force)

    async def prune(self, before: float, limit: int, failed_before: float | None = None) -> int:
        async with self._transaction() as conn:
            return await pd.prune(conn, before, limit, failed_before)

    async def delivery_counts(self) -> dict[str, Any]:
        async with self._connection() as conn:
            return await pd.delivery_counts(conn, self.clock())

    async def activity(self, since: float) -> dict[str, Any]:
        async with self._transaction() as conn:
            return await postgres_ops.activity(conn, since)

    async def delivery_details(
        self, filters: DeliveryFilter, provider: str | None, limit: int
    ) -> list[dict[str, Any]]:
        now = self.clock()
        async with self._transaction() as conn:
            return await postgres_ops.delivery_details(conn, filters, provider, limit, now)

    async def waiting_callback_counts(self) -> dict[str, int]:
        async with self._connection() as conn:
            return await postgres_ops.waiting_callback_counts(conn)

    async def active_watch_counts(self) -> dict[str, int]:
        async with self._connection() as conn:
            return await postgres_ops.active_watch_counts(conn)

    async def consecutive_failures(self) -> dict[str, int]:
        async with self._connection() as conn:
            return await postgres_ops.consecutive_failures(conn)
