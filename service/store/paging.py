"""Cursor pagination, the same for every list of every store.

A list is ordered by a position column (``seq``, or SQLite's ``rowid``); a page is fetched with
one row more than asked for, to know whether another page follows, and its cursor is the
position of its last row, encoded. ``paged_query`` builds the statement, ``page_of`` reads its
rows back.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidInput


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str | None


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([position]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The position a cursor stands for; raises ``InvalidInput`` for a forged one."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        (position,) = json.loads(base64.urlsafe_b64decode(padded.encode()))
        # Positions are 64-bit row numbers: a larger integer is forged (and overflows SQLite).
        if isinstance(position, int) and not isinstance(position, bool) and 0 <= position < 2**63:
            return position
    except (ValueError, TypeError, UnicodeError):
        pass
    raise InvalidInput("The cursor is not one this API returned.", code="invalid_cursor")


def paged_query(
    select: str,
    where: tuple[list[str], list[Any]],
    cursor: str | None,
    limit: int,
    mark: str,
    *,
    position: str = "seq",
    newest_first: bool = True,
) -> tuple[str, list[Any]]:
    """The statement and parameters for one page of ``select`` (``SELECT <position>, ...
    FROM ...``, its first column the position) under ``where`` (clauses and parameters),
    after ``cursor``; ``mark`` is the store's parameter mark (``?`` or ``%s``)."""
    clauses, params = list(where[0]), list(where[1])
    after = decode_cursor(cursor)
    if after is not None:
        clauses.append(f"{position} {'<' if newest_first else '>'} {mark}")
        params.append(after)
    condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    order = f"{position} DESC" if newest_first else position
    return f"{select}{condition} ORDER BY {order} LIMIT {mark}", [*params, limit + 1]


def page_of(
    rows: Sequence[tuple[Any, ...]], limit: int, item: Callable[[tuple[Any, ...]], Any]
) -> Page:
    """The page ``paged_query``'s rows make: ``item`` of each row (its position first)."""
    more = len(rows) > limit
    kept = rows[:limit]
    return Page([item(row) for row in kept], encode_cursor(kept[-1][0]) if more else None)
