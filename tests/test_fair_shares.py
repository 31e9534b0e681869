"""The delivery worker's claim accounting (``service.fair_shares``), without a server.

Batches of claims are made by hand, time is a ``FakeClock``: what matters is who may start what,
and that a healthy subscriber always finds a slot beside stalled ones.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from service.fair_shares import FairShares
from service.store.base import Claim
from tests.fakes import FakeClock

_ids = itertools.count()


def claim(subscriber: str) -> Claim:
    n = next(_ids)
    return Claim(
        delivery_id=f"dlv_{n}",
        event_id=f"evt_{n}",
        subscriber_id=subscriber,
        url="http://sub.example/hook",
        secrets=("whsec_x",),
        body="{}",
        cycle_attempts=0,
        trigger="scheduled",
    )


def batch(*subscribers: str) -> list[Claim]:
    return [claim(sub) for sub in subscribers]


def started_for(shares: FairShares, claims: list[Claim]) -> list[str]:
    return [c.subscriber_id for c in shares.admit(claims).started]


STALLED = [f"stalled-{n}" for n in range(6)]


def test_caps_and_reserve_leave_a_share_free() -> None:
    shares = FairShares(concurrency=512, per_subscriber=64)
    assert (shares.cap(1), shares.reserve(1)) == (342, 170)  # alone: two thirds
    assert (shares.cap(2), shares.reserve(2)) == (192, 128)
    assert (shares.cap(100), shares.reserve(100)) == (5, 5)
    for n in range(1, 512):
        assert n * shares.cap(n) + shares.reserve(n) <= 512 or shares.cap(n) == 1
    small = FairShares(concurrency=8, per_subscriber=64)
    assert [small.cap(n) for n in range(1, 10)] == [6, 3, 2, 1, 1, 1, 1, 1, 1]
    assert [small.reserve(n) for n in range(1, 10)] == [2, 2, 1, 1, 1, 1, 1, 1, 1]


def test_a_lone_subscriber_queues_a_whole_batch() -> None:
    """Alone, a subscriber takes a full batch at once: nothing goes back to the store."""
    shares = FairShares(concurrency=512, per_subscriber=64)
    admission = shares.admit(batch(*["solo"] * 256))
    assert (len(admission.started), admission.surplus) == (256, [])
    assert shares.saturated() == {"solo"}  # more than its 64 connections: no claim for it
    for _ in range(193):
        shares.release("solo")
    assert shares.saturated() == set()  # 63 left: claim again, and a full batch fits
    assert len(shares.admit(batch(*["solo"] * 256)).surplus) == 0


def test_a_batch_is_decided_as_a_whole_not_in_due_order() -> None:
    """The first subscriber in due order does not take the slots of the ones after it."""
    shares = FairShares(concurrency=8, per_subscriber=64)
    admission = shares.admit(batch("a", "a", "a", "a", "a", "a", "b", "c"))
    assert [c.subscriber_id for c in admission.started] == ["a", "a", "b", "c"]
    assert shares.held == {"a": 2, "b": 1, "c": 1}  # three contend: cap 2, reserve 1...
    assert shares.free == 4  # ...and extra leases stop short of it


def test_stalled_subscribers_timing_out_together_still_count() -> None:
    """The bug: six stalled subscribers' attempts time out at once; the first one in due order
    must not take every slot freed, or the healthy one waits a whole timeout."""
    clock = FakeClock()
    shares = FairShares(concurrency=8, per_subscriber=64, memory=1.0, clock=clock)
    assert started_for(shares, batch(*STALLED, "healthy")) == [*STALLED, "healthy"]
    shares.release("healthy")  # delivered at once
    clock.advance(1.5)  # the stalled ones time out together
    for sub in STALLED:
        shares.release(sub)
    assert shares.free == 8
    # The oldest due deliveries are all the first stalled subscriber's backlog.
    assert started_for(shares, batch(*["stalled-0"] * 8)) == ["stalled-0"]
    assert "stalled-0" in shares.saturated()
    # The other stalled ones come back one lease each; the healthy one finds its slot.
    assert started_for(shares, batch(*STALLED[1:] * 2)) == STALLED[1:]
    assert shares.saturated() == set(STALLED)
    assert started_for(shares, batch("healthy")) == ["healthy"]


def test_without_memory_the_lone_looking_subscriber_still_leaves_the_reserve() -> None:
    """Long after everyone was seen, a backlog alone in the batch takes its cap, not all."""
    clock = FakeClock()
    shares = FairShares(concurrency=8, per_subscriber=64, memory=1.0, clock=clock)
    shares.admit(batch(*STALLED))
    for sub in STALLED:
        shares.release(sub)
    clock.advance(1.0)  # forgotten
    assert len(shares.admit(batch(*["stalled-0"] * 8)).started) == 6
    assert shares.free == 2
    assert started_for(shares, batch("healthy")) == ["healthy"]


def test_when_only_the_reserve_is_free_claims_are_for_newcomers() -> None:
    shares = FairShares(concurrency=8, per_subscriber=64)
    shares.admit(batch(*["a"] * 6))
    assert shares.free == shares.reserve(1) == 2
    assert shares.saturated() == {"a"}
    assert started_for(shares, batch("a", "b", "b")) == ["b"]  # b's first lease, nothing more
    assert shares.saturated() == {"a", "b"}


def test_per_subscriber_leaves_a_busy_subscriber_out_of_claims() -> None:
    shares = FairShares(concurrency=512, per_subscriber=4)
    shares.admit(batch(*["a"] * 4, "b"))
    assert shares.saturated() == {"a"}


def test_memory_ends() -> None:
    clock = FakeClock()
    shares = FairShares(concurrency=8, per_subscriber=64, memory=1.0, clock=clock)
    shares.admit(batch("a", "b"))
    shares.release("a")
    clock.advance(0.99)
    assert shares.contenders() == {"a", "b"}
    clock.advance(0.01)
    assert shares.contenders() == {"b"}
    shares.admit(batch("a"))
    shares.release("a")
    assert shares.contenders() == {"a", "b"}  # remembered from its latest release


@settings(deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("claim"), st.lists(st.integers(0, 9), max_size=12)),
            st.tuples(st.just("end"), st.integers(0, 9)),
            st.tuples(st.just("wait"), st.floats(0, 2)),
        ),
        max_size=40,
    )
)
def test_invariants(steps: list[tuple[str, object]]) -> None:
    """Whatever comes: slots are never overbooked, a subscriber holding none gets a free
    slot, and extra leases respect the cap and never take the reserve."""
    clock = FakeClock()
    shares = FairShares(concurrency=8, per_subscriber=3, memory=1.0, clock=clock)
    for kind, arg in steps:
        if kind == "claim":
            assert isinstance(arg, list)
            subs = [f"s{n}" for n in arg][: shares.free]  # the worker never claims more
            before = dict(shares.held)
            n = len(shares.contenders(subs))
            admission = shares.admit(batch(*subs))
            assert shares.in_use == sum(shares.held.values()) <= 8
            extras = 0
            for sub in set(subs):
                first = 0 if before.get(sub, 0) else 1
                assert shares.held.get(sub, 0) >= first  # a first lease is always given
                extra = shares.held.get(sub, 0) - before.get(sub, 0) - first
                if extra > 0:
                    assert shares.held[sub] <= shares.cap(n)
                    extras += extra
            if extras:
                assert shares.free >= shares.reserve(n)
            assert len(admission.started) + len(admission.surplus) == len(subs)
        elif kind == "end":
            sub = f"s{arg}"
            if sub in shares.held:
                shares.release(sub)
        else:
            assert isinstance(arg, float)
            clock.advance(arg)
