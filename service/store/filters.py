"""The WHERE clauses of the list and replay queries, shared by every SQL store.

Each store passes its parameter mark (``?`` for SQLite, ``%s`` for psycopg); the clauses are
otherwise identical, so a filter added here works everywhere.
"""

from __future__ import annotations

from typing import Any

from service.store.records import DeliveryFilter, EventFilter
from service.store.rows import DELIVERY_COLUMNS, qualified
from service.store.watch_model import DECIDABLE, WatchFilter


def _clauses(conditions: list[tuple[str, Any]], mark: str) -> tuple[list[str], list[Any]]:
    kept = [(template.format(mark), value) for template, value in conditions if value is not None]
    return [clause for clause, _ in kept], [value for _, value in kept]


def event_clauses(filters: EventFilter, mark: str) -> tuple[list[str], list[Any]]:
    """Clauses and parameters for ``list_events``."""
    return _clauses(
        [
            ("provider = {}", filters.provider),
            ("task_id = {}", filters.task_id),
            ("status = {}", filters.status),
            ("received_at >= {}", filters.since),
        ],
        mark,
    )


def delivery_clauses(
    filters: DeliveryFilter, mark: str, *, table: str = "", provider: str | None = None
) -> tuple[list[str], list[Any]]:
    """Clauses and parameters for ``list_deliveries``, ``replay`` and the console's lists.

    ``table`` qualifies the deliveries' columns (``d`` when joined); ``provider`` filters on
    the joined event's provider (alias ``e``).
    """
    d = f"{table}." if table else ""
    return _clauses(
        [
            (f"{d}status = {{}}", filters.status),
            (f"{d}subscriber_id = {{}}", filters.subscriber_id),
            (f"{d}event_id = {{}}", filters.event_id),
            ("e.provider = {}", provider),
            (f"{d}updated_at >= {{}}", filters.since),
            (f"{d}updated_at < {{}}", filters.until),
        ],
        mark,
    )


def newer_delivery(mark: str, table: str = "deliveries") -> str:
    """A scalar subquery: the id of the delivery that keeps a failed delivery (the outer row,
    ``table``) from being replayed, or NULL. One parameter: the replay's time.

    That is a delivery to the same subscriber of a later event (higher ``seq``) of the same
    task which succeeded or is in flight (pending, leased past the replay's time); the newest
    one if several (see ``Store.replay``). It walks the task's events (index ``events_task``),
    then their deliveries (``deliveries_event``).
    """
    return (
        "(SELECT ld.id FROM events te"
        " JOIN events le ON le.provider = te.provider AND le.task_id = te.task_id"
        " AND le.seq > te.seq"
        f" JOIN deliveries ld ON ld.event_id = le.id AND ld.subscriber_id = {table}.subscriber_id"
        f" WHERE te.id = {table}.event_id AND (ld.status = 'succeeded'"
        f" OR (ld.status = 'pending' AND ld.lease_until > {mark}))"
        " ORDER BY le.seq DESC, ld.seq DESC LIMIT 1)"
    )


def watch_clauses(filters: WatchFilter, mark: str) -> tuple[list[str], list[Any]]:
    """Clauses and parameters for ``list_watches``."""
    clauses, params = _clauses(
        [
            ("state = {}", filters.state),
            ("provider = {}", filters.provider),
            ("task_id = {}", filters.task_id),
        ],
        mark,
    )
    if filters.suspect or filters.undecided:
        clauses.append("suspect IS NOT NULL")
    if filters.undecided:
        clauses.append(DECIDABLE)
    if filters.held:
        clauses.append("held_status IS NOT NULL AND state = 'active'")
    if filters.flagged:
        clauses.append("unknown_status IS NOT NULL AND state = 'active'")
    return clauses, params


def delivery_details_query(
    filters: DeliveryFilter, mark: str, *, provider: str | None, limit: int, now: float
) -> tuple[str, list[Any]]:
    """The console's delivery details, newest first, and the query's parameters: each row is
    ``DELIVERY_COLUMNS`` (alias ``d``), its event's provider, task_id and status, and for a
    failed delivery the one that holds back its replay at ``now`` (``Store.replay``), else
    NULL (``rows.details_json`` reads them)."""
    clauses, params = delivery_clauses(filters, mark, table="d", provider=provider)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    newer = f"CASE WHEN d.status = 'failed' THEN {newer_delivery(mark, table='d')} END"
    sql = (
        f"SELECT {qualified(DELIVERY_COLUMNS, 'd')}, e.provider, e.task_id, e.status, {newer}"
        f" FROM deliveries d LEFT JOIN events e ON e.id = d.event_id {where}"
        f" ORDER BY d.seq DESC LIMIT {mark}"
    )
    return sql, [now, *params, limit]


def archive_clauses(status: str | None, mark: str) -> tuple[list[str], list[Any]]:
    """Clauses and parameters for ``list_archive_jobs``."""
    return _clauses([("status = {}", status)], mark)
