"""PostgreSQL statements for events and deliveries; each function runs on one connection of
``PostgresStore`` (inside a transaction where it takes locks or runs several statements).

``ingest`` and the plain ``record_attempt`` are single statements the store sends through its
pipeline (``INGEST_SQL``, ``RECORD_ATTEMPT_SQL``); the rest are here.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from service import ids
from service.store.filters import deliveries_from, delivery_clauses, newer_delivery
from service.store.paging import Page, page_of, paged_query
from service.store.postgres_subscribers import (
    LOCK_SUBSCRIBERS,
    LOCK_TASKS,
    bump_subscribers_version,
    lock_subscribers,
)
from service.store.records import (
    AttemptRecord,
    Claim,
    DeliveryFilter,
    IncomingEvent,
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

Conn = AsyncConnection[Any]

#: One statement: ``relay_ingest`` (migration 3, restated by 10 and 13) takes the locks and
#: decides server-side.
INGEST_SQL = (
    "SELECT outcome, event_id, deliveries FROM relay_ingest(%s, %s, %s, %s, %s,"
    " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::text[], %s::text[], %s, %s::text[], %s::text[])"
)


def ingest_params(event: IncomingEvent, version: str, wanted: list[str]) -> tuple[Any, ...]:
    """``INGEST_SQL``'s parameters: ``event``, fanned out to the subscribers ``wanted`` as
    the list at ``version`` of the subscribers says (the function answers 'stale' if it
    changed since)."""
    return (
        LOCK_SUBSCRIBERS,
        LOCK_TASKS,
        event.event_id,
        event.provider,
        event.task_id,
        event.status,
        event.progress,
        event.dedup_key,
        event.received_at,
        event.url_id,
        event.body,
        event.raw_body,
        event.terminal,
        version,
        [ids.new_id("dlv") for _ in wanted],
        wanted,
        event.archive_deadline,
        list(event.metadata),
        list(event.metadata.values()),
    )


# A delivery that stopped being pending while in flight (its subscriber was deleted) keeps its
# status: the attempt is logged and counted, but never re-opens it.
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, attempted_at, trigger, status_code,"
    " latency_ms, error, response_excerpt)"
    " VALUES (%(id)s, %(at)s, %(trigger)s, %(code)s, %(latency)s, %(error)s, %(excerpt)s)"
)
_UPDATE_DELIVERY = (
    "UPDATE deliveries SET"
    " status = CASE WHEN status = 'pending' THEN %(outcome)s ELSE status END,"
    " next_attempt_at = CASE WHEN status = 'pending' THEN %(next)s::double precision"
    "  ELSE next_attempt_at END,"
    " last_error = CASE WHEN status = 'pending' THEN %(last_error)s::text"
    "  ELSE last_error END,"
    " attempt_count = attempt_count + 1, cycle_attempts = cycle_attempts + 1,"
    " lease_until = NULL, updated_at = %(at)s"
    " WHERE id = %(id)s RETURNING subscriber_id"
)

#: A success of a subscriber that was not failing: the attempt and its delivery, nothing more.
RECORD_ATTEMPT_SQL = f"WITH attempt AS ({_INSERT_ATTEMPT}) {_UPDATE_DELIVERY}"

#: Any other attempt (``AttemptRecord.counts_for_health``): the same, and the subscriber's
#: failures in a row (``subscriber_health``): one more after a failure, none after a success.
RECORD_ATTEMPT_HEALTH_SQL = (
    f"WITH attempt AS ({_INSERT_ATTEMPT}), delivery AS ({_UPDATE_DELIVERY}),"
    " streak_ended AS ("
    " DELETE FROM subscriber_health h USING delivery"
    " WHERE %(succeeded)s AND h.subscriber_id = delivery.subscriber_id"
    "), streak AS ("
    " INSERT INTO subscriber_health (subscriber_id, consecutive_failures, updated_at)"
    " SELECT subscriber_id, 1, %(at)s FROM delivery WHERE NOT %(succeeded)s"
    " ON CONFLICT (subscriber_id) DO UPDATE SET"
    " consecutive_failures = subscriber_health.consecutive_failures + 1,"
    " updated_at = excluded.updated_at"
    ")"
    " SELECT subscriber_id FROM delivery"
)


def record_attempt_sql(record: AttemptRecord) -> str:
    """The statement that records ``record``."""
    return RECORD_ATTEMPT_HEALTH_SQL if record.counts_for_health else RECORD_ATTEMPT_SQL


def attempt_params(record: AttemptRecord) -> dict[str, Any]:
    """``RECORD_ATTEMPT_SQL``'s parameters."""
    last_error = (
        None if record.outcome == "succeeded" else (record.error or f"HTTP {record.status_code}")
    )
    return {
        "id": record.delivery_id,
        "at": record.attempted_at,
        "trigger": record.trigger,
        "code": record.status_code,
        "latency": record.latency_ms,
        "error": record.error,
        "excerpt": record.response_excerpt,
        "outcome": record.outcome,
        "next": record.next_attempt_at,
        "last_error": last_error,
        "succeeded": record.outcome == "succeeded",
    }


