"""Both stores judge by the clock they are given, not by the system's.

A subscriber's previous secret signs until its expiry and the oldest pending delivery's age is
counted from now: with a ``FakeClock``, moving time is a call, not a sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.store.base import Store
from service.store.sqlite import SQLiteStore
from tests.fakes import FakeClock
from tests.test_store_contract import fresh_schema, incoming, postgres_store, subscriber

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened: Store = SQLiteStore(str(tmp_path / "relay.db"), clock=clock)
        await opened.open()
        try:
            yield opened
        finally:
            await opened.close()
        return
    with fresh_schema() as url:
        opened = postgres_store(url, clock=clock)
        await opened.open()
        try:
            yield opened
        finally:
            await opened.close()


async def secrets(store: Store, subscriber_id: str) -> tuple[str, ...]:
    found = await store.get_subscriber(subscriber_id)
    assert found is not None
    return found.secrets


async def test_the_previous_secret_expires_by_the_stores_clock(
    store: Store, clock: FakeClock
) -> None:
    sub = subscriber(at=clock.now)
    await store.create_subscriber(sub)
    (old,) = sub.secrets
    await store.rotate_secret(sub.id, "whsec_new", clock.now + 60)
    clock.advance(59)
    assert await secrets(store, sub.id) == ("whsec_new", old)
    assert (await store.list_subscribers(None, 10)).items[0].secrets == ("whsec_new", old)
    clock.advance(2)
    assert await secrets(store, sub.id) == ("whsec_new",)
    assert (await store.list_subscribers(None, 10)).items[0].secrets == ("whsec_new",)


async def test_the_oldest_pending_age_is_counted_by_the_stores_clock(
    store: Store, clock: FakeClock
) -> None:
    await store.create_subscriber(subscriber(at=clock.now))
    await store.ingest(incoming(at=clock.now - 5))
    assert (await store.delivery_counts())["oldest_pending_seconds"] == 5.0
    clock.advance(10)
    assert (await store.delivery_counts())["oldest_pending_seconds"] == 15.0
