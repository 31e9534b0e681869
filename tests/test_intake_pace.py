"""``service.intake_pace``: when intake counts as busy (a fake clock, no server)."""

from __future__ import annotations

from service.intake_pace import BUSY, WINDOW, IntakePace
from tests.fakes import FakeClock


def test_busy_from_the_hundredth_callback_in_two_windows_and_calm_after() -> None:
    clock = FakeClock(1_800_000_000.05)
    pace = IntakePace(clock)
    assert not pace.busy
    for _ in range(BUSY // 2):
        pace.accepted()
    clock.advance(WINDOW)  # the next window: the last one still counts
    for _ in range(BUSY // 2 - 1):
        pace.accepted()
    assert not pace.busy
    pace.accepted()
    assert pace.busy
    clock.advance(WINDOW)  # the first window is gone: 50 left
    assert not pace.busy
    clock.advance(10 * WINDOW)  # a quiet gap forgets everything
    pace.accepted()
    assert not pace.busy


def test_a_steady_rate_over_500_a_second_is_busy() -> None:
    clock = FakeClock()
    pace = IntakePace(clock)
    for _ in range(1000):  # 1,000 callbacks a second for one second
        clock.advance(0.001)
        pace.accepted()
        if clock.now - 1_800_000_000.0 > 2 * WINDOW:
            assert pace.busy
