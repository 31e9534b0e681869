"""One bad callback, or one bad answer from a subscriber, harms nobody else, on both stores.

PostgreSQL cannot store some things SQLite takes (a NUL in text, an index entry over ~2.7 KB),
and its store sends the statements of one loop iteration together. So intake refuses what no
store should hold before any store sees it, the stores agree, and whatever still fails fails
alone (``tests/test_store_contract.py`` covers the store itself).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from service import metrics
from service.delivery import Attempt, storable_text
from service.providers.base import task_id_problem
from service.store.base import AttemptRecord, Claim
from service.worker import DeliveryWorker
from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.subscriber_server import SubscriberServer
from tests.test_store_contract import fresh_schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def start_relay(
    request: pytest.FixtureRequest, relay_factory: Callable[..., RelayServer]
) -> Iterator[Callable[..., RelayServer]]:
    """Starts a relay on this test's store kind (a fresh SQLite file, or a fresh schema)."""
    if request.param == "sqlite":
        yield relay_factory
        return
    with fresh_schema() as url:
        yield lambda **overrides: relay_factory(database_url=url, **overrides)


def completed(task_id: Any) -> dict[str, Any]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload["id"] = task_id
    return payload


POISON_TASK_IDS = {
    "nul": "x\u0000",
    "control character": "task\u001b[31m",
    "over 256 characters": "t" * 257,
    "10 KB of random characters": base64.b64encode(os.urandom(7_500)).decode(),
    "only dots": "..",
    "one dot": ".",
}


@pytest.mark.parametrize("task_id", POISON_TASK_IDS.values(), ids=POISON_TASK_IDS.keys())
def test_a_task_id_no_store_should_hold_is_refused_on_both_stores(
    start_relay: Callable[..., RelayServer], task_id: str
) -> None:
    relay = start_relay()
    answer = relay.post_callback(relay.mint(), completed(task_id))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_task_id"
    assert relay.events() == []


def test_a_task_id_of_256_characters_is_taken(start_relay: Callable[..., RelayServer]) -> None:
    relay = start_relay()
    answer = relay.post_callback(relay.mint(), completed("t" * 256))
    assert answer.status_code == 200, answer.text
    assert [e["subject"] for e in relay.events()] == ["t" * 256]


def test_a_watch_for_a_task_id_no_store_should_hold_is_refused(
    relay_factory: Callable[..., RelayServer],
) -> None:
    relay = relay_factory(reve_art_api_key="test-key")
    for task_id in POISON_TASK_IDS.values():
        answer = relay.client.post(
            "/v1/watches",
            json={"provider": "reve-art", "task_id": task_id},
            headers=relay.admin,
        )
        assert answer.status_code == 400, (task_id, answer.text)
        assert answer.json()["error"]["code"] == "invalid_task_id"


async def _post_together(urls_and_bodies: list[tuple[str, Any]]) -> list[httpx.Response]:
    """Send every callback at the same instant, each on its own connection."""
    limits = httpx.Limits(max_connections=len(urls_and_bodies))
    async with httpx.AsyncClient(timeout=20, limits=limits) as client:
        return await asyncio.gather(*(client.post(url, json=body) for url, body in urls_and_bodies))


@pytest.mark.parametrize("poison", ["nul", "10 KB of random characters"])
def test_a_poison_callback_sent_with_40_others_harms_none_of_them(
    start_relay: Callable[..., RelayServer], poison: str
) -> None:
    """Every answer matches what was committed: the 40 are 200 and stored, the poison 422."""
    relay = start_relay()
    url = relay.mint(reusable=True)
    normal = [completed(f"task-batch-{n}") for n in range(40)]
    bad = completed(POISON_TASK_IDS[poison])
    for _ in range(3):  # three bursts: a batch has every chance to hold the poison
        answers = asyncio.run(_post_together([(url, body) for body in [*normal, bad]]))
        assert answers[-1].status_code == 422, answers[-1].text
        assert [a.status_code for a in answers[:-1]] == [200] * 40
        normal = [completed(f"{body['id']}-again") for body in normal]
    assert len(relay.events(limit=500)) == 120


