"""Watches through real HTTP: a relay polls emulated provider APIs; subscribers get the events.

Each provider's status API is the loopback emulator of ``tests/provider_emulators.py`` (tasks
that move from queued to running to done, 429s with Retry-After, 5xx, hangs); the relay is a
real uvicorn server with its base URLs pointing there and short back-off delays; subscribers
are real servers that verify every delivery.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.clock import rfc3339
from service.providers.apiframe import apiframe_signature
from tests.conftest import ADMIN_TOKEN, RelayServer
from tests.provider_emulators import Fault, ProviderEmulator
from tests.subscriber_server import Receipt, SubscriberServer
from tests.test_providers import VALIDATOR

#: Fast polls for tests: 0.05 s first, doubling, at most 0.2 s; 0.5 s per status request.
FAST = {"watch_backoff": (0.05, 0.2), "provider_timeout": 0.5}
SLOW_TIMELINE = ((0.0, "queued"), (1.5, "running"), (2.2, "succeeded"))


@pytest.fixture
def sinks() -> Iterator[Callable[..., SubscriberServer]]:
    started: list[SubscriberServer] = []

    def start(**kwargs: Any) -> SubscriberServer:
        server = SubscriberServer(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def subscribe(relay: RelayServer, sink: SubscriberServer) -> None:
    sink.secrets.append(str(relay.add_subscriber(sink.url)["secret"]))


def post_watch(relay: RelayServer, **body: Any) -> dict[str, Any]:
    response = relay.client.post("/v1/watches", json=body, headers=relay.admin)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def get_watch(relay: RelayServer, watch_id: str) -> dict[str, Any]:
    response = relay.client.get(f"/v1/watches/{watch_id}", headers=relay.admin)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def wait_watch(
    relay: RelayServer, watch_id: str, state: str, timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.time() + timeout
    while True:
        watch = get_watch(relay, watch_id)
        if watch["state"] == state or time.time() > deadline:
            assert watch["state"] == state, watch
            return watch
        time.sleep(0.05)


def of_task(receipts: list[Receipt], task_id: str) -> list[Receipt]:
    return [r for r in receipts if r.event.get_subject() == task_id]


def wait_task_events(
    sink: SubscriberServer, task_id: str, count: int, timeout: float = 10.0
) -> list[Receipt]:
    deadline = time.time() + timeout
    while True:
        with sink.lock:
            mine = of_task(list(sink.receipts), task_id)
        if len(mine) >= count or time.time() > deadline:
            assert len(mine) >= count, [r.event.get_type() for r in mine]
            return mine
        time.sleep(0.02)


def types(receipts: list[Receipt]) -> list[str]:
    return [r.event.get_type() for r in receipts]


def settle(
    relay: RelayServer, emulator: ProviderEmulator, sink: SubscriberServer, provider: str
) -> None:
    """Proof that the relay's workers moved on: a task already done, watched now, is polled
    and its event delivered. Whatever the relay would still have polled or emitted for an
    earlier watch was due before it, so "nothing more" checked after this is not a guess about
    how long to wait."""
    marker = emulator.add_task(provider, timeline=((0.0, "succeeded"),))
    post_watch(relay, provider=provider, task_id=marker)
    wait_task_events(sink, marker, 1, timeout=20)


# -- a watch on each provider ---------------------------------------------------------------

FAULTS = {
    "evolink": [Fault(429, retry_after="1")],
    "apiframe": [Fault(503), Fault(502, retry_after="0")],
    "rivya": [Fault(hang=1.5)],  # longer than the relay's 0.5 s timeout
    # A 429 without Retry-After: back-off, and the provider paused for window / rate.
    "reve-art": [Fault(500), Fault(429)],
}


@pytest.mark.parametrize("provider", ["evolink", "apiframe", "rivya", "reve-art"])
def test_watch_emits_each_new_state_until_done(
    provider: str,
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sinks: Callable[..., SubscriberServer],
) -> None:
    """queued -> running -> succeeded at the subscriber, through the provider's faults."""
    relay = relay_factory(**emulator.relay_settings(**FAST))
    sink = sinks()
    subscribe(relay, sink)
    task_id = emulator.add_task(provider, timeline=SLOW_TIMELINE, faults=FAULTS[provider])
    watch = post_watch(relay, provider=provider, task_id=task_id, metadata={"order": "o-1"})
    assert (watch["state"], watch["origin"], watch["polls"]) == ("active", "api", 0)

    expected = ["generation.queued", "generation.running", "generation.succeeded"]
    if provider == "reve-art":
        expected.remove("generation.running")  # Reve Art says "pending" until it is done
    receipts = wait_task_events(sink, task_id, len(expected))
    assert types(receipts) == expected
    assert not sink.errors
    for receipt in receipts:
        VALIDATOR.validate(json.loads(receipt.body))
        assert receipt.event.get_source() == f"/providers/{provider}"
        assert receipt.data["metadata"] == {"order": "o-1"}
    final = receipts[-1].data
    assert final["outputs"] == [
        {"url": f"https://cdn.{provider}.example/{task_id}.png", "media_type": "image"}
    ]
    assert final["raw"]["id"] == task_id  # the status API's own answer
    done = wait_watch(relay, watch["id"], "completed")
    assert done["event_id"] == receipts[-1].event_id and done["next_poll_at"] is None
    assert done["last_status"] == "succeeded"

    settle(relay, emulator, sink, provider)
    hits = emulator.hits_for(task_id)
    # Every scripted fault was met, in order (a hang's answer is recorded when it ends, after
    # the relay gave up on it), and the relay went on polling past it.
    assert [hit.status_code for hit in hits if hit.state is None] == [
        fault.status for fault in FAULTS[provider]
    ]
    if provider == "evolink":  # Retry-After: 1 was honoured
        assert hits[1].at - hits[0].at >= 0.95
    terminal = next(n for n, hit in enumerate(hits) if hit.state == "succeeded")
    assert [hit for hit in hits[terminal + 1 :] if hit.state is not None] == []  # no poll after
    assert len(of_task(sink.receipts, task_id)) == len(expected)  # and nothing more emitted


