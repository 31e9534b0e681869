"""SQLite: idempotency keys (``service.store.idempotency_sql``); each function runs inside one
of ``SQLiteStore``'s batches, whose one writer makes the claim atomic."""

from __future__ import annotations

import sqlite3

from service.store import idempotency_sql as sql
from service.store.idempotency_model import EarlierRequest, IdempotencyClaim, StoredAnswer


def _q(statement: str) -> str:
    return sql.for_mark(statement, "?")


def claim(conn: sqlite3.Connection, claim: IdempotencyClaim) -> EarlierRequest | None:
    if conn.execute(_q(sql.CLAIM), sql.claim_params(claim)).fetchone() is not None:
        return None
    row = conn.execute(_q(sql.EARLIER), (claim.scope, claim.key)).fetchone()
    assert row is not None  # noqa: S101 - one writer: the row the claim found is still there
    return sql.earlier_from_row(row)


def record(
    conn: sqlite3.Connection, scope: str, key: str, token: str, answer: StoredAnswer
) -> bool:
    cursor = conn.execute(_q(sql.RECORD), sql.record_params(scope, key, token, answer))
    return cursor.rowcount == 1


def release(conn: sqlite3.Connection, scope: str, key: str, token: str) -> None:
    conn.execute(_q(sql.RELEASE), (scope, key, token))


def prune(conn: sqlite3.Connection, now: float, limit: int) -> int:
    return conn.execute(_q(sql.PRUNE), (now, limit)).rowcount
