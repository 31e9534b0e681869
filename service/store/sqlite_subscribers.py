"""SQLite statements for subscribers, and the cache of the enabled ones that intake fans out
to; each function runs inside one of ``SQLiteStore``'s batches and never commits.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from service.store.paging import Page, page_of, paged_query
from service.store.records import Subscriber
from service.store.rows import (
    SUBSCRIBER_COLUMNS,
    headers_text,
    stored_metadata_filter,
    subscriber_changes,
    subscriber_from_row,
)


def _json_list(value: tuple[str, ...] | None) -> str | None:
    return None if value is None else json.dumps(list(value))


def bump_subscribers_version(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES ('subscribers_version', '1')"
        " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )


class SubscriberCache:
    """Enabled subscribers for fan-out, parsed once per change instead of once per callback.

    Changes made through this store invalidate it at once. Changes made by another process (a
    ``relay subscribers`` command) are seen by the next batch: each batch, once it holds the
    write lock, asks SQLite whether another connection committed since the last batch
    (``PRAGMA data_version``), and if one did, ``subscribers_version`` is read again. Holding
    the lock, no removal can commit between that check and the fan-out; one that commits
    later cancels what the batch created. (A cache that looked again only every second
    created deliveries for a subscriber removed meanwhile, which stayed pending for ever.)
    """

    def __init__(self) -> None:
        self.version: str | None = None
        self.data_version: int | None = None
        self.stale = True
        self.subscribers: list[Subscriber] = []

    def invalidate(self) -> None:
        self.stale = True

    def check(self, conn: sqlite3.Connection) -> None:
        """Once per batch, inside its transaction: did another connection commit?"""
        (data_version,) = conn.execute("PRAGMA data_version").fetchone()
        if data_version != self.data_version:
            self.data_version = data_version
            self.stale = True

    def enabled(self, conn: sqlite3.Connection, now: float) -> list[Subscriber]:
        if not self.stale:
            return self.subscribers
        row = conn.execute(
            "SELECT value FROM relay_meta WHERE key = 'subscribers_version'"
        ).fetchone()
        version = row[0] if row else "0"
        if version != self.version:
            rows = conn.execute(
                f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE enabled = 1"
            ).fetchall()
            self.subscribers = [subscriber_from_row(r, now) for r in rows]
            self.version = version
        self.stale = False
        return self.subscribers


def create_subscriber(conn: sqlite3.Connection, sub: Subscriber) -> None:
    conn.execute(
        "INSERT INTO subscribers (id, url, description, providers, event_types, enabled, secret,"
        " created_at, updated_at, metadata, headers, max_per_second)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            sub.id,
            sub.url,
            sub.description,
            _json_list(sub.providers),
            _json_list(sub.event_types),
            int(sub.enabled),
            sub.secrets[0],
            sub.created_at,
            sub.updated_at,
            stored_metadata_filter(sub.metadata),
            headers_text(sub.headers),
            sub.max_per_second,
        ),
    )
    bump_subscribers_version(conn)


def get_subscriber(conn: sqlite3.Connection, subscriber_id: str, now: float) -> Subscriber | None:
    row = conn.execute(
        f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE id = ?",
        (subscriber_id,),
    ).fetchone()
    return None if row is None else subscriber_from_row(row, now)


def list_subscribers(conn: sqlite3.Connection, cursor: str | None, limit: int, now: float) -> Page:
    sql, params = paged_query(
        f"SELECT rowid, {SUBSCRIBER_COLUMNS} FROM subscribers",
        ([], []),
        cursor,
        limit,
        "?",
        position="rowid",
        newest_first=False,
    )
    return page_of(
        conn.execute(sql, params).fetchall(), limit, lambda row: subscriber_from_row(row[1:], now)
    )


def update_subscriber(
    conn: sqlite3.Connection, subscriber_id: str, changes: dict[str, Any], now: float
) -> Subscriber | None:
    values = subscriber_changes(changes, now)
    for key in ("providers", "event_types"):
        if key in values:
            values[key] = None if values[key] is None else json.dumps(values[key])
    if "enabled" in values:
        values["enabled"] = int(values["enabled"])
    assignments = ", ".join(f"{key} = ?" for key in values)
    cursor = conn.execute(
        f"UPDATE subscribers SET {assignments} WHERE id = ?",
        (*values.values(), subscriber_id),
    )
    if cursor.rowcount == 0:
        return None
    bump_subscribers_version(conn)
    return get_subscriber(conn, subscriber_id, now)


def delete_subscriber(conn: sqlite3.Connection, subscriber_id: str, now: float) -> bool:
    if conn.execute("DELETE FROM subscribers WHERE id = ?", (subscriber_id,)).rowcount == 0:
        return False
    conn.execute(
        "UPDATE deliveries SET status = 'canceled', last_error = 'subscriber deleted',"
        " lease_until = NULL, updated_at = ? WHERE subscriber_id = ? AND status = 'pending'",
        (now, subscriber_id),
    )
    conn.execute("DELETE FROM subscriber_health WHERE subscriber_id = ?", (subscriber_id,))
    bump_subscribers_version(conn)
    return True


def rotate_secret(
    conn: sqlite3.Connection, subscriber_id: str, new_secret: str, valid_until: float, now: float
) -> Subscriber | None:
    cursor = conn.execute(
        "UPDATE subscribers SET previous_secret = secret, previous_expires_at = ?, secret = ?,"
        " updated_at = ? WHERE id = ?",
        (valid_until, new_secret, now, subscriber_id),
    )
    if cursor.rowcount == 0:
        return None
    bump_subscribers_version(conn)
    return get_subscriber(conn, subscriber_id, now)
