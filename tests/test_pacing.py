"""Per-subscriber rate limits (``service.pacing``, and the worker's use of it), on a fake clock
and a fake store: no server, no sleep."""

from __future__ import annotations

import dataclasses

import pytest

from service.pacing import CATCH_UP_SECONDS, Pacer
from service.store.base import Claim
from service.worker import PACED_WINDOW_SECONDS, DeliveryWorker
from tests.fakes import FakeClock
from tests.test_worker_claims import GatedDeliverer, ReleasingStore, claim, settle

pytestmark = pytest.mark.anyio


def test_turns_come_one_interval_apart() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    assert pacer.ready("sub_a") and pacer.next_turn() is None
    pacer.take("sub_a", 4.0)
    assert not pacer.ready("sub_a") and pacer.ready("sub_b")
    assert pacer.waiting() == {"sub_a"}
    assert pacer.next_turn() == pytest.approx(clock() + 0.25)
    clock.advance(0.25)
    assert pacer.ready("sub_a")
    pacer.take("sub_a", 4.0)  # on time: the next one a quarter second later
    assert pacer.ready_at("sub_a") == pytest.approx(clock() + 0.25)


def test_a_late_start_is_caught_up_on_briefly_never_saved_up() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    pacer.take("sub_a", 10.0)
    clock.advance(0.1 + 0.03)  # 30 ms late: the next turn keeps the pace
    pacer.take("sub_a", 10.0)
    assert pacer.ready_at("sub_a") == pytest.approx(clock() - 0.03 + 0.1)
    clock.advance(0.1 + CATCH_UP_SECONDS + 0.01)  # later than that: the pace starts afresh
    pacer.take("sub_a", 10.0)
    assert pacer.ready_at("sub_a") == pytest.approx(clock() + 0.1)
    clock.advance(60)  # idle a minute: no burst saved up, one at once then the pace
    pacer.take("sub_a", 10.0)
    assert pacer.ready_at("sub_a") == pytest.approx(clock() + 0.1)
    assert pacer.waiting() == {"sub_a"}
    clock.advance(1)
    assert pacer.waiting() == frozenset()  # idle ones are forgotten


def paced(subscriber: str, per_second: float) -> Claim:
    return dataclasses.replace(claim(subscriber), max_per_second=per_second)


class WatchedStore(ReleasingStore):
    def __init__(self) -> None:
        super().__init__()
        self.excluded: list[frozenset[str]] = []

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float, exclude: frozenset[str]
    ) -> list[Claim]:
        self.excluded.append(exclude)
        return await super().claim_due(now, limit, lease_seconds, exclude)


async def test_a_paced_backlog_holds_no_slot_and_goes_at_its_pace() -> None:
    clock = FakeClock()
    store = WatchedStore()
    deliverer = GatedDeliverer(stalled=())
    worker = DeliveryWorker(store, deliverer, (0.5,), concurrency=64, clock=clock)  # type: ignore[arg-type]
    store.add(paced("small", 5.0) for _ in range(100))  # the oldest due: a batch job's burst
    store.add(claim("other") for _ in range(3))

    while await worker._claim():
        pass
    await settle()
    # One of the small one's started; ten (2 s at 5 a second) wait, leased, holding no slot;
    # the rest went back. The other subscriber's all started, in the same claims.
    assert deliverer.started.count("small") == 1
    assert deliverer.started.count("other") == 3
    waiting = int(5.0 * PACED_WINDOW_SECONDS)
    assert len(worker._paced["small"]) == waiting - 1
    assert worker.shares.in_use == 0 and worker.in_flight == 0  # all recorded
    assert len(store.pending) == 100 - waiting

    # While its deliveries wait, claims leave it out: the other's new ones start at once.
    store.add(claim("other") for _ in range(2))
    worker.wake()
    await worker._start_paced()
    await worker._claim()
    await settle()
    assert "small" in store.excluded[-1]
    assert deliverer.started.count("other") == 5
    assert deliverer.started.count("small") == 1  # its turn has not come

    # Each fifth of a second, one more.
    for n in range(2, waiting + 1):
        clock.advance(0.2)
        await worker._start_paced()
        await settle()
        assert deliverer.started.count("small") == n
    assert "small" not in worker._paced
    # Its turn again: the next claim brings its next ones.
    clock.advance(0.2)
    await worker._claim()
    await settle()
    assert deliverer.started.count("small") == waiting + 1
    assert len(worker._paced["small"]) == waiting - 1

    await worker.stop()  # what waits goes back to the store
    assert "small" not in worker._paced
    assert len(store.pending) == 100 - waiting - 1


async def test_paced_deliveries_held_past_half_their_lease_go_back() -> None:
    """A delivery held past half its lease (the worker was held up) goes back to the store
    rather than be sent as its lease lapses (when another worker may claim it)."""
    clock = FakeClock()
    store = WatchedStore()
    deliverer = GatedDeliverer(stalled=["small"])  # it hangs: its slots stay taken
    worker = DeliveryWorker(
        store,
        deliverer,
        (0.5,),
        concurrency=32,
        per_subscriber=1,
        clock=clock,  # type: ignore[arg-type]
    )
    store.add(paced("small", 100.0) for _ in range(20))
    await worker._claim()
    await settle()
    held = len(worker._paced["small"])
    assert held == 19 and deliverer.started.count("small") == 1
    clock.advance(worker.lease_seconds / 2 + 1)
    await worker._start_paced()
    assert "small" not in worker._paced
    assert len(store.pending) == 20 - deliverer.started.count("small")
    deliverer.timeout_ends.set()
    await settle()
    await worker.stop()
