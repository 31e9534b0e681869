"""Durations and points in time as operators type them (``service.durations``): the one
reading the console's time filters and the command line share."""

from __future__ import annotations

import pytest

from service.durations import TIME_FORMATS, duration_seconds, point_in_time
from tests.fakes import FakeClock

NOV_21_0300 = 1_795_230_000.0  # 2026-11-21 03:00:00 UTC


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        (" 15m ", 900),
        ("2h", 7200),
        ("2H", 7200),
        ("2 h", 7200),
        ("2 hours", 7200),
        ("1 hour", 3600),
        ("90min", 5400),
        ("7 d", 7 * 86400),
        ("3 days", 3 * 86400),
        ("1w", 604800),
        ("2 weeks", 2 * 604800),
    ],
)
def test_a_duration_is_a_whole_number_and_a_unit(text: str, seconds: int) -> None:
    """The short units and their words, any case, spaces allowed."""
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "h", "2y", "-1h", "1.5h", "2h30m", "2 lightyears", "1" * 10 + "h", "2h\n3"]
)
def test_anything_else_is_not_a_duration(text: str) -> None:
    """Not a duration: no number, a unit it does not know, a sign, a fraction, ten digits."""
    assert duration_seconds(text) is None


def test_a_bare_number_is_a_duration_only_when_asked() -> None:
    """The console reads a bare number as a Unix time, the command line's ``--deadline`` as
    seconds."""
    assert duration_seconds("90", bare_number=False) is None
    assert duration_seconds("90s", bare_number=False) == 90


def test_a_point_in_time_is_a_duration_ago_or_a_time() -> None:
    """Each format ``TIME_FORMATS`` names, seen from the clock."""
    now = FakeClock().now
    assert point_in_time("2h", now) == now - 7200
    assert point_in_time(" 30 minutes ", now) == now - 1800
    assert point_in_time("2026-11-21T03:00", now) == NOV_21_0300  # datetime-local: UTC
    assert point_in_time("2026-11-21 03:00:00", now) == NOV_21_0300
    assert point_in_time("2026-11-21T03:00:00Z", now) == NOV_21_0300
    assert point_in_time("2026-11-21T03:00:00z", now) == NOV_21_0300
    assert point_in_time("2026-11-21T04:00:00+01:00", now) == NOV_21_0300
    assert point_in_time("2026-11-21", now) == NOV_21_0300 - 3 * 3600
    assert point_in_time("1795230000", now) == NOV_21_0300
    assert point_in_time("1795230000.5", now) == NOV_21_0300 + 0.5
    for example in ("30m", "2h", "7d", "2026-11-21T03:00", "2026-11-21T03:00:00Z"):
        assert example in TIME_FORMATS
        assert point_in_time(example, now) is not None


@pytest.mark.parametrize(
    "text",
    ["", "  ", "yesterday", "2026-13-01T00:00:00Z", "nan", "inf", "1e400", "-inf", "2y", "9" * 65],
)
def test_anything_else_is_no_point_in_time(text: str) -> None:
    """Not a time: words, impossible dates, numbers that are not finite, huge text."""
    assert point_in_time(text, FakeClock().now) is None
