"""Where the relay's log lines go in tests: into pytest's capture, never onto its terminal.

Relays under test run in threads of the test process and log there with the relay's own
configuration (``service.logs``, console format). A line written while a test phase (setup,
call, teardown) runs goes to that phase's stdout, which pytest captures: shown with a failing
test's report, and read by tests through ``capfd``. A line written between phases (a server
thread logging a request it answered just as its test returned) would land on pytest's own
output, in the middle of its progress line; it is held instead and written at the start of the
next phase, so its report shows it.
"""

from __future__ import annotations

import sys
import threading


class PhaseStream:
    """A text stream that writes to the current ``sys.stdout`` while a phase is open (pytest
    points it at its capture then) and holds what comes while none is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = False
        self._held: list[str] = []

    def open(self) -> None:
        """A test phase starts: what was held is written, and what comes is written at once."""
        with self._lock:
            self._open = True
            held, self._held = self._held, []
            if held:
                sys.stdout.write("".join(held))
                sys.stdout.flush()

    def close(self) -> None:
        """The phase ends: what comes now is held until the next one."""
        with self._lock:
            self._open = False

    def write(self, text: str) -> int:
        with self._lock:
            if self._open:
                sys.stdout.write(text)
            else:
                self._held.append(text)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._open:
                sys.stdout.flush()

    def isatty(self) -> bool:
        return False

    def held(self) -> str:
        """What is held now (for tests of this class)."""
        with self._lock:
            return "".join(self._held)
