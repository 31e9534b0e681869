"""Retention's cut-offs and batches, on a fake clock and a fake store (what the store prunes
for a given cut-off is the store contract's business: ``tests/test_store_contract.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import pytest

from service.retention import (
    BATCH,
    DAY,
    Retention,
    prune_forever,
    prune_idempotency_keys,
    prune_once,
)
from service.store.base import Store
from tests.fakes import FakeClock


class PruningStore:
    """The one method of ``Store`` retention uses: it removes ``backlog`` events, at most
    ``limit`` per call, and records each call's cut-offs."""

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self.calls: list[tuple[float, int, float | None]] = []

    async def prune(self, before: float, limit: int, failed_before: float | None) -> int:
        self.calls.append((before, limit, failed_before))
        removed = min(limit, self.backlog)
        self.backlog -= removed
        return removed


def prune(
    store: PruningStore,
    retention: Retention,
    clock: FakeClock,
    *,
    batch: int = BATCH,
    pause: float = 0,
    progress: Callable[[int], None] | None = None,
) -> int:
    fake = cast(Store, store)  # only prune() is called
    return asyncio.run(
        prune_once(fake, retention, clock=clock, batch=batch, pause=pause, progress=progress)
    )


def test_cutoffs_count_back_from_now() -> None:
    now = FakeClock().now
    assert Retention(30).cutoffs(now) == (now - 30 * DAY, None)
    assert Retention(30, 90).cutoffs(now) == (now - 30 * DAY, now - 90 * DAY)
    assert Retention(0, 0).cutoffs(now) == (now, now)


def test_the_cutoff_is_read_once_from_the_clock() -> None:
    """Every batch of one pass prunes up to the same instant, even as time goes by."""
    clock = FakeClock()
    start = clock.now
    store = PruningStore(backlog=25)

    def later(_total: int) -> None:
        clock.advance(3600)

    removed = prune(store, Retention(7, 30), clock, batch=10, progress=later)
    assert removed == 25
    assert store.calls == [(start - 7 * DAY, 10, start - 30 * DAY)] * 3
    assert store.backlog == 0


def test_the_next_pass_cuts_at_the_new_now() -> None:
    clock = FakeClock()
    store = PruningStore(backlog=0)
    prune(store, Retention(1), clock)
    clock.advance(DAY)
    prune(store, Retention(1), clock)
    assert [before for before, _, _ in store.calls] == [clock.now - 2 * DAY, clock.now - DAY]


@pytest.mark.parametrize(
    ("backlog", "batches", "totals"),
    [(0, 1, [0]), (9, 1, [9]), (10, 2, [10, 10]), (21, 3, [10, 20, 21])],
)
def test_batches_until_one_comes_back_short(backlog: int, batches: int, totals: list[int]) -> None:
    store = PruningStore(backlog)
    seen: list[int] = []
    removed = prune(store, Retention(30), FakeClock(), batch=10, progress=seen.append)
    assert removed == backlog
    assert len(store.calls) == batches
    assert seen == totals


def test_batches_are_spaced_by_the_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """The background pass lets callbacks at the store between batches; the CLI (pause 0)
    does not wait."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr("service.retention.asyncio.sleep", sleep)
    prune(PruningStore(25), Retention(30), FakeClock(), batch=10, pause=0.05)
    assert pauses == [0.05, 0.05]
    pauses.clear()
    prune(PruningStore(25), Retention(30), FakeClock(), batch=10, pause=0)
    assert pauses == []


class KeyPruningStore(PruningStore):
    """Also removes ``keys`` expired idempotency keys, at most ``limit`` per call."""

    def __init__(self, keys: int) -> None:
        super().__init__(backlog=0)
        self.keys = keys
        self.key_calls: list[tuple[float, int]] = []
        self.keys_pruned = asyncio.Event()

    async def prune_idempotency_keys(self, now: float, limit: int) -> int:
        self.key_calls.append((now, limit))
        removed = min(limit, self.keys)
        self.keys -= removed
        if removed < limit:
            self.keys_pruned.set()
        return removed


def test_expired_idempotency_keys_go_in_batches_up_to_now() -> None:
    clock = FakeClock()
    store = KeyPruningStore(keys=25)
    fake = cast(Store, store)
    removed = asyncio.run(prune_idempotency_keys(fake, clock=clock, batch=10, pause=0))
    assert removed == 25
    assert store.key_calls == [(clock.now, 10)] * 3


def test_the_retention_pass_prunes_expired_idempotency_keys() -> None:
    clock = FakeClock()
    store = KeyPruningStore(keys=3)

    async def one_pass() -> None:
        task = asyncio.create_task(prune_forever(cast(Store, store), Retention(30), clock))
        await asyncio.wait_for(store.keys_pruned.wait(), 10)
        task.cancel()

    asyncio.run(one_pass())
    assert store.keys == 0
    assert store.key_calls == [(clock.now, BATCH)]
