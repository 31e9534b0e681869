"""Fakes at the relay's ports, for unit tests of logic inside one process."""

from __future__ import annotations


class FakeClock:
    """A ``service.clock.Clock`` that stands still until the test moves it."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
