"""Confirmation of Evolink callbacks, Rivya webhooks and ``relay simulate``, through real HTTP.

Evolink's status API is the loopback emulator of ``tests/provider_emulators.py``; callbacks go
to a real relay; subscribers are real servers; the simulator runs as the ``relay`` command.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.datastructures import Secret
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.signing import new_secret, sign
from tests.conftest import EVOLINK_COMPLETED, RelayServer, ServerThread, bound_socket
from tests.provider_emulators import Fault, ProviderEmulator
from tests.subscriber_server import SubscriberServer
from tests.test_watches import (
    FAST,
    get_watch,
    of_task,
    subscribe,
    types,
    wait_task_events,
    wait_watch,
)

#: As FAST, but a poll the emulator holds back (a gated task) is waited for, not retried.
UNHURRIED = {**FAST, "provider_timeout": 5.0}


def forged(task_id: str, status: str = "completed", **changes: Any) -> dict[str, Any]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload.update(id=task_id, status=status, **changes)
    return payload


# -- confirmation of unsigned (Evolink) callbacks -------------------------------------------


def test_forged_completed_is_refused_and_the_real_result_follows(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A forged "completed" is held; the API says running: that is emitted, never the forgery,
    and without the URL's metadata (a contradicted callback names nobody)."""
    relay = relay_factory(**emulator.relay_settings(**UNHURRIED))
    subscribe(relay, sink)
    task_id = emulator.add_task(
        "evolink", timeline=((0.0, "running"), (1.0, "succeeded")), gated=True
    )
    url = relay.mint("evolink", metadata={"user_id": "u-42"})
    evil = "https://evil.example/malware.mp4"
    answer = relay.post_callback(url, forged(task_id, results=[evil]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["received"] is True and body["held"] is True and body["event_id"] is None
    held = get_watch(relay, body["watch_id"])
    # The API has not answered yet (the emulator holds the poll): the watch keeps the claim.
    assert (held["state"], held["origin"], held["held_status"]) == (
        "active",
        "callback",
        "succeeded",
    )
    emulator.open("evolink", task_id)

    receipts = wait_task_events(sink, task_id, 2)
    assert types(receipts) == ["generation.running", "generation.succeeded"]
    for receipt in receipts:
        assert evil not in receipt.body.decode()
        assert receipt.data["metadata"] == {}  # not the forger's URL's
    assert receipts[-1].data["outputs"][0]["url"] == f"https://cdn.evolink.example/{task_id}.png"
    assert receipts[-1].data["raw"]["id"] == task_id and "evil" not in json.dumps(
        receipts[-1].data["raw"]
    )
    wait_watch(relay, body["watch_id"], "completed")
    # Evolink retries the forgery (or the real callback arrives): a duplicate, nothing new.
    again = relay.post_callback(url, forged(task_id, results=[evil]))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    stored = relay.events(task_id=task_id)
    assert len(stored) == 2 and all(evil not in json.dumps(event) for event in stored)
    relay.wait_settled()  # each stored event's delivery answered: the sink has all it will get
    assert len(of_task(sink.receipts, task_id)) == 2
    logged = capfd.readouterr().out
    assert "suspect_callback" in logged and "callback_status=succeeded" in logged


def test_genuine_callback_is_confirmed_and_emitted_once(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer], sink: SubscriberServer
) -> None:
    relay = relay_factory(**emulator.relay_settings(**UNHURRIED))
    subscribe(relay, sink)
    task_id = emulator.add_task("evolink", timeline=((0.0, "succeeded"),), gated=True)
    url = relay.mint("evolink", metadata={"order": 7})
    real = {**forged(task_id), "results": [f"https://cdn.evolink.example/{task_id}.png"]}
    first = relay.post_callback(url, real).json()
    assert first["held"] is True
    # Evolink's own retry of it, before the API has answered (the emulator holds the poll),
    # joins the same hold.
    retry = relay.post_callback(url, real).json()
    assert retry["held"] is True and retry["watch_id"] == first["watch_id"], retry
    emulator.open("evolink", task_id)
    (receipt,) = wait_task_events(sink, task_id, 1)
    assert receipt.event.get_type() == "generation.succeeded"
    assert receipt.data["metadata"] == {"order": 7}
    assert receipt.data["raw"]["object"] == "image.generation.task"  # the API's answer
    assert len(emulator.hits_for(task_id)) == 1  # one poll confirmed both
    # Once confirmed, a retry is a duplicate.
    again = relay.post_callback(url, real).json()
    assert again["duplicate"] is True, again
    assert len(relay.events(task_id=task_id)) == 1
    relay.wait_settled()
    assert len(of_task(sink.receipts, task_id)) == 1
    (watch,) = relay.client.get(
        "/v1/watches", params={"task_id": task_id}, headers=relay.admin
    ).json()["items"]
    assert (watch["state"], watch["origin"], watch["event_id"]) == (
        "completed",
        "callback",
        receipt.event_id,
    )


def test_forged_callback_for_an_unknown_task_is_dropped(
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    relay = relay_factory(**emulator.relay_settings(**FAST))
    subscribe(relay, sink)
    url = relay.mint("evolink")
    answer = relay.post_callback(url, forged("task-unified-1-invented"))
    assert answer.status_code == 200
    watch = wait_watch(relay, answer.json()["watch_id"], "rejected")
    assert watch["event_id"] is None and watch["polls"] == 3
    assert relay.events(task_id="task-unified-1-invented") == []
    relay.wait_settled()
    assert sink.receipts == []
    out = capfd.readouterr().out
    assert "does not know this task; the callback is dropped" in out


def test_held_while_the_api_is_unreachable_then_confirmed(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer], sink: SubscriberServer
) -> None:
    """5xx and timeouts: the callback stays held (not emitted, not dropped) and is retried."""
    relay = relay_factory(**emulator.relay_settings(**FAST))
    subscribe(relay, sink)
    task_id = emulator.add_task(
        "evolink",
        timeline=((0.0, "failed"),),
        error={"code": "content_policy_violation", "message": "Blocked."},
        faults=[Fault(503), Fault(hang=1.0), Fault(502), Fault(503)],
    )
    url = relay.mint("evolink")
    answer = relay.post_callback(url, forged(task_id, "failed", error={"code": "x"}))
    assert answer.json()["held"] is True
    # Once a failed poll is recorded (the first of four, the answer comes a second later at
    # the earliest), nothing is stored for the task and the callback is still held.
    deadline = time.time() + 10
    while not get_watch(relay, answer.json()["watch_id"])["last_error"]:
        assert time.time() < deadline, "no failed poll recorded"
        time.sleep(0.02)
    assert relay.events(task_id=task_id) == []  # nothing emitted unconfirmed
    pending = get_watch(relay, answer.json()["watch_id"])
    assert pending["last_error"] and pending["held_status"] == "failed"  # still held
    (receipt,) = wait_task_events(sink, task_id, 1, timeout=10)
    assert receipt.data["error"] == {"code": "content_policy_violation", "message": "Blocked."}
    assert len(emulator.hits_for(task_id)) == 5


def test_confirmation_can_be_turned_off(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer], sink: SubscriberServer
) -> None:
    relay = relay_factory(**emulator.relay_settings(**FAST, evolink_confirm=False))
    subscribe(relay, sink)
    answer = relay.post_callback(relay.mint("evolink"), forged("task-unified-2-direct"))
    assert answer.json()["event_id"] and "held" not in answer.json()
    (receipt,) = wait_task_events(sink, "task-unified-2-direct", 1)
    assert receipt.data["raw"]["results"] == EVOLINK_COMPLETED["results"]


