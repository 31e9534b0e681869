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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from importlib import resources
from typing import Any

import psycopg
import psycopg_pool
import structlog
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict

from service import ids
from service.errors import StorageUnavailable
from service.store import postgres_ops
from service.store import postgres_watches as pw
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
from service.store.filters import delivery_clauses, event_clauses, newer_delivery

# Shared with SQLite so that both stores answer the admin API with the very same JSON.
from service.store.sqlite_deliveries import DELIVERY_COLUMNS, attempt_json, delivery_json
from service.store.watch_model import (
    Decision,
    HoldLimits,
    HoldRefused,
    PollRecord,
    Watch,
    WatchFilter,
)

log = structlog.get_logger("service.store")

#: Applied in order; a file's position (from 1) is its version in ``schema_migrations``.
MIGRATIONS = (
    "postgres_001_initial.sql",
    "postgres_002_watches.sql",
    "postgres_003_ingest.sql",
    "postgres_004_ops_sessions.sql",
    "postgres_005_store.sql",
    "postgres_006_attribution.sql",
    "postgres_007_flood.sql",
    "postgres_008_budget.sql",
    "postgres_009_suspect.sql",
)

# Advisory lock keys. Arbitrary constants, chosen not to collide with other applications that
# may share the database. The one-key form (migrations) and the two-key form (the rest) are
# distinct lock spaces in PostgreSQL.
LOCK_MIGRATIONS = 0x52454C4159  # "RELAY"
LOCK_SUBSCRIBERS = 0x524C5953  # key1 of (LOCK_SUBSCRIBERS, 0)
LOCK_TASKS = 0x524C5954  # key1 of (LOCK_TASKS, hashtext(provider/task_id))

SUBSCRIBER_COLUMNS = (
    "id, url, description, providers, event_types, enabled, disabled_reason, secret,"
    " previous_secret, previous_expires_at, created_at, updated_at"
)
_UPDATABLE = {"url", "description", "providers", "event_types", "enabled"}


@contextlib.contextmanager
def wrap_exceptions() -> Iterator[None]:
    """Turn "the database cannot answer now" into ``StorageUnavailable`` (HTTP 503).

    ``OperationalError`` covers lost and refused connections, server shutdown, disk full,
    statement timeouts and deadlocks; the pool's ``PoolTimeout`` and ``PoolClosed`` derive from
    it. Anything else (integrity or programming errors) is a bug and propagates unchanged.
    """
    try:
        yield
    except psycopg_pool.PoolClosed as exc:
        raise StorageUnavailable("The store is not open.") from exc
    except psycopg_pool.PoolTimeout as exc:
        raise StorageUnavailable(f"No PostgreSQL connection available: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise StorageUnavailable(f"PostgreSQL could not commit: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _subscriber_from_row(row: tuple[Any, ...], now: float) -> Subscriber:
    secrets = [row[7]]
    if row[8] and row[9] and row[9] > now:
        secrets.append(row[8])
    return Subscriber(
        id=row[0],
        url=row[1],
        description=row[2],
        providers=None if row[3] is None else tuple(row[3]),
        event_types=None if row[4] is None else tuple(row[4]),
        enabled=bool(row[5]),
        disabled_reason=row[6],
        secrets=tuple(secrets),
        created_at=row[10],
        updated_at=row[11],
    )


def _text_list(value: Any) -> list[str] | None:
    return None if value is None else [str(item) for item in value]


async def _lock_subscribers(conn: AsyncConnection[Any], *, exclusive: bool) -> None:
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await conn.execute(f"SELECT {function}(%s::int, 0)", (LOCK_SUBSCRIBERS,))


async def _bump_subscribers_version(conn: AsyncConnection[Any]) -> None:
    await conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES ('subscribers_version', '1')"
        " ON CONFLICT (key) DO UPDATE SET value = (relay_meta.value::bigint + 1)::text"
    )


