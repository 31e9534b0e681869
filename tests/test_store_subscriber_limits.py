"""The store contract for respecting subscribers, on SQLite and PostgreSQL: custom headers and
the rate limit kept and handed to claims, and failures in a row counted per subscriber."""

from __future__ import annotations

import dataclasses
import time

import pytest

from service.store.base import Store
from tests import test_store_contract as contract
from tests.test_store_contract import attempt, claim_all, incoming, subscriber

# The contract's fixtures: every test runs on SQLite and on PostgreSQL.
anyio_backend = contract.anyio_backend
store_kind = contract.store_kind
make_store = contract.make_store
pg_url = contract.pg_url
store = contract.store

pytestmark = pytest.mark.anyio

HEADERS = (("X-Api-Key", "key-0123456789abcdef"), ("X-Tenant", "acme \u00e9"))


async def test_headers_and_rate_limit_are_kept_and_claimed(store: Store) -> None:
    limited = dataclasses.replace(subscriber("sub_a"), headers=HEADERS, max_per_second=2.5)
    plain = subscriber("sub_b")
    await store.create_subscriber(limited)
    await store.create_subscriber(plain)
    assert await store.get_subscriber("sub_a") == limited
    assert (await store.get_subscriber("sub_b")).headers == ()  # type: ignore[union-attr]
    await store.ingest(incoming("t1"))
    claims = {c.subscriber_id: c for c in await claim_all(store, time.time() + 1)}
    assert (claims["sub_a"].headers, claims["sub_a"].max_per_second) == (HEADERS, 2.5)
    assert (claims["sub_b"].headers, claims["sub_b"].max_per_second) == ((), None)

    changed = await store.update_subscriber(
        "sub_a", {"headers": (("X-Other", "v"),), "max_per_second": None}
    )
    assert changed is not None
    assert (changed.headers, changed.max_per_second) == ((("X-Other", "v"),), None)
    cleared = await store.update_subscriber("sub_a", {"headers": None, "max_per_second": 1000.0})
    assert cleared is not None
    assert (cleared.headers, cleared.max_per_second) == ((), 1000.0)
    assert await store.get_subscriber("sub_a") == cleared


async def test_consecutive_failures_count_until_a_success(store: Store) -> None:
    await store.create_subscriber(subscriber("sub_a"))
    await store.create_subscriber(subscriber("sub_b"))
    assert await store.consecutive_failures() == {"sub_a": 0, "sub_b": 0}
    for n in range(3):
        await store.ingest(incoming(f"t{n}"))
    now = time.time() + 1
    claims = await claim_all(store, now)
    assert not any(claim.subscriber_failing for claim in claims)
    for claim in claims:
        if claim.subscriber_id == "sub_a":
            await store.record_attempt(attempt(claim, "pending", at=now, next_attempt_at=now + 1))
        elif claim.task_key.endswith("/t0"):
            await store.record_attempt(attempt(claim, "failed", at=now, error="refused"))
        else:
            await store.record_attempt(attempt(claim, "succeeded", at=now))
    # sub_b's other successes were claimed before its failure: they leave its count alone.
    assert await store.consecutive_failures() == {"sub_a": 3, "sub_b": 1}

    # Claimed now, its deliveries say it is failing, and a success ends that.
    await store.ingest(incoming("t3"))
    claims = {c.subscriber_id: c for c in await claim_all(store, now + 2, limit=2)}
    assert claims["sub_b"].subscriber_failing and claims["sub_a"].subscriber_failing
    success = dataclasses.replace(
        attempt(claims["sub_b"], "succeeded", at=now + 2), subscriber_failing=True
    )
    await store.record_attempt(success)
    assert await store.consecutive_failures() == {"sub_a": 3, "sub_b": 0}
    # A removed subscriber's count goes with it.
    await store.delete_subscriber("sub_a", now)
    assert await store.consecutive_failures() == {"sub_b": 0}
