"""Process-wide settings for a process that serves the relay, and only for one.

They change the whole interpreter (its garbage collector, its thread switching), so library
code never applies them: importing or embedding the app, or running the tests, leaves the
process as it was. The entry points that own their process call ``tune_for_serving``:
``relay serve`` (``service.cli``) and the module process managers load (``service.asgi``).
"""

from __future__ import annotations

import gc
import sys


def tune_for_serving() -> None:
    """Tune this process for serving; call it once everything is imported, before serving."""
    # What is loaded by now (modules, classes, functions, the app) lives as long as the
    # process: moved out of the collector's reach, so full collections stay short (they showed
    # up as 25-50 ms latency spikes).
    gc.freeze()
    # A young-generation collection every 700 net allocations (the default) ran every other
    # callback under load, each looking at the objects of every request in flight; most of
    # them are freed by reference counting anyway. Every 10,000 costs a tenth as much.
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    # When a SQLite commit's fsync ends, the committer thread waits for the GIL; with a busy
    # loop that wait lasts up to the switch interval (5 ms by default), and the next batch
    # waits behind it. 1 ms bounds that at a negligible cost (only one other thread asks).
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
