"""PostgreSQL: idempotency keys (``service.store.idempotency_sql``); each function runs on one
connection of ``PostgresStore``, each statement committing on its own."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from service.errors import StorageUnavailable
from service.store import idempotency_sql as sql
from service.store.idempotency_model import EarlierRequest, IdempotencyClaim, StoredAnswer

Conn = AsyncConnection[Any]


def _q(statement: str) -> str:
    return sql.for_mark(statement, "%s")


async def claim(conn: Conn, claim: IdempotencyClaim) -> EarlierRequest | None:
    # The row found by a failed claim may be pruned (or given back) before it is read: then
    # the key is free and the claim is tried again.
    for _ in range(3):
        cursor = await conn.execute(_q(sql.CLAIM), sql.claim_params(claim))
        if await cursor.fetchone() is not None:
            return None
        cursor = await conn.execute(_q(sql.EARLIER), (claim.scope, claim.key))
        row = await cursor.fetchone()
        if row is not None:
            return sql.earlier_from_row(row)
    raise StorageUnavailable("An idempotency key kept changing hands; retry.")


async def record(conn: Conn, scope: str, key: str, token: str, answer: StoredAnswer) -> bool:
    cursor = await conn.execute(_q(sql.RECORD), sql.record_params(scope, key, token, answer))
    return cursor.rowcount == 1


async def release(conn: Conn, scope: str, key: str, token: str) -> None:
    await conn.execute(_q(sql.RELEASE), (scope, key, token))


async def prune(conn: Conn, now: float, limit: int) -> int:
    cursor = await conn.execute(_q(sql.PRUNE), (now, limit))
    return cursor.rowcount
