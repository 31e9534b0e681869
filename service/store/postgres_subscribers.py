"""PostgreSQL statements for subscribers; each function runs on one connection of
``PostgresStore``, inside a transaction when it changes them.

Every change takes ``LOCK_SUBSCRIBERS`` exclusively and bumps ``subscribers_version``;
everything that creates deliveries takes the lock shared, so no delivery is ever created for a
subscriber deleted or disabled by a transaction that committed first (under READ COMMITTED a
plain read could miss it), and an intake that fanned out to a stale list is told so
(``relay_ingest`` answers 'stale').
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from service.store.paging import Page, page_of, paged_query
from service.store.records import Subscriber
from service.store.rows import (
    SUBSCRIBER_COLUMNS,
    headers_text,
    qualified,
    stored_metadata_filter,
    subscriber_changes,
    subscriber_from_row,
)

Conn = AsyncConnection[Any]

# Advisory lock keys (two-key form: key1, key2). Arbitrary constants, chosen not to collide
# with other applications that may share the database.
LOCK_SUBSCRIBERS = 0x524C5953  # key1 of (LOCK_SUBSCRIBERS, 0)
LOCK_TASKS = 0x524C5954  # key1 of (LOCK_TASKS, hashtext(provider/task_id))


def _text_list(value: Sequence[str] | None) -> list[str] | None:
    return None if value is None else [str(item) for item in value]


async def lock_subscribers(conn: Conn, *, exclusive: bool) -> None:
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await conn.execute(f"SELECT {function}(%s::int, 0)", (LOCK_SUBSCRIBERS,))


async def bump_subscribers_version(conn: Conn) -> None:
    await conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES ('subscribers_version', '1')"
        " ON CONFLICT (key) DO UPDATE SET value = (relay_meta.value::bigint + 1)::text"
    )


async def enabled_subscribers(conn: Conn, now: float) -> tuple[str, list[Subscriber]]:
    """The enabled subscribers and their version, read in one statement (one snapshot)."""
    cursor = await conn.execute(
        "WITH v AS (SELECT coalesce((SELECT value FROM relay_meta"
        " WHERE key = 'subscribers_version'), '0') AS version)"
        f" SELECT v.version, {qualified(SUBSCRIBER_COLUMNS, 's')} FROM v"
        " LEFT JOIN subscribers s ON s.enabled ORDER BY s.seq"
    )
    rows = await cursor.fetchall()
    version = str(rows[0][0])
    return version, [subscriber_from_row(row[1:], now) for row in rows if row[1] is not None]


async def create_subscriber(conn: Conn, subscriber: Subscriber) -> None:
    await lock_subscribers(conn, exclusive=True)
    await conn.execute(
        "INSERT INTO subscribers (id, url, description, providers, event_types, enabled,"
        " secret, created_at, updated_at, metadata, headers, max_per_second)"
        " VALUES (%s, %s, %s, %s::text[], %s::text[], %s, %s, %s, %s, %s, %s, %s)",
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
            stored_metadata_filter(subscriber.metadata),
            headers_text(subscriber.headers),
            subscriber.max_per_second,
        ),
    )
    await bump_subscribers_version(conn)


async def get_subscriber(conn: Conn, subscriber_id: str, now: float) -> Subscriber | None:
    cursor = await conn.execute(
        f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE id = %s", (subscriber_id,)
    )
    row = await cursor.fetchone()
    return None if row is None else subscriber_from_row(row, now)


async def list_subscribers(conn: Conn, cursor: str | None, limit: int, now: float) -> Page:
    sql, params = paged_query(
        f"SELECT seq, {SUBSCRIBER_COLUMNS} FROM subscribers",
        ([], []),
        cursor,
        limit,
        "%s",
        newest_first=False,
    )
    result = await conn.execute(sql, params)
    return page_of(await result.fetchall(), limit, lambda row: subscriber_from_row(row[1:], now))


async def update_subscriber(
    conn: Conn, subscriber_id: str, changes: dict[str, Any], now: float
) -> Subscriber | None:
    values = subscriber_changes(changes, now)
    casts = {"providers": "::text[]", "event_types": "::text[]"}
    assignments = ", ".join(f"{key} = %s{casts.get(key, '')}" for key in values)
    await lock_subscribers(conn, exclusive=True)
    cursor = await conn.execute(
        f"UPDATE subscribers SET {assignments} WHERE id = %s RETURNING {SUBSCRIBER_COLUMNS}",
        (*values.values(), subscriber_id),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    await bump_subscribers_version(conn)
    return subscriber_from_row(row, now)


async def delete_subscriber(conn: Conn, subscriber_id: str, now: float) -> bool:
    await lock_subscribers(conn, exclusive=True)
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
    await conn.execute("DELETE FROM subscriber_health WHERE subscriber_id = %s", (subscriber_id,))
    await bump_subscribers_version(conn)
    return True


async def rotate_secret(
    conn: Conn, subscriber_id: str, new_secret: str, valid_until: float, now: float
) -> Subscriber | None:
    await lock_subscribers(conn, exclusive=True)
    cursor = await conn.execute(
        "UPDATE subscribers SET previous_secret = secret, previous_expires_at = %s,"
        f" secret = %s, updated_at = %s WHERE id = %s RETURNING {SUBSCRIBER_COLUMNS}",
        (valid_until, new_secret, now, subscriber_id),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    await bump_subscribers_version(conn)
    return subscriber_from_row(row, now)