def test_a_subscriber_answer_with_nul_bytes_is_recorded_once(
    start_relay: Callable[..., RelayServer],
) -> None:
    """An answer holding NUL and bytes that are not UTF-8 is recorded like any other: each
    delivery succeeds once, and so do those of a healthy subscriber beside it."""
    hostile = SubscriberServer(script=lambda n: (200, 0.0), answer_body=b"ok\x00\xff").start()
    healthy = SubscriberServer().start()
    try:
        relay = start_relay()
        hostile_id = relay.add_subscriber(hostile.url)["id"]
        relay.add_subscriber(healthy.url)
        url = relay.mint(reusable=True)
        for n in range(30):
            assert relay.post_callback(url, completed(f"task-nul-{n}")).status_code == 200
        done = relay.wait_deliveries(60, "succeeded")
        relay.wait_settled()  # each answered and recorded, none pending: none is sent again
        assert len(hostile.receipts) == len(healthy.receipts) == 30
        assert len({r.event_id for r in hostile.receipts}) == 30
        one = relay.delivery(next(d["id"] for d in done if d["subscriber_id"] == hostile_id))
        excerpts = {a["response_excerpt"] for a in one["attempts"]}
        assert excerpts == {"ok\ufffd\ufffd"}
        assert relay.deliveries(status="pending") == []
    finally:
        hostile.stop()
        healthy.stop()


def test_storable_text_keeps_every_store_happy() -> None:
    assert storable_text(b"") is None
    assert storable_text(b"fine") == "fine"
    assert storable_text(b"a\x00b\xffc") == "a\ufffdb\ufffdc"
    assert storable_text(b"x" * 5000) == "x" * 1024
    assert storable_text("quoted \x00 status line", 10) == "quoted \ufffd s"


# -- the worker, when the store refuses one record --------------------------------------------


class _RefusingStore:
    """A store port whose ``record_attempt`` refuses records that carry a response excerpt."""

    def __init__(self) -> None:
        self.recorded: list[AttemptRecord] = []
        self.refused = 0

    async def record_attempt(self, record: AttemptRecord) -> None:
        if record.response_excerpt is not None:
            self.refused += 1
            raise ValueError("this store cannot hold that text")
        self.recorded.append(record)


class _NoDeliverer:
    timeout = 1.0


def _claim() -> Claim:
    return Claim(
        delivery_id="dlv_1",
        event_id="evt_1",
        subscriber_id="sub_1",
        url="http://sub.example/hook",
        body="{}",
        secrets=("whsec_x",),
        cycle_attempts=0,
        trigger="scheduled",
        task_key="evolink/t1",
    )


def _record_errors() -> float:
    return metrics.REGISTRY.get_sample_value("relay_attempt_record_errors_total") or 0.0


def test_a_record_the_store_refuses_is_logged_counted_and_stored_without_the_answer() -> None:
    store = _RefusingStore()
    worker = DeliveryWorker(store, _NoDeliverer(), (1.0,))  # type: ignore[arg-type]
    attempt = Attempt(
        started_at=time.time(), latency_ms=3.0, status_code=200, error=None, response_excerpt="x"
    )
    before = _record_errors()
    asyncio.run(worker._record(_claim(), attempt))
    assert store.refused == 1
    assert _record_errors() == before + 1
    (record,) = store.recorded
    assert (record.outcome, record.status_code, record.response_excerpt) == ("succeeded", 200, None)
    assert "refused" in (record.error or "")


def test_the_task_id_rule() -> None:
    assert task_id_problem("task-unified-1756817821-4x3rx6ny") is None
    assert task_id_problem("t" * 256) is None
    assert task_id_problem(".a.") is None
    assert task_id_problem("t\ud800") == "contains a control character or a lone surrogate"
    assert task_id_problem("t\x85") == "contains a control character or a lone surrogate"
    assert task_id_problem("...") == "is only dots"
    assert task_id_problem("t" * 257) == "is longer than 256 characters"
