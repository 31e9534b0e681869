"""The watch scheduler, one process, a fake clock, no sleeping: fair slots, due order, back-off.

- ``PollSlots`` (``service.watch_slots``) is pure bookkeeping: tested alone.
- Due order and fair slots through ``WatchWorker._claim``: the store is a real SQLite file in
  the test's directory (its claim is where "earliest due first" lives), the polls are held
  open by the test, so what is in flight is exactly what the test says.
- The back-off through ``WatchService.poll``: scripted provider answers, and the watch's
  ``next_poll_at`` read back, to the second, on the fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.datastructures import Secret

from service.provider_api import StatusAnswer
from service.relay import Relay
from service.settings import Settings
from service.store.sqlite import SQLiteStore
from service.store.watch_model import Watch
from service.tokens import CallbackTokens
from service.watch_service import WatchService
from service.watch_slots import MIN_SHARE, PollSlots
from service.watch_worker import WatchWorker
from tests.fakes import FakeClock

pytestmark = pytest.mark.anyio
BACKOFF = (2.0, 60.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- fair slots (pure) ------------------------------------------------------------------------


def test_a_provider_alone_takes_every_slot() -> None:
    slots = PollSlots(8, configured=frozenset({"evolink"}))
    assert slots.share("evolink") == 8
    for _ in range(8):
        slots.take("evolink")
    assert slots.free == 0 and slots.claimable(["evolink"]) == {"evolink": 0}


def test_a_part_is_kept_free_for_a_provider_the_relay_can_poll() -> None:
    """Nothing in flight: each provider may take half, so the other's next watch finds a slot."""
    slots = PollSlots(8, configured=frozenset({"evolink", "rivya"}))
    assert slots.claimable(["evolink", "rivya"]) == {"evolink": 4, "rivya": 4}


def test_a_hanging_provider_holds_its_part_and_no_more() -> None:
    """Evolink's polls hang: the slots it cannot take stay free for rivya's watches."""
    slots = PollSlots(8, configured=frozenset({"evolink", "rivya"}))
    for _ in range(4):
        slots.take("evolink")
    assert slots.claimable(["evolink", "rivya"]) == {"evolink": 0, "rivya": 4}
    slots.take("rivya")
    # Both in flight, none kept free: an equal part each.
    assert (slots.share("evolink"), slots.share("rivya")) == (4, 4)
    assert slots.free == 3


def test_parts_shrink_with_the_providers_in_flight_but_never_below_the_minimum() -> None:
    everyone = frozenset({"evolink", "apiframe", "rivya", "reve-art"})
    slots = PollSlots(4, configured=everyone)
    for provider in ("evolink", "apiframe", "rivya"):
        slots.take(provider)
    # 3 in flight + 1 part kept free for reve-art: 4 // 4 = 1, raised to the minimum.
    assert slots.share("evolink") == MIN_SHARE
    # Reve Art may start its minimum, as far as free slots allow (the claim asks for ``free``).
    assert slots.claimable(["evolink", "reve-art"]) == {"evolink": 1, "reve-art": MIN_SHARE}
    assert slots.free == 1


def test_a_released_slot_is_claimable_again() -> None:
    slots = PollSlots(2, configured=frozenset({"evolink"}))
    slots.take("evolink")
    slots.take("evolink")
    slots.release("evolink")
    assert slots.free == 1 and slots.claimable(["evolink"]) == {"evolink": 1}


# -- a relay on a SQLite file and a fake clock ------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(tmp_path / "relay.db"))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def relay_on(store: SQLiteStore, clock: FakeClock, **settings: Any) -> Relay:
    values: dict[str, Any] = {
        "evolink_api_key": Secret("ek"),
        "watch_backoff": BACKOFF,
        "provider_timeout": 1.0,
        **settings,
    }
    return Relay(Settings(**values), store, CallbackTokens(["k"]), clock=clock)


def watch(clock: FakeClock, task_id: str, *, due_in: float = 0.0, **changes: Any) -> Watch:
    values: dict[str, Any] = {
        "id": f"wch_{task_id}",
        "provider": "evolink",
        "task_id": task_id,
        "origin": "api",
        "state": "active",
        "metadata": {},
        "created_at": clock.now,
        "updated_at": clock.now,
        "deadline_at": clock.now + 3600.0,
        "next_poll_at": clock.now + due_in,
        **changes,
    }
    return Watch(**values)


