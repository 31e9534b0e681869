"""How busy intake is right now: background work that shares the event loop with callbacks
(archiving outputs) asks before it takes more.

A callback is counted when it is accepted; intake is *busy* while the last full window
(``WINDOW`` seconds) and the current one together saw at least ``BUSY`` callbacks. Two
windows, not one, so the answer does not flap at each window's start. Cheap on the hot path:
one clock read and two integer updates per callback.
"""

from __future__ import annotations

from service.clock import Clock, system_clock

#: Seconds of one counting window.
WINDOW = 0.1
#: Callbacks in two windows that make intake busy: 100 in 0.2 s, 500 a second.
BUSY = 100


class IntakePace:
    def __init__(self, clock: Clock = system_clock) -> None:
        self.clock = clock
        self._window = 0
        self._count = 0
        self._previous = 0

    def _roll(self) -> None:
        window = int(self.clock() / WINDOW)
        if window != self._window:
            self._previous = self._count if window == self._window + 1 else 0
            self._window, self._count = window, 0

    def accepted(self) -> None:
        """One callback accepted now."""
        self._roll()
        self._count += 1

    @property
    def busy(self) -> bool:
        self._roll()
        return self._previous + self._count >= BUSY
