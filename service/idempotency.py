"""``Idempotency-Key`` on the admin API's operations that create or send something, as Stripe
and Svix do it: a client that retries a request (its connection dropped before the answer
came) with the same key gets the first answer again instead of a second subscriber, callback
URL, watch or replay.

- The key is the client's (a UUID is a good one): 1 to 255 printable ASCII characters, else
  400 ``invalid_idempotency_key``. Keys are scoped per credential: the store keeps a SHA-256
  of the bearer credential presented, never the credential, so two clients holding different
  credentials never see each other's keys.
- The same key with the same request (method, path with its query, SHA-256 of the raw body)
  within 24 hours gets the first answer: its status and body, with ``Idempotent-Replayed:
  true``. The same key with another request is 409 ``idempotency_key_reused``.
- A request reusing a key whose first request is still running is answered at once with 409
  ``idempotency_key_in_progress`` and ``Retry-After: 1``, rather than waiting for it: an
  answer never depends on how long another request takes, and no connection is held meanwhile.
  A claim its request never answered (its process died) is free again after
  ``ABANDONED_AFTER_SECONDS``.
- Exactly one request runs per key, across replicas: the key is claimed in the store
  (``Store.claim_idempotency_key``) before the operation runs, and its answer recorded after.

Requests without the header are served as before.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable

import structlog
from starlette.requests import Request
from starlette.responses import Response

from service.clock import Clock
from service.errors import Conflict, InvalidInput, RelayError, StorageUnavailable
from service.http.responses import error_response
from service.store.base import Store
from service.store.idempotency_model import IdempotencyClaim, StoredAnswer

log = structlog.get_logger("service.idempotency")

HEADER = "Idempotency-Key"
#: On an answer sent again for a reused key.
REPLAYED_HEADER = "Idempotent-Replayed"
#: How long a key answers for its first request; the retention pass deletes it afterwards.
WINDOW_SECONDS = 24 * 3600
#: A claim without an answer this old was abandoned (its process died, or lost the store
#: before it could give the key back). Far longer than any admin operation runs.
ABANDONED_AFTER_SECONDS = 60.0
MAX_LENGTH = 255


class KeyInProgress(Conflict):
    """The first request with this Idempotency-Key is still running; retry shortly."""

    code = "idempotency_key_in_progress"
    retry_after = 1


def key_of(request: Request) -> str | None:
    """The request's Idempotency-Key, checked; None without one."""
    values = request.headers.getlist(HEADER)
    if not values:
        return None
    key = values[0]
    if (
        len(values) > 1
        or not 0 < len(key) <= MAX_LENGTH
        or not (key.isascii() and key.isprintable())
    ):
        raise InvalidInput(
            f"{HEADER} must be given once, as 1 to {MAX_LENGTH} printable ASCII characters.",
            code="invalid_idempotency_key",
        )
    return key


def scope_of(request: Request) -> str:
    """The credential's scope: a SHA-256 of the bearer credential presented (whatever kind of
    credential it is: the admin token, an API key)."""
    _, _, credential = request.headers.get("authorization", "").partition(" ")
    return hashlib.sha256(credential.strip().encode()).hexdigest()


def fingerprint(request: Request, body: bytes) -> str:
    """What a request reusing a key must match: method, path, query, and the body's SHA-256."""
    head = f"{request.method} {request.url.path}?{request.url.query}\n".encode()
    return hashlib.sha256(head + hashlib.sha256(body).digest()).hexdigest()


async def once(
    request: Request,
    store: Store,
    clock: Clock,
    key: str,
    body: bytes,
    run: Callable[[], Awaitable[Response]],
) -> Response:
    """``run()``'s answer, for the first request with ``key``; the first answer again for the
    same request reusing it; 409 for another request, or while the first runs."""
    scope = scope_of(request)
    request_hash = fingerprint(request, body)
    now = clock()
    token = secrets.token_hex(16)
    earlier = await store.claim_idempotency_key(
        IdempotencyClaim(
            scope=scope,
            key=key,
            request_hash=request_hash,
            token=token,
            now=now,
            expires_at=now + WINDOW_SECONDS,
            stale_before=now - ABANDONED_AFTER_SECONDS,
        )
    )
    if earlier is not None:
        if earlier.request_hash != request_hash:
            raise Conflict(
                f"This {HEADER} was used with another request (method, path or body) within"
                " 24 hours; use a new key for a new request.",
                code="idempotency_key_reused",
            )
        if earlier.answer is None:
            raise KeyInProgress()
        answer = earlier.answer
        return Response(
            answer.body,
            status_code=answer.status,
            headers={REPLAYED_HEADER: "true"},
            media_type=answer.content_type,
        )
    try:
        response = await run()
    except RelayError as exc:
        if exc.status_code >= 500:
            await _release(store, scope, key, token)
            raise
        response = error_response(exc)
    except BaseException:
        await _release(store, scope, key, token)
        raise
    if response.status_code >= 500:
        await _release(store, scope, key, token)
        return response
    # 2xx and 4xx are kept: the operation ran (or refused the request for good) and running
    # it again would do it twice or refuse it again. A 5xx is not kept (the key is given back
    # above): the relay failed (the store was unavailable, a bug) and the same request may well
    # succeed later, so the client's retry with the same key must run it, not get the failure.
    stored = StoredAnswer(
        status=response.status_code,
        content_type=response.headers.get("content-type"),
        body=bytes(response.body),
    )
    try:
        await store.record_idempotent_answer(scope, key, token, stored)
    except StorageUnavailable as exc:
        # The operation ran and its answer goes to the client all the same; a retry with the
        # key finds it running until the claim counts as abandoned.
        log.warning("idempotency_answer_not_kept", error=exc.message)
    return response


async def _release(store: Store, scope: str, key: str, token: str) -> None:
    try:
        await store.release_idempotency_key(scope, key, token)
    except StorageUnavailable as exc:  # the claim counts as abandoned after a while
        log.warning("idempotency_key_not_released", error=exc.message)
