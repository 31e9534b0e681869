"""What the store keeps for an ``Idempotency-Key`` (``service.idempotency``): a claim on the key
for one request, and the answer that request got."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IdempotencyClaim:
    """One request's claim on ``key`` within ``scope`` (a hash of the credential presented)."""

    scope: str
    key: str
    #: SHA-256 of the request's method, path, query and body: what a reuse must match.
    request_hash: str
    #: Names this claim: only it may record the answer or give the key back.
    token: str
    now: float
    #: When the key may serve a new request (``now`` + 24 hours).
    expires_at: float
    #: A claim left without an answer since before this was abandoned (its process died, or
    #: lost the store before it could give the key back): it is taken over.
    stale_before: float


@dataclass(frozen=True)
class StoredAnswer:
    """The answer a key's first request got, sent again to the requests that reuse the key."""

    status: int
    content_type: str | None
    body: bytes


@dataclass(frozen=True)
class EarlierRequest:
    """The request that holds a key: its fingerprint, and its answer (None: still running)."""

    request_hash: str
    answer: StoredAnswer | None