def test_no_confirmation_without_an_api_key(relay_server: RelayServer) -> None:
    answer = relay_server.post_callback(relay_server.mint(), EVOLINK_COMPLETED)
    assert answer.status_code == 200 and answer.json()["event_id"]


# -- Rivya webhooks -----------------------------------------------------------------------------

RIVYA_SECRET = new_secret()
GENERATION = {
    "id": "task_rivya_1",
    "status": "succeeded",
    "model": "z-image",
    "reserved_credits": 1,
    "final_credits": 1,
    "created_at": "2026-05-10T00:00:00.000Z",
    "updated_at": "2026-05-10T00:01:00.000Z",
    "result": {
        "primary_url": "https://media.example/result.png",
        "urls": ["https://media.example/result.png"],
    },
    "error": None,
}


def rivya_post(
    relay: RelayServer,
    path: str,
    payload: Any,
    *,
    secret: str = RIVYA_SECRET,
    at: float | None = None,
    tamper: bool = False,
) -> Any:
    body = json.dumps(payload).encode()
    timestamp = int(time.time() if at is None else at)
    headers = {
        "content-type": "application/json",
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign([secret], "msg_1", timestamp, body),
    }
    return relay.client.post(path, content=body + (b" " if tamper else b""), headers=headers)


def test_rivya_webhooks_are_verified(
    relay_factory: Callable[..., RelayServer], sink: SubscriberServer
) -> None:
    relay = relay_factory(rivya_webhook_secret=Secret(RIVYA_SECRET))
    subscribe(relay, sink)
    envelope = {"type": "generation.succeeded", "data": GENERATION}

    good = rivya_post(relay, "/callbacks/rivya", envelope)
    assert good.status_code == 200, good.text
    (receipt,) = sink.wait_for(1)
    assert receipt.event.get_type() == "generation.succeeded"
    assert receipt.data["outputs"] == [
        {"url": "https://media.example/result.png", "media_type": "image"}
    ]
    assert rivya_post(relay, "/callbacks/rivya", envelope).json()["duplicate"] is True
    failure = {"code": "generation_failed", "message": "The generation failed."}
    bare = {
        **GENERATION,
        "id": "task_rivya_2",
        "status": "failed",
        "result": None,
        "error": failure,
    }
    assert rivya_post(relay, "/callbacks/rivya", bare).status_code == 200

    for response, code in [
        (rivya_post(relay, "/callbacks/rivya", envelope, secret=new_secret()), "invalid_signature"),
        (rivya_post(relay, "/callbacks/rivya", envelope, tamper=True), "invalid_signature"),
        (rivya_post(relay, "/callbacks/rivya", envelope, at=time.time() - 600), "stale_timestamp"),
        (rivya_post(relay, "/callbacks/rivya", envelope, at=time.time() + 600), "stale_timestamp"),
        (relay.client.post("/callbacks/rivya", json=envelope), "invalid_signature"),
    ]:
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == code

    # A minted Rivya URL (per-request metadata) is checked with the signature as well.
    minted = relay.mint("rivya", metadata={"user": "u-1"})
    third = {**GENERATION, "id": "task_rivya_3"}
    assert rivya_post(relay, minted, third, secret=new_secret()).status_code == 401
    assert rivya_post(relay, minted, third).status_code == 200
    receipts = sink.wait_for(3)
    assert receipts[-1].data["metadata"] == {"user": "u-1"}
    # Only providers that sign every callback may go without a token.
    refused = relay.client.post("/callbacks/evolink", json=EVOLINK_COMPLETED)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"