def test_failed_task_deadline_and_unknown_tasks(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sinks: Callable[..., SubscriberServer],
) -> None:
    """A failure is relayed; the deadline and an unknown task end in generation.failed."""
    relay = relay_factory(**emulator.relay_settings(**FAST))
    sink = sinks()
    subscribe(relay, sink)
    failing = emulator.add_task(
        "rivya",
        timeline=((0.0, "queued"), (0.5, "failed")),
        error={"code": "content_filtered", "message": "Blocked by the safety filter."},
    )
    forever = emulator.add_task("reve-art", timeline=((0.0, "queued"),))
    post_watch(relay, provider="rivya", task_id=failing)
    expiring = post_watch(relay, provider="reve-art", task_id=forever, deadline_seconds=1)
    missing = post_watch(
        relay, provider="evolink", task_id="task-unified-1-gone", metadata={"x": 1}
    )
    malformed = post_watch(relay, provider="evolink", task_id="not-an-evolink-id")

    failed = wait_task_events(sink, failing, 2)
    assert types(failed) == ["generation.queued", "generation.failed"]
    assert failed[-1].data["error"] == {
        "code": "content_filtered",
        "message": "Blocked by the safety filter.",
    }

    expired = wait_task_events(sink, forever, 2)
    assert types(expired) == ["generation.queued", "generation.failed"]
    assert expired[-1].data["error"]["code"] == "watch_deadline_exceeded"
    assert expired[-1].data["raw"]["relay"]["watch_id"] == expiring["id"]
    assert expired[-1].at - expired[0].at < 2.5
    done = wait_watch(relay, expiring["id"], "expired")
    assert done["event_id"] == expired[-1].event_id

    for watch, task_id, code in (
        (missing, "task-unified-1-gone", 404),
        (malformed, "not-an-evolink-id", 400),
    ):
        (receipt,) = wait_task_events(sink, task_id, 1)
        assert receipt.event.get_type() == "generation.failed"
        assert receipt.data["error"]["code"] == "task_not_found"
        assert f"HTTP {code}" in receipt.data["error"]["message"]
        rejected = wait_watch(relay, watch["id"], "rejected")
        assert rejected["polls"] == 3 and rejected["event_id"] == receipt.event_id
    assert of_task(sink.receipts, "task-unified-1-gone")[0].data["metadata"] == {"x": 1}


