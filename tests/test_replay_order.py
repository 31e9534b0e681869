"""Replays keep a task's order: a subscriber that received ``succeeded`` is not sent an older
``running`` again by an operator's replay or redelivery (API, CLI, console) unless forced.

Each test runs a real relay (uvicorn) on SQLite and on PostgreSQL, with a real subscriber that
fails the task's ``running`` until its retries are used up, then accepts ``succeeded``.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, EVOLINK_COMPLETED, RelayServer
from tests.subscriber_server import SubscriberServer
from tests.test_store_contract import fresh_schema

FAILED_ATTEMPTS = 4  # the first attempt and three retries


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def relay(request: pytest.FixtureRequest, relay_factory: Callable[..., RelayServer]) -> Any:
    fast = {"retry_delays": (0.05, 0.05, 0.05)}
    if request.param == "sqlite":
        yield relay_factory(**fast)
        return
    with fresh_schema() as url:
        server = relay_factory(database_url=url, **fast)
        yield server
        server.stop()  # before the schema is dropped


@dataclass
class Line:
    """One task's line to one subscriber: ``running`` failed, then ``succeeded`` delivered."""

    subscriber_id: str
    running: str  # the failed delivery of the running event
    done: str  # the delivered one of the succeeded event
    running_event: str
    sink: SubscriberServer


@pytest.fixture
def line(relay: RelayServer) -> Iterator[Line]:
    sink = SubscriberServer(script=lambda n: (500 if n < FAILED_ATTEMPTS else 204, 0.0)).start()
    try:
        answer = relay.add_subscriber(sink.url)
        sink.secrets.append(str(answer["secret"]))
        url = relay.mint()
        payload = copy.deepcopy(EVOLINK_COMPLETED)
        payload.update(id="task-order-1", status="processing", progress=40)
        running_event = relay.post_callback(url, payload).json()["event_id"]
        (running,) = relay.wait_deliveries(1, "failed")
        payload.update(status="completed", progress=100)
        relay.post_callback(url, payload)
        (done,) = relay.wait_deliveries(1, "succeeded")
        assert [r.data["status"] for r in sink.receipts] == ["running"] * 4 + ["succeeded"]
        yield Line(str(answer["id"]), running["id"], done["id"], running_event, sink)
    finally:
        sink.stop()


def assert_untouched(relay: RelayServer, line: Line) -> None:
    """The failed ``running`` delivery is still failed, with no new attempt, and the
    subscriber got nothing after ``succeeded``."""
    delivery = relay.delivery(line.running)
    assert (delivery["status"], delivery["attempt_count"]) == ("failed", FAILED_ATTEMPTS)
    assert [d["subscriber_id"] for d in relay.deliveries(status="pending")] == []
    assert line.sink.receipts[-1].data["status"] == "succeeded"


def test_api_replay_and_redeliver_refuse_an_older_status(relay: RelayServer, line: Line) -> None:
    """Single replay and redelivery to one subscriber: 409 naming the newer delivery; bulk
    replay and redelivery to all: 202, skipped and reported; force sends it."""
    client, admin = relay.client, relay.admin
    one = client.post(f"/v1/deliveries/{line.running}/replay", headers=admin)
    assert one.status_code == 409, one.text
    assert one.json()["error"]["code"] == "newer_event_delivered"
    assert line.done in one.json()["error"]["message"]

    bulk = client.post("/v1/deliveries/replay", json={}, headers=admin)
    assert bulk.status_code == 202
    assert bulk.json() == {
        "replayed": 0,
        "skipped": [{"id": line.running, "newer_delivery_id": line.done}],
    }

    again = f"/v1/events/{line.running_event}/redeliver"
    to_one = client.post(again, json={"subscriber_id": line.subscriber_id}, headers=admin)
    assert to_one.status_code == 409, to_one.text
    assert to_one.json()["error"]["code"] == "newer_event_delivered"
    assert line.done in to_one.json()["error"]["message"]
    to_all = client.post(again, json={}, headers=admin)
    assert to_all.status_code == 202
    assert to_all.json() == {
        "deliveries": 0,
        "skipped": [{"subscriber_id": line.subscriber_id, "newer_delivery_id": line.done}],
    }
    assert_untouched(relay, line)

    bad = client.post(f"/v1/deliveries/{line.running}/replay", json={"force": 1}, headers=admin)
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_request")
    forced = client.post(f"/v1/deliveries/{line.running}/replay?force=true", headers=admin)
    assert forced.status_code == 202
    assert forced.json()["replayed"] == 1
    assert line.sink.wait_for(6)[-1].data["status"] == "running"  # what the operator asked


def _cli(relay: RelayServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_DATABASE_URL=relay.settings.database_url,
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_SECRET_KEY="test-signing-key",
    )
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_replay_skips_an_older_status_unless_forced(relay: RelayServer, line: Line) -> None:
    """`relay replay ID` and `relay replay --failed` name the newer delivery and replay
    nothing; `--force` replays it."""
    by_id = _cli(relay, "replay", line.running)
    assert by_id.returncode == 1, by_id.stderr
    assert f"skipped {line.running}: {line.done}" in by_id.stdout
    assert "replayed 0 of 1 deliveries" in by_id.stdout
    assert "1 skipped (a later event delivered; --force replays them)" in by_id.stdout
    window = _cli(relay, "replay", "--failed", "--since", "1h")
    assert window.returncode == 1, window.stderr
    assert f"skipped {line.running}: {line.done}" in window.stdout
    assert_untouched(relay, line)

    forced = _cli(relay, "replay", "--force", line.running)
    assert forced.returncode == 0, forced.stderr
    assert "replayed 1 of 1 deliveries" in forced.stdout
    assert line.sink.wait_for(6)[-1].data["status"] == "running"


def test_console_marks_held_rows_and_leaves_them_out_of_replay_all(
    relay: RelayServer, line: Line
) -> None:
    """The failed list marks the row, "Replay all shown" does not carry it, its Replay is
    refused with a notice naming the newer delivery, and "Replay anyway" sends it."""
    from tests.test_ops_console import csrf_of, sign_in

    with httpx.Client(base_url=relay.base_url, timeout=10, follow_redirects=True) as client:
        sign_in(client)
        page = client.get("/ops/deliveries")
        assert page.status_code == 200
        assert "held back" in page.text
        assert f'href="/ops/deliveries/{line.done}"' in page.text
        assert "Replay all shown" not in page.text  # nothing left to replay in bulk
        csrf = csrf_of(page.text)

        shown = client.post(
            "/ops/deliveries/replay",
            data={"csrf": csrf, "ids": [line.running], "back": "/ops/deliveries"},
        )
        assert "Replayed 0 of 1 shown" in shown.text
        assert f"1 held back, a later event of their task already delivered: {line.running}" in (
            shown.text
        )
        refused = client.post(
            f"/ops/deliveries/{line.running}/replay",
            data={"csrf": csrf, "back": "/ops/deliveries"},
        )
        assert line.done in refused.text
        assert "Replay with force" in refused.text
        assert_untouched(relay, line)

        detail = client.get(f"/ops/deliveries/{line.running}")
        assert "Replay anyway" in detail.text
        forced = client.post(
            f"/ops/deliveries/{line.running}/replay",
            data={"csrf": csrf, "force": "1", "back": f"/ops/deliveries/{line.running}"},
        )
        assert re.search(rf"Replaying {line.running}", forced.text)
        assert line.sink.wait_for(6)[-1].data["status"] == "running"