async def record_attempt_disabling(conn: Conn, record: AttemptRecord) -> None:
    """``record_attempt`` of an attempt that disables its subscriber (410 Gone); in a
    transaction."""
    assert record.disable_subscriber  # noqa: S101 - called for disabling attempts only
    # Before touching any row: subscriber changes take this lock first, then rows.
    await lock_subscribers(conn, exclusive=True)
    cursor = await conn.execute(RECORD_ATTEMPT_HEALTH_SQL, attempt_params(record))
    row = await cursor.fetchone()
    if row is not None:
        await conn.execute(
            "UPDATE subscribers SET enabled = false, disabled_reason = %s,"
            " updated_at = %s WHERE id = %s",
            (record.disable_subscriber, record.attempted_at, row[0]),
        )
        await bump_subscribers_version(conn)


async def claim_due(
    conn: Conn, now: float, limit: int, lease_until: float, exclude: frozenset[str]
) -> list[Claim]:
    # One statement. SKIP LOCKED passes over rows another worker is leasing right now;
    # a row leased and committed meanwhile is re-checked (lease_until) before it is taken.
    # The per-task check does not look at leases: while the head of a line is pending,
    # in flight or not, nothing behind it is claimable.
    cursor = await conn.execute(
        "WITH due AS ("
        "  SELECT d.seq FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
        "  WHERE d.status = 'pending' AND d.next_attempt_at <= %(now)s"
        "  AND (d.lease_until IS NULL OR d.lease_until <= %(now)s) AND s.enabled"
        "  AND d.subscriber_id <> ALL(%(exclude)s::text[])"
        "  AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending'"
        "   AND p.subscriber_id = d.subscriber_id AND p.task_key = d.task_key"
        "   AND p.seq < d.seq)"
        "  ORDER BY d.next_attempt_at, d.seq LIMIT %(limit)s"
        "  FOR UPDATE OF d SKIP LOCKED"
        "), leased AS ("
        "  UPDATE deliveries SET lease_until = %(lease_until)s FROM due"
        "  WHERE deliveries.seq = due.seq"
        "  RETURNING deliveries.seq, deliveries.id, deliveries.event_id,"
        "  deliveries.subscriber_id, deliveries.next_attempt_at,"
        "  deliveries.cycle_attempts, deliveries.attempt_count, deliveries.task_key"
        ")"
        " SELECT l.id, l.event_id, l.subscriber_id, s.url, s.secret, s.previous_secret,"
        " s.previous_expires_at, e.body, l.cycle_attempts, l.attempt_count, l.task_key,"
        " s.headers, s.max_per_second, h.consecutive_failures"
        " FROM leased l JOIN subscribers s ON s.id = l.subscriber_id"
        " JOIN events e ON e.id = l.event_id"
        " LEFT JOIN subscriber_health h ON h.subscriber_id = l.subscriber_id"
        " ORDER BY l.next_attempt_at, l.seq",
        {"now": now, "exclude": sorted(exclude), "limit": limit, "lease_until": lease_until},
    )
    return [Claim.from_row(row, now) for row in await cursor.fetchall()]


