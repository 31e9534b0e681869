"""The WHERE clauses of the list and replay queries, shared by every SQL store.

Each store passes its parameter mark (``?`` for SQLite, ``%s`` for psycopg); the clauses are
otherwise identical, so a filter added here works everywhere.

A metadata filter (``service.store.metadata_index``) changes what a list reads from, not only
its clauses: the rows come from the index, ``event_metadata`` (alias ``m0``: the first pair's
range, walked newest event first; ``m1``... check the other pairs by primary key), joined to
the events and, for deliveries, to their deliveries (index ``deliveries_event``). SQLite is told
that order with ``CROSS JOIN`` (left to right, always); PostgreSQL plans it from its
statistics (``bench/metadata`` shows both plans).
"""

from __future__ import annotations

import json
import re
from typing import Any

from service.store.records import DeliveryFilter, EventFilter, MetadataFilter
from service.store.rows import DELIVERY_COLUMNS, qualified
from service.store.watch_model import DECIDABLE, WatchFilter


def _clauses(conditions: list[tuple[str, Any]], mark: str) -> tuple[list[str], list[Any]]:
    kept = [(template.format(mark), value) for template, value in conditions if value is not None]
    return [clause for clause, _ in kept], [value for _, value in kept]


def _metadata_joins(pairs: MetadataFilter, join: str) -> str:
    return "".join(
        f" {join} event_metadata m{i} ON m{i}.event_seq = m0.event_seq"
        for i in range(1, len(pairs))
    )


def _metadata_events(pairs: MetadataFilter, join: str) -> str:
    """The index joined to the events it finds (alias ``me``)."""
    return (
        f"event_metadata m0{_metadata_joins(pairs, join)} {join} events me ON me.seq = m0.event_seq"
    )


def _metadata_clauses(pairs: MetadataFilter, mark: str) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for i, (key, value) in enumerate(pairs):
        clauses += [f"m{i}.key = {mark}", f"m{i}.value = {mark}"]
        params += [key, value]
    return clauses, params


def events_query(filters: EventFilter, mark: str, join: str) -> tuple[str, list[str], list[Any]]:
    """``list_events``'s ``SELECT <position>, body, state FROM ...``, its clauses and
    parameters; ``join``: the store's join keyword (``CROSS JOIN`` for SQLite)."""
    clauses, params = _clauses(
        [
            ("e.provider = {}", filters.provider),
            ("e.task_id = {}", filters.task_id),
            ("e.status = {}", filters.status),
            ("e.received_at >= {}", filters.since),
        ],
        mark,
    )
    if not filters.metadata:
        return "SELECT e.seq, e.body, e.state FROM events e", clauses, params
    extra, extra_params = _metadata_clauses(filters.metadata, mark)
    joins = _metadata_joins(filters.metadata, join)
    select = (
        f"SELECT m0.event_seq, e.body, e.state FROM event_metadata m0{joins}"
        f" {join} events e ON e.seq = m0.event_seq"
    )
    return select, extra + clauses, extra_params + params


def deliveries_from(filters: DeliveryFilter, join: str) -> str:
    """What the deliveries lists read from: ``deliveries d``, or with a metadata filter, the
    index joined to the events (alias ``me``) and their deliveries (alias ``d``)."""
    if not filters.metadata:
        return "deliveries d"
    return f"{_metadata_events(filters.metadata, join)} {join} deliveries d ON d.event_id = me.id"


def delivery_clauses(
    filters: DeliveryFilter, mark: str, *, table: str = "", provider: str | None = None
) -> tuple[list[str], list[Any]]:
    """Clauses and parameters for ``list_deliveries``, ``replay`` and the console's lists.

    ``table`` qualifies the deliveries' columns (``d`` when joined); ``provider`` filters on
    the joined event's provider (alias ``e``). With ``table`` ``d`` the rows come from
    ``deliveries_from`` (the metadata index first); otherwise a metadata filter is a subquery.
    """
    d = f"{table}." if table else ""
    clauses, params = _metadata_clauses(filters.metadata, mark)
    if clauses and table != "d":  # not read through deliveries_from: a subquery of the index
        matching = _metadata_events(filters.metadata, "JOIN")
        clauses = [f"{d}event_id IN (SELECT me.id FROM {matching} WHERE {' AND '.join(clauses)})"]
    more, more_params = _clauses(
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
    return clauses + more, params + more_params


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
    for key, value in filters.metadata:
        clauses.append(_watch_metadata(mark))
        params += [key, key, *json_forms(value)]
    return clauses, params


def json_forms(text: str) -> tuple[str, str]:
    """The JSON a metadata entry holds when ``metadata_index.as_text`` makes ``text`` of it:
    the string, or also the integer or boolean that reads the same."""
    quoted = json.dumps(text, ensure_ascii=False)
    return quoted, text if re.fullmatch(r"-?[0-9]+|true|false", text) else quoted


def _watch_metadata(mark: str) -> str:
    """A clause, four parameters (key, key, ``json_forms(value)``): the watch's metadata entry,
    or else its callback URL's, is the value (as ``metadata_index.as_text`` reads it).

    Watches are few (the active ones, and finished ones until retention), so this reads their
    JSON (``->``: SQLite 3.38 and PostgreSQL) rather than keeping an index of it as events do.
    """
    doc = "metadata" if mark == "?" else "metadata::jsonb"
    url = "u.metadata" if mark == "?" else "u.metadata::jsonb"
    forms = f"({mark}, {mark})" if mark == "?" else f"({mark}::jsonb, {mark}::jsonb)"
    return (
        f"coalesce({doc} -> {mark}, (SELECT {url} -> {mark} FROM callback_urls u"
        f" WHERE u.id = watches.url_id)) IN {forms}"
    )


def delivery_details_query(
    filters: DeliveryFilter,
    mark: str,
    *,
    provider: str | None,
    limit: int,
    now: float,
    join: str = "JOIN",
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
        f" FROM {deliveries_from(filters, join)} LEFT JOIN events e ON e.id = d.event_id {where}"
        f" ORDER BY d.seq DESC LIMIT {mark}"
    )
    return sql, [now, *params, limit]


def archive_clauses(status: str | None, mark: str) -> tuple[list[str], list[Any]]:
    """Clauses and parameters for ``list_archive_jobs``."""
    return _clauses([("status = {}", status)], mark)
