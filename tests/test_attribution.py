"""Attribution of confirmed results: whose callback URL a task's events are for.

A callback URL is bound to the first task a callback through it names (unless minted
reusable), and a task whose held callbacks came through two URLs waits for an operator. Store
rules run on both stores; the rest goes through real relays (SQLite file, or PostgreSQL for
two replicas), with Evolink's status API emulated (``tests/provider_emulators.py``).
"""

# ruff: noqa: F811 (pytest fixtures imported from test_store_contract, used as parameters)
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from service.store.base import Store
from tests.conftest import RelayServer
from tests.provider_emulators import Fault, ProviderEmulator
from tests.subscriber_server import SubscriberServer
from tests.test_confirmation_rivya_simulate import forged
from tests.test_store_contract import (  # noqa: F401 (fixtures)
    anyio_backend,
    fresh_schema,
    make_store,
    pg_url,
    store,
    store_kind,
)
from tests.test_store_watches import watch
from tests.test_watches import (
    get_watch,
    of_task,
    post_watch,
    subscribe,
    wait_task_events,
    wait_watch,
)

# -- the store: binding and conflicts -------------------------------------------------------


@pytest.mark.anyio
async def test_store_binds_a_url_once_even_when_callers_race(store: Store) -> None:
    """Of 20 concurrent binds of one URL to different tasks, one wins and all see it."""
    now = time.time()
    await store.create_callback_url("url_once", "evolink", {}, now, now + 60)
    await store.create_callback_url("url_many", "evolink", {}, now, now + 60, reusable=True)
    answers = await asyncio.gather(
        *(store.bind_callback_url("url_once", f"task-{n}") for n in range(20))
    )
    assert len(set(answers)) == 1 and answers[0] in {f"task-{n}" for n in range(20)}
    assert await store.bind_callback_url("url_once", "task-other") == answers[0]
    assert await store.bind_callback_url("url_many", "task-1") is None
    assert await store.bind_callback_url("url_unknown", "task-1") is None


@pytest.mark.anyio
async def test_store_records_a_conflict_and_the_operator_resolves_it(store: Store) -> None:
    """A callback held through a second URL is a conflict: the watch is not claimed until
    resolved; resolving names the URL and makes it due."""
    first = watch("task-c", origin="callback", held_status="succeeded", url_id="url_a")
    held = await store.hold_for_confirmation(first)
    assert held is not None and held.conflict_url_ids == ()
    for url_id in ("url_a", "url_b", "url_b", "url_c"):
        held = await store.hold_for_confirmation(
            watch("task-c", origin="callback", held_status="succeeded", url_id=url_id)
        )
    assert held is not None and held.url_id == "url_a"
    assert held.conflict_url_ids == ("url_b", "url_c")
    assert await store.claim_due_watches(time.time() + 1, 10, 30.0) == []
    resolved = await store.resolve_conflict(held.id, "url_b", time.time())
    assert resolved is not None
    assert (resolved.url_id, resolved.conflict_url_ids, resolved.held_status) == (
        "url_b",
        (),
        None,
    )
    (claimed,) = await store.claim_due_watches(time.time() + 1, 10, 30.0)
    assert claimed.id == held.id


# -- through a real relay -------------------------------------------------------------------

#: Slow polls after the first: the tests decide what the relay sees, not the back-off.
SETTLED = {"watch_backoff": (5.0, 10.0), "provider_timeout": 0.5}
PACED = {"watch_backoff": (1.0, 1.0), "provider_timeout": 0.5}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Settings for a relay on SQLite (the default file) or on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield {}
        return
    with fresh_schema() as url:
        yield {"database_url": url}


def wait_held_watch(relay: RelayServer, watch_id: str, check: Callable[[dict], bool]) -> dict:
    deadline = time.time() + 10
    while True:
        shown = get_watch(relay, watch_id)
        if check(shown) or time.time() > deadline:
            assert check(shown), shown
            return shown
        time.sleep(0.05)