def test_safety_net_watch_polls_only_without_a_terminal_callback(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sinks: Callable[..., SubscriberServer],
) -> None:
    """poll_after_seconds: a task whose callback came needs no poll; a silent one is polled."""
    answered = emulator.add_task("apiframe", timeline=((0.0, "succeeded"),))
    silent = emulator.add_task("apiframe", timeline=((0.0, "succeeded"),))
    relay = relay_factory(**emulator.relay_settings(**FAST))
    sink = sinks()
    subscribe(relay, sink)
    quiet = post_watch(relay, provider="apiframe", task_id=answered, poll_after_seconds=1)
    loud = post_watch(relay, provider="apiframe", task_id=silent, poll_after_seconds=1)
    assert quiet["next_poll_at"] >= rfc3339(time.time() + 0.5)

    url = relay.mint("apiframe", metadata={"via": "callback"})
    body = json.dumps(
        {"event": "completed", "jobId": answered, "status": "COMPLETED", "progress": 100,
         "result": "https://cdn.apiframe.ai/results/a.png", "model": "midjourney"}
    ).encode()  # fmt: skip
    signature = apiframe_signature(emulator.keys["apiframe"], body)
    response = relay.client.post(url, content=body, headers={"x-webhook-signature": signature})
    assert response.status_code == 200 and response.json()["duplicate"] is False

    done = wait_watch(relay, quiet["id"], "completed")
    assert done["polls"] == 0 and done["event_id"] == response.json()["event_id"]
    assert emulator.hits_for(answered) == []
    (receipt,) = wait_task_events(sink, answered, 1)
    assert receipt.data["metadata"] == {"via": "callback"}

    polled = wait_watch(relay, loud["id"], "completed")
    assert polled["polls"] == 1
    assert types(wait_task_events(sink, silent, 1)) == ["generation.succeeded"]


def test_a_relay_down_while_evolink_gave_up_still_delivers(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sinks: Callable[..., SubscriberServer],
) -> None:
    """Evolink's 1/2/4 s retries hit a dead relay; the durable watch gets the result anyway."""
    from service import simulate

    task_id = emulator.add_task("evolink", timeline=((0.0, "running"), (0.5, "succeeded")))
    settings = emulator.relay_settings(**FAST)
    first = relay_factory(**settings)
    sink = sinks()
    subscribe(first, sink)
    callback_url = first.mint("evolink", metadata={"user_id": "u-42"})
    watch = post_watch(
        first, provider="evolink", task_id=task_id, poll_after_seconds=2, metadata={"job": "j-7"}
    )
    first.stop()  # down: Evolink's callback finds nobody

    callback = simulate.build_callback("evolink", "completed", task_id, first.settings)
    out = io.StringIO()
    delivered = simulate.send(callback, callback_url, (0.1, 0.2, 0.4), timeout=1, out=out)
    assert not delivered and "gave up after 4 attempts" in out.getvalue()
    assert out.getvalue().count("ConnectError") == 4

    second = relay_factory(**settings)  # the same database: the watch survived
    assert get_watch(second, watch["id"])["state"] == "active"
    (receipt,) = wait_task_events(sink, task_id, 1, timeout=10)
    assert receipt.event.get_type() == "generation.succeeded"
    assert receipt.data["metadata"] == {"job": "j-7"}
    assert receipt.data["outputs"][0]["url"] == f"https://cdn.evolink.example/{task_id}.png"
    assert wait_watch(second, watch["id"], "completed")["polls"] == 1
    settle(second, emulator, sink, "evolink")
    assert len(of_task(sink.receipts, task_id)) == 1


# -- the admin API and the CLI ----------------------------------------------------------------


