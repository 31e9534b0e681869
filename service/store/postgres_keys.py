"""PostgreSQL statements for scoped API keys (``api_keys``). Each function runs on one
connection of ``PostgresStore``."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from service.store.records import ApiKey

Conn = AsyncConnection[Any]
COLUMNS = "id, name, scope, key_hash, created_at, last_used_at, revoked_at"


def _key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(*row)


async def create(conn: Conn, key: ApiKey) -> None:
    await conn.execute(
        f"INSERT INTO api_keys ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
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


async def by_hash(conn: Conn, key_hash: str) -> ApiKey | None:
    cursor = await conn.execute(f"SELECT {COLUMNS} FROM api_keys WHERE key_hash = %s", (key_hash,))
    row = await cursor.fetchone()
    return None if row is None else _key(row)


async def list_all(conn: Conn) -> list[ApiKey]:
    cursor = await conn.execute(f"SELECT {COLUMNS} FROM api_keys ORDER BY seq")
    return [_key(row) for row in await cursor.fetchall()]


async def revoke(conn: Conn, key_id: str, now: float) -> ApiKey | None:
    """In a transaction: the key and its console sessions end together."""
    cursor = await conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, %s) WHERE id = %s"
        f" RETURNING {COLUMNS}",
        (now, key_id),
    )
    row = await cursor.fetchone()
    await conn.execute(
        "UPDATE ops_sessions SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL",
        (now, key_id),
    )
    return None if row is None else _key(row)


async def touch(conn: Conn, key_id: str, now: float, every: float) -> None:
    await conn.execute(
        "UPDATE api_keys SET last_used_at = %s"
        " WHERE id = %s AND (last_used_at IS NULL OR last_used_at <= %s)",
        (now, key_id, now - every),
    )