async def release_leases(conn: Conn, delivery_ids: list[str] | None) -> int:
    if delivery_ids is None:
        cursor = await conn.execute(
            "UPDATE deliveries SET lease_until = NULL"
            " WHERE status = 'pending' AND lease_until IS NOT NULL"
        )
    else:
        cursor = await conn.execute(
            "UPDATE deliveries SET lease_until = NULL WHERE id = ANY(%s::text[])",
            (list(delivery_ids),),
        )
    return cursor.rowcount


async def list_deliveries(
    conn: Conn, filters: DeliveryFilter, cursor: str | None, limit: int
) -> Page:
    sql, params = paged_query(
        f"SELECT {qualified(DELIVERY_COLUMNS, 'd')} FROM {deliveries_from(filters, 'JOIN')}",
        delivery_clauses(filters, "%s", table="d"),
        cursor,
        limit,
        "%s",
        position="d.seq",
    )
    result = await conn.execute(sql, params)
    return page_of(await result.fetchall(), limit, delivery_json)


async def get_delivery(conn: Conn, delivery_id: str) -> dict[str, Any] | None:
    """In a transaction: one snapshot for the delivery and its attempts."""
    cursor = await conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = %s", (delivery_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    cursor = await conn.execute(
        f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = %s ORDER BY id",
        (delivery_id,),
    )
    delivery = delivery_json(row)
    delivery["attempts"] = [attempt_json(a) for a in await cursor.fetchall()]
    return delivery


async def replay(
    conn: Conn,
    filters: DeliveryFilter,
    delivery_ids: list[str] | None,
    now: float,
    force: bool,
) -> ReplayResult:
    """In a transaction."""
    # Qualified: the lock statement below joins other tables with the same columns.
    params: list[Any]
    if delivery_ids is not None:
        selection, params = "deliveries.id = ANY(%s::text[])", [list(delivery_ids)]
    else:
        clauses, params = delivery_clauses(filters, "%s", table="deliveries")
        selection = " AND ".join(clauses) if clauses else "true"
    chosen = (
        f"deliveries.status = 'failed' AND {selection} AND deliveries.subscriber_id IN"
        " (SELECT id FROM subscribers WHERE enabled)"
    )
    newer: dict[str, str] = {}
    # Shared: a subscriber deleted or disabled meanwhile gets no revived delivery.
    await lock_subscribers(conn, exclusive=False)
    if not force:
        # Lock the pending deliveries of later events in the chosen ones' lines: a worker's
        # claim (SKIP LOCKED) cannot start one of them between the check and the commit. One
        # it started first is waited for and then seen in flight.
        await conn.execute(
            "SELECT n.id FROM deliveries JOIN events e ON e.id = deliveries.event_id"
            " JOIN events ne ON ne.provider = e.provider AND ne.task_id = e.task_id"
            " AND ne.seq > e.seq JOIN deliveries n ON n.event_id = ne.id"
            " AND n.subscriber_id = deliveries.subscriber_id"
            f" WHERE {chosen} AND n.status = 'pending'"
            " ORDER BY n.seq FOR SHARE OF n",
            params,
        )
        cursor = await conn.execute(
            f"SELECT id, newer FROM (SELECT id, {newer_delivery('%s')} AS newer"
            f" FROM deliveries WHERE {chosen}) c WHERE newer IS NOT NULL",
            (now, *params),
        )
        newer = {row[0]: row[1] for row in await cursor.fetchall()}
    held = f" AND {newer_delivery('%s')} IS NULL" if not force else ""
    cursor = await conn.execute(
        "UPDATE deliveries SET status = 'pending', cycle_attempts = 0,"
        " next_attempt_at = %s, lease_until = NULL, updated_at = %s"
        f" WHERE {chosen}{held}",
        (now, now, *params, *([now] if not force else [])),
    )
    return ReplayResult(cursor.rowcount, newer)


