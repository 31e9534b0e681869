"""The SQLite database file, watched: should it be deleted or replaced under the running relay,
the store stops for good.

SQLite keeps writing to the file it has open, even once unlinked: callbacks would be
acknowledged into a file that vanishes at the next restart, with the subscribers and the
signing key (every minted URL with it). Only a restart (on a restored file) helps.
"""

from __future__ import annotations

import os
import time

import structlog

from service.clock import Clock

log = structlog.get_logger("service.store")

#: How often the write path checks that the database file is still the one it has open.
FILE_CHECK_SECONDS = 1.0


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path`` now; None if there is none."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


class DatabaseFile:
    """The file at ``path`` as it was when the store opened it (``:memory:``: none to watch).

    ``clock`` is monotonic: it spaces the checks of ``check_if_due``.
    """

    def __init__(self, path: str, *, clock: Clock = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._opened = None if path == ":memory:" else _identity(path)
        self._checked_at = float("-inf")  # the first batch looks
        #: Why the store stopped (the file was removed or replaced), for good; None until then.
        self.lost: str | None = None

    def check(self) -> str | None:
        """Look at the file now; the reason the store stopped, or None."""
        if self._opened is None or self.lost is not None:
            return self.lost
        self._checked_at = self.clock()
        now_there = _identity(self.path)
        if now_there == self._opened:
            return None
        what = "removed" if now_there is None else "replaced by another file"
        self.lost = (
            f"The database file {self.path!r} was {what} while the relay had it open;"
            " nothing more is accepted. Restore the file and restart the relay"
            f" (until it stops, process {os.getpid()} still holds the old file open)."
        )
        log.error("database_file_lost", path=self.path, what=what, pid=os.getpid())
        return self.lost

    def check_if_due(self) -> str | None:
        """``check`` at most every ``FILE_CHECK_SECONDS`` (the write path asks every batch)."""
        if self.clock() - self._checked_at >= FILE_CHECK_SECONDS:
            return self.check()
        return self.lost
