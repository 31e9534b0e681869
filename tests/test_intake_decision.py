"""The intake pipeline's decision (``Relay.receive``), one process, no server.

The store is a fake at the store port that answers what each case needs (the store's own
dedup, supersession and hold rules have their contract tests in ``test_store_contract`` and
``test_store_watches``); the clock is a ``FakeClock``. What is tested here is what the relay
decides from those answers: held or ingested, which outcome, which URL, which outputs, who is
woken, and that a refusal stores nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import pytest
from starlette.datastructures import Secret

from service.events import Normalized
from service.holds import HoldsFull, TooManyHeldForUrl
from service.intake import Accepted, Duplicate, Held, Superseded
from service.providers import get_provider
from service.relay import Relay, UrlBoundToOtherTask
from service.settings import Settings
from service.store.base import IncomingEvent, IngestResult, Outcome, Store
from service.store.watch_model import HoldLimits, HoldRefused, Watch
from service.tokens import CallbackTokens
from tests.conftest import EVOLINK_COMPLETED
from tests.fakes import FakeClock

pytestmark = pytest.mark.anyio
TASK = "task-unified-1756817821-4x3rx6ny"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class FakeStore:
    """The store port, for the calls ``Relay.receive`` makes; answers set by each test."""

    outcome: Outcome = "accepted"
    deliveries: int = 1
    #: What ``hold_for_confirmation`` answers: "hold" (the watch given), a watch, None, or a
    #: ``HoldRefused``.
    hold: Any = "hold"
    #: url_id -> the task it is bound to.
    bindings: dict[str, str] = field(default_factory=dict)
    #: The id of the event an update repeats (what ``ingest`` answers for a duplicate).
    existing: str = "evt_existing"
    superseded_events: set[str] = field(default_factory=set)
    ingested: list[IncomingEvent] = field(default_factory=list)
    held: list[tuple[Watch, HoldLimits | None]] = field(default_factory=list)

    async def bind_callback_url(self, url_id: str, task_id: str) -> str | None:
        return self.bindings.setdefault(url_id, task_id)

    async def get_callback_metadata(self, url_id: str) -> dict[str, Any] | None:
        return {"user": f"owner-of-{url_id}"}

    async def hold_for_confirmation(
        self, watch: Watch, limits: HoldLimits | None = None
    ) -> Watch | HoldRefused | None:
        if isinstance(self.hold, HoldRefused):
            return self.hold
        self.held.append((watch, limits))
        answer: Watch | None = watch if self.hold == "hold" else self.hold
        return answer

    async def ingest(self, event: IncomingEvent) -> IngestResult:
        self.ingested.append(event)
        if self.outcome == "duplicate":
            return IngestResult("duplicate", self.existing)
        deliveries = self.deliveries if self.outcome == "accepted" else 0
        return IngestResult(self.outcome, event.event_id, deliveries)

    async def get_event(self, event_id: str) -> dict[str, Any] | None:
        state = "superseded" if event_id in self.superseded_events else "emitted"
        return {"id": event_id, "relay": {"state": state}}


@dataclass
class Harness:
    relay: Relay
    store: FakeStore
    clock: FakeClock
    woken: list[str]


def harness(*, confirm: bool = False, **store: Any) -> Harness:
    """A relay on a fake store and clock; ``confirm``: it has an Evolink API key, so Evolink's
    terminal callbacks are held for confirmation."""
    settings = Settings(
        evolink_api_key=Secret("ek") if confirm else None,
        holds_per_url=5,
        holds_max=50,
        hold_deadline=300.0,
    )
    fake = FakeStore(**store)
    clock = FakeClock()
    woken: list[str] = []
    relay = Relay(settings, cast(Store, fake), CallbackTokens(["k"]), clock=clock)
    relay.on_deliveries = lambda: woken.append("deliveries")
    relay.on_watch_due = lambda: woken.append("watch")
    return Harness(relay, fake, clock, woken)


def callback(status: str = "completed", **changes: Any) -> tuple[Any, bytes, Normalized]:
    """An Evolink callback as the endpoint hands it over: payload, body, normalized."""
    payload = copy.deepcopy(EVOLINK_COMPLETED) | {"status": status, **changes}
    body = orjson.dumps(payload)
    return payload, body, get_provider("evolink").normalize(payload)


async def receive(h: Harness, status: str = "completed", url_id: str | None = "url-1") -> Any:
    payload, body, normalized = callback(status)
    return await h.relay.receive("evolink", normalized, payload=payload, body=body, url_id=url_id)


# -- ingested ---------------------------------------------------------------------------------


async def test_a_new_state_is_accepted_stored_at_the_clocks_time_and_wakes_delivery() -> None:
    h = harness()
    received = await receive(h)
    (event,) = h.store.ingested
    assert received == Accepted(event.event_id)
    assert (event.task_id, event.status, event.url_id) == (TASK, "succeeded", "url-1")
    assert event.received_at == h.clock.now
    assert orjson.loads(event.body)["data"]["metadata"] == {"user": "owner-of-url-1"}
    assert event.raw_body == orjson.dumps(copy.deepcopy(EVOLINK_COMPLETED))
    assert h.woken == ["deliveries"]


async def test_the_same_update_again_is_a_duplicate_and_wakes_nobody() -> None:
    h = harness(outcome="duplicate")
    received = await receive(h)
    assert received == Duplicate("evt_existing", superseded=False)
    assert h.woken == []


async def test_a_repeat_of_a_superseded_update_is_a_superseded_duplicate() -> None:
    h = harness(outcome="duplicate", superseded_events={"evt_existing"})
    assert await receive(h) == Duplicate("evt_existing", superseded=True)


async def test_an_update_older_than_the_tasks_end_is_superseded() -> None:
    h = harness(outcome="superseded")
    received = await receive(h, status="processing")
    assert received == Superseded(h.store.ingested[0].event_id)
    assert h.woken == []


async def test_without_confirmation_a_terminal_callback_is_ingested_at_once() -> None:
    h = harness(confirm=False)
    assert isinstance(await receive(h), Accepted)
    assert h.store.held == []


async def test_a_tokenless_callback_binds_nothing_and_carries_no_url_metadata() -> None:
    h = harness()
    await receive(h, url_id=None)
    (event,) = h.store.ingested
    assert event.url_id is None and h.store.bindings == {}
    assert orjson.loads(event.body)["data"]["metadata"] == {}


async def test_a_url_bound_to_another_task_is_refused_and_nothing_is_stored() -> None:
    h = harness(confirm=True)
    h.store.bindings["url-1"] = "another-task"
    with pytest.raises(UrlBoundToOtherTask):
        await receive(h)
    assert h.store.ingested == [] and h.store.held == [] and h.woken == []


# -- held for confirmation --------------------------------------------------------------------


async def test_a_terminal_callback_to_confirm_is_held_as_a_watch_due_now() -> None:
    h = harness(confirm=True)
    received = await receive(h)
    ((watch, limits),) = h.store.held
    assert received == Held(watch.id)
    assert h.store.ingested == []  # nothing emitted: the API's answer will be
    assert (watch.origin, watch.state, watch.task_id, watch.url_id) == (
        "callback",
        "active",
        TASK,
        "url-1",
    )
    assert (watch.held_status, watch.holds) == ("succeeded", 1)
    assert watch.held_body == orjson.dumps(copy.deepcopy(EVOLINK_COMPLETED))
    assert (watch.next_poll_at, watch.deadline_at) == (h.clock.now, h.clock.now + 300.0)
    assert limits == HoldLimits(per_url=5, total=50)
    assert h.woken == ["watch"]


async def test_a_hold_in_an_attribution_conflict_waits_for_an_operator_not_a_poll() -> None:
    h = harness(confirm=True)
    conflicted = _watch(conflict_url_ids=("url-2",))
    h.store.hold = conflicted
    assert await receive(h) == Held(conflicted.id)
    assert h.woken == []


async def test_a_task_that_already_ended_is_ingested_instead_of_held() -> None:
    """The store holds nothing (the task has its terminal event): a duplicate or superseded."""
    h = harness(confirm=True, hold=None, outcome="superseded")
    received = await receive(h)
    assert len(h.store.held) == 1
    assert received == Superseded(h.store.ingested[0].event_id)


@pytest.mark.parametrize(("scope", "refusal"), [("url", TooManyHeldForUrl), ("total", HoldsFull)])
async def test_a_hold_beyond_the_limits_is_refused_and_nothing_is_stored(
    scope: str, refusal: type[Exception]
) -> None:
    h = harness(confirm=True, hold=HoldRefused(scope))
    with pytest.raises(refusal):
        await receive(h)
    assert h.store.ingested == [] and h.woken == []


async def test_unconfirmed_progress_is_forwarded_without_its_outputs() -> None:
    """Anyone holding a URL could forge a "processing" with links of their choosing."""
    h = harness(confirm=True)
    received = await receive(h, status="processing")
    (event,) = h.store.ingested
    assert isinstance(received, Accepted) and h.store.held == []
    assert orjson.loads(event.body)["data"]["outputs"] == []


async def test_progress_keeps_its_outputs_when_nothing_is_confirmed() -> None:
    h = harness(confirm=False)
    await receive(h, status="processing")
    (event,) = h.store.ingested
    assert [o["url"] for o in orjson.loads(event.body)["data"]["outputs"]] == list(
        EVOLINK_COMPLETED["results"]  # type: ignore[call-overload]
    )


# -- helpers ----------------------------------------------------------------------------------


def _watch(**changes: Any) -> Watch:
    values: dict[str, Any] = {
        "id": "wch_held",
        "provider": "evolink",
        "task_id": TASK,
        "origin": "callback",
        "state": "active",
        "metadata": {},
        "created_at": 0.0,
        "updated_at": 0.0,
        "deadline_at": 300.0,
        "next_poll_at": 0.0,
        **changes,
    }
    return Watch(**values)
