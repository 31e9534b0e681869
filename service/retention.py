"""Retention: prune what is past ``RELAY_RETENTION_DAYS``, in small batches, in the background.

Small batches keep each transaction short, so pruning never holds up callbacks; the cost of a
callback stays flat as history accumulates because old rows leave.

What is never pruned on that clock: an event with a pending delivery; an event with a failed
delivery, which waits for its operator (replayed, it is delivered and leaves with the rest)
unless ``RELAY_FAILED_RETENTION_DAYS`` is set and it failed longer ago than that; and a task's
terminal status (one small row per task), so that a late update of a task whose history is gone
is still superseded, never emitted again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from service.clock import Clock, system_clock
from service.errors import StorageUnavailable
from service.store.base import Store

log = structlog.get_logger("service.retention")

BATCH = 500
#: Pause between batches while there is a backlog, and between passes when there is none.
BATCH_PAUSE_SECONDS = 0.05
PASS_INTERVAL_SECONDS = 60.0
DAY = 86_400


@dataclass(frozen=True)
class Retention:
    """How long history is kept: ``days`` for all of it, ``failed_days`` (None: for ever) for
    events with a failed delivery."""

    days: int
    failed_days: int | None = None

    def cutoffs(self, now: float) -> tuple[float, float | None]:
        """``(before, failed_before)`` for ``Store.prune``."""
        failed = None if self.failed_days is None else now - self.failed_days * DAY
        return now - self.days * DAY, failed


async def prune_once(
    store: Store,
    retention: Retention,
    *,
    clock: Clock = system_clock,
    batch: int = BATCH,
    pause: float = BATCH_PAUSE_SECONDS,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Prune everything past retention at ``clock()``; returns how many events were removed.

    Batches of ``batch`` events, ``pause`` seconds apart (so callbacks get the store in
    between); ``progress`` is told the running total after each batch.
    """
    before, failed_before = retention.cutoffs(clock())
    total = 0
    while True:
        removed = await store.prune(before, batch, failed_before)
        total += removed
        if progress is not None:
            progress(total)
        if removed < batch:
            return total
        if pause:
            await asyncio.sleep(pause)


async def prune_idempotency_keys(
    store: Store,
    *,
    clock: Clock = system_clock,
    batch: int = BATCH,
    pause: float = BATCH_PAUSE_SECONDS,
) -> int:
    """Delete the admin API's Idempotency-Keys whose 24 hours are over (``service.idempotency``),
    in batches of ``batch``; returns how many went. Not on the retention clock: a key is only
    ever kept for its window."""
    now = clock()
    total = 0
    while True:
        removed = await store.prune_idempotency_keys(now, batch)
        total += removed
        if removed < batch:
            return total
        if pause:
            await asyncio.sleep(pause)


async def prune_forever(store: Store, retention: Retention, clock: Clock = system_clock) -> None:
    """Run ``prune_once`` and ``prune_idempotency_keys`` every minute until cancelled; storage
    outages are waited out."""
    while True:
        try:
            await prune_idempotency_keys(store, clock=clock)
            removed = await prune_once(store, retention, clock=clock)
            if removed:
                log.info(
                    "retention_pruned",
                    events=removed,
                    retention_days=retention.days,
                    failed_retention_days=retention.failed_days,
                )
        except StorageUnavailable as exc:
            log.warning("retention_failed", error=exc.message)
        await asyncio.sleep(PASS_INTERVAL_SECONDS)
