"""SQLite statements for deliveries; each function runs inside one transaction.

``SQLiteStore`` runs these in its batches on the event loop. They take the connection first and
never commit: the store's group commit does.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from service import ids
from service.store.filters import deliveries_from, delivery_clauses, newer_delivery
from service.store.paging import Page, page_of, paged_query
from service.store.records import (
    AttemptRecord,
    Claim,
    DeliveryFilter,
    ReplayResult,
)
from service.store.rows import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    attempt_json,
    delivery_counts_json,
    delivery_json,
    qualified,
)
from service.store.sqlite_events import rarest_first
from service.store.sqlite_subscribers import bump_subscribers_version


def claim_due(
    conn: sqlite3.Connection, now: float, limit: int, lease_until: float, exclude: frozenset[str]
) -> list[Claim]:
    excluded = ",".join("?" * len(exclude))
    exclusion = f"AND d.subscriber_id NOT IN ({excluded})" if exclude else ""
    # INDEXED BY: left to itself, the planner picks deliveries_status (an equality on status)
    # and sorts every pending delivery for each claim: 21 ms per claim with 20,000 pending,
    # against 1 ms walking deliveries_due in the claim's own order and stopping at the limit.
    rows = conn.execute(
        "SELECT d.seq FROM deliveries d INDEXED BY deliveries_due"
        " JOIN subscribers s ON s.id = d.subscriber_id"
        " WHERE d.status = 'pending' AND d.next_attempt_at <= ?"
        " AND (d.lease_until IS NULL OR d.lease_until <= ?) AND s.enabled = 1"
        f" {exclusion}"
        " AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending'"
        "  AND p.subscriber_id = d.subscriber_id AND p.task_key = d.task_key AND p.seq < d.seq)"
        " ORDER BY d.next_attempt_at, d.seq LIMIT ?",
        (now, now, *exclude, limit),
    ).fetchall()
    if not rows:
        return []
    seqs = [row[0] for row in rows]
    marks = ",".join("?" * len(seqs))
    conn.execute(
        f"UPDATE deliveries SET lease_until = ? WHERE seq IN ({marks})",
        (lease_until, *seqs),
    )
    claimed = conn.execute(
        "SELECT d.id, d.event_id, d.subscriber_id, s.url, s.secret, s.previous_secret,"
        " s.previous_expires_at, e.body, d.cycle_attempts, d.attempt_count, d.task_key,"
        " s.headers, s.max_per_second, h.consecutive_failures"
        " FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
        " JOIN events e ON e.id = d.event_id"
        " LEFT JOIN subscriber_health h ON h.subscriber_id = d.subscriber_id"
        f" WHERE d.seq IN ({marks})"
        " ORDER BY d.next_attempt_at, d.seq",
        seqs,
    ).fetchall()
    return [Claim.from_row(row, now) for row in claimed]


def record_attempt(conn: sqlite3.Connection, record: AttemptRecord) -> None:
    conn.execute(
        "INSERT INTO attempts (delivery_id, attempted_at, trigger, status_code, latency_ms, error,"
        " response_excerpt) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            record.delivery_id,
            record.attempted_at,
            record.trigger,
            record.status_code,
            record.latency_ms,
            record.error,
            record.response_excerpt,
        ),
    )
    last_error = (
        None if record.outcome == "succeeded" else (record.error or f"HTTP {record.status_code}")
    )
    conn.execute(
        "UPDATE deliveries SET status = ?, attempt_count = attempt_count + 1,"
        " cycle_attempts = cycle_attempts + 1, next_attempt_at = ?, lease_until = NULL,"
        " last_error = ?, updated_at = ? WHERE id = ? AND status = 'pending'",
        (
            record.outcome,
            record.next_attempt_at,
            last_error,
            record.attempted_at,
            record.delivery_id,
        ),
    )
    # Failures in a row: a success of a subscriber that was not failing writes nothing more.
    if not record.counts_for_health:
        pass
    elif record.outcome == "succeeded":
        conn.execute(
            "DELETE FROM subscriber_health WHERE subscriber_id ="
            " (SELECT subscriber_id FROM deliveries WHERE id = ?)",
            (record.delivery_id,),
        )
    else:
        conn.execute(
            "INSERT INTO subscriber_health (subscriber_id, consecutive_failures, updated_at)"
            " SELECT subscriber_id, 1, ? FROM deliveries WHERE id = ?"
            " ON CONFLICT (subscriber_id) DO UPDATE SET"
            " consecutive_failures = consecutive_failures + 1, updated_at = excluded.updated_at",
            (record.attempted_at, record.delivery_id),
        )
    if record.disable_subscriber:
        conn.execute(
            "UPDATE subscribers SET enabled = 0, disabled_reason = ?, updated_at = ?"
            " WHERE id = (SELECT subscriber_id FROM deliveries WHERE id = ?)",
            (record.disable_subscriber, record.attempted_at, record.delivery_id),
        )
        bump_subscribers_version(conn)


def release_leases(conn: sqlite3.Connection, delivery_ids: list[str] | None) -> int:
    if delivery_ids is None:
        return conn.execute(
            "UPDATE deliveries SET lease_until = NULL"
            " WHERE status = 'pending' AND lease_until IS NOT NULL"
        ).rowcount
    marks = ",".join("?" * len(delivery_ids))
    return conn.execute(
        f"UPDATE deliveries SET lease_until = NULL WHERE id IN ({marks})",
        delivery_ids,
    ).rowcount


def list_deliveries(
    conn: sqlite3.Connection, filters: DeliveryFilter, cursor: str | None, limit: int
) -> Page:
    filters = dataclasses.replace(filters, metadata=rarest_first(conn, filters.metadata))
    sql, params = paged_query(
        f"SELECT {qualified(DELIVERY_COLUMNS, 'd')} FROM {deliveries_from(filters, 'CROSS JOIN')}",
        delivery_clauses(filters, "?", table="d"),
        cursor,
        limit,
        "?",
        position="d.seq",
    )
    return page_of(conn.execute(sql, params).fetchall(), limit, delivery_json)


def get_delivery(conn: sqlite3.Connection, delivery_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?",
        (delivery_id,),
    ).fetchone()
    if row is None:
        return None
    delivery = delivery_json(row)
    delivery["attempts"] = [
        attempt_json(a)
        for a in conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = ? ORDER BY id",
            (delivery_id,),
        )
    ]
    return delivery


def replay(
    conn: sqlite3.Connection,
    filters: DeliveryFilter,
    delivery_ids: list[str] | None,
    now: float,
    force: bool,
) -> ReplayResult:
    if delivery_ids is not None:
        marks = ",".join("?" * len(delivery_ids))
        selection, params = f"id IN ({marks})", list(delivery_ids)
    else:
        clauses, params = delivery_clauses(filters, "?")
        selection = " AND ".join(clauses) if clauses else "1 = 1"
    chosen = (
        f"status = 'failed' AND {selection}"
        " AND subscriber_id IN (SELECT id FROM subscribers WHERE enabled = 1)"
    )
    newer: dict[str, str] = {}
    if not force:
        # The same transaction as the update below (the batch is BEGIN IMMEDIATE, and claims
        # run in it too): what is read here is what the update sees.
        newer = dict(
            conn.execute(
                f"SELECT id, newer FROM (SELECT id, {newer_delivery('?')} AS newer"
                f" FROM deliveries WHERE {chosen}) WHERE newer IS NOT NULL",
                (now, *params),
            ).fetchall()
        )
    held = f" AND {newer_delivery('?')} IS NULL" if not force else ""
    count = conn.execute(
        "UPDATE deliveries SET status = 'pending', cycle_attempts = 0, next_attempt_at = ?,"
        f" lease_until = NULL, updated_at = ? WHERE {chosen}{held}",
        (now, now, *params, *([now] if not force else [])),
    ).rowcount
    return ReplayResult(count, newer)


def redeliver(
    conn: sqlite3.Connection, event_id: str, subscriber_ids: list[str], now: float, force: bool
) -> ReplayResult:
    row = conn.execute(
        "SELECT provider, task_id, seq FROM events WHERE id = ? AND state = 'emitted'",
        (event_id,),
    ).fetchone()
    if row is None:
        return ReplayResult(0)
    provider, task_id, seq = row
    known = [
        sub_id
        for sub_id in subscriber_ids
        if conn.execute("SELECT 1 FROM subscribers WHERE id = ?", (sub_id,)).fetchone()
    ]
    newer: dict[str, str] = {}
    if not force:
        for sub_id in known:
            later = conn.execute(
                "SELECT n.id FROM events ne JOIN deliveries n ON n.event_id = ne.id"
                " WHERE ne.provider = ? AND ne.task_id = ? AND ne.seq > ?"
                " AND n.subscriber_id = ? ORDER BY ne.seq DESC, n.seq DESC LIMIT 1",
                (provider, task_id, seq, sub_id),
            ).fetchone()
            if later is not None:
                newer[sub_id] = later[0]
    targets = [sub_id for sub_id in known if sub_id not in newer]
    # While the event's outputs are being archived, a new delivery waits with the others.
    archiving = conn.execute(
        "SELECT 1 FROM archive_jobs WHERE event_id = ? AND status = 'pending'", (event_id,)
    ).fetchone()
    due = None if archiving else now
    conn.executemany(
        "INSERT INTO deliveries (id, event_id, subscriber_id, task_key, status,"
        " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
        [
            (ids.new_id("dlv"), event_id, sub_id, f"{provider}/{task_id}", due, now, now)
            for sub_id in targets
        ],
    )
    return ReplayResult(len(targets), newer)


def delivery_counts(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    counts = dict(
        conn.execute(
            "SELECT status, count(*) FROM deliveries WHERE status IN ('pending', 'failed')"
            " GROUP BY status"
        ).fetchall()
    )
    (oldest,) = conn.execute(
        "SELECT min(created_at) FROM deliveries WHERE status = 'pending'"
    ).fetchone()
    return delivery_counts_json(counts.get("pending", 0), counts.get("failed", 0), oldest, now)


def prune(conn: sqlite3.Connection, before: float, limit: int, failed_before: float | None) -> int:
    seqs = [
        row[0]
        for row in conn.execute(
            "SELECT e.seq FROM events e WHERE e.received_at < ? AND NOT EXISTS ("
            " SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
            " AND (d.status = 'pending' OR (d.status = 'failed'"
            "  AND (? IS NULL OR d.updated_at >= ?))))"
            " AND NOT EXISTS (SELECT 1 FROM archive_jobs a WHERE a.event_id = e.id"
            "  AND a.status = 'pending')"
            " ORDER BY e.received_at LIMIT ?",
            (before, failed_before, failed_before, limit),
        )
    ]
    if seqs:
        marks = ",".join("?" * len(seqs))
        chosen = f"SELECT id FROM events WHERE seq IN ({marks})"
        conn.execute(
            "DELETE FROM attempts WHERE delivery_id IN"
            f" (SELECT id FROM deliveries WHERE event_id IN ({chosen}))",
            seqs,
        )
        conn.execute(f"DELETE FROM deliveries WHERE event_id IN ({chosen})", seqs)
        conn.execute(f"DELETE FROM archive_jobs WHERE event_id IN ({chosen})", seqs)
        # The task's row (its terminal status) stays: it is what supersedes a late update
        # once the events and their dedup keys are gone.
        conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)
        conn.execute(f"DELETE FROM event_metadata WHERE event_seq IN ({marks})", seqs)
    conn.execute("DELETE FROM callback_urls WHERE expires_at < ?", (before,))
    return len(seqs)
