"""SQLite statements for scoped API keys (``api_keys``). Each function runs inside one of
``SQLiteStore``'s batches."""

from __future__ import annotations

import sqlite3
from typing import Any

from service.store.records import ApiKey

COLUMNS = "id, name, scope, key_hash, created_at, last_used_at, revoked_at"


def _key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(*row)


def create(conn: sqlite3.Connection, key: ApiKey) -> None:
    conn.execute(
        f"INSERT INTO api_keys ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            key.id,
            key.name,
            key.scope,
            key.key_hash,
            key.created_at,
            key.last_used_at,
            key.revoked_at,
        ),
    )


def by_hash(conn: sqlite3.Connection, key_hash: str) -> ApiKey | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
    return None if row is None else _key(row)


def list_all(conn: sqlite3.Connection) -> list[ApiKey]:
    return [_key(row) for row in conn.execute(f"SELECT {COLUMNS} FROM api_keys ORDER BY seq")]


def revoke(conn: sqlite3.Connection, key_id: str, now: float) -> ApiKey | None:
    conn.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id)
    )
    conn.execute(
        "UPDATE ops_sessions SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
        (now, key_id),
    )
    row = conn.execute(f"SELECT {COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    return None if row is None else _key(row)


def touch(conn: sqlite3.Connection, key_id: str, now: float, every: float) -> None:
    conn.execute(
        "UPDATE api_keys SET last_used_at = ?"
        " WHERE id = ? AND (last_used_at IS NULL OR last_used_at <= ?)",
        (now, key_id, now - every),
    )
