"""A poll that fails in a way nobody foresaw, on SQLite and PostgreSQL alike.

Every failure of a poll is a failed poll: recorded with the back-off, counted, and the deadline
still ends the watch; a task id that cannot form a status URL ends its watch at once. The
store is real (the ``store`` fixture of ``tests/test_store_contract.py``); the provider is a
fake ``StatusClients`` (one that raises) or the real one on ``httpx.MockTransport``.
"""

# ruff: noqa: F811 (pytest fixtures imported from test_store_contract, used as parameters)
from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from starlette.datastructures import Secret

from service import ids
from service.metrics import REGISTRY
from service.provider_api import StatusAnswer, StatusClients
from service.relay import Relay
from service.settings import Settings
from service.store.base import Store
from service.store.watch_model import Watch
from service.watch_service import WatchService
from service.watch_worker import WatchWorker
from tests.test_store_contract import (  # noqa: F401 (fixtures)
    anyio_backend,
    make_store,
    pg_url,
    store,
    store_kind,
)

pytestmark = pytest.mark.anyio
TASK = "task-unified-1756817821-4x3rx6ny"
BACKOFF = (2.0, 60.0)


class Exploding:
    """A ``StatusClients`` whose every fetch raises what ``fetch`` never catches."""

    def __init__(self) -> None:
        self.calls = 0

    async def fetch(self, provider: str, task_id: str) -> StatusAnswer:
        self.calls += 1
        raise RuntimeError("a bug nobody foresaw")

    async def aclose(self) -> None:
        pass


class Running:
    """A ``StatusClients`` for which the task is still running."""

    async def fetch(self, provider: str, task_id: str) -> StatusAnswer:
        body = orjson.dumps({"id": task_id, "status": "processing", "progress": 40})
        return StatusAnswer("ok", 200, orjson.loads(body), body)

    async def aclose(self) -> None:
        pass


def settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {"watch_backoff": BACKOFF, "provider_timeout": 0.5, **changes}
    return Settings(evolink_api_key=Secret("ek"), **values)


def new_watch(
    *, deadline_in: float = 3600.0, held_body: bytes | None = None, task_id: str = TASK
) -> Watch:
    now = time.time()
    return Watch(
        id=ids.new_id("wch"),
        provider="evolink",
        task_id=task_id,
        origin="api" if held_body is None else "callback",
        state="active",
        metadata={},
        created_at=now,
        updated_at=now,
        deadline_at=now + deadline_in,
        next_poll_at=now,
        held_status=None if held_body is None else "succeeded",
        held_body=held_body,
        holds=0 if held_body is None else 1,
    )


async def claimed(store: Store, watch: Watch) -> Watch:
    if watch.held_body is None:
        await store.create_watch(watch)
    else:
        assert await store.hold_for_confirmation(watch) is not None
    (mine,) = await store.claim_due_watches(time.time(), 10, 30.0)
    return mine


def polls_counted(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "relay_watch_polls_total", {"provider": "evolink", "outcome": outcome}
        )
        or 0.0
    )


async def test_an_unexpected_failure_is_a_failed_poll_with_back_off(store: Store) -> None:
    """next_poll_at moves forward by the back-off, doubling; the failure is counted."""
    relay = await Relay.start(settings(), store)
    service = WatchService(relay, Exploding())  # type: ignore[arg-type]
    watch = await claimed(store, new_watch())
    counted = polls_counted("error")

    before = time.time()
    await service.poll(watch)
    first = await store.get_watch(watch.id)
    assert first is not None and first.state == "active"
    assert first.next_poll_at >= before + BACKOFF[0]
    assert first.last_error == "the poll failed (RuntimeError); see the relay's log"
    assert polls_counted("error") == counted + 1

    (again,) = await store.claim_due_watches(first.next_poll_at, 10, 30.0)
    before = time.time()
    await service.poll(again)
    second = await store.get_watch(watch.id)
    assert second is not None and second.state == "active" and second.polls == 2
    assert second.next_poll_at >= before + 2 * BACKOFF[0]
    assert polls_counted("error") == counted + 2


async def test_the_deadline_ends_a_watch_whose_polls_always_fail(store: Store) -> None:
    """Past its deadline, a failing watch expires with a generation.failed event."""
    relay = await Relay.start(settings(), store)
    service = WatchService(relay, Exploding())  # type: ignore[arg-type]
    watch = await claimed(store, new_watch(deadline_in=0.0))
    await service.poll(watch)
    ended = await store.get_watch(watch.id)
    assert ended is not None and ended.state == "expired" and ended.event_id
    event = await store.get_event(ended.event_id)
    assert event is not None and event["type"] == "generation.failed"
    assert event["data"]["error"]["code"] == "watch_deadline_exceeded"


async def test_a_failing_watch_does_not_make_the_worker_spin(store: Store) -> None:
    """The real worker polls a watch that always fails at the back-off's pace, not in a loop."""
    relay = await Relay.start(settings(watch_backoff=(0.4, 1.0)), store)
    clients = Exploding()
    worker = WatchWorker(relay, clients)  # type: ignore[arg-type]
    await store.create_watch(new_watch())
    await worker.start()
    try:
        await asyncio.sleep(1.5)  # polls at about 0, 0.4, 1.2 s
    finally:
        await worker.stop()
    # Before, the watch was claimed again at once: hundreds of polls in this time.
    assert 1 <= clients.calls <= 4, clients.calls


async def test_a_deeply_nested_held_callback_is_judged_without_error(store: Store) -> None:
    """A held callback nested 1,010 levels (orjson accepts it) is compared, not a crash."""
    relay = await Relay.start(settings(), store)
    service = WatchService(relay, Running())  # type: ignore[arg-type]
    deep = b'{"id": "%s", "status": "completed", "x": %s}' % (
        TASK.encode(),
        b"[" * 1010 + b"]" * 1010,
    )
    watch = await claimed(store, new_watch(held_body=deep))
    counted = polls_counted("error")
    record = await service.poll(watch)
    assert record.state == "active" and record.last_status == "running"
    assert record.last_error is None and polls_counted("error") == counted


async def test_a_task_id_that_cannot_form_a_url_ends_its_watch_at_once(store: Store) -> None:
    """7,300 euro signs make a status URL past httpx's limit: rejected, nothing requested."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    relay = await Relay.start(settings(), store)
    clients = StatusClients(relay.settings, transport=httpx.MockTransport(handler))
    service = WatchService(relay, clients)
    try:
        watch = await claimed(store, new_watch(task_id="\u20ac" * 7300))
        record = await service.poll(watch)
    finally:
        await service.aclose()
    assert sent == []
    ended = await store.get_watch(watch.id)
    assert ended is not None and ended.state == "rejected" and ended.event_id
    assert ended.last_error is not None and ended.last_error.startswith(
        "the task id cannot form a status URL"
    )
    event = await store.get_event(ended.event_id)
    assert event is not None and event["data"]["error"]["code"] == "invalid_task_id"
    assert record.state == "rejected"
