"""Forged Evolink callbacks through real HTTP: what a flood of them costs, and that none gets out.

A real relay (SQLite file or PostgreSQL schema) confirms terminal Evolink callbacks with the
loopback emulator of ``tests/provider_emulators.py``; the forger posts through callback URLs of
its own, for tasks the API does not know (404) or while the API answers 503. Counted from the
outside: the relay's answers, the requests the emulator saw, the events stored and delivered.
"""

# ruff: noqa: F811 (pytest fixtures imported from other test modules, used as parameters)
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import RelayServer
from tests.provider_emulators import Fault, ProviderEmulator
from tests.subscriber_server import SubscriberServer
from tests.test_attribution import database  # noqa: F401 (a fixture)
from tests.test_confirmation_rivya_simulate import forged
from tests.test_health_metrics import scrape, value
from tests.test_watches import get_watch, post_watch, subscribe, wait_watch

#: The bounds the tests run with: a few holds per URL, a few more in all, short-lived.
PER_URL, TOTAL = 20, 30
FLOOD = 200
#: Polls 0.2 s apart, then 0.4 s; a hold waits 4 s for confirmation. The bounds count active
#: holds, and one that ended frees its place, so each flood is sent with the emulator's gate
#: closed: a hold ends only once a poll is answered (its third 404, or any answer past its
#: deadline), and its first poll waits at the gate, so every hold stays active until the last
#: forged callback was answered, however slowly a loaded machine sends them. The poll timeout
#: only has to outlast the flood.
HOLD_SETTINGS = {
    "watch_backoff": (0.2, 0.4),
    "provider_timeout": 60.0,
    "holds_per_url": PER_URL,
    "holds_max": TOTAL,
    "hold_deadline": 4.0,
}
#: For holds that end on their third 404, long before a deadline.
NO_DEADLINE = {**HOLD_SETTINGS, "hold_deadline": 600.0}


def forged_ids(prefix: str, count: int) -> list[str]:
    return [f"task-unified-1700000000-{prefix}{n:04d}" for n in range(count)]


def evolink_hits(emulator: ProviderEmulator, task_ids: list[str]) -> int:
    wanted = set(task_ids)
    with emulator.lock:
        return sum(1 for hit in emulator.hits if hit.task_id in wanted)


def watches(relay: RelayServer, **params: Any) -> list[dict[str, Any]]:
    response = relay.client.get("/v1/watches", params={"limit": 500, **params}, headers=relay.admin)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def suspect_of(shown: dict[str, Any]) -> dict[str, Any]:
    """A watch's ``suspect`` without the operator's decision (none yet)."""
    suspect = dict(shown["suspect"])
    assert (suspect.pop("decision"), suspect.pop("decided_by"), suspect.pop("decided_at")) == (
        None,
        None,
        None,
    )
    return suspect


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, what
        time.sleep(0.05)