class HeldPolls:
    """Stands in for ``WatchService``: each poll stays in flight until the test ends it."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._ends: dict[str, asyncio.Event] = {}

    async def poll(self, watch: Watch) -> None:
        self.started.append(watch.task_id)
        end = self._ends.setdefault(watch.id, asyncio.Event())
        await end.wait()

    def end(self, task_id: str) -> None:
        self._ends.setdefault(f"wch_{task_id}", asyncio.Event()).set()

    async def aclose(self) -> None:
        pass


async def claim(worker: WatchWorker) -> list[str]:
    """One claim of the worker; the task ids whose polls it started, in order."""
    polls: HeldPolls = worker.service  # type: ignore[assignment]
    before = len(polls.started)
    await worker._claim()
    await asyncio.sleep(0)  # let the new poll tasks start (no time passes)
    return polls.started[before:]


async def finish(worker: WatchWorker, *task_ids: str) -> None:
    polls: HeldPolls = worker.service  # type: ignore[assignment]
    tasks = [worker._tasks[f"wch_{t}"] for t in task_ids]
    for task_id in task_ids:
        polls.end(task_id)
    await asyncio.gather(*tasks)


@pytest.fixture
async def workers() -> AsyncIterator[list[WatchWorker]]:
    """Workers whose held polls are all ended when the test ends."""
    made: list[WatchWorker] = []
    yield made
    for worker in made:
        polls: HeldPolls = worker.service  # type: ignore[assignment]
        for watch_id in list(worker._tasks):
            polls.end(watch_id.removeprefix("wch_"))
        await asyncio.gather(*worker._tasks.values())


def worker_on(relay: Relay, workers: list[WatchWorker], concurrency: int) -> WatchWorker:
    worker = WatchWorker(relay, Scripted(), concurrency=concurrency)  # type: ignore[arg-type]
    worker.service = HeldPolls()  # type: ignore[assignment]
    workers.append(worker)
    return worker


# -- due order ----------------------------------------------------------------------------------


async def test_due_watches_are_claimed_earliest_first_and_later_ones_wait(
    store: SQLiteStore, workers: list[WatchWorker]
) -> None:
    clock = FakeClock()
    worker = worker_on(relay_on(store, clock), workers, concurrency=2)
    # Registered in another order than they are due.
    for task_id, due_in in [("late", 5.0), ("third", -1.0), ("first", -3.0), ("second", -2.0)]:
        await store.create_watch(watch(clock, task_id, due_in=due_in))

    assert await claim(worker) == ["first", "second"]  # two slots: the two earliest due
    assert await claim(worker) == []  # no slot free
    await finish(worker, "first")
    assert await claim(worker) == ["third"]  # "late" is not due yet
    await finish(worker, "second")
    assert await claim(worker) == []
    clock.advance(5.0)
    assert await claim(worker) == ["late"]


async def test_a_watch_in_flight_is_not_claimed_twice(
    store: SQLiteStore, workers: list[WatchWorker]
) -> None:
    clock = FakeClock()
    worker = worker_on(relay_on(store, clock), workers, concurrency=4)
    await store.create_watch(watch(clock, "only"))
    assert await claim(worker) == ["only"]
    clock.advance(10.0)  # still due (its poll recorded nothing), but leased
    assert await claim(worker) == []


# -- fair slots through the worker ------------------------------------------------------------


async def test_a_provider_whose_polls_hang_never_delays_anothers(
    store: SQLiteStore, workers: list[WatchWorker]
) -> None:
    """Six Evolink watches due first, their polls hanging; Rivya's, due later, still run."""
    clock = FakeClock()
    relay = relay_on(store, clock, rivya_api_key=Secret("rk"))
    worker = worker_on(relay, workers, concurrency=4)
    for n in range(6):
        await store.create_watch(watch(clock, f"evo-{n}", due_in=-10.0 + n))
    for n in range(4):
        await store.create_watch(watch(clock, f"riv-{n}", due_in=-1.0 + n / 10, provider="rivya"))

    started = await claim(worker)
    assert sorted(started) == ["evo-0", "evo-1", "riv-0", "riv-1"]
    await finish(worker, "riv-0", "riv-1")  # Rivya answers; Evolink never does
    assert sorted(await claim(worker)) == ["riv-2", "riv-3"]
    assert worker.slots.in_flight["evolink"] == 2  # it never took more than its part


