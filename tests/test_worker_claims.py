"""The delivery worker's claims against a fake store and a fake deliverer: no server, no sleep.

Stalled subscribers are attempts that wait on an event the test sets (their timeouts), so the
moment they all end together is exact; the clock is a ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable

import pytest

from service.delivery import Attempt
from service.store.base import AttemptRecord, Claim
from service.worker import DeliveryWorker
from tests.fakes import FakeClock

pytestmark = pytest.mark.anyio

_ids = itertools.count()


def claim(subscriber: str) -> Claim:
    n = next(_ids)
    return Claim(
        delivery_id=f"dlv_{n:06d}",
        event_id=f"evt_{n}",
        subscriber_id=subscriber,
        url="http://sub.example/hook",
        secrets=("whsec_x",),
        body="{}",
        cycle_attempts=0,
        trigger="scheduled",
    )


class FakeStore:
    """Pending deliveries in due order; a claim takes the first ones not excluded."""

    def __init__(self) -> None:
        self.pending: list[Claim] = []
        self.recorded: list[AttemptRecord] = []
        self.claims = 0

    def add(self, claims: Iterable[Claim]) -> None:
        self.pending.extend(claims)
        self.pending.sort(key=lambda c: c.delivery_id)

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float, exclude: frozenset[str]
    ) -> list[Claim]:
        self.claims += 1
        taken = [c for c in self.pending if c.subscriber_id not in exclude][:limit]
        for c in taken:
            self.pending.remove(c)
        return taken

    async def release_leases(self, delivery_ids: list[str] | None = None) -> int:
        raise AssertionError("a lone subscriber's batch never goes back")

    async def record_attempt(self, record: AttemptRecord) -> None:
        self.recorded.append(record)


class ReleasingStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.leased: dict[str, Claim] = {}

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float, exclude: frozenset[str]
    ) -> list[Claim]:
        taken = await super().claim_due(now, limit, lease_seconds, exclude)
        self.leased.update((c.delivery_id, c) for c in taken)
        return taken

    async def release_leases(self, delivery_ids: list[str] | None = None) -> int:
        assert delivery_ids is not None
        self.add(self.leased.pop(d) for d in delivery_ids)
        return len(delivery_ids)


class GatedDeliverer:
    """Healthy subscribers answer at once; stalled ones when the test ends their timeout."""

    timeout = 1.5

    def __init__(self, stalled: Iterable[str]) -> None:
        self.timeout_ends = asyncio.Event()
        self.stalled = set(stalled)
        self.started: list[str] = []

    async def attempt(self, claim: Claim) -> Attempt:
        self.started.append(claim.subscriber_id)
        if claim.subscriber_id in self.stalled:
            await self.timeout_ends.wait()
            return Attempt(0.0, 1500.0, None, "timed out after 1.5 s", None)
        return Attempt(0.0, 1.0, 204, None, None)


async def settle() -> None:
    """Let the attempts started run up to their gate, or to their end and record."""
    for _ in range(10):
        await asyncio.sleep(0)


async def claim_until_idle(worker: DeliveryWorker, deliverer: GatedDeliverer) -> None:
    """What ``run`` does, woken by every attempt that ends, until nothing more starts."""
    for _ in range(100):
        before = (len(deliverer.started), worker.in_flight)
        while await worker._claim():
            pass
        await settle()
        if (len(deliverer.started), worker.in_flight) == before:
            return
    raise AssertionError("the worker never went idle")


STALLED = [f"stalled-{n}" for n in range(6)]


async def test_a_healthy_subscriber_is_not_kept_waiting_when_stalled_ones_time_out_together() -> (
    None
):
    clock = FakeClock()
    store = ReleasingStore()
    deliverer = GatedDeliverer(STALLED)
    worker = DeliveryWorker(store, deliverer, (0.5,), concurrency=8, clock=clock)  # type: ignore[arg-type]
    backlog = [claim("stalled-0") for _ in range(20)]  # the oldest due, once they are retried
    # Each event goes to the six stalled subscribers and the healthy one.
    for _ in range(3):
        store.add(claim(sub) for sub in [*STALLED, "healthy"])
    await claim_until_idle(worker, deliverer)
    assert worker.in_flight == 6  # one stalled attempt each; the healthy ones are done
    assert deliverer.started.count("healthy") == 3
    assert all(deliverer.started.count(sub) == 1 for sub in STALLED)

    # The stalled attempts time out together; their backlogs are the oldest due deliveries.
    store.add(backlog)
    deliverer.timeout_ends.set()
    await settle()
    assert worker.in_flight == 0
    deliverer.timeout_ends = asyncio.Event()
    clock.advance(0.01)
    await claim_until_idle(worker, deliverer)
    held = worker.shares.held
    assert max(held.values()) == 1, held  # the first in due order did not take every slot
    store.add([claim("healthy")])
    worker.wake()
    await claim_until_idle(worker, deliverer)
    assert deliverer.started.count("healthy") == 4  # at once, not after a timeout
    deliverer.timeout_ends.set()
    await worker.stop()


async def test_a_lone_subscriber_takes_whole_batches_without_giving_any_back() -> None:
    clock = FakeClock()
    store = FakeStore()  # release_leases fails the test
    deliverer = GatedDeliverer(["solo"])
    worker = DeliveryWorker(store, deliverer, (1.0,), clock=clock)  # type: ignore[arg-type]
    store.add(claim("solo") for _ in range(1000))
    await claim_until_idle(worker, deliverer)
    assert worker.in_flight == 256  # one full batch, queued behind its 64 connections
    assert len(store.pending) == 1000 - 256
    claims = store.claims
    await claim_until_idle(worker, deliverer)  # saturated: the store is not asked again
    assert store.claims == claims
    deliverer.timeout_ends.set()
    await worker.stop()
