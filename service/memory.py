"""Giving the memory of large request bodies back to the system once they are gone.

Measured: 300 connections each holding a 1 MiB body one byte short left a relay 68 MB larger
after they were all closed, for good. Two reasons, two remedies, both run every ``PERIOD``
seconds while large bodies (over ``service.body_budget.SMALL_BODY``) come and once after;
small callbacks never trigger them:

* a request closed mid-body leaves its buffers in reference cycles (uvicorn's protocol, its
  request cycle, the app's task), freed only by a garbage collection, which the relay runs
  rarely on purpose (``service.app``): ``gc.collect()`` frees them (milliseconds: what lives as
  long as the process is frozen out of the collector's reach);
* glibc's ``malloc`` keeps freed memory in its heaps for reuse (one per thread that allocated,
  the store's threads included), and a heap gives back only its free top: ``malloc_trim(0)``
  hands every free page of every heap back. Elsewhere than glibc (musl, macOS) there is no
  such call; the collection alone is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable

from service.body_budget import BodyBudget

#: Seconds between checks (and at most between trims).
PERIOD = 2.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


async def trim_after_large_bodies(budget: BodyBudget) -> None:
    """Run until cancelled: free and give back memory after the budget held large bodies."""
    trim = _malloc_trim()
    while True:
        await asyncio.sleep(PERIOD)
        if budget.large_seen:
            budget.large_seen = budget.large > 0  # still coming: again next time
            gc.collect()
            if trim is not None:
                trim(0)
