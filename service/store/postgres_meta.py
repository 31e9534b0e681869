"""PostgreSQL statements for the relay's small tables: its own values (``relay_meta``), minted
callback URLs, console sessions, and the reads of stored events. Each function runs on one
connection of ``PostgresStore``.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg import AsyncConnection

from service.store.filters import events_query
from service.store.paging import Page, page_of, paged_query
from service.store.records import EventFilter
from service.store.rows import event_json, listed_event

Conn = AsyncConnection[Any]


async def ping(conn: Conn) -> None:
    await conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES ('last_ping', now()::text)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )


async def get_or_create_meta(conn: Conn, key: str, value: str) -> str:
    # One statement: the no-op update makes RETURNING yield the row in both cases.
    cursor = await conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = relay_meta.value RETURNING value",
        (key, value),
    )
    row = await cursor.fetchone()
    assert row is not None  # noqa: S101 - narrows the type: the statement returns a row
    return str(row[0])


async def get_meta(conn: Conn, key: str) -> str | None:
    cursor = await conn.execute("SELECT value FROM relay_meta WHERE key = %s", (key,))
    row = await cursor.fetchone()
    return None if row is None else str(row[0])


async def set_meta(conn: Conn, key: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


async def create_callback_url(
    conn: Conn,
    url_id: str,
    provider: str,
    metadata: dict[str, Any],
    created_at: float,
    expires_at: float,
    reusable: bool,
) -> None:
    await conn.execute(
        "INSERT INTO callback_urls (id, provider, metadata, created_at, expires_at, reusable)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (
            url_id,
            provider,
            json.dumps(metadata, separators=(",", ":")),
            created_at,
            expires_at,
            reusable,
        ),
    )


async def bind_callback_url(conn: Conn, url_id: str, task_id: str) -> str | None:
    # One statement: a racing replica's UPDATE waits for this row lock, then finds task_id set
    # (READ COMMITTED re-reads the row) and keeps the first binding.
    cursor = await conn.execute(
        "UPDATE callback_urls SET task_id = coalesce(task_id, %s)"
        " WHERE id = %s AND NOT reusable RETURNING task_id",
        (task_id, url_id),
    )
    row = await cursor.fetchone()
    return None if row is None else str(row[0])


async def get_callback_metadata(conn: Conn, url_id: str) -> dict[str, Any] | None:
    cursor = await conn.execute("SELECT metadata FROM callback_urls WHERE id = %s", (url_id,))
    row = await cursor.fetchone()
    if row is None:
        return None
    metadata: dict[str, Any] = json.loads(row[0])
    return metadata


async def create_ops_session(
    conn: Conn,
    session_id: str,
    created_at: float,
    expires_at: float,
    scope: str,
    key_id: str | None,
) -> None:
    """In a transaction."""
    await conn.execute("DELETE FROM ops_sessions WHERE expires_at < %s", (created_at,))
    await conn.execute(
        "INSERT INTO ops_sessions (id, created_at, expires_at, scope, key_id)"
        " VALUES (%s, %s, %s, %s, %s)",
        (session_id, created_at, expires_at, scope, key_id),
    )


async def ops_session_live(conn: Conn, session_id: str, now: float) -> str | None:
    cursor = await conn.execute(
        "SELECT scope FROM ops_sessions WHERE id = %s AND revoked_at IS NULL AND expires_at > %s",
        (session_id, now),
    )
    row = await cursor.fetchone()
    return None if row is None else str(row[0])


async def revoke_ops_session(conn: Conn, session_id: str, now: float) -> None:
    await conn.execute(
        "UPDATE ops_sessions SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
        (now, session_id),
    )


async def get_event(conn: Conn, event_id: str) -> dict[str, Any] | None:
    cursor = await conn.execute("SELECT body, state FROM events WHERE id = %s", (event_id,))
    row = await cursor.fetchone()
    return None if row is None else event_json(row[0], row[1])


async def get_event_raw(conn: Conn, event_id: str) -> bytes | None:
    cursor = await conn.execute("SELECT raw_body FROM events WHERE id = %s", (event_id,))
    row = await cursor.fetchone()
    return None if row is None else bytes(row[0])


async def list_events(conn: Conn, filters: EventFilter, cursor: str | None, limit: int) -> Page:
    select, clauses, params = events_query(filters, "%s", "JOIN")
    position = "m0.event_seq" if filters.metadata else "e.seq"
    sql, params = paged_query(select, (clauses, params), cursor, limit, "%s", position=position)
    result = await conn.execute(sql, params)
    return page_of(await result.fetchall(), limit, listed_event)
