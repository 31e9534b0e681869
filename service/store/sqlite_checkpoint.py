"""WAL checkpoints of the SQLite store, kept off the commit path.

By default SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages: that
commit also copies the WAL's pages into the database file and fsyncs it before it returns. The
store commits one batch at a time (group commit, ``service.store.sqlite_commit``), so every
callback arriving meanwhile waits for that copy on top of its own fsync. Measured at 1,000
callbacks/s (about 3 WAL pages a callback): a checkpoint in about 3 commits a second, each such
commit taking 1.5-22 ms where the others take about 1 ms; a stall the durable baseline of
``bench/ingest`` (append + fsync, nothing else) does not have.

So the writer's automatic checkpoint is off (``PRAGMA wal_autocheckpoint=0``) and a
``Checkpointer`` runs PASSIVE checkpoints on its own connection and thread. In WAL mode a
checkpoint runs beside a writer without blocking it. A passive checkpoint copies what was
committed when it began; SQLite restarts the WAL from its start only when a write begins with
every frame copied, which under sustained writes may not happen. Hence a bound: once the WAL
holds ``limit_frames`` or more, the writer finishes the job itself, right after its next COMMIT
on the committer thread (copying only the few frames the background checkpoints have not yet),
and the WAL restarts at the following write.
"""

from __future__ import annotations

import concurrent.futures
import math
import sqlite3
import time
from pathlib import Path

import structlog

from service.clock import Clock

log = structlog.get_logger("service.store")

#: Seconds between the starts of two background checkpoints (while commits keep coming). At
#: 1,000 callbacks/s about as often as SQLite's own default (every 1,000 pages) would.
INTERVAL_SECONDS = 0.25
#: WAL size, in pages, at which the writer checkpoints after its commit (16 MiB of 4 KiB pages).
LIMIT_FRAMES = 4000


class Checkpointer:
    """Background PASSIVE checkpoints of the database at ``path``.

    ``after_commit`` (on the event loop, after each commit) starts one when it is due;
    ``finish_in_writer`` (on the committer thread, right after a COMMIT, with the writer's
    connection) checkpoints there when the WAL outgrew ``limit_frames``. ``clock`` is a
    monotonic clock (seconds).
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Clock = time.monotonic,
        interval: float = INTERVAL_SECONDS,
        limit_frames: int = LIMIT_FRAMES,
    ) -> None:
        self.path = path
        self.clock = clock
        self.interval = interval
        self.limit_frames = limit_frames
        self.running = False
        self.last_started = -math.inf
        #: Set when a checkpoint found the WAL at ``limit_frames`` or more.
        self.writer_should_finish = False
        self._conn: sqlite3.Connection | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "relay-sqlite-checkpoint")

    def due(self) -> bool:
        return not self.running and self.clock() - self.last_started >= self.interval

    def after_commit(self) -> None:
        """Start a background checkpoint if none is running and the last began long enough
        ago."""
        if not self.due():
            return
        self.running = True
        self.last_started = self.clock()
        self._thread.submit(self._checkpoint).add_done_callback(self._done)

    def record(self, wal_frames: int) -> None:
        """What a checkpoint found: the WAL's size in pages (-1 when it could not run)."""
        if wal_frames >= self.limit_frames:
            self.writer_should_finish = True

    def finish_in_writer(self, conn: sqlite3.Connection) -> None:
        """On the committer thread after a COMMIT: checkpoint with the writer's connection if
        the WAL outgrew the limit. Never raises: the batch is committed whatever happens here."""
        if not self.writer_should_finish:
            return
        self.writer_should_finish = False
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("sqlite_checkpoint_failed", error=str(exc), where="writer")

    def _checkpoint(self) -> int:
        if self._conn is None:
            # mode=rw: never create a file (the store watches for its file being removed).
            uri = f"{Path(self.path).absolute().as_uri()}?mode=rw"
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout=0")
        _busy, wal_frames, _copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(wal_frames)

    def _done(self, future: concurrent.futures.Future[int]) -> None:
        # On the checkpoint thread: plain attribute writes, read by the loop's thread.
        exc = future.exception()
        if exc is not None:
            log.warning("sqlite_checkpoint_failed", error=str(exc), where="background")
        else:
            self.record(future.result())
        self.running = False

    def close(self) -> None:
        """Wait for a checkpoint in progress, then close the connection (on its thread)."""

        def close_conn() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._thread.submit(close_conn)
        self._thread.shutdown(wait=True)
