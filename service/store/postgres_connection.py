"""PostgreSQL connections: errors as ``StorageUnavailable``, the pool's idle check, and the
pipeline that sends one loop iteration's statements in one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
import psycopg_pool
import structlog
from psycopg import AsyncConnection

from service.errors import StorageUnavailable

log = structlog.get_logger("service.store")


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
        raise StorageUnavailable(f"PostgreSQL could not commit: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class IdleCheck:
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


class Pipeline:
    """Statements queued during one loop iteration go to PostgreSQL together, on one pooled
    connection in pipeline mode: one network round trip for the lot. Measured on this machine
    it took PostgreSQL intake from 0.44x to 0.77x of SQLite's, and made recording attempts
    several times cheaper.

    The batch is one transaction, committed whole or not at all: ``BEGIN`` and ``COMMIT`` are
    sent in the pipeline as plain statements, so that psycopg syncs once, when the pipeline
    closes: one round trip. (``conn.transaction()`` would sync at ``COMMIT`` and again when the
    pipeline closes, two round trips and about a third more of the loop's time per batch,
    measured at 1,000 ingests/s. Leaving the transaction implicit, from the first statement to
    the ``Sync``, is not enough: a statement the driver refuses before sending it, a NUL in a
    text, leaves the statements sent before it to be committed by that ``Sync``.)
    A statement that fails must fail alone, so when the batch fails on a connection that is
    still sound, nothing of it committed and each statement is run again on its own: the others
    get their results, the culprit its own error. Only a lost connection fails the whole batch
    (``StorageUnavailable``); the batch may then have committed, which is safe for what is sent
    here (a callback that is retried is answered as a duplicate; an attempt record is applied
    to a leased delivery).
    """

    def __init__(
        self, connection: Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]]
    ) -> None:
        """``connection()``: a pooled connection in autocommit mode (the store's)."""
        self.connection = connection
        self.queue: list[tuple[str, Any, asyncio.Future[tuple[Any, ...] | None]]] = []
        self._sending: set[asyncio.Task[None]] = set()

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
        if not batch:  # close() sent it already
            return
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        """Send what is queued and wait for every batch in flight to be answered."""
        if self.queue:
            self._start()
        await asyncio.gather(*self._sending, return_exceptions=True)

    async def _send(
        self, batch: list[tuple[str, Any, asyncio.Future[tuple[Any, ...] | None]]]
    ) -> None:
        try:
            async with self.connection() as conn:
                try:
                    rows = await _run_together(conn, [(sql, params) for sql, params, _ in batch])
                except psycopg.Error as exc:
                    if conn.broken or len(batch) == 1:
                        raise
                    log.warning(
                        "store_batch_failed",
                        statements=len(batch),
                        error=first_line(exc),
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
    """Run ``statements`` in one pipelined transaction; their first rows, once committed.

    ``conn`` is in autocommit mode, so the transaction is ours to open and end (see
    ``Pipeline``); a batch that fails leaves ``conn`` outside any transaction.
    """
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            cursors = [await conn.execute(sql, params) for sql, params in statements]
            await conn.execute("COMMIT")
    except Exception:
        # The Sync that closed the pipeline does not end an explicit transaction: it is still
        # open (a statement refused by the driver) or failed (one refused by the server).
        if not conn.broken:
            await conn.rollback()
        raise
    # The pipeline has synced: every result is in, ``COMMIT``'s included.
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


async def connect_first(
    url: str, kwargs: dict[str, Any], deadline: float, where: str
) -> AsyncConnection[Any]:
    """A first connection, retried until ``deadline`` (``time.monotonic``): the server may be
    starting too. ``where`` names the server in messages (never the password)."""
    delay = 0.1
    while True:
        try:
            return await AsyncConnection.connect(url, **kwargs)
        except psycopg.OperationalError as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageUnavailable(
                    f"PostgreSQL not reachable at {where}: {first_line(exc)}"
                ) from exc
            log.warning("store_connect_failed", where=where, error=first_line(exc))
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)


async def open_pool(
    url: str,
    kwargs: dict[str, Any],
    deadline: float,
    *,
    min_size: int,
    max_size: int,
    pool_timeout: float,
    reconnect_timeout: float,
) -> psycopg_pool.AsyncConnectionPool[AsyncConnection[Any]]:
    """The store's pool, open with ``min_size`` connections by ``deadline`` (at least a second
    from now); connections idle for a while are checked on checkout (``IdleCheck``)."""
    idle = IdleCheck()
    pool: psycopg_pool.AsyncConnectionPool[AsyncConnection[Any]] = psycopg_pool.AsyncConnectionPool(
        url,
        kwargs=kwargs,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=pool_timeout,
        reconnect_timeout=reconnect_timeout,
        name="relay-postgres",
        configure=idle.returned,
        reset=idle.returned,
        check=idle.check,
    )
    try:
        with wrap_exceptions():
            await pool.open(wait=True, timeout=max(deadline - time.monotonic(), 1.0))
    except BaseException:
        await pool.close()
        raise
    return pool
