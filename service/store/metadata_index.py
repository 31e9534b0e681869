"""What of an event's metadata is indexed, and how a metadata filter reads it.

An event's metadata (its callback URL's, updated with a watch's) is a free JSON object, so no
index on the events table can serve ``metadata.user_id=u-42`` on SQLite. Instead each stored
event's top-level scalar entries are written, as text, to the side table ``event_metadata``
(``key``, ``value``, ``event_seq``; its primary key is the index) in the transaction that stores
the event. A filter is then one index range per key: the events list walks the first key's
range newest first and checks the others by primary key.

Indexed: at most ``MAX_INDEXED`` entries of an event, whose key matches ``KEY`` and whose value
is a string of at most ``MAX_VALUE`` characters (without NUL), an integer or a boolean (as
``"true"`` / ``"false"``). Nested objects, arrays, floats and nulls are not. An event without
metadata costs intake nothing more. The same text form decides a subscriber's ``metadata`` filter
(``Subscriber.wants``), so what a subscriber can ask for is what a list can find.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: A key that can be filtered on: what a query parameter ``metadata.<key>`` carries safely.
KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")
MAX_VALUE = 256
#: Entries indexed per event (a 16 KiB object could otherwise write thousands of rows).
MAX_INDEXED = 32
#: Keys in one filter (of a list, or of a subscriber).
MAX_FILTER_KEYS = 8

#: An event's indexed metadata: key -> the value as text.
Pairs = dict[str, str]


def as_text(value: Any) -> str | None:
    """The indexed text of a metadata value, or None when such a value is not indexed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # A NUL character: PostgreSQL's text cannot hold one (the event's JSON keeps it escaped).
    if isinstance(value, str) and len(value) <= MAX_VALUE and "\x00" not in value:
        return value
    return None


def indexed(metadata: Mapping[str, Any]) -> Pairs:
    """The entries of ``metadata`` that are indexed (see the module's docstring)."""
    pairs: Pairs = {}
    for key, value in metadata.items():
        text = as_text(value)
        if text is not None and KEY.fullmatch(key):
            pairs[key] = text
            if len(pairs) == MAX_INDEXED:
                break
    return pairs


def filter_problem(wanted: Mapping[str, Any]) -> str | None:
    """Why ``wanted`` (key -> value) is not a filter this index can answer, or None."""
    if len(wanted) > MAX_FILTER_KEYS:
        return f"at most {MAX_FILTER_KEYS} metadata keys"
    for key, value in wanted.items():
        if not KEY.fullmatch(key):
            return f"metadata key {key[:70]!r}: 1 to 64 letters, digits, '_' or '-' are indexed"
        if as_text(value) is None:
            return (
                f"metadata.{key}: a string of at most {MAX_VALUE} characters, an integer or a"
                " boolean"
            )
    return None
