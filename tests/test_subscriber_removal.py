"""Removing a subscriber while callbacks stream in leaves nothing of it pending, on both stores.

A real relay (uvicorn on loopback) receives a steady stream of callbacks for one subscriber that
answers slowly, so deliveries are pending and in flight when it is removed, through the API or
with ``relay subscribers remove`` in another process (a change the relay learns of from the
database, not through its own API). Afterwards no delivery of it may be pending: those
pending at the removal are canceled, and none is created for it after.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.subscriber_server import SubscriberServer
from tests.test_store_contract import fresh_schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def relay(
    request: pytest.FixtureRequest, relay_factory: Callable[..., RelayServer]
) -> Iterator[RelayServer]:
    if request.param == "sqlite":
        yield relay_factory()
        return
    with fresh_schema() as url:
        server = relay_factory(database_url=url)
        yield server
        server.stop()  # before its schema is dropped


def pending_gauge(relay: RelayServer) -> float:
    response = relay.client.get("/metrics", headers=relay.admin)
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "relay_deliveries_pending":
                return float(sample.value)
    raise AssertionError("no relay_deliveries_pending gauge")


def all_deliveries(relay: RelayServer, **params: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    cursor = None
    while True:
        query = {**params, "limit": "500", **({"cursor": cursor} if cursor else {})}
        response = relay.client.get("/v1/deliveries", params=query, headers=relay.admin)
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return items


def remove_with_cli(relay: RelayServer, subscriber_id: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DATABASE_URL"] = relay.settings.database_url
    done = subprocess.run(
        [sys.executable, "-m", "service", "subscribers", "remove", subscriber_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("remover", ["api", "cli"])
def test_removal_under_a_callback_stream_leaves_nothing_pending(
    relay: RelayServer, remover: str
) -> None:
    """Deliveries pending or in flight at the removal end canceled; none is created after it;
    the pending gauge returns to 0."""
    sink = SubscriberServer(script=lambda n: (204, 0.3)).start()  # slow: many in flight
    try:
        subscriber_id = str(relay.add_subscriber(sink.url)["id"])
        url = relay.mint(reusable=True)
        stop = threading.Event()
        sent: list[int] = []
        streamed = [0]  # callbacks answered so far

        def stream() -> None:
            with httpx.Client(timeout=10) as client:
                n = 0
                while not stop.is_set():
                    payload = copy.deepcopy(EVOLINK_COMPLETED)
                    payload["id"] = f"task-removal-{n}"
                    response = client.post(url, json=payload)
                    assert response.status_code == 200, response.text
                    n += 1
                    streamed[0] = n
                    time.sleep(0.005)
            sent.append(n)

        streamer = threading.Thread(target=stream)
        streamer.start()
        try:
            sink.wait_for(5)  # deliveries are flowing
            if remover == "api":
                response = relay.client.delete(
                    f"/v1/subscribers/{subscriber_id}", headers=relay.admin
                )
                assert response.status_code in (200, 204), response.text
            else:
                remove_with_cli(relay, subscriber_id)
            # Longer than any cache of the subscriber list (1 s) keeps callbacks coming in, and
            # enough of them however slow the machine is.
            removed_at = time.time()
            while time.time() < removed_at + 2.0 or streamed[0] <= 50:
                assert time.time() < removed_at + 60, f"only {streamed[0]} callbacks answered"
                time.sleep(0.05)
        finally:
            stop.set()
            streamer.join(timeout=30)
        assert sent and sent[0] > 50, sent

        deadline = time.time() + 20
        while pending_gauge(relay) > 0 and time.time() < deadline:
            time.sleep(0.1)
        pending = all_deliveries(relay, subscriber_id=subscriber_id, status="pending")
        assert pending == [], f"{len(pending)} deliveries of the removed subscriber pending"
        assert pending_gauge(relay) == 0
        canceled = all_deliveries(relay, subscriber_id=subscriber_id, status="canceled")
        assert canceled, "the deliveries in flight at the removal were canceled"
        assert {d["last_error"] for d in canceled} == {"subscriber deleted"}
        # Every callback after the removal (its cache catching up included) fanned out to nobody.
        mine = all_deliveries(relay, subscriber_id=subscriber_id)
        assert len(mine) < sent[0]
    finally:
        sink.stop()
