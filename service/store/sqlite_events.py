"""SQLite statements for events: intake (``ingest``, which fans out to the subscribers) and
the reads of stored events. Each function runs inside one of ``SQLiteStore``'s batches.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from service import ids
from service.store.filters import events_query
from service.store.paging import Page, page_of, paged_query
from service.store.records import (
    EventFilter,
    IncomingEvent,
    IngestResult,
    MetadataFilter,
    Subscriber,
)
from service.store.rows import event_json, listed_event
from service.store.sqlite_subscribers import SubscriberCache


def fan_out(conn: sqlite3.Connection, event: IncomingEvent, subscribers: list[Subscriber]) -> int:
    # Deliveries of an event being archived wait (no due time) until its archive job ends.
    due = event.received_at if event.archive_deadline is None else None
    rows = [
        (
            ids.new_id("dlv"),
            event.event_id,
            sub.id,
            f"{event.provider}/{event.task_id}",
            due,
            event.received_at,
            event.received_at,
        )
        for sub in subscribers
        if sub.wants(event.provider, event.event_type, event.metadata)
    ]
    if rows:
        conn.executemany(
            "INSERT INTO deliveries (id, event_id, subscriber_id, task_key, status,"
            " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
            rows,
        )
    return len(rows)


def ingest(
    conn: sqlite3.Connection, event: IncomingEvent, subscribers: SubscriberCache
) -> IngestResult:
    """``Store.ingest``; the enabled subscribers come from ``subscribers``."""
    # One statement decides duplicate (conflict: no row), superseded (the task already has a
    # terminal event) or emitted, so the hot path costs one round trip in the common case.
    row = conn.execute(
        "INSERT INTO events (id, provider, task_id, status, progress, dedup_key, state,"
        " received_at, url_id, body, raw_body) VALUES (?, ?, ?, ?, ?, ?,"
        " CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE provider = ? AND task_id = ?)"
        " THEN 'superseded' ELSE 'emitted' END, ?, ?, ?, ?)"
        " ON CONFLICT (dedup_key) DO NOTHING RETURNING state, seq",
        (
            event.event_id,
            event.provider,
            event.task_id,
            event.status,
            event.progress,
            event.dedup_key,
            event.provider,
            event.task_id,
            event.received_at,
            event.url_id,
            event.body,
            event.raw_body,
        ),
    ).fetchone()
    if row is None:
        (existing,) = conn.execute(
            "SELECT id FROM events WHERE dedup_key = ?", (event.dedup_key,)
        ).fetchone()
        return IngestResult("duplicate", existing)
    if event.metadata:
        seq = row[1]
        conn.executemany(
            "INSERT INTO event_metadata (key, value, event_seq) VALUES (?, ?, ?)",
            [(key, value, seq) for key, value in event.metadata.items()],
        )
    if row[0] == "superseded":
        return IngestResult("superseded", event.event_id)
    if event.terminal:
        conn.execute(
            "INSERT INTO tasks (provider, task_id, terminal_status, event_id) VALUES (?, ?, ?, ?)",
            (event.provider, event.task_id, event.status, event.event_id),
        )
    if event.archive_deadline is not None:
        conn.execute(
            "INSERT INTO archive_jobs (event_id, provider, task_id, status, next_attempt_at,"
            " deadline_at, created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
            (
                event.event_id,
                event.provider,
                event.task_id,
                event.received_at,
                event.archive_deadline,
                event.received_at,
                event.received_at,
            ),
        )
    created = fan_out(conn, event, subscribers.enabled(conn, event.received_at))
    return IngestResult("accepted", event.event_id, created)


def get_event(conn: sqlite3.Connection, event_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT body, state FROM events WHERE id = ?", (event_id,)).fetchone()
    return None if row is None else event_json(row[0], row[1])


def get_event_raw(conn: sqlite3.Connection, event_id: str) -> bytes | None:
    row = conn.execute("SELECT raw_body FROM events WHERE id = ?", (event_id,)).fetchone()
    return None if row is None else bytes(row[0])


#: Index entries counted, at most, per pair of a metadata filter by ``rarest_first``.
RARITY_PROBE = 1000


def rarest_first(conn: sqlite3.Connection, pairs: MetadataFilter) -> MetadataFilter:
    """A filter of several pairs, its rarest pair first: the one a list walks (alias ``m0``,
    ``filters``), the others being checked per row.

    SQLite keeps no statistics here (the relay never runs ANALYZE), and the joins are in the
    order given, so a broad pair first (a tenant of 20,000 events before a user of 10) would
    walk all of its range: measured 107 ms against 0.1 ms with 1,000,000 events
    (``bench/metadata``). Counting at most ``RARITY_PROBE`` entries of each pair's range
    costs a few index pages. (PostgreSQL chooses from its own statistics.)
    """
    if len(pairs) < 2:
        return pairs
    counts = [
        conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM event_metadata WHERE key = ? AND value = ?"
            " LIMIT ?)",
            (key, value, RARITY_PROBE),
        ).fetchone()[0]
        for key, value in pairs
    ]
    return tuple(pair for _, pair in sorted(zip(counts, pairs, strict=True)))


def list_events(
    conn: sqlite3.Connection, filters: EventFilter, cursor: str | None, limit: int
) -> Page:
    filters = dataclasses.replace(filters, metadata=rarest_first(conn, filters.metadata))
    select, clauses, params = events_query(filters, "?", "CROSS JOIN")
    position = "m0.event_seq" if filters.metadata else "e.seq"
    sql, params = paged_query(select, (clauses, params), cursor, limit, "?", position=position)
    return page_of(conn.execute(sql, params).fetchall(), limit, listed_event)
