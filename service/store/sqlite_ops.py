"""SQLite queries for operators (the ops console, ``relay status``): reads only.

They run on a read-only connection of their own in a worker thread, never in the store's
group-commit batch on the event loop: an operator counting an hour of events must not hold
up callbacks. In WAL mode such a reader sees the last commit and blocks no writer; SQLite
releases the GIL while it works.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from service.errors import StorageUnavailable
from service.store.base import DeliveryFilter
from service.store.filters import delivery_clauses, newer_delivery
from service.store.sqlite_deliveries import DELIVERY_COLUMNS, attempt_json, delivery_json
from service.store.watch_model import DECIDABLE

if TYPE_CHECKING:
    from service.store.sqlite import SQLiteStore

T = TypeVar("T")

_D_COLUMNS = ", ".join(f"d.{column.strip()}" for column in DELIVERY_COLUMNS.split(","))


async def read(store: SQLiteStore, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(connection)`` on a read-only connection in a thread (in the batch for ``:memory:``)."""
    if store._conn is None:
        raise StorageUnavailable("The store is not open.")
    if store._lost is not None:  # the file at the path is not the relay's any more
        raise StorageUnavailable(store._lost)
    if store.path == ":memory:":
        return await store._run(fn)
    return await asyncio.to_thread(_read_once, store.path, fn)


def _read_once(path: str, fn: Callable[[sqlite3.Connection], T]) -> T:
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


def activity(conn: sqlite3.Connection, since: float) -> dict[str, Any]:
    events: dict[str, dict[str, int]] = {}
    for status, state, count in conn.execute(
        "SELECT status, state, count(*) FROM events WHERE received_at >= ? GROUP BY 1, 2",
        (since,),
    ):
        events.setdefault(f"generation.{status}", {"emitted": 0, "superseded": 0})[state] = count
    deliveries = {
        status: conn.execute(
            "SELECT count(*) FROM deliveries WHERE status = ? AND updated_at >= ?",
            (status, since),
        ).fetchone()[0]
        for status in ("pending", "succeeded", "failed")
    }
    oldest = conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE status = 'pending'"
        " ORDER BY created_at, seq LIMIT 1"
    ).fetchone()
    return {
        "events": events,
        "deliveries": deliveries,
        "oldest_pending": None if oldest is None else delivery_json(oldest),
    }


def detail_json(row: tuple[Any, ...], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``DELIVERY_COLUMNS`` row followed by provider, task_id and status of its event, and
    (``NEWER``) the delivery that keeps a failed one from being replayed."""
    delivery = delivery_json(row)
    provider, task_id, status, newer = row[-4:]
    delivery.update(
        provider=provider,
        task_id=task_id,
        event_type=None if status is None else f"generation.{status}",
        newer_delivery_id=newer,
        attempts=attempts,
    )
    return delivery


def newer_column(mark: str) -> str:
    """``delivery_details``' last column: for a failed delivery, the one that holds back its
    replay (``Store.replay``), else NULL. One parameter: now."""
    return f"CASE WHEN d.status = 'failed' THEN {newer_delivery(mark, table='d')} END"


def delivery_details(
    conn: sqlite3.Connection, filters: DeliveryFilter, provider: str | None, limit: int
) -> list[dict[str, Any]]:
    clauses, params = delivery_clauses(filters, "?", table="d", provider=provider)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT {_D_COLUMNS}, e.provider, e.task_id, e.status, {newer_column('?')}"
        f" FROM deliveries d LEFT JOIN events e ON e.id = d.event_id {where}"
        " ORDER BY d.seq DESC LIMIT ?",
        (time.time(), *params, limit),
    ).fetchall()
    attempts: dict[str, list[dict[str, Any]]] = {row[1]: [] for row in rows}
    if attempts:
        marks = ",".join("?" * len(attempts))
        for delivery_id, *attempt in conn.execute(
            "SELECT delivery_id, attempted_at, trigger, status_code, latency_ms, error,"
            f" response_excerpt FROM attempts WHERE delivery_id IN ({marks}) ORDER BY id",
            list(attempts),
        ):
            attempts[delivery_id].append(attempt_json(tuple(attempt)))
    return [detail_json(row, attempts[row[1]]) for row in rows]


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
