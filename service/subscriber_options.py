"""A subscriber's own request headers, checked and masked, and the bounds of its rate limit.

Custom headers carry what a subscriber's side needs with each delivery (an API gateway's key,
a tenant name). They are secrets as far as the relay knows: stored, sent, never logged, and
shown masked (``masked``) by the API, the console and the CLI.

A header may not take the place of one the relay sets or the connection needs: the Standard
Webhooks headers (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), the trace
context, ``content-type``, ``content-length``, ``host``, ``user-agent``, and the hop-by-hop
headers (RFC 9110, section 7.6.1). Names are RFC 9110 tokens; values are visible ASCII, spaces
and tabs (no CR, LF or NUL: nothing can be smuggled into the request).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from service.errors import InvalidInput

#: Custom headers one subscriber may have.
MAX_HEADERS = 10
#: Longest header name and value.
MAX_NAME_CHARS = 64
MAX_VALUE_CHARS = 1024
#: Names and values of all of one subscriber's headers together.
MAX_TOTAL_CHARS = 4096

#: The bounds of ``max_per_second`` (one delivery every 100 s up to 1,000 a second).
MIN_PER_SECOND = 0.01
MAX_PER_SECOND = 1000.0

#: Headers a subscriber may not set (lowercase).
RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "traceparent",
        "tracestate",
        "content-type",
        "content-length",
        "content-encoding",
        "host",
        "user-agent",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"[\x20-\x7e\t]*")
#: Values at least this long show their last four characters when masked.
_SHOW_TAIL_FROM = 16


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(f"headers: {message}", code="invalid_subscriber")


def check_headers(headers: Mapping[str, str]) -> None:
    """Raises ``InvalidInput`` (``invalid_subscriber``) unless ``headers`` may be sent."""
    if len(headers) > MAX_HEADERS:
        raise _refuse(f"at most {MAX_HEADERS} headers.")
    seen: set[str] = set()
    total = 0
    for name, value in headers.items():
        if not (0 < len(name) <= MAX_NAME_CHARS) or not _TOKEN.fullmatch(name):
            raise _refuse(
                f"a header name is a token of 1 to {MAX_NAME_CHARS} letters, digits"
                " and !#$%&'*+.^_`|~- (got an invalid one)."
            )
        lower = name.lower()
        if lower in RESERVED_HEADERS or lower.startswith("proxy-"):
            raise _refuse(f"{name} is set by the relay or the connection and cannot be given.")
        if lower in seen:
            raise _refuse(f"{name} is given twice (names are case-insensitive).")
        seen.add(lower)
        if len(value) > MAX_VALUE_CHARS or not _VALUE.fullmatch(value):
            raise _refuse(
                f"the value of {name} must be at most {MAX_VALUE_CHARS} characters of visible"
                " ASCII, spaces and tabs (no line breaks)."
            )
        total += len(name) + len(value)
    if total > MAX_TOTAL_CHARS:
        raise _refuse(f"at most {MAX_TOTAL_CHARS} characters of names and values in all.")


def check_max_per_second(value: float) -> None:
    """Raises ``InvalidInput`` unless ``value`` is a rate the relay paces deliveries at."""
    if not (math.isfinite(value) and MIN_PER_SECOND <= value <= MAX_PER_SECOND):
        raise InvalidInput(
            f"max_per_second: a number from {MIN_PER_SECOND:g} to {MAX_PER_SECOND:g}"
            " (deliveries a second), or null for no limit.",
            code="invalid_subscriber",
        )


def masked(value: str) -> str:
    """A header value as shown: ``***``, with its last four characters when it is long
    enough that they give little away."""
    return "***" + value[-4:] if len(value) >= _SHOW_TAIL_FROM else "***"


def masked_headers(headers: tuple[tuple[str, str], ...]) -> dict[str, str] | None:
    """A subscriber's headers as the API, the console and the CLI show them."""
    return {name: masked(value) for name, value in headers} or None
