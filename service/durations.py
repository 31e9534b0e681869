"""Durations and points in time as operators type them: ``90s``, ``15m``, ``2h``, ``7d``,
``1w`` (or ``2 hours``, ``90 min``), and "2h ago or this time".

One reading for the command line (``relay watch --deadline 6h``, ``--since 2h``) and the ops
console's time filters ("2h" ago), so both understand the same words and name the same
formats when they do not (``TIME_FORMATS``).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

#: At most 9 digits: no duration overflows a float or a date (9 digits of weeks is 19,000
#: years), and a hostile "99999...h" is simply not a duration.
_DURATION = re.compile(r"(\d{1,9})\s*([a-z]*)")
_UNIT_SECONDS = {
    "": 1,
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), 604800),
}
#: What ``point_in_time`` reads, for error messages ("since must be {TIME_FORMATS}").
TIME_FORMATS = (
    "a duration ago (30m, 2h, 7d), a UTC time (2026-11-21T03:00), an RFC 3339 time"
    " (2026-11-21T03:00:00Z) or Unix seconds"
)
#: Longer text is no time anyone typed (and is never parsed).
_MAX_TIME_CHARS = 64


def duration_seconds(text: str, *, bare_number: bool = True) -> int | None:
    """``text`` as seconds, or None when it is not a duration.

    A whole number and a unit (``2h``, ``2 H``, ``2 hours``, ``90min``; s, m, h, d, w and
    their words). A number without a unit counts as seconds when ``bare_number``; otherwise it
    is not a duration (the console reads a bare number as a Unix time).
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or (not bare_number and not match.group(2)):
        return None
    unit = _UNIT_SECONDS.get(match.group(2))
    return None if unit is None else int(match.group(1)) * unit


def point_in_time(text: str, now: float) -> float | None:
    """``text`` as Unix seconds, or None when it is none of ``TIME_FORMATS``.

    A duration (``2h``) is that long before ``now``; a time without a zone
    (``2026-11-21T03:00``, as a browser's datetime-local field sends it, or a date) is UTC; an
    RFC 3339 time keeps its offset; a number is Unix seconds (finite).
    """
    text = text.strip()
    if not text or len(text) > _MAX_TIME_CHARS:
        return None
    seconds = duration_seconds(text, bare_number=False)
    if seconds is not None:
        return now - seconds
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return number if math.isfinite(number) else None
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
