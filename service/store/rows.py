"""Rows to values and JSON, the same for every store.

Both stores select the same columns in the same order (the column lists below), so a row from
SQLite and a row from PostgreSQL map to the same ``Subscriber`` and the same JSON: the admin
API and the console answer alike whichever store is behind them. Only what the databases
spell differently is told apart here (a list is JSON text in SQLite, an array in PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from service.clock import rfc3339
from service.store.records import MetadataFilter, Subscriber, header_pairs

SUBSCRIBER_COLUMNS = (
    "id, url, description, providers, event_types, enabled, disabled_reason, secret,"
    " previous_secret, previous_expires_at, created_at, updated_at, metadata, headers,"
    " max_per_second"
)

#: What ``Store.update_subscriber`` may change.
UPDATABLE_SUBSCRIBER_FIELDS = frozenset(
    {
        "url",
        "description",
        "providers",
        "event_types",
        "enabled",
        "metadata",
        "headers",
        "max_per_second",
    }
)

DELIVERY_COLUMNS = (
    "seq, id, event_id, subscriber_id, status, attempt_count, next_attempt_at, last_error,"
    " created_at, updated_at"
)

ATTEMPT_COLUMNS = "attempted_at, trigger, status_code, latency_ms, error, response_excerpt"


def qualified(columns: str, table: str) -> str:
    """``columns`` (a list above) with each column prefixed by ``table.``, for joins."""
    return ", ".join(f"{table}.{column.strip()}" for column in columns.split(","))


def _text_tuple(value: Any) -> tuple[str, ...] | None:
    """A stored list: JSON text (SQLite) or an array (PostgreSQL); None stays None."""
    if value is None:
        return None
    return tuple(json.loads(value) if isinstance(value, str) else value)


def headers_text(headers: Iterable[tuple[str, str]] | None) -> str | None:
    """A subscriber's headers as both stores keep them: a JSON object; None when there are
    none."""
    pairs = dict(headers or ())
    return json.dumps(pairs, separators=(",", ":")) if pairs else None


def subscriber_from_row(row: tuple[Any, ...], now: float) -> Subscriber:
    """A ``SUBSCRIBER_COLUMNS`` row; the previous secret only while it is valid at ``now``."""
    secrets = [row[7]]
    if row[8] and row[9] and row[9] > now:
        secrets.append(row[8])
    return Subscriber(
        id=row[0],
        url=row[1],
        description=row[2],
        providers=_text_tuple(row[3]),
        event_types=_text_tuple(row[4]),
        enabled=bool(row[5]),
        disabled_reason=row[6],
        secrets=tuple(secrets),
        created_at=row[10],
        updated_at=row[11],
        metadata=metadata_filter(row[12]),
        headers=header_pairs(row[13]),
        max_per_second=row[14],
    )


def metadata_filter(stored: str | None) -> MetadataFilter | None:
    """A subscriber's stored metadata filter (a JSON object of text values) as pairs."""
    return None if stored is None else tuple(sorted(json.loads(stored).items()))


def stored_metadata_filter(pairs: MetadataFilter | None) -> str | None:
    """``metadata_filter``'s inverse: the column's JSON text."""
    return None if pairs is None else json.dumps(dict(pairs))


def subscriber_changes(changes: dict[str, Any], now: float) -> dict[str, Any]:
    """The columns ``Store.update_subscriber`` sets for ``changes``, ``updated_at`` included.

    Lists stay lists and ``enabled`` a bool: each store encodes them its own way. Enabling or
    disabling sets ``disabled_reason`` with it.
    """
    assert set(changes) <= UPDATABLE_SUBSCRIBER_FIELDS, sorted(changes)  # noqa: S101 - callers pass validated fields only (names only: header values are secrets)
    values: dict[str, Any] = {}
    for key, value in changes.items():
        if key in ("providers", "event_types"):
            value = None if value is None else [str(item) for item in value]
        elif key == "metadata":
            value = stored_metadata_filter(value)
        elif key == "headers":
            value = headers_text(value)
        elif key == "enabled":
            value = bool(value)
            values["disabled_reason"] = None if value else "disabled by an operator"
        values[key] = value
    values["updated_at"] = now
    return values


def event_json(body: str, state: str) -> dict[str, Any]:
    """A stored CloudEvent with the relay's ``state`` (``Store.get_event``)."""
    event: dict[str, Any] = json.loads(body)
    event["relay"] = {"state": state}
    return event


def listed_event(row: tuple[Any, ...]) -> str:
    """A row of ``filters.events_query`` (position, body, state) as the JSON of
    ``Store.list_events``: the stored event with ``relay.state``, as ``event_json`` gives it,
    spliced rather than parsed (the stored body is a compact JSON object)."""
    body: str = row[1]
    return f'{body[:-1]},"relay":{{"state":"{row[2]}"}}}}'


def event_counts(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """``(status, state, count)`` rows as ``{type: {"emitted": n, "superseded": n}}``."""
    events: dict[str, dict[str, int]] = {}
    for status, state, count in rows:
        events.setdefault(f"generation.{status}", {"emitted": 0, "superseded": 0})[state] = count
    return events


def delivery_json(row: tuple[Any, ...]) -> dict[str, Any]:
    """A ``DELIVERY_COLUMNS`` row as the admin API shows a delivery."""
    return {
        "id": row[1],
        "event_id": row[2],
        "subscriber_id": row[3],
        "status": row[4],
        "attempt_count": row[5],
        "next_attempt_at": None if row[6] is None or row[4] != "pending" else rfc3339(row[6]),
        "last_error": row[7],
        "created_at": rfc3339(row[8]),
        "updated_at": rfc3339(row[9]),
    }


def attempt_json(row: tuple[Any, ...]) -> dict[str, Any]:
    """An ``ATTEMPT_COLUMNS`` row as JSON."""
    return {
        "attempted_at": rfc3339(row[0]),
        "trigger": row[1],
        "status_code": row[2],
        "latency_ms": row[3],
        "error": row[4],
        "response_excerpt": row[5],
    }


def details_json(
    rows: Sequence[tuple[Any, ...]], attempts: Iterable[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """The console's delivery details from the rows of ``filters.delivery_details_query`` and
    their attempts' rows (``delivery_id`` then ``ATTEMPT_COLUMNS``, oldest first)."""
    by_delivery: dict[str, list[dict[str, Any]]] = {row[1]: [] for row in rows}
    for delivery_id, *attempt in attempts:
        by_delivery[delivery_id].append(attempt_json(tuple(attempt)))
    return [_detail_json(tuple(row), by_delivery[row[1]]) for row in rows]


def _detail_json(row: tuple[Any, ...], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``DELIVERY_COLUMNS`` row followed by provider, task_id and status of its event, and
    the delivery that keeps a failed one from being replayed."""
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


def delivery_counts_json(
    pending: int, failed: int, oldest_created_at: float | None, now: float
) -> dict[str, Any]:
    """``Store.delivery_counts``: the oldest pending delivery's age at ``now``."""
    return {
        "pending": pending,
        "failed": failed,
        "oldest_pending_seconds": (
            None if oldest_created_at is None else round(now - oldest_created_at, 3)
        ),
    }