def test_watch_api_answers_and_errors(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer]
) -> None:
    """Registration validates, lists page, cancel ends a watch; every error is 4xx JSON."""
    settings = emulator.relay_settings(**FAST)
    settings.pop("rivya_api_key")
    relay = relay_factory(**settings)
    admin = relay.admin

    def refused(method: str, path: str, status: int, code: str, **kwargs: Any) -> None:
        response = relay.client.request(method, path, headers=admin, **kwargs)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"]

    base = {"provider": "reve-art", "task_id": "img_1"}
    for body, status, code in [
        ({"task_id": "x"}, 400, "invalid_provider"),
        ({"provider": "acme", "task_id": "x"}, 404, "unknown_provider"),
        ({"provider": "rivya", "task_id": "x"}, 422, "provider_not_configured"),
        ({"provider": "reve-art"}, 400, "invalid_task_id"),
        ({**base, "task_id": "  "}, 400, "invalid_task_id"),
        ({**base, "task_id": "x" * 513}, 400, "invalid_task_id"),
        ({**base, "metadata": [1]}, 400, "invalid_metadata"),
        ({**base, "deadline_seconds": 0}, 400, "invalid_deadline"),
        ({**base, "deadline_seconds": "1h"}, 400, "invalid_deadline"),
        ({**base, "deadline_seconds": True}, 400, "invalid_deadline"),
        ({**base, "poll_after_seconds": -1}, 400, "invalid_poll_after"),
        ({**base, "deadline_seconds": 10, "poll_after_seconds": 11}, 400, "invalid_poll_after"),
        ({**base, "colour": "red"}, 400, "invalid_watch"),
    ]:
        refused("POST", "/v1/watches", status, code, json=body)
    refused("POST", "/v1/watches", 400, "invalid_json", content=b"[")
    refused("GET", "/v1/watches?state=sleeping", 400, "invalid_query")
    refused("GET", "/v1/watches?cursor=forged", 400, "invalid_cursor")
    refused("GET", "/v1/watches/wch_unknown", 404, "not_found")
    refused("DELETE", "/v1/watches/wch_unknown", 404, "not_found")
    refused("PUT", "/v1/watches", 405, "method_not_allowed")
    refused("POST", "/v1/callback-urls", 400, "no_callbacks", json={"provider": "reve-art"})
    for method, path in [("POST", "/v1/watches"), ("GET", "/v1/watches"),
                         ("GET", "/v1/watches/w"), ("DELETE", "/v1/watches/w")]:  # fmt: skip
        response = relay.client.request(method, path, json=base)
        assert response.status_code == 401

    first = post_watch(relay, **base, poll_after_seconds=3600)
    refused("POST", "/v1/watches", 409, "watch_exists", json=base)
    ids = [first["id"]]
    for n in range(2, 5):
        ids.append(
            post_watch(relay, provider="apiframe", task_id=f"job-{n}", deadline_seconds=60)["id"]
        )
    page = relay.client.get("/v1/watches?limit=2", headers=admin).json()
    assert [w["id"] for w in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    rest = relay.client.get(f"/v1/watches?limit=2&cursor={page['next_cursor']}", headers=admin)
    assert [w["id"] for w in rest.json()["items"]] == ids[::-1][2:]
    assert rest.json()["next_cursor"] is None
    only = relay.client.get("/v1/watches?provider=reve-art", headers=admin).json()["items"]
    assert [w["id"] for w in only] == [first["id"]]

    canceled = relay.client.delete(f"/v1/watches/{first['id']}", headers=admin)
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    again = relay.client.delete(f"/v1/watches/{first['id']}", headers=admin)
    assert again.status_code == 200  # cancelling twice is harmless
    assert post_watch(relay, **base)["id"] != first["id"]  # the task may be watched anew
    listed = relay.client.get("/v1/watches?state=canceled", headers=admin).json()["items"]
    assert [w["id"] for w in listed] == [first["id"]]


def test_delete_of_a_finished_watch_is_a_conflict(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer]
) -> None:
    task_id = emulator.add_task("rivya", timeline=((0.0, "succeeded"),))
    relay = relay_factory(**emulator.relay_settings(**FAST))
    watch = post_watch(relay, provider="rivya", task_id=task_id)
    wait_watch(relay, watch["id"], "completed")
    response = relay.client.delete(f"/v1/watches/{watch['id']}", headers=relay.admin)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "watch_not_active"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )


