"""SQLite: the archive jobs (``service.store.archive_sql``); each function runs inside one of
``SQLiteStore``'s batches, so a claim and its leases are one transaction."""

from __future__ import annotations

import secrets
import sqlite3

from service.store import archive_sql as sql
from service.store.filters import archive_clauses
from service.store.paging import Page, page_of, paged_query
from service.store.records import ArchiveJob, ArchiveOutcome


def _q(statement: str) -> str:
    return sql.for_mark(statement, "?")


def claim(
    conn: sqlite3.Connection, now: float, limit: int, lease_until: float, due_by: float
) -> list[ArchiveJob]:
    jobs = []
    for (seq,) in conn.execute(_q(sql.CLAIM), (now, now, due_by, limit)).fetchall():
        token = secrets.token_hex(8)
        conn.execute(_q(sql.LEASE), (lease_until, token, seq))
        row = conn.execute(_q(sql.CLAIMED), (seq,)).fetchone()
        jobs.append(sql.job_from_row(row, token))
    return jobs


def extend(conn: sqlite3.Connection, event_id: str, token: str, until: float) -> bool:
    return conn.execute(_q(sql.EXTEND), (until, event_id, token)).rowcount == 1


def record(conn: sqlite3.Connection, outcome: ArchiveOutcome) -> bool:
    if conn.execute(_q(sql.RECORD), sql.record_params(outcome)).rowcount != 1:
        return False  # the lease lapsed and another run took the job
    if outcome.finished:
        if outcome.body is not None:
            conn.execute(_q(sql.REWRITE_EVENT), (outcome.body, outcome.event_id))
        conn.execute(_q(sql.RELEASE_DELIVERIES), (outcome.at, outcome.at, outcome.event_id))
    return True


def get(conn: sqlite3.Connection, event_id: str) -> ArchiveJob | None:
    row = conn.execute(_q(sql.GET), (event_id,)).fetchone()
    return None if row is None else sql.job_from_row(row)


def list_jobs(conn: sqlite3.Connection, status: str | None, cursor: str | None, limit: int) -> Page:
    query, params = paged_query(sql.LIST, archive_clauses(status, "?"), cursor, limit, "?")
    return page_of(conn.execute(query, params).fetchall(), limit, lambda r: sql.job_from_row(r[1:]))


def retry(
    conn: sqlite3.Connection, event_id: str, now: float, deadline_at: float
) -> ArchiveJob | None:
    conn.execute(_q(sql.RETRY), (now, deadline_at, now, event_id))
    return get(conn, event_id)


def counts(conn: sqlite3.Connection, now: float) -> dict[str, object]:
    return sql.counts_json(conn.execute(sql.COUNTS).fetchall(), now)


def release_leases(conn: sqlite3.Connection, leases: list[tuple[str, str]] | None) -> int:
    if leases is None:
        return conn.execute(sql.RELEASE_LEASES + " WHERE lease_until IS NOT NULL").rowcount
    return sum(conn.execute(_q(sql.RELEASE_LEASE), lease).rowcount for lease in leases)
