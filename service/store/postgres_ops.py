"""PostgreSQL queries for operators (the ops console, ``relay status``): reads only.

Each runs in one transaction on a pooled connection, so a page shows one snapshot.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from service.store.filters import delivery_clauses, newer_column
from service.store.records import DeliveryFilter
from service.store.rows import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    attempt_json,
    delivery_json,
    detail_json,
    event_counts,
    qualified,
)
from service.store.watch_model import DECIDABLE

_D_COLUMNS = qualified(DELIVERY_COLUMNS, "d")


async def activity(conn: AsyncConnection[Any], since: float) -> dict[str, Any]:
    cursor = await conn.execute(
        "SELECT status, state, count(*) FROM events WHERE received_at >= %s GROUP BY 1, 2",
        (since,),
    )
    events = event_counts(await cursor.fetchall())
    cursor = await conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'pending'),"
        " count(*) FILTER (WHERE status = 'succeeded'),"
        " count(*) FILTER (WHERE status = 'failed')"
        " FROM deliveries WHERE updated_at >= %s",
        (since,),
    )
    row = await cursor.fetchone()
    assert row is not None
    cursor = await conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE status = 'pending'"
        " ORDER BY created_at, seq LIMIT 1"
    )
    oldest = await cursor.fetchone()
    return {
        "events": events,
        "deliveries": {"pending": row[0], "succeeded": row[1], "failed": row[2]},
        "oldest_pending": None if oldest is None else delivery_json(oldest),
    }


async def delivery_details(
    conn: AsyncConnection[Any],
    filters: DeliveryFilter,
    provider: str | None,
    limit: int,
    now: float,
) -> list[dict[str, Any]]:
    clauses, params = delivery_clauses(filters, "%s", table="d", provider=provider)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    cursor = await conn.execute(
        f"SELECT {_D_COLUMNS}, e.provider, e.task_id, e.status, {newer_column('%s')}"
        f" FROM deliveries d LEFT JOIN events e ON e.id = d.event_id {where}"
        " ORDER BY d.seq DESC LIMIT %s",
        (now, *params, limit),
    )
    rows = await cursor.fetchall()
    attempts: dict[str, list[dict[str, Any]]] = {row[1]: [] for row in rows}
    if attempts:
        cursor = await conn.execute(
            f"SELECT delivery_id, {ATTEMPT_COLUMNS} FROM attempts"
            " WHERE delivery_id = ANY(%s::text[]) ORDER BY id",
            (list(attempts),),
        )
        for delivery_id, *attempt in await cursor.fetchall():
            attempts[delivery_id].append(attempt_json(tuple(attempt)))
    return [detail_json(tuple(row), attempts[row[1]]) for row in rows]


async def waiting_callback_counts(conn: AsyncConnection[Any]) -> dict[str, int]:
    cursor = await conn.execute(
        "SELECT count(*) FILTER (WHERE held_status IS NOT NULL AND state = 'active'),"
        f" count(*) FILTER (WHERE {DECIDABLE}) FROM watches"
        " WHERE held_status IS NOT NULL OR suspect IS NOT NULL"
    )
    row = await cursor.fetchone()
    held, suspect = row if row is not None else (0, 0)
    return {"held": held, "suspect": suspect}


async def active_watch_counts(conn: AsyncConnection[Any]) -> dict[str, int]:
    cursor = await conn.execute(
        "SELECT provider, count(*) FROM watches WHERE state = 'active' GROUP BY provider"
    )
    return {provider: count for provider, count in await cursor.fetchall()}