def test_cli_watch_list_and_cancel(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sinks: Callable[..., SubscriberServer],
    tmp_path: Path,
) -> None:
    """`relay watch` registers in the store; the running relay polls it; `relay watches`."""
    relay = relay_factory(**emulator.relay_settings(**FAST))
    sink = sinks()
    subscribe(relay, sink)
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": relay.settings.database_url,
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "RELAY_SECRET_KEY": "test-signing-key",
        "RELAY_REVE_ART_BASE_URL": emulator.url,
        "RELAY_REVE_ART_API_KEY": emulator.keys["reve-art"],
        "RELAY_LOG_LEVEL": "warning",
    }
    # Queued until the relay has relayed "queued", however long the CLI process takes to start
    # and register the watch: then done.
    task_id = emulator.add_task("reve-art", timeline=((0.0, "queued"),))
    made = _cli("watch", "reve-art", task_id, "--meta", "user=u-9", "--deadline", "1h", env=env)
    assert made.returncode == 0, made.stderr
    watch = json.loads(made.stdout)
    assert (watch["provider"], watch["task_id"], watch["metadata"]) == (
        "reve-art",
        task_id,
        {"user": "u-9"},
    )
    wait_task_events(sink, task_id, 1, timeout=20)
    with emulator.lock:
        emulator.tasks[("reve-art", task_id)].timeline = ((0.0, "succeeded"),)
    receipts = wait_task_events(sink, task_id, 2, timeout=20)
    assert types(receipts) == ["generation.queued", "generation.succeeded"]
    assert receipts[-1].data["metadata"] == {"user": "u-9"}
    wait_watch(relay, watch["id"], "completed")

    spare = _cli("watch", "reve-art", "img_never", "--poll-after", "1h", env=env)
    spare_id = json.loads(spare.stdout)["id"]
    listed = _cli("watches", "list", env=env)
    assert listed.returncode == 0 and watch["id"] in listed.stdout and spare_id in listed.stdout
    assert "completed" in listed.stdout
    canceled = _cli("watches", "cancel", spare_id, env=env)
    assert canceled.returncode == 0 and spare_id in canceled.stdout
    twice = _cli("watches", "cancel", watch["id"], env=env)
    assert twice.returncode == 2 and "watch_not_active" in twice.stderr
    unconfigured = _cli("watch", "rivya", "task_1", env=env)
    assert unconfigured.returncode == 2 and "RELAY_RIVYA_API_KEY" in unconfigured.stderr
    assert get_watch(relay, spare_id)["state"] == "canceled"


@pytest.mark.postgres
def test_two_replicas_on_postgresql_poll_a_watch_once_at_a_time(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sinks: Callable[..., SubscriberServer],
) -> None:
    """Replicas share the watch: its events arrive once, its polls never overlap."""
    from tests.test_store_contract import fresh_schema

    with fresh_schema() as url:
        settings = emulator.relay_settings(database_url=url, **FAST)
        replicas = [relay_factory(**settings) for _ in range(2)]
        try:
            sink = sinks()
            subscribe(replicas[0], sink)
            task_id = emulator.add_task(
                "rivya", timeline=((0.0, "queued"), (0.8, "running"), (1.4, "succeeded"))
            )
            watch = post_watch(replicas[1], provider="rivya", task_id=task_id)
            receipts = wait_task_events(sink, task_id, 3)
            assert types(receipts) == [
                "generation.queued",
                "generation.running",
                "generation.succeeded",
            ]
            done = wait_watch(replicas[0], watch["id"], "completed")
            hits = emulator.hits_for(task_id)
            assert done["polls"] == len(hits)  # every request was one recorded poll
            gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(hits)]
            assert min(gaps) >= 0.04  # the back-off holds across replicas: no double polls
            settle(replicas[1], emulator, sink, "rivya")
            assert len(of_task(sink.receipts, task_id)) == 3
            assert len(emulator.hits_for(task_id)) == len(hits)  # no poll after the last
        finally:
            for replica in replicas:  # before the schema goes
                replica.stop()