async def _migrate(
    conn: AsyncConnection[Any], progress: Callable[[int, int, str], None] | None = None
) -> None:
    """Apply the migrations this database lacks, under a lock: replicas may start together.

    Migrations only ever add. A database already migrated further (a newer replica started
    first) is left as it is.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (LOCK_MIGRATIONS,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        applied = {row[0] for row in await cursor.fetchall()}
        for version, name in enumerate(MIGRATIONS, start=1):
            if version in applied:
                continue
            if progress is not None:
                progress(version, len(MIGRATIONS), name)
            script = resources.files("service.store.sql").joinpath(name).read_text()
            await conn.execute(script)  # no parameters: psycopg sends it as one simple query
            await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            log.info("store_migrated", version=version, migration=name)


async def _require_migrated(conn: AsyncConnection[Any]) -> None:
    """Refuse to run on a schema that lacks migrations (``relay serve --no-migrate``)."""
    cursor = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cursor.fetchone()
    applied: set[int] = set()
    if row and row[0]:
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        applied = {r[0] for r in await cursor.fetchall()}
    missing = [v for v in range(1, len(MIGRATIONS) + 1) if v not in applied]
    if missing:
        raise StorageUnavailable(
            f"The database lacks migrations {missing}; run `relay migrate` first."
        )


class _IdleCheck:
    """Pool callbacks: test a connection on checkout only if it sat idle for a while.

    A connection that died while idle (server restart, failover, a firewall dropping quiet
    connections) is then replaced instead of failing the request that drew it. A connection
    reused within ``after`` seconds is not tested: under load that saves a round trip on every
    transaction, and a connection used that recently is very likely alive.
    """

    def __init__(self, after: float = 1.0) -> None:
        self.after = after
        self._since: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    async def returned(self, conn: AsyncConnection[Any]) -> None:
        self._since[conn] = time.monotonic()

    async def check(self, conn: AsyncConnection[Any]) -> None:
        since = self._since.get(conn)
        if since is None or time.monotonic() - since > self.after:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)


class _Pipeline:
    """Statements queued during one loop iteration go to PostgreSQL together, on one pooled
    connection in pipeline mode: one network round trip for the lot. Measured on this machine
    it took PostgreSQL intake from 0.44x to 0.77x of SQLite's, and made recording attempts
    several times cheaper.

    The batch is one transaction, committed whole or not at all (``BEGIN`` ... ``COMMIT`` in
    the pipeline; without them PostgreSQL would run it as one implicit transaction anyway).
    A statement that fails must fail alone, so when the batch fails on a connection that is
    still sound, nothing of it committed and each statement is run again on its own: the others
    get their results, the culprit its own error. Only a lost connection fails the whole batch
    (``StorageUnavailable``); the batch may then have committed, which is safe for what is sent
    here (a callback that is retried is answered as a duplicate; an attempt record is applied
    to a leased delivery).
    """

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.queue: list[tuple[str, Any, asyncio.Future[tuple[Any, ...] | None]]] = []

    def run(self, sql: str, params: Any) -> asyncio.Future[tuple[Any, ...] | None]:
        """The statement's first row (None if it returns none), once it has committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, ...] | None] = loop.create_future()
        self.queue.append((sql, params, future))
        if len(self.queue) == 1:
            loop.call_soon(self._start)
        return future

    def _start(self) -> None:
        batch, self.queue = self.queue, []
        task = asyncio.ensure_future(self._send(batch))
        self.store._background.add(task)
        task.add_done_callback(self.store._background.discard)

    async def _send(
        self, batch: list[tuple[str, Any, asyncio.Future[tuple[Any, ...] | None]]]
    ) -> None:
        try:
            async with self.store._connection() as conn:
                try:
                    rows = await _run_together(conn, [(sql, params) for sql, params, _ in batch])
                except psycopg.Error as exc:
                    if conn.broken or len(batch) == 1:
                        raise
                    log.warning(
                        "store_batch_failed",
                        statements=len(batch),
                        error=_first_line(exc),
                        detail="running each statement of the batch on its own",
                    )
                    for sql, params, future in batch:
                        await _run_alone(conn, sql, params, future)
                    return
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), row in zip(batch, rows, strict=True):
            if not future.done():
                future.set_result(row)


async def _run_together(
    conn: AsyncConnection[Any], statements: list[tuple[str, Any]]
) -> list[tuple[Any, ...] | None]:
    """Run ``statements`` in one pipelined transaction; their first rows, once committed."""
    async with conn.pipeline():
        async with conn.transaction():
            cursors = [await conn.execute(sql, params) for sql, params in statements]
        return [await cursor.fetchone() if cursor.description else None for cursor in cursors]