def assert_refused(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert answer.headers["retry-after"] == "60"


def test_a_flood_for_unknown_tasks_is_bounded_and_ends_suspect(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    database: dict[str, Any],
) -> None:
    """200 forged ``completed`` through one URL, for tasks the API does not know (404): 20
    are held, the rest refused 429; each hold costs 3 requests, ends rejected and suspect,
    and nothing is emitted (the old relay held all 200: 600 requests, 200 undeliverable
    holds). The API answers nothing until the flood is over: the 20 holds are all active
    throughout it, which is what the bound counts."""
    relay = relay_factory(**emulator.relay_settings(**NO_DEADLINE, **database))
    subscribe(relay, sink)
    before = scrape(relay)
    url = relay.mint("evolink", reusable=True, metadata={"who": "forger"})
    task_ids = forged_ids("unknown", FLOOD)
    with emulator.gate_closed():
        answers = [relay.post_callback(url, forged(task)) for task in task_ids]
        assert evolink_hits(emulator, task_ids) == 0  # no hold has had an answer yet
    held = [a for a in answers if a.status_code == 200]
    assert len(held) == PER_URL and all(a.json()["held"] for a in held)
    for answer in answers[PER_URL:]:
        assert_refused(answer, 429, "too_many_held_callbacks")

    wait_for(lambda: len(watches(relay, state="rejected")) == PER_URL, 20, "holds not rejected")
    assert evolink_hits(emulator, task_ids) == 3 * PER_URL
    for shown in watches(relay, suspect="true"):
        assert shown["origin"] == "callback" and shown["event_id"] is None
        assert suspect_of(shown) == {"reason": "task_not_found", "callback_status": "succeeded"}
        assert shown["held_status"] == "succeeded"  # what was claimed, for the operator
    assert len(watches(relay, suspect="true")) == PER_URL
    assert relay.events() == [] and sink.receipts == []
    after = scrape(relay)
    counted = value(
        after, "relay_suspect_callbacks_total", provider="evolink", reason="task_not_found"
    ) - value(before, "relay_suspect_callbacks_total", provider="evolink", reason="task_not_found")
    refused = value(
        after, "relay_held_callbacks_refused_total", provider="evolink", scope="url"
    ) - value(before, "relay_held_callbacks_refused_total", provider="evolink", scope="url")
    assert (counted, refused) == (PER_URL, FLOOD - PER_URL)
    # The holds ended: the URL may hold again.
    assert relay.post_callback(url, forged(task_ids[-1])).json()["held"] is True


def test_a_flood_while_the_api_fails_is_bounded_and_emits_nothing_at_the_deadline(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    database: dict[str, Any],
) -> None:
    """The API answers 503: 20 holds through one URL, 10 more through another, then 503 for
    the relay's bound; each hold polls with its back-off only until its 4 s deadline, then
    ends expired and suspect, without the ``generation.failed`` the old relay emitted. (The
    API answers nothing until the flood is over: were it sent slower than the deadline, the
    holds would expire at their first answer, after the flood, still within the bound.)"""
    relay = relay_factory(**emulator.relay_settings(**HOLD_SETTINGS, **database))
    subscribe(relay, sink)
    first, second = (relay.mint("evolink", reusable=True) for _ in range(2))
    task_ids = forged_ids("down", 50)
    for task in task_ids:
        emulator.add_task("evolink", task, always=Fault(503))
    with emulator.gate_closed():
        answers = [relay.post_callback(first, forged(task)) for task in task_ids[:25]]
        answers += [relay.post_callback(second, forged(task)) for task in task_ids[25:]]
    assert [a.status_code for a in answers[:PER_URL]] == [200] * PER_URL
    for answer in answers[PER_URL:25]:
        assert_refused(answer, 429, "too_many_held_callbacks")
    assert [a.status_code for a in answers[25:35]] == [200] * (TOTAL - PER_URL)
    for answer in answers[35:]:
        assert_refused(answer, 503, "held_callbacks_full")

    wait_for(lambda: len(watches(relay, state="expired")) == TOTAL, 15, "holds not expired")
    requests = evolink_hits(emulator, task_ids)
    # Polls at 0, 0.2, 0.6, 1.0 ... 3.8 and the deadline: at most 12 per hold, far from the
    # old relay's 24 hours of polls.
    assert TOTAL <= requests <= 12 * TOTAL, requests
    for shown in watches(relay):
        assert (shown["state"], shown["event_id"]) == ("expired", None)
        claimed = {"reason": "deadline_unconfirmed", "callback_status": "succeeded"}
        assert suspect_of(shown) == claimed
    # The polls stopped with the holds: a watch made now is polled and ends, and none of them
    # was polled meanwhile (each was due before it).
    later = emulator.add_task("evolink", timeline=((0.0, "succeeded"),))
    marker = post_watch(relay, provider="evolink", task_id=later, poll_after_seconds=0)
    wait_watch(relay, marker["id"], "completed")
    assert evolink_hits(emulator, task_ids) == requests
    relay.wait_settled()  # the marker's event delivered: the sink has all it will get
    assert [e["data"]["task_id"] for e in relay.events()] == [later]
    assert [r.data["task_id"] for r in sink.receipts] == [later]


def test_a_repost_joins_the_hold_without_restarting_it(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer], database: dict[str, Any]
) -> None:
    """Reposting a forged callback for an unknown task every 50 ms: the same hold, polled on
    its own back-off, rejected after its third 404 (the old relay restarted the not-found
    count at every repost and never rejected it)."""
    relay = relay_factory(
        **emulator.relay_settings(watch_backoff=(0.3, 1.0), provider_timeout=0.5, **database)
    )
    url = relay.mint("evolink")
    task_id = "task-unified-1700000000-reposted"
    watch_id = relay.post_callback(url, forged(task_id)).json()["watch_id"]
    reposts = 0
    deadline = time.time() + 8
    while get_watch(relay, watch_id)["state"] == "active" and time.time() < deadline:
        answer = relay.post_callback(url, forged(task_id)).json()
        reposts += answer.get("watch_id") == watch_id
        time.sleep(0.05)
    shown = wait_watch(relay, watch_id, "rejected", timeout=0.1)
    assert shown["polls"] == 3 and reposts >= 5
    assert suspect_of(shown) == {"reason": "task_not_found", "callback_status": "succeeded"}


