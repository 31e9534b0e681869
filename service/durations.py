"""Durations as operators type them: ``90s``, ``15m``, ``2h``, ``7d``, ``1w``.

One reading for the command line (``relay watch --deadline 6h``, ``--since 2h``) and the ops
console's time filters ("2h" ago), so both understand the same words.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str, *, bare_number: bool = True) -> int | None:
    """``text`` as seconds, or None when it is not a duration.

    A number without a unit counts as seconds when ``bare_number``; otherwise it is not a
    duration (the console reads a bare number as a Unix time).
    """
    match = _DURATION.match(text)
    if not match or (not bare_number and not match.group(2)):
        return None
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
