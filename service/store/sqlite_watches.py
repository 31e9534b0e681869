"""SQLite statements for watches; each function runs inside one transaction of the group commit.

``SQLiteStore`` calls these through ``self._run``; they take the connection first and never
commit. The contract is in ``service.store.base.Store`` (the watch methods).
"""

from __future__ import annotations

import json
import sqlite3

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

_MARKS = ", ".join("?" * WATCH_COLUMN_COUNT)
_INSERT = (
    f"INSERT INTO watches ({WATCH_COLUMNS}) VALUES ({_MARKS})"
    " ON CONFLICT (provider, task_id) WHERE state = 'active' DO NOTHING"
)


def _active(conn: sqlite3.Connection, provider: str, task_id: str) -> Watch | None:
    row = conn.execute(
        f"SELECT {WATCH_COLUMNS} FROM watches"
        " WHERE provider = ? AND task_id = ? AND state = 'active'",
        (provider, task_id),
    ).fetchone()
    return None if row is None else watch_from_row(row)


def get_watch(conn: sqlite3.Connection, watch_id: str) -> Watch | None:
    row = conn.execute(f"SELECT {WATCH_COLUMNS} FROM watches WHERE id = ?", (watch_id,)).fetchone()
    return None if row is None else watch_from_row(row)


def create_watch(conn: sqlite3.Connection, watch: Watch) -> tuple[Watch, bool]:
    if conn.execute(_INSERT, watch_values(watch)).rowcount:
        return watch, True
    existing = _active(conn, watch.provider, watch.task_id)
    assert existing is not None  # the conflict was with it, in this same transaction
    return existing, False


def hold_for_confirmation(conn: sqlite3.Connection, watch: Watch) -> Watch | None:
    if conn.execute(
        "SELECT 1 FROM tasks WHERE provider = ? AND task_id = ?", (watch.provider, watch.task_id)
    ).fetchone():
        return None
    if conn.execute(_INSERT, watch_values(watch)).rowcount:
        return watch
    active = _active(conn, watch.provider, watch.task_id)
    assert active is not None  # the conflict was with it, in this same transaction
    conflicts = active.conflict_url_ids
    if (
        watch.url_id is not None
        and active.url_id is not None
        and watch.url_id != active.url_id
        and watch.url_id not in conflicts
    ):
        conflicts = (*conflicts, watch.url_id)
    conn.execute(
        "UPDATE watches SET next_poll_at = min(next_poll_at, ?), held_status = ?,"
        " held_body = ?, url_id = coalesce(url_id, ?), holds = holds + 1, backoff_step = 0,"
        " not_found = 0, conflict_url_ids = ?, updated_at = ? WHERE id = ?",
        (
            watch.next_poll_at,
            watch.held_status,
            watch.held_body,
            watch.url_id,
            json.dumps(list(conflicts)) if conflicts else None,
            watch.updated_at,
            active.id,
        ),
    )
    return get_watch(conn, active.id)


def resolve_conflict(
    conn: sqlite3.Connection, watch_id: str, url_id: str | None, now: float
) -> Watch | None:
    conn.execute(
        "UPDATE watches SET url_id = ?, conflict_url_ids = NULL, held_status = NULL,"
        " held_body = NULL, next_poll_at = ?, backoff_step = 0, updated_at = ?"
        " WHERE id = ? AND state = 'active' AND conflict_url_ids IS NOT NULL",
        (url_id, now, now, watch_id),
    )
    return get_watch(conn, watch_id)


