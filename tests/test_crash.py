"""Crash safety and the on-call CLI, with the relay as a real subprocess killed by SIGKILL."""

from __future__ import annotations

import copy
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EVOLINK_COMPLETED, bound_socket
from tests.relay_process import ADMIN, RelayProcess
from tests.subscriber_server import SubscriberServer


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[RelayProcess]:
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    relay = RelayProcess(tmp_path, port)
    yield relay
    relay.stop()


def _all_deliveries(relay: RelayProcess, status: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    params: dict[str, object] = {"status": status, "limit": 500}
    while True:
        page = httpx.get(
            f"{relay.base}/v1/deliveries",
            params=params,
            headers={"authorization": f"Bearer {ADMIN}"},
        ).json()
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]


def _payload(n: int) -> dict[str, object]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload["id"] = f"task-unified-crash-{n}"
    return payload


@pytest.mark.slow
def test_sigkill_during_delivery_loses_nothing_acknowledged(relay_process: RelayProcess) -> None:
    """Every callback answered 2xx reaches the subscriber although the relay was SIGKILLed."""
    # A third of the answers fail, and each takes a little while: kills land mid-delivery.
    sink = SubscriberServer(script=lambda n: (500 if n % 3 == 0 else 204, 0.02)).start()
    try:
        relay = relay_process.start()
        headers = {"authorization": f"Bearer {ADMIN}"}
        sub = httpx.post(f"{relay.base}/v1/subscribers", json={"url": sink.url}, headers=headers)
        sink.secrets.append(sub.json()["secret"])
        url = httpx.post(
            f"{relay.base}/v1/callback-urls",
            json={"provider": "evolink", "reusable": True},
            headers=headers,
        ).json()["url"]
        acked: set[str] = set()
        with httpx.Client(timeout=5) as client:
            for round_number in range(3):
                for n in range(round_number * 100, round_number * 100 + 100):
                    try:
                        response = client.post(url, json=_payload(n))
                    except httpx.TransportError:
                        continue
                    if response.status_code == 200:
                        acked.add(response.json()["event_id"])
                relay.kill()
                relay.start()
        # Wait until nothing is pending: every delivery has succeeded or used up its retries.
        deadline = time.time() + 60
        while time.time() < deadline and _all_deliveries(relay, "pending"):
            time.sleep(0.2)
        failed = {d["event_id"]: d for d in _all_deliveries(relay, "failed")}
        missing = acked - sink.accepted_ids() - set(failed)
        assert not missing, f"{len(missing)} acknowledged events were neither delivered nor failed"
        # A failed delivery used up the whole policy (1 + 3 attempts) at the subscriber.
        assert all(d["attempt_count"] >= 4 for d in failed.values())
        assert acked <= {r.event_id for r in list(sink.receipts)}
        assert not sink.errors
        # Callbacks sent while the relay was up were all acknowledged (none refused).
        assert len(acked) == 300
    finally:
        sink.stop()


def test_cli_failed_deliveries_and_replay(relay_process: RelayProcess) -> None:
    """`relay subscribers`, `relay deliveries list` and `relay replay --failed` at work."""
    state = {"up": False}
    sink = SubscriberServer(script=lambda n: (204, 0.0) if state["up"] else (502, 0.0)).start()
    relay_process.env["RELAY_RETRY_DELAYS"] = "0.1"
    try:
        relay = relay_process.start()
        added = relay.cli("subscribers", "add", sink.url, "--type", "generation.*")
        assert added.returncode == 0, added.stderr
        sink.secrets.append(added.stdout.split("secret:")[1].split()[0])
        sub_id = added.stdout.split("id:")[1].split()[0]
        assert sub_id in relay.cli("subscribers", "list").stdout
        minted = relay.cli("mint-url", "evolink", "--reusable")
        url = minted.stdout.split('"url": "')[1].split('"')[0]
        for n in range(3):
            assert httpx.post(url, json=_payload(n)).status_code == 200
        deadline = time.time() + 20
        while time.time() < deadline:
            listing = relay.cli("deliveries", "list", "--status", "failed", "--since", "1h")
            if "3 failed deliveries" in listing.stdout:
                break
            time.sleep(0.2)
        assert "3 failed deliveries" in listing.stdout, listing.stdout
        assert "HTTP 502" in listing.stdout
        state["up"] = True
        replay = relay.cli("replay", "--failed", "--subscriber", sub_id, "--since", "1h")
        assert replay.returncode == 0, replay.stderr
        assert "replayed 3 of 3 deliveries" in replay.stdout
        sink.wait_for(9)  # 3 x (2 failed attempts) + 3 successes
        removed = relay.cli("subscribers", "remove", sub_id)
        assert removed.returncode == 0
        assert sub_id not in relay.cli("subscribers", "list").stdout
    finally:
        sink.stop()


def test_sigterm_finishes_attempts_in_flight(relay_process: RelayProcess) -> None:
    """On SIGTERM the worker lets attempts in flight finish; nothing is sent twice after."""
    sink = SubscriberServer(script=lambda n: (204, 1.0)).start()
    try:
        relay = relay_process.start()
        headers = {"authorization": f"Bearer {ADMIN}"}
        sub = httpx.post(f"{relay.base}/v1/subscribers", json={"url": sink.url}, headers=headers)
        sink.secrets.append(sub.json()["secret"])
        url = httpx.post(
            f"{relay.base}/v1/callback-urls",
            json={"provider": "evolink", "reusable": True},
            headers=headers,
        ).json()["url"]
        for n in range(5):
            assert httpx.post(url, json=_payload(n)).status_code == 200
        deadline = time.time() + 5
        while sink.requests < 5 and time.time() < deadline:
            time.sleep(0.01)
        assert sink.requests == 5  # all five are in flight, each answered after 1 s
        assert relay.process is not None
        relay.process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert relay.process.wait(timeout=15) in (0, -signal.SIGTERM)
        assert len(sink.accepted_ids()) == 5
        relay.start()
        # Each attempt was recorded before the relay stopped: the restarted one finds nothing
        # pending, so nothing can be sent again (rather than: nothing arrived within a sleep).
        assert len(_all_deliveries(relay, "succeeded")) == 5
        assert _all_deliveries(relay, "pending") == []
        assert sink.requests == 5
    finally:
        sink.stop()
