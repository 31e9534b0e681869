"""Each provider's request budget, end to end: polls stay within the provider's rate limit.

Reve Art allows 10 requests a minute per account. Two relay processes sharing PostgreSQL poll
30 Reve Art watches against an emulator that answers 429 past 10 requests in any window (a
shorter window than a minute, ``RELAY_API_RATE_WINDOW``, to keep the test short): the emulator
never sees more than 10 in a window, never answers 429, and all 30 complete. A 429 of the
provider's own pauses every watch of that provider, and ``GET /v1/watches/{id}`` says a due
watch waits for the budget.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.metrics import REGISTRY
from tests.conftest import RelayServer
from tests.provider_emulators import Fault, ProviderEmulator
from tests.relay_process import RelayProcess
from tests.test_replicas import _free_port
from tests.test_watches import FAST, get_watch, post_watch, wait_watch

WATCHES = 30
RATE = 10
WINDOW = 4.0


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    server = ProviderEmulator(rate_limits={"reve-art": (RATE, WINDOW)}).start()
    yield server
    server.stop()


def metric(relay: RelayProcess, line_start: str) -> float:
    text = httpx.get(f"{relay.base}/metrics", headers=relay.admin, timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)
    )


@pytest.mark.postgres
def test_two_replicas_keep_reve_art_within_its_rate_limit(
    emulator: ProviderEmulator, tmp_path: Path
) -> None:
    from tests.test_store_contract import fresh_schema

    env = {
        "RELAY_REVE_ART_BASE_URL": emulator.url,
        "RELAY_REVE_ART_API_KEY": emulator.keys["reve-art"],
        "RELAY_REVE_ART_API_RATE": str(RATE),
        "RELAY_API_RATE_WINDOW": str(WINDOW),
        "RELAY_WATCH_BACKOFF": "0.2,1",
        "RELAY_PROVIDER_TIMEOUT": "2",
    }
    with fresh_schema() as url:
        replicas = [
            RelayProcess(tmp_path, _free_port(), RELAY_DATABASE_URL=url, **env) for _ in range(2)
        ]
        try:
            for replica in replicas:
                replica.start()
            started = time.time()
            ids = []
            for n in range(WATCHES):
                task_id = emulator.add_task(
                    "reve-art", timeline=((0.0, "queued"), (2.0, "succeeded"))
                )
                replica = replicas[n % 2]
                answer = httpx.post(
                    f"{replica.base}/v1/watches",
                    json={"provider": "reve-art", "task_id": task_id},
                    headers=replica.admin,
                )
                assert answer.status_code == 201, answer.text
                ids.append(answer.json()["id"])

            # While the budget is spent, the waiting watches say so.
            seen_waiting = False
            deadline = started + 20
            while not seen_waiting and time.time() < deadline:
                page = httpx.get(
                    f"{replicas[1].base}/v1/watches",
                    params={"state": "active", "limit": 100},
                    headers=replicas[1].admin,
                ).json()
                seen_waiting = any(w["waiting_for"] == "budget" for w in page["items"])
                time.sleep(0.05)
            assert seen_waiting

            deadline = started + 90
            pending = set(ids)
            while pending and time.time() < deadline:
                for watch_id in list(pending):
                    shown = httpx.get(
                        f"{replicas[0].base}/v1/watches/{watch_id}", headers=replicas[0].admin
                    ).json()
                    if shown["state"] == "completed":
                        pending.discard(watch_id)
                time.sleep(0.2)
            elapsed = time.time() - started
            assert not pending, f"{len(pending)} of {WATCHES} watches not completed"

            counts = emulator.window_counts("reve-art", WINDOW)
            answered = [hit.status_code for hit in emulator.hits if hit.provider == "reve-art"]
            print(
                f"\n{len(answered)} requests in {elapsed:.1f} s; most in any {WINDOW:g} s:"
                f" {max(counts)} (budget {RATE}); 429s: {answered.count(429)}"
            )
            assert max(counts) <= RATE
            assert 429 not in answered
            # Both replicas polled, and the wait for the budget was measured.
            for replica in replicas:
                assert metric(replica, 'relay_watch_polls_total{outcome="ok",provider="reve-art"}')
            waited = sum(
                metric(r, 'relay_watch_budget_wait_seconds_sum{provider="reve-art"}')
                for r in replicas
            )
            assert waited > WINDOW  # most watches waited a window or more for their turn
        finally:
            for replica in replicas:  # before the schema goes
                replica.stop()


def test_a_429_pauses_every_watch_of_the_provider(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer]
) -> None:
    """One watch's 429 with Retry-After: 2 stops the polls of another watch of that provider
    until then (the pause is the provider's, not the watch's); the other shows it waits."""

    def rate_limited() -> float:
        labels = {"provider": "reve-art", "outcome": "rate_limited"}
        return REGISTRY.get_sample_value("relay_watch_polls_total", labels) or 0.0

    counted = rate_limited()
    relay = relay_factory(**emulator.relay_settings(**FAST))
    limited = emulator.add_task("reve-art", faults=[Fault(429, retry_after="2")])
    other = emulator.add_task("reve-art", timeline=((0.0, "succeeded"),))
    first = post_watch(relay, provider="reve-art", task_id=limited)
    deadline = time.time() + 10
    while not emulator.hits_for(limited) and time.time() < deadline:
        time.sleep(0.01)
    (refused,) = emulator.hits_for(limited)
    assert refused.status_code == 429
    deadline = time.time() + 10
    while rate_limited() == counted and time.time() < deadline:
        time.sleep(0.01)
    # A 429 is counted apart from other retries, once the pause is stored.
    assert rate_limited() == counted + 1
    second = post_watch(relay, provider="reve-art", task_id=other)
    deadline = time.time() + 10
    shown: dict[str, Any] = get_watch(relay, second["id"])
    while shown["polls"] == 0 and shown["waiting_for"] != "budget" and time.time() < deadline:
        time.sleep(0.02)
        shown = get_watch(relay, second["id"])
    assert shown["waiting_for"] == "budget", shown
    wait_watch(relay, second["id"], "completed")
    (answered,) = emulator.hits_for(other)
    assert answered.at >= refused.at + 1.9
    wait_watch(relay, first["id"], "completed")


def test_the_console_shows_each_budget_and_who_waits(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer]
) -> None:
    """The overview shows each polled provider's requests in the window, and whether its due
    watches wait: for the budget (spent), or for a 429's pause."""
    from service.store import open_store
    from tests.test_ops_console import browser, sign_in

    rates = {**emulator.relay_settings()["api_rates"], "reve-art": 1}
    relay = relay_factory(**emulator.relay_settings(api_rates=rates, **FAST))
    task_id = emulator.add_task("reve-art", timeline=((0.0, "queued"),))
    watch = post_watch(relay, provider="reve-art", task_id=task_id)
    deadline = time.time() + 10
    # The budget is spent when the watch is claimed, before its poll reaches the API: wait for
    # both (the watch says "budget" from the claim on).
    while (
        get_watch(relay, watch["id"])["waiting_for"] != "budget" or not emulator.hits_for(task_id)
    ) and time.time() < deadline:
        time.sleep(0.02)
    assert len(emulator.hits_for(task_id)) == 1  # one poll, then the minute's budget is spent
    with browser(relay) as client:
        sign_in(client)
        page = client.get("/ops").text
        assert "1 of 1 per 60 s" in page and "wait for the budget" in page
        assert "0 of 6000 per 60 s" in page  # the others are polled when due

        async def block() -> None:
            store = open_store(relay.settings.database_url)
            await store.open()
            try:
                await store.block_provider("reve-art", time.time() + 600)
            finally:
                await store.close()

        asyncio.run(block())
        assert "paused by a 429 until" in client.get("/ops").text
    # `relay watches list` says so too (a CLI process on the same store and settings).
    env = {
        **os.environ,
        "RELAY_DATABASE_URL": relay.settings.database_url,
        "RELAY_REVE_ART_BASE_URL": emulator.url,
        "RELAY_REVE_ART_API_KEY": emulator.keys["reve-art"],
        "RELAY_REVE_ART_API_RATE": "1",
        "RELAY_LOG_LEVEL": "warning",
    }
    listed = subprocess.run(
        [sys.executable, "-m", "service", "watches", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    (line,) = [row for row in listed.stdout.splitlines() if watch["id"] in row]
    assert "(waits for budget)" in line


def test_evolink_confirmations_spend_the_evolink_budget(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer]
) -> None:
    """A held Evolink callback is confirmed by a request to Evolink's API: it spends the same
    budget, so with 2 a minute the third of three held callbacks waits for it."""
    from tests.test_confirmation_rivya_simulate import forged

    rates = {**emulator.relay_settings()["api_rates"], "evolink": 2}
    relay = relay_factory(**emulator.relay_settings(api_rates=rates, **FAST))
    url = relay.mint("evolink", reusable=True)
    tasks = [emulator.add_task("evolink", timeline=((0.0, "succeeded"),)) for _ in range(3)]
    for task_id in tasks:
        answer = relay.post_callback(url, forged(task_id))
        assert answer.json().get("held") is True, answer.text
    deadline = time.time() + 10
    while len(emulator.hits) < 2 and time.time() < deadline:
        time.sleep(0.02)
    # Until the two confirmed watches have recorded their polls (they are due, hence shown
    # waiting, while their request is in flight), then only the third is left, waiting.
    active: list[dict[str, Any]] = []
    while len(active) != 1 and time.time() < deadline:
        active = relay.client.get(
            "/v1/watches", params={"state": "active"}, headers=relay.admin
        ).json()["items"]
        time.sleep(0.02)
    assert [(w["waiting_for"], w["origin"]) for w in active] == [("budget", "callback")]
    assert len(emulator.hits) == 2  # the third confirmation waits for the minute's budget