# -- hostile status answers -----------------------------------------------------------------


def test_hostile_status_answers_are_kept_verbatim_or_retried(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sinks: Callable[..., SubscriberServer],
) -> None:
    """A status answer is parsed as strictly as a callback: an integer past 64 bits is kept
    digit for digit in ``data.raw``; NaN, lone surrogates and nesting past the parser's depth
    are "not JSON", and the watch keeps polling instead of failing."""
    relay = relay_factory(**emulator.relay_settings(**FAST))
    sink = sinks()
    subscribe(relay, sink)
    done = ((0.0, "succeeded"),)
    huge = "123456789012345678901234567890"
    big_task = emulator.add_task("reve-art", timeline=done, extra=huge)
    refused = {
        name: emulator.add_task("reve-art", timeline=done, extra=extra)
        for name, extra in {
            "nan": "NaN",
            "surrogate": '"\\ud800"',
            "deep": "[" * 5000 + "]" * 5000,
        }.items()
    }
    big_watch = post_watch(relay, provider="reve-art", task_id=big_task)
    watches = {
        name: post_watch(relay, provider="reve-art", task_id=task) for name, task in refused.items()
    }

    (receipt,) = wait_task_events(sink, big_task, 1)
    assert receipt.event.get_type() == "generation.succeeded"
    assert f'"extra":{huge}'.encode() in receipt.body.replace(b" ", b"")
    assert wait_watch(relay, big_watch["id"], "completed")["event_id"] == receipt.event_id

    deadline = time.time() + 10
    while True:
        shown = {name: get_watch(relay, watch["id"]) for name, watch in watches.items()}
        if all(w["polls"] >= 2 for w in shown.values()) or time.time() > deadline:
            break
        time.sleep(0.05)
    for name, watch in shown.items():
        assert watch["state"] == "active", (name, watch)
        assert watch["polls"] >= 2 and watch["last_error"] == "the answer is not JSON", (
            name,
            watch,
        )
        assert not of_task(sink.receipts, refused[name])


def test_each_poll_is_one_relay_line_and_httpx_logs_no_urls(
    emulator: ProviderEmulator, tmp_path: Path
) -> None:
    """A `relay serve` process logs one `watch_polled` line per answered poll (watch, task,
    outcome, latency); httpx's own line with the full status URL and no watch is gone."""
    import httpx

    from tests.relay_process import RelayProcess
    from tests.reliability import free_port

    relay = RelayProcess(
        tmp_path,
        free_port(),
        RELAY_REVE_ART_BASE_URL=emulator.url,
        RELAY_REVE_ART_API_KEY=emulator.keys["reve-art"],
        RELAY_WATCH_BACKOFF="0.05,0.2",
        RELAY_LOG_LEVEL="info",
        RELAY_LOG_FORMAT="json",
    )
    relay.log_path = tmp_path / "relay.log"
    relay.start()
    try:
        task_id = emulator.add_task("reve-art")
        created = httpx.post(
            f"{relay.base}/v1/watches",
            json={"provider": "reve-art", "task_id": task_id},
            headers=relay.admin,
            timeout=10,
        ).json()
        deadline = time.time() + 15
        while time.time() < deadline:
            shown = httpx.get(
                f"{relay.base}/v1/watches/{created['id']}", headers=relay.admin, timeout=10
            ).json()
            if shown["state"] != "active":
                break
            time.sleep(0.05)
        assert shown["state"] == "completed", shown
    finally:
        relay.stop()
    text = relay.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    polled = [line for line in lines if line.get("event") == "watch_polled"]
    assert len(polled) == shown["polls"] == len(emulator.hits_for(task_id)) >= 2
    for line in polled:
        assert (line["watch_id"], line["provider"], line["task_id"]) == (
            created["id"],
            "reve-art",
            task_id,
        )
        assert line["status_code"] == 200 and line["latency_ms"] >= 0 and line["outcome"]
    assert "HTTP Request" not in text
    assert f"/v1/reve-image/status/{task_id}" not in text
