"""The PostgreSQL store's pipeline (``service.store.postgres_connection.Pipeline``): statements
queued in one loop iteration run as one transaction, committed whole or not at all.

Runs on ``RELAY_TEST_POSTGRES_URL`` (a fresh schema per test), skipped without a reachable
PostgreSQL, failed instead when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from service.store.postgres_connection import Pipeline
from tests.test_store_contract import fresh_schema

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@contextlib.asynccontextmanager
async def pipeline_on(url: str) -> AsyncIterator[Pipeline]:
    """A pipeline on one connection in autocommit mode, as the store's pool hands them out."""
    conn = await AsyncConnection.connect(url, autocommit=True)

    @contextlib.asynccontextmanager
    async def connection() -> AsyncIterator[AsyncConnection[Any]]:
        yield conn

    pipeline = Pipeline(connection)
    try:
        yield pipeline
    finally:
        await pipeline.close()
        await conn.close()


async def test_statements_queued_together_run_in_one_transaction(pg_url: str) -> None:
    xid = "SELECT pg_current_xact_id()::text"
    async with pipeline_on(pg_url) as pipeline:
        first, second = await asyncio.gather(pipeline.run(xid, ()), pipeline.run(xid, ()))
        later = await pipeline.run(xid, ())
    assert first is not None and second is not None and later is not None
    assert first == second  # one batch, one transaction
    assert later != first  # the next batch, its own transaction


async def test_a_failed_batch_commits_nothing_before_its_statements_run_alone(
    pg_url: str,
) -> None:
    """The batch's insert is undone with the statement that failed beside it, so running it
    again alone inserts the row once (a committed first run would make it a duplicate key)."""
    async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE keys (k integer PRIMARY KEY)")
    async with pipeline_on(pg_url) as pipeline:
        inserted, divided = await asyncio.gather(
            pipeline.run("INSERT INTO keys VALUES (1) RETURNING k", ()),
            pipeline.run("SELECT 1 / 0", ()),
            return_exceptions=True,
        )
    assert inserted == (1,)
    assert isinstance(divided, psycopg.errors.DivisionByZero)
    async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cursor = await conn.execute("SELECT k FROM keys")
        assert await cursor.fetchall() == [(1,)]


async def test_a_statement_the_driver_refuses_leaves_nothing_of_its_batch_committed(
    pg_url: str,
) -> None:
    """A NUL in a text is refused by psycopg before it is sent, after the statements queued
    before it were: the batch must still be undone (not committed by the pipeline's closing
    ``Sync``), so the insert run again alone is no duplicate key."""
    async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE keys (k integer PRIMARY KEY, note text)")
    async with pipeline_on(pg_url) as pipeline:
        inserted, refused = await asyncio.gather(
            pipeline.run("INSERT INTO keys VALUES (1, 'ok') RETURNING k", ()),
            pipeline.run("INSERT INTO keys VALUES (2, %s) RETURNING k", ("x\x00",)),
            return_exceptions=True,
        )
    assert inserted == (1,)
    assert isinstance(refused, psycopg.DataError)
    async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cursor = await conn.execute("SELECT k FROM keys")
        assert await cursor.fetchall() == [(1,)]