def test_a_url_serves_the_task_it_was_first_used_for(
    relay_factory: Callable[..., RelayServer], database: dict[str, Any]
) -> None:
    """Another task through a used URL is 409 ``url_bound_to_other_task``; a reusable URL
    takes any task."""
    relay = relay_factory(**database)
    try:
        url = relay.mint("evolink", metadata={"user_id": "u-1"})
        first = relay.post_callback(url, forged("task-unified-1-mine", "processing"))
        assert first.status_code == 200, first.text
        again = relay.post_callback(url, forged("task-unified-1-mine", "completed"))
        assert again.status_code == 200, again.text
        other = relay.post_callback(url, forged("task-unified-2-theirs", "completed"))
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "url_bound_to_other_task"
        assert relay.events(task_id="task-unified-2-theirs") == []
        shared = relay.mint("evolink", reusable=True)
        for n in range(3):
            answer = relay.post_callback(shared, forged(f"task-unified-3-{n}", "completed"))
            assert answer.status_code == 200, answer.text
        bad = relay.client.post(
            "/v1/callback-urls",
            json={"provider": "evolink", "reusable": "yes"},
            headers=relay.admin,
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_reusable"
    finally:
        relay.stop()


def _post_at_once(
    start: threading.Barrier, replica: RelayServer, path: str, task: str, codes: dict[str, int]
) -> None:
    start.wait()
    codes[task] = replica.client.post(path, json=forged(task, "processing")).status_code


@pytest.mark.postgres
def test_two_replicas_racing_bind_each_url_to_one_task(
    relay_factory: Callable[..., RelayServer],
) -> None:
    """Two replicas get callbacks for two tasks through the same fresh URL at once: exactly
    one task is taken, through either replica, and the other is refused everywhere."""
    with fresh_schema() as url:
        replicas = [relay_factory(database_url=url) for _ in range(2)]
        try:
            for round_ in range(10):
                minted = replicas[0].mint("evolink")
                path = minted.removeprefix(replicas[0].base_url)
                start = threading.Barrier(2)
                codes: dict[str, int] = {}
                tasks = [f"task-unified-{round_}-a", f"task-unified-{round_}-b"]
                threads = [
                    threading.Thread(target=_post_at_once, args=(start, replica, path, task, codes))
                    for replica, task in zip(replicas, tasks, strict=True)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                assert sorted(codes.values()) == [200, 409], codes
                (winner,) = (task for task, code in codes.items() if code == 200)
                for replica in replicas:
                    for task in tasks:
                        code = replica.client.post(path, json=forged(task, "processing"))
                        assert code.status_code == (200 if task == winner else 409)
        finally:
            for replica in replicas:
                replica.stop()


def test_a_forgers_early_callback_does_not_win_the_result(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    database: dict[str, Any],
) -> None:
    """Forged "completed" through the forger's URL while the task runs, then the genuine one
    through the owner's URL: the result is the owner's, never the forger's."""
    relay = relay_factory(**emulator.relay_settings(**SETTLED, **database))
    try:
        subscribe(relay, sink)
        task_id = emulator.add_task("evolink", timeline=((0.0, "running"), (0.6, "succeeded")))
        attacker = relay.mint("evolink", metadata={"user_id": "ATTACKER"})
        victim = relay.mint("evolink", metadata={"user_id": "victim"})
        held = relay.post_callback(attacker, forged(task_id)).json()
        assert held["held"] is True
        # The API said running: the forgery was judged (and its URL forgotten).
        wait_held_watch(relay, held["watch_id"], lambda w: w["polls"] >= 1)
        while time.time() < emulator.tasks[("evolink", task_id)].created + 0.7:
            time.sleep(0.02)
        genuine = forged(task_id, results=[f"https://cdn.evolink.example/{task_id}.png"])
        answer = relay.post_callback(victim, genuine)
        assert answer.status_code == 200 and answer.json()["held"] is True
        receipts = wait_task_events(sink, task_id, 2)
        assert [r.data["status"] for r in receipts] == ["running", "succeeded"]
        assert receipts[-1].data["metadata"] == {"user_id": "victim"}
        assert all("ATTACKER" not in r.body.decode() for r in receipts)
        assert all("ATTACKER" not in str(e["data"]["metadata"]) for e in relay.events())
    finally:
        relay.stop()


def test_callbacks_through_two_urls_wait_for_the_operator(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    database: dict[str, Any],
) -> None:
    """Two held terminal callbacks for one task through two URLs (the API unreachable
    meanwhile): nothing is emitted, the watch shows the conflict and stops polling; the
    operator's choice is what the event carries."""
    # A poll a second after the last: time to send the second callback before it.
    relay = relay_factory(**emulator.relay_settings(**PACED, **database))
    try:
        subscribe(relay, sink)
        task_id = emulator.add_task(
            "evolink", timeline=((0.0, "succeeded"),), faults=[Fault(503)] * 50
        )
        attacker = relay.mint("evolink", metadata={"user_id": "ATTACKER"})
        victim = relay.mint("evolink", metadata={"user_id": "victim"})
        first = relay.post_callback(attacker, forged(task_id)).json()
        wait_held_watch(relay, first["watch_id"], lambda w: w["polls"] >= 1)
        second = relay.post_callback(victim, forged(task_id)).json()
        assert second["held"] is True and second["watch_id"] == first["watch_id"]
        shown = wait_held_watch(relay, first["watch_id"], lambda w: w["conflict"] is not None)
        assert shown["state"] == "active"
        urls = shown["conflict"]["urls"]
        assert [u["metadata"] for u in urls] == [{"user_id": "ATTACKER"}, {"user_id": "victim"}]
        # Parked: due again by its back-off, yet not polled. A watch made after that moment is
        # polled and ends; the poller, which takes the earliest due first, has passed it.
        due = datetime.fromisoformat(shown["next_poll_at"]).timestamp()
        time.sleep(max(0.0, due - time.time()) + 0.05)
        polls = len(emulator.hits_for(task_id))
        later = emulator.add_task("evolink", timeline=((0.0, "succeeded"),))
        marker = post_watch(relay, provider="evolink", task_id=later, poll_after_seconds=0)
        wait_watch(relay, marker["id"], "completed")
        assert len(emulator.hits_for(task_id)) == polls
        assert of_task(sink.receipts, task_id) == [] and relay.events(task_id=task_id) == []
        listed = relay.client.get(
            "/v1/watches", params={"task_id": task_id}, headers=relay.admin
        ).json()["items"]
        assert listed[0]["conflict"] == shown["conflict"]

        resolve = f"/v1/watches/{first['watch_id']}/resolve"
        wrong = relay.client.post(resolve, json={"url_id": "other"}, headers=relay.admin)
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_url_id"
        with emulator.lock:
            emulator.tasks[("evolink", task_id)].faults.clear()
        chosen = urls[1]["url_id"]
        done = relay.client.post(resolve, json={"url_id": chosen}, headers=relay.admin)
        assert done.status_code == 200, done.text
        assert done.json()["conflict"] is None
        (receipt,) = wait_task_events(sink, task_id, 1)
        assert receipt.data["status"] == "succeeded"
        assert receipt.data["metadata"] == {"user_id": "victim"}
        twice = relay.client.post(resolve, json={"url_id": chosen}, headers=relay.admin)
        assert twice.status_code == 409 and twice.json()["error"]["code"] == "no_conflict"
    finally:
        relay.stop()
