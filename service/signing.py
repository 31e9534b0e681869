"""Standard Webhooks signatures for what the relay sends (and checks, for providers that use them).

A signature is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the
base64-decoded secret after its ``whsec_`` prefix. While a secret rotates, the header carries
one signature per valid secret, space-separated, so receivers verifying either one succeed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks key prefix, not a secret


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


@functools.lru_cache(maxsize=1024)
def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (cached: every delivery signs with it)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.digest(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode()


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,`` signature per secret."""
    return " ".join(signature(secret_key(s), msg_id, timestamp, body) for s in secrets)


def matches(header: str, key: bytes, msg_id: str, timestamp: int, body: bytes) -> bool:
    """Whether any ``v1,`` signature in ``header`` is valid for ``key`` (constant-time)."""
    expected = signature(key, msg_id, timestamp, body).encode()
    return any(
        hmac.compare_digest(candidate.encode(), expected)
        for candidate in header.split()
        if candidate.startswith("v1,")
    )
