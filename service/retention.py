"""Retention: prune what is past ``RELAY_RETENTION_DAYS``, in small batches, in the background.

Small batches keep each transaction short, so pruning never holds up callbacks; the cost of a
callback stays flat as history accumulates because old rows leave.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from service.errors import StorageUnavailable
from service.store.base import Store

log = structlog.get_logger("service.retention")

BATCH = 500
#: Pause between batches while there is a backlog, and between passes when there is none.
BATCH_PAUSE_SECONDS = 0.05
PASS_INTERVAL_SECONDS = 60.0


async def prune_once(store: Store, retention_days: int, *, batch: int = BATCH) -> int:
    """Prune everything currently past retention; returns how many events were removed."""
    before = time.time() - retention_days * 86_400
    total = 0
    while True:
        removed = await store.prune(before, batch)
        total += removed
        if removed < batch:
            return total
        await asyncio.sleep(BATCH_PAUSE_SECONDS)


async def prune_forever(store: Store, retention_days: int) -> None:
    """Run ``prune_once`` every minute until cancelled; storage outages are waited out."""
    while True:
        try:
            removed = await prune_once(store, retention_days)
            if removed:
                log.info("retention_pruned", events=removed, retention_days=retention_days)
        except StorageUnavailable as exc:
            log.warning("retention_failed", error=exc.message)
        await asyncio.sleep(PASS_INTERVAL_SECONDS)