def test_rivya_without_a_secret_needs_a_token(relay_server: RelayServer) -> None:
    envelope = {"type": "generation.succeeded", "data": GENERATION}
    refused = rivya_post(relay_server, "/callbacks/rivya", envelope)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
    minted = relay_server.mint("rivya")
    assert relay_server.client.post(minted, json=envelope).status_code == 200


# -- relay simulate -------------------------------------------------------------------------------


class FlakyReceiver:
    """Answers 503 to the first ``failures`` requests, then 200; records each request."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        app = Starlette(routes=[Route("/hook", self.handle, methods=["POST"])])
        self.thread = ServerThread(app, bound_socket()).start()
        self.url = f"http://127.0.0.1:{self.thread.port}/hook"

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.requests.append((time.time(), dict(request.headers), body))
            number = len(self.requests)
        if number <= self.failures:
            return JSONResponse({"error": "try later"}, status_code=503)
        return JSONResponse({"ok": True})


def relay_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**os.environ, "RELAY_LOG_LEVEL": "warning", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )


def test_simulate_evolink_retries_like_evolink() -> None:
    """Against a receiver that fails twice: attempts at 0, 1 and 3 s, then delivered."""
    receiver = FlakyReceiver(failures=2)
    try:
        done = relay_cli(
            "simulate", "evolink", "--callback-url", receiver.url, "--task-id",
            "task-unified-1756817821-4x3rx6ny",
        )  # fmt: skip
    finally:
        receiver.thread.stop()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("simulating evolink: task task-unified-1756817821-4x3rx6ny")
    # The real Evolink would not call this URL: it says so, and sends anyway.
    assert lines[1] == "note: Evolink only calls https:// URLs; it would refuse this one"
    assert lines[2].startswith("note: Evolink refuses private and loopback addresses")
    lines = lines[3:]
    assert lines[0].startswith("attempt 1/4: HTTP 503") and lines[0].endswith("retrying in 1 s")
    assert lines[1].startswith("attempt 2/4: HTTP 503") and lines[1].endswith("retrying in 2 s")
    assert lines[2].startswith("attempt 3/4: HTTP 200")
    assert lines[3] == "delivered on attempt 3 of 4"
    times = [at for at, _, _ in receiver.requests]
    assert len(times) == 3
    assert 0.9 <= times[1] - times[0] <= 1.6 and 1.9 <= times[2] - times[1] <= 2.6
    bodies = {body for _, _, body in receiver.requests}
    assert len(bodies) == 1  # every retry is the same callback
    payload = json.loads(bodies.pop())
    assert payload["status"] == "completed" and payload["results"]
    assert receiver.requests[0][1]["content-type"] == "application/json"


def test_simulate_gives_up_and_says_so() -> None:
    receiver = FlakyReceiver(failures=10)
    try:
        done = relay_cli(
            "simulate", "evolink", "--callback-url", receiver.url, "--status", "failed",
            "--retry-delays", "0.05,0.05",
        )  # fmt: skip
    finally:
        receiver.thread.stop()
    assert done.returncode == 1
    assert "gave up after 3 attempts" in done.stdout
    assert len(receiver.requests) == 3
    assert json.loads(receiver.requests[0][2])["error"]["code"] == "content_policy_violation"
    refused = relay_cli("simulate", "reve-art", "--callback-url", receiver.url)
    assert refused.returncode == 2 and "no_callbacks" in refused.stderr


def test_simulated_signed_callbacks_pass_the_relays_checks(
    relay_factory: Callable[..., RelayServer], sink: SubscriberServer
) -> None:
    """Apiframe (X-Webhook-Signature) and Rivya (Standard Webhooks) simulations are accepted."""
    relay = relay_factory(
        apiframe_api_key=Secret("afk_sim"),
        apiframe_signature="required",
        rivya_webhook_secret=Secret(RIVYA_SECRET),
    )
    subscribe(relay, sink)
    env = {"RELAY_APIFRAME_API_KEY": "afk_sim", "RELAY_RIVYA_WEBHOOK_SECRET": RIVYA_SECRET}
    apiframe = relay_cli("simulate", "apiframe", "--callback-url", relay.mint("apiframe"), **env)
    assert apiframe.returncode == 0, apiframe.stdout + apiframe.stderr
    assert "/callbacks/apiframe/***" in apiframe.stdout  # the token is not printed
    rivya = relay_cli(
        "simulate", "rivya", "--callback-url", f"{relay.base_url}/callbacks/rivya",
        "--status", "failed", **env,
    )  # fmt: skip
    assert rivya.returncode == 0, rivya.stdout + rivya.stderr
    unsigned = relay_cli("simulate", "apiframe", "--callback-url", relay.mint("apiframe"))
    assert unsigned.returncode == 1 and "invalid_signature" in unsigned.stdout
    assert "RELAY_APIFRAME_API_KEY is not set" in unsigned.stdout
    receipts = sink.wait_for(2)
    assert sorted(types(receipts)) == ["generation.failed", "generation.succeeded"]
    assert {r.event.get_source() for r in receipts} == {"/providers/apiframe", "/providers/rivya"}