def test_a_slow_provider_does_not_delay_another_providers_polls(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer], database: dict[str, Any]
) -> None:
    """64 Evolink watches whose API hangs until the 3 s timeout, then a Reve Art watch: it is
    polled when due, not once Evolink's polls give their slots back (the old relay: 6 s)."""
    relay = relay_factory(
        **emulator.relay_settings(watch_backoff=(0.5, 10.0), provider_timeout=3.0, **database)
    )
    for _ in range(64):
        task = emulator.add_task("evolink", always=Fault(hang=5.0))
        post_watch(relay, provider="evolink", task_id=task)
    wait_for(lambda: len(emulator.arrivals) >= 16, 5, "Evolink polls did not start")
    genuine = emulator.add_task("reve-art", timeline=((0.0, "succeeded"),))
    due = time.time() + 0.5
    post_watch(relay, provider="reve-art", task_id=genuine)
    wait_for(lambda: bool(emulator.hits_for(genuine)), 15, "the Reve Art watch was not polled")
    delay = emulator.hits_for(genuine)[0].at - due
    assert delay < 2.0, f"the Reve Art watch was polled {delay:.1f} s after it was due"
    with emulator.lock:
        hanging = sum(1 for provider, _ in emulator.arrivals if provider == "evolink")
    assert hanging >= 16  # Evolink kept polling meanwhile, within its share


def test_a_watch_canceled_while_its_poll_is_in_flight_emits_nothing(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    database: dict[str, Any],
    capfd: pytest.CaptureFixture[str],
) -> None:
    relay = relay_factory(
        **emulator.relay_settings(watch_backoff=(0.1, 1.0), provider_timeout=3.0, **database)
    )
    subscribe(relay, sink)
    task_id = emulator.add_task("reve-art", timeline=((0.0, "succeeded"),))
    done = {"id": task_id, "status": "completed", "url": f"https://cdn.example/{task_id}.png"}
    json_type = {"content-type": "application/json"}
    slow = Fault(200, hang=1.0, content=json.dumps(done).encode(), headers=json_type)
    emulator.tasks[("reve-art", task_id)].faults.append(slow)
    watch = post_watch(relay, provider="reve-art", task_id=task_id)
    wait_for(lambda: ("reve-art", task_id) in emulator.arrivals, 5, "the poll did not start")
    canceled = relay.client.delete(f"/v1/watches/{watch['id']}", headers=relay.admin)
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    wait_for(lambda: bool(emulator.hits_for(task_id)), 15, "the poll was not answered")
    logged = ""

    def discarded() -> bool:
        nonlocal logged
        logged += capfd.readouterr().out
        return "watch_poll_discarded" in logged

    # (15 s: the line leaves the relay's loop with its iteration's others, and a busy
    # machine may take a while to get there.)
    wait_for(discarded, 15, "the relay did not discard the poll of a canceled watch")
    assert relay.events(task_id=task_id) == []
    shown = get_watch(relay, watch["id"])
    assert (shown["state"], shown["event_id"]) == ("canceled", None)
    relay.wait_settled()  # nothing stored, nothing pending: nothing can arrive
    assert sink.receipts == []
