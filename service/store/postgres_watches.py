"""PostgreSQL statements for watches; each function runs on one connection of ``PostgresStore``.

Several replicas share the table: ``claim_due_watches`` leases with ``FOR UPDATE SKIP LOCKED``
(no watch is polled by two replicas at once, and no replica waits for another), and the one
active watch per task is kept by the partial unique index ``watches_active_task``, which
``INSERT ... ON CONFLICT`` relies on. The contract is in ``service.store.base.Store``.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from service.errors import StorageUnavailable
from service.store.base import Page, decode_cursor, encode_cursor
from service.store.watch_model import (
    WATCH_COLUMN_COUNT,
    WATCH_COLUMNS,
    PollRecord,
    Watch,
    WatchFilter,
    watch_from_row,
    watch_values,
)

Conn = AsyncConnection[Any]

_MARKS = ", ".join(["%s"] * WATCH_COLUMN_COUNT)
_INSERT = (
    f"INSERT INTO watches ({WATCH_COLUMNS}) VALUES ({_MARKS})"
    " ON CONFLICT (provider, task_id) WHERE state = 'active' DO NOTHING"
    f" RETURNING {WATCH_COLUMNS}"
)


async def _one(conn: Conn, sql: str, params: Any) -> Watch | None:
    cursor = await conn.execute(sql, params)
    row = await cursor.fetchone()
    return None if row is None else watch_from_row(row)


async def get_watch(conn: Conn, watch_id: str) -> Watch | None:
    return await _one(conn, f"SELECT {WATCH_COLUMNS} FROM watches WHERE id = %s", (watch_id,))


async def create_watch(conn: Conn, watch: Watch) -> tuple[Watch, bool]:
    # Autocommit statements: the SELECT's snapshot sees the row the INSERT conflicted with.
    for _ in range(3):
        created = await _one(conn, _INSERT, watch_values(watch))
        if created is not None:
            return created, True
        existing = await _one(
            conn,
            f"SELECT {WATCH_COLUMNS} FROM watches"
            " WHERE provider = %s AND task_id = %s AND state = 'active'",
            (watch.provider, watch.task_id),
        )
        if existing is not None:
            return existing, False
        # The active watch ended between the two statements: try again.
    raise StorageUnavailable("Concurrent changes to this task's watch interfered; retry.")


async def hold_for_confirmation(conn: Conn, watch: Watch) -> Watch | None:
    cursor = await conn.execute(
        "SELECT 1 FROM tasks WHERE provider = %s AND task_id = %s",
        (watch.provider, watch.task_id),
    )
    if await cursor.fetchone() is not None:
        return None
    return await _one(
        conn,
        f"INSERT INTO watches ({WATCH_COLUMNS}) VALUES ({_MARKS})"
        " ON CONFLICT (provider, task_id) WHERE state = 'active' DO UPDATE SET"
        " next_poll_at = LEAST(watches.next_poll_at, excluded.next_poll_at),"
        " held_status = excluded.held_status, held_body = excluded.held_body,"
        " url_id = coalesce(watches.url_id, excluded.url_id), holds = watches.holds + 1,"
        " backoff_step = 0, not_found = 0, updated_at = excluded.updated_at,"
        # A callback through another URL than the one the watch has: a conflict to resolve.
        " conflict_url_ids = CASE WHEN watches.url_id IS NULL OR excluded.url_id IS NULL"
        "  OR excluded.url_id = watches.url_id"
        "  OR coalesce(watches.conflict_url_ids, '[]')::jsonb ? excluded.url_id"
        "  THEN watches.conflict_url_ids"
        "  ELSE (coalesce(watches.conflict_url_ids, '[]')::jsonb"
        "   || to_jsonb(excluded.url_id))::text END"
        f" RETURNING {WATCH_COLUMNS}",
        watch_values(watch),
    )


async def resolve_conflict(
    conn: Conn, watch_id: str, url_id: str | None, now: float
) -> Watch | None:
    await conn.execute(
        "UPDATE watches SET url_id = %s, conflict_url_ids = NULL, held_status = NULL,"
        " held_body = NULL, next_poll_at = %s, backoff_step = 0, updated_at = %s"
        " WHERE id = %s AND state = 'active' AND conflict_url_ids IS NOT NULL",
        (url_id, now, now, watch_id),
    )
    return await get_watch(conn, watch_id)


async def list_watches(conn: Conn, filters: WatchFilter, cursor: str | None, limit: int) -> Page:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("state", filters.state),
        ("provider", filters.provider),
        ("task_id", filters.task_id),
    ):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    before = decode_cursor(cursor)
    if before is not None:
        clauses.append("seq < %s")
        params.append(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    result = await conn.execute(
        f"SELECT seq, {WATCH_COLUMNS} FROM watches {where} ORDER BY seq DESC LIMIT %s",
        (*params, limit + 1),
    )
    rows = await result.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        [watch_from_row(row[1:]) for row in rows], encode_cursor(rows[-1][0]) if more else None
    )


async def cancel_watch(conn: Conn, watch_id: str, now: float) -> Watch | None:
    await conn.execute(
        "UPDATE watches SET state = 'canceled', lease_until = NULL, updated_at = %s"
        " WHERE id = %s AND state = 'active'",
        (now, watch_id),
    )
    return await get_watch(conn, watch_id)


async def claim_due_watches(conn: Conn, now: float, limit: int, lease_until: float) -> list[Watch]:
    # Due watches whose task already ended (a callback came first) need no poll. Rows another
    # replica is claiming are skipped here; it completes or polls them itself.
    await conn.execute(
        "WITH done AS ("
        "  SELECT w.seq, t.event_id FROM watches w JOIN tasks t"
        "  ON t.provider = w.provider AND t.task_id = w.task_id"
        "  WHERE w.state = 'active' AND w.next_poll_at <= %(now)s"
        "  AND (w.lease_until IS NULL OR w.lease_until <= %(now)s)"
        "  FOR UPDATE OF w SKIP LOCKED"
        ")"
        " UPDATE watches SET state = 'completed', lease_until = NULL, updated_at = %(now)s,"
        " event_id = done.event_id FROM done WHERE watches.seq = done.seq",
        {"now": now},
    )
    cursor = await conn.execute(
        "WITH due AS ("
        "  SELECT seq FROM watches WHERE state = 'active' AND next_poll_at <= %(now)s"
        "  AND (lease_until IS NULL OR lease_until <= %(now)s)"
        # A watch in conflict waits for its operator (resolve_conflict), unpolled.
        "  AND conflict_url_ids IS NULL"
        "  ORDER BY next_poll_at, seq LIMIT %(limit)s"
        "  FOR UPDATE SKIP LOCKED"
        ")"
        " UPDATE watches SET lease_until = %(lease_until)s FROM due"
        f" WHERE watches.seq = due.seq RETURNING watches.next_poll_at, watches.seq,"
        f" {', '.join('watches.' + c.strip() for c in WATCH_COLUMNS.split(','))}",
        {"now": now, "limit": limit, "lease_until": lease_until},
    )
    rows = sorted(await cursor.fetchall(), key=lambda row: (row[0], row[1]))
    return [watch_from_row(row[2:]) for row in rows]


async def record_poll(conn: Conn, record: PollRecord) -> None:
    # A callback held while the poll ran (holds moved on) keeps its immediate poll and its held
    # body; the poll's answer predates it.
    await conn.execute(
        "UPDATE watches SET state = %(state)s, polls = polls + 1, lease_until = NULL,"
        " next_poll_at = CASE WHEN holds = %(seen)s OR %(state)s <> 'active'"
        "  THEN coalesce(%(next)s::double precision, next_poll_at)"
        "  ELSE LEAST(coalesce(%(next)s::double precision, next_poll_at), next_poll_at) END,"
        " backoff_step = CASE WHEN holds = %(seen)s THEN %(step)s ELSE 0 END,"
        " not_found = %(not_found)s, last_polled_at = %(at)s,"
        " last_status = coalesce(%(status)s::text, last_status), last_error = %(error)s::text,"
        " held_status = CASE WHEN (holds = %(seen)s AND %(judged)s) OR %(state)s <> 'active'"
        "  THEN NULL ELSE held_status END,"
        " held_body = CASE WHEN (holds = %(seen)s AND %(judged)s) OR %(state)s <> 'active'"
        "  THEN NULL ELSE held_body END,"
        " url_id = CASE WHEN holds = %(seen)s AND %(forget)s THEN NULL ELSE url_id END,"
        " event_id = coalesce(%(event_id)s::text, event_id), updated_at = %(at)s"
        " WHERE id = %(id)s AND state = 'active'",
        {
            "state": record.state,
            "seen": record.holds_seen,
            "judged": record.judged,
            "forget": record.forget_url,
            "next": record.next_poll_at,
            "step": record.backoff_step,
            "not_found": record.not_found,
            "at": record.polled_at,
            "status": record.last_status,
            "error": record.last_error,
            "event_id": record.event_id,
            "id": record.watch_id,
        },
    )


async def release_watch_leases(conn: Conn, watch_ids: list[str] | None) -> int:
    if watch_ids is None:
        cursor = await conn.execute(
            "UPDATE watches SET lease_until = NULL"
            " WHERE state = 'active' AND lease_until IS NOT NULL"
        )
    else:
        cursor = await conn.execute(
            "UPDATE watches SET lease_until = NULL WHERE id = ANY(%s::text[])", (list(watch_ids),)
        )
    return cursor.rowcount


async def prune_watches(conn: Conn, before: float, limit: int) -> int:
    cursor = await conn.execute(
        "DELETE FROM watches WHERE seq IN (SELECT seq FROM watches"
        " WHERE state <> 'active' AND updated_at < %s ORDER BY updated_at LIMIT %s)",
        (before, limit),
    )
    return cursor.rowcount
