"""The overview's time rules on a fake clock and a fake store: the hour it looks back over, a
provider's pause by a 429, and the time a simulated provider stamps on its callbacks."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from service import overview, simulate
from service.clock import rfc3339
from service.settings import Settings
from service.store.base import Store
from service.store.budget import ApiBudget, BudgetState
from tests.fakes import FakeClock


class OverviewStore:
    """The reads ``overview.build`` makes, answering fixed figures and recording the times
    asked about."""

    def __init__(self, blocked_until: float = 0.0) -> None:
        self.since: list[float] = []
        self.budget_asked: list[tuple[str, float, float]] = []
        self.blocked_until = blocked_until

    async def activity(self, since: float) -> dict[str, Any]:
        self.since.append(since)
        return {
            "events": {"generation.succeeded": {"emitted": 2, "superseded": 1}},
            "deliveries": {"succeeded": 2},
            "oldest_pending": None,
        }

    async def delivery_counts(self) -> dict[str, Any]:
        return {"pending": 0, "failed": 1, "oldest_pending_seconds": None}

    async def budget_state(self, provider: str, now: float, window: float) -> BudgetState:
        self.budget_asked.append((provider, now, window))
        return BudgetState(used=3, blocked_until=self.blocked_until)


def build(store: OverviewStore, clock: FakeClock, **options: Any) -> overview.Overview:
    return asyncio.run(overview.build(cast(Store, store), clock, **options))


def test_the_overview_looks_back_one_hour_from_the_clock() -> None:
    clock = FakeClock()
    store = OverviewStore()
    first = build(store, clock)
    clock.advance(600)
    second = build(store, clock)
    assert store.since == [first.generated_at - 3600, clock.now - 3600]
    assert (first.generated_at, second.generated_at) == (clock.now - 600, clock.now)
    assert first.callbacks == {"accepted": 2, "superseded": 1}
    assert first.counts_refusals is False


def test_a_pause_by_a_429_shows_until_it_ends() -> None:
    clock = FakeClock()
    store = OverviewStore(blocked_until=clock.now + 30)
    budget = ApiBudget({"evolink": 10}, window=60)
    paused = build(store, clock, budget=budget).budgets
    assert paused == [
        {
            "provider": "evolink",
            "used": 3,
            "rate": 10,
            "window": 60,
            "paused_until": clock.now + 30,
            "waiting": True,
        }
    ]
    clock.advance(30)
    (row,) = build(store, clock, budget=budget).budgets
    assert (row["paused_until"], row["waiting"]) == (None, False)
    assert [now for _, now, _ in store.budget_asked] == [clock.now - 30, clock.now]


def test_a_simulated_callback_is_dated_by_the_clock() -> None:
    clock = FakeClock(1_800_000_000.25)
    evolink = simulate.build_callback("evolink", "completed", "t1", Settings(), clock)
    assert evolink.payload["created"] == 1_800_000_000 - 30
    rivya = simulate.build_callback("rivya", "completed", "t2", Settings(), clock)
    assert rivya.payload["data"]["updated_at"] == rfc3339(clock.now)
    assert rivya.payload["data"]["created_at"] == rfc3339(clock.now - 60)
    # Each attempt is signed at the time it is sent.
    assert rivya.headers(rivya.body)["webhook-timestamp"] == "1800000000"
    clock.advance(4)
    assert rivya.headers(rivya.body)["webhook-timestamp"] == "1800000004"
    assert json.loads(rivya.body)["type"] == "generation.succeeded"
