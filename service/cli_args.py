"""Argument types of ``relay``'s commands: durations, ``key=value`` pairs, points in time.

argparse calls each with the text typed; a wrong one raises ``argparse.ArgumentTypeError``,
which argparse turns into a usage error naming the flag.
"""

from __future__ import annotations

import argparse

from service.clock import Clock, system_clock
from service.durations import duration_seconds
from service.errors import RelayError
from service.http import parse_time
from service.http.query import metadata_filter, metadata_pairs
from service.store.records import MetadataFilter


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` -> seconds."""
    seconds = duration_seconds(text)
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
    seconds = duration_seconds(text)
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