async def _run_alone(
    conn: AsyncConnection[Any],
    sql: str,
    params: Any,
    future: asyncio.Future[tuple[Any, ...] | None],
) -> None:
    """Run one statement in its own transaction and settle ``future`` with its outcome."""
    try:
        with wrap_exceptions():
            cursor = await conn.execute(sql, params)
            row = await cursor.fetchone() if cursor.description else None
    except Exception as exc:
        if not future.done():
            future.set_exception(exc)
        if conn.broken:
            raise
        return
    if not future.done():
        future.set_result(row)


INGEST_SQL = (
    "SELECT outcome, event_id, deliveries FROM relay_ingest(%s, %s, %s, %s, %s,"
    " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::text[], %s::text[])"
)

RECORD_ATTEMPT_SQL = (
    "WITH attempt AS ("
    "  INSERT INTO attempts (delivery_id, attempted_at, trigger, status_code,"
    "  latency_ms, error, response_excerpt)"
    "  VALUES (%(id)s, %(at)s, %(trigger)s, %(code)s, %(latency)s, %(error)s,"
    "  %(excerpt)s)"
    ")"
    " UPDATE deliveries SET"
    " status = CASE WHEN status = 'pending' THEN %(outcome)s ELSE status END,"
    " next_attempt_at = CASE WHEN status = 'pending' THEN %(next)s::double precision"
    "  ELSE next_attempt_at END,"
    " last_error = CASE WHEN status = 'pending' THEN %(last_error)s::text"
    "  ELSE last_error END,"
    " attempt_count = attempt_count + 1, cycle_attempts = cycle_attempts + 1,"
    " lease_until = NULL, updated_at = %(at)s"
    " WHERE id = %(id)s RETURNING subscriber_id"
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
    ) -> None:
        """``url``: ``postgresql://user@host:port/db?...`` or a libpq ``key=value`` string.

        ``open_timeout`` bounds how long ``open()`` keeps trying to reach the server;
        ``pool_timeout`` how long an operation waits for a connection before it is answered
        ``StorageUnavailable``; ``connect_timeout`` (libpq) bounds one connection attempt.
        While the server is away the pool retries with backoff (1, 2, 4... s) for at most
        ``reconnect_timeout``, then the next operation starts afresh: a short value bounds how
        long the relay stays unavailable after the server is back.
        """
        self.url = url
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
        self._idle = _IdleCheck()
        self._pipeline = _Pipeline(self)
        self._background: set[asyncio.Task[None]] = set()

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

    async def _connect_once(self, deadline: float) -> AsyncConnection[Any]:
        """A first connection, retried until ``deadline``: the server may be starting too."""
        delay = 0.1
        while True:
            try:
                return await AsyncConnection.connect(self.url, **self._kwargs)
            except psycopg.OperationalError as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StorageUnavailable(
                        f"PostgreSQL not reachable at {self.where}: {_first_line(exc)}"
                    ) from exc
                log.warning("store_connect_failed", where=self.where, error=_first_line(exc))
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 2.0)

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        deadline = time.monotonic() + self.open_timeout
        conn = await self._connect_once(deadline)
        try:
            with wrap_exceptions():
                if self.migrate:
                    await _migrate(conn, self.on_migration)
                else:
                    await _require_migrated(conn)
        finally:
            await conn.close()
        pool: psycopg_pool.AsyncConnectionPool[AsyncConnection[Any]] = (
            psycopg_pool.AsyncConnectionPool(
                self.url,
                kwargs=self._kwargs,
                min_size=self.min_size,
                max_size=self.max_size,
                open=False,
                timeout=self.pool_timeout,
                reconnect_timeout=self.reconnect_timeout,
                name="relay-postgres",
                configure=self._idle.returned,
                reset=self._idle.returned,
                check=self._idle.check,
            )
        )
        try:
            with wrap_exceptions():
                await pool.open(wait=True, timeout=max(deadline - time.monotonic(), 1.0))
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pipeline.queue:
            self._pipeline._start()
        await asyncio.gather(*self._background, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO relay_meta (key, value) VALUES ('last_ping', now()::text)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )

    async def get_or_create_meta(self, key: str, value: str) -> str:
        async with self._connection() as conn:
            # One statement: the no-op update makes RETURNING yield the row in both cases.
            cursor = await conn.execute(
                "INSERT INTO relay_meta (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = relay_meta.value RETURNING value",
                (key, value),
            )
            row = await cursor.fetchone()
        assert row is not None  # noqa: S101 - narrows the type: the statement returns a row
        return str(row[0])

    async def get_meta(self, key: str) -> str | None:
        async with self._connection() as conn:
            cursor = await conn.execute("SELECT value FROM relay_meta WHERE key = %s", (key,))
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

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
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO callback_urls"
                " (id, provider, metadata, created_at, expires_at, reusable)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (url_id, provider, text, created_at, expires_at, reusable),
            )

    async def bind_callback_url(self, url_id: str, task_id: str) -> str | None:
        async with self._connection() as conn:
            # One statement: a racing replica's UPDATE waits for this row lock, then finds
            # task_id set (READ COMMITTED re-reads the row) and keeps the first binding.
            cursor = await conn.execute(
                "UPDATE callback_urls SET task_id = coalesce(task_id, %s)"
                " WHERE id = %s AND NOT reusable RETURNING task_id",
                (task_id, url_id),
            )
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def get_callback_metadata(self, url_id: str) -> dict[str, Any] | None:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT metadata FROM callback_urls WHERE id = %s", (url_id,)
            )
            row = await cursor.fetchone()
        return None if row is None else json.loads(row[0])

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
        # One statement: relay_ingest (migration 3) takes the locks and decides server-side,
        # sent with the other ingests of this loop iteration in one round trip. The fan-out is
        # computed here from the cached subscriber list; if the list changed since (another
        # replica, the CLI), the function writes nothing and answers 'stale'.
        for _ in range(3):
            version, subscribers = self._subscribers
            if version is None:
                async with self._connection() as conn:
                    version, subscribers = await self._load_subscribers(conn, event.received_at)
            wanted = [s.id for s in subscribers if s.wants(event.provider, event.event_type)]
            row = await self._pipeline.run(
                INGEST_SQL,
                (
                    LOCK_SUBSCRIBERS,
                    LOCK_TASKS,
                    event.event_id,
                    event.provider,
                    event.task_id,
                    event.status,
                    event.progress,
                    event.dedup_key,
                    event.received_at,
                    event.url_id,
                    event.body,
                    event.raw_body,
                    event.terminal,
                    version,
                    [ids.new_id("dlv") for _ in wanted],
                    wanted,
                ),
            )
            assert row is not None  # noqa: S101 - narrows the type: the statement returns a row
            outcome, event_id, created = row
            if outcome != "stale":
                return IngestResult(outcome, event_id, created)
            self._subscribers = (None, [])
        raise StorageUnavailable("Subscribers kept changing during intake; retry.")

    async def _load_subscribers(
        self, conn: AsyncConnection[Any], now: float
    ) -> tuple[str, list[Subscriber]]:
        """The enabled subscribers and their version, read in one statement (one snapshot)."""
        columns = ", ".join(f"s.{c.strip()}" for c in SUBSCRIBER_COLUMNS.split(","))
        cursor = await conn.execute(
            "WITH v AS (SELECT coalesce((SELECT value FROM relay_meta"
            " WHERE key = 'subscribers_version'), '0') AS version)"
            f" SELECT v.version, {columns} FROM v"
            " LEFT JOIN subscribers s ON s.enabled ORDER BY s.seq"
        )
        rows = await cursor.fetchall()
        version = str(rows[0][0])
        subscribers = [_subscriber_from_row(row[1:], now) for row in rows if row[1] is not None]
        self._subscribers = (version, subscribers)
        return version, subscribers

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        async with self._connection() as conn:
            cursor = await conn.execute("SELECT body, state FROM events WHERE id = %s", (event_id,))
            row = await cursor.fetchone()
        if row is None:
            return None
        event: dict[str, Any] = json.loads(row[0])
        event["relay"] = {"state": row[1]}
        return event

    async def get_event_raw(self, event_id: str) -> bytes | None:
        async with self._connection() as conn:
            cursor = await conn.execute("SELECT raw_body FROM events WHERE id = %s", (event_id,))
            row = await cursor.fetchone()
        return None if row is None else bytes(row[0])

    async def list_events(self, filters: EventFilter, cursor: str | None, limit: int) -> Page:
        clauses, params = event_clauses(filters, decode_cursor(cursor), "%s")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._connection() as conn:
            result = await conn.execute(
                f"SELECT seq, body FROM events {where} ORDER BY seq DESC LIMIT %s",
                (*params, limit + 1),
            )
            rows = await result.fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([body for _, body in rows], encode_cursor(rows[-1][0]) if more else None)

    # -- subscribers ----------------------------------------------------------------------------

    async def create_subscriber(self, subscriber: Subscriber) -> None:
        async with self._transaction() as conn:
            await _lock_subscribers(conn, exclusive=True)
            await conn.execute(
                "INSERT INTO subscribers (id, url, description, providers, event_types, enabled,"
                " secret, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s::text[], %s::text[], %s, %s, %s, %s)",
                (
                    subscriber.id,
                    subscriber.url,
                    subscriber.description,
                    _text_list(subscriber.providers),
                    _text_list(subscriber.event_types),
                    subscriber.enabled,
                    subscriber.secrets[0],
                    subscriber.created_at,
                    subscriber.updated_at,
                ),
            )
            await _bump_subscribers_version(conn)

    async def get_subscriber(self, subscriber_id: str) -> Subscriber | None:
        now = time.time()
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE id = %s", (subscriber_id,)
            )
            row = await cursor.fetchone()
        return None if row is None else _subscriber_from_row(row, now)

    async def list_subscribers(self, cursor: str | None, limit: int) -> Page:
        now = time.time()
        after = decode_cursor(cursor) or 0
        async with self._connection() as conn:
            result = await conn.execute(
                f"SELECT seq, {SUBSCRIBER_COLUMNS} FROM subscribers"
                " WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, limit + 1),
            )
            rows = await result.fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(
            [_subscriber_from_row(row[1:], now) for row in rows],
            encode_cursor(rows[-1][0]) if more else None,
        )

    async def update_subscriber(
        self, subscriber_id: str, changes: dict[str, Any]
    ) -> Subscriber | None:
        assert set(changes) <= _UPDATABLE, changes  # noqa: S101 - callers pass validated fields only
        now = time.time()
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key in ("providers", "event_types"):
                value = _text_list(value)
            elif key == "enabled":
                value = bool(value)
                values["disabled_reason"] = None if value else "disabled by an operator"
            values[key] = value
        values["updated_at"] = now
        casts = {"providers": "::text[]", "event_types": "::text[]"}
        assignments = ", ".join(f"{key} = %s{casts.get(key, '')}" for key in values)
        async with self._transaction() as conn:
            await _lock_subscribers(conn, exclusive=True)
            cursor = await conn.execute(
                f"UPDATE subscribers SET {assignments} WHERE id = %s"
                f" RETURNING {SUBSCRIBER_COLUMNS}",
                (*values.values(), subscriber_id),
            )
            row = await cursor.fetchone()
            if row is not None:
                await _bump_subscribers_version(conn)
        return None if row is None else _subscriber_from_row(row, now)

    async def delete_subscriber(self, subscriber_id: str, now: float) -> bool:
        async with self._transaction() as conn:
            await _lock_subscribers(conn, exclusive=True)
            cursor = await conn.execute(
                "DELETE FROM subscribers WHERE id = %s RETURNING id", (subscriber_id,)
            )
            if await cursor.fetchone() is None:
                return False
            await conn.execute(
                "UPDATE deliveries SET status = 'canceled', last_error = 'subscriber deleted',"
                " lease_until = NULL, updated_at = %s"
                " WHERE subscriber_id = %s AND status = 'pending'",
                (now, subscriber_id),
            )
            await _bump_subscribers_version(conn)
        return True

    async def rotate_secret(
        self, subscriber_id: str, new_secret: str, previous_valid_until: float
    ) -> Subscriber | None:
        now = time.time()
        async with self._transaction() as conn:
            await _lock_subscribers(conn, exclusive=True)
            cursor = await conn.execute(
                "UPDATE subscribers SET previous_secret = secret, previous_expires_at = %s,"
                f" secret = %s, updated_at = %s WHERE id = %s RETURNING {SUBSCRIBER_COLUMNS}",
                (previous_valid_until, new_secret, now, subscriber_id),
            )
            row = await cursor.fetchone()
            if row is not None:
                await _bump_subscribers_version(conn)
        return None if row is None else _subscriber_from_row(row, now)

    # -- ops console sessions ------------------------------------------------------------------

    async def create_ops_session(
        self, session_id: str, created_at: float, expires_at: float
    ) -> None:
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM ops_sessions WHERE expires_at < %s", (created_at,))
            await conn.execute(
                "INSERT INTO ops_sessions (id, created_at, expires_at) VALUES (%s, %s, %s)",
                (session_id, created_at, expires_at),
            )

    async def ops_session_live(self, session_id: str, now: float) -> bool:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT 1 FROM ops_sessions WHERE id = %s AND revoked_at IS NULL"
                " AND expires_at > %s",
                (session_id, now),
            )
            return await cursor.fetchone() is not None

    async def revoke_ops_session(self, session_id: str, now: float) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE ops_sessions SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (now, session_id),
            )

    # -- deliveries -----------------------------------------------------------------------------

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float, exclude_subscribers: frozenset[str]
    ) -> list[Claim]:
        # One statement. SKIP LOCKED passes over rows another worker is leasing right now;
        # a row leased and committed meanwhile is re-checked (lease_until) before it is taken.
        # The per-task check does not look at leases: while the head of a line is pending,
        # in flight or not, nothing behind it is claimable.
        async with self._connection() as conn:
            cursor = await conn.execute(
                "WITH due AS ("
                "  SELECT d.seq FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
                "  WHERE d.status = 'pending' AND d.next_attempt_at <= %(now)s"
                "  AND (d.lease_until IS NULL OR d.lease_until <= %(now)s) AND s.enabled"
                "  AND d.subscriber_id <> ALL(%(exclude)s::text[])"
                "  AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending'"
                "   AND p.subscriber_id = d.subscriber_id AND p.task_key = d.task_key"
                "   AND p.seq < d.seq)"
                "  ORDER BY d.next_attempt_at, d.seq LIMIT %(limit)s"
                "  FOR UPDATE OF d SKIP LOCKED"
                "), leased AS ("
                "  UPDATE deliveries SET lease_until = %(lease_until)s FROM due"
                "  WHERE deliveries.seq = due.seq"
                "  RETURNING deliveries.seq, deliveries.id, deliveries.event_id,"
                "  deliveries.subscriber_id, deliveries.next_attempt_at,"
                "  deliveries.cycle_attempts, deliveries.attempt_count, deliveries.task_key"
                ")"
                " SELECT l.id, l.event_id, l.subscriber_id, s.url, s.secret, s.previous_secret,"
                " s.previous_expires_at, e.body, l.cycle_attempts, l.attempt_count, l.task_key"
                " FROM leased l JOIN subscribers s ON s.id = l.subscriber_id"
                " JOIN events e ON e.id = l.event_id ORDER BY l.next_attempt_at, l.seq",
                {
                    "now": now,
                    "exclude": sorted(exclude_subscribers),
                    "limit": limit,
                    "lease_until": now + lease_seconds,
                },
            )
            rows = await cursor.fetchall()
        return [Claim.from_row(row, now) for row in rows]

    async def record_attempt(self, record: AttemptRecord) -> None:
        last_error = (
            None
            if record.outcome == "succeeded"
            else (record.error or f"HTTP {record.status_code}")
        )
        # A delivery that stopped being pending while in flight (its subscriber was deleted)
        # keeps its status: the attempt is logged and counted, but never re-opens it.
        params = {
            "id": record.delivery_id,
            "at": record.attempted_at,
            "trigger": record.trigger,
            "code": record.status_code,
            "latency": record.latency_ms,
            "error": record.error,
            "excerpt": record.response_excerpt,
            "outcome": record.outcome,
            "next": record.next_attempt_at,
            "last_error": last_error,
        }
        if not record.disable_subscriber:
            # One statement, atomic on its own: batched with this loop iteration's others.
            await self._pipeline.run(RECORD_ATTEMPT_SQL, params)
            return
        async with self._transaction() as conn:
            # Before touching any row: subscriber changes take this lock first, then rows.
            await _lock_subscribers(conn, exclusive=True)
            cursor = await conn.execute(RECORD_ATTEMPT_SQL, params)
            row = await cursor.fetchone()
            if row is not None:
                await conn.execute(
                    "UPDATE subscribers SET enabled = false, disabled_reason = %s,"
                    " updated_at = %s WHERE id = %s",
                    (record.disable_subscriber, record.attempted_at, row[0]),
                )
                await _bump_subscribers_version(conn)

    async def release_leases(self, delivery_ids: list[str] | None = None) -> int:
        async with self._connection() as conn:
            if delivery_ids is None:
                cursor = await conn.execute(
                    "UPDATE deliveries SET lease_until = NULL"
                    " WHERE status = 'pending' AND lease_until IS NOT NULL"
                )
            else:
                cursor = await conn.execute(
                    "UPDATE deliveries SET lease_until = NULL WHERE id = ANY(%s::text[])",
                    (list(delivery_ids),),
                )
            return cursor.rowcount

    async def list_deliveries(
        self, filters: DeliveryFilter, cursor: str | None, limit: int
    ) -> Page:
        clauses, params = delivery_clauses(filters, "%s")
        before = decode_cursor(cursor)
        if before is not None:
            clauses.append("seq < %s")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._connection() as conn:
            result = await conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries {where} ORDER BY seq DESC LIMIT %s",
                (*params, limit + 1),
            )
            rows = await result.fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(
            [delivery_json(row) for row in rows], encode_cursor(rows[-1][0]) if more else None
        )

    async def get_delivery(self, delivery_id: str) -> dict[str, Any] | None:

        async with self._transaction() as conn:  # one snapshot for the delivery and its attempts
            cursor = await conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = %s", (delivery_id,)
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            cursor = await conn.execute(
                "SELECT attempted_at, trigger, status_code, latency_ms, error, response_excerpt"
                " FROM attempts WHERE delivery_id = %s ORDER BY id",
                (delivery_id,),
            )
            attempts = await cursor.fetchall()
        delivery = delivery_json(row)
        delivery["attempts"] = [attempt_json(a) for a in attempts]
        return delivery

    async def replay(
        self,
        filters: DeliveryFilter,
        delivery_ids: list[str] | None,
        now: float,
        *,
        force: bool = False,
    ) -> ReplayResult:
        # Qualified: the lock statement below joins other tables with the same columns.
        if delivery_ids is not None:
            selection, params = "deliveries.id = ANY(%s::text[])", [list(delivery_ids)]
        else:
            clauses, params = delivery_clauses(filters, "%s", table="deliveries")
            selection = " AND ".join(clauses) if clauses else "true"
        chosen = (
            f"deliveries.status = 'failed' AND {selection} AND deliveries.subscriber_id IN"
            " (SELECT id FROM subscribers WHERE enabled)"
        )
        newer: dict[str, str] = {}
        async with self._transaction() as conn:
            # Shared: a subscriber deleted or disabled meanwhile gets no revived delivery.
            await _lock_subscribers(conn, exclusive=False)
            if not force:
                # Lock the pending deliveries of later events in the chosen ones' lines: a
                # worker's claim (SKIP LOCKED) cannot start one of them between the check and
                # the commit. One it started first is waited for and then seen in flight.
                await conn.execute(
                    "SELECT n.id FROM deliveries JOIN events e ON e.id = deliveries.event_id"
                    " JOIN events ne ON ne.provider = e.provider AND ne.task_id = e.task_id"
                    " AND ne.seq > e.seq JOIN deliveries n ON n.event_id = ne.id"
                    " AND n.subscriber_id = deliveries.subscriber_id"
                    f" WHERE {chosen} AND n.status = 'pending'"
                    " ORDER BY n.seq FOR SHARE OF n",
                    params,
                )
                cursor = await conn.execute(
                    f"SELECT id, newer FROM (SELECT id, {newer_delivery('%s')} AS newer"
                    f" FROM deliveries WHERE {chosen}) c WHERE newer IS NOT NULL",
                    (now, *params),
                )
                newer = {row[0]: row[1] for row in await cursor.fetchall()}
            held = f" AND {newer_delivery('%s')} IS NULL" if not force else ""
            cursor = await conn.execute(
                "UPDATE deliveries SET status = 'pending', cycle_attempts = 0,"
                " next_attempt_at = %s, lease_until = NULL, updated_at = %s"
                f" WHERE {chosen}{held}",
                (now, now, *params, *([now] if not force else [])),
            )
            return ReplayResult(cursor.rowcount, newer)

    async def redeliver(
        self, event_id: str, subscriber_ids: list[str], now: float, *, force: bool = False
    ) -> ReplayResult:
        async with self._transaction() as conn:
            await _lock_subscribers(conn, exclusive=False)
            cursor = await conn.execute(
                "SELECT provider, task_id, seq FROM events WHERE id = %s AND state = 'emitted'",
                (event_id,),
            )
            row = await cursor.fetchone()
            if row is None or not subscriber_ids:
                return ReplayResult(0)
            provider, task_id, seq = row
            task_key = f"{provider}/{task_id}"
            # The task's intake lock: a later event's fan-out either committed before (and is
            # seen below) or comes after, behind the deliveries made here.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s::int, hashtext(%s))", (LOCK_TASKS, task_key)
            )
            newer: dict[str, str] = {}
            if not force:
                cursor = await conn.execute(
                    "SELECT DISTINCT ON (n.subscriber_id) n.subscriber_id, n.id"
                    " FROM events ne JOIN deliveries n ON n.event_id = ne.id"
                    " WHERE ne.provider = %s AND ne.task_id = %s AND ne.seq > %s"
                    " AND n.subscriber_id = ANY(%s::text[])"
                    " ORDER BY n.subscriber_id, ne.seq DESC, n.seq DESC",
                    (provider, task_id, seq, list(subscriber_ids)),
                )
                newer = {row[0]: row[1] for row in await cursor.fetchall()}
            targets = [sub_id for sub_id in subscriber_ids if sub_id not in newer]
            # Only to subscribers that exist: a delivery to a deleted one could never be
            # claimed and would stay pending for ever.
            cursor = await conn.execute(
                "INSERT INTO deliveries (id, event_id, subscriber_id, task_key, status,"
                " next_attempt_at, created_at, updated_at)"
                " SELECT u.id, %s, u.subscriber_id, %s, 'pending', %s, %s, %s"
                " FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY"
                " AS u(id, subscriber_id, n)"
                " WHERE EXISTS (SELECT 1 FROM subscribers s WHERE s.id = u.subscriber_id)"
                " ORDER BY u.n",
                (
                    event_id,
                    task_key,
                    now,
                    now,
                    now,
                    [ids.new_id("dlv") for _ in targets],
                    targets,
                ),
            )
            return ReplayResult(cursor.rowcount, newer)

    async def prune(self, before: float, limit: int, failed_before: float | None = None) -> int:
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "SELECT e.id FROM events e WHERE e.received_at < %s AND NOT EXISTS ("
                " SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
                " AND (d.status = 'pending' OR (d.status = 'failed'"
                "  AND (%s::double precision IS NULL OR d.updated_at >= %s))))"
                " ORDER BY e.received_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (before, failed_before, failed_before, limit),
            )
            event_ids = [row[0] for row in await cursor.fetchall()]
            if event_ids:
                await conn.execute(
                    "DELETE FROM attempts WHERE delivery_id IN"
                    " (SELECT id FROM deliveries WHERE event_id = ANY(%s))",
                    (event_ids,),
                )
                await conn.execute("DELETE FROM deliveries WHERE event_id = ANY(%s)", (event_ids,))
                # The task's terminal status stays (see the SQLite store).
                await conn.execute("DELETE FROM events WHERE id = ANY(%s)", (event_ids,))
            await conn.execute("DELETE FROM callback_urls WHERE expires_at < %s", (before,))
        return len(event_ids)

    async def delivery_counts(self) -> dict[str, int]:
        now = time.time()
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'pending'),"
                " count(*) FILTER (WHERE status = 'failed'),"
                " min(created_at) FILTER (WHERE status = 'pending')"
                " FROM deliveries WHERE status IN ('pending', 'failed')"
            )
            row = await cursor.fetchone()
        assert row is not None  # noqa: S101 - narrows the type: the statement returns a row
        pending, failed, oldest = row
        return {
            "pending": pending,
            "failed": failed,
            "oldest_pending_seconds": None if oldest is None else round(now - oldest, 3),
        }

    async def activity(self, since: float) -> dict[str, Any]:
        async with self._transaction() as conn:
            return await postgres_ops.activity(conn, since)

    async def delivery_details(
        self, filters: DeliveryFilter, provider: str | None, limit: int
    ) -> list[dict[str, Any]]:
        async with self._transaction() as conn:
            return await postgres_ops.delivery_details(conn, filters, provider, limit)

    async def waiting_callback_counts(self) -> dict[str, int]:
        async with self._connection() as conn:
            return await postgres_ops.waiting_callback_counts(conn)

    async def active_watch_counts(self) -> dict[str, int]:
        async with self._connection() as conn:
            return await postgres_ops.active_watch_counts(conn)
