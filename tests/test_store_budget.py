"""Each provider's request budget in the store contract, on SQLite and PostgreSQL alike.

``claim_due_watches(..., budget=...)`` spends a token per watch it leases, atomically with the
lease; a token counts until the poll's request ended plus the window; ``block_provider`` (a
429) stops claims of that provider. On PostgreSQL two replicas claiming at once share one
budget.
"""

# ruff: noqa: F811 (pytest fixtures imported from test_store_contract, used as parameters)
from __future__ import annotations

import asyncio
import time

import pytest

from service.store.base import Store
from service.store.budget import ApiBudget
from service.store.postgres import PostgresStore
from tests.test_store_contract import (  # noqa: F401 (fixtures)
    anyio_backend,
    make_store,
    opened,
    pg_url,
    postgres_store,
    store,
    store_kind,
)
from tests.test_store_watches import LEASE, poll, watch

pytestmark = pytest.mark.anyio
WINDOW = 10.0
BUDGET = ApiBudget({"reve-art": 3}, WINDOW)
SHARES = {"reve-art": 100, "evolink": 100}


async def claim(store: Store, now: float, budget: ApiBudget = BUDGET) -> list[str]:
    claimed = await store.claim_due_watches(now, 100, LEASE, SHARES, budget)
    return [w.id for w in claimed]


async def test_a_claim_takes_at_most_the_tokens_left(store: Store) -> None:
    now = time.time()
    reve = [watch(f"r{n}", provider="reve-art", due=now - 10 + n) for n in range(5)]
    other = watch("e1", provider="evolink", due=now - 1)
    for w in (*reve, other):
        await store.create_watch(w)
    # The three due first, and the provider without a budget as usual.
    assert set(await claim(store, now)) == {reve[0].id, reve[1].id, reve[2].id, other.id}
    assert (await store.budget_state("reve-art", now, WINDOW)).used == 3
    for w in reve[:3]:
        await store.record_poll(poll(w, at=now + 1, next_at=now + 10**6))
    # Spent until the requests ended (now + 1) plus the window.
    assert await claim(store, now + 5) == []
    assert await claim(store, now + WINDOW + 0.5) == []
    assert await claim(store, now + WINDOW + 1.5) == [reve[3].id, reve[4].id]


async def test_a_token_counts_until_its_request_ended(store: Store) -> None:
    """Not recorded yet: the request may end as late as the lease, so the token counts until
    then plus the window; the poll's record brings it back to when the answer came."""
    now = time.time()
    budget = ApiBudget({"reve-art": 1}, WINDOW)
    first, second = (watch(f"r{n}", provider="reve-art", due=now - 2 + n) for n in range(2))
    for w in (first, second):
        await store.create_watch(w)
    assert await claim(store, now, budget) == [first.id]
    assert await claim(store, now + WINDOW + 1, budget) == []
    assert (await store.budget_state("reve-art", now + WINDOW + 1, WINDOW)).used == 1
    await store.record_poll(poll(first, at=now + 2, next_at=now + 10**6))
    assert await claim(store, now + WINDOW + 1, budget) == []
    assert await claim(store, now + WINDOW + 2.5, budget) == [second.id]


async def test_a_blocked_provider_is_not_claimed_until_the_block_ends(store: Store) -> None:
    now = time.time()
    w = watch("r1", provider="reve-art", due=now - 1)
    await store.create_watch(w)
    await store.block_provider("reve-art", now + 20)
    await store.block_provider("reve-art", now + 5)  # an earlier end never shortens a block
    state = await store.budget_state("reve-art", now, WINDOW)
    assert (state.used, state.blocked_until) == (0, now + 20)
    assert state.exhausted(3, now) and not state.exhausted(3, now + 21)
    assert await claim(store, now + 19) == []
    assert await claim(store, now + 21) == [w.id]


@pytest.mark.postgres
async def test_replicas_claiming_at_once_share_one_budget(pg_url: str) -> None:
    """Two replicas, four claimers each, 40 due watches, a budget of 7: exactly 7 leased."""
    first, second = postgres_store(pg_url), postgres_store(pg_url)
    async with opened(first, second):
        now = time.time()
        for n in range(40):
            await first.create_watch(watch(f"t{n}", provider="reve-art", due=now - 40 + n))
        budget = ApiBudget({"reve-art": 7}, WINDOW)

        async def claimer(store: PostgresStore) -> list[str]:
            mine: list[str] = []
            for _ in range(5):
                batch = await store.claim_due_watches(now, 3, LEASE, SHARES, budget)
                mine += [w.id for w in batch]
            return mine

        claimed = await asyncio.gather(*(claimer(s) for s in (first, second) for _ in range(4)))
        every = [watch_id for mine in claimed for watch_id in mine]
        assert len(every) == len(set(every)) == 7
        assert (await second.budget_state("reve-art", now, WINDOW)).used == 7
