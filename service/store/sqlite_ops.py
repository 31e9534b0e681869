"""SQLite queries for operators (the ops console, ``relay status``): reads only.

``SQLiteStore.read`` runs them on a read-only connection of their own (``read_only``) in a
worker thread, never in the store's group-commit batch on the event loop: an operator counting
an hour of events must not hold up callbacks. In WAL mode such a reader sees the last commit
and blocks no writer; SQLite releases the GIL while it works.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from service.errors import StorageUnavailable
from service.store.filters import delivery_details_query
from service.store.records import DeliveryFilter
from service.store.rows import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    delivery_json,
    details_json,
    event_counts,
)
from service.store.sqlite_events import rarest_first
from service.store.watch_model import DECIDABLE

T = TypeVar("T")


def read_only(path: str, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(connection)`` on a read-only connection to ``path``, in one snapshot (blocking:
    ``SQLiteStore.read`` runs it in a thread)."""
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"Cannot read SQLite database {path!r}: {exc}") from exc
    try:
        conn.execute("PRAGMA busy_timeout=2000")
        conn.execute("BEGIN")  # one snapshot for every statement of fn
        return fn(conn)
    except sqlite3.OperationalError as exc:
        raise StorageUnavailable(f"The store could not be read: {exc}") from exc
    finally:
        conn.close()


#: The overview's reads (``Store.activity``), each by an index: events by ``events_received``,
#: deliveries by ``deliveries_status`` (status, updated_at) one status at a time, since a range
#: on updated_at alone cannot use it.
ACTIVITY_EVENTS_SQL = (
    "SELECT status, state, count(*) FROM events WHERE received_at >= ? GROUP BY 1, 2"
)
ACTIVITY_DELIVERIES_SQL = "SELECT count(*) FROM deliveries WHERE status = ? AND updated_at >= ?"
OLDEST_PENDING_SQL = (
    f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE status = 'pending'"
    " ORDER BY created_at, seq LIMIT 1"
)


def activity(conn: sqlite3.Connection, since: float) -> dict[str, Any]:
    events = event_counts(conn.execute(ACTIVITY_EVENTS_SQL, (since,)))
    deliveries = {
        status: conn.execute(ACTIVITY_DELIVERIES_SQL, (status, since)).fetchone()[0]
        for status in ("pending", "succeeded", "failed")
    }
    oldest = conn.execute(OLDEST_PENDING_SQL).fetchone()
    return {
        "events": events,
        "deliveries": deliveries,
        "oldest_pending": None if oldest is None else delivery_json(oldest),
    }


def delivery_details(
    conn: sqlite3.Connection,
    filters: DeliveryFilter,
    provider: str | None,
    limit: int,
    now: float,
) -> list[dict[str, Any]]:
    filters = dataclasses.replace(filters, metadata=rarest_first(conn, filters.metadata))
    sql, params = delivery_details_query(
        filters, "?", provider=provider, limit=limit, now=now, join="CROSS JOIN"
    )
    rows = conn.execute(sql, params).fetchall()
    attempts: list[tuple[Any, ...]] = []
    if rows:
        marks = ",".join("?" * len(rows))
        attempts = conn.execute(
            f"SELECT delivery_id, {ATTEMPT_COLUMNS} FROM attempts"
            f" WHERE delivery_id IN ({marks}) ORDER BY id",
            [row[1] for row in rows],
        ).fetchall()
    return details_json(rows, attempts)


def waiting_callback_counts(conn: sqlite3.Connection) -> dict[str, int]:
    (held,) = conn.execute(
        "SELECT count(*) FROM watches WHERE held_status IS NOT NULL AND state = 'active'"
    ).fetchone()
    (suspect,) = conn.execute(f"SELECT count(*) FROM watches WHERE {DECIDABLE}").fetchone()
    return {"held": held, "suspect": suspect}


def active_watch_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(
        conn.execute(
            "SELECT provider, count(*) FROM watches WHERE state = 'active' GROUP BY provider"
        ).fetchall()
    )


def consecutive_failures(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(
        conn.execute(
            "SELECT s.id, coalesce(h.consecutive_failures, 0) FROM subscribers s"
            " LEFT JOIN subscriber_health h ON h.subscriber_id = s.id"
        ).fetchall()
    )