# -- back-off -----------------------------------------------------------------------------------


class Scripted:
    """A ``StatusClients`` that gives the answers it was given, one per fetch."""

    def __init__(self, *answers: StatusAnswer) -> None:
        self.answers = list(answers)

    async def fetch(self, provider: str, task_id: str) -> StatusAnswer:
        return self.answers.pop(0)

    async def aclose(self) -> None:
        pass


def unavailable(retry_after: float | None = None) -> StatusAnswer:
    return StatusAnswer("retry", 503, body=b"busy", retry_after=retry_after, error="HTTP 503")


def running(task_id: str, status: str = "processing") -> StatusAnswer:
    body = orjson.dumps({"id": task_id, "status": status, "progress": 40})
    return StatusAnswer("ok", 200, orjson.loads(body), body)


async def polled(
    store: SQLiteStore, service: WatchService, clock: FakeClock, watch_id: str
) -> Watch:
    """Claim the watch now (it must be due), poll it once; the watch as recorded."""
    (claimed,) = await store.claim_due_watches(clock.now, 10, 30.0)
    assert claimed.id == watch_id
    await service.poll(claimed)
    after = await store.get_watch(watch_id)
    assert after is not None
    return after


async def test_failed_polls_back_off_doubling_up_to_the_cap(store: SQLiteStore) -> None:
    clock = FakeClock()
    relay = relay_on(store, clock)
    service = WatchService(relay, Scripted(*(unavailable() for _ in range(7))))  # type: ignore[arg-type]
    await store.create_watch(watch(clock, "slow", deadline_at=clock.now + 86_400))
    delays = []
    for _ in range(7):
        polled_at = clock.now
        after = await polled(store, service, clock, "wch_slow")
        assert after.state == "active" and after.last_error == "HTTP 503"
        delays.append(after.next_poll_at - polled_at)
        clock.now = after.next_poll_at
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


async def test_a_longer_retry_after_wins_over_the_back_off(store: SQLiteStore) -> None:
    clock = FakeClock()
    service = WatchService(relay_on(store, clock), Scripted(unavailable(retry_after=30.0)))  # type: ignore[arg-type]
    await store.create_watch(watch(clock, "asked"))
    after = await polled(store, service, clock, "wch_asked")
    assert after.next_poll_at == clock.now + 30.0


async def test_a_shorter_retry_after_does_not_shorten_the_back_off(store: SQLiteStore) -> None:
    clock = FakeClock()
    service = WatchService(relay_on(store, clock), Scripted(unavailable(retry_after=0.0)))  # type: ignore[arg-type]
    await store.create_watch(watch(clock, "eager", backoff_step=2))
    after = await polled(store, service, clock, "wch_eager")
    assert after.next_poll_at == clock.now + 8.0 and after.backoff_step == 3


async def test_an_unknown_status_word_is_polled_at_the_slowest_and_flagged(
    store: SQLiteStore,
) -> None:
    clock = FakeClock()
    task = "task-unified-1756817821-4x3rx6ny"
    answers = Scripted(running(task, status="pondering"), running(task))
    service = WatchService(relay_on(store, clock), answers)  # type: ignore[arg-type]
    await store.create_watch(watch(clock, task, id="wch_odd"))
    odd = await polled(store, service, clock, "wch_odd")
    assert odd.next_poll_at == clock.now + BACKOFF[1] and odd.unknown_status == "pondering"
    clock.now = odd.next_poll_at
    known = await polled(store, service, clock, "wch_odd")
    # A known word clears the flag; the back-off goes on from where it was.
    assert known.unknown_status is None
    assert known.next_poll_at == clock.now + 4.0


async def test_the_next_poll_is_never_after_the_deadline_which_then_ends_the_watch(
    store: SQLiteStore,
) -> None:
    clock = FakeClock()
    service = WatchService(relay_on(store, clock), Scripted(unavailable(), unavailable()))  # type: ignore[arg-type]
    await store.create_watch(watch(clock, "short", deadline_at=clock.now + 1.5))
    first = await polled(store, service, clock, "wch_short")
    assert first.state == "active" and first.next_poll_at == clock.now + 1.5
    clock.now = first.next_poll_at
    last = await polled(store, service, clock, "wch_short")
    assert last.state == "expired" and last.event_id is not None
    event = await store.get_event(last.event_id)
    assert event is not None and event["data"]["error"]["code"] == "watch_deadline_exceeded"
