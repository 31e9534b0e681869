"""The overview's counts of the last hour come from the store by index, on both stores.

The overview reads what the whole deployment did (``Store.activity``), so it must stay cheap
on a store holding weeks of events and deliveries: events by their ``received_at`` index,
deliveries by ``deliveries_status`` (status, updated_at) one status at a time. Each statement's
plan is asked of the real database, on the schema the migrations build.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from service.store import postgres_ops, sqlite_ops
from service.store.postgres import PostgresStore
from service.store.sqlite import SQLiteStore
from tests.test_store_contract import fresh_schema

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_sqlite_counts_the_hour_by_index(tmp_path: Path) -> None:
    """No statement scans a whole table: each searches an index."""
    store = SQLiteStore(str(tmp_path / "relay.db"))
    await store.open()
    await store.close()
    since = time.time() - 3600
    statements = [
        (sqlite_ops.ACTIVITY_EVENTS_SQL, (since,), "events_received"),
        (sqlite_ops.ACTIVITY_DELIVERIES_SQL, ("failed", since), "deliveries_status"),
        (sqlite_ops.OLDEST_PENDING_SQL, (), "deliveries_status"),
    ]
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        conn.execute("ANALYZE")
        for sql, params, index in statements:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            assert any(
                f"USING INDEX {index}" in step or f"COVERING INDEX {index}" in step for step in plan
            ), (sql, plan)
            assert not [step for step in plan if step.startswith("SCAN ")], (sql, plan)


def _scans(node: dict[str, object]) -> list[dict[str, object]]:
    """Every node of a JSON plan that reads a table or an index."""
    found = [node] if "Scan" in str(node["Node Type"]) else []
    for child in node.get("Plans", []):  # type: ignore[attr-defined]
        found += _scans(child)
    return found


@pytest.mark.postgres
async def test_postgresql_counts_the_hour_by_index() -> None:
    """With sequential scans priced out, each table is read through its index, with the index's
    leading column in the condition (not a walk over the whole index)."""
    with fresh_schema() as url:
        store = PostgresStore(url, max_size=1)
        await store.open()
        await store.close()
        since = time.time() - 3600
        statements = [
            (postgres_ops.ACTIVITY_EVENTS_SQL, {"since": since}, "received_at >="),
            (postgres_ops.ACTIVITY_DELIVERIES_SQL, {"since": since}, "status ="),
            # Read through deliveries_due, the partial index of pending deliveries only.
            (postgres_ops.OLDEST_PENDING_SQL, {}, None),
        ]
        with psycopg.connect(url) as conn:
            conn.execute("SET enable_seqscan = off")
            for sql, params, condition in statements:
                (plan,) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()
                plan = plan if isinstance(plan, list) else json.loads(plan)
                scans = _scans(plan[0]["Plan"])
                assert scans, (sql, plan)
                for scan in scans:
                    assert scan["Node Type"] != "Seq Scan", (sql, scan)
                    if "Index Name" in scan and condition is not None:
                        assert condition in str(scan.get("Index Cond", "")), (sql, scan)
