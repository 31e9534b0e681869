"""Argument types of ``relay``'s commands: durations, ``key=value`` pairs, points in time.

argparse calls each with the text typed; a wrong one raises ``argparse.ArgumentTypeError``,
which argparse turns into a usage error naming the flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from urllib.parse import urlsplit

from service.clock import Clock, system_clock
from service.durations import duration_seconds
from service.errors import RelayError
from service.http import parse_time
from service.http.query import metadata_filter, metadata_pairs
from service.store.records import MetadataFilter

#: The longest duration a command takes (a century): beyond, a typing accident, and past what
#: a time can hold (``--since 10000...0w`` would not fit a float).
MAX_DURATION_SECONDS = 100 * 366 * 86_400


def _bounded_seconds(text: str) -> int | None:
    """``duration_seconds(text)``, None too when past ``MAX_DURATION_SECONDS`` (or too many
    digits for an int)."""
    try:
        seconds = duration_seconds(text)
    except ValueError:  # more digits than int() takes
        return None
    return seconds if seconds is not None and seconds <= MAX_DURATION_SECONDS else None


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` -> seconds."""
    seconds = _bounded_seconds(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30m, 2h, 7d)")
    return seconds


def parse_meta(text: str) -> tuple[str, str]:
    """``key=value`` (``--meta``), the value possibly empty."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--meta takes key=value, got {text!r}")
    return key, value


def add_meta_filter(parser: argparse.ArgumentParser, what: str) -> None:
    """``--meta KEY=VALUE`` (repeatable) on a listing: only ``what`` whose metadata has it."""
    parser.add_argument(
        "--meta",
        type=parse_meta,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"only {what} whose metadata has this entry (repeatable: all of them)",
    )


def meta_filter(args: argparse.Namespace) -> MetadataFilter:
    """The checked ``--meta`` entries (``InvalidInput`` when the index cannot answer them)."""
    return metadata_pairs(metadata_filter(dict(args.meta), "invalid_meta"))


def parse_when(text: str, clock: Clock = system_clock) -> float:
    """``2h`` / ``30m`` / ``7d`` ago, or an RFC 3339 time, as Unix seconds."""
    seconds = _bounded_seconds(text)
    if seconds is not None:
        return clock() - seconds
    try:
        value = parse_time(text, "time")
    except RelayError:
        raise argparse.ArgumentTypeError(
            f"not a duration or a time: {text!r} (try 2h or 2026-11-21T03:00:00Z)"
        ) from None
    assert value is not None  # noqa: S101 - narrows the type: parse_time of a str is never None
    return value


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argument type: a whole number from ``low`` to ``high`` (``--limit``, ``--port``...)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {text!r}"
            )
        return value

    parse.__name__ = "whole_number"
    return parse


def http_url(text: str) -> str:
    """An argument type: an absolute ``http://`` or ``https://`` URL with a host."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}")
    return text.strip()


def positive_seconds(text: str) -> float:
    """An argument type: seconds, more than 0 and at most an hour (``--timeout``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:  # (NaN, inf and negatives fail too)
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 3600, got {text!r}")
    return value


#: ``--limit`` of the listing commands: rows shown.
ROW_LIMIT = whole_number(1, 10_000)
#: ``--port``, ``--admin-port`` (0: any free port, the one bound is said).
PORT = whole_number(0, 65_535)