async def redeliver(
    conn: Conn, event_id: str, subscriber_ids: list[str], now: float, force: bool
) -> ReplayResult:
    """In a transaction."""
    await lock_subscribers(conn, exclusive=False)
    cursor = await conn.execute(
        "SELECT provider, task_id, seq FROM events WHERE id = %s AND state = 'emitted'",
        (event_id,),
    )
    row = await cursor.fetchone()
    if row is None or not subscriber_ids:
        return ReplayResult(0)
    provider, task_id, seq = row
    task_key = f"{provider}/{task_id}"
    # The task's intake lock: a later event's fan-out either committed before (and is seen
    # below) or comes after, behind the deliveries made here.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(%s::int, hashtext(%s))", (LOCK_TASKS, task_key)
    )
    newer: dict[str, str] = {}
    if not force:
        cursor = await conn.execute(
            "SELECT DISTINCT ON (n.subscriber_id) n.subscriber_id, n.id"
            " FROM events ne JOIN deliveries n ON n.event_id = ne.id"
            " WHERE ne.provider = %s AND ne.task_id = %s AND ne.seq > %s"
            " AND n.subscriber_id = ANY(%s::text[])"
            " ORDER BY n.subscriber_id, ne.seq DESC, n.seq DESC",
            (provider, task_id, seq, list(subscriber_ids)),
        )
        newer = {row[0]: row[1] for row in await cursor.fetchall()}
    targets = [sub_id for sub_id in subscriber_ids if sub_id not in newer]
    # While the event's outputs are being archived, a new delivery waits with the others. The
    # job's row is locked: a run finishing meanwhile releases these deliveries too, or
    # finished before and they are due now.
    cursor = await conn.execute(
        "SELECT 1 FROM archive_jobs WHERE event_id = %s AND status = 'pending' FOR UPDATE",
        (event_id,),
    )
    due = None if await cursor.fetchone() else now
    # Only to subscribers that exist: a delivery to a deleted one could never be claimed and
    # would stay pending for ever.
    cursor = await conn.execute(
        "INSERT INTO deliveries (id, event_id, subscriber_id, task_key, status,"
        " next_attempt_at, created_at, updated_at)"
        " SELECT u.id, %s, u.subscriber_id, %s, 'pending', %s::double precision, %s, %s"
        " FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY"
        " AS u(id, subscriber_id, n)"
        " WHERE EXISTS (SELECT 1 FROM subscribers s WHERE s.id = u.subscriber_id)"
        " ORDER BY u.n",
        (event_id, task_key, due, now, now, [ids.new_id("dlv") for _ in targets], targets),
    )
    return ReplayResult(cursor.rowcount, newer)


async def prune(conn: Conn, before: float, limit: int, failed_before: float | None) -> int:
    """In a transaction."""
    cursor = await conn.execute(
        "SELECT e.id FROM events e WHERE e.received_at < %s AND NOT EXISTS ("
        " SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
        " AND (d.status = 'pending' OR (d.status = 'failed'"
        "  AND (%s::double precision IS NULL OR d.updated_at >= %s))))"
        " AND NOT EXISTS (SELECT 1 FROM archive_jobs a WHERE a.event_id = e.id"
        "  AND a.status = 'pending')"
        " ORDER BY e.received_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (before, failed_before, failed_before, limit),
    )
    event_ids = [row[0] for row in await cursor.fetchall()]
    if event_ids:
        await conn.execute(
            "DELETE FROM attempts WHERE delivery_id IN"
            " (SELECT id FROM deliveries WHERE event_id = ANY(%s))",
            (event_ids,),
        )
        await conn.execute("DELETE FROM deliveries WHERE event_id = ANY(%s)", (event_ids,))
        await conn.execute("DELETE FROM archive_jobs WHERE event_id = ANY(%s)", (event_ids,))
        # The task's terminal status stays (see the SQLite store).
        await conn.execute(
            "WITH gone AS (DELETE FROM events WHERE id = ANY(%s) RETURNING seq)"
            " DELETE FROM event_metadata WHERE event_seq IN (SELECT seq FROM gone)",
            (event_ids,),
        )
    await conn.execute("DELETE FROM callback_urls WHERE expires_at < %s", (before,))
    return len(event_ids)


async def delivery_counts(conn: Conn, now: float) -> dict[str, Any]:
    cursor = await conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'pending'),"
        " count(*) FILTER (WHERE status = 'failed'),"
        " min(created_at) FILTER (WHERE status = 'pending')"
        " FROM deliveries WHERE status IN ('pending', 'failed')"
    )
    row = await cursor.fetchone()
    assert row is not None  # noqa: S101 - narrows the type: an aggregate has a row
    pending, failed, oldest = row
    return delivery_counts_json(pending, failed, oldest, now)
