"""The relay's clock, and times as text.

``Clock`` is the port through which code that decides by time (retries, back-off, expiry,
throttles) reads it: production passes ``system_clock``, unit tests a ``tests.fakes.FakeClock``
they advance by hand, so time-based logic is tested without sleeping.

Times as text are RFC 3339 in UTC with milliseconds, for events. One is written for every
callback, so the date and time to the second is formatted once a second and shared; the
fraction is added each time.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

#: Seconds since the Unix epoch, as ``time.time`` returns them.
Clock = Callable[[], float]

#: The real clock.
system_clock: Clock = time.time


def rfc3339(timestamp: float) -> str:
    """``2026-01-01T00:00:00.000Z``: UTC, milliseconds (as ``datetime.isoformat`` spells it)."""
    # Rounded to microseconds first, as datetime.fromtimestamp does.
    seconds = math.floor(timestamp)
    micros = round((timestamp - seconds) * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return f"{utc_second(seconds)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=8)
def utc_second(seconds: int) -> str:
    """``2026-01-01T00:00:00`` for Unix ``seconds``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
