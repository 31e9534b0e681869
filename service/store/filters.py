"""The WHERE clauses of the list and replay queries, shared by every SQL store.

Each store passes its parameter mark (``?`` for SQLite, ``%s`` for psycopg); the clauses are
otherwise identical, so a filter added here works everywhere.
"""

from __future__ import annotations

from typing import Any

from service.store.base import DeliveryFilter, EventFilter


def _clauses(conditions: list[tuple[str, Any]], mark: str) -> tuple[list[str], list[Any]]:
    kept = [(template.format(mark), value) for template, value in conditions if value is not None]
    return [clause for clause, _ in kept], [value for _, value in kept]


def event_clauses(
    filters: EventFilter, before: int | None, mark: str
) -> tuple[list[str], list[Any]]:
    """Clauses and parameters for ``list_events`` (``before``: the cursor's position)."""
    return _clauses(
        [
            ("provider = {}", filters.provider),
            ("task_id = {}", filters.task_id),
            ("status = {}", filters.status),
            ("received_at >= {}", filters.since),
            ("seq < {}", before),
        ],
        mark,
    )


def delivery_clauses(filters: DeliveryFilter, mark: str) -> tuple[list[str], list[Any]]:
    """Clauses and parameters for ``list_deliveries`` and ``replay``."""
    return _clauses(
        [
            ("status = {}", filters.status),
            ("subscriber_id = {}", filters.subscriber_id),
            ("event_id = {}", filters.event_id),
            ("updated_at >= {}", filters.since),
            ("updated_at < {}", filters.until),
        ],
        mark,
    )