def list_watches(
    conn: sqlite3.Connection, filters: WatchFilter, cursor: str | None, limit: int
) -> Page:
    clauses, params = [], []
    for column, value in (
        ("state", filters.state),
        ("provider", filters.provider),
        ("task_id", filters.task_id),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    before = decode_cursor(cursor)
    if before is not None:
        clauses.append("seq < ?")
        params.append(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT seq, {WATCH_COLUMNS} FROM watches {where} ORDER BY seq DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        [watch_from_row(row[1:]) for row in rows], encode_cursor(rows[-1][0]) if more else None
    )


def cancel_watch(conn: sqlite3.Connection, watch_id: str, now: float) -> Watch | None:
    conn.execute(
        "UPDATE watches SET state = 'canceled', lease_until = NULL, updated_at = ?"
        " WHERE id = ? AND state = 'active'",
        (now, watch_id),
    )
    return get_watch(conn, watch_id)


def claim_due_watches(
    conn: sqlite3.Connection, now: float, limit: int, lease_until: float
) -> list[Watch]:
    # Due watches whose task already ended (a callback came first) need no poll.
    conn.execute(
        "UPDATE watches SET state = 'completed', lease_until = NULL, updated_at = ?,"
        " event_id = (SELECT t.event_id FROM tasks t"
        "  WHERE t.provider = watches.provider AND t.task_id = watches.task_id)"
        " WHERE state = 'active' AND next_poll_at <= ?"
        " AND (lease_until IS NULL OR lease_until <= ?)"
        " AND EXISTS (SELECT 1 FROM tasks t"
        "  WHERE t.provider = watches.provider AND t.task_id = watches.task_id)",
        (now, now, now),
    )
    rows = conn.execute(
        f"SELECT seq, {WATCH_COLUMNS} FROM watches WHERE state = 'active' AND next_poll_at <= ?"
        " AND (lease_until IS NULL OR lease_until <= ?)"
        # A watch in conflict waits for its operator (resolve_conflict), unpolled.
        " AND conflict_url_ids IS NULL ORDER BY next_poll_at, seq LIMIT ?",
        (now, now, limit),
    ).fetchall()
    if rows:
        marks = ",".join("?" * len(rows))
        conn.execute(
            f"UPDATE watches SET lease_until = ? WHERE seq IN ({marks})",
            (lease_until, *(row[0] for row in rows)),
        )
    return [watch_from_row(row[1:]) for row in rows]


def record_poll(conn: sqlite3.Connection, record: PollRecord) -> None:
    # A callback held while the poll ran (holds moved on) keeps its immediate poll and its held
    # body; the poll's answer predates it.
    conn.execute(
        "UPDATE watches SET state = ?, polls = polls + 1, lease_until = NULL,"
        " next_poll_at = CASE WHEN holds = ? OR ? <> 'active' THEN coalesce(?, next_poll_at)"
        "  ELSE min(coalesce(?, next_poll_at), next_poll_at) END,"
        " backoff_step = CASE WHEN holds = ? THEN ? ELSE 0 END,"
        " not_found = ?, last_polled_at = ?, last_status = coalesce(?, last_status),"
        " last_error = ?,"
        " held_status = CASE WHEN (holds = ? AND ?) OR ? <> 'active' THEN NULL"
        "  ELSE held_status END,"
        " held_body = CASE WHEN (holds = ? AND ?) OR ? <> 'active' THEN NULL ELSE held_body END,"
        " url_id = CASE WHEN holds = ? AND ? THEN NULL ELSE url_id END,"
        " event_id = coalesce(?, event_id), updated_at = ?"
        " WHERE id = ? AND state = 'active'",
        (
            record.state,
            record.holds_seen,
            record.state,
            record.next_poll_at,
            record.next_poll_at,
            record.holds_seen,
            record.backoff_step,
            record.not_found,
            record.polled_at,
            record.last_status,
            record.last_error,
            record.holds_seen,
            record.judged,
            record.state,
            record.holds_seen,
            record.judged,
            record.state,
            record.holds_seen,
            record.forget_url,
            record.event_id,
            record.polled_at,
            record.watch_id,
        ),
    )


def release_watch_leases(conn: sqlite3.Connection, watch_ids: list[str] | None) -> int:
    if watch_ids is None:
        return conn.execute(
            "UPDATE watches SET lease_until = NULL"
            " WHERE state = 'active' AND lease_until IS NOT NULL"
        ).rowcount
    marks = ",".join("?" * len(watch_ids))
    return conn.execute(
        f"UPDATE watches SET lease_until = NULL WHERE id IN ({marks})", watch_ids
    ).rowcount


def prune_watches(conn: sqlite3.Connection, before: float, limit: int) -> int:
    return conn.execute(
        "DELETE FROM watches WHERE seq IN (SELECT seq FROM watches"
        " WHERE state <> 'active' AND updated_at < ? ORDER BY updated_at LIMIT ?)",
        (before, limit),
    ).rowcount
