"""The idempotency keys' statements, the same for both stores
(``service.store.idempotency_model``).

SQLite and PostgreSQL speak the same SQL here but for the parameter mark, so each statement is
written once with ``{m}``; ``sqlite_idempotency`` and ``postgres_idempotency`` run them.

The claim is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``: a key nobody holds is
inserted, a key whose row expired (or whose claim was abandoned) is taken over, and a key held
by a live row is left alone, in which case nothing is returned. On PostgreSQL a second replica's
insert of the same key waits for the first's to commit, then sees its row: of several requests
claiming one key at once, exactly one gets it.
"""

from __future__ import annotations

from typing import Any

from service.store.idempotency_model import EarlierRequest, IdempotencyClaim, StoredAnswer

CLAIM = (
    "INSERT INTO idempotency_keys (scope, key, request_hash, claim, claimed_at, expires_at)"
    " VALUES ({m}, {m}, {m}, {m}, {m}, {m})"
    " ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash,"
    " claim = excluded.claim, claimed_at = excluded.claimed_at,"
    " expires_at = excluded.expires_at, status = NULL, content_type = NULL, body = NULL"
    " WHERE idempotency_keys.expires_at <= {m}"
    " OR (idempotency_keys.status IS NULL AND idempotency_keys.claimed_at < {m})"
    " RETURNING claim"
)
EARLIER = (
    "SELECT request_hash, status, content_type, body FROM idempotency_keys"
    " WHERE scope = {m} AND key = {m}"
)
#: Only the claim that holds the key records its answer (a claim taken over records nothing).
RECORD = (
    "UPDATE idempotency_keys SET status = {m}, content_type = {m}, body = {m}"
    " WHERE scope = {m} AND key = {m} AND claim = {m} AND status IS NULL"
)
RELEASE = (
    "DELETE FROM idempotency_keys"
    " WHERE scope = {m} AND key = {m} AND claim = {m} AND status IS NULL"
)
PRUNE = (
    "DELETE FROM idempotency_keys WHERE (scope, key) IN"
    " (SELECT scope, key FROM idempotency_keys WHERE expires_at <= {m} LIMIT {m})"
)


def for_mark(statement: str, mark: str) -> str:
    """``statement`` with its parameter marks filled in."""
    return statement.replace("{m}", mark)


def claim_params(claim: IdempotencyClaim) -> tuple[Any, ...]:
    return (
        claim.scope,
        claim.key,
        claim.request_hash,
        claim.token,
        claim.now,
        claim.expires_at,
        claim.now,
        claim.stale_before,
    )


def record_params(scope: str, key: str, token: str, answer: StoredAnswer) -> tuple[Any, ...]:
    return (answer.status, answer.content_type, answer.body, scope, key, token)


def earlier_from_row(row: tuple[Any, ...]) -> EarlierRequest:
    request_hash, status, content_type, body = row
    answer = None if status is None else StoredAnswer(int(status), content_type, bytes(body))
    return EarlierRequest(str(request_hash), answer)
