"""PostgreSQL queries for operators (the ops console, ``relay status``): reads only.

Each runs in one transaction on a pooled connection, so a page shows one snapshot.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from service.store.filters import delivery_details_query
from service.store.records import DeliveryFilter
from service.store.rows import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    delivery_json,
    details_json,
    event_counts,
)
from service.store.watch_model import DECIDABLE

#: The overview's reads (``Store.activity``), each by an index: events by ``events_received``,
#: deliveries by ``deliveries_status`` (status, updated_at) one status at a time, since a range
#: on updated_at alone cannot use it.
ACTIVITY_EVENTS_SQL = (
    "SELECT status, state, count(*) FROM events WHERE received_at >= %(since)s GROUP BY 1, 2"
)
ACTIVITY_DELIVERIES_SQL = (
    "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending' AND updated_at >= %(since)s),"
    " (SELECT count(*) FROM deliveries WHERE status = 'succeeded' AND updated_at >= %(since)s),"
    " (SELECT count(*) FROM deliveries WHERE status = 'failed' AND updated_at >= %(since)s)"
)
OLDEST_PENDING_SQL = (
    f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE status = 'pending'"
    " ORDER BY created_at, seq LIMIT 1"
)


async def activity(conn: AsyncConnection[Any], since: float) -> dict[str, Any]:
    cursor = await conn.execute(ACTIVITY_EVENTS_SQL, {"since": since})
    events = event_counts(await cursor.fetchall())
    cursor = await conn.execute(ACTIVITY_DELIVERIES_SQL, {"since": since})
    row = await cursor.fetchone()
    assert row is not None  # noqa: S101 - narrows the type: the statement returns a row
    cursor = await conn.execute(OLDEST_PENDING_SQL)
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
    sql, params = delivery_details_query(
        filters, "%s", provider=provider, limit=limit, now=now, join="JOIN"
    )
    cursor = await conn.execute(sql, params)
    rows = await cursor.fetchall()
    attempts: list[tuple[Any, ...]] = []
    if rows:
        cursor = await conn.execute(
            f"SELECT delivery_id, {ATTEMPT_COLUMNS} FROM attempts"
            " WHERE delivery_id = ANY(%s::text[]) ORDER BY id",
            ([row[1] for row in rows],),
        )
        attempts = await cursor.fetchall()
    return details_json(rows, attempts)


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


async def consecutive_failures(conn: AsyncConnection[Any]) -> dict[str, int]:
    cursor = await conn.execute(
        "SELECT s.id, coalesce(h.consecutive_failures, 0) FROM subscribers s"
        " LEFT JOIN subscriber_health h ON h.subscriber_id = s.id"
    )
    return {subscriber_id: count for subscriber_id, count in await cursor.fetchall()}
