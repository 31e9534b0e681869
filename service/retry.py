"""The relay's retry policy, as data and pure functions.

First attempt at once; after a failure, retries after each delay in turn (default 1 s, 2 s,
4 s: attempts at about 0, 1, 3 and 7 s); after the last failure the delivery is failed and
waits for an operator's replay, which starts a fresh cycle.

A subscriber answering ``429 Too Many Requests`` or ``503 Service Unavailable`` with a
``Retry-After`` header (RFC 9110, section 10.2.3: delta-seconds or an HTTP-date) is not asked
again sooner than it said, up to ``RETRY_AFTER_CAP_SECONDS`` (one hour) after its answer. It
only moves the next attempt later, never earlier, and never adds attempts: after the last one
the delivery is failed all the same. A value that is neither form is ignored.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Sequence

#: The longest wait a ``Retry-After`` is honoured for (longer ones are cut to it).
RETRY_AFTER_CAP_SECONDS = 3600.0

#: The answers whose ``Retry-After`` is read.
RETRY_AFTER_STATUSES = frozenset({429, 503})

#: Longest header value looked at (an HTTP-date is 29 characters).
_RETRY_AFTER_CHARS = 64


def next_delay(delays: Sequence[float], attempts_in_cycle: int) -> float | None:
    """Seconds until the next attempt after ``attempts_in_cycle`` failed ones; None = give up."""
    if attempts_in_cycle <= 0:
        return 0.0
    if attempts_in_cycle > len(delays):
        return None
    return float(delays[attempts_in_cycle - 1])


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` value asks to wait, capped at
    ``RETRY_AFTER_CAP_SECONDS``; None when absent or neither delta-seconds nor an HTTP-date.

    A date in the past asks for no wait (0).
    """
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _RETRY_AFTER_CHARS:
        return None
    if value.isascii() and value.isdigit():  # delta-seconds = 1*DIGIT
        seconds = float(int(value))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # asctime's form has no zone: HTTP dates are GMT
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


def retry_at(done_at: float, delay: float, retry_after: float | None) -> float:
    """When the next attempt is due: ``delay`` after the attempt ended, or later if the
    subscriber's ``Retry-After`` (seconds, already capped) asked for later."""
    return done_at + max(delay, retry_after or 0.0)
