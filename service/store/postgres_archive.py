"""PostgreSQL: the archive jobs (``service.store.archive_sql``); each function runs on one
connection of ``PostgresStore``, in a transaction where it writes more than one row.

Replicas share the table: a claim locks the rows it leases with ``FOR UPDATE SKIP LOCKED``, so
two replicas claiming at once never take the same job and neither waits for the other.
"""

from __future__ import annotations

import secrets
from typing import Any

from psycopg import AsyncConnection

from service.store import archive_sql as sql
from service.store.filters import archive_clauses
from service.store.paging import Page, page_of, paged_query
from service.store.records import ArchiveJob, ArchiveOutcome

Conn = AsyncConnection[Any]


def _q(statement: str, lock: str = "") -> str:
    return sql.for_mark(statement, "%s", lock)


async def claim(
    conn: Conn, now: float, limit: int, lease_until: float, due_by: float
) -> list[ArchiveJob]:
    cursor = await conn.execute(_q(sql.CLAIM, " FOR UPDATE SKIP LOCKED"), (now, now, due_by, limit))
    jobs = []
    for (seq,) in await cursor.fetchall():
        token = secrets.token_hex(8)
        await conn.execute(_q(sql.LEASE), (lease_until, token, seq))
        row = await (await conn.execute(_q(sql.CLAIMED), (seq,))).fetchone()
        assert row is not None  # noqa: S101 - locked above, so it is there
        jobs.append(sql.job_from_row(row, token))
    return jobs


async def extend(conn: Conn, event_id: str, token: str, until: float) -> bool:
    cursor = await conn.execute(_q(sql.EXTEND), (until, event_id, token))
    return cursor.rowcount == 1


async def record(conn: Conn, outcome: ArchiveOutcome) -> bool:
    cursor = await conn.execute(_q(sql.RECORD), sql.record_params(outcome))
    if cursor.rowcount != 1:
        return False  # the lease lapsed and another run took the job
    if outcome.finished:
        if outcome.body is not None:
            await conn.execute(_q(sql.REWRITE_EVENT), (outcome.body, outcome.event_id))
        await conn.execute(_q(sql.RELEASE_DELIVERIES), (outcome.at, outcome.at, outcome.event_id))
    return True


async def get(conn: Conn, event_id: str) -> ArchiveJob | None:
    row = await (await conn.execute(_q(sql.GET), (event_id,))).fetchone()
    return None if row is None else sql.job_from_row(row)


async def list_jobs(conn: Conn, status: str | None, cursor: str | None, limit: int) -> Page:
    query, params = paged_query(sql.LIST, archive_clauses(status, "%s"), cursor, limit, "%s")
    rows = await (await conn.execute(query, params)).fetchall()
    return page_of(rows, limit, lambda r: sql.job_from_row(r[1:]))


async def retry(conn: Conn, event_id: str, now: float, deadline_at: float) -> ArchiveJob | None:
    await conn.execute(_q(sql.RETRY), (now, deadline_at, now, event_id))
    return await get(conn, event_id)


async def counts(conn: Conn, now: float) -> dict[str, object]:
    rows = await (await conn.execute(sql.COUNTS)).fetchall()
    return sql.counts_json(rows, now)


async def release_leases(conn: Conn, leases: list[tuple[str, str]] | None) -> int:
    if leases is None:
        cursor = await conn.execute(sql.RELEASE_LEASES + " WHERE lease_until IS NOT NULL")
        return cursor.rowcount
    released = 0
    for lease in leases:
        released += (await conn.execute(_q(sql.RELEASE_LEASE), lease)).rowcount
    return released
