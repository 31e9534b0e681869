"""SQLite statements for the relay's small tables: its own values (``relay_meta``), minted
callback URLs and console sessions. Each function runs inside one of ``SQLiteStore``'s batches.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any


def ping(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES ('last_ping', datetime('now'))"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )


def get_or_create_meta(conn: sqlite3.Connection, key: str, value: str) -> str:
    conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
        (key, value),
    )
    row = conn.execute("SELECT value FROM relay_meta WHERE key = ?", (key,)).fetchone()
    return str(row[0])


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM relay_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def create_callback_url(
    conn: sqlite3.Connection,
    url_id: str,
    provider: str,
    metadata: dict[str, Any],
    created_at: float,
    expires_at: float,
    reusable: bool,
) -> None:
    conn.execute(
        "INSERT INTO callback_urls (id, provider, metadata, created_at, expires_at, reusable)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            url_id,
            provider,
            json.dumps(metadata, separators=(",", ":")),
            created_at,
            expires_at,
            int(reusable),
        ),
    )


def bind_callback_url(conn: sqlite3.Connection, url_id: str, task_id: str) -> str | None:
    # One writer at a time (the store's single connection): update, then read back.
    conn.execute(
        "UPDATE callback_urls SET task_id = ? WHERE id = ? AND NOT reusable AND task_id IS NULL",
        (task_id, url_id),
    )
    row = conn.execute(
        "SELECT task_id FROM callback_urls WHERE id = ? AND NOT reusable", (url_id,)
    ).fetchone()
    return None if row is None else str(row[0])


def get_callback_metadata(conn: sqlite3.Connection, url_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT metadata FROM callback_urls WHERE id = ?", (url_id,)).fetchone()
    if row is None:
        return None
    metadata: dict[str, Any] = json.loads(row[0])
    return metadata


def create_ops_session(
    conn: sqlite3.Connection,
    session_id: str,
    created_at: float,
    expires_at: float,
    scope: str,
    key_id: str | None,
) -> None:
    conn.execute("DELETE FROM ops_sessions WHERE expires_at < ?", (created_at,))
    conn.execute(
        "INSERT INTO ops_sessions (id, created_at, expires_at, scope, key_id)"
        " VALUES (?, ?, ?, ?, ?)",
        (session_id, created_at, expires_at, scope, key_id),
    )


def ops_session_live(conn: sqlite3.Connection, session_id: str, now: float) -> str | None:
    row = conn.execute(
        "SELECT scope FROM ops_sessions WHERE id = ? AND revoked_at IS NULL AND expires_at > ?",
        (session_id, now),
    ).fetchone()
    return None if row is None else str(row[0])


def revoke_ops_session(conn: sqlite3.Connection, session_id: str, now: float) -> None:
    conn.execute(
        "UPDATE ops_sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        (now, session_id),
    )
